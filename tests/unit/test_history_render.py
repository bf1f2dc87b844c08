"""`berth deployments history` shows an automatic rollback under the table."""

from __future__ import annotations

import pytest

from berth import render


def version(number: int, **extra: object) -> dict[str, object]:
    spec = {"name": "iris", "image": "python:3.11", "resources": {"ports": [8000], "replicas": 1}}
    return {"spec_version": number, "spec_id": f"spec-{number}", "revision_id": "abc", "created_at": "2026-12-01T10:00:00+00:00", "spec": spec, **extra}


def test_an_automatic_rollback_is_shown_with_its_reason(capsys: pytest.CaptureFixture[str]) -> None:
    why = "canary analysis: error rate 60.0 % exceeds the stable revision's 0.0 %"
    render.history_table([version(2, rolled_back_at="2026-12-01T10:05:00+00:00", rolled_back_reason=why), version(1)])  # type: ignore[list-item]
    lines = [line for line in capsys.readouterr().out.splitlines() if "rolled back" in line]
    assert len(lines) == 1 and lines[0].startswith("version 2: rolled back automatically") and why in lines[0]
