"""`berth autoscale explain`: the documented example trace, as people and scripts read it, and a
trace the autoscaler service recorded replays to the decision it made."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from berth.cli import app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "autoscaling" / "trace.json"
runner = CliRunner()


def test_explain_the_documented_example() -> None:
    result = runner.invoke(app, ["autoscale", "explain", "--input", str(EXAMPLE), "-o", "json"])
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.output)["decisions"]
    # cpu: 85 % against 50 % with the replica missing its sample taken at 0 % → 56 % → ceil(1.12 × 3) = 4;
    # requestDuration: 0.6 s against 0.5 s over the 2 ready replicas → ceil(2.4) = 3. The maximum: 4.
    assert (first["desiredReplicas"], first["reason"]) == (4, "cpu above target")
    assert [(m["metric"], m["replicas"]) for m in first["metrics"]] == [("cpu", 4), ("requestDuration", 3)]
    # concurrency 12 over 6 replicas at 10 each → 2, held at 6 by the recommendation of 30 s ago.
    assert (second["desiredReplicas"], second["recommendation"]) == (6, 2)
    assert second["conditions"]["AbleToScale"] == "ScaleDownStabilized"
    table = runner.invoke(app, ["autoscale", "explain", "--input", str(EXAMPLE)])
    assert "3 → 4 replicas" in table.output and "ScaleDownStabilized" in table.output


def test_a_bad_trace_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "trace.json"
    bad.write_text(json.dumps({"decisions": [{"policy": {"minReplicas": 1, "maxReplicas": 2, "metrics": []},
                                              "currentReplicas": -1}]}))
    result = runner.invoke(app, ["autoscale", "explain", "--input", str(bad)])
    assert result.exit_code == 1
    assert "decisions.0.currentReplicas" in result.output and "decisions.0.policy.metrics" in result.output
