"""The autoscaler's loop: each interval, one HPA decision per autoscaled deployment; a decision is
published (DeploymentScaled, source "autoscaler", with its inputs and conditions) when it changes the
count or says something new (another reason or condition), so the SCALE stream always holds the
newest decision and why."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from libs.autoscaling import hpa
from libs.autoscaling.policy import policy_of
from libs.autoscaling.trace import TracePolicy, explain, trace_of
from libs.events import (
    DeploymentDeleted,
    DeploymentScaled,
    Event,
    ReplicaUsageReported,
    RequestMetricsReported,
    SpecApplied,
)
from libs.logging import get_logger
from services.autoscaler.inputs import View, inputs_of

log = get_logger("autoscaler")

FORGET_UNKNOWN_SECONDS = 600.0  # metrics of a deployment without a spec (deleted) are dropped after this

Publish = Callable[[Event], Awaitable[None]]
Clock = Callable[[], float]


class Decider:
    def __init__(self, publish: Publish, window_seconds: float, clock: Clock = time.time) -> None:
        self._publish = publish
        self._window = window_seconds
        self._clock = clock
        self._views: dict[str, View] = {}

    # -- what the bus says ---------------------------------------------------------------------------

    async def on_event(self, event: Event) -> None:
        if isinstance(event, DeploymentDeleted):
            self._views.pop(event.deployment_id, None)
            return
        if not isinstance(event, SpecApplied | DeploymentScaled | RequestMetricsReported | ReplicaUsageReported):
            return
        view = self._views.setdefault(event.deployment_id, View())
        view.seen_at = self._clock()
        if isinstance(event, SpecApplied):
            if view.applied is None or event.spec_version >= view.applied.spec_version:
                view.applied = event
        elif isinstance(event, DeploymentScaled):
            if event.source == "autoscaler" and (view.decision is None or event.occurred_at >= view.decision.occurred_at):
                view.decision = event
        elif isinstance(event, RequestMetricsReported):
            view.reports.append(event)
        else:
            view.usage = event

    def held(self) -> int:
        return len(self._views)

    # -- deciding ------------------------------------------------------------------------------------

    async def decide_all(self) -> None:
        now = self._clock()
        for deployment_id, view in list(self._views.items()):
            if view.applied is None:
                if now - view.seen_at > FORGET_UNKNOWN_SECONDS:
                    del self._views[deployment_id]
                continue
            try:
                await self.decide(view, now)
            except Exception:  # one deployment's failure must not stop the others
                log.exception("autoscaling decision failed", deployment_id=deployment_id)

    async def decide(self, view: View, now: float) -> hpa.Decision | None:
        applied = view.applied
        assert applied is not None
        policy = policy_of(applied.spec)
        if policy is None or not applied.spec.enabled:
            view.history = hpa.History()  # off: nothing to stabilise against when it is on again
            return None
        inputs = inputs_of(view, policy, now, self._window)
        decision = hpa.decide(inputs)
        said = (applied.spec_version, decision.desired_replicas, decision.reason, decision.able_to_scale,
                decision.scaling_limited, decision.scaling_active)
        if said != view.published or decision.rescale:
            await self._publish_decision(view, applied, inputs, decision)
            view.published = said
        view.history.record(decision, policy.behavior, now)
        return decision

    async def _publish_decision(self, view: View, applied: SpecApplied, inputs: hpa.Inputs,
                                decision: hpa.Decision) -> None:
        scaling = applied.spec.resources.autoscaling
        assert scaling is not None
        trace_policy = TracePolicy(minReplicas=inputs.policy.min_replicas, maxReplicas=inputs.policy.max_replicas,
                                   metrics=scaling.metrics, behavior=scaling.behavior)
        explained = explain(decision)
        trace = trace_of(inputs, trace_policy, deployment=f"{applied.project}/{applied.slug}",
                         decided=decision.desired_replicas)
        event = DeploymentScaled(
            deployment_id=applied.deployment_id, project=applied.project, slug=applied.slug,
            source="autoscaler", replicas=decision.desired_replicas, spec_version=applied.spec_version,
            spec_replicas=applied.spec.resources.replicas, reason=_reason(decision),
            decision=explained, inputs=trace.model_dump(mode="json", exclude={"at"}),
        )
        await self._publish(event)
        view.decision = event
        log.info("scale decided", deployment_id=applied.deployment_id, current=decision.current_replicas,
                 desired=decision.desired_replicas, reason=event.reason)


def _reason(decision: hpa.Decision) -> str:
    """One line: why, and what limited it (the HPA's condition reasons)."""
    parts = [decision.reason]
    if decision.able_to_scale in ("ScaleUpStabilized", "ScaleDownStabilized"):
        parts.append(decision.able_to_scale)
    if decision.limited:
        parts.append(decision.scaling_limited)
    if decision.scaling_active != "ValidMetricFound":
        parts.append(decision.scaling_active)
    return "; ".join(parts)
