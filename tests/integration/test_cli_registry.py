"""The CLI against a real registry process and nats-server: `-o json` on every command that talks to
the API, `berth login` and where the CLI looks for its token."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.aio.client import Client
from nats.aio.msg import Msg
from typer.testing import CliRunner, Result

from berth.cli import app
from libs.bus import LOGS_RPC, METRICS_RPC
from libs.natsd import free_port
from tests.integration.test_registry_outbox import RegistryProcess

SPEC = {"name": "My Iris", "image": "python:3.11", "resources": {"ports": [8000], "replicas": 2}}


class Cli:
    """Runs `berth` as a user would, in a worker thread (the test's event loop keeps serving NATS)."""

    def __init__(self, env: dict[str, str | None]) -> None:
        self.env = env
        self.runner = CliRunner()

    async def run(self, *args: str, input: str | None = None) -> Result:
        return await asyncio.to_thread(self.runner.invoke, app, list(args), env=self.env, input=input)

    async def json(self, *args: str) -> Any:
        result = await self.run(*args, "-o", "json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
async def registry(tmp_path: Path, nats_url: str) -> AsyncIterator[RegistryProcess]:
    process = RegistryProcess(tmp_path, nats_url)
    await asyncio.to_thread(process.start)
    try:
        yield process
    finally:
        process.stop()


def cli_env(registry: RegistryProcess, tmp_path: Path, data_dir: Path) -> dict[str, str | None]:
    return {
        "BERTH_API_URL": f"http://127.0.0.1:{registry.port}",
        "BERTH_DATA_DIR": str(data_dir),
        "BERTH_TOKEN": None,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }


async def test_every_command_answers_json(registry: RegistryProcess, tmp_path: Path, nc: Client) -> None:
    cli = Cli(cli_env(registry, tmp_path, registry.data_dir))  # the admin token `berth up` leaves
    spec_file = tmp_path / "iris.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))

    would = await cli.json("apply", "--dry-run", "-f", str(spec_file))
    assert (would["dry_run"], would["deployment_id"]) == (True, None)
    created = await cli.json("apply", "-f", str(spec_file))
    assert (created["name"], created["slug"], created["spec_version"]) == ("My Iris", "my-iris", 1)
    changed_file = tmp_path / "iris-2.yaml"
    changed_file.write_text(yaml.safe_dump({**SPEC, "image": "python:3.12", "description": "v2"}))
    dry = await cli.json("apply", "--dry-run", "-f", str(changed_file))
    assert [(c["field"], c["effect"]) for c in dry["changes"]] == [("description", "live"), ("image", "replace")]
    shown = await cli.run("apply", "--dry-run", "-f", str(changed_file))
    assert "replace" in shown.stdout and "rolling" in shown.stdout and "nothing was stored" in shown.stdout
    assert (await cli.json("deployments", "get", "my-iris"))["spec_version"] == 1
    again = await cli.json("apply", "-f", str(spec_file))
    assert (again["unchanged"], again["spec_id"]) == (True, created["spec_id"])

    listed = await cli.json("deployments", "list")
    assert [d["name"] for d in listed["items"]] == ["My Iris"]
    got = await cli.json("deployments", "get", "My Iris")
    assert got["deployment_id"] == created["deployment_id"] and got["status"]["desired_replicas"] == 2

    scaled = await cli.json("deployments", "scale", "my-iris", "4")
    assert (scaled["spec_version"], scaled["scale"]["replicas"], scaled["status"]["desired_source"]) == (1, 4, "user")
    assert (await cli.json("deployments", "scale", "my-iris", "4"))["unchanged"] is True
    stopped = await cli.json("deployments", "stop", "my-iris")
    assert (stopped["spec_version"], stopped["status"]["desired_replicas"]) == (2, 0)
    assert (await cli.json("deployments", "start", "my-iris"))["spec_version"] == 3
    assert (await cli.json("deployments", "rollback", "my-iris", "3"))["unchanged"] is True
    history = await cli.json("deployments", "history", "my-iris")
    assert [v["spec_version"] for v in history["items"]] == [3, 2, 1]
    assert len({v["revision_id"] for v in history["items"]}) == 1  # only `enabled` changed
    diffed = await cli.json("deployments", "history", "my-iris", "--diff")
    assert [[c["field"] for c in v["changes"] or []] for v in diffed["items"]] == [["enabled"], ["enabled"], []]
    table = await cli.run("deployments", "history", "my-iris", "--diff")
    assert "enabled" in table.stdout and "live" in table.stdout and "token" in table.stdout

    aliased = await cli.json("deployments", "alias", "my-iris", "production", "2")
    assert (aliased["alias"], aliased["spec_version"]) == ("production", 2)
    assert aliased["endpoint"].endswith("/default/my-iris@production/")
    assert (await cli.json("deployments", "alias", "my-iris", "production", "3"))["spec_version"] == 3
    assert [(a["alias"], a["spec_version"]) for a in (await cli.json("deployments", "aliases", "my-iris"))["items"]] == [
        ("production", 3)
    ]
    table = await cli.run("deployments", "aliases", "my-iris")
    assert "production" in table.stdout and "@production" in table.stdout
    assert await cli.json("deployments", "unalias", "my-iris", "production") == {"removed": True, "alias": "production"}
    assert (await cli.json("deployments", "aliases", "my-iris"))["items"] == []
    bad = await cli.run("deployments", "alias", "my-iris", "Production", "1")
    assert bad.exit_code == 1 and "alias" in bad.output and "DNS-1123" in bad.output

    canary = await cli.json("apply", "--strategy", "canary", "-f", str(changed_file))
    assert (canary["spec_version"], canary["spec"]["updateStrategy"]) == (4, {"type": "canary"})
    promoted = await cli.json("deployments", "promote", "my-iris")
    assert promoted["spec_version"] == 4  # not a new version
    aborted = await cli.json("deployments", "abort", "my-iris")
    assert aborted["spec_version"] == 5 and aborted["revision_id"] == history["items"][0]["revision_id"]
    assert "updateStrategy" not in aborted["spec"]  # version 3's spec again

    asked: list[dict[str, Any]] = []

    async def scheduler(msg: Msg) -> None:
        asked.append(json.loads(msg.data))
        line = {"replica_id": "r1", "offset": 3, "time": "2026-12-01T10:00:00.5Z", "line": "hi\n", "replaced": True}
        await msg.respond(json.dumps({"lines": [line], "next": 4}).encode())

    answering = await nc.subscribe(LOGS_RPC, cb=scheduler)
    try:
        assert await cli.json("logs", "my-iris") == {
            "lines": [{"replica_id": "r1", "offset": 3, "time": "2026-12-01T10:00:00.500000Z", "line": "hi\n",
                       "replaced": True}],
            "next": 4,
        }  # fmt: skip
        as_yaml = await cli.run("logs", "my-iris", "-o", "yaml")
        assert yaml.safe_load(as_yaml.stdout)["next"] == 4
        searched = await cli.run("logs", "my-iris", "--since", "10m", "--grep", "ERROR", "--include-replaced",
                                 "--timestamps")  # fmt: skip
        assert searched.exit_code == 0, searched.output
        assert searched.stdout == "2026-12-01T10:00:00.500000Z [r1] hi\n"
        assert (asked[-1]["grep"], asked[-1]["include_replaced"], asked[-1]["until"]) == ("ERROR", True, None)
        assert asked[-1]["since_time"] is not None and asked[0]["grep"] is None
    finally:
        await answering.unsubscribe()

    asked: list[dict[str, Any]] = []

    async def metrics_service(msg: Msg) -> None:
        asked.append(json.loads(msg.data))
        points = [[60 * i, float(i)] for i in range(1, 4)]
        await msg.respond(json.dumps({"window_seconds": 7200, "step_seconds": 300, "version": None,
                                      "series": {"request_rate": points}, "replicas": []}).encode())  # fmt: skip

    answering = await nc.subscribe(METRICS_RPC, cb=metrics_service)
    try:
        answer = await cli.json("deployments", "metrics", "my-iris", "--window", "2h", "--step", "5m")
        shown = await cli.run("deployments", "metrics", "my-iris")
    finally:
        await answering.unsubscribe()
    assert answer["series"]["request_rate"][-1] == [180, 3.0]
    assert [(a["window"], a["step"]) for a in asked] == [(7200, 300), (3600, 60)]
    assert "Requests/s" in shown.stdout and "▁▅█" in shown.stdout
    bad_window = await cli.run("deployments", "metrics", "my-iris", "--window", "an hour")
    assert bad_window.exit_code == 1 and "window" in bad_window.output

    secret = await cli.run("secrets", "set", "hf_token", "-o", "json", input="s3cr3t\n")
    assert json.loads(secret.stdout) == {"name": "hf_token", "reference": "secret:hf_token"}
    assert "s3cr3t" not in secret.output
    assert await cli.json("secrets", "list") == {"names": ["hf_token"], "used_by": {"hf_token": []}}
    assert await cli.json("secrets", "delete", "hf_token") == {"name": "hf_token", "deleted": True}

    deleted = await cli.json("deployments", "delete", "My Iris", "-y")
    assert deleted == {
        "deleted": True, "deployment_id": created["deployment_id"], "project": "default", "name": "My Iris",
        "slug": "my-iris",
    }  # fmt: skip
    assert (await cli.json("deployments", "list"))["items"] == []


async def test_the_table_views_show_the_name_as_written_and_the_details_panel(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    cli = Cli(cli_env(registry, tmp_path, registry.data_dir))
    spec = SPEC | {
        "description": "Classifies iris flowers",
        "model": {"id": "model-001", "version": "v2.1.0"},
        "resources": {"ports": [8000], "replicas": 2, "machineType": "A100-80G", "cpu": 4, "memory": 16},
        "loadBalancer": {"algorithm": "least-connections", "healthCheckPath": "/health"},
    }
    spec_file = tmp_path / "iris.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    assert (await cli.run("apply", "-f", str(spec_file))).exit_code == 0
    await cli.run("deployments", "scale", "my-iris", "3")

    listing = (await cli.run("deployments", "list")).stdout
    assert "My Iris" in listing and "my-iris" in listing
    details = (await cli.run("deployments", "get", "my-iris")).stdout
    for text in (
        "Classifies iris flowers", "model-001 v2.1.0", "A100-80G", "least-connections", "/health every 10 s",
        "0/3 ready", "your scale", "the spec says 2", "development", "http://127.0.0.1:",
    ):  # fmt: skip
        assert text in details, text
    token = (registry.data_dir / "token").read_text().strip()
    assert token not in details + listing


async def test_login_keeps_the_token_privately_and_the_cli_says_where_it_looked(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    empty = tmp_path / "elsewhere"  # a data dir without a token: as in any directory but berth up's
    cli = Cli(cli_env(registry, tmp_path, empty))
    api_url = f"http://127.0.0.1:{registry.port}"
    config = tmp_path / "config" / "berth" / "config.yaml"

    refused = await cli.run("deployments", "list")
    assert refused.exit_code == 1
    assert f"no API token found for {api_url}; looked in --token or BERTH_TOKEN; {config} (no such file); " in refused.stderr
    assert str(empty / "token") in refused.stderr and "berth login --api URL --token TOKEN" in refused.stderr

    wrong = await cli.run("login", "--api", api_url, "--token", "not-a-token")
    assert wrong.exit_code == 1 and "refused this token; nothing was saved" in wrong.stderr
    assert not config.exists()

    token = (registry.data_dir / "token").read_text().strip()
    login = await cli.run("login", "--api", api_url + "/", "-o", "json", input=token + "\n")
    assert login.exit_code == 0, login.output
    assert json.loads(login.stdout) == {"api_url": api_url, "config": str(config)}
    assert token not in login.output
    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert yaml.safe_load(config.read_text()) == {"api_url": api_url, "token": token}

    assert (await cli.json("deployments", "list"))["items"] == []
    # The saved token is for that API only: another address does not get it.
    other = f"http://127.0.0.1:{free_port()}"
    elsewhere = await cli.run("--api-url", other, "deployments", "list")
    assert elsewhere.exit_code == 1 and f"berth is not running at {other}" in elsewhere.stderr
    bad = Cli(cli.env | {"BERTH_TOKEN": "stale-token"})
    stale = await bad.run("deployments", "list")
    assert stale.exit_code == 1 and "refused the token from --token or BERTH_TOKEN" in stale.stderr
    assert "stale-token" not in stale.output


async def test_setting_a_secret_with_restart_users_rolls_the_deployments_that_use_it(
    registry: RegistryProcess, tmp_path: Path, nc: Client
) -> None:
    cli = Cli(cli_env(registry, tmp_path, registry.data_dir))
    assert (await cli.run("secrets", "set", "hf_token", input="first\n")).exit_code == 0
    for name, env in (("user", [{"name": "HF_TOKEN", "value": "secret:hf_token"}]), ("other", [])):
        spec_file = tmp_path / f"{name}.yaml"
        spec_file.write_text(yaml.safe_dump(SPEC | {"name": name, "env": env}))
        assert (await cli.run("apply", "-f", str(spec_file))).exit_code == 0
    before = (await cli.json("deployments", "history", "user"))["items"][0]

    answer = await cli.run("secrets", "set", "hf_token", "--restart-users", "-o", "json", input="second\n")
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.stdout) == {"name": "hf_token", "reference": "secret:hf_token", "restarted": ["user"]}
    after = await cli.json("deployments", "get", "user")
    # A new version whose only change is restartedAt: a new revision, so the scheduler replaces every
    # replica through the deployment's update strategy (as `kubectl rollout restart`).
    assert after["spec_version"] == before["spec_version"] + 1 and after["revision_id"] != before["revision_id"]
    assert after["spec"]["restartedAt"] and after["spec"]["env"] == [{"name": "HF_TOKEN", "value": "secret:hf_token"}]
    diffed = await cli.json("deployments", "history", "user", "--diff")
    assert [(c["field"], c["effect"]) for c in diffed["items"][0]["changes"]] == [("restartedAt", "replace")]
    assert (await cli.json("deployments", "get", "other"))["spec_version"] == 1
    assert "second" not in answer.output

    missing = await cli.run("secrets", "set", "unused", "--restart-users", input="x\n")
    assert missing.exit_code == 0 and "no deployment uses it" in missing.stdout
