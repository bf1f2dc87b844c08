"""The service kit: the one way a berth service is wired (as kopf owns decoding, retries and timers so
that handlers stay small).

    service = Service("scheduler", settings)
    js = await service.connect()                       # connect, ensure every stream
    service.subscribe(SPEC_EVENTS, stream=SPECS, durable=..., events=(SpecApplied,), handler=on_spec)
    service.every(30.0, reconciler.reconcile_all)       # a periodic resync
    service.on_stop(reconciler.shutdown)                # released in reverse order, each bounded
    await service.start(ops_port=8091)                  # subscribers, timers, /healthz and /metrics
    ...
    await service.stop()

`subscribe` decodes each message once into the event types the handler takes (other kinds of the
same subject are acknowledged and skipped), acknowledges after the handler returns, and on an error
redelivers with a growing delay; a message that still fails after `RetryPolicy.max_deliveries`, or
cannot be decoded at all, is set aside on the dead-letter stream (`berth.dead.v1.<service>.<durable>`,
with the reason in a header) instead of being redelivered for ever.

`watch_latest` is for state that is replaced, not accumulated (the router's traffic assignments): an
ordered consumer that delivers the newest message of every subject, then every new one, in stream
order; a consumer lost with the connection is recreated where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client import Counter
from pydantic import ValidationError

from libs.bus import DEAD, DEAD_LETTERS, ensure_streams, make_broker, publish
from libs.config import Settings
from libs.events import Event, decode_event
from libs.logging import get_logger
from libs.tasks import cancel_and_wait
from libs.telemetry import serve_ops

E = TypeVar("E", bound=Event)
Handler = Callable[[E], Awaitable[None]]
Job = Callable[[], Awaitable[Any]]

STOP_STEP_TIMEOUT_SECONDS = 10.0
DEAD_REASON_HEADER = "Berth-Dead-Reason"
DEAD_SUBJECT_HEADER = "Berth-Original-Subject"

MESSAGES = Counter(
    "berth_messages_total",
    "Bus messages handled by a service's consumers, by outcome (handled, skipped, retried, dead).",
    ["service", "consumer", "outcome"],
)

log = get_logger("berth.kit")


@dataclass(frozen=True)
class RetryPolicy:
    """Redelivery of a message whose handler failed: delays grow by `factor` up to `max_delay_seconds`;
    after `max_deliveries` attempts the message goes to the dead-letter stream."""

    max_deliveries: int = 8
    first_delay_seconds: float = 0.25
    factor: float = 2.0
    max_delay_seconds: float = 30.0

    def delay(self, delivery: int) -> float:
        """Seconds before redelivering a message that failed on its `delivery`-th attempt (1-based)."""
        return min(self.first_delay_seconds * self.factor ** max(0, delivery - 1), self.max_delay_seconds)


DEFAULT_RETRY = RetryPolicy()


class Service:
    """One service's bus connection, consumers, periodic jobs, ops endpoint and bounded stop."""

    def __init__(self, name: str, settings: Settings, **broker_options: Any) -> None:
        self.name = name
        self.settings = settings
        self.broker: NatsBroker = make_broker(
            settings.resolved_nats_url, name, settings.nats_security(), **broker_options
        )
        self.js: JetStreamContext | None = None
        self.ops_port: int | None = None
        self._jobs: list[tuple[float, Job, str, bool]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._watches: list[Any] = []
        self._cleanups: list[Callable[[], Awaitable[Any]]] = []
        self._ops: web.AppRunner | None = None

    @property
    def connected(self) -> bool:
        return self.broker.config.connection_state.connection.is_connected  # type: ignore[no-any-return]

    async def connect(self) -> JetStreamContext:
        """Connect to NATS and create or update every stream; returns the JetStream context."""
        connection = await self.broker.connect()
        self.js = connection.jetstream()
        await ensure_streams(self.js)
        return self.js

    async def publish(self, event: Event) -> None:
        await publish(self.broker, event)

    def subscribe(
        self,
        subject: str,
        *,
        stream: JStream,
        durable: str,
        events: tuple[type[E], ...],
        handler: Handler[E],
        deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
        pull: bool = False,
        max_workers: int = 1,
        inactive_threshold_seconds: float | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        """A durable consumer of `subject` whose messages of the types `events` go to `handler`.

        `deliver_policy` applies when the consumer is first created (later it resumes where it was).
        Push delivery (the default) is the fastest; `pull` lets several instances share the work.
        `inactive_threshold_seconds` makes JetStream remove the consumer once nobody pulls from it
        for that long (a consumer per instance)."""
        dead_subject = DEAD_LETTERS.format(service=self.name, durable=durable)

        async def consume(body: Any, message: NatsMessage) -> None:
            raw = message.raw_message
            try:
                event = decode_event(raw.data)
            except (KeyError, ValueError, TypeError, ValidationError) as exc:
                await self._dead_letter(message, dead_subject, f"undecodable: {type(exc).__name__}")
                MESSAGES.labels(self.name, durable, "dead").inc()
                return
            if not isinstance(event, events):
                await message.ack()
                MESSAGES.labels(self.name, durable, "skipped").inc()
                return
            try:
                await handler(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(message, dead_subject, durable, retry, exc)
                return
            await message.ack()
            MESSAGES.labels(self.name, durable, "handled").inc()

        config = ConsumerConfig(inactive_threshold=inactive_threshold_seconds) if inactive_threshold_seconds else None
        options: dict[str, Any] = {"max_workers": max_workers} if max_workers > 1 else {}
        self.broker.subscriber(
            subject,
            stream=stream,
            durable=durable,
            deliver_policy=deliver_policy,
            ack_policy=AckPolicy.MANUAL,
            pull_sub=PullSub(batch_size=16, timeout=5.0) if pull else False,
            config=config,
            **options,
        )(consume)

    async def watch_latest(self, subject: str, handler: Callable[[Event], Awaitable[None]]) -> None:
        """Deliver the newest event of every subject matching `subject`, then each new one, in stream
        order (an ordered consumer, as a KV watch is). Undecodable messages are logged and skipped."""
        assert self.js is not None, "connect() first"

        async def deliver(message: Any) -> None:
            try:
                event = decode_event(message.data)
            except (KeyError, ValueError, TypeError, ValidationError):
                log.warning("undecodable message skipped", subject=message.subject)
                MESSAGES.labels(self.name, "watch", "dead").inc()
                return
            try:
                await handler(event)
            except Exception:  # the next message or the periodic resync carries the state again
                log.exception("watch handler failed", subject=message.subject)
                MESSAGES.labels(self.name, "watch", "retried").inc()
                return
            MESSAGES.labels(self.name, "watch", "handled").inc()

        watch = await self.js.subscribe(
            subject, cb=deliver, ordered_consumer=True, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT
        )
        _answer_flow_control_on_demand(watch)
        self._watches.append(watch)

    def every(self, seconds: float, job: Job, name: str | None = None, at_start: bool = False) -> None:
        """Run `job` every `seconds` once the service has started (the periodic resync), and at once
        when `at_start`; a failure is logged and the job runs again at the next interval."""
        self._jobs.append((seconds, job, name or getattr(job, "__name__", "job"), at_start))

    def on_stop(self, callback: Callable[[], Awaitable[Any]]) -> None:
        """Release something at stop; callbacks run in reverse order of registration, each bounded."""
        self._cleanups.append(callback)

    async def start(self, ops_port: int | None = None, is_healthy: Callable[[], bool] | None = None) -> None:
        """Start the consumers and periodic jobs, and serve /healthz and /metrics on `ops_port`
        (0 picks a free one, None serves none)."""
        await self.broker.start()
        for seconds, job, name, at_start in self._jobs:
            task = asyncio.create_task(_every(seconds, job, name, at_start), name=f"{self.name}:{name}")
            self._tasks.append(task)
        if ops_port is not None:
            healthy = is_healthy or (lambda: True)
            self._ops = await serve_ops(self.settings.ops_host, ops_port, lambda: self.connected and healthy())
            self.ops_port = self._ops.addresses[0][1]

    async def stop_consuming(self) -> None:
        """Take no new messages (the connection stays up, to publish what the stop itself says)."""
        await cancel_and_wait(self._tasks)
        for watch in self._watches:
            with contextlib.suppress(Exception):
                await watch.unsubscribe()
        self._watches.clear()
        for subscriber in self.broker.subscribers:
            await subscriber.stop()

    async def stop(self) -> None:
        """Stop consuming, release what `on_stop` registered, close the bus and the ops endpoint.
        Every step is bounded, so a stuck dependency cannot keep the process alive."""
        await self.stop_consuming()
        for callback in reversed(self._cleanups):
            await _bounded(callback, "stop callback")
        self._cleanups.clear()
        await _bounded(self.broker.stop, "broker stop")
        if self._ops is not None:
            await _bounded(self._ops.cleanup, "ops endpoint stop")
            self._ops = None

    async def _failed(
        self, message: NatsMessage, dead_subject: str, durable: str, retry: RetryPolicy, exc: Exception
    ) -> None:
        delivery = message.raw_message.metadata.num_delivered
        reason = f"{type(exc).__name__} after {delivery} deliveries"
        if delivery >= retry.max_deliveries:
            log.error("message set aside as dead letter", consumer=durable, reason=reason, exc_info=exc)
            await self._dead_letter(message, dead_subject, reason)
            MESSAGES.labels(self.name, durable, "dead").inc()
            return
        delay = retry.delay(delivery)
        log.warning("handler failed; redelivering", consumer=durable, delivery=delivery, delay=delay, exc_info=exc)
        await message.nack(delay=delay)
        MESSAGES.labels(self.name, durable, "retried").inc()

    async def _dead_letter(self, message: NatsMessage, dead_subject: str, reason: str) -> None:
        raw = message.raw_message
        sequence = raw.metadata.sequence.stream
        await self.broker.publish(
            raw.data,
            subject=dead_subject,
            headers={
                DEAD_REASON_HEADER: reason,
                DEAD_SUBJECT_HEADER: raw.subject,
                "Nats-Msg-Id": f"dead-{raw.metadata.stream}-{sequence}",
            },
            stream=DEAD.name,
        )
        await message.reject()  # terminated: JetStream will not redeliver it


def _answer_flow_control_on_demand(watch: JetStreamContext.PushSubscription) -> None:
    """Replace nats-py's flow-control task of an ordered consumer by one that sleeps until the server
    asks for flow control. nats-py's wakes every 0.25 s for the life of the subscription, to see whether
    a flow-control reply is due: with a dozen watches, 48 wakeups a second, the largest part of an idle
    control plane's CPU (docs/benchmarks.md). For a subscription with a callback (every watch) nats-py
    answers a request as it arrives, so that task has nothing to send in practice; a reply it does
    schedule is sent here as nats-py sends it. Should another nats-py lack what this relies on, its own
    task is left as it is."""
    jsi = getattr(watch._sub, "_jsi", None)
    library_task = getattr(jsi, "_fctask", None)
    if library_task is None or not all(hasattr(jsi, a) for a in ("_fcr", "_fcd", "_fciseq", "_psub", "_conn")):
        return
    asked = asyncio.Event()
    schedule = jsi.schedule_flow_control_response

    def schedule_and_wake(reply: str) -> None:
        schedule(reply)
        asked.set()

    jsi.schedule_flow_control_response = schedule_and_wake
    library_task.cancel()
    # Kept where nats-py keeps its own, so that unsubscribing cancels it.
    jsi._fctask = asyncio.create_task(_flow_control_replies(jsi, asked), name="watch flow control")


FLOW_CONTROL_CHECK_SECONDS = 0.25  # nats-py's period, while a reply waits for earlier messages


async def _flow_control_replies(jsi: Any, asked: asyncio.Event) -> None:
    """nats-py's check (JetStreamContext._JSI.check_flow_control_response), run only while a reply is
    due: once the messages the server sent before its request have left the pending queue."""
    while not jsi._conn.is_closed:
        await asked.wait()
        asked.clear()
        while jsi._fcr is not None and not jsi._conn.is_closed:
            if jsi._fciseq - jsi._psub._pending_queue.qsize() >= jsi._fcd:
                with contextlib.suppress(Exception):  # as nats-py: a lost reply is asked for again
                    await jsi._conn.publish(jsi._fcr)
                jsi._fcr, jsi._fcd = None, 0
            else:
                await asyncio.sleep(FLOW_CONTROL_CHECK_SECONDS)


async def _every(seconds: float, job: Job, name: str, at_start: bool) -> None:
    if not at_start:
        await asyncio.sleep(seconds)
    while True:
        try:
            await job()
        except Exception:  # the bus being away must not end the loop
            log.warning("periodic job failed; runs again at the next interval", job=name, exc_info=True)
        await asyncio.sleep(seconds)


async def _bounded(step: Callable[[], Awaitable[Any]], what: str) -> None:
    try:
        async with asyncio.timeout(STOP_STEP_TIMEOUT_SECONDS):
            await step()
    except TimeoutError:
        log.error("stop step did not finish in time; going on", step=what)
    except Exception:
        log.exception("stop step failed; going on", step=what)
