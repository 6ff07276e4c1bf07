"""The operator while the control plane fails under it: kube-apiserver and etcd killed
mid-reconcile, kube-controller-manager stopped, a GPU node deleted with engine pods on it.

Each fault is injected into the local cluster's real processes (e2e/cluster/cluster.sh
kill / start-stopped; SIGKILL, no graceful shutdown), and each test ends with the same
invariant check (`assert_converged`): every LLMDeployment reaches the state its spec asks
for with truthful status, exactly one workload and one Service each, owned by it, nothing
orphaned, the engine pods its status promises, the operator process alive, and no
writes at rest. Against another kubeconfig (kind, a real cluster) these skip: nothing
here may kill someone else's control plane.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from test_operator import counter, create, engine_container, get, wait_ready

from helpers import GROUP, PLURAL, VERSION, Cluster, condition, eventually
from helpers import llmd_body as llmd
from operator_proc import OperatorProcess

E2E = Path(__file__).resolve().parents[1]
CLUSTER_SH = E2E / "cluster" / "cluster.sh"
LLMD_LABEL = "serving.llm-operator.io/llmdeployment"


def control_plane(*args: str) -> None:
    """`cluster.sh kill COMPONENT` / `cluster.sh start-stopped` on the local cluster."""
    done = subprocess.run(
        [str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=180, env=os.environ
    )
    assert done.returncode == 0, f"cluster.sh {' '.join(args)}:\n{done.stdout}{done.stderr}"


# kube-controller-manager's and kube-scheduler's leader election gives up after its renew
# deadline (10 s by default) without an apiserver; they exit and their supervisor starts
# them again. kwokctl runs them without leader election, so an outage longer than that
# restarts them here, as a production control plane would.
LEASE_RENEW_DEADLINE_S = 10.0
LEADER_ELECTED = ("kube-controller-manager", "kube-scheduler")


def outage(component: str, seconds: float = LEASE_RENEW_DEADLINE_S + 2) -> None:
    """`component` SIGKILLed and down for `seconds` (every watch and request of the
    operator fails meanwhile), then started again with what lost its lease."""
    control_plane("kill", component)
    time.sleep(seconds)
    if seconds > LEASE_RENEW_DEADLINE_S:
        for name in LEADER_ELECTED:
            control_plane("kill", name)
    control_plane("start-stopped")


@pytest.fixture
def local(cluster: Cluster) -> Iterator[None]:
    """Skip outside the local cluster; whatever a test stopped runs again afterwards."""
    if not cluster.local:
        pytest.skip("control plane faults are injected into the local cluster only")
    try:
        yield
    finally:
        control_plane("start-stopped")


# --- the invariant --------------------------------------------------------------------------


def owned_by(obj: Any, uid: str) -> bool:
    return any(ref.uid == uid and ref.controller for ref in obj.metadata.owner_references or [])


def assert_converged(
    op: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
    timeout: float = 120,
) -> None:
    """Every LLMDeployment of `namespace` Ready with exactly its own children and pods, no
    orphan, the operator alive, and nothing written while nothing changes."""
    start = time.monotonic()
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    for obj in items:
        wait_ready(custom, namespace, obj["metadata"]["name"], timeout=timeout)
    eventually(
        lambda: children_match(custom, apps, core, namespace),
        timeout=max(10.0, timeout - (time.monotonic() - start)),
        interval=1,
        description="exactly one workload, Service and the desired pods each; no orphans",
    )
    assert op.proc is not None and op.proc.poll() is None, f"operator exited:\n{op.tail()}"
    assert_quiet(op, custom, namespace)


def children_match(
    custom: client.CustomObjectsApi, apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str
) -> bool:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    uids = {o["metadata"]["name"]: o["metadata"]["uid"] for o in items}
    deployments = apps.list_namespaced_deployment(namespace).items
    services = core.list_namespaced_service(namespace).items
    for kind, objs in (("Deployment", deployments), ("Service", services)):
        for o in objs:
            owner = (o.metadata.labels or {}).get(LLMD_LABEL)
            assert owner in uids and owned_by(o, uids[owner]), (
                f"orphaned {kind} {o.metadata.name} (labelled for {owner!r})"
            )
    for obj in items:
        name, uid = obj["metadata"]["name"], obj["metadata"]["uid"]
        assert condition(obj, "Ready")["status"] == "True", (name, obj["status"])
        # Settled metrics too: the first scrape of a new pod flips this one more time.
        assert condition(obj, "MetricsAvailable")["status"] == "True", (name, obj["status"])
        assert len([d for d in deployments if owned_by(d, uid)]) == 1, f"{name}: Deployments"
        assert len([s for s in services if owned_by(s, uid)]) == 1, f"{name}: Services"
        pods = core.list_namespaced_pod(namespace, label_selector=f"{LLMD_LABEL}={name}").items
        live = [p.metadata.name for p in pods if p.metadata.deletion_timestamp is None]
        assert len(live) == obj["status"]["desiredReplicas"], (name, live)
    return True


def assert_quiet(op: OperatorProcess, custom: client.CustomObjectsApi, namespace: str) -> None:
    """No write and no hot loop at rest: the LLMDeployments stay put over three autoscaler
    ticks each, and reconciles happen no faster than the safety net's."""

    def objects() -> dict[str, dict[str, Any]]:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        for o in items:
            o["metadata"].pop("managedFields", None)
        return {o["metadata"]["name"]: o for o in items}

    def versions(objs: dict[str, dict[str, Any]]) -> dict[str, str]:
        return {n: o["metadata"]["resourceVersion"] for n, o in objs.items()}

    settled = eventually(
        lambda: versions(o := objects()) == versions(objects()) and o,
        timeout=30,
        description="settled",
    )
    ticks = counter(op, "llm_operator_autoscaler_ticks_total")
    passes = counter(op, "llm_operator_reconcile_total")
    eventually(
        lambda: counter(op, "llm_operator_autoscaler_ticks_total") >= ticks + 3 * len(settled),
        timeout=60,
        description="3 autoscaler ticks each",
    )
    now = objects()
    changed = {n: changes(settled[n], now.get(n, {})) for n in settled}
    assert versions(now) == versions(settled), f"written at rest: {changed}"
    # The safety net runs every 30 s per object: far fewer than one pass a second.
    assert counter(op, "llm_operator_reconcile_total") - passes <= 2 * len(settled) + 2


def changes(before: Any, after: Any, path: str = "") -> dict[str, tuple[Any, Any]]:
    """The leaves that differ between two JSON documents, by path."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in before.keys() | after.keys():
            out.update(changes(before.get(key), after.get(key), f"{path}.{key}"))
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        out = {}
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            out.update(changes(b, a, f"{path}[{i}]"))
        return out
    return {} if before == after else {path: (before, after)}


def assert_watches_resumed(apps: client.AppsV1Api, namespace: str, name: str) -> None:
    """An owned field edited now is reverted well inside the 30 s safety net: the operator's
    watches run again, not only its timers. (An edit, not a deletion: a deleted workload's
    old ReplicaSet is kube-controller-manager's garbage collector's to remove, and after an
    apiserver restart it can take minutes to, which is no evidence about the operator.)"""
    deployment = apps.read_namespaced_deployment(name, namespace)
    image = engine_container(deployment).image
    apps.patch_namespaced_deployment(
        name,
        namespace,
        {"spec": {"template": {"spec": {"containers": [{"name": "engine", "image": "evil:1"}]}}}},
    )
    eventually(
        lambda: engine_container(apps.read_namespaced_deployment(name, namespace)).image == image,
        timeout=10,
        interval=0.5,
        description=f"{name}'s engine image reverted by the watch",
    )


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_killed_mid_reconcile_converges_without_duplicates(
    local: None,
    component: str,
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    names = [create(custom, namespace, llmd(f"cp-{i}")) for i in range(3)]
    eventually(
        lambda: apps.read_namespaced_deployment(names[0], namespace),
        timeout=60,
        description="the first workload applied",
    )
    outage(component)
    assert_converged(operator, custom, apps, core, namespace)
    assert_watches_resumed(apps, namespace, names[1])
    assert_converged(operator, custom, apps, core, namespace)


def test_controller_manager_stopped_then_back_converges(
    local: None,
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    gone = create(custom, namespace, llmd("kcm-deleted"))
    wait_ready(custom, namespace, gone)
    control_plane("kill", "kube-controller-manager")
    # No ReplicaSets, no garbage collection: a new workload gets no pods, a deleted
    # LLMDeployment's children stay.
    name = create(custom, namespace, llmd("kcm-new"))
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, gone)

    def waiting() -> dict[str, Any]:
        obj = get(custom, namespace, name)
        ready = condition(obj, "Ready")
        assert ready["status"] == "False", ready
        assert apps.read_namespaced_deployment(name, namespace)
        return obj

    eventually(waiting, timeout=60, description="applied, truthfully not Ready")
    time.sleep(10)  # several autoscaler ticks and watch events without the controllers
    obj = get(custom, namespace, name)
    assert condition(obj, "Ready")["status"] == "False"
    assert obj["status"].get("readyReplicas", 0) == 0
    assert (
        len(apps.list_namespaced_deployment(namespace, label_selector=f"{LLMD_LABEL}={name}").items)
        == 1
    )
    assert operator.proc is not None and operator.proc.poll() is None, operator.tail()

    control_plane("start-stopped")
    eventually(
        lambda: (
            not apps.list_namespaced_deployment(
                namespace, label_selector=f"{LLMD_LABEL}={gone}"
            ).items
        ),
        timeout=90,
        interval=1,
        description="the garbage collector removed the deleted LLMDeployment's workload",
    )
    assert_converged(operator, custom, apps, core, namespace)
