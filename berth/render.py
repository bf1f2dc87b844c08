"""How the CLI shows things: rich tables for people, `-o json|yaml` for scripts, errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

import typer
import yaml
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from berth.client import Alias, ApiError, Deployment, DryRun, FieldChange, LogLine, ReplicaStatus, SpecVersion, Status
from berth.valohai import Imported
from libs.spec import SpecError

SHORT_ID = 12
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


def emit(data: Any, output: Output, show: Callable[[], None]) -> None:
    """Print `data` as JSON or YAML for scripts, or call `show` to render it for people."""
    if output is Output.json:
        typer.echo(json.dumps(data, indent=2, default=str))
    elif output is Output.yaml:
        typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())
    else:
        show()


def spec_errors(source: str, errors: Iterable[SpecError]) -> None:
    errors = list(errors)
    noun = "error" if len(errors) == 1 else "errors"
    err.print(f"[red]✗[/] {escape(source)} is not a valid spec ({len(errors)} {noun}):")
    for error in errors:
        err.print(f"  [bold]{escape(error.field)}[/]: {escape(error.rule)}")


def api_error(exc: ApiError) -> None:
    err.print(f"[red]✗[/] {escape(exc.title)} [dim](HTTP {exc.status})[/]")
    if exc.detail and exc.detail != exc.title:
        err.print(f"  {escape(exc.detail)}")
    for error in exc.errors:
        err.print(f"  [bold]{escape(error['field'])}[/]: {escape(error['rule'])}")


def failure(message: str) -> None:
    err.print(f"[red]✗[/] {escape(message)}")


def _phase(status: Status | None) -> str:
    phase = (status or {}).get("phase") or "Pending"
    colour = {"Ready": "green", "Degraded": "yellow", "Failed": "red", "CrashLoopBackOff": "red"}.get(phase, "cyan")
    return f"[{colour}]{escape(phase)}[/]"


def _ready(status: Status | None) -> str:
    status = status or {}
    return f"{status.get('ready_replicas', 0)}/{status.get('desired_replicas', '?')}"


def when(timestamp: object) -> str:
    """An API timestamp, to the second, in local time: `2026-11-21 05:12:32`."""
    try:
        return datetime.fromisoformat(str(timestamp)).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(timestamp or "")


def short_id(spec_id: str) -> str:
    """The first 12 characters, as git and docker show ids in lists; `-o json` has them whole."""
    return spec_id[:SHORT_ID]


def table(*columns: str) -> Table:
    """The look of every list: a header line and columns, no borders."""
    listing = Table(box=box.SIMPLE, pad_edge=False)
    for column in columns:
        listing.add_column(column, no_wrap=True)
    return listing


def show(renderable: Table) -> None:
    """Print a table whole even when wider than the terminal (or than 80 columns when piped):
    ids and URLs are never cut; as with kubectl, the terminal wraps a long line."""
    natural = Measurement.get(out, out.options.update(max_width=10_000), renderable).maximum
    console = out if natural <= out.width else Console(file=out.file, width=natural)
    console.print(renderable)


def deployments_table(items: list[Deployment]) -> None:
    if not items:
        out.print("No deployments. Create one with [bold]berth apply -f examples/iris.yaml[/].")
        return
    many_projects = len({d["project"] for d in items}) > 1
    listing = table(
        "NAME", "SLUG", *(["PROJECT"] if many_projects else []), "ENVIRONMENT", "VERSION", "PHASE", "READY", "ENDPOINT"
    )
    for d in items:
        status = d.get("status")
        listing.add_row(
            escape(d["name"]),
            escape(d["slug"]),
            *([escape(d["project"])] if many_projects else []),
            escape(d["environment"]),
            str(d["spec_version"]),
            _phase(status),
            _ready(status),
            escape(d["endpoint"]),
        )
    show(listing)


Section = tuple[str, list[tuple[str, str]]]  # a title and its (label, rich markup) rows


def deployment_detail(d: Deployment, status: Status) -> None:
    """The details panel of the console (seeds/002): basic information, resources, scaling, load
    balancer, status; then a row per replica."""
    panel = Table.grid(padding=(0, 2))
    panel.add_column(style="bold")
    panel.add_column()
    for title, rows in _sections(d, status):
        panel.add_row(f"[underline]{title}[/]", "")
        for label, value in rows:
            panel.add_row(f"  {label}", value)
    out.print(panel)
    replicas = status.get("replicas") or []
    if replicas:
        show(replicas_table(replicas))


def _sections(d: Deployment, status: Status) -> list[Section]:
    spec = d["spec"]
    resources = spec.get("resources") or {}
    model = spec.get("model") or {}
    strategy = spec.get("updateStrategy") or {}
    canary = f" ({strategy['canaryPercent']}%)" if strategy.get("canaryPercent") else ""
    version = f"{d['spec_version']} (spec_id {d['spec_id']}, revision {d.get('revision_id') or '?'})"
    basic = [
        ("Name", d["name"]),
        ("Description", spec.get("description") or "-"),
        ("Deployment ID", d["deployment_id"]),
        ("Project / slug", f"{d['project']}/{d['slug']}"),
        ("Endpoint", d["endpoint"]),
        ("Environment", d["environment"]),
        ("Model", f"{model.get('id')} {model.get('version')}" if model else "-"),
        ("Image", str(spec.get("image", ""))),
        ("Command", " ".join(spec.get("command") or []) or "(image default)"),
        ("Update strategy", str(strategy.get("type", "rolling")) + canary),
        ("Enabled", _yes(spec.get("enabled", True))),
        ("Spec version", version),
        ("Created", when(d.get("created_at"))),
        ("Updated", when(d.get("updated_at"))),
    ]
    gpus = resources.get("gpuCount", 0)
    machine = [
        ("Ports", ", ".join(str(p) for p in resources.get("ports", []))),
        ("Machine type", resources.get("machineType") or "-"),
        ("CPU cores", _or_dash(resources.get("cpu"))),
        ("Memory (GB)", _or_dash(resources.get("memory"))),
        ("GPUs", f"{gpus} × {resources['gpuType']}" if gpus and resources.get("gpuType") else str(gpus)),
    ]
    reason = status.get("reason")
    state = [("Phase", _phase(status) + (f" — {escape(reason)}" if reason else ""))]
    if status.get("not_provided"):
        state.append(("Not provided", escape(", ".join(status.get("not_provided", [])))))
    if fetching := status.get("fetching"):
        so_far = f"{fetching['fetched_files']} files, {fetching['fetched_bytes']} bytes so far"
        state.append(("Fetching", escape(f"{fetching['integration']}: {so_far}")))
    for integration in status.get("integrations") or []:
        content = f"{integration['type']} {integration['identity'][:12]}, {integration['files']} files, {integration['bytes']} bytes"
        state.append((f"Integration {escape(integration['name'])}", escape(f"{integration['mount']} ({content})")))
    for alert in status.get("alerts") or []:
        style = ALERT_STYLE.get(alert["state"], "")
        since = f" since {when(alert['since'])}" if alert.get("since") else ""
        state.append((f"Alert {escape(alert['name'])}", f"[{style}]{alert['state']}[/]{escape(since)}"))
    return [
        ("Basic information", _escaped(basic)),
        ("Resources (per replica)", _escaped(machine)),
        ("Scaling", _escaped(_scaling(d, status))),
        ("Load balancer", _escaped(_load_balancer(spec))),
        ("Status", state),
        ("Metrics (last minute)", current_figures(status.get("metrics"))),
    ]


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.2f} %"


def current_figures(summary: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The metrics service's figures as `deployments get` shows them (its Summary, docs/api.md)."""
    if not summary:
        return [("Figures", "none yet (the metrics service reports every 10 s while there is traffic)")]
    usage = [f"{name} {summary[key]:.0f} %" for name, key in (("CPU", "cpu_percent"), ("memory", "memory_percent"),
             ("GPU", "gpu_percent")) if summary.get(key) is not None]  # fmt: skip
    return [
        ("Request rate", f"{summary['request_rate']:.2f}/s"),
        ("Error rate", f"{percent(summary['error_rate'])} (4xx {percent(summary['client_error_rate'])})"),
        ("Latency p50 / p95 / p99", " / ".join(seconds(summary.get(q)) for q in ("latency_p50", "latency_p95", "latency_p99"))),
        ("In flight", str(summary.get("in_flight", 0))),
        ("Usage (mean of replicas)", ", ".join(usage) or "-"),
    ]


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(points: list[list[Any]], width: int = 40) -> str:
    """The last `width` points as unicode blocks, scaled between their min and max; gaps are spaces."""
    values = [v for _, v in points[-width:]]
    present = [v for v in values if v is not None]
    if not present:
        return ""
    low, high = min(present), max(present)
    span = (high - low) or 1.0
    return "".join(" " if v is None else SPARKS[min(int((v - low) / span * (len(SPARKS) - 1) + 0.5), len(SPARKS) - 1)]
                   for v in values)  # fmt: skip


_SHOWN = (
    ("request_rate", "Requests/s", lambda v: f"{v:.2f}"),
    ("error_rate", "Errors (5xx, upstream)", lambda v: percent(v)),
    ("client_error_rate", "Client errors (4xx)", lambda v: percent(v)),
    ("latency_p50", "Latency p50", seconds),
    ("latency_p95", "Latency p95", seconds),
    ("latency_p99", "Latency p99", seconds),
    ("in_flight", "In flight", lambda v: f"{v:.1f}"),
    ("replicas_ready", "Ready replicas", lambda v: f"{v:.1f}"),
    ("replicas_desired", "Desired replicas", lambda v: f"{v:.1f}"),
    ("restarts", "Restarts", lambda v: f"{v:.0f}"),
    ("cpu_percent", "CPU %", lambda v: f"{v:.0f}"),
    ("memory_percent", "Memory %", lambda v: f"{v:.0f}"),
    ("gpu_percent", "GPU %", lambda v: f"{v:.0f}"),
)


def metrics_table(answer: dict[str, Any]) -> Table:
    """`berth deployments metrics`: per series its last value, min/max over the window and a sparkline."""
    version = f", version {answer['version']}" if answer.get("version") else ""
    shown = table("Series", "Now", "Min", "Max", "Over time")
    shown.title = f"{answer['window_seconds']}s window, {answer['step_seconds']}s steps{version}"
    for key, title, fmt in _SHOWN:
        points = answer["series"].get(key) or []
        present = [v for _, v in points if v is not None]
        last = next((v for _, v in reversed(points) if v is not None), None)
        shown.add_row(title, "-" if last is None else fmt(last), fmt(min(present)) if present else "-",
                      fmt(max(present)) if present else "-", sparkline(points))  # fmt: skip
    for replica in answer.get("replicas") or []:
        series = replica["series"]
        rate = next((v for _, v in reversed(series["request_rate"]) if v is not None), None)
        label = f"replica {escape(replica['replica_id'][:12])}"
        shown.add_row(label + " req/s", "-" if rate is None else f"{rate:.2f}", "", "", sparkline(series["request_rate"]))
        p99 = next((v for _, v in reversed(series["latency_p99"]) if v is not None), None)
        shown.add_row(label + " p99", seconds(p99), "", "", sparkline(series["latency_p99"]))
    return shown


def _scaling(d: Deployment, status: Status) -> list[tuple[str, str]]:
    resources = d["spec"].get("resources") or {}
    scale = d.get("scale")
    source = status.get("desired_source", "spec")
    origin = {
        "spec": f"the spec (resources.replicas: {resources.get('replicas', 1)})",
        "stopped": "none: the deployment is stopped (enabled: false)",
        "autoscaler": "the autoscaler",
        "user": (
            f"your scale of {when(scale['scaled_at'])} (the spec says {scale['spec_replicas']}; "
            "a spec with another resources.replicas replaces it)"
            if scale
            else "your scale"
        ),
    }.get(source, source)
    autoscaling = resources.get("autoscaling") or {}
    rows = [("Replicas", f"{_ready(status)} ready"), ("Desired from", origin)]
    if autoscaling.get("enabled"):
        low = autoscaling.get("minReplicas", resources.get("replicas", 1))
        rows.append(("Auto-scaling", f"on, {low} to {autoscaling.get('maxReplicas')} replicas"))
        targets = ", ".join(f"{m['metric']} {m['value']:g}{_unit(m['metric'])}" for m in autoscaling.get("metrics", []))
        rows.append(("Targets", targets or "-"))
        if status.get("scale_reason"):
            rows.append(("Last decision", escape(str(status["scale_reason"]))))
    else:
        rows.append(("Auto-scaling", "off"))
    return rows


def _load_balancer(spec: dict[str, Any]) -> list[tuple[str, str]]:
    balancer = spec.get("loadBalancer") or {}
    readiness = (spec.get("healthChecks") or {}).get("readiness") or {}
    path = balancer.get("healthCheckPath") or readiness.get("path")
    every = balancer.get("healthCheckIntervalSeconds") or readiness.get("periodSeconds") or 10
    return [
        ("Enabled", _yes(balancer.get("enabled", True))),
        ("Algorithm", balancer.get("algorithm", "round-robin")),
        ("Health check", f"{path} every {every} s" if path else "none (a replica is ready once started)"),
        ("Sticky sessions", _yes(balancer.get("stickySessions", False))),
    ]


def _escaped(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(label, escape(value)) for label, value in rows]


def _yes(flag: object) -> str:
    return "yes" if flag else "no"


def _or_dash(value: object) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _unit(metric: str) -> str:
    return {"requestDuration": " s", "concurrency": " in flight per replica", "rps": " req/s per replica"}.get(metric, "%")


def replicas_table(replicas: list[ReplicaStatus]) -> Table:
    rolling = len({r.get("spec_id") for r in replicas}) > 1  # two spec versions during a rollout
    listing = table("REPLICA", "STATE", "HEALTH", "RESTARTS", "ADDRESS", *(["SPEC ID"] if rolling else []))
    for r in replicas:
        restarts = str(r.get("restart_count", 0))
        if r.get("last_exit_code") is not None:
            restarts += f" (last exit {r.get('last_exit_code')})"
        listing.add_row(
            escape(r.get("replica_id", "")),
            escape(r.get("state", "")),
            _health(r),
            restarts,
            escape(r.get("address") or "-"),
            *([escape(short_id(r.get("spec_id") or ""))] if rolling else []),
        )
    return listing


def _health(replica: ReplicaStatus) -> str:
    if replica.get("ready"):
        return "[green]ready[/]"
    if not replica.get("started"):
        return "[cyan]starting[/]"
    return "[yellow]not ready[/]" if replica.get("live") else "[red]not live[/]"


def history_table(items: list[SpecVersion]) -> None:
    """Spec versions; versions with the same REVISION run the same template (only replicas, enabled,
    the load balancer or health checks differ)."""
    listing = table("VERSION", "SPEC ID", "REVISION", "CREATED", "BY", "IMAGE", "REPLICAS", "ENABLED")
    for v in items:
        spec = v["spec"]
        by = v.get("created_by")
        listing.add_row(
            str(v["spec_version"]),
            escape(short_id(v["spec_id"])),
            escape(v.get("revision_id", "")),
            when(v["created_at"]),
            f"token {by}" if by is not None else "-",
            escape(str(spec.get("image", ""))),
            str((spec.get("resources") or {}).get("replicas", "")),
            str(spec.get("enabled", True)).lower(),
        )
    show(listing)
    for v in items:
        if v.get("rolled_back_at"):
            reason = escape(v.get("rolled_back_reason") or "")
            out.print(f"version {v['spec_version']}: rolled back automatically {when(v['rolled_back_at'])}: {reason}")
    for v in items:
        changes = v.get("changes")
        if changes is not None:
            out.print(f"version {v['spec_version']}: {len(changes)} field(s) changed from the version before")
            show(changes_table(changes))


def changes_table(changes: list[FieldChange]) -> Table:
    listing = table("FIELD", "BEFORE", "AFTER", "EFFECT")
    for c in changes:
        listing.add_row(escape(c["field"]), _value(c["before"]), _value(c["after"]), c["effect"])
    return listing


def _value(value: object) -> str:
    return "-" if value is None else escape(json.dumps(value) if not isinstance(value, str) else value)


def dry_run(answer: DryRun) -> None:
    if answer["deployment_id"] is None:
        out.print("[bold]dry run:[/] would create the deployment (nothing was stored)")
    elif answer["unchanged"]:
        out.print(f"[bold]dry run:[/] unchanged: version {answer['spec_version']} is this spec")
        return
    else:
        out.print(f"[bold]dry run:[/] changes against version {answer['spec_version']} (nothing was stored)")
    show(changes_table(answer["changes"]))
    out.print(answer["rollout"])


def aliases_table(items: list[Alias]) -> None:
    if not items:
        out.print("No aliases.")
        return
    listing = table("ALIAS", "VERSION", "UPDATED", "ENDPOINT")
    for a in items:
        listing.add_row(escape(a["alias"]), str(a["spec_version"]), when(a["updated_at"]), escape(a["endpoint"]))
    show(listing)


def aliased(a: Alias) -> None:
    verb = "unchanged: alias" if a.get("unchanged") else "alias"
    out.print(
        f"[green]✓[/] {verb} [bold]{escape(a['alias'])}[/] -> version {a['spec_version']}\n"
        f"  endpoint  {escape(a['endpoint'])}\n"
        "  requests switch once that version has a ready replica; until then the alias keeps its previous version"
    )


def secrets_table(used_by: dict[str, list[str]]) -> None:
    if not used_by:
        out.print("None.")
        return
    listing = table("NAME", "USED BY")
    for name, deployments in used_by.items():
        listing.add_row(escape(name), escape(", ".join(deployments)) or "-")
    show(listing)


ALERT_STYLE = {"firing": "red", "pending": "yellow", "resolved": "green", "inactive": "dim"}


def alerts_table(alerts: list[dict[str, Any]]) -> None:
    if not alerts:
        out.print("No alerts.")
        return
    listing = table("DEPLOYMENT", "ALERT", "STATE", "SINCE", "VALUE", "CONDITION")
    for alert in alerts:
        style = ALERT_STYLE.get(alert["state"], "")
        value = "-" if alert.get("value") is None else f"{alert['value']:.4g}"
        condition = f"{alert['metric']} {alert['op']} {alert['threshold']:g} for {alert['for']} (window {alert['window']})"
        listing.add_row(
            escape(alert["deployment"]), escape(alert["name"]), f"[{style}]{alert['state']}[/]",
            escape(str(alert.get("since") or "-")), value, escape(condition),
        )  # fmt: skip
    show(listing)


def webhooks_table(webhooks: list[dict[str, Any]]) -> None:
    if not webhooks:
        out.print("No webhooks.")
        return
    listing = table("URL", "KEY", "UPDATED")
    for hook in webhooks:
        listing.add_row(escape(hook["url"]), escape(hook["secret"]), escape(str(hook["updated_at"])))
    show(listing)


def changed(verb: str, d: Deployment) -> None:
    """What a write did; `unchanged` when the API stored nothing (it was already so)."""
    verb = "unchanged:" if d.get("unchanged") else verb
    out.print(
        f"[green]✓[/] {verb} deployment [bold]{escape(d['name'])}[/] ({escape(d['project'])}/{escape(d['slug'])})\n"
        f"  deployment id  {escape(d['deployment_id'])}\n"
        f"  spec id        {escape(d['spec_id'])}\n"
        f"  version        {d['spec_version']}\n"
        f"  endpoint       {escape(d['endpoint'])}"
    )


def scaled(d: Deployment) -> None:
    status = d.get("status") or {}
    scale = d.get("scale")
    wanted = scale["replicas"] if scale else (d["spec"].get("resources") or {}).get("replicas", 1)
    later = {"stopped": "; it applies once the deployment is started", "autoscaler": "; autoscaling decides while on"}
    note = later.get(status.get("desired_source", ""), "")
    name = escape(d["name"])
    if d.get("unchanged"):
        out.print(f"[green]✓[/] unchanged: deployment [bold]{name}[/] is already set to {wanted} replicas{note}")
        return
    out.print(
        f"[green]✓[/] scaled deployment [bold]{name}[/] to {wanted} replicas{note}\n"
        f"  spec version {d['spec_version']} stays; a spec that sets another resources.replicas replaces this scale"
    )


def log_lines(lines: list[LogLine], output: Output, prefix: bool, timestamps: bool = False) -> None:
    """Log lines as written (`[replica] line`, after the time each was written with `timestamps`), or,
    for scripts that follow, one JSON object per line (JSON Lines) or one YAML document per line."""
    for line in lines:
        if output is Output.json:
            typer.echo(json.dumps(line))
        elif output is Output.yaml:
            typer.echo("---\n" + yaml.safe_dump(dict(line), sort_keys=False, allow_unicode=True).rstrip())
        else:
            text = line["line"].rstrip("\n")
            text = f"[{line['replica_id']}] {text}" if prefix else text
            typer.echo(f"{line.get('time') or '-'} {text}" if timestamps else text)
    sys.stdout.flush()


def decisions(results: list[dict[str, Any]]) -> None:
    """`berth autoscale explain`: one block per decision."""
    for number, result in enumerate(results, 1):
        who = f" {escape(result['deployment'])}" if result.get("deployment") else ""
        conditions = result["conditions"]
        limited = conditions["ScalingLimited"]
        out.print(f"[bold]#{number}{who}[/]: {result['currentReplicas']} → [bold]{result['desiredReplicas']}[/] replicas")
        out.print(f"  reason: {escape(result['reason'])}")
        if result["recommendation"] is not None and result["recommendation"] != result["desiredReplicas"]:
            out.print(f"  metrics recommended {result['recommendation']}; {conditions['AbleToScale']}"
                      + (f", {limited['reason']}" if limited["status"] else ""))
        for metric in result["metrics"]:
            said = f"{metric['replicas']} replicas" if metric["replicas"] is not None else f"missing ({metric.get('error', '')})"
            usage = "" if metric["usage"] is None else f" at {metric['usage']:g}"
            out.print(f"  {escape(metric['metric'])}{usage}: {escape(said)}")
        if "recorded" in result:
            same = result["recorded"] == result["desiredReplicas"]
            out.print(f"  recorded decision: {result['recorded']} " + ("[green](same)[/]" if same else "[red](differs)[/]"))


def imported_specs(imported: Iterable[Imported]) -> str:
    """Specs as YAML documents, each after comments saying what was not mapped into it."""
    documents = []
    for item in imported:
        notes = [f"# not mapped: {note}" for note in item.not_mapped]
        body = yaml.safe_dump(item.spec, sort_keys=False, allow_unicode=True) if item.spec else f"# {item.name}: no spec\n"
        documents.append("\n".join([*notes, body.rstrip()]))
    return "\n---\n".join(documents)
