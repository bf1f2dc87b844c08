"""How a local replica finds an integration: a link in its working directory and a variable."""

from __future__ import annotations

from pathlib import Path

from libs.runtime.base import Mount
from libs.runtime.mounts import env_name, link_mounts


def test_variable_names_follow_the_integration_name() -> None:
    assert env_name("falcon") == "BERTH_INTEGRATION_FALCON"
    assert env_name("my-s3-integration") == "BERTH_INTEGRATION_MY_S3_INTEGRATION"
    assert env_name("weights.v2") == "BERTH_INTEGRATION_WEIGHTS_V2"


def test_links_in_the_working_directory_replace_older_ones(tmp_path: Path) -> None:
    old, new = tmp_path / "cache" / "old", tmp_path / "cache" / "new"
    for content in (old, new):
        content.mkdir(parents=True)
        (content / "config.json").write_text(content.name)
    workdir = tmp_path / "replica"
    workdir.mkdir()
    link_mounts(workdir, (Mount("falcon", "/models/falcon", str(old)),))
    env = link_mounts(workdir, (Mount("falcon", "/models/falcon", str(new)),))
    assert (workdir / "models" / "falcon" / "config.json").read_text() == "new"
    assert env == {"BERTH_INTEGRATION_FALCON": str(workdir / "models" / "falcon")}
