"""Write flow control shared by the router's two protocols (towards clients and towards replicas)."""

from __future__ import annotations

import asyncio


class WriteFlowControl(asyncio.Protocol):
    """`drain()` waits while the transport's write buffer is above its high-water mark."""

    _drain: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._release_writers()
        self._drain = None

    async def _wait_writable(self) -> None:
        if self._drain is not None:
            await self._drain

    def _release_writers(self) -> None:
        """Wake whoever waits in `drain()`: writing resumed, or the connection is gone."""
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
