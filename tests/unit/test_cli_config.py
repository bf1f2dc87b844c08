"""Where the CLI finds the API address and token (berth.credentials): flags and BERTH_* first, then
the config file `berth login` writes (XDG_CONFIG_HOME), then the token file of the data dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from berth import credentials
from berth.credentials import ConfigError, config_path, find
from libs.config import Settings

LOCAL = "http://127.0.0.1:8080"
REMOTE = "https://berth.example.com"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for name in ("BERTH_TOKEN", "BERTH_API_URL", "BERTH_API_HOST", "BERTH_API_PORT"):
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "token").write_text("data-dir-token\n")
    return Settings(data_dir=data_dir, _env_file=None)


def test_config_lives_under_xdg_config_home_or_dot_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_path() == tmp_path / "xdg" / "berth" / "config.yaml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_path() == tmp_path / "home" / ".config" / "berth" / "config.yaml"


def test_flags_then_the_saved_login_then_the_data_dir(settings: Settings) -> None:
    assert (find(None, None, settings).api_url, find(None, None, settings).token) == (LOCAL, "data-dir-token")

    credentials.save(REMOTE + "/", "saved-token")
    saved = find(None, None, settings)
    assert (saved.api_url, saved.token, saved.source) == (REMOTE, "saved-token", str(config_path()))

    flagged = find("http://other:1", "flag-token", settings)
    assert (flagged.api_url, flagged.token, flagged.source) == ("http://other:1", "flag-token", "--token or BERTH_TOKEN")


def test_a_saved_token_goes_only_to_the_api_it_was_saved_for(settings: Settings) -> None:
    credentials.save(REMOTE, "saved-token")
    local = find(LOCAL, None, settings)
    assert (local.token, local.source) == ("data-dir-token", str(settings.token_file))

    (settings.data_dir / "token").unlink()
    nothing = find(LOCAL, None, settings)
    assert nothing.token is None
    assert nothing.missing() == (
        f"no API token found for {LOCAL}; looked in --token or BERTH_TOKEN; "
        f"{config_path()} (a token for {REMOTE} only); {settings.token_file}. "
        "To log in, run `berth login --api URL --token TOKEN`, or set BERTH_TOKEN."
    )


def test_save_keeps_other_settings_and_writes_0600(settings: Settings) -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text("colour: false\n")
    path.chmod(0o644)
    credentials.save(REMOTE, "saved-token")
    assert yaml.safe_load(path.read_text()) == {"colour": False, "api_url": REMOTE, "token": "saved-token"}
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_broken_config_file_is_named_and_not_echoed(settings: Settings) -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text("token: [secret-value\n")
    with pytest.raises(ConfigError) as raised:
        find(None, None, settings)
    assert str(path) in str(raised.value) and "secret-value" not in str(raised.value)
    path.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        find(None, None, settings)
