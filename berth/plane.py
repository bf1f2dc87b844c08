"""Several control-plane services in one process, one event loop (what `berth up` runs by default).

    python -m berth.plane [--nats-auth-dir DIR] services.spec_registry services.scheduler ...

Each service stays what it is in a process of its own: its own `main(settings, stop)`, NATS connection
(as its own NATS user when `--nats-auth-dir` holds the passwords `berth up` made), subscribers, timers
and ops port; its log lines name it (`"service": "scheduler"`). What they share is the interpreter, the
imported libraries and the loop: about 60 MiB per service not paid again (docs/benchmarks.md).

Supervision: the process lives only while every service in it does. When one service's `main` fails
(or returns before being asked to stop), the others are stopped and the process exits with status 1,
so that the supervisor (`berth up`) restarts the whole group: never a process that answers /healthz
for some services while another is dead. SIGTERM or Ctrl-C stops them all and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import importlib
import signal
import sys
from pathlib import Path

import structlog
from pydantic import SecretStr

from libs.config import Settings, get_settings
from libs.logging import configure_logging, get_logger
from libs.natsd import service_passwords
from libs.service import ServiceMain
from libs.telemetry import configure_tracing

PLANE = "control-plane"
log = get_logger("berth.plane")


def service_settings(name: str, settings: Settings, auth_dir: Path | None) -> Settings:
    """The settings `name` runs with: its own NATS user when `auth_dir` holds the passwords."""
    if auth_dir is None:
        return settings
    user = name.replace("_", "-")
    password = service_passwords(auth_dir)[user]
    return settings.model_copy(update={"nats_user": user, "nats_password": SecretStr(password)})


async def run_plane(services: dict[str, tuple[ServiceMain, Settings]], stop: asyncio.Event | None = None) -> int:
    """Run every service (name: its main and settings) until `stop` is set (0), by a signal or the
    caller, or until one of them ends or fails (1); in both cases every service is stopped first."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: dict[asyncio.Task[None], str] = {}
    for name, (main, settings) in services.items():
        # Each service's task runs in a context of its own, so that its log lines name it.
        context = contextvars.copy_context()
        context.run(structlog.contextvars.bind_contextvars, service=name)
        tasks[loop.create_task(main(settings, stop), context=context)] = name
    names = list(services)
    log.info("services starting", services=names)
    stopping = loop.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
    asked = stop.is_set()  # services that return once asked to stop, in the same turn, did not fail
    failed = []
    for task in done - {stopping}:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("service failed", failed=tasks[task], exc_info=error)
        if error is not None or task.cancelled() or not asked:
            failed.append(tasks[task])
    if failed:
        log.error("a service ended: stopping the others, for the supervisor to restart them all", failed=failed)
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, BaseException) and tasks[task] not in failed:
            log.error("service failed while stopping", failed=tasks[task], exc_info=result)
    stopping.cancel()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("services stopped", services=names)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("services", nargs="+", help="service modules: services.<name>")
    parser.add_argument("--nats-auth-dir", type=Path, default=None, help="where `berth up` keeps the NATS passwords")
    args = parser.parse_args(argv)
    names = [s.removeprefix("services.") for s in args.services]
    settings = get_settings()
    configure_logging(PLANE, settings.log_level, settings.log_json)
    configure_tracing(PLANE)
    services = {
        name: (importlib.import_module(f"services.{name}.app").main, service_settings(name, settings, args.nats_auth_dir))
        for name in names
    }
    return asyncio.run(run_plane(services))


if __name__ == "__main__":
    sys.exit(main())
