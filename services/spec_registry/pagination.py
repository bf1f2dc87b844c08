"""Keyset pagination for lists: `limit` and an opaque `after` cursor in, `next` out (null on the last
page). A cursor holds the sort key of the last item served, so pages stay consistent while
deployments are created or deleted between calls: nothing is served twice, nothing skipped that
existed throughout."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Query

from libs.spec import SpecError
from services.spec_registry.problems import Invalid

T = TypeVar("T")
Key = TypeVar("Key", str, int)

Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page.")]
After = Annotated[str | None, Query(description="The `next` cursor of the previous page.")]
DEFAULT_LIMIT = 100


def encode_cursor(key: str | int) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: type[Key]) -> Key | None:
    """The sort key in `cursor` (None for the first page); 422 naming `after` when it is not one of ours."""
    if cursor is None:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        key = None
    if type(key) is not kind:
        raise Invalid("bad cursor", [SpecError("after", "must be the `next` value of an earlier answer")])
    return key  # type: ignore[no-any-return]


def paginate(rows: list[T], limit: int, key: Callable[[T], str | int]) -> tuple[list[T], str | None]:
    """`rows` as fetched with `limit + 1`: the page, and the cursor of the next one if there is one."""
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    return page, encode_cursor(key(page[-1]))
