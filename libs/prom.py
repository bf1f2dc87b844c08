"""What every berth /metrics shares: the label names of figures that belong to a deployment, and the
bound on how many deployments, revisions and replicas get series of their own (docs/monitoring.md,
"Prometheus and Grafana").

Prometheus keeps every label combination as a series, so a collector that labelled by deployment
without a cap would let the number of deployments decide the scrape's size. Deployments past the cap
are summed into one `_overflow` deployment (so sums over all deployments stay right); revisions and
replicas past theirs are left out (the deployment's own series still count them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from prometheus_client import disable_created_metrics

# `_created` series double every counter's cost and no berth dashboard or rule reads them.
disable_created_metrics()

DEPLOYMENT_LABELS = ["project", "deployment"]  # deployment: the slug, as in the endpoint's path
REVISION_LABELS = [*DEPLOYMENT_LABELS, "revision"]
REPLICA_LABELS = [*REVISION_LABELS, "replica"]
OVERFLOW = "_overflow"
OVERFLOW_LABELS = [OVERFLOW, OVERFLOW]

DEFAULT_MAX_DEPLOYMENTS = 1000  # BERTH_METRICS_MAX_DEPLOYMENTS
MAX_REVISIONS_PER_DEPLOYMENT = 3  # a rollout's old and new revision, plus one kept for an alias
MAX_REPLICAS_PER_DEPLOYMENT = 10

T = TypeVar("T")


def split_capped(items: Iterable[T], key: Callable[[T], tuple[str, ...]], limit: int) -> tuple[list[T], list[T]]:
    """(the first `limit` items in `key` order, the rest): a stable choice, so a deployment keeps its
    series from one scrape to the next unless deployments before it in that order are added."""
    ordered = sorted(items, key=key)
    return ordered[:limit], ordered[limit:]
