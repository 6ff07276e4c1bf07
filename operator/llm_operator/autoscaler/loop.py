"""One autoscaler tick for one LLMDeployment: observe, decide, and say what to write.

Called by the `autoscale` timer in `handlers`, which holds the object's lock, applies the
new replica count through the ordinary reconcile and patches what this returns. The only
I/O here is the Prometheus read through the client it is given (`metrics.observe`); the
decision is `decide.decide`, and the status it produces is data.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_operator.api import conditions as cond
from llm_operator.api.v1alpha1 import Condition, LLMDeployment, LLMDeploymentStatus
from llm_operator.autoscaler import fidelity, metrics
from llm_operator.autoscaler.decide import (
    Decision,
    Policy,
    ReplicaModel,
    ScalerState,
    decide,
)
from llm_operator.planner.cost import cost_per_million_tokens
from llm_operator.reconcile.desired import planned_for
from llm_operator.settings import ANNOTATION_PREFIX

STATE_ANNOTATION = f"{ANNOTATION_PREFIX}/autoscaler-state"
# NOTE: the state changes every tick (its recommendation window slides). Writing it each
# time would cost one API write per object per tick, so an unchanged replica count persists
# it at most this often (or once per scale-down window, whichever is longer). A state that
# is older after a restart only makes decide() hold: its windows are not full yet.
MIN_PERSIST_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Tick:
    """What one tick decided.

    Attributes:
        decision: the autoscaler's decision.
        status: the LLMDeployment status with the decision in it (desiredReplicas,
            observed tokens/s, capacity, $/1M tokens, conditions, lastScalingReason).
        scaled: whether the replica count changes.
        budget_newly_limited: BudgetLimited flipped to True on this tick (worth an event).
        metrics_flipped: MetricsAvailable changed status on this tick (worth one log line
            and one event, not one per tick).
        persist_state: the state annotation to write, or None to leave it.
        diverged: a sentence when the measured latencies or rate newly left the prediction
            tolerance on this tick (worth an event), else None.
    """

    decision: Decision
    status: LLMDeploymentStatus
    scaled: bool
    budget_newly_limited: bool
    metrics_flipped: bool
    persist_state: str | None
    diverged: str | None = None


def active(llmd: LLMDeployment) -> bool:
    """Whether the built-in autoscaler drives this object: scaling is builtin and the
    current spec generation is planned (Planned=True for it). A spec without a feasible
    plan (e.g. a budget below one replica) is left alone: the status already says why."""
    status = llmd.status
    return (
        llmd.spec.scaling.mode == "builtin"
        and status is not None
        and status.plan is not None
        and planned_for(status, llmd.metadata.get("generation"))
    )


def tick(
    client: metrics.QueryClient,
    llmd: LLMDeployment,
    *,
    now: float,
    timeout_s: float,
    last_persisted: float | None,
    observer: metrics.GroupedObserver | None = None,
    tolerance: float = fidelity.DEFAULT_TOLERANCE,
    remembered: str | None = None,
) -> Tick:
    """Observe the load of `llmd`, decide its replicas and build the status to write.

    Args:
        client: the Prometheus client (`metrics.make_client`).
        llmd: the LLMDeployment; `active(llmd)` must hold.
        now: Unix time in seconds.
        timeout_s: seconds allowed per Prometheus query.
        last_persisted: when this process last wrote the state annotation (None: never).
        observer: answers from one grouped query per metric for every LLMDeployment
            (the operator's); None asks Prometheus through `client` for this one only.
        tolerance: |observed / predicted - 1| beyond which predictions diverge.
        remembered: the state this process's previous tick returned
            (`Tick.decision.state.to_json()`), used unless the annotation (persisted less
            often) is newer: after a restart there is none, after a failover it is old.

    Returns:
        The decision and what to write.
    """
    status = llmd.status
    assert status is not None and status.plan is not None, "tick() needs a planned object"
    plan = status.plan
    meta = llmd.metadata
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    tokens_query = llmd.spec.scaling.tokens_per_second_query
    if observer is not None:
        observation = observer.observe(plan.engine, namespace, name, tokens_query)
    else:
        observation = metrics.observe(
            client, plan.engine, namespace, name, timeout_s=timeout_s, tokens_query=tokens_query
        )
    current = status.desired_replicas if status.desired_replicas is not None else 0
    # NOTE: the newer of this process's memory and the annotation: after a failover the
    # annotation written by the other leader is newer than what this one remembers.
    stored = ScalerState.from_json((meta.get("annotations") or {}).get(STATE_ANNOTATION))
    state = max(ScalerState.from_json(remembered), stored, key=lambda s: s.last_seen)
    decision = decide(
        observation,
        now=now,
        current_replicas=current,
        ready_replicas=status.ready_replicas or 0,
        replica=ReplicaModel.from_plan(plan),
        policy=Policy.from_spec(llmd.spec),
        state=state,
    )
    performance = (
        fidelity.compare(plan, observation, status.ready_replicas or 0)
        if decision.metrics_available
        else None
    )
    now_off = fidelity.diverged(performance, tolerance)
    was_off = fidelity.diverged(status.performance, tolerance * fidelity.RECOVERY_SHARE)
    return Tick(
        decision=decision,
        # NOTE: a rate decide() refused (negative, astronomical) is not shown either.
        status=_status(
            llmd,
            status,
            decision,
            observation.output_tokens_per_second if decision.metrics_available else None,
        ).model_copy(update={"performance": performance}),
        diverged=now_off if now_off is not None and was_off is None else None,
        scaled=decision.replicas != current,
        budget_newly_limited=(
            decision.budget_limited and not cond.is_true(status.conditions, cond.BUDGET_LIMITED)
        ),
        metrics_flipped=_metrics_flipped(status, decision.metrics_available),
        persist_state=_persist(decision, current, now, last_persisted, llmd),
    )


def _metrics_flipped(status: LLMDeploymentStatus, available: bool) -> bool:
    before = cond.get_condition(status.conditions, cond.METRICS_AVAILABLE)
    if before is None:
        return not available  # the first tick only reports trouble
    return (before.status == "True") != available


def _status(
    llmd: LLMDeployment,
    status: LLMDeploymentStatus,
    decision: Decision,
    served: float | None,
) -> LLMDeploymentStatus:
    assert status.plan is not None
    generation = llmd.metadata.get("generation")
    conditions: list[Condition] = list(status.conditions)
    if decision.metrics_available:
        conditions = cond.set_condition(
            conditions, cond.METRICS_AVAILABLE, "True", "Observed", "engine metrics read",
            generation,
        )  # fmt: skip
    else:
        conditions = cond.set_condition(
            conditions, cond.METRICS_AVAILABLE, "False", "NoMetrics", decision.message,
            generation,
        )  # fmt: skip
    if decision.budget_limited:
        conditions = cond.set_condition(
            conditions, cond.BUDGET_LIMITED, "True", "BudgetLimited", decision.message, generation
        )
    else:
        conditions = cond.set_condition(
            conditions, cond.BUDGET_LIMITED, "False", "WithinBudget", "", generation
        )
    # NOTE: without data the observed rate is cleared, not kept: a stale figure in the
    # TOK/S column would look current (MetricsAvailable says why it is empty).
    observed = round(served, 1) if served is not None else None
    served_cost = status.plan.cost_per_hour * (status.replicas or 0)
    per_million = (
        round(cost_per_million_tokens(served_cost, observed), 4)
        if observed is not None and observed > 0
        else None
    )
    return status.model_copy(
        update={
            "conditions": conditions,
            "desired_replicas": decision.replicas,
            "observed_tokens_per_second": observed,
            "capacity_tokens_per_second": round(decision.capacity_tokens_per_second, 1),
            "cost_per_million_tokens": per_million,
            "last_scaling_reason": f"{decision.reason}: {decision.message}",
        }
    ).with_shown_rate()


def _persist(
    decision: Decision,
    current: int,
    now: float,
    last_persisted: float | None,
    llmd: LLMDeployment,
) -> str | None:
    text = decision.state.to_json()
    stored = (llmd.metadata.get("annotations") or {}).get(STATE_ANNOTATION)
    if text == stored:
        return None
    every = max(MIN_PERSIST_INTERVAL_S, float(llmd.spec.scaling.scale_down_stabilization_seconds))
    if decision.replicas != current or last_persisted is None or now - last_persisted >= every:
        return text
    return None
