"""Who may do what on the bus: one grant per service (`PERMISSIONS`), in terms of berth's subjects and
streams, and the nats-server `authorization` block built from it.

`berth up` gives every service a NATS user of its own with these permissions (see berth/up.py); a
production NATS gets the same block from `python -m libs.busauth` (docs/operations.md). A new subject
or stream is added here, in the grants of the services that publish or read it, and nowhere else.

What a grant becomes, in NATS subjects (JetStream is driven by requests to `$JS.API.…`):
- `publishes`: JetStream publishes to those subjects.
- `consumes`: for each stream, what a reader needs: stream info, create/look up/delete a consumer,
  pull the next messages, ack them, answer flow control, and direct gets (how a KV read is done).
  Reading a stream is all it allows: no consumer of it can write to it.
- `secrets`: "read" consumes the secrets bucket's stream; "write" also publishes its keys.
- `serves` / `requests`: core NATS request/reply subjects it answers / asks (replies are allowed
  only to the requests it received: `allow_responses`).
- `manages_streams`: creates and updates the streams and the bucket (`ensure_streams`). Only the
  spec-registry: whoever may update a stream could, for one, make it source another stream's messages
  under its subjects, i.e. forge its events.
Every service subscribes only to its own inbox prefix (`inbox_prefix`), so no service reads the replies
another one gets (a secret read by the router is a reply on the router's inbox).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Literal

from libs.bus import (
    ALERTS,
    ALL_STREAMS,
    CONTROL,
    DEAD_LETTERS,
    HEALTH,
    INTEGRATIONS,
    LOGS_RPC,
    METRICS,
    METRICS_RPC,
    METRICS_SUMMARIES,
    REPLICAS,
    SCALE,
    SECRETS_BUCKET,
    SPECS,
    STATUS,
    TRAFFIC,
    USAGE_METRICS,
    WEBHOOKS,
    inbox_prefix,
)
from libs.natsd import password_variable

SECRETS_STREAM = f"KV_{SECRETS_BUCKET}"


@dataclass(frozen=True)
class Grant:
    publishes: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ()
    secrets: Literal["none", "read", "write"] = "none"
    serves: tuple[str, ...] = ()
    requests: tuple[str, ...] = ()
    manages_streams: bool = False


def _subjects(stream: Any) -> tuple[str, ...]:
    return tuple(stream.subjects)


def dead_letters(service: str) -> str:
    """Where a service publishes the messages it gave up on: its own subtree of BERTH_DEAD."""
    return DEAD_LETTERS.format(service=service, durable=">")


PERMISSIONS: dict[str, Grant] = {
    "spec-registry": Grant(
        publishes=(
            *_subjects(SPECS), *_subjects(SCALE), *_subjects(WEBHOOKS), "berth.control.v1.retry.>",
            dead_letters("spec-registry"),
        ),
        # SCALE: the autoscaler's newest decision, for `autoscale record`; ALERTS: the alerts read model;
        # METRICS: the metrics summaries
        consumes=(STATUS.name, SCALE.name, ALERTS.name, METRICS.name),
        secrets="write",
        requests=(LOGS_RPC, METRICS_RPC),
        manages_streams=True,
    ),
    "scheduler": Grant(
        publishes=(
            *_subjects(REPLICAS), *_subjects(STATUS), *_subjects(TRAFFIC), USAGE_METRICS, dead_letters("scheduler")
        ),
        consumes=(
            SPECS.name, REPLICAS.name, HEALTH.name, CONTROL.name, STATUS.name, SCALE.name, TRAFFIC.name,
            INTEGRATIONS.name, METRICS.name,  # METRICS: the router's windows, for canary analysis
        ),
        secrets="read",
        serves=(LOGS_RPC,),
    ),
    "integrations": Grant(
        publishes=(*_subjects(INTEGRATIONS), dead_letters("integrations")),
        # control: retry requests; traffic: which revisions run (their cached content is not evicted)
        consumes=(SPECS.name, INTEGRATIONS.name, CONTROL.name, TRAFFIC.name),
        secrets="read",  # s3 credentials
    ),
    "health-monitor": Grant(
        publishes=(*_subjects(HEALTH), "berth.control.v1.restart.>", dead_letters("health-monitor")),
        consumes=(REPLICAS.name, HEALTH.name, CONTROL.name),
    ),
    "router": Grant(
        publishes=(*_subjects(METRICS), dead_letters("router")),
        consumes=(TRAFFIC.name,),  # the scheduler's assignments are all the router reads
        secrets="read",  # basic-auth keys
    ),
    "metrics": Grant(
        publishes=(METRICS_SUMMARIES.replace("*", ">"), dead_letters("metrics")),
        # METRICS: the router's windows and the scheduler's usage; STATUS: replica counts and restarts;
        # TRAFFIC: which revision runs each spec version (?version=)
        consumes=(METRICS.name, STATUS.name, TRAFFIC.name),
        serves=(METRICS_RPC,),
    ),
    "autoscaler": Grant(
        publishes=(*_subjects(SCALE), dead_letters("autoscaler")),
        consumes=(SPECS.name, METRICS.name, STATUS.name, SCALE.name),  # SCALE: its own last decisions
    ),
    "alerting": Grant(
        publishes=(*_subjects(ALERTS), dead_letters("alerting")),
        # SPECS: the rules; METRICS, STATUS: the figures; ALERTS: its own states and deliveries; WEBHOOKS
        consumes=(SPECS.name, METRICS.name, STATUS.name, ALERTS.name, WEBHOOKS.name),
        secrets="read",  # the webhooks' HMAC keys, unsealed when signing
    ),
}


def _reader(stream: str) -> list[str]:
    api = "$JS.API"
    return [
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.>",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.>",
        f"{api}.CONSUMER.DELETE.{stream}.>",
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.STREAM.MSG.GET.{stream}",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _every_stream() -> list[str]:
    return [stream.name for stream in ALL_STREAMS] + [SECRETS_STREAM]


def nats_permissions(service: str) -> dict[str, Any]:
    """The nats-server `permissions` of one service's user."""
    grant = PERMISSIONS[service]
    streams = list(grant.consumes)
    publish = list(grant.publishes) + list(grant.requests)
    if grant.secrets in ("read", "write"):
        streams.append(SECRETS_STREAM)
    if grant.secrets == "write":
        publish.append(f"$KV.{SECRETS_BUCKET}.>")
    # Every service checks that the streams exist on start (ensure_streams), and may list them.
    publish += ["$JS.API.INFO", "$JS.API.STREAM.NAMES"]
    publish += [f"$JS.API.STREAM.INFO.{name}" for name in _every_stream()]
    for stream in dict.fromkeys(streams):
        publish += _reader(stream)
    if grant.manages_streams:
        for name in _every_stream():
            publish += [f"$JS.API.STREAM.CREATE.{name}", f"$JS.API.STREAM.UPDATE.{name}"]
    subscribe = [f"{inbox_prefix(service)}.>"]
    subscribe += list(grant.serves)
    permissions: dict[str, Any] = {
        "publish": {"allow": list(dict.fromkeys(publish))},
        "subscribe": {"allow": subscribe},
    }
    if grant.serves:
        permissions["allow_responses"] = True
    return permissions


def authorization_block(passwords: dict[str, str]) -> dict[str, Any]:
    """The nats-server `authorization` block: one user per service (named after it), nobody else.

    `passwords` maps each user to its password as written in the config: the value itself, or a
    `$VARIABLE` that nats-server takes from its environment (see `render_config`)."""
    return {
        "users": [
            {"user": service, "password": passwords[service], "permissions": nats_permissions(service)}
            for service in PERMISSIONS
        ]
    }


def render_config() -> str:
    """A nats-server config holding only the authorization: passwords are `$BERTH_NATS_PASSWORD_<SERVICE>`
    variables, resolved from nats-server's environment, so that the file holds no secret."""
    block = authorization_block({service: f"@{password_variable(service)}@" for service in PERMISSIONS})
    text = json.dumps({"authorization": block}, indent=2)
    # nats-server reads `$NAME` (unquoted) as a variable, from the config or else the environment.
    for service in PERMISSIONS:
        text = text.replace(f'"@{password_variable(service)}@"', f"${password_variable(service)}")
    return text + "\n"


if __name__ == "__main__":  # `python -m libs.busauth`: the block for a production nats-server config
    sys.stdout.write(render_config())
