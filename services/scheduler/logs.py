"""The logs RPC: `berth.rpc.v1.logs` requests from the registry, answered from the runtime.

Request {"deployment_id", "replica_id"?, "tail"?, "since"?, "since_time"?, "until"?, "grep"?,
"include_replaced"?}; reply {"lines": [{"replica_id", "offset", "time", "line"}], "next": cursor}.
Without `since`: the last `tail` lines of each replica. With `since` (the `next` of an earlier reply):
only lines written after it, so `berth logs -f` can poll. `since_time` / `until` (written at or after /
before) and `grep` (a plain substring) filter the lines; the last `tail` lines that pass are returned,
out of the last SEARCH_LOOKBACK lines of each replica. `include_replaced` (or a `replica_id` that
names one) adds replicas that are gone but whose output the runtime keeps.

The runtime hands out the last N lines of a replica's output, not line numbers, so the cursor is
stateless and says, per replica, how many lines were seen and what the last one was. While a log is
shorter than the window read (LOOKBACK lines) positions are exact; beyond it the last line seen is
looked for in the window (a log repeating that very line may then show fewer new lines than it has).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from libs.logcursor import MAX_GREP_CHARS, Cursor, decode_cursor, encode_cursor
from libs.logging import get_logger
from libs.runtime.base import ReplicaNotFound, Runtime
from libs.runtime.logfiles import split_stamp

__all__ = ["Cursor", "decode_cursor", "encode_cursor"]
log = get_logger("scheduler")

LOOKBACK = 2000
SEARCH_LOOKBACK = 20_000  # lines of each replica a filtered request looks through
MAX_TAIL = 10_000


class LogsRequest(BaseModel):
    deployment_id: str
    replica_id: str | None = None
    tail: int = Field(default=100, ge=0)
    since: Any = None  # the `next` of an earlier reply
    since_time: datetime | None = None
    until: datetime | None = None
    grep: str | None = Field(default=None, max_length=MAX_GREP_CHARS)
    include_replaced: bool = False

    @field_validator("since_time", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    @property
    def filtered(self) -> bool:
        return bool(self.since_time or self.until or self.grep)

    def keeps(self, at: datetime | None, text: str) -> bool:
        if self.grep and self.grep not in text:
            return False
        if (self.since_time or self.until) and at is None:
            return False  # written before lines carried a time: not known to be in the range
        if self.since_time and at is not None and at < self.since_time:
            return False
        return not (self.until and at is not None and at >= self.until)


class LogLine(BaseModel):
    replica_id: str
    offset: int  # 0-based line number in the replica's output (since its log began, as far as known)
    time: datetime | None = None  # when the line was written (None: logged before berth kept times)
    line: str
    replaced: bool = False  # the replica is gone; its output is kept for the retention period


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
    wanted = request.replica_id
    live = {
        r.replica_id for r in await runtime.replicas()
        if r.deployment_id == request.deployment_id and wanted in (None, r.replica_id)
    }  # fmt: skip
    replaced: set[str] = set()
    if request.include_replaced or (wanted is not None and wanted not in live):
        replaced = {
            r.replica_id for r in await runtime.retained_logs(request.deployment_id)
            if wanted in (None, r.replica_id) and r.replica_id not in live
        }  # fmt: skip
    cursor = decode_cursor(request.since)
    lines: list[LogLine] = []
    following = bool(request.since)
    # A search looks further back; a poll of `-f` only needs what is new since the cursor.
    lookback = SEARCH_LOOKBACK if request.filtered and not following else LOOKBACK
    tail = min(request.tail, MAX_TAIL)
    for replica_id in sorted(live | replaced):
        try:
            window = await runtime.logs(replica_id, tail=lookback, timestamps=True)
        except ReplicaNotFound:
            continue  # stopped (or pruned) between the two calls
        seen = cursor.get(replica_id)
        # A replica that appeared since the cursor was made: everything it wrote is new. A filter
        # looks through the whole window, then keeps the last `tail` lines that pass.
        first, fresh = new_lines(window, seen, lookback if following or request.filtered else tail)
        found = []
        for i, raw in enumerate(fresh):
            at, text = split_stamp(raw)
            if request.keeps(at, text):
                found.append(LogLine(replica_id=replica_id, offset=first + i, time=at, line=text,
                                     replaced=replica_id in replaced))  # fmt: skip
        lines += found if following else found[-tail:] if tail else []
        if window:
            cursor[replica_id] = (first + len(fresh), line_hash(window[-1]))
    shown = live | replaced
    next_cursor = {rid: seen for rid, seen in cursor.items() if rid in shown}
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
