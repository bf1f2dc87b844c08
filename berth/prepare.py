"""The one-off steps of `berth up` that need the bus libraries, each run in a short-lived process so
that the supervisor itself never imports them (it idles at ~30 MiB instead of ~85 MiB:
docs/benchmarks.md).

    python -m berth.prepare files [--key FILE] [--auth DIR]
        the key that seals secret values (unless there is one); the NATS passwords of every service
        and nats-server's config
    python -m berth.prepare bus
        streams and the secrets bucket, as the spec-registry (BERTH_NATS_* in the environment); seals
        values an older berth left in plain text
    python -m berth.prepare settings [--data-dir DIR]
        the settings the supervisor runs with (berth.up.UpSettings), resolved from the environment
        as every service resolves them, printed as JSON: the supervisor never imports
        pydantic-settings (about 15 MiB it would hold for as long as berth runs)

Each step imports only what it uses: a step's process start is part of `berth up`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libs.config import Settings

if TYPE_CHECKING:
    from faststream.nats.security import NatsSecurity

    from libs.sealing import Sealer


async def set_up_bus(url: str, registry: NatsSecurity | None, sealer: Sealer | None = None) -> None:
    """Streams and the secrets bucket, as the spec-registry: the other services may only read them;
    with `sealer`, values stored in plain text by an older berth are sealed."""
    from libs.bus import ensure_streams, make_broker
    from libs.secrets import SecretStore

    broker = make_broker(url, "spec-registry", registry)
    connection = await broker.connect()
    try:
        js = connection.jetstream()
        await ensure_streams(js)
        store = await SecretStore.open(js, sealer)
        if sealer is not None:  # values a berth from before sealing left in plain text
            await store.seal_plaintext()
    finally:
        await broker.stop()


def write_auth(auth_dir: Path) -> None:
    """Every service's password (made on first use) and the nats-server config that admits them."""
    from libs.busauth import render_config
    from libs.natsd import CONFIG_FILE, service_passwords, write_private

    service_passwords(auth_dir)
    write_private(auth_dir / CONFIG_FILE, render_config())


def up_settings(settings: Settings) -> dict[str, Any]:
    """What berth.up.UpSettings holds, as JSON values."""
    ports = {
        "BERTH_API_PORT": settings.api_port,
        "BERTH_ROUTER_PORT": settings.router_port,
        "BERTH_SCHEDULER_OPS_PORT": settings.scheduler_ops_port,
        "BERTH_HEALTH_MONITOR_OPS_PORT": settings.health_monitor_ops_port,
        "BERTH_INTEGRATIONS_OPS_PORT": settings.integrations_ops_port,
        "BERTH_AUTOSCALER_OPS_PORT": settings.autoscaler_ops_port,
        "BERTH_ALERTING_OPS_PORT": settings.alerting_ops_port,
        "BERTH_METRICS_OPS_PORT": settings.metrics_ops_port,
    }
    return {
        "data_dir": str(settings.data_dir.resolve()),
        "nats_url": settings.nats_url,
        "nats_port": settings.nats_port,
        "api_host": settings.api_host,
        "router_host": settings.router_host,
        "ports": ports,
        "stop_grace_seconds": settings.stop_grace_seconds,
        "secrets_key_given": settings.secrets_key is not None,
        "secrets_key_file": str(settings.resolved_secrets_key_file.resolve()),
        "token_file": str(settings.token_file.resolve()),
        "up_processes": settings.up_processes,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m berth.prepare")
    steps = parser.add_subparsers(dest="step", required=True)
    files = steps.add_parser("files")
    files.add_argument("--key", type=Path, default=None)
    files.add_argument("--auth", type=Path, default=None)
    steps.add_parser("bus")
    steps.add_parser("settings").add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.step == "settings":
        from pydantic import ValidationError

        try:
            settings = Settings(data_dir=args.data_dir) if args.data_dir else Settings()
        except ValidationError as exc:  # the variable and the rule, never the value (it may be a secret)
            problems = (f"BERTH_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
            sys.exit("\n".join(problems))
        print(json.dumps(up_settings(settings)))
    elif args.step == "files":
        from libs.sealing import ensure_key_file

        if args.key is not None and ensure_key_file(args.key):
            print(f"made the secrets key {args.key} (owner-only)", flush=True)
        if args.auth is not None:
            write_auth(args.auth)
    else:
        from libs.sealing import Sealer

        settings = Settings()
        asyncio.run(set_up_bus(settings.resolved_nats_url, settings.nats_security(), Sealer.from_settings(settings)))


if __name__ == "__main__":
    main()
