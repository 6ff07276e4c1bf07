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

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from test_operator import counter, create, engine_container, get, wait_ready

from faults import LLMD_LABEL, changes, control_plane, outage, violations
from helpers import GROUP, PLURAL, VERSION, Cluster, condition, eventually
from helpers import llmd_body as llmd
from operator_proc import OperatorProcess


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

    def holds() -> bool:
        found = violations(custom, apps, core, namespace)
        assert not found, found
        return True

    eventually(
        holds,
        timeout=max(10.0, timeout - (time.monotonic() - start)),
        interval=1,
        description="exactly one workload, Service and the desired pods each; no orphans",
    )
    assert op.proc is not None and op.proc.poll() is None, f"operator exited:\n{op.tail()}"
    assert_quiet(op, custom, namespace)


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
