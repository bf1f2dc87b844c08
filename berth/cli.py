"""`berth`: the command line of berth. `berth up` runs the platform; every other command talks to the
REST API of the spec-registry (berth.client) except `berth spec ...`, which works offline. Where the
API address and token come from: berth.credentials."""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from berth import credentials, render
from berth.client import ApiError, BerthClient, NotRunning
from berth.credentials import ConfigError, Credentials
from berth.render import Output
from libs.config import Settings
from libs.spec import DeploymentSpec, SpecInvalid, parse_document, slugify, spec_json_schema, validate_spec

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
    from berth.up import CannotStart, Launcher

    settings = Settings(data_dir=data_dir) if data_dir else Settings()
    try:
        code = Launcher(settings).run()
    except CannotStart as exc:
        render.failure(str(exc))
        raise typer.Exit(1) from None
    raise typer.Exit(code)


# -- apply ----------------------------------------------------------------------------------------


@app.command()
@calls_api
def apply(ctx: typer.Context, file: SpecFile, output: OutputOpt = Output.table) -> None:
    """Create the deployment of a spec, or update it to a new spec version."""
    document, spec = read_spec(file)
    with ctx.obj.client() as client:
        current = client.find_deployment(spec.slug)
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
def history(ctx: typer.Context, ref: RefArg, output: OutputOpt = Output.table) -> None:
    """Spec versions of a deployment, newest first."""
    with ctx.obj.client() as client:
        items = client.history(ref_of(ref))
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


@deployments_app.command("start")
@calls_api
def start(ctx: typer.Context, ref: RefArg, output: OutputOpt = Output.table) -> None:
    """Enable a stopped deployment (a new spec version with enabled: true)."""
    with ctx.obj.client() as client:
        deployment = client.start(ref_of(ref))
    render.emit(deployment, output, lambda: render.changed("started", deployment))


@deployments_app.command("stop")
@calls_api
def stop(ctx: typer.Context, ref: RefArg, output: OutputOpt = Output.table) -> None:
    """Stop every replica, keeping the deployment (a new spec version with enabled: false)."""
    with ctx.obj.client() as client:
        deployment = client.stop(ref_of(ref))
    render.emit(deployment, output, lambda: render.changed("stopped", deployment))


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


# -- logs -----------------------------------------------------------------------------------------


@app.command()
@calls_api
def logs(
    ctx: typer.Context,
    ref: RefArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")] = False,
    replica: Annotated[str | None, typer.Option(help="Only this replica.")] = None,
    tail: Annotated[int, typer.Option(min=0, help="Lines to show from the end.")] = 100,
    output: Annotated[
        Output,
        typer.Option(
            "--output", "-o", help="table: the lines as written; json or yaml: the answer, or with -f one line each."
        ),
    ] = Output.table,
) -> None:
    """Output of a deployment's replicas."""
    prefix = replica is None
    with ctx.obj.client() as client:
        page = client.logs(ref_of(ref), replica=replica, tail=tail)
        if not follow:
            render.emit(page, output, lambda: render.log_lines(page["lines"], output, prefix))
            return
        render.log_lines(page["lines"], output, prefix)
        try:
            while True:
                time.sleep(0.5)
                page = client.logs(ref_of(ref), replica=replica, tail=tail, since=page["next"])
                render.log_lines(page["lines"], output, prefix)
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


# -- secrets --------------------------------------------------------------------------------------


@secrets_app.command("set")
@calls_api
def secret_set(
    ctx: typer.Context,
    name: str,
    value: Annotated[str | None, typer.Option(help="The value; read from stdin when omitted.")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Store a secret (the value is never printed)."""
    value = value if value is not None else _read_hidden(f"Value of {name}")
    with ctx.obj.client() as client:
        client.set_secret(name, value)
    report = {"name": name, "reference": f"secret:{name}"}
    message = f"[green]✓[/] secret {escape(name)} set; reference it as secret:{escape(name)}"
    render.emit(report, output, lambda: render.out.print(message))


@secrets_app.command("list")
@calls_api
def secret_list(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """Names of the project's secrets."""
    with ctx.obj.client() as client:
        names = client.list_secrets()
    render.emit({"names": names}, output, lambda: render.names_table("NAME", names))


@secrets_app.command("delete")
@calls_api
def secret_delete(ctx: typer.Context, name: str, output: OutputOpt = Output.table) -> None:
    """Delete a secret."""
    with ctx.obj.client() as client:
        client.delete_secret(name)
    message = f"[green]✓[/] secret {escape(name)} deleted"
    render.emit({"name": name, "deleted": True}, output, lambda: render.out.print(message))


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
