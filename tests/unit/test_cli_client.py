"""What the CLI says when it cannot do what was asked, before any server answers."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from berth.cli import app, ref_of
from libs.natsd import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()


def test_connection_refused_says_how_to_start_berth() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["deployments", "list"], ["apply", "-f", str(EXAMPLES / "iris.yaml")], ["secrets", "list"]):
        result = runner.invoke(app, ["--api-url", url, *args])
        assert result.exit_code == 1, result.output
        assert f"berth is not running at {url}: start it with `berth up`" in result.stderr


def test_apply_validates_locally_first(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nimage: y\nresources: {ports: []}\n")
    # Nothing listens at the URL: the errors come from the local check, not the server.
    result = runner.invoke(app, ["--api-url", f"http://127.0.0.1:{free_port()}", "apply", "-f", str(spec)])
    assert result.exit_code == 1
    assert "resources.ports: List should have at least 1 item" in result.stderr
    assert "not running" not in result.output


def test_free_text_names_become_slugs_and_ids_stay() -> None:
    assert ref_of("My Cool Deployment") == "my-cool-deployment"
    assert ref_of("iris") == "iris"
    assert ref_of("3f2a9c0d4b5e4f60a1b2c3d4e5f60718") == "3f2a9c0d4b5e4f60a1b2c3d4e5f60718"
