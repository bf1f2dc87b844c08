"""Durations as users write them in queries and rules: Prometheus durations (model.ParseDuration),
units from years to milliseconds, each at most once and largest first (`90s`, `5m`, `1h30m`, `30d`);
`0` alone is zero. One grammar for alert rules, metrics windows and log time ranges."""

from __future__ import annotations

import re

# At most 9 digits a unit: a count of 10,000 digits is refused as not a duration (no huge ints).
DURATION = re.compile(
    r"^(?:0|(?:(\d{1,9})y)?(?:(\d{1,9})w)?(?:(\d{1,9})d)?(?:(\d{1,9})h)?(?:(\d{1,9})m)?(?:(\d{1,9})s)?(?:(\d{1,9})ms)?)$"
)
_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
RULE = "must be a duration such as 30s, 5m or 1h30m (units y, w, d, h, m, s, ms, largest first)"


def duration_seconds(text: str) -> float:
    """Seconds of a duration (`5m` -> 300.0); ValueError naming the rule when it is not one."""
    match = DURATION.fullmatch(text) if text else None
    if match is None:
        raise ValueError(RULE)
    return sum(int(count) * unit for count, unit in zip(match.groups(), _UNITS, strict=True) if count)


def parse_duration(text: str) -> int | None:
    """Whole seconds of a positive duration, or None when `text` is not one (a query's window or step)."""
    try:
        seconds = duration_seconds(text.strip())
    except ValueError:
        return None
    return int(seconds) if seconds > 0 and seconds == int(seconds) else None
