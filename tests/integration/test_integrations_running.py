"""What the cache's eviction keeps, read from a real nats-server: the contents of the revisions in
each deployment's newest traffic assignment (serving or not yet ready), not those of other revisions
nor of a deleted deployment."""

from __future__ import annotations

import json
from pathlib import Path

from nats.js import JetStreamContext

from libs.bus import ensure_streams
from libs.events import Event, IntegrationsReady, MaterialisedIntegration, RevisionTarget, TrafficAssigned
from services.integrations.running import contents_in_use

REF = {"project": "default", "slug": "falcon"}


async def put(js: JetStreamContext, event: Event) -> None:
    await js.publish(event.subject(), json.dumps(event.model_dump(mode="json")).encode())


def ready(deployment_id: str, revision_id: str) -> IntegrationsReady:
    content = MaterialisedIntegration(name="falcon", type="s3", mount="/models/falcon", identity=revision_id,
                                      local_path=f"/cache/content/s3-{revision_id}")  # fmt: skip
    return IntegrationsReady(deployment_id=deployment_id, revision_id=revision_id, spec_version=1,
                             integrations=[content], **REF)  # fmt: skip


async def test_contents_of_revisions_in_the_newest_assignment_are_in_use(js: JetStreamContext) -> None:
    await ensure_streams(js)
    for deployment_id, revision_id in (("d1", "old"), ("d1", "new"), ("d1", "stopped"), ("d2", "gone")):
        await put(js, ready(deployment_id, revision_id))
    await put(js, TrafficAssigned(deployment_id="d1", generation=1, spec_version=1, **REF,
                                  targets=[RevisionTarget(revision_id="stopped", percent=100)]))  # fmt: skip
    await put(js, TrafficAssigned(deployment_id="d1", generation=2, spec_version=3, **REF, targets=[
        RevisionTarget(revision_id="old", percent=100), RevisionTarget(revision_id="new", percent=0),
    ]))  # fmt: skip
    await put(js, TrafficAssigned(deployment_id="d2", generation=4, spec_version=1, deleted=True, **REF,
                                  targets=[RevisionTarget(revision_id="gone", percent=0)]))  # fmt: skip

    assert await contents_in_use(js) == {Path("/cache/content/s3-old"), Path("/cache/content/s3-new")}
