"""Durations as users write them in queries and rules: `30s`, `5m`, `1h30m`, `24h`, `30d` (the
Prometheus duration units from days down to seconds, each at most once, largest first)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNITS = (86400, 3600, 60, 1)
RULE = "must be a duration such as 30s, 5m, 1h or 30d"


def parse_duration(text: str) -> int | None:
    """Whole seconds, or None when `text` is not a duration."""
    match = _DURATION.match(text.strip()) if text else None
    if match is None or not any(match.groups()):
        return None
    return sum(int(part) * unit for part, unit in zip(match.groups(), _UNITS, strict=True) if part)
