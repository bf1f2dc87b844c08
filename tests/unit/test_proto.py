"""proto/ holds contracts generated from the code; this fails when they drift (run `make proto`)."""

from __future__ import annotations

from berth.proto import PROTO_DIR, asyncapi_document, drifted
from libs.events import ALL_EVENTS


def test_proto_matches_the_code() -> None:
    assert drifted() == [], f"regenerate with `make proto`; stale under {PROTO_DIR}"


def test_asyncapi_documents_every_event_with_its_schema() -> None:
    document = asyncapi_document()
    channels = " ".join(document["channels"])
    for event in ALL_EVENTS:
        assert event.__name__ in channels
    assert "SpecApplied" in str(document["components"]["schemas"])
