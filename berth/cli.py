"""`berth`: the command line of berth. `berth up` runs the platform; every other command talks to the
REST API of the spec-registry (berth.client) except `berth spec ...`, which works offline. Where the
API address and token come from: berth.credentials."""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import nats.errors
import typer
from faststream.nats import NatsUserPassword
from rich.live import Live
from rich.markup import escape

from berth import credentials, render
from berth.client import ApiError, BerthClient, NotRunning
from berth.credentials import ConfigError, Credentials
from berth.render import Output
from berth.valohai import from_valohai
from libs.bus import make_broker
from libs.config import Settings
from libs.natsd import CREDENTIALS_FILE, service_passwords
from libs.sealing import NoSecretsKey, Sealer
from libs.secrets import SecretStore, rotate_key_file
from libs.spec import (
    DeploymentSpec,
    SpecInvalid,
    parse_document,
    slugify,
    spec_json_schema,
    validate_spec,
    with_strategy,
)


class Strategy(enum.StrEnum):
    rolling = "rolling"
    blue_green = "blue-green"
    canary = "canary"

app = typer.Typer(
    name="berth",
    help="Run model servers from a declarative deployment spec.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
deployments_app = typer.Typer(help="Inspect and operate deployments.", no_args_is_help=True)
spec_app = typer.Typer(help="Work with spec files offline.", no_args_is_help=True)
secrets_app = typer.Typer(help="Secrets of the project, referenced in specs as `secret:<name>`.", no_args_is_help=True)
app.add_typer(deployments_app, name="deployments")
app.add_typer(spec_app, name="spec")
app.add_typer(secrets_app, name="secrets")
autoscale_app = typer.Typer(help="Autoscaling decisions, offline (the HPA algorithm berth runs).", no_args_is_help=True)
app.add_typer(autoscale_app, name="autoscale")
webhooks_app = typer.Typer(
    help="Where the project's alerts are POSTed (signed with an HMAC key kept as a project secret).",
    no_args_is_help=True,
)
app.add_typer(webhooks_app, name="webhooks")
import_app = typer.Typer(
    help="Turn another platform's definitions into berth specs (printed, nothing applied).", no_args_is_help=True
)
app.add_typer(import_app, name="import")

OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table for people, json or yaml for scripts.")]
RefArg = Annotated[str, typer.Argument(help="Deployment name, slug or id.")]
SpecFile = Annotated[
    Path, typer.Option("--file", "-f", exists=True, dir_okay=False, readable=True, help="Spec file (YAML or JSON).")
]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Target:
    """What the command line said about the API; resolved into credentials only by commands that
    call it (so that `berth spec ...` works whatever the config file holds)."""

    api_url: str | None
    token: str | None
    _found: Credentials | None = None

    @property
    def credentials(self) -> Credentials:
        if self._found is None:
            self._found = credentials.find(self.api_url, self.token, Settings())
        return self._found

    def client(self) -> BerthClient:
        found = self.credentials
        return BerthClient(found.api_url, found.token)


@app.callback()
def main(
    ctx: typer.Context,
    api_url: Annotated[
        str | None,
        typer.Option("--api-url", envvar="BERTH_API_URL", help="REST API of berth; default: see `berth login`."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="BERTH_TOKEN",
            help="API token; default: the config file `berth login` writes, then the token file of the data dir.",
        ),
    ] = None,
) -> None:
    ctx.obj = Target(api_url, token)


def calls_api(command: F) -> F:
    """Turn API failures into a clear message and exit code 1 instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (NotRunning, ConfigError) as exc:
            render.failure(str(exc))
        except ApiError as exc:
            if exc.status == 401:  # every command that calls the API takes the context first
                found = kwargs["ctx"].obj.credentials
                render.failure(found.refused() if found.token else found.missing())
            else:
                render.api_error(exc)
        raise typer.Exit(1)

    return wrapper  # type: ignore[return-value]


def ref_of(ref: str) -> str:
    """Ids and slugs are used as given; a free-text name becomes its slug (`My Model` -> `my-model`)."""
    return ref if re.fullmatch(r"[a-z0-9_-]+", ref) else slugify(ref)


def read_spec(path: Path) -> tuple[dict[str, Any], DeploymentSpec]:
    """The parsed document and its validated spec; prints every error and exits 1 when invalid."""
    try:
        document = parse_document(path.read_text())
        return document, validate_spec(document)
    except SpecInvalid as exc:
        render.spec_errors(str(path), exc.errors)
        raise typer.Exit(1) from None


# -- up -------------------------------------------------------------------------------------------


@app.command()
def up(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="State of berth (default: BERTH_DATA_DIR or ./.berth).")
    ] = None,
) -> None:
    """Start berth on this machine: nats-server and every service, until Ctrl-C."""
    # The supervisor replaces this process (same pid): it idles without the CLI's imports (berth/up.py).
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "berth.up", *(["--data-dir", str(data_dir)] if data_dir else [])])


# -- apply ----------------------------------------------------------------------------------------


@app.command()
@calls_api
def apply(
    ctx: typer.Context,
    file: SpecFile,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Store nothing: show each changed field, live or replacing replicas.")
    ] = False,
    strategy: Annotated[
        Strategy | None,
        typer.Option("--strategy", help="Roll this update out so (sets updateStrategy.type in the new version)."),
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create the deployment of a spec, or update it to a new spec version."""
    document, spec = read_spec(file)
    if strategy is not None and spec.updateStrategy.type != strategy.value:
        document = with_strategy(document, strategy.value)
        spec = validate_spec(document)
    with ctx.obj.client() as client:
        current = client.find_deployment(spec.slug)
        if dry_run:
            answer = client.dry_run(document, current)
            render.emit(answer, output, lambda: render.dry_run(answer))
            return
        if current is None:
            deployment, verb = client.create_deployment(document), "created"
        else:
            deployment, verb = client.update_deployment(current["slug"], document, current["spec_id"]), "updated"
    render.emit(deployment, output, lambda: render.changed(verb, deployment))


# -- deployments ----------------------------------------------------------------------------------


@deployments_app.command("list")
@calls_api
def list_deployments(
    ctx: typer.Context,
    environment: Annotated[str | None, typer.Option(help="development, staging or production.")] = None,
    project: Annotated[str | None, typer.Option(help="Another project (admin token only).")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Deployments of the project, with their phase and ready replicas."""
    with ctx.obj.client() as client:
        items = client.list_deployments(environment=environment, project=project)
    render.emit({"items": items}, output, lambda: render.deployments_table(items))


@deployments_app.command("get")
@calls_api
def get_deployment(ctx: typer.Context, ref: RefArg, output: OutputOpt = Output.table) -> None:
    """The details of a deployment (spec, resources, scaling, load balancer, status), a row per replica."""
    with ctx.obj.client() as client:
        deployment = client.get_deployment(ref_of(ref))
        status = deployment.get("status") or client.status(deployment["deployment_id"])
    deployment["status"] = status
    render.emit(deployment, output, lambda: render.deployment_detail(deployment, status))


@deployments_app.command("history")
@calls_api
def history(
    ctx: typer.Context,
    ref: RefArg,
    diff: Annotated[bool, typer.Option("--diff", help="Each version's field changes from the one before.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Spec versions of a deployment, newest first, with the token that created each."""
    with ctx.obj.client() as client:
        items = client.history(ref_of(ref), diff=diff)
    render.emit({"items": items}, output, lambda: render.history_table(items))


@deployments_app.command("delete")
@calls_api
def delete(
    ctx: typer.Context,
    ref: RefArg,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a terminal).")
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Delete a deployment: its replicas stop, its endpoint answers 404, its history is gone."""
    with ctx.obj.client() as client:
        deployment = client.get_deployment(ref_of(ref))
        if not yes:
            question = f"Delete deployment {deployment['name']}? Its replicas stop and its endpoint goes away."
            typer.confirm(question, abort=True, err=True)
        client.delete_deployment(deployment["deployment_id"])
    gone = {
        "deleted": True,
        "deployment_id": deployment["deployment_id"],
        "project": deployment["project"],
        "name": deployment["name"],
        "slug": deployment["slug"],
    }
    render.emit(gone, output, lambda: render.out.print(f"[green]✓[/] deleted deployment {escape(deployment['name'])}"))


@deployments_app.command("scale")
@calls_api
def scale(
    ctx: typer.Context,
    ref: RefArg,
    replicas: Annotated[int, typer.Argument(min=0, help="Number of replicas.")],
    output: OutputOpt = Output.table,
) -> None:
    """Set the number of replicas. Not a new spec version: it holds until a spec version sets another
    resources.replicas, and shows in `get` (desired replicas, from your scale)."""
    with ctx.obj.client() as client:
        deployment = client.scale(ref_of(ref), replicas)
    render.emit(deployment, output, lambda: render.scaled(deployment))


@deployments_app.command("retry")
@calls_api
def retry(ctx: typer.Context, ref: RefArg, output: OutputOpt = Output.table) -> None:
    """Fetch the deployment's failed integrations again now, not after the back-off."""
    with ctx.obj.client() as client:
        deployment = client.retry(ref_of(ref))
    message = f"[green]✓[/] retrying the integrations of [bold]{escape(deployment['name'])}[/]; `berth deployments get` shows the outcome"
    render.emit(deployment, output, lambda: render.out.print(message))


@deployments_app.command("start")
@calls_api
def start(ctx: typer.Context, ref: RefArg, output: OutputOpt = Output.table) -> None:
    """Enable a stopped deployment (a new spec version with enabled: true)."""
    _act(ctx, ref, output, BerthClient.start, "started")


def _act(ctx: typer.Context, ref: str, output: Output, call: Callable[[BerthClient, str], Any], verb: str) -> None:
    """A write on one deployment that answers the Deployment (start, stop, promote)."""
    with ctx.obj.client() as client:
        deployment = call(client, ref_of(ref))
    render.emit(deployment, output, lambda: render.changed(verb, deployment))


@deployments_app.command("stop")
@calls_api
def stop(ctx: typer.Context, ref: RefArg, output: OutputOpt = Output.table) -> None:
    """Stop every replica, keeping the deployment (a new spec version with enabled: false)."""
    _act(ctx, ref, output, BerthClient.stop, "stopped")


@deployments_app.command("rollback")
@calls_api
def rollback(
    ctx: typer.Context,
    ref: RefArg,
    spec_version: Annotated[int, typer.Argument(min=1, help="The version to return to (see `history`).")],
    output: OutputOpt = Output.table,
) -> None:
    """Apply the spec of an earlier version again (as a new version; unchanged when it is the current spec)."""
    with ctx.obj.client() as client:
        deployment = client.rollback(ref_of(ref), spec_version)
    render.emit(deployment, output, lambda: render.changed(f"rolled back to version {spec_version}:", deployment))


@deployments_app.command("promote")
@calls_api
def promote(ctx: typer.Context, ref: RefArg, output: OutputOpt = Output.table) -> None:
    """End the current update now: a canary takes all traffic (its remaining steps are skipped), a
    blue-green's old set stops (its hold is cut short). Not a new version."""
    _act(ctx, ref, output, BerthClient.promote, "promoted")


@deployments_app.command("abort")
@calls_api
def abort(ctx: typer.Context, ref: RefArg, output: OutputOpt = Output.table) -> None:
    """Abort an update (a canary, a blue-green switch, a rollout): roll back to the newest earlier
    version that runs another revision. All traffic returns to it at once while its replicas run."""
    with ctx.obj.client() as client:
        versions = client.history(ref_of(ref))
        current = versions[0]
        stable = next((v for v in versions[1:] if v.get("revision_id") != current.get("revision_id")), None)
        if stable is None:
            render.failure("nothing to abort: no earlier version runs another revision")
            raise typer.Exit(1)
        deployment = client.rollback(ref_of(ref), stable["spec_version"])
    render.emit(deployment, output, lambda: render.changed(f"aborted; back to version {stable['spec_version']}:", deployment))


@deployments_app.command("alias")
@calls_api
def alias(
    ctx: typer.Context,
    ref: RefArg,
    name: Annotated[str, typer.Argument(help="The alias: a DNS-1123 label, not all digits (e.g. production).")],
    spec_version: Annotated[int, typer.Argument(min=1, help="The version it points at (see `history`).")],
    output: OutputOpt = Output.table,
) -> None:
    """Point an alias at a version (create or move it); reach it at /<project>/<deployment>@<alias>/.
    The aliased version's replicas keep running while an alias names it."""
    with ctx.obj.client() as client:
        answer = client.set_alias(ref_of(ref), name, spec_version)
    render.emit(answer, output, lambda: render.aliased(answer))


@deployments_app.command("unalias")
@calls_api
def unalias(ctx: typer.Context, ref: RefArg, name: str, output: OutputOpt = Output.table) -> None:
    """Remove an alias: `@<alias>` answers 404; a version no alias names any more stops running (unless current)."""
    with ctx.obj.client() as client:
        client.remove_alias(ref_of(ref), name)
    gone = {"removed": True, "alias": name}
    render.emit(gone, output, lambda: render.out.print(f"[green]✓[/] removed alias {escape(name)}"))


@deployments_app.command("aliases")
@calls_api
def aliases(ctx: typer.Context, ref: RefArg, output: OutputOpt = Output.table) -> None:
    """The aliases of a deployment and the versions they point at."""
    with ctx.obj.client() as client:
        items = client.aliases(ref_of(ref))
    render.emit({"items": items}, output, lambda: render.aliases_table(items))


@deployments_app.command("metrics")
@calls_api
def metrics(
    ctx: typer.Context,
    ref: RefArg,
    window: Annotated[str, typer.Option(help="The span shown, ending now: 30s, 5m, 1h, 24h, 30d.")] = "1h",
    step: Annotated[str, typer.Option(help="One point per step (at least 10s; 5m beyond 24h).")] = "1m",
    version: Annotated[int | None, typer.Option(min=1, help="Only the revision running this spec version.")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every step until Ctrl-C.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Request rate, errors, latency p50/p95/p99, replicas, restarts and usage over time, with sparklines."""
    with ctx.obj.client() as client:
        answer = client.metrics(ref_of(ref), window, step, version)
        if not watch or output is not Output.table:
            render.emit(answer, output, lambda: render.show(render.metrics_table(answer)))
            return
        with Live(render.metrics_table(answer), console=render.out, auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(min(max(answer["step_seconds"], 2), 10))
                    answer = client.metrics(ref_of(ref), window, step, version)
                    live.update(render.metrics_table(answer), refresh=True)
            except KeyboardInterrupt:
                return


# -- logs -----------------------------------------------------------------------------------------


@app.command()
@calls_api
def logs(
    ctx: typer.Context,
    ref: RefArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")] = False,
    replica: Annotated[str | None, typer.Option(help="Only this replica (also one already replaced).")] = None,
    tail: Annotated[int, typer.Option(min=0, help="Lines to show from the end (of those that match).")] = 100,
    since: Annotated[
        str | None, typer.Option(help="Lines written at or after: a duration back from now (10m, 1h30m, 2d) or RFC 3339.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Lines written before; the same forms as --since.")] = None,
    grep: Annotated[str | None, typer.Option(help="Only lines containing this text (plain, case-sensitive).")] = None,
    include_replaced: Annotated[
        bool, typer.Option("--include-replaced", help="Also replicas already replaced, while their logs are kept.")
    ] = False,
    timestamps: Annotated[bool, typer.Option("--timestamps", help="Show when each line was written.")] = False,
    output: Annotated[
        Output,
        typer.Option(
            "--output", "-o", help="table: the lines as written; json or yaml: the answer, or with -f one line each."
        ),
    ] = Output.table,
) -> None:
    """Output of a deployment's replicas: the last lines, searched by time and text, or followed."""
    prefix = replica is None
    search = {"since_time": since, "until": until, "grep": grep, "include_replaced": include_replaced}
    with ctx.obj.client() as client:
        page = client.logs(ref_of(ref), replica=replica, tail=tail, **search)
        if not follow:
            render.emit(page, output, lambda: render.log_lines(page["lines"], output, prefix, timestamps))
            return
        render.log_lines(page["lines"], output, prefix, timestamps)
        try:
            while True:
                time.sleep(0.5)
                page = client.logs(ref_of(ref), replica=replica, tail=tail, since=page["next"], **search)
                render.log_lines(page["lines"], output, prefix, timestamps)
        except KeyboardInterrupt:
            pass


# -- spec -----------------------------------------------------------------------------------------


@spec_app.command("validate")
def spec_validate(file: SpecFile, output: OutputOpt = Output.table) -> None:
    """Check a spec without a server: prints `valid`, or every error as `field: rule` (exit 1)."""
    try:
        validate_spec(parse_document(file.read_text()))
    except SpecInvalid as exc:
        errors = exc.errors
        report = {"valid": False, "errors": [{"field": e.field, "rule": e.rule} for e in errors]}
        render.emit(report, output, lambda: render.spec_errors(str(file), errors))
        raise typer.Exit(1) from None
    render.emit({"valid": True, "errors": []}, output, lambda: render.out.print("valid"))


@app.command("render")
def render_command(
    file: SpecFile,
    project: Annotated[str, typer.Option(help="Project the deployment belongs to.")] = "default",
    namespace: Annotated[str | None, typer.Option(help="Namespace (default: BERTH_KUBERNETES_NAMESPACE).")] = None,
    machine_types: Annotated[
        Path | None, typer.Option(help="machineType table file (default: BERTH_KUBERNETES_MACHINE_TYPES).")
    ] = None,
) -> None:
    """Print the Kubernetes objects the kubernetes runtime would apply for a spec (for review or
    `kubectl diff -f -`), without a server. Secret values are not read: placeholders stand in."""
    import asyncio

    import yaml

    from berth.manifests import render_manifests

    _, spec = read_spec(file)
    settings = Settings()
    objects = asyncio.run(
        render_manifests(
            spec,
            project=project,
            namespace=namespace or settings.kubernetes_namespace,
            machine_types=machine_types or settings.kubernetes_machine_types,
        )
    )
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))


@spec_app.command("schema")
def spec_schema(output: OutputOpt = Output.json) -> None:
    """The JSON Schema of the deployment spec."""
    schema = spec_json_schema()
    render.emit(schema, Output.json if output is Output.table else output, lambda: None)


# -- import ---------------------------------------------------------------------------------------


@import_app.command("valohai")
def import_valohai(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A valohai.yaml.")],
) -> None:
    """Each `endpoint` of a valohai.yaml as a berth spec, YAML documents on stdout (ready for `berth
    apply -f`); what could not be mapped is said above each one as comments and on stderr."""
    try:
        imported = from_valohai(file.read_text())
    except SpecInvalid as exc:
        render.spec_errors(str(file), exc.errors)
        raise typer.Exit(1) from None
    if not imported:
        render.failure(f"{file} has no endpoint")
        raise typer.Exit(1)
    typer.echo(render.imported_specs(imported))
    for item in imported:
        for note in item.not_mapped:
            render.err.print(f"{escape(item.name)}: not mapped: {escape(note)}")
    if any(item.spec is None for item in imported):
        raise typer.Exit(1)


# -- autoscale ------------------------------------------------------------------------------------


@autoscale_app.command("explain")
def autoscale_explain(
    trace_file: Annotated[
        Path, typer.Option("--input", "-i", exists=True, dir_okay=False, readable=True, help="Trace (JSON), see docs/autoscaling.md.")
    ],
    output: OutputOpt = Output.table,
) -> None:
    """Run the autoscaler's decision code on a trace and print each decision with its reason."""
    from pydantic import ValidationError

    from libs.autoscaling import hpa
    from libs.autoscaling.trace import Trace, explain

    try:
        trace = Trace.model_validate_json(trace_file.read_text())
    except ValidationError as exc:
        for error in exc.errors(include_input=False):
            where = ".".join(str(part) for part in error["loc"]) or "(trace)"
            render.err.print(f"[red]✗[/] [bold]{escape(where)}[/]: {escape(error['msg'])}")
        raise typer.Exit(1) from None
    results = []
    for entry in trace.decisions:
        result = explain(hpa.decide(entry.inputs()))
        result["deployment"] = entry.deployment
        if entry.decided is not None:
            result["recorded"] = entry.decided
        results.append(result)
    render.emit({"decisions": results}, output, lambda: render.decisions(results))


@autoscale_app.command("record")
@calls_api
def autoscale_record(
    ctx: typer.Context,
    ref: RefArg,
    seconds: Annotated[
        float, typer.Option("--seconds", min=0, help="Keep collecting new decisions this long (0: only the newest).")
    ] = 0,
    file: Annotated[Path | None, typer.Option("--file", "-f", dir_okay=False, help="Write here, not to stdout.")] = None,
) -> None:
    """Write a trace of the autoscaler's decisions about a live deployment, for `explain` to replay."""
    entries: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + seconds
    with ctx.obj.client() as client:
        while True:
            decided = client.autoscaler_decision(ref_of(ref))
            if decided.get("inputs") is not None and decided["event_id"] not in entries:
                entries[decided["event_id"]] = {**decided["inputs"], "at": decided["decided_at"]}
            if time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    text = json.dumps({"decisions": list(entries.values())}, indent=2)
    if file is None:
        typer.echo(text)
    else:
        file.write_text(text + "\n")
        render.err.print(f"[green]✓[/] {len(entries)} decision(s) written to {escape(str(file))}")


# -- alerts and webhooks --------------------------------------------------------------------------


class AlertStateOpt(enum.StrEnum):
    pending = "pending"
    firing = "firing"
    resolved = "resolved"
    inactive = "inactive"


@app.command("alerts")
@calls_api
def alerts(
    ctx: typer.Context,
    state: Annotated[
        AlertStateOpt | None, typer.Option("--state", help="Only alerts in this state (default: pending and firing).")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """The project's alerts (docs/monitoring.md, Alerts)."""
    with ctx.obj.client() as client:
        found = client.alerts(state.value if state else None)
    render.emit(found, output, lambda: render.alerts_table(found))


@webhooks_app.command("set")
@calls_api
def webhook_set(
    ctx: typer.Context,
    url: str,
    secret: Annotated[str, typer.Option("--secret", help="Name of the project secret holding the HMAC key.")],
    output: OutputOpt = Output.table,
) -> None:
    """Add a webhook, or give an existing one (same URL) another key."""
    reference = secret if secret.startswith("secret:") else f"secret:{secret}"
    with ctx.obj.client() as client:
        hook = client.set_webhook(url, reference)
    message = f"[green]✓[/] webhook {escape(hook['url'])} set, signed with {escape(hook['secret'])}"
    render.emit(hook, output, lambda: render.out.print(message))


@webhooks_app.command("list")
@calls_api
def webhook_list(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """The project's webhooks."""
    with ctx.obj.client() as client:
        hooks = client.webhooks()
    render.emit(hooks, output, lambda: render.webhooks_table(hooks))


@webhooks_app.command("delete")
@calls_api
def webhook_delete(ctx: typer.Context, url: str, output: OutputOpt = Output.table) -> None:
    """Remove a webhook."""
    with ctx.obj.client() as client:
        client.delete_webhook(url)
    message = f"[green]✓[/] webhook {escape(url)} deleted"
    render.emit({"url": url, "deleted": True}, output, lambda: render.out.print(message))


# -- secrets --------------------------------------------------------------------------------------


@secrets_app.command("set")
@calls_api
def secret_set(
    ctx: typer.Context,
    name: str,
    value: Annotated[str | None, typer.Option(help="The value; read from stdin when omitted.")] = None,
    restart_users: Annotated[
        bool, typer.Option("--restart-users", help="Then restart the deployments that use it (through their update strategy).")
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Store a secret (the value is never printed)."""
    value = value if value is not None else _read_hidden(f"Value of {name}")
    with ctx.obj.client() as client:
        client.set_secret(name, value)
        restarted = client.restart_secret_users(name) if restart_users else None
    report: dict[str, Any] = {"name": name, "reference": f"secret:{name}"}
    message = f"[green]✓[/] secret {escape(name)} set; reference it as secret:{escape(name)}"
    if restarted is not None:
        report["restarted"] = restarted
        message += f"; restarting {escape(', '.join(restarted))}" if restarted else "; no deployment uses it"
    render.emit(report, output, lambda: render.out.print(message))


@secrets_app.command("list")
@calls_api
def secret_list(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """Names of the project's secrets, and which deployments use each."""
    with ctx.obj.client() as client:
        used_by = client.list_secrets()
    report = {"names": list(used_by), "used_by": used_by}
    render.emit(report, output, lambda: render.secrets_table(used_by))


@secrets_app.command("delete")
@calls_api
def secret_delete(ctx: typer.Context, name: str, output: OutputOpt = Output.table) -> None:
    """Delete a secret."""
    with ctx.obj.client() as client:
        client.delete_secret(name)
    message = f"[green]✓[/] secret {escape(name)} deleted"
    render.emit({"name": name, "deleted": True}, output, lambda: render.out.print(message))


@secrets_app.command("rotate-key")
def secret_rotate_key(output: OutputOpt = Output.table) -> None:
    """Rotate the key that seals secret values: every value is sealed again under a new key.

    Works on the bus directly (as the spec-registry), on this machine's data dir: run it where `berth up`
    runs. With BERTH_SECRETS_KEY set, keys are yours to manage: put the new key first, run this to
    reseal, then drop the old key."""
    settings = Settings()
    try:
        count, rotated = asyncio.run(_rotate_key(settings))
    except (NoSecretsKey, OSError, TimeoutError, nats.errors.Error) as exc:
        render.failure(f"cannot rotate the secrets key: {exc}")
        raise typer.Exit(1) from None
    where = "the key file" if rotated else "the newest key of BERTH_SECRETS_KEY"
    message = f"[green]✓[/] {count} secret value(s) sealed again under {where}"
    render.emit({"resealed": count, "key_file_rotated": rotated}, output, lambda: render.out.print(message))


async def _rotate_key(settings: Settings) -> tuple[int, bool]:
    security = settings.nats_security()
    auth_dir = settings.data_dir / "nats"
    if security is None and (auth_dir / CREDENTIALS_FILE).exists():
        security = NatsUserPassword("spec-registry", service_passwords(auth_dir)["spec-registry"])
    broker = make_broker(settings.resolved_nats_url, "spec-registry", security)
    connection = await broker.connect()
    try:
        js = connection.jetstream()
        if settings.secrets_key is not None:
            store = await SecretStore.open(js, Sealer.from_settings(settings))
            return await store.reseal_all(), False
        return await rotate_key_file(js, settings.resolved_secrets_key_file), True
    finally:
        await broker.stop()


def _read_hidden(prompt: str) -> str:
    """A value typed without echo at a terminal, else read from stdin (so it stays out of shell history)."""
    value = typer.prompt(prompt, hide_input=True, err=True) if sys.stdin.isatty() else sys.stdin.read()
    return value.rstrip("\n")


# -- login ----------------------------------------------------------------------------------------


@app.command()
def login(
    api: Annotated[str, typer.Option("--api", "--api-url", help="REST API of berth, e.g. https://berth.example.com.")],
    token: Annotated[
        str | None, typer.Option(help="The API token; read from stdin (or asked for) when omitted.")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Check a token against the API, then keep both for later commands in the config file (mode 0600)."""
    token = token if token is not None else _read_hidden("API token")
    try:
        with BerthClient(api, token) as client:
            client.check_token()
    except NotRunning as exc:
        render.failure(f"{exc}; nothing was saved")
        raise typer.Exit(1) from None
    except ApiError as exc:
        if exc.status != 401:
            render.api_error(exc)
        else:
            render.failure(f"the API at {api} refused this token; nothing was saved")
        raise typer.Exit(1) from None
    try:
        path = credentials.save(api, token)
    except ConfigError as exc:
        render.failure(str(exc))
        raise typer.Exit(1) from None
    report = {"api_url": api.rstrip("/"), "config": str(path)}
    message = f"[green]✓[/] logged in to {escape(report['api_url'])}; the token is kept in {escape(str(path))} (mode 0600)"
    render.emit(report, output, lambda: render.out.print(message))
