"""The cursor of the logs RPC (libs/bus.LOGS_RPC): per replica, how many lines were seen and a hash
of the last one. The scheduler makes it; API callers hand it back as `since`; the registry checks it
before asking the scheduler, with the same reader, so a cursor is read one way only.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Cursor = dict[str, tuple[int, str]]  # replica id -> (lines seen, hash of the last one)

MAX_GREP_CHARS = 256
MAX_CURSOR_CHARS = 16 * 1024  # some 200 replicas; a cursor only ever holds the deployment's live ones
MAX_LINES_SEEN = 2**63 - 1


class CursorInvalid(ValueError):
    pass


@dataclass(frozen=True)
class LogSearch:
    """The filters of a logs request beside the cursor (checked by the registry, applied by the scheduler)."""

    since_time: datetime | None = None
    until: datetime | None = None
    grep: str | None = None
    include_replaced: bool = False

    def fields(self) -> dict[str, Any]:
        return {
            "since_time": self.since_time.isoformat() if self.since_time else None,
            "until": self.until.isoformat() if self.until else None,
            "grep": self.grep,
            "include_replaced": self.include_replaced,
        }


def encode_cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode()


def read_cursor(text: str) -> Cursor:
    """The cursor in `text`; CursorInvalid when it is not one the scheduler made (whatever it holds)."""
    if len(text) > MAX_CURSOR_CHARS:
        raise CursorInvalid(f"longer than {MAX_CURSOR_CHARS} characters")
    try:
        data = json.loads(base64.urlsafe_b64decode(text.encode("ascii")))
    except (binascii.Error, UnicodeError, ValueError, RecursionError) as exc:
        raise CursorInvalid("not a cursor") from exc
    if not isinstance(data, dict) or not all(_is_entry(value) for value in data.values()):
        raise CursorInvalid("not a cursor")
    return {str(replica): (int(seen), str(last)) for replica, (seen, last) in data.items()}


def _is_entry(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and type(value[0]) is int
        and 0 <= value[0] <= MAX_LINES_SEEN
        and isinstance(value[1], str)
    )


def decode_cursor(text: Any) -> Cursor:
    """The cursor in `text`, or none (read from the tail again) when it cannot be read."""
    if not text or not isinstance(text, str):
        return {}
    try:
        return read_cursor(text)
    except CursorInvalid:
        return {}
