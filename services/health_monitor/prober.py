"""One probe, once: an HTTP GET as the kubelet sends it, or a TCP connect.

The kubelet's rules (pkg/probe/http/http.go, request.go; pkg/kubelet/prober/prober.go):
- the request carries the probe's headers, plus `User-Agent: kube-probe/...` and `Accept: */*` unless
  the probe sets them (an `Accept` set to "" is not sent at all); no `Accept-Encoding`; a `Host` header
  becomes the request's host; a fresh connection each time;
- redirects (301, 302, 303, 307, 308 with a Location) are followed while they stay on the probed
  host name (any port); the 10th redirect is a failure ("stopped after 10 redirects"); a redirect to
  another host is not followed and counts as a success (the kubelet's "probe warning");
- the answer is read, up to 10 KiB of body; timeoutSeconds bounds the whole exchange, redirects and
  body included (Go's http.Client.Timeout);
- a final status of 200-399 is a success; any other status, a timeout or an error is a failure.
Nothing here raises for a failing replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Literal

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from libs.events import ProbeResult
from libs.logging import get_logger
from services.health_monitor.metrics import PROBE_SECONDS, PROBES

HttpProbeKind = Literal["startup", "readiness", "liveness"]

USER_AGENT = "kube-probe/berth"  # the kubelet's is kube-probe/<major>.<minor>; apps match the prefix
MAX_BODY_BYTES = 10 * 1024  # http.go maxRespBodyLength
MAX_REDIRECTS = 10  # http.go RedirectChecker: "stopped after 10 redirects"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})  # those Go's http.Client follows

log = get_logger(__name__)


class TooManyRedirects(Exception):
    pass


def is_success(status: int) -> bool:
    return 200 <= status < 400


def probe_headers(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """The probe's headers with the kubelet's defaults (request.go newProbeRequest)."""
    sent: CIMultiDict[str] = CIMultiDict()
    for name, value in headers:
        if name.lower() == "host" and "Host" in sent:
            continue  # one request, one host: the first Host header is the one (Go's Header.Get)
        sent.add(name, value)
    sent.setdefault("User-Agent", USER_AGENT)
    sent.setdefault("Accept", "*/*")
    if not sent["Accept"]:
        del sent["Accept"]  # set to "" on purpose: no Accept header at all
    return sent


async def http_probe(
    session: aiohttp.ClientSession,
    kind: HttpProbeKind,
    url: str,
    headers: Iterable[tuple[str, str]],
    timeout_seconds: float,
) -> ProbeResult:
    began = time.monotonic()
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (see tcp_probe).
        async with asyncio.timeout(timeout_seconds):
            status = await _get(session, URL(url), probe_headers(headers))
    except TimeoutError:
        result = ProbeResult(probe=kind, ok=False, error=f"timed out after {timeout_seconds:g}s")
    except TooManyRedirects:
        result = ProbeResult(probe=kind, ok=False, error=f"stopped after {MAX_REDIRECTS} redirects")
    except aiohttp.ClientError as exc:
        result = ProbeResult(probe=kind, ok=False, error=_describe(exc))
    except ValueError as exc:  # a request aiohttp refuses to send (e.g. a bad Location); never a crash
        result = ProbeResult(probe=kind, ok=False, error=f"invalid request: {type(exc).__name__}")
    else:
        ok = is_success(status)
        result = ProbeResult(probe=kind, ok=ok, status_code=status, error=None if ok else f"HTTP {status}")
    _observe(result, began)
    return result


async def _get(session: aiohttp.ClientSession, url: URL, headers: CIMultiDict[str]) -> int:
    """GET `url` following redirects as Go's http.Client with the kubelet's RedirectChecker does."""
    probed_host = url.host
    custom_host = "Host" in headers
    redirects = 0
    while True:
        async with session.get(
            url,
            headers=headers,
            allow_redirects=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
            ssl=False,  # the kubelet probes HTTPS without verifying (InsecureSkipVerify)
        ) as response:
            location = response.headers.get("Location")
            if response.status not in REDIRECT_STATUSES or not location:
                await _read_body(response)
                return response.status
        target = url.join(URL(location))
        if target.host != probed_host:
            # The kubelet's "probe warning": the 3xx itself is the answer (prober.go counts it a success).
            log.warning("probe redirected to another host: not followed", status=response.status)
            return response.status
        redirects += 1
        if redirects >= MAX_REDIRECTS:
            raise TooManyRedirects
        if custom_host and URL(location).is_absolute():
            # Go keeps a custom Host only through a relative redirect; an absolute one names its host.
            headers = headers.copy()
            del headers["Host"]
            custom_host = False
        url = target


async def _read_body(response: aiohttp.ClientResponse) -> None:
    """Up to MAX_BODY_BYTES of the body, as the kubelet reads it: a body that stalls is a timeout."""
    remaining = MAX_BODY_BYTES
    while remaining > 0:
        chunk = await response.content.read(remaining)
        if not chunk:
            return
        remaining -= len(chunk)


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
