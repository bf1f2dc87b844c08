"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection package does it.

Several schedulers may run; the one holding the Lease acts, the others wait. A candidate takes the
Lease when it is free, or when its record has not changed for `lease_seconds` *by the candidate's own
clock* (client-go's observedTime: no comparison of clocks between Pods). The holder renews every
`renew_seconds`; when it has not managed to renew for `lease_seconds` it has lost the Lease and must
stop acting (the scheduler then exits and Kubernetes restarts it as a candidate). Writes carry the
record's resourceVersion, so of two candidates racing for a free Lease the API server lets one win.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from libs.logging import get_logger

log = get_logger(__name__)
CONFLICT, NOT_FOUND = 409, 404


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: float = 15.0,
        renew_seconds: float = 5.0,
        retry_seconds: float = 2.0,
    ) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds, self.renew_seconds, self.retry_seconds = lease_seconds, renew_seconds, retry_seconds
        self._observed: Any = None  # the last record seen, and when (monotonic) it was first seen so
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self.leading = False

    def _record(self, transitions: int, acquired: str | None = None) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(int(self.lease_seconds), 1),
            "acquireTime": acquired or _now(),
            "renewTime": _now(),
            "leaseTransitions": transitions,
        }

    def _try(self) -> bool:
        """One attempt to acquire or renew (blocking; runs in a thread)."""
        try:
            lease = json.loads(
                self.coordination.read_namespaced_lease(self.name, self.namespace, _preload_content=False).data
            )
        except ApiException as exc:
            if exc.status != NOT_FOUND:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._record(0)}
            try:
                self.coordination.create_namespaced_lease(self.namespace, body, _preload_content=False)
            except ApiException as exc2:
                if exc2.status == CONFLICT:  # another candidate created it first
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        holder = spec.get("holderIdentity")
        duration = spec.get("leaseDurationSeconds") or self.lease_seconds
        if holder and holder != self.identity and time.monotonic() < self._observed_at + duration:
            return False  # held, and renewed within its duration as far as we have seen
        transitions = spec.get("leaseTransitions") or 0
        if holder == self.identity:
            record_spec = self._record(transitions, spec.get("acquireTime"))
        else:
            record_spec = self._record(transitions + 1)
        patch = {"metadata": {"resourceVersion": lease["metadata"].get("resourceVersion")}, "spec": record_spec}
        if patch["metadata"]["resourceVersion"] is None:
            del patch["metadata"]
        try:
            self.coordination.patch_namespaced_lease(self.name, self.namespace, patch, _preload_content=False)
        except ApiException as exc:
            if exc.status == CONFLICT:  # someone else wrote it since we read it
                return False
            raise
        return True

    async def _attempt(self) -> bool:
        try:
            won = await asyncio.to_thread(self._try)
        except Exception as exc:  # the API is unreachable: not leading this round
            log.warning("lease attempt failed", lease=self.name, error=type(exc).__name__)
            return False
        if won:
            self._renewed_at = time.monotonic()
        return won

    async def acquire(self) -> None:
        """Wait until this candidate holds the Lease."""
        while not await self._attempt():
            await asyncio.sleep(self.retry_seconds)
        if not self.leading:
            log.info("leading", lease=self.name, identity=self.identity)
        self.leading = True

    async def hold(self, on_lost: Callable[[], None]) -> None:
        """Renew until the Lease is lost (another holder, or no renewal for lease_seconds), then call
        `on_lost` once and return. Cancel it to stop renewing (e.g. before `release`)."""
        while True:
            await asyncio.sleep(self.renew_seconds)
            if await self._attempt():
                continue
            if time.monotonic() - self._renewed_at >= self.lease_seconds or self._held_by_other():
                self.leading = False
                log.warning("lost the lease", lease=self.name, identity=self.identity)
                on_lost()
                return

    def _held_by_other(self) -> bool:
        return self._observed is not None and self._observed[0] not in (None, "", self.identity)

    async def release(self) -> None:
        """Give the Lease up so a standby need not wait out its duration (client-go ReleaseOnCancel)."""
        if not self.leading:
            return
        self.leading = False
        patch = {"spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _now()}}
        with contextlib.suppress(Exception):
            await asyncio.to_thread(
                self.coordination.patch_namespaced_lease, self.name, self.namespace, patch, _preload_content=False
            )
