"""The logs RPC: `berth.rpc.v1.logs` requests from the registry, answered from the runtime.

Request {"deployment_id", "replica_id"?, "tail"?, "since"?}; reply {"lines": [{"replica_id", "offset",
"line"}], "next": cursor}. Without `since`: the last `tail` lines of each replica. With `since` (the
`next` of an earlier reply): only lines written after it, so `berth logs -f` can poll.

The runtime hands out the last N lines of a replica's output, not line numbers, so the cursor is
stateless and says, per replica, how many lines were seen and what the last one was. While a log is
shorter than the window read (LOOKBACK lines) positions are exact; beyond it the last line seen is
looked for in the window (a log repeating that very line may then show fewer new lines than it has).
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from libs.logcursor import Cursor, decode_cursor, encode_cursor
from libs.logging import get_logger
from libs.runtime.base import ReplicaNotFound, Runtime

__all__ = ["Cursor", "decode_cursor", "encode_cursor"]
log = get_logger("scheduler")

LOOKBACK = 2000
MAX_TAIL = 10_000


class LogsRequest(BaseModel):
    deployment_id: str
    replica_id: str | None = None
    tail: int = Field(default=100, ge=0)
    since: Any = None  # the `next` of an earlier reply


class LogLine(BaseModel):
    replica_id: str
    offset: int  # 0-based line number in the replica's output (since its log began, as far as known)
    line: str


class LogsReply(BaseModel):
    lines: list[LogLine] = Field(default_factory=list)
    next: str
    error: str | None = None


def line_hash(line: str) -> str:
    return hashlib.blake2b(line.encode(), digest_size=8).hexdigest()


def new_lines(window: list[str], seen: tuple[int, str] | None, tail: int) -> tuple[int, list[str]]:
    """(offset of the first returned line, lines) of a window: the log's last len(window) lines."""
    if seen is None:
        lines = window[-tail:] if tail else []
        return len(window) - len(lines), lines
    count, last_hash = seen
    if len(window) < LOOKBACK and 0 < count <= len(window) and line_hash(window[count - 1]) == last_hash:
        return count, window[count:]
    for index in range(len(window) - 1, -1, -1):
        if line_hash(window[index]) == last_hash:
            return count, window[index + 1 :]
    return count, window  # the line seen is gone (rotated away, or the log restarted): all is new


async def answer(runtime: Runtime, request: LogsRequest) -> LogsReply:
    replicas = [
        r for r in await runtime.replicas()
        if r.deployment_id == request.deployment_id and request.replica_id in (None, r.replica_id)
    ]  # fmt: skip
    cursor = decode_cursor(request.since)
    lines: list[LogLine] = []
    following = bool(request.since)
    for replica in sorted(replicas, key=lambda r: r.replica_id):
        try:
            window = await runtime.logs(replica.replica_id, tail=LOOKBACK)
        except ReplicaNotFound:
            continue  # stopped between the two calls
        seen = cursor.get(replica.replica_id)
        # A replica that appeared since the cursor was made: everything it wrote is new.
        tail = LOOKBACK if following and seen is None else min(request.tail, MAX_TAIL)
        first, fresh = new_lines(window, seen, tail)
        lines += [LogLine(replica_id=replica.replica_id, offset=first + i, line=t) for i, t in enumerate(fresh)]
        if window:
            cursor[replica.replica_id] = (first + len(fresh), line_hash(window[-1]))
    live = {r.replica_id for r in replicas}
    next_cursor = {rid: seen for rid, seen in cursor.items() if rid in live}
    return LogsReply(lines=lines, next=encode_cursor(next_cursor))


def error_reply(message: str) -> dict[str, Any]:
    return LogsReply(next="", error=message).model_dump()


async def reply(runtime: Runtime, body: Any) -> dict[str, Any]:
    """The reply to one request: lines, or an error saying why not. Never raises: a request the
    handler threw on would get no reply, and the registry would wait out its timeout."""
    try:
        request = LogsRequest.model_validate(body)
    except ValidationError as exc:
        return error_reply(f"bad logs request: {exc.errors()[0]['msg']}")
    try:
        return (await answer(runtime, request)).model_dump()
    except Exception:
        log.exception("logs request failed", deployment_id=request.deployment_id)
        return error_reply("the scheduler failed to read the logs; see its log")
