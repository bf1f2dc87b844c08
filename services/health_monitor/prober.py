"""One probe, once: an HTTP GET with Kubernetes httpGet semantics, or a TCP connect.

A status of 200-399 is a success (redirects are not followed: a 302 is itself a success); any other
status, a timeout or a connection error is a failure. Nothing here raises for a failing replica.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import aiohttp

from libs.events import ProbeResult
from services.health_monitor.metrics import PROBE_SECONDS, PROBES

HttpProbeKind = Literal["startup", "readiness", "liveness"]


def is_success(status: int) -> bool:
    return 200 <= status < 400


async def http_probe(
    session: aiohttp.ClientSession,
    kind: HttpProbeKind,
    url: str,
    headers: dict[str, str],
    timeout_seconds: float,
) -> ProbeResult:
    began = time.monotonic()
    try:
        async with session.get(
            url,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
        ) as response:
            ok = is_success(response.status)
            result = ProbeResult(
                probe=kind,
                ok=ok,
                status_code=response.status,
                error=None if ok else f"HTTP {response.status}",
            )
    except TimeoutError:
        result = ProbeResult(probe=kind, ok=False, error=f"timed out after {timeout_seconds:g}s")
    except aiohttp.ClientError as exc:
        result = ProbeResult(probe=kind, ok=False, error=_describe(exc))
    _observe(result, began)
    return result


async def tcp_probe(host: str, port: int, timeout_seconds: float) -> ProbeResult:
    """Does the port accept connections? (the readiness of a replica without a readiness probe)"""
    began = time.monotonic()
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives as
        # the connect completes, and a probe loop that was told to stop would go on.
        async with asyncio.timeout(timeout_seconds):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        result = ProbeResult(probe="tcp", ok=False, error=f"timed out after {timeout_seconds:g}s")
    except OSError as exc:
        result = ProbeResult(probe="tcp", ok=False, error=exc.strerror or type(exc).__name__)
    else:
        writer.close()
        result = ProbeResult(probe="tcp", ok=True)
    _observe(result, began)
    return result


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.strerror or "connection failed"
    return type(exc).__name__


def _observe(result: ProbeResult, began: float) -> None:
    PROBES.labels(result.probe, "success" if result.ok else "failure").inc()
    PROBE_SECONDS.labels(result.probe).observe(time.monotonic() - began)
