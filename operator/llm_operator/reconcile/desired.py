"""Plan -> desired objects -> new status, as data (pure; no I/O).

`desired_state()` is the whole reconcile decision: given the LLMDeployment, the catalog,
what the cluster has (GPU types, children's state) it returns the objects to apply, the
status to write and the events to post. `apply.py` executes it. Called by the handlers.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from llm_operator.api import conditions as cond
from llm_operator.api.v1alpha1 import (
    Architecture,
    Condition,
    Handover,
    LLMDeployment,
    LLMDeploymentStatus,
    PlanStatus,
)
from llm_operator.catalog import Catalog, GpuType, ModelEntry, UnknownNameError
from llm_operator.catalog.resolve import DraftHead
from llm_operator.errors import InvalidSpecError
from llm_operator.planner.search import (
    REPLAN_GAIN,
    PlanInputError,
    PlanResult,
    model_entry,
    plan,
    replan,
)
from llm_operator.render import RenderError, render_objects
from llm_operator.render.render import startup_failure_threshold

LABEL_LLMD = "serving.llm-operator.io/llmdeployment"
LABEL_ENGINE = "serving.llm-operator.io/engine"


@dataclass(frozen=True)
class Options:
    """Operator-level settings that change what is rendered.

    Attributes:
        monitoring: render a PodMonitor per LLMDeployment.
        allow_privileged_overrides: the opt-in that lets overrides.podTemplatePatch reach the
            host or raise privileges (LLM_OPERATOR_ALLOW_PRIVILEGED_OVERRIDES).
        images: engine images replacing the pinned upstream references
            (LLM_OPERATOR_ENGINE_IMAGES; render.image_for).
    """

    monitoring: bool = False
    allow_privileged_overrides: bool = False
    images: Mapping[str, str] = field(default_factory=dict)


def _split_field(message: str) -> tuple[str, str]:
    """`spec.x: why` -> ("spec.x", "why"): errors from the planner and renderer name the
    field first."""
    field_name, _, why = message.partition(":")
    return field_name.strip(), why.strip()


@dataclass(frozen=True)
class WorkloadState:
    """What one live workload child (Deployment or LeaderWorkerSet) reports.

    Attributes:
        kind: Deployment or LeaderWorkerSet.
        name: its name.
        replicas: pods (groups) that exist.
        ready_replicas: ready ones.
        updated_replicas: ones running the current template.
        deleting: it has a deletionTimestamp (being pruned).
    """

    kind: str
    name: str
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    deleting: bool = False


@dataclass(frozen=True)
class DownloadState:
    """What the shared model cache's download Job reports.

    Attributes:
        name: the Job's name.
        complete: it finished (condition Complete).
        failed: it gave up (condition Failed); `message` says why.
        message: the Job's own words, or how far it is.
    """

    name: str
    complete: bool = False
    failed: bool = False
    message: str = ""


@dataclass(frozen=True)
class ChildState:
    """What the workload children report.

    Attributes:
        workloads: every live workload child (two while one replaces the other).
        unschedulable: the scheduler's message for a pending pod, if any.
        failing: what happened to an engine container that stopped or cannot start, if
            anything (`kube.container_failure`).
        missing_secret: what is wrong with a Secret the pods need (absent, or without
            the key), if anything.
        downloads: the live download Jobs of the shared model cache.
    """

    workloads: tuple[WorkloadState, ...] = ()
    unschedulable: str | None = None
    failing: str | None = None
    missing_secret: str | None = None
    downloads: tuple[DownloadState, ...] = ()

    def workload(self, kind: str, name: str) -> WorkloadState | None:
        """The live workload of that kind and name, if any."""
        return next((w for w in self.workloads if (w.kind, w.name) == (kind, name)), None)


@dataclass(frozen=True)
class Event:
    """An event to post on the LLMDeployment."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Desired:
    """The outcome of one reconcile decision.

    Attributes:
        objects: children to apply (empty when there is no plan).
        prune: whether children not in `objects` should be deleted (False keeps the
            running workload when a new spec cannot be planned).
        status: the status to write.
        events: events worth posting.
        keep: (kind, name) of live children not to prune although no longer rendered: the
            previous workload while its replacement is not ready yet (make before break).
    """

    objects: list[dict[str, Any]]
    prune: bool
    status: LLMDeploymentStatus
    events: list[Event] = field(default_factory=list)
    keep: frozenset[tuple[str, str]] = frozenset()


def _rejections(result: PlanResult) -> str:
    parts = [f"{r.label}: {r.reason}" for r in result.rejected[:3]]
    if parts:
        return "no layout fits; closest: " + "; ".join(parts)
    return (
        "spec.hardware.gpuTypes: no GPU type the cluster has can run the engines and "
        "quantizations the spec allows; allow more GPU types (or spec.engine, "
        "spec.quantization: auto)"
    )


def planned_for(status: LLMDeploymentStatus, generation: Any) -> bool:
    """Whether `status.plan` is the plan of this spec generation (Planned=True for it).

    NOTE: after an infeasible change the status keeps the previous plan (its workload
    keeps serving) with Planned=False for the new generation; that plan is not this
    generation's, so the next pass must plan again rather than take it as current.
    """
    planned = cond.get_condition(status.conditions, cond.PLANNED)
    return (
        status.observed_generation == generation
        and planned is not None
        and planned.status == "True"
        and planned.observed_generation == generation
    )


def recalibrated(plan_status: PlanStatus, catalog: Catalog) -> bool:
    """Whether the fleet calibration for the plan's engine on its GPU type differs from the
    one its predictions include (`llmctl calibrate` wrote a new one)."""
    try:
        gpu = catalog.gpu(plan_status.gpu)
    except UnknownNameError:
        return False
    now = catalog.calibration(plan_status.engine, gpu)
    then = plan_status.calibration
    if now is None or then is None:
        return (now is None) != (then is None)
    return (round(now.decode, 4), round(now.prefill, 4)) != (then.decode, then.prefill)


def _recalibrated_message(new: PlanStatus, old: PlanStatus | None) -> str:
    """`predictions now include the fleet calibration (decode x1.50, prefill x1.20): ...`"""
    cal = new.calibration
    which = (
        f"the fleet calibration (decode x{cal.decode:.2f}, prefill x{cal.prefill:.2f})"
        if cal is not None
        else "no fleet calibration"
    )
    was = (
        f" (was TTFT {old.ttft_ms:.0f} ms, TPOT {old.tpot_ms:.1f} ms, "
        f"{old.output_tokens_per_second:.0f} tokens/s)"
        if old is not None
        else ""
    )
    return (
        f"predictions now include {which}: TTFT {new.ttft_ms:.0f} ms, TPOT "
        f"{new.tpot_ms:.1f} ms, {new.output_tokens_per_second:.0f} tokens/s per replica{was}; "
        f"the layout stays ({new.gpu} x{new.gpus_per_replica} {new.engine} "
        f"{new.quantization}): no other saves {REPLAN_GAIN:.0%} per token"
    )


def _layout(p: PlanStatus) -> tuple[Any, ...]:
    return (p.gpu, p.engine, p.quantization, p.tensor_parallel, p.pipeline_parallel)


def _choose_plan(
    llmd: LLMDeployment,
    catalog: Catalog,
    available_gpus: Mapping[str, int] | None,
    resolved: Architecture | None = None,
    draft: DraftHead | None = None,
) -> tuple[PlanStatus | None, PlanResult | None, str]:
    """Keep the current plan while the spec is unchanged; re-plan when it changed."""
    status = llmd.status
    generation = llmd.metadata.get("generation")
    if status is not None and status.plan is not None and planned_for(status, generation):
        if not recalibrated(status.plan, catalog):
            return status.plan, None, "unchanged"
        try:
            result = replan(
                llmd.spec, catalog, status.plan, available_gpus, resolved=resolved, draft=draft
            )
        except PlanInputError as err:
            raise InvalidSpecError(*_split_field(str(err))) from err
        if result.chosen is None:
            # NOTE: what no longer fits under the new calibration keeps running as it is;
            # the spec did not change, and a plan is only replaced by a better one.
            return status.plan, None, "unchanged"
        kept = result.chosen.to_status()
        if _layout(kept) == _layout(status.plan):
            # NOTE: the same layout with new predictions: the replica count stays where
            # the autoscaler put it (no result, as for an unchanged plan).
            return kept, None, "recalibrated"
        return kept, result, "fleet calibration changed"
    try:
        result = plan(llmd.spec, catalog, available_gpus, resolved=resolved, draft=draft)
    except PlanInputError as err:
        raise InvalidSpecError(*_split_field(str(err))) from err
    chosen = result.chosen.to_status() if result.chosen else None
    if status is not None and status.plan is not None and chosen == status.plan:
        # NOTE: a spec change that leaves the plan as it was (scaling bounds, the scale
        # subresource an HPA writes, a budget with room) is not a re-plan: no event, and
        # the replica count stays where the autoscaler (or the HPA) put it.
        return status.plan, None, "unchanged"
    reason = "spec changed" if status is not None and status.plan is not None else "new"
    return chosen, result, reason


def _replicas_limited(
    llmd: LLMDeployment, result: PlanResult | None, old: LLMDeploymentStatus
) -> str | None:
    """What keeps the plan from running the replicas its load needs: the new plan's
    sentence, or the one the current Planned message already carries."""
    if result is not None:
        return result.replicas_limited
    planned = cond.get_condition(old.conditions, cond.PLANNED)
    if planned is not None and "; the load needs " in planned.message:
        return planned.message.split("; ", 1)[1]
    return None


def _replicas(llmd: LLMDeployment, result: PlanResult | None) -> int:
    spec = llmd.spec
    if spec.scaling.mode == "external" and spec.replicas is not None:
        return spec.replicas
    status = llmd.status
    if status is not None and status.desired_replicas is not None and result is None:
        bounds = spec.scaling
        return min(max(status.desired_replicas, bounds.min_replicas), bounds.max_replicas)
    if result is not None:
        return result.replicas
    return max(1, spec.scaling.min_replicas)


def desired_state(
    llmd: LLMDeployment,
    catalog: Catalog,
    available_gpus: Mapping[str, int] | None,
    children: ChildState,
    options: Options | None = None,
    now: str | None = None,
    resolved: Architecture | None = None,
    draft: DraftHead | None = None,
) -> Desired:
    """Decide children, status and events for one LLMDeployment.

    Args:
        llmd: the custom object (with metadata.generation and current status).
        catalog: models and GPU types.
        available_gpus: catalog GPU types in the cluster -> most GPUs on one node;
            None: any type at its catalog node size.
        children: what the workload reports now.
        options: operator-level rendering settings.
        now: timestamp for condition transitions (tests pin it).
        resolved: the model's shape read from its config.json by the caller
            (`reconcile.run` through `hub`), for a model the catalog does not know.
        draft: the speculative draft head read from its config.json by the caller
            (`reconcile.run.resolve_draft`); None: none, or its size is estimated.

    Raises:
        InvalidSpecError: the spec names an unknown model or GPU type, or cannot be
            rendered as written.
    """
    options = options or Options()
    generation = llmd.metadata.get("generation")
    old = llmd.status or LLMDeploymentStatus()
    conditions: Sequence[Condition] = old.conditions
    events: list[Event] = []
    chosen, result, why = _choose_plan(llmd, catalog, available_gpus, resolved, draft)

    def put(type_: str, status: cond.Status, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = cond.set_condition(conditions, type_, status, reason, message, generation, now)

    if chosen is None:
        assert result is not None
        message = _rejections(result)
        put(cond.PLANNED, "False", "NoFeasiblePlan", message)
        ready_message = message
        if old.plan is not None:
            ready_message = (
                f"generation {generation} has no feasible plan ({message}); the workload of "
                f"the previous plan keeps running ({old.ready_replicas or 0}/"
                f"{old.desired_replicas or 0} replicas ready) until the spec changes"
            )
        put(cond.READY, "False", "NoFeasiblePlan", ready_message)
        if old.plan is None:
            put(cond.PROGRESSING, "False", "NoFeasiblePlan", message)
        before = cond.get_condition(old.conditions, cond.PLANNED)
        if before is None or (before.reason, before.message) != ("NoFeasiblePlan", message):
            events.append(Event("Warning", "NoFeasiblePlan", message))
        status = old.model_copy(
            update={"conditions": list(conditions), "observed_generation": generation}
        )
        return Desired(objects=[], prune=False, status=status, events=events)

    try:
        gpu = catalog.gpu(chosen.gpu)
        entry = (
            model_entry(llmd.spec, catalog, resolved)
            if llmd.spec.model.architecture is None
            else None
        )
    except UnknownNameError as err:
        raise InvalidSpecError("spec.model.name", str(err)) from err
    replicas = _replicas(llmd, result)
    objects = _rendered(llmd, chosen, gpu, replicas, entry, options)

    summary = (
        f"{chosen.gpu} x{chosen.gpus_per_replica} (TP{chosen.tensor_parallel} "
        f"PP{chosen.pipeline_parallel}) {chosen.engine} {chosen.quantization}, "
        f"max-model-len {chosen.max_model_len}, ${chosen.cost_per_hour:.2f}/h per replica"
    )
    if why == "new":
        events.append(Event("Normal", "Planned", summary))
    elif why == "recalibrated":
        events.append(Event("Normal", "Recalibrated", _recalibrated_message(chosen, old.plan)))
    elif why != "unchanged":
        events.append(Event("Normal", "Replanned", f"{why}: {summary}"))
    limited = _replicas_limited(llmd, result, old)
    if limited is not None:
        summary = f"{summary}; {limited}"
        if result is not None:
            events.append(Event("Warning", "CapacityLimited", limited))
    put(cond.PLANNED, "True", "Planned", summary)

    workload = next(o for o in objects if o["kind"] in WORKLOAD_KINDS)
    current = children.workload(workload["kind"], workload["metadata"]["name"])
    download = _download(objects, children)
    if download is not None and not download.complete:
        # NOTE: the pods read the shared cache offline, so the new workload waits for the
        # download Job; whatever serves now keeps serving meanwhile.
        objects = [o for o in objects if o is not workload]
    ready = current.ready_replicas if current is not None else 0
    updated = current.updated_replicas if current is not None else 0
    handover = _handover(llmd, old, chosen, children, current, replicas, now)
    if download is not None and not download.complete:
        live = frozenset((w.kind, w.name) for w in children.workloads if not w.deleting)
        handover = replace(handover, keep=handover.keep | live)
    if handover.event is not None:
        events.append(handover.event)
    if download is not None and download.failed:
        degraded = cond.get_condition(old.conditions, cond.DEGRADED)
        if degraded is None or degraded.reason != "DownloadFailed":
            events.append(Event("Warning", "DownloadFailed", download.message))
    if download is not None and not download.complete:
        put(cond.PROGRESSING, "True", "Downloading", download.message)
    elif handover.keep:
        put(cond.PROGRESSING, "True", "HandingOver", handover.message)
    elif current is None:
        put(cond.PROGRESSING, "True", "Creating", "creating the workload")
    elif updated < replicas or ready < replicas:
        put(cond.PROGRESSING, "True", "RollingOut", f"{ready}/{replicas} replicas ready")
    else:
        put(cond.PROGRESSING, "False", "Complete", f"{ready}/{replicas} replicas ready")
    if download is not None and download.failed:
        put(cond.DEGRADED, "True", "DownloadFailed", download.message)
    elif children.missing_secret:
        degraded = cond.get_condition(old.conditions, cond.DEGRADED)
        if degraded is None or degraded.reason != "SecretMissing":
            events.append(Event("Warning", "SecretMissing", children.missing_secret))
        put(cond.DEGRADED, "True", "SecretMissing", children.missing_secret)
    elif children.unschedulable:
        if not cond.is_true(old.conditions, cond.DEGRADED):
            events.append(Event("Warning", "Unschedulable", children.unschedulable))
        put(cond.DEGRADED, "True", "Unschedulable", children.unschedulable)
    elif children.failing:
        degraded = cond.get_condition(old.conditions, cond.DEGRADED)
        if degraded is None or degraded.reason != "EngineFailing":
            events.append(Event("Warning", "EngineFailing", children.failing))
        put(cond.DEGRADED, "True", "EngineFailing", children.failing)
    else:
        put(cond.DEGRADED, "False", "AsExpected", "")
    if children.missing_secret:
        # NOTE: the kubelet cannot start a container whose Secret is missing
        # (CreateContainerConfigError), whatever a pod's status says elsewhere.
        put(cond.READY, "False", "SecretMissing", children.missing_secret)
    elif replicas == 0:
        put(cond.READY, "True", "ScaledToZero", "no replicas wanted")
    elif ready >= 1:
        put(cond.READY, "True", "Serving", f"{ready}/{replicas} replicas ready")
    elif handover.keep and any(w.ready_replicas for w in children.workloads):
        serving = handover.message or (download.message if download is not None else "")
        put(cond.READY, "True", "ServingPrevious", serving)
    elif download is not None and not download.complete:
        put(cond.READY, "False", "Downloading", download.message)
    else:
        put(cond.READY, "False", "Pending", f"{ready}/{replicas} replicas ready")

    existing = current.replicas if current is not None else 0
    status = old.model_copy(
        update={
            "observed_generation": generation,
            "conditions": list(conditions),
            "plan": chosen,
            "replicas": existing,
            "ready_replicas": ready,
            "desired_replicas": replicas,
            "selector": f"{LABEL_LLMD}={llmd.metadata.get('name', '')}",
            # Cents: the column shows $/hr with two decimals.
            "cost_per_hour": round(
                chosen.cost_per_hour * max(existing, 0) + handover.previous_cost_per_hour, 2
            ),
            "handover": handover.record,
        }
    ).with_shown_rate()
    return Desired(objects=objects, prune=True, status=status, events=events, keep=handover.keep)


WORKLOAD_KINDS = ("Deployment", "LeaderWorkerSet")

# The last rendered children of each LLMDeployment (by uid), with a digest of what they
# were rendered from: a pass whose inputs did not change (every safety pass at rest)
# reuses them instead of rendering again (~16 ms a render). One entry per object, so
# memory follows the live objects (an update replaces the entry, `forget_rendered` drops
# it on delete); bounded all the same. The objects are never mutated (apply copies before
# adding owner references).
_RENDER_CACHE: OrderedDict[str, tuple[str, list[dict[str, Any]]]] = OrderedDict()
_RENDER_CACHE_SIZE = 16384
_render_lock = threading.Lock()


def forget_rendered(uid: str) -> None:
    """Drop the cached children of a deleted LLMDeployment."""
    with _render_lock:
        _RENDER_CACHE.pop(uid, None)


def _rendered(
    llmd: LLMDeployment,
    plan: PlanStatus,
    gpu: GpuType,
    replicas: int,
    entry: ModelEntry | None,
    options: Options,
) -> list[dict[str, Any]]:
    """`render_objects`, memoised on its inputs.

    Raises:
        InvalidSpecError: the spec cannot be rendered as written.
    """
    slot = str(
        llmd.metadata.get("uid") or f"{llmd.metadata.get('namespace')}/{llmd.metadata.get('name')}"
    )
    inputs = json.dumps(
        [
            llmd.metadata.get("name"),
            llmd.metadata.get("namespace"),
            llmd.spec.model_dump(mode="json"),
            plan.model_dump(mode="json"),
            gpu.name,
            replicas,
            entry.model_dump(mode="json") if entry is not None else None,
            [options.monitoring, options.allow_privileged_overrides, dict(options.images)],
        ],
        sort_keys=True,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(inputs.encode()).hexdigest()
    with _render_lock:
        hit = _RENDER_CACHE.get(slot)
        if hit is not None and hit[0] == digest:
            _RENDER_CACHE.move_to_end(slot)
            return hit[1]
    try:
        objects = render_objects(
            llmd,
            plan,
            gpu,
            replicas,
            entry,
            monitoring=options.monitoring,
            allow_privileged_overrides=options.allow_privileged_overrides,
            images=options.images,
        )
    except RenderError as err:
        raise InvalidSpecError(*_split_field(str(err))) from err
    with _render_lock:
        _RENDER_CACHE[slot] = (digest, objects)
        _RENDER_CACHE.move_to_end(slot)
        while len(_RENDER_CACHE) > _RENDER_CACHE_SIZE:
            _RENDER_CACHE.popitem(last=False)
    return objects


def _download(objects: list[dict[str, Any]], children: ChildState) -> DownloadState | None:
    """The state of the rendered download Job (None: no shared cache)."""
    job = next((o for o in objects if o["kind"] == "Job"), None)
    if job is None:
        return None
    name = job["metadata"]["name"]
    found = next((d for d in children.downloads if d.name == name), None)
    return found or DownloadState(name=name, message=f"creating the download Job {name}")


@dataclass(frozen=True)
class _Handover:
    """The make-before-break decision for a workload being replaced by another kind."""

    keep: frozenset[tuple[str, str]] = frozenset()
    message: str = ""
    record: Handover | None = None
    previous_cost_per_hour: float = 0.0
    event: Event | None = None


# How long past the new workload's own start-up budget the old one may keep serving.
HANDOVER_GRACE_S = 600


def _handover(
    llmd: LLMDeployment,
    old: LLMDeploymentStatus,
    chosen: PlanStatus,
    children: ChildState,
    current: WorkloadState | None,
    replicas: int,
    now: str | None,
) -> _Handover:
    """Keep the previous workload (a Deployment replaced by a LeaderWorkerSet, or the
    reverse) until the new one is ready, within a timeout and the budget.

    The new workload is ready when it has as many ready replicas as the old one served
    (at most the replicas wanted). Both run meanwhile, so the overlap must fit
    budget.maxCostPerHour; when it does not, or the new workload is not ready within its
    start-up budget plus HANDOVER_GRACE_S, the old one is pruned at once and an event says
    why.
    """
    previous = [
        w
        for w in children.workloads
        if not w.deleting and (current is None or (w.kind, w.name) != (current.kind, current.name))
    ]
    if not previous:
        return _Handover()
    serving = max(w.ready_replicas for w in previous)
    label = ", ".join(f"{w.kind}/{w.name}" for w in previous)
    new_ready = current.ready_replicas if current is not None else 0
    if serving == 0 or new_ready >= min(max(1, replicas), serving):
        return _Handover()  # nothing to protect, or the new workload took over
    record = old.handover
    started = record.since if record is not None else (now or cond.now_rfc3339())
    previous_cost = (
        record.previous_cost_per_hour
        if record is not None
        else (old.plan.cost_per_hour * serving if old.plan is not None else 0.0)
    )
    budget = llmd.spec.budget.max_cost_per_hour
    overlap = previous_cost + chosen.cost_per_hour * replicas
    if budget is not None and overlap > budget:
        return _Handover(
            event=Event(
                "Warning",
                "HandoverSkipped",
                f"running {label} next to its replacement would cost ${overlap:.2f}/h > "
                f"budget ${budget:.2f}/h: pruning it before the new workload is ready",
            )
        )
    limit_s = HANDOVER_GRACE_S + 10 * startup_failure_threshold(
        chosen.download_gib or chosen.weights_gib_per_gpu * chosen.gpus_per_replica
    )
    waited = _seconds_between(started, now or cond.now_rfc3339())
    if waited > limit_s:
        return _Handover(
            event=Event(
                "Warning",
                "HandoverTimedOut",
                f"the new workload is not ready after {waited:.0f} s (limit {limit_s} s): "
                f"pruning {label}",
            )
        )
    message = (
        f"keeping {label} serving ({serving} ready) until the new workload is ready "
        f"({new_ready}/{min(max(1, replicas), serving)}); pruned after {limit_s} s at most"
    )
    return _Handover(
        keep=frozenset((w.kind, w.name) for w in previous),
        message=message,
        record=Handover(previous=label, since=started, previous_cost_per_hour=previous_cost),
        previous_cost_per_hour=previous_cost,
        event=None if record is not None else Event("Normal", "HandingOver", message),
    )


def _seconds_between(start: str, end: str) -> float:
    def parse_time(text: str) -> datetime:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)

    return (parse_time(end) - parse_time(start)).total_seconds()
