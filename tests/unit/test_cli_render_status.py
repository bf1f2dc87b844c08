"""What `berth deployments get` prints about integrations: each fetched one, and a fetch under way."""

from __future__ import annotations

from typing import Any

from berth.render import deployment_detail


def test_get_shows_a_fetch_under_way_and_the_fetched_integrations(capsys: Any) -> None:
    deployment: Any = {
        "name": "falcon", "deployment_id": "d1", "spec_version": 2, "spec_id": "s" * 26, "project": "default",
        "slug": "falcon", "endpoint": "/default/falcon", "environment": "development",
        "spec": {"image": "python:3.11", "resources": {"ports": [8000]}},
    }  # fmt: skip
    status: Any = {
        "phase": "Provisioning", "reason": "waiting for integrations weights to be fetched", "ready_replicas": 0,
        "desired_replicas": 1, "replicas": [],
        "fetching": {"integration": "weights", "fetched_files": 3, "fetched_bytes": 4096},
        "integrations": [{"name": "tokenizer", "type": "volume", "mount": "/data/tokenizer", "identity": "0123456789abcdef",
                          "files": 0, "bytes": 0}],
    }  # fmt: skip
    deployment_detail(deployment, status)
    out = " ".join(capsys.readouterr().out.split())
    assert "Fetching weights: 3 files, 4096 bytes so far" in out
    assert "Integration tokenizer /data/tokenizer (volume 0123456789ab" in out
