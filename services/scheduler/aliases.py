"""Which version each alias resolves to in the assignment (pure).

An alias moved to a version whose revision has no ready replica yet keeps resolving to the version it
resolved to before, whose replicas keep running meanwhile (they stay pinned); it switches in the first
assignment after the new revision has a ready replica, so moving an alias fails no request. A new
alias resolves at once (503 "no ready replica" until one is); a removed one is gone at once (404).
"""

from __future__ import annotations

from collections.abc import Mapping

from libs.events import AliasTarget
from libs.revision import revision_id


def resolve(
    wanted: Mapping[str, AliasTarget], before: Mapping[str, AliasTarget], ready_revisions: set[str]
) -> dict[str, AliasTarget]:
    """alias -> the target it resolves to now."""
    now: dict[str, AliasTarget] = {}
    for alias, target in wanted.items():
        held = before.get(alias)
        switch = held is None or held.spec_version == target.spec_version or revision_id(target.spec) in ready_revisions
        now[alias] = target if switch else held
    return now
