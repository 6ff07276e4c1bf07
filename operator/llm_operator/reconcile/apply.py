"""Execute a reconcile decision: server-side apply the children, prune stale ones.

The side-effect half of `reconcile`; the decision itself is `desired.desired_state`.
Called by the handlers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_operator.kube import ClusterView, Kube, PodProblems
from llm_operator.reconcile import diff
from llm_operator.reconcile.desired import ChildState, DownloadState, WorkloadState


@dataclass(frozen=True)
class ApplyReport:
    """What was written: kinds/names applied and pruned."""

    applied: list[str]
    pruned: list[str]


def _name(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def live_children(view: ClusterView, owner: dict[str, Any]) -> dict[diff.Key, dict[str, Any]]:
    """The owner's children as the cluster view has them, by identity."""
    meta = owner["metadata"]
    return {diff.key(obj): obj for obj in view.children(meta["namespace"], meta["name"])}


def missing_secret(kube: Kube, owner: dict[str, Any]) -> str | None:
    """What is wrong with spec.model.hfTokenSecret, if anything (its value is never read)."""
    ref = ((owner.get("spec") or {}).get("model") or {}).get("hfTokenSecret")
    if not ref:
        return None
    namespace = owner["metadata"]["namespace"]
    name, key = ref["name"], ref.get("key") or "token"
    keys = kube.secret_keys(namespace, name)
    fix = (
        f"create it: kubectl -n {namespace} create secret generic {name} "
        f"--from-literal={key}=<your Hugging Face token>"
    )
    if keys is None:
        return f"spec.model.hfTokenSecret: Secret {namespace}/{name} does not exist; {fix}"
    if key not in keys:
        have = ", ".join(sorted(keys)) or "no keys"
        return (
            f"spec.model.hfTokenSecret: Secret {namespace}/{name} has no key {key!r} "
            f"(it has {have}); set spec.model.hfTokenSecret.key or add the key"
        )
    return None


def child_state(
    kube: Kube, view: ClusterView, live: dict[diff.Key, dict[str, Any]], owner: dict[str, Any]
) -> ChildState:
    """The workload children, any scheduling problem and a missing Secret."""
    meta = owner["metadata"]
    secret = missing_secret(kube, owner)
    workloads = tuple(
        _workload_state(o) for o in live.values() if o["kind"] in ("Deployment", "LeaderWorkerSet")
    )
    # NOTE: only a workload short of ready replicas can have pods the scheduler refused;
    # a healthy one costs no pod listing (the pass runs for every object every interval).
    short = any(w.ready_replicas < w.wanted for w in workloads)
    problems = view.pod_problems(meta["namespace"], meta["name"]) if short else PodProblems()
    return ChildState(
        workloads=tuple(w.state for w in workloads),
        unschedulable=problems.unschedulable,
        failing=problems.failing,
        missing_secret=secret,
        downloads=tuple(_download_state(o) for o in live.values() if o["kind"] == "Job"),
    )


def _download_state(job: dict[str, Any]) -> DownloadState:
    """A download Job's progress from its conditions (Complete / Failed) and counters."""
    name = job["metadata"]["name"]
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if (conditions.get("Complete") or {}).get("status") == "True":
        return DownloadState(name, complete=True, message=f"Job {name} completed")
    failed = conditions.get("Failed") or {}
    if failed.get("status") == "True":
        why = failed.get("message") or failed.get("reason") or "failed"
        return DownloadState(name, failed=True, message=f"download Job {name} failed: {why}")
    active = int(status.get("active") or 0)
    attempts = int(status.get("failed") or 0)
    return DownloadState(
        name,
        message=f"downloading the model into the shared cache (Job {name}: {active} active, "
        f"{attempts} failed attempts)",
    )


@dataclass(frozen=True)
class _Workload:
    state: WorkloadState
    wanted: int

    @property
    def ready_replicas(self) -> int:
        return self.state.ready_replicas


def _workload_state(obj: dict[str, Any]) -> _Workload:
    status = obj.get("status") or {}
    meta = obj["metadata"]
    return _Workload(
        state=WorkloadState(
            kind=obj["kind"],
            name=meta["name"],
            replicas=int(status.get("replicas") or 0),
            ready_replicas=int(status.get("readyReplicas") or 0),
            updated_replicas=int(status.get("updatedReplicas") or 0),
            deleting=bool(meta.get("deletionTimestamp") or meta.get("deletion_timestamp")),
        ),
        wanted=int((obj.get("spec") or {}).get("replicas") or 0),
    )


def check_pod_templates(kube: Kube, obj: dict[str, Any]) -> None:
    """Validate the pod templates of a LeaderWorkerSet before anything is applied, so that
    a template Kubernetes would refuse (only when the LWS controller makes its pods) is an
    InvalidSpec now, with nothing created (`Kube.check_pod_template`)."""
    if obj["kind"] != "LeaderWorkerSet":
        return
    meta = obj["metadata"]
    templates = obj["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        if templates.get(role):
            what = f"{role} of LeaderWorkerSet {meta.get('namespace', '')}/{meta['name']}"
            kube.check_pod_template(meta.get("namespace", ""), meta["name"], templates[role], what)


def execute(
    kube: Kube,
    owner: dict[str, Any],
    objects: list[dict[str, Any]],
    prune: bool,
    live: dict[diff.Key, dict[str, Any]],
    keep: frozenset[tuple[str, str]] = frozenset(),
) -> ApplyReport:
    """Apply what differs (in the renderer's order), then prune what is no longer rendered,
    except the children in `keep` (kind, name) and those already being deleted."""
    owned = [diff.with_owner(obj, owner) for obj in objects]
    changed = diff.to_apply(owned, live)
    for obj in changed:
        check_pod_templates(kube, obj)
    applied = [_name(kube.apply(obj) | obj) for obj in changed]
    pruned: list[str] = []
    if prune:
        for obj in diff.to_prune(owned, live, owner["metadata"]["uid"]):
            meta = obj["metadata"]
            if (obj["kind"], meta["name"]) in keep:
                continue
            if meta.get("deletionTimestamp") or meta.get("deletion_timestamp"):
                continue  # pruned on an earlier pass; foreground deletion is under way
            kube.delete(obj)
            pruned.append(_name(obj))
    return ApplyReport(applied=applied, pruned=pruned)
