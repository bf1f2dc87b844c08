"""The one-off steps of `berth up` that need the bus libraries, each run in a short-lived process so
that the supervisor itself never imports them (it idles at ~30 MiB instead of ~85 MiB:
docs/benchmarks.md).

    python -m berth.prepare files [--key FILE] [--auth DIR]
        the key that seals secret values (unless there is one); the NATS passwords of every service
        and nats-server's config
    python -m berth.prepare bus
        streams and the secrets bucket, as the spec-registry (BERTH_NATS_* in the environment); seals
        values an older berth left in plain text
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from faststream.nats.security import NatsSecurity

from libs.bus import ensure_streams, make_broker
from libs.busauth import render_config
from libs.config import Settings
from libs.natsd import CONFIG_FILE, service_passwords, write_private
from libs.sealing import Sealer, ensure_key_file
from libs.secrets import SecretStore


async def set_up_bus(url: str, registry: NatsSecurity | None, sealer: Sealer | None = None) -> None:
    """Streams and the secrets bucket, as the spec-registry: the other services may only read them;
    with `sealer`, values stored in plain text by an older berth are sealed."""
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
    service_passwords(auth_dir)
    write_private(auth_dir / CONFIG_FILE, render_config())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m berth.prepare")
    steps = parser.add_subparsers(dest="step", required=True)
    files = steps.add_parser("files")
    files.add_argument("--key", type=Path, default=None)
    files.add_argument("--auth", type=Path, default=None)
    steps.add_parser("bus")
    args = parser.parse_args(argv)
    if args.step == "files":
        if args.key is not None and ensure_key_file(args.key):
            print(f"made the secrets key {args.key} (owner-only)", flush=True)
        if args.auth is not None:
            write_auth(args.auth)
    else:
        settings = Settings()
        asyncio.run(set_up_bus(settings.resolved_nats_url, settings.nats_security(), Sealer.from_settings(settings)))


if __name__ == "__main__":
    main()
