"""berth's /metrics with 500 deployments: Prometheus' own parser reads it, names follow the conventions,
and the number of series stays under the bound docs/monitoring.md states."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import promql_parser
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from libs.events import (
    LATENCY_BUCKETS_SECONDS,
    DeploymentStatusChanged,
    ReplicaStatus,
    RequestMetricsReported,
    RevisionTarget,
    ServingReplica,
    TrafficAssigned,
)
from libs.prom import MAX_REPLICAS_PER_DEPLOYMENT, MAX_REVISIONS_PER_DEPLOYMENT
from libs.runtime.base import Usage
from services.router.metrics import MetricsReporter, RevisionTotals, RouterCollector
from services.router.table import RoutingTable
from services.scheduler.metrics import DeploymentCollector

DEPLOYMENTS = 500
# docs/monitoring.md, "Cardinality": series per deployment on each /metrics
ROUTER_SERIES_PER_DEPLOYMENT = 5 + (len(LATENCY_BUCKETS_SECONDS) + 2) + MAX_REVISIONS_PER_DEPLOYMENT * (
    2 + len(LATENCY_BUCKETS_SECONDS)
)
SCHEDULER_SERIES_PER_DEPLOYMENT = 3 + 6 * MAX_REPLICAS_PER_DEPLOYMENT
FIXED_SERIES = 200  # per process: the service's own figures, bounded by kinds, not by deployments
NAME = re.compile(r"^berth_[a-z0-9_]+$")


def parse(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return families


def series(families: dict[str, list[tuple[str, dict[str, str], float]]]) -> int:
    return sum(len(samples) for samples in families.values())


def assert_conventions(families: dict[str, list[tuple[str, dict[str, str], float]]]) -> None:
    for name, samples in families.items():
        if not name.startswith("berth_"):
            continue  # process_* and python_* of prometheus_client
        assert NAME.match(name), name
        assert not name.endswith(("_ms", "_milliseconds", "_percent")), f"{name}: not in base units"
        for sample_name, _, _ in samples:
            assert not sample_name.endswith("_created"), f"{sample_name}: _created doubles every counter"


def assignment(i: int, revisions: int) -> TrafficAssigned:
    return TrafficAssigned(
        deployment_id=f"d{i}", project=f"team{i % 7}", slug=f"model-{i}", generation=1, spec_version=revisions,
        targets=[
            RevisionTarget(
                revision_id=f"rev{i}-{r}", percent=100 // revisions if r else 100 - (revisions - 1) * (100 // revisions),
                spec_versions=[r + 1],
                replicas=[ServingReplica(replica_id=f"d{i}-{r}-{k}", address=f"127.0.0.1:{9000 + k}") for k in range(3)],
            )
            for r in range(revisions)
        ],
    )


def router_with(deployments: int, revisions: int, max_deployments: int = 1000) -> tuple[RoutingTable, CollectorRegistry]:
    """A routing table fed 500 assignments, each replica having answered requests, windows closed as
    the running router closes them."""
    table = RoutingTable()
    for i in range(deployments):
        table.apply(assignment(i, revisions), None)
    totals = RevisionTotals()
    published: list[RequestMetricsReported] = []

    async def publish(report: RequestMetricsReported) -> None:
        totals.fold(report)
        published.append(report)

    for route in table.routes():
        for replica in route.replicas.values():
            route.stats.observe(0.02, 200, replica)
        route.stats.observe(3.0, 502, None, answered=False)  # no replica reached
    asyncio.run(MetricsReporter(table.routes, publish).report())
    assert len(published) == deployments
    registry = CollectorRegistry()
    registry.register(RouterCollector(table.routes, lambda: 0, totals, max_deployments))
    return table, registry


def test_the_routers_metrics_with_500_deployments_parse_and_stay_under_the_bound() -> None:
    _, registry = router_with(DEPLOYMENTS, revisions=1)
    families = parse(generate_latest(registry).decode())
    assert_conventions(families)
    assert series(families) <= DEPLOYMENTS * ROUTER_SERIES_PER_DEPLOYMENT + FIXED_SERIES
    requests = {s[1]["deployment"]: s[2] for s in families["berth_router_requests"]}
    assert len(requests) == DEPLOYMENTS and requests["model-7"] == 3 + 1
    revisions = {s[1]["deployment"]: s[2] for s in families["berth_router_revision_requests"]}
    assert len(revisions) == DEPLOYMENTS and revisions["model-7"] == 3  # the 503 reached no revision


def test_a_deployment_shows_at_most_three_revisions() -> None:
    _, registry = router_with(8, revisions=5)
    families = parse(generate_latest(registry).decode())
    assert series(families) <= 8 * ROUTER_SERIES_PER_DEPLOYMENT + FIXED_SERIES
    revisions = [s[1] for s in families["berth_router_revision_requests"] if s[1]["deployment"] == "model-7"]
    assert len(revisions) == MAX_REVISIONS_PER_DEPLOYMENT  # five run; three have series of their own
    by_revision = {s[1]["revision"]: s[2] for s in families["berth_router_revision_requests"]}
    assert by_revision["rev7-0"] == 3
    p99_bucket = [
        s for s in families["berth_router_revision_request_duration_seconds"]
        if s[0].endswith("_bucket") and s[1]["revision"] == "rev7-0" and s[1]["le"] == "0.025"
    ]  # fmt: skip
    assert [s[2] for s in p99_bucket] == [3]


def test_deployments_past_the_cap_are_summed_as_overflow() -> None:
    _, registry = router_with(DEPLOYMENTS, revisions=1, max_deployments=100)
    families = parse(generate_latest(registry).decode())
    requests = {s[1]["deployment"]: s[2] for s in families["berth_router_requests"]}
    assert len(requests) == 101 and requests["_overflow"] == 400 * (3 + 1)
    assert sum(requests.values()) == DEPLOYMENTS * 4  # sum(rate(...)) over all deployments stays right
    assert series(families) <= 101 * ROUTER_SERIES_PER_DEPLOYMENT + FIXED_SERIES


def test_a_retired_revision_loses_its_series() -> None:
    table, registry = router_with(1, revisions=2)
    families = parse(generate_latest(registry).decode())
    assert {s[1]["revision"] for s in families["berth_router_revision_requests"]} == {"rev0-0", "rev0-1"}
    only_new = assignment(0, 2).model_copy(update={"generation": 2, "targets": assignment(0, 2).targets[1:]})
    table.apply(only_new, None)
    families = parse(generate_latest(registry).decode())
    assert {s[1]["revision"] for s in families["berth_router_revision_requests"]} == {"rev0-1"}


def statuses(deployments: int, replicas: int, first: int = 0) -> list[tuple[DeploymentStatusChanged, int | None]]:
    return [
        (
            DeploymentStatusChanged(
                deployment_id=f"d{i}", project="default", slug=f"model-{i}", spec_id=f"s{i}", revision_id=f"rev{i}",
                phase="Degraded", desired_replicas=replicas, ready_replicas=replicas - 1,
                replicas=[
                    ReplicaStatus(replica_id=f"d{i}-{k}", spec_id=f"s{i}", revision_id=f"rev{i}", state="running",
                                  ready=k > 0, restart_count=k)
                    for k in range(replicas)
                ],
            ),
            3,
        )
        for i in range(first, first + deployments)
    ]  # fmt: skip


def test_the_schedulers_metrics_with_500_deployments_parse_and_stay_under_the_bound() -> None:
    observed = statuses(DEPLOYMENTS, replicas=3) + statuses(1, replicas=40, first=DEPLOYMENTS)  # one scaled far out
    usage = {f"d{i}-{k}": Usage(cpu_percent=50.0, memory_percent=25.0, memory_bytes=2**20) for i in range(3) for k in range(3)}
    registry = CollectorRegistry()
    registry.register(DeploymentCollector(lambda: observed, lambda: usage))
    families = parse(generate_latest(registry).decode())
    assert_conventions(families)
    assert series(families) <= (DEPLOYMENTS + 1) * SCHEDULER_SERIES_PER_DEPLOYMENT
    ready = {s[1]["deployment"]: s[2] for s in families["berth_deployment_replicas_ready"]}
    assert len(ready) == DEPLOYMENTS + 1 and ready["model-3"] == 2
    shown = [s for s in families["berth_replica_restarts"] if s[1]["deployment"] == f"model-{DEPLOYMENTS}"]
    assert len(shown) == MAX_REPLICAS_PER_DEPLOYMENT
    cpu = {s[1]["replica"]: s[2] for s in families["berth_replica_cpu_usage_ratio"]}
    assert cpu == {replica: 0.5 for replica in usage}  # a ratio of 0..1; replicas not sampled have none


def test_every_service_process_exposes_conventional_names() -> None:
    """The process-wide registry every service's ops port serves, with each service's figures loaded,
    read in a process of its own (this test process's registry holds what earlier tests counted)."""
    script = (
        "import services.health_monitor.metrics, services.scheduler.metrics, services.spec_registry.metrics\n"
        "from libs.kit import MESSAGES\n"
        "from prometheus_client import REGISTRY, generate_latest\n"
        "MESSAGES.labels('scheduler', 'specs', 'handled').inc()\n"
        "print(generate_latest(REGISTRY).decode())\n"
    )
    text = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    families = parse(text)
    assert_conventions(families)
    assert "berth_messages" in families and series(families) < FIXED_SERIES


def grafana_to_promql(query: str) -> promql_parser.Expr:
    """The query as Prometheus gets it once Grafana has put in its variables (all values chosen)."""
    text = query.replace("$__rate_interval", "1m").replace("$project", ".*").replace("$deployment", ".*")
    return promql_parser.parse(text)  # raises on what Prometheus would refuse


def metric_names(node: object) -> set[str]:
    if isinstance(node, promql_parser.VectorSelector):
        return {node.name} if node.name else set()
    children: list[object] = []
    for attribute in ("args", "expr", "lhs", "rhs", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        children += child if isinstance(child, list) else [child] if child is not None else []
    return set().union(*(metric_names(child) for child in children)) if children else set()


def test_every_metric_the_grafana_dashboard_queries_is_exposed() -> None:
    dashboard = json.loads((Path(__file__).parents[2] / "docs" / "grafana" / "berth.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    selectors = [re.fullmatch(r"label_values\((.*), \w+\)", v["definition"]).group(1)  # type: ignore[union-attr]
                 for v in dashboard["templating"]["list"] if v["type"] == "query"]  # fmt: skip
    used = {name for query in queries + selectors for name in metric_names(grafana_to_promql(query))}
    _, router = router_with(2, revisions=2)
    scheduler = CollectorRegistry()
    usage = {"d0-1": Usage(cpu_percent=10.0, memory_percent=10.0, memory_bytes=1)}
    scheduler.register(DeploymentCollector(lambda: statuses(2, replicas=2), lambda: usage))
    exposed = {
        sample[0]
        for registry in (router, scheduler, REGISTRY)
        for samples in parse(generate_latest(registry).decode()).values()
        for sample in samples
    }
    assert used and used <= exposed, sorted(used - exposed)
    assert {f"histogram_quantile({q}," for q in ("0.5", "0.95", "0.99")} <= {
        q[: q.index(",") + 1] for q in queries if q.startswith("histogram_quantile")
    }
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"project", "deployment"}
