"""How the CLI shows things: rich tables for people, `-o json|yaml` for scripts, errors on stderr."""

from __future__ import annotations

import json
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

from berth.client import ApiError, Deployment, ReplicaStatus, SpecVersion, Status
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
        "NAME", *(["PROJECT"] if many_projects else []), "ENVIRONMENT", "VERSION", "PHASE", "READY", "ENDPOINT"
    )
    for d in items:
        status = d.get("status")
        listing.add_row(
            escape(d["slug"]),
            *([escape(d["project"])] if many_projects else []),
            escape(d["environment"]),
            str(d["spec_version"]),
            _phase(status),
            _ready(status),
            escape(d["endpoint"]),
        )
    show(listing)


def deployment_detail(d: Deployment, status: Status) -> None:
    spec = d["spec"]
    resources = spec.get("resources") or {}
    model = spec.get("model") or {}
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    rows = [
        ("Name", f"{d['name']} ({d['project']}/{d['slug']})"),
        ("Deployment ID", d["deployment_id"]),
        ("Spec", f"version {d['spec_version']}, spec_id {d['spec_id']}"),
        ("Environment", d["environment"]),
        ("Image", str(spec.get("image", ""))),
        ("Command", " ".join(spec.get("command") or []) or "(image default)"),
        ("Model", f"{model.get('id')} {model.get('version')}" if model else "-"),
        ("Enabled", str(spec.get("enabled", True)).lower()),
        ("Ports", ", ".join(str(p) for p in resources.get("ports", []))),
        ("Endpoint", d["endpoint"]),
        ("Updated", when(d.get("updated_at"))),
    ]
    for key, value in rows:
        summary.add_row(key, escape(value))
    phase = _phase(status)
    reason = status.get("reason")
    summary.add_row("Phase", phase + (f" — {escape(reason)}" if reason else ""))
    summary.add_row("Replicas", f"{_ready(status)} ready")
    if status.get("not_provided"):
        summary.add_row("Not provided", escape(", ".join(status.get("not_provided", []))))
    out.print(summary)
    replicas = status.get("replicas") or []
    if replicas:
        show(replicas_table(replicas))


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
    listing = table("VERSION", "SPEC ID", "CREATED", "IMAGE", "REPLICAS", "ENABLED")
    for v in items:
        spec = v["spec"]
        listing.add_row(
            str(v["spec_version"]),
            escape(short_id(v["spec_id"])),
            when(v["created_at"]),
            escape(str(spec.get("image", ""))),
            str((spec.get("resources") or {}).get("replicas", "")),
            str(spec.get("enabled", True)).lower(),
        )
    show(listing)


def names_table(title: str, names: list[str]) -> None:
    if not names:
        out.print("None.")
        return
    listing = table(title)
    for name in names:
        listing.add_row(escape(name))
    show(listing)


def changed(verb: str, d: Deployment) -> None:
    out.print(
        f"[green]✓[/] {verb} deployment [bold]{escape(d['name'])}[/] ({escape(d['project'])}/{escape(d['slug'])})\n"
        f"  deployment id  {escape(d['deployment_id'])}\n"
        f"  spec id        {escape(d['spec_id'])}\n"
        f"  version        {d['spec_version']}\n"
        f"  endpoint       {escape(d['endpoint'])}"
    )
