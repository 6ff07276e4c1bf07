"""One autoscaler tick (`autoscaler.loop`): status, conditions and state persistence."""

from __future__ import annotations

from typing import Any

from llm_operator.api import conditions as cond
from llm_operator.api.v1alpha1 import LLMDeployment
from llm_operator.autoscaler import loop
from llm_operator.autoscaler.decide import ScalerState
from llm_operator.catalog import Catalog
from llm_operator.planner.search import plan
from tests.conftest import make_spec
from tests.fakes import FakePrometheus, vector

NOW = 1_800_000_000.0


def planned(catalog: Catalog, running: int = 2, **spec: Any) -> LLMDeployment:
    """A planned LLMDeployment whose status says `running` replicas exist and are ready."""
    s = make_spec(hardware={"gpuTypes": ["H100"]}, **spec)
    result = plan(s, catalog)
    assert result.chosen is not None
    return LLMDeployment.model_validate(
        {
            "metadata": {"name": "chat", "namespace": "ns", "generation": 1},
            "spec": s.model_dump(by_alias=True, exclude_none=True),
            "status": {
                "observedGeneration": 1,
                "conditions": [
                    {
                        "type": "Planned",
                        "status": "True",
                        "reason": "Planned",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                        "observedGeneration": 1,
                    }
                ],
                "plan": result.chosen.to_status().model_dump(by_alias=True),
                "replicas": running,
                "readyReplicas": running,
                "desiredReplicas": running,
            },
        }
    )


def per_replica(llmd: LLMDeployment) -> float:
    assert llmd.status is not None and llmd.status.plan is not None
    return llmd.status.plan.output_tokens_per_second


def condition(t: loop.Tick, type_: str) -> tuple[str, str]:
    c = cond.get_condition(t.status.conditions, type_)
    assert c is not None, type_
    return c.status, c.reason


def test_active_only_for_a_current_plan_with_the_builtin_scaler(catalog: Catalog) -> None:
    llmd = planned(catalog)
    assert loop.active(llmd)
    external = planned(catalog, replicas=2, scaling={"mode": "external"})
    assert not loop.active(external)
    stale = llmd.model_copy(update={"metadata": {**llmd.metadata, "generation": 2}})
    assert not loop.active(stale)  # the spec changed: the reconcile re-plans first
    # The current generation has no feasible plan (e.g. a budget below one replica): the
    # previous plan stays in status, but the autoscaler leaves the object alone.
    assert llmd.status is not None
    refused = llmd.model_copy(
        update={
            "status": llmd.status.model_copy(
                update={
                    "conditions": cond.set_condition(
                        llmd.status.conditions, cond.PLANNED, "False", "NoFeasiblePlan", "x", 1
                    )
                }
            )
        }
    )
    assert not loop.active(refused)


def test_missing_metrics_hold_replicas_and_flip_metrics_available(catalog: Catalog) -> None:
    llmd = planned(catalog, running=3)
    t = loop.tick(FakePrometheus({}), llmd, now=NOW, timeout_s=1, last_persisted=None)
    assert t.decision.replicas == 3 and not t.scaled
    assert condition(t, cond.METRICS_AVAILABLE) == ("False", "NoMetrics")
    assert t.status.desired_replicas == 3


def test_observed_rate_capacity_and_cost_per_token_reach_status(catalog: Catalog) -> None:
    llmd = planned(catalog, running=2)
    served = per_replica(llmd) * 1.2  # two replicas at 60%
    fake = FakePrometheus({"generation_tokens": vector(served)}, default=vector(0))
    t = loop.tick(fake, llmd, now=NOW, timeout_s=1, last_persisted=None)
    assert condition(t, cond.METRICS_AVAILABLE) == ("True", "Observed")
    assert t.status.observed_tokens_per_second == round(served, 1)
    assert t.status.capacity_tokens_per_second is not None
    assert t.status.capacity_tokens_per_second > 0
    assert llmd.status is not None and llmd.status.plan is not None
    dollars = llmd.status.plan.cost_per_hour * 2
    assert t.status.cost_per_million_tokens is not None
    assert abs(t.status.cost_per_million_tokens - dollars * 1e6 / (served * 3600)) < 1e-3
    assert t.status.last_scaling_reason and t.decision.reason in t.status.last_scaling_reason


def test_demand_beyond_the_budget_sets_budget_limited_once(catalog: Catalog) -> None:
    base = planned(catalog, running=1)
    assert base.status is not None and base.status.plan is not None
    budget = base.status.plan.cost_per_hour * 2.5  # affords 2 replicas
    llmd = planned(
        catalog,
        replicas=2,
        budget={"maxCostPerHour": budget},
        scaling={"maxReplicas": 10, "scaleUpStabilizationSeconds": 0},
    )
    fake = FakePrometheus(
        {"generation_tokens": vector(per_replica(llmd) * 2), "waiting": vector(500)},
        default=vector(10),
    )
    first = loop.tick(fake, llmd, now=NOW, timeout_s=1, last_persisted=None)
    assert first.decision.replicas == 2
    assert condition(first, cond.BUDGET_LIMITED) == ("True", "BudgetLimited")
    assert first.budget_newly_limited
    again = llmd.model_copy(update={"status": first.status})
    second = loop.tick(fake, again, now=NOW + 15, timeout_s=1, last_persisted=NOW)
    assert condition(second, cond.BUDGET_LIMITED) == ("True", "BudgetLimited")
    assert not second.budget_newly_limited  # an event once, not every tick


def test_state_is_persisted_on_change_of_replicas_else_at_most_once_a_window(
    catalog: Catalog,
) -> None:
    llmd = planned(catalog, running=2, scaling={"scaleDownStabilizationSeconds": 120})
    steady = FakePrometheus({"generation_tokens": vector(per_replica(llmd))}, default=vector(0))
    first = loop.tick(steady, llmd, now=NOW, timeout_s=1, last_persisted=None)
    assert first.persist_state is not None  # nothing persisted by this process yet
    assert ScalerState.from_json(first.persist_state) == first.decision.state
    annotated = LLMDeployment.model_validate(
        {
            **llmd.model_dump(by_alias=True, exclude_none=True),
            "metadata": {
                **llmd.metadata,
                "annotations": {loop.STATE_ANNOTATION: first.persist_state},
            },
        }
    )
    soon = loop.tick(steady, annotated, now=NOW + 15, timeout_s=1, last_persisted=NOW)
    assert not soon.scaled and soon.persist_state is None
    later = loop.tick(steady, annotated, now=NOW + 121, timeout_s=1, last_persisted=NOW)
    assert later.persist_state is not None


def test_an_outage_clears_the_observed_rate_and_flips_once(catalog: Catalog) -> None:
    llmd = planned(catalog, running=2)
    fake = FakePrometheus({"generation_tokens": vector(300)}, default=vector(0))
    seen = loop.tick(fake, llmd, now=NOW, timeout_s=1, last_persisted=None)
    assert seen.status.observed_tokens_per_second == 300 and not seen.metrics_flipped
    llmd = llmd.model_copy(update={"status": seen.status})
    down = loop.tick(FakePrometheus({}), llmd, now=NOW + 15, timeout_s=1, last_persisted=None)
    assert down.status.observed_tokens_per_second is None  # no stale figure in TOK/S
    assert down.metrics_flipped  # one log line and one event at the transition
    llmd = llmd.model_copy(update={"status": down.status})
    still = loop.tick(FakePrometheus({}), llmd, now=NOW + 30, timeout_s=1, last_persisted=None)
    assert not still.metrics_flipped and still.decision.replicas == 2


def _annotated(llmd: LLMDeployment, state: ScalerState) -> LLMDeployment:
    return LLMDeployment.model_validate(
        {
            **llmd.model_dump(by_alias=True, exclude_none=True),
            "metadata": {**llmd.metadata, "annotations": {loop.STATE_ANNOTATION: state.to_json()}},
        }
    )


def test_the_newer_of_memory_and_annotation_is_the_state(catalog: Catalog) -> None:
    llmd = planned(catalog, running=2)
    steady = FakePrometheus({"generation_tokens": vector(per_replica(llmd))}, default=vector(0))
    # Watching for 15 minutes up to the last tick, 15 s ago ...
    fresh = ScalerState(recommendations=((NOW - 15, 2),), observed_since=NOW - 900)
    # ... and a state last seen 10 minutes ago (another leader's, or this one's before a
    # failover): its windows no longer count.
    stale = ScalerState(recommendations=((NOW - 600, 2),), observed_since=NOW - 5000)

    def since(memory: ScalerState | None, annotation: ScalerState) -> float | None:
        tick = loop.tick(
            steady,
            _annotated(llmd, annotation),
            now=NOW,
            timeout_s=1,
            last_persisted=None,
            remembered=None if memory is None else memory.to_json(),
        )
        return tick.decision.state.observed_since

    assert since(stale, fresh) == NOW - 900  # after a failover: the annotation
    assert since(fresh, stale) == NOW - 900  # between persists: this process's memory
    assert since(None, fresh) == NOW - 900  # after a restart: the annotation
    assert since(stale, stale) == NOW  # nobody watched lately: the windows start again
