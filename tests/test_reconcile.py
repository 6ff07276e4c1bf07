"""The reconcile decision (pure): plan, children, conditions, events, diff and prune."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import yaml

from llm_operator.api.v1alpha1 import LLMDeployment, ModelCacheSpec
from llm_operator.catalog import Catalog
from llm_operator.planner.search import plan
from llm_operator.reconcile import diff
from llm_operator.reconcile.apply import missing_secret
from llm_operator.reconcile.desired import (
    ChildState,
    DownloadState,
    WorkloadState,
    desired_state,
)
from tests.conftest import EXAMPLES

NOW = "2026-11-25T00:00:00Z"
LATER = "2026-11-25T01:00:00Z"


def example(stem: str, generation: int = 1, status: dict[str, Any] | None = None) -> LLMDeployment:
    path = next(p for p in EXAMPLES if stem in p.name)
    doc = yaml.safe_load(path.read_text())
    doc["metadata"].update(namespace="team-a", generation=generation, uid="uid-1")
    if status is not None:
        doc["status"] = status
    return LLMDeployment.model_validate(doc)


def cond(d: Any, type_: str) -> Any:
    return next(c for c in d.status.conditions if c.type == type_)


def deployed(replicas: int, ready: int, name: str = "llama-3-1-8b") -> ChildState:
    """The example's Deployment, with `replicas` pods of which `ready` are ready."""
    return ChildState(
        workloads=(
            WorkloadState(
                "Deployment",
                name,
                replicas=replicas,
                ready_replicas=ready,
                updated_replicas=replicas,
            ),
        )
    )


def test_new_object_is_planned_and_rendered(catalog: Catalog) -> None:
    d = desired_state(example("8b-a10g"), catalog, None, ChildState(), now=NOW)
    assert d.prune
    kinds = {o["kind"] for o in d.objects}
    assert "Deployment" in kinds and "Service" in kinds
    assert d.status.plan is not None and d.status.plan.gpu == "A10G-24GB"
    assert cond(d, "Planned").status == "True"
    assert cond(d, "Ready").status == "False"
    assert cond(d, "Progressing").reason == "Creating"
    assert [e.reason for e in d.events] == ["Planned"]
    assert d.status.observed_generation == 1


def test_unchanged_spec_keeps_plan_and_conditions(catalog: Catalog) -> None:
    first = desired_state(example("8b-a10g"), catalog, None, ChildState(), now=NOW)
    status = first.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    again = desired_state(example("8b-a10g", status=status), catalog, None, ChildState(), now=LATER)
    assert again.status == first.status
    assert again.events == []
    assert again.objects == first.objects


def test_ready_flips_transition_time_only_on_change(catalog: Catalog) -> None:
    first = desired_state(example("8b-a10g"), catalog, None, ChildState(), now=NOW)
    status = first.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    running = deployed(replicas=1, ready=1)
    ready = desired_state(example("8b-a10g", status=status), catalog, None, running, now=LATER)
    assert cond(ready, "Ready").status == "True"
    assert cond(ready, "Ready").last_transition_time == LATER
    assert cond(ready, "Planned").last_transition_time == NOW


def test_tok_s_shows_the_planned_rate_until_one_is_observed(catalog: Catalog) -> None:
    first = desired_state(example("8b-a10g"), catalog, None, ChildState(), now=NOW)
    assert first.status.tokens_per_second is None  # nothing ready, nothing observed
    status = first.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    two = desired_state(example("8b-a10g", status=status), catalog, None, deployed(2, 2), now=LATER)
    plan = two.status.plan
    assert plan is not None and two.status.tokens_per_second_source == "planned"
    assert two.status.tokens_per_second == pytest.approx(2 * plan.output_tokens_per_second, abs=0.1)
    assert two.status.cost_per_hour == round(2 * plan.cost_per_hour, 2)
    observed = {**status, "observedTokensPerSecond": 12.5}
    seen = desired_state(example("8b-a10g", status=observed), catalog, None, deployed(2, 2))
    assert (seen.status.tokens_per_second, seen.status.tokens_per_second_source) == (
        12.5,
        "observed",
    )


def test_a_failing_engine_is_degraded_once_then_recovers(catalog: Catalog) -> None:
    first = desired_state(example("8b-a10g"), catalog, None, ChildState(), now=NOW)
    status = first.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    crash = "pod p: container engine stopped (Error, exit code 137) and was restarted 1 time(s)"
    failing = replace(deployed(1, 0), failing=crash)
    down = desired_state(example("8b-a10g", status=status), catalog, None, failing, now=LATER)
    assert (cond(down, "Degraded").status, cond(down, "Degraded").reason) == (
        "True",
        "EngineFailing",
    )
    assert cond(down, "Degraded").message == crash
    assert [e.reason for e in down.events if e.type == "Warning"] == ["EngineFailing"]
    status = down.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    again = desired_state(example("8b-a10g", status=status), catalog, None, failing, now=LATER)
    assert [e for e in again.events if e.reason == "EngineFailing"] == []  # reported once
    status = again.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    back = desired_state(example("8b-a10g", status=status), catalog, None, deployed(1, 1))
    assert cond(back, "Degraded").status == "False" and cond(back, "Ready").status == "True"


def test_spec_change_replans_with_an_event(catalog: Catalog) -> None:
    first = desired_state(example("8b-a10g"), catalog, None, ChildState(), now=NOW)
    status = first.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    changed = example("8b-a10g", generation=2, status=status)
    changed = changed.model_copy(
        update={"spec": changed.spec.model_copy(update={"quantization": "fp8"})}
    )
    d = desired_state(changed, catalog, None, deployed(replicas=0, ready=0), now=LATER)
    assert d.status.plan is not None and d.status.plan.quantization == "fp8"
    assert [e.reason for e in d.events] == ["Replanned"]


def test_no_feasible_plan_creates_nothing_and_says_why(catalog: Catalog) -> None:
    llmd = example("8b-a10g")
    llmd = llmd.model_copy(
        update={
            "spec": llmd.spec.model_copy(
                update={
                    "model": llmd.spec.model.model_copy(update={"name": "llama-3.1-405b"}),
                    "quantization": "fp16",
                }
            )
        }
    )
    d = desired_state(llmd, catalog, None, ChildState(), now=NOW)
    assert d.objects == [] and not d.prune
    ready = cond(d, "Ready")
    assert (ready.status, ready.reason) == ("False", "NoFeasiblePlan")
    assert "usable" in ready.message
    assert [e.type for e in d.events] == ["Warning"]


def test_cluster_without_the_gpu_type_is_infeasible(catalog: Catalog) -> None:
    d = desired_state(example("8b-a10g"), catalog, {"H100-SXM-80GB": 8}, ChildState())
    planned = cond(d, "Planned")
    assert planned.reason == "NoFeasiblePlan"
    # Names what was asked, what the cluster has, and the fix.
    assert "asks for A10G" in planned.message and "H100-SXM-80GB" in planned.message
    assert "provisionableGpuTypes" in planned.message


def test_infeasible_change_stays_unplanned_on_later_passes(catalog: Catalog) -> None:
    first = desired_state(example("8b-a10g"), catalog, None, ChildState(), now=NOW)
    n = first.status.desired_replicas
    assert n is not None
    serving = deployed(replicas=n, ready=n)
    status = first.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    ready = desired_state(example("8b-a10g", status=status), catalog, None, serving, now=NOW)
    status = ready.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    changed = example("8b-a10g", generation=2, status=status)
    huge = changed.spec.context.model_copy(update={"max_model_len": 10_000_000})
    changed = changed.model_copy(update={"spec": changed.spec.model_copy(update={"context": huge})})
    for _ in range(3):  # the first pass, then the passes after it (drift timer, child events)
        d = desired_state(changed, catalog, None, serving, now=LATER)
        assert (cond(d, "Planned").status, cond(d, "Planned").reason) == (
            "False",
            "NoFeasiblePlan",
        )
        ready_cond = cond(d, "Ready")
        assert (ready_cond.status, ready_cond.reason) == ("False", "NoFeasiblePlan")
        assert f"previous plan keeps running ({n}/{n}" in ready_cond.message
        assert d.objects == [] and not d.prune  # the old workload is left serving
        assert d.status.observed_generation == 2
        status = d.status.model_dump(by_alias=True, exclude_none=True, mode="json")
        changed = example("8b-a10g", generation=2, status=status).model_copy(
            update={"spec": changed.spec}
        )


def test_diff_ignores_server_defaults_and_detects_edits() -> None:
    want = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "engine", "image": "a:1", "resources": {"limits": {"nvidia.com/gpu": 1}}}
            ]}}}}  # fmt: skip
    live = yaml.safe_load(yaml.safe_dump(want))
    live["metadata"]["resourceVersion"] = "7"
    live["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1"
    live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    assert diff.to_apply([want], {diff.key(live): live}) == []
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    assert diff.to_apply([want], {diff.key(live): live}) == [want]
    assert diff.to_apply([want], {}) == [want]


def test_prune_only_owned_children_not_rendered() -> None:
    owned = {"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": "old", "ownerReferences": [{"uid": "uid-1"}]}}  # fmt: skip
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "theirs"}}
    live = {diff.key(o): o for o in (owned, foreign)}
    assert diff.to_prune([], live, "uid-1") == [owned]


def _settled(catalog: Catalog, desired_replicas: int) -> dict[str, Any]:
    """The status of the 8B example after planning, with the autoscaler's replica count."""
    first = desired_state(example("8b-a10g"), catalog, None, ChildState(), now=NOW)
    status = first.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return {**status, "desiredReplicas": desired_replicas}


def test_spec_change_that_keeps_the_plan_is_not_a_replan(catalog: Catalog) -> None:
    """An HPA writing spec.replicas, or new scaling bounds, bump the generation only."""
    llmd = example("8b-a10g", generation=2, status=_settled(catalog, 3))
    d = desired_state(llmd, catalog, None, ChildState(), now=LATER)
    assert [e.reason for e in d.events] == []
    assert d.status.desired_replicas == 3  # where the autoscaler put it, not the plan's
    assert d.status.observed_generation == 2


def test_kept_replicas_follow_new_bounds(catalog: Catalog) -> None:
    llmd = example("8b-a10g", generation=2, status=_settled(catalog, 1))
    raised = llmd.model_copy(
        update={
            "spec": llmd.spec.model_copy(
                update={"scaling": llmd.spec.scaling.model_copy(update={"min_replicas": 2})}
            )
        }
    )
    d = desired_state(raised, catalog, None, ChildState(), now=LATER)
    assert d.status.desired_replicas == 2  # kept 1, raised to the new floor (not re-planned)
    workload = next(o for o in d.objects if o["kind"] == "Deployment")
    assert workload["spec"]["replicas"] == 2


def test_external_scaling_takes_spec_replicas(catalog: Catalog) -> None:
    llmd = example("8b-a10g", generation=2, status=_settled(catalog, 1))
    external = llmd.model_copy(
        update={
            "spec": llmd.spec.model_copy(
                update={
                    "replicas": 3,
                    "scaling": llmd.spec.scaling.model_copy(update={"mode": "external"}),
                }
            )
        }
    )
    d = desired_state(external, catalog, None, ChildState(), now=LATER)
    assert d.status.desired_replicas == 3
    assert next(o for o in d.objects if o["kind"] == "Deployment")["spec"]["replicas"] == 3


def test_unschedulable_pods_degrade_with_one_warning(catalog: Catalog) -> None:
    first = desired_state(example("8b-a10g"), catalog, None, ChildState(), now=NOW)
    status = first.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    stuck = replace(
        deployed(replicas=3, ready=2),
        unschedulable="pod x: 0/14 nodes are available: 4 Insufficient nvidia.com/gpu.",
    )
    d = desired_state(example("8b-a10g", status=status), catalog, None, stuck, now=LATER)
    assert (cond(d, "Degraded").status, cond(d, "Degraded").reason) == ("True", "Unschedulable")
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "Unschedulable")]
    again_status = d.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    again = desired_state(example("8b-a10g", status=again_status), catalog, None, stuck, now=LATER)
    assert again.events == []  # once per episode, not every pass


class _Secrets:
    """Stands in for Kube.secret_keys: namespace/name -> key names."""

    def __init__(self, secrets: dict[str, frozenset[str]]) -> None:
        self.secrets = secrets

    def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        return self.secrets.get(f"{namespace}/{name}")


def _owner(**secret: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "m", "namespace": "team"},
        "spec": {"model": {"name": "x", "hfTokenSecret": secret}},
    }


def test_missing_secret_or_key_is_named_with_the_fix() -> None:
    absent = missing_secret(_Secrets({}), _owner(name="hf-token"))  # type: ignore[arg-type]
    assert absent is not None and "Secret team/hf-token does not exist" in absent
    assert "kubectl -n team create secret generic hf-token --from-literal=token=" in absent
    wrong = missing_secret(
        _Secrets({"team/hf-token": frozenset({"HF_TOKEN"})}),  # type: ignore[arg-type]
        _owner(name="hf-token"),
    )
    assert wrong is not None and "has no key 'token' (it has HF_TOKEN)" in wrong
    ok = _Secrets({"team/hf-token": frozenset({"token"})})
    assert missing_secret(ok, _owner(name="hf-token")) is None  # type: ignore[arg-type]


def test_missing_secret_is_not_ready_and_degraded_once(catalog: Catalog) -> None:
    running = replace(deployed(replicas=2, ready=2), missing_secret="no")
    first = desired_state(example("8b-a10g"), catalog, None, running, now=NOW)
    assert (cond(first, "Ready").status, cond(first, "Ready").reason) == ("False", "SecretMissing")
    assert cond(first, "Degraded").reason == "SecretMissing"
    assert "SecretMissing" in [e.reason for e in first.events]
    status = first.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    again = desired_state(example("8b-a10g", status=status), catalog, None, running, now=LATER)
    assert "SecretMissing" not in [e.reason for e in again.events]  # reported once


def _to_fp32(llmd: LLMDeployment, **budget: float) -> LLMDeployment:
    """The example at generation 2 in fp32: too big for one A10G, so a LeaderWorkerSet."""
    spec = llmd.spec.model_copy(
        update={
            "quantization": "fp32",
            "budget": llmd.spec.budget.model_copy(update={"max_cost_per_hour": None, **budget}),
        }
    )
    return llmd.model_copy(update={"spec": spec, "metadata": {**llmd.metadata, "generation": 2}})


def test_a_workload_of_another_kind_replaces_the_old_one_make_before_break(
    catalog: Catalog,
) -> None:
    first = desired_state(example("8b-a10g"), catalog, None, ChildState(), now=NOW)
    old = deployed(replicas=2, ready=2)
    status = first.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    serving = desired_state(example("8b-a10g", status=status), catalog, None, old, now=NOW)
    status = serving.status.model_dump(by_alias=True, exclude_none=True, mode="json")

    change = _to_fp32(example("8b-a10g", status=status))
    d = desired_state(change, catalog, None, old, now=LATER)
    assert d.objects[0]["kind"] == "LeaderWorkerSet"
    assert d.keep == {("Deployment", "llama-3-1-8b")}  # the old one keeps serving
    assert cond(d, "Progressing").reason == "HandingOver"
    assert (cond(d, "Ready").status, cond(d, "Ready").reason) == ("True", "ServingPrevious")
    assert [e.reason for e in d.events].count("HandingOver") == 1

    # The LeaderWorkerSet comes up: the Deployment may go.
    status = d.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    lws = WorkloadState("LeaderWorkerSet", "llama-3-1-8b-lws", 2, 2, 2)
    both = ChildState(workloads=(*old.workloads, lws))
    done = desired_state(
        _to_fp32(example("8b-a10g", generation=2, status=status)), catalog, None, both, now=LATER
    )
    assert done.keep == frozenset() and done.status.handover is None
    assert cond(done, "Ready").reason == "Serving"


def test_handover_that_the_budget_cannot_pay_for_prunes_at_once(catalog: Catalog) -> None:
    first = desired_state(example("8b-a10g"), catalog, None, ChildState(), now=NOW)
    status = first.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert first.status.plan is not None
    old_cost = first.status.plan.cost_per_hour * 2  # the two serving replicas
    new = plan(_to_fp32(example("8b-a10g")).spec, catalog)
    assert new.chosen is not None
    new_cost = new.chosen.cost_per_hour * new.replicas
    # Enough for the new workload, not for both at once.
    budget = new_cost + old_cost / 2
    d = desired_state(
        _to_fp32(example("8b-a10g", status=status), max_cost_per_hour=budget),
        catalog,
        None,
        deployed(replicas=2, ready=2),
        now=LATER,
    )
    assert d.objects[0]["kind"] == "LeaderWorkerSet"
    assert d.keep == frozenset()
    assert "HandoverSkipped" in [e.reason for e in d.events]


def _shared(llmd: LLMDeployment) -> LLMDeployment:
    model = llmd.spec.model.model_copy(
        update={"cache": ModelCacheSpec(shared=True, storage_class_name="efs")}
    )
    return llmd.model_copy(update={"spec": llmd.spec.model_copy(update={"model": model})})


def test_shared_cache_starts_the_workload_only_after_the_download(catalog: Catalog) -> None:
    first = desired_state(_shared(example("8b-a10g")), catalog, None, ChildState(), now=NOW)
    kinds = [o["kind"] for o in first.objects]
    assert "Deployment" not in kinds and {"PersistentVolumeClaim", "Job"} <= set(kinds)
    assert cond(first, "Progressing").reason == "Downloading"
    assert (cond(first, "Ready").status, cond(first, "Ready").reason) == ("False", "Downloading")
    job = next(o for o in first.objects if o["kind"] == "Job")["metadata"]["name"]

    status = first.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    failed = ChildState(downloads=(DownloadState(job, failed=True, message="403 gated"),))
    d = desired_state(_shared(example("8b-a10g", status=status)), catalog, None, failed, now=LATER)
    assert (cond(d, "Degraded").reason, cond(d, "Degraded").message) == (
        "DownloadFailed",
        "403 gated",
    )
    assert "DownloadFailed" in [e.reason for e in d.events]

    done = ChildState(downloads=(DownloadState(job, complete=True),))
    d = desired_state(_shared(example("8b-a10g", status=status)), catalog, None, done, now=LATER)
    assert "Deployment" in [o["kind"] for o in d.objects]
    assert cond(d, "Progressing").reason == "Creating"


def test_rendered_children_are_reused_until_an_input_changes_and_kept_once_per_object(
    catalog: Catalog,
) -> None:
    from llm_operator.reconcile import desired as desired_module

    first = desired_state(example("8b-a10g"), catalog, None, ChildState(), now=NOW)
    again = desired_state(example("8b-a10g"), catalog, None, ChildState(), now=LATER)
    assert again.objects[0] is first.objects[0]  # nothing changed: not rendered again
    cached = len(desired_module._RENDER_CACHE)
    changed = example("8b-a10g", generation=2)
    bigger = changed.spec.scaling.model_copy(update={"min_replicas": 4, "max_replicas": 4})
    changed = changed.model_copy(
        update={"spec": changed.spec.model_copy(update={"scaling": bigger})}
    )
    third = desired_state(changed, catalog, None, ChildState(), now=LATER)
    assert third.objects[0] is not first.objects[0]
    assert third.objects[0]["spec"]["replicas"] == 4
    # The object's entry was replaced, not added to; deleting the object drops it.
    assert len(desired_module._RENDER_CACHE) == cached
    desired_module.forget_rendered("uid-1")
    assert len(desired_module._RENDER_CACHE) == cached - 1
