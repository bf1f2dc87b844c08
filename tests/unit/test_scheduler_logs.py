"""The logs cursor: the tail first, then only what was written since (pure)."""

from __future__ import annotations

from services.scheduler.logs import (
    LOOKBACK,
    decode_cursor,
    encode_cursor,
    line_hash,
    new_lines,
)


def test_first_read_is_the_tail_with_line_numbers() -> None:
    assert new_lines(["a", "b", "c"], None, tail=2) == (1, ["b", "c"])
    assert new_lines(["a"], None, tail=0) == (1, [])


def test_then_only_new_lines_even_when_lines_repeat() -> None:
    window = ["GET /", "GET /", "GET /"]
    first, lines = new_lines(window, None, tail=100)
    seen = (first + len(lines), line_hash(window[-1]))
    assert new_lines([*window, "GET /", "GET /"], seen, tail=100) == (3, ["GET /", "GET /"])
    assert new_lines(window, seen, tail=100) == (3, [])


def test_a_long_log_is_followed_by_its_last_line_seen() -> None:
    window = [f"line {i}" for i in range(5000, 5000 + LOOKBACK)]
    seen = (7000, line_hash("line 6990"))
    offset, lines = new_lines(window, seen, tail=100)
    assert (offset, lines[0], len(lines)) == (7000, "line 6991", LOOKBACK + 5000 - 6991)


def test_cursor_round_trip_and_garbage() -> None:
    cursor = {"r1": (12, "abcd")}
    assert decode_cursor(encode_cursor(cursor)) == cursor
    assert decode_cursor("not a cursor") == {} and decode_cursor(None) == {} and decode_cursor(5) == {}


def test_a_crafted_cursor_is_read_as_none_instead_of_throwing() -> None:
    """The scheduler's handler threw on these, and the registry waited 5 s for a reply."""
    import base64
    import json

    for data in ({"r": [1e999, "x"]}, {"r": [-1, "x"]}, {"r": [True, "x"]}, json.loads("[" * 900 + "]" * 900), {"r": 5}):
        assert decode_cursor(base64.urlsafe_b64encode(json.dumps(data).encode()).decode()) == {}
