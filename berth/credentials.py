"""Where the CLI finds the API address and its token, in this order:

1. `--api-url` / `--token` or `BERTH_API_URL` / `BERTH_TOKEN` (also from a `.env` file);
2. the config file `berth login` writes: `$XDG_CONFIG_HOME/berth/config.yaml` (by default
   `~/.config/berth/config.yaml`, mode 0600); its token is used only for the API address it was saved for;
3. the admin token `berth up` leaves in its data dir (`$BERTH_DATA_DIR/token`, by default `.berth/token`).

The address defaults to the local registry (`http://127.0.0.1:8080`). Tokens are never printed: what the
CLI says names only the place a token came from or the places it looked in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from libs.config import Settings
from libs.files import write_private

LOGIN_HINT = "run `berth login --api URL --token TOKEN`, or set BERTH_TOKEN"


class ConfigError(Exception):
    """The config file exists but cannot be used."""


def config_path() -> Path:
    """`$XDG_CONFIG_HOME/berth/config.yaml`, `~/.config/berth/config.yaml` when XDG_CONFIG_HOME is unset."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "berth" / "config.yaml"


@dataclass(frozen=True)
class Credentials:
    api_url: str
    token: str | None
    source: str  # where the token came from, or "" when none was found
    looked_in: tuple[str, ...]  # every place a token was looked for

    def missing(self) -> str:
        """What to tell someone whose request was refused because no token was found."""
        return f"no API token found for {self.api_url}; looked in {'; '.join(self.looked_in)}. To log in, {LOGIN_HINT}."

    def refused(self) -> str:
        return f"the API at {self.api_url} refused the token from {self.source}; {LOGIN_HINT} with a valid one."


def find(api_url: str | None, token: str | None, settings: Settings) -> Credentials:
    """The API address and token to use (see the module's docstring for the order)."""
    path = config_path()
    config = load_config(path)
    saved_url = _normal(config.get("api_url") or settings.resolved_api_url)
    url = _normal(api_url or settings.api_url or config.get("api_url") or settings.resolved_api_url)
    looked_in = ["--token or BERTH_TOKEN"]
    if token or settings.token:
        return Credentials(url, token or settings.token, "--token or BERTH_TOKEN", tuple(looked_in))

    if config.get("token") and saved_url == url:
        return Credentials(url, str(config["token"]), str(path), (*looked_in, str(path)))
    looked_in.append(f"{path} ({_what_it_holds(path, config, saved_url)})")

    looked_in.append(str(settings.token_file))
    try:
        if file_token := settings.token_file.read_text().strip():
            return Credentials(url, file_token, str(settings.token_file), tuple(looked_in))
    except OSError:
        pass
    return Credentials(url, None, "", tuple(looked_in))


def load_config(path: Path) -> dict[str, Any]:
    """The config file's settings; {} when there is none."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {type(exc).__name__}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the config file {path} must be a mapping with api_url and token")
    return data


def save(api_url: str, token: str) -> Path:
    """Keep the address and token for later commands, in a file only its owner may read (0600)."""
    path = config_path()
    config = load_config(path) | {"api_url": _normal(api_url), "token": token}
    write_private(path, yaml.safe_dump(config, sort_keys=False).rstrip())
    return path


def _what_it_holds(path: Path, config: dict[str, Any], saved_url: str) -> str:
    if not path.exists():
        return "no such file"
    return f"a token for {saved_url} only" if config.get("token") else "no token"


def _normal(url: str) -> str:
    return url.rstrip("/")
