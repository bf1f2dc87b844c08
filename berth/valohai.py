"""`berth import valohai valohai.yaml`: each `endpoint` of a Valohai file as a berth spec (pure).

A Valohai endpoint (seeds/004) has a name, a description, an image, a port, and either a
`server-command` (a shell-like command line that serves HTTP) or `wsgi` (`module:callable`, which
Valohai serves with its own WSGI server), and `files` (inputs chosen when a deployment version is
created, baked into its image). Everything berth has no counterpart for is listed as not mapped,
with what to do instead; nothing is dropped silently.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from libs.spec import SpecError, SpecInvalid, parse_yaml, validate_spec

DEFAULT_PORT = 8000  # Valohai's endpoint port when none is given
MAPPED = {"name", "description", "image", "port", "server-command", "wsgi", "files"}


@dataclass
class Imported:
    """One endpoint: the berth spec made of it (None when it cannot make a valid one) and what was
    not mapped, each a sentence naming the Valohai field."""

    name: str
    spec: dict[str, Any] | None
    not_mapped: list[str] = field(default_factory=list)


def from_valohai(text: str) -> list[Imported]:
    """Every endpoint of a valohai.yaml, in file order. Raises SpecInvalid when the text is not YAML
    or not a list of entries (a valohai.yaml is a list of `step`, `pipeline`, `endpoint` items)."""
    document = parse_yaml(text)
    if not isinstance(document, list):
        raise SpecInvalid([SpecError("(file)", "a valohai.yaml is a list of step, pipeline and endpoint entries")])
    found = []
    for index, entry in enumerate(document):
        if isinstance(entry, dict) and isinstance(entry.get("endpoint"), dict):
            found.append(_endpoint(index, entry["endpoint"]))
    return found


def _endpoint(index: int, endpoint: dict[str, Any]) -> Imported:
    where = f"[{index}].endpoint"
    name = str(endpoint.get("name") or f"endpoint-{index}")
    not_mapped = [f"{where}.{key}: Valohai field berth has no counterpart for" for key in endpoint if key not in MAPPED]
    port = endpoint.get("port", DEFAULT_PORT)
    spec: dict[str, Any] = {"apiVersion": "v1", "name": name, "image": endpoint.get("image")}
    if endpoint.get("description"):
        spec["description"] = str(endpoint["description"])
    spec["resources"] = {"ports": [port], "replicas": 1}
    command = _command(where, endpoint, not_mapped)
    if command is not None:
        spec["command"] = command
    for number, file in enumerate(endpoint.get("files") or []):
        described = file if isinstance(file, dict) else {}
        not_mapped.append(
            f"{where}.files[{number}] ({described.get('name', '?')} at {described.get('path', '?')}): files are chosen "
            "when a Valohai version is created; in berth add an integration (git-lfs or s3) that puts it at that "
            "path, or build it into the image"
        )
    try:
        validate_spec(spec)
    except SpecInvalid as exc:
        not_mapped += [f"{where}: the spec made of it is invalid: {e.field}: {e.rule}" for e in exc.errors]
        return Imported(name, None, not_mapped)
    return Imported(name, spec, not_mapped)


def _command(where: str, endpoint: dict[str, Any], not_mapped: list[str]) -> list[str] | None:
    """`server-command` split as a shell would; `wsgi` served by gunicorn on the replica's port."""
    server, wsgi = endpoint.get("server-command"), endpoint.get("wsgi")
    if server and wsgi:
        not_mapped.append(f"{where}.wsgi: both server-command and wsgi are given; berth runs server-command")
    if server:
        try:
            return shlex.split(str(server))
        except ValueError:
            not_mapped.append(f"{where}.server-command: not a command line (unbalanced quotes)")
            return None
    if wsgi:
        not_mapped.append(
            f"{where}.wsgi: Valohai serves it with its own WSGI server; berth runs gunicorn, which the image must have"
        )
        return ["gunicorn", "--bind", "0.0.0.0:$PORT", str(wsgi)]
    not_mapped.append(f"{where}: neither server-command nor wsgi: the image's own command runs")
    return None
