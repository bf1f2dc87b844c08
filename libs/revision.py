"""Revisions: the immutable unit of what runs, as a Knative Revision is.

A revision is the part of a spec that changes the processes (image, registry, command, env, model,
integrations, resources other than the replica count and autoscaling; `restartedAt`, a restart). Its
id is a hash of exactly that, so it is a pure function of the spec: every service computes the same
id, spec versions that change only replicas, `enabled`, the load balancer, health checks or the
description share their revision, and rolling back to an earlier template finds the earlier revision again.
"""

from __future__ import annotations

import hashlib
import json

from libs.spec import DeploymentSpec, Integration

REVISION_ID_LENGTH = 16
# The spec fields a revision is made of (what `revision_id` hashes), and the parts of `resources` that
# are not: a change to a template field replaces replicas, any other applies live (libs/changes.py).
TEMPLATE_FIELDS = ("image", "containerRegistry", "command", "env", "model", "integrations", "resources", "restartedAt")
LIVE_RESOURCES = ("replicas", "autoscaling")
# Integration fields added later count only when set, so revisions of specs without them keep their ids.
LATER_INTEGRATION_FIELDS = frozenset({"username", "password", "sshKey"})


def revision_id(spec: DeploymentSpec) -> str:
    """The id of the revision `spec` runs. Secret references count, never their values."""
    template: dict[str, object] = {
        "image": spec.image,
        "containerRegistry": spec.containerRegistry,
        "command": spec.command,
        "env": [(e.name, e.value) for e in spec.env],
        "model": spec.model.model_dump() if spec.model else None,
        "integrations": [_integration(i) for i in spec.integrations],
        "resources": spec.resources.model_dump(exclude={"replicas", "autoscaling"}),
    }
    if spec.restartedAt is not None:  # only when set: the revisions of specs without it keep their ids
        template["restartedAt"] = spec.restartedAt.isoformat()
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:REVISION_ID_LENGTH]


def is_template_field(path: str) -> bool:
    """Whether the spec field at dotted `path` (e.g. `resources.cpu`, `env.TOKEN`) is part of the
    revision: changing it makes a new revision."""
    top, _, rest = path.partition(".")
    if top == "resources":
        return rest.split(".")[0] not in LIVE_RESOURCES
    return top in TEMPLATE_FIELDS


def _integration(integration: Integration) -> dict[str, object]:
    dumped = integration.model_dump()
    return {k: v for k, v in dumped.items() if v is not None or k not in LATER_INTEGRATION_FIELDS}
