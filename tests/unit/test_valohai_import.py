"""`berth import valohai`: the endpoints of seeds/004's valohai.yaml as berth specs, and what is not mapped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from berth.cli import app
from berth.valohai import from_valohai
from libs.spec import SpecInvalid, validate_spec

SEED = """
- step:
    name: train
    image: python:3.11
    command: python train.py
- endpoint:
    name: greet-me
    description: Responds with a big hello!
    image: python:3.6
    port: 8000
    server-command: python -m wsgiref.simple_server
- endpoint:
    name: predict-digit
    description: Predict digits from image inputs ("file" parameter).
    image: gcr.io/tensorflow/tensorflow:1.13.1-py3
    wsgi: predict_wsgi:predict_wsgi
    files:
      - name: model
        description: Model output file from training step.
        path: model.pb
"""


def endpoint(**fields: Any) -> str:
    return yaml.safe_dump([{"endpoint": {"name": "e", "image": "python:3.11", **fields}}])


def test_the_seed_endpoints_become_valid_specs_and_say_what_they_leave_out() -> None:
    greet, digits = from_valohai(SEED)  # the step is not an endpoint
    assert greet.spec == {
        "apiVersion": "v1", "name": "greet-me", "image": "python:3.6", "description": "Responds with a big hello!",
        "resources": {"ports": [8000], "replicas": 1}, "command": ["python", "-m", "wsgiref.simple_server"],
    }  # fmt: skip
    assert greet.not_mapped == []
    assert digits.spec is not None
    assert digits.spec["command"] == ["gunicorn", "--bind", "0.0.0.0:$PORT", "predict_wsgi:predict_wsgi"]
    assert [n.split(":")[0] for n in digits.not_mapped] == ["[2].endpoint.wsgi", "[2].endpoint.files[0] (model at model.pb)"]
    assert "integration" in digits.not_mapped[1]


@pytest.mark.parametrize(
    ("text", "command", "port", "note"),
    [
        (endpoint(**{"server-command": "python serve.py --name 'a b'"}), ["python", "serve.py", "--name", "a b"], 8000, None),
        (endpoint(port=9000, wsgi="app:app"), ["gunicorn", "--bind", "0.0.0.0:$PORT", "app:app"], 9000, "gunicorn"),
        (endpoint(**{"server-command": "serve", "wsgi": "app:app"}), ["serve"], 8000, "both server-command and wsgi"),
        (endpoint(), None, 8000, "neither server-command nor wsgi"),
        (endpoint(**{"server-command": "serve 'open"}), None, 8000, "unbalanced quotes"),
        (endpoint(**{"server-command": "serve", "resources": {"cpu": 1}}), ["serve"], 8000, "endpoint.resources: Valohai field"),
    ],
)
def test_endpoint_fields(text: str, command: list[str] | None, port: int, note: str | None) -> None:
    (imported,) = from_valohai(text)
    assert imported.spec is not None
    assert imported.spec.get("command") == command and imported.spec["resources"]["ports"] == [port]
    if note is None:
        assert imported.not_mapped == []
    else:
        assert len(imported.not_mapped) == 1 and note in imported.not_mapped[0]


def test_an_endpoint_that_makes_no_valid_spec_says_why() -> None:
    (imported,) = from_valohai(yaml.safe_dump([{"endpoint": {"name": "no-image", "server-command": "serve"}}]))
    assert imported.spec is None
    assert [n for n in imported.not_mapped if n.startswith("[0].endpoint: the spec made of it is invalid: image:")]


@pytest.mark.parametrize("text", ["endpoint: {}", "- [unclosed"])
def test_not_a_valohai_file(text: str) -> None:
    with pytest.raises(SpecInvalid):
        from_valohai(text)


def test_the_command_prints_specs_berth_apply_takes_and_the_gaps_on_stderr(tmp_path: Path) -> None:
    source = tmp_path / "valohai.yaml"
    source.write_text(SEED)
    result = CliRunner().invoke(app, ["import", "valohai", str(source)])
    assert result.exit_code == 0, result.output
    specs = [validate_spec(d) for d in yaml.safe_load_all(result.stdout)]
    assert [s.name for s in specs] == ["greet-me", "predict-digit"]
    assert "predict-digit: not mapped: [2].endpoint.files[0]" in result.stderr
    assert "# not mapped: [2].endpoint.wsgi" in result.stdout  # travels with the spec file
