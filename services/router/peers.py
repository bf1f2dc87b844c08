"""One `/_berth/metrics` for all the workers of a router (`router_workers` > 1): a scrape reaches one
worker (the kernel picks it per connection), which answers with every worker's figures added up.

Each worker serves its own exposition on a Unix socket in a directory its supervisor made for them
(`<pid>.sock`: connect, read to the end); the worker a scrape reached reads the others' and merges
them with its own. Counters, histograms and most gauges add up (requests, in flight, memory, open
files); a gauge every worker holds the same copy of (ready replicas, the traffic generation, the file
limit) is the largest, and the start time the earliest. A worker that does not answer within a
second (stopping, or gone) is left out of that scrape.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

PEER_TIMEOUT_SECONDS = 1.0
_LARGEST = {"berth_router_ready_replicas", "berth_router_traffic_generation", "process_max_fds"}
_EARLIEST = {"process_start_time_seconds"}


class WorkerMetrics:
    """This worker's exposition, served to its peers, and the merged one of every worker."""

    def __init__(self, registry: CollectorRegistry, directory: Path) -> None:
        self._registry = registry
        self._directory = directory
        self._own = directory / f"{os.getpid()}.sock"
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self._own))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._own.unlink(missing_ok=True)

    async def exposition(self) -> bytes:
        texts = [generate_latest(self._registry).decode()]
        peers = [path for path in self._directory.glob("*.sock") if path != self._own]
        for text in await asyncio.gather(*(_read(path) for path in peers)):
            if text is not None:
                texts.append(text)
        return merge(texts)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(generate_latest(self._registry))
            await writer.drain()
        finally:
            writer.close()


async def _read(path: Path) -> str | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), PEER_TIMEOUT_SECONDS)
        try:
            return (await asyncio.wait_for(reader.read(), PEER_TIMEOUT_SECONDS)).decode()
        finally:
            writer.close()
    except (OSError, TimeoutError):
        return None


def merge(texts: list[str]) -> bytes:
    """Expositions of several workers as one (text format)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            held = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sample.labels.items()))
                if key not in held:
                    held[key] = sample.value
                elif family.name in _LARGEST:
                    held[key] = max(held[key], sample.value)
                elif family.name in _EARLIEST:
                    held[key] = min(held[key], sample.value)
                else:
                    held[key] = held[key] + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry()
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families
