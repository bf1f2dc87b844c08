"""Generate the language-neutral contracts in proto/ from the code, and check them for drift.

- proto/asyncapi.json      the bus: every event of libs/events.py on its subject (FastStream AsyncAPI)
- proto/openapi.json       the REST API of the spec-registry (FastAPI)
- proto/spec.schema.json   the deployment spec (JSON Schema from libs/spec.py)

`python -m berth.proto write` rewrites them; `python -m berth.proto check` exits 1 when they drift.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI

from libs.bus import ALL_STREAMS
from libs.events import ALL_EVENTS
from libs.spec import spec_json_schema

PROTO_DIR = Path(__file__).resolve().parents[1] / "proto"
VERSION = "0.1.0"


def _wildcard(template: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "*", template)


def asyncapi_document() -> dict[str, Any]:
    broker = NatsBroker()
    for event in ALL_EVENTS:
        subject = _wildcard(event.subject_template)
        stream = next(s for s in ALL_STREAMS if subject.startswith(list(s.subjects)[0].removesuffix(">")))
        broker.publisher(
            subject,
            stream=stream,
            title=f"{event.__name__}:{subject}",
            description=(event.__doc__ or "").strip(),
            schema=event,
        )
    spec = AsyncAPI(broker, title="berth bus", version=VERSION, description="Events between berth services.")
    return json.loads(spec.to_specification().to_json())


def openapi_document() -> dict[str, Any]:
    from libs.config import Settings
    from services.spec_registry.app import create_app  # the registry's app, built without serving

    return create_app(Settings(_env_file=None)).openapi()


def documents() -> dict[str, dict[str, Any]]:
    return {
        "asyncapi.json": asyncapi_document(),
        "openapi.json": openapi_document(),
        "spec.schema.json": spec_json_schema(),
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def drifted(directory: Path = PROTO_DIR) -> list[str]:
    """Names of the files in proto/ that differ from what the code generates now."""
    return [
        name
        for name, document in documents().items()
        if not (directory / name).exists() or (directory / name).read_text() != render(document)
    ]


def write(directory: Path = PROTO_DIR) -> None:
    directory.mkdir(exist_ok=True)
    for name, document in documents().items():
        (directory / name).write_text(render(document))


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    if command == "write":
        write()
        return 0
    stale = drifted()
    for name in stale:
        print(f"proto/{name} is out of date: run `make proto`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
