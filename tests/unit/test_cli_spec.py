"""`berth spec ...` works offline: validation lists every error as `field: rule`, exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from berth.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()

INVALID = """
apiVersion: v1
name: broken
image: python:3.11-slim
replica: 2
resources:
  ports: [70000]
  replicas: -1
healthChecks:
  readiness:
    path: no-slash
basicAuthKey: plain-text-key
"""


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_valid(example: Path) -> None:
    result = runner.invoke(app, ["spec", "validate", "-f", str(example)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "valid"


def test_iris_and_seed_examples_exist() -> None:
    assert {"seed-000.yaml", "iris.yaml"} <= {p.name for p in EXAMPLES.glob("*.yaml")}


def test_invalid_spec_lists_every_error_and_exits_1(tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text(INVALID)
    result = runner.invoke(app, ["spec", "validate", "-f", str(spec)])
    assert result.exit_code == 1
    assert "5 errors" in result.stderr
    for line in [
        "replica: unknown field",
        "resources.ports[0]: Input should be less than or equal to 65535",
        "resources.replicas: Input should be greater than or equal to 0",
        "healthChecks.readiness.path: must start with '/'",
        "basicAuthKey: must be a secret reference",
    ]:
        assert line in result.stderr
    # The plain-text key is named as wrong, never repeated back.
    assert "plain-text-key" not in result.output


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: x\nresources: [\n")
    result = runner.invoke(app, ["spec", "validate", "-f", str(spec)])
    assert result.exit_code == 1
    assert "not valid YAML or JSON at line" in result.stderr


def test_validate_json_output_for_scripts(tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text(INVALID)
    result = runner.invoke(app, ["spec", "validate", "-f", str(spec), "-o", "json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert {"field": "replica", "rule": "unknown field (not part of the spec; check its spelling)"} in report["errors"]
    assert len(report["errors"]) == 5

    ok = runner.invoke(app, ["spec", "validate", "-f", str(EXAMPLES / "iris.yaml"), "-o", "yaml"])
    assert ok.exit_code == 0
    assert yaml.safe_load(ok.stdout) == {"valid": True, "errors": []}


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["spec", "validate", "-f", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_schema_is_the_spec_json_schema() -> None:
    result = runner.invoke(app, ["spec", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "DeploymentSpec"
    assert {"name", "image", "resources"} <= set(schema["required"])
    as_yaml = runner.invoke(app, ["spec", "schema", "-o", "yaml"])
    assert yaml.safe_load(as_yaml.stdout) == schema
