"""A GPU node vanishes under running engine pods, on the real control plane.

The kwok Node object is deleted as a cloud provider's node controller deletes a
terminated instance. kube-controller-manager's pod garbage collector then deletes the pods
bound to it (after its 40 s quarantine); the workload controllers replace them and
kube-scheduler places the replacements on the GPU nodes that are left, or leaves them
Pending. The operator must tell the truth meanwhile (readyReplicas, Ready, the reason a
replacement cannot run) and converge once capacity is back; a multi-node replica (a
LeaderWorkerSet group, RecreateGroupOnPodRestart) must come back as a whole group. Every
deleted node is recreated afterwards from e2e/cluster/nodes.yaml.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from helpers import GROUP, PLURAL, VERSION, Cluster, condition, eventually, llmd_body
from operator_proc import OperatorProcess, apply_all

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_405B = REPO / "examples" / "llama-3.1-405b-fp8-multinode.yaml"
LLMD_LABEL = "serving.llm-operator.io/llmdeployment"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
H100_POOL = "gpu-h100"
POOL_LABEL = "llm-operator.io/node-pool"
# kube-controller-manager's pod GC: orphaned pods are deleted after a 40 s quarantine, on
# a 20 s period (pkg/controller/podgc); the rest is scheduling and kwok's start.
RECOVERY_S = 150


def node_manifest(name: str) -> dict[str, Any]:
    """The Node as e2e/cluster/nodes.py wrote it when the cluster came up."""
    spec = importlib.util.spec_from_file_location("nodes", REPO / "e2e" / "cluster" / "nodes.py")
    assert spec is not None and spec.loader is not None
    nodes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nodes)
    layout = yaml.safe_load((REPO / "e2e" / "cluster" / "nodes.yaml").read_text())
    found: dict[str, Any] = next(
        n for n in nodes.node_manifests(layout) if n["metadata"]["name"] == name
    )
    return found


@pytest.fixture
def lose_node(cluster: Cluster, core: client.CoreV1Api) -> Iterator[Any]:
    """Delete kwok nodes; every one is recreated (and Ready again) after the test."""
    if not cluster.local:
        pytest.skip("deletes nodes: only on the local kwok cluster")
    lost: list[str] = []

    def lose(name: str) -> None:
        core.delete_node(name)
        lost.append(name)

    try:
        yield lose
    finally:
        for name in lost:
            restore_node(cluster, core, name)


def restore_node(cluster: Cluster, core: client.CoreV1Api, name: str) -> None:
    """Create the node again as cluster.sh did (a no-op when it exists)."""
    apply_all(cluster.api, [node_manifest(name)])

    def ready() -> bool:
        node = core.read_node(name)
        conds = {c.type: c.status for c in node.status.conditions or []}
        assert conds.get("Ready") == "True", conds
        return True

    eventually(ready, timeout=60, description=f"node {name} Ready again")


def get(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return obj


def pods_of(core: client.CoreV1Api, namespace: str, selector: str) -> list[client.V1Pod]:
    return [
        p
        for p in core.list_namespaced_pod(namespace, label_selector=selector).items
        if p.metadata.deletion_timestamp is None
    ]


def serving(custom: client.CustomObjectsApi, namespace: str, name: str, replicas: int) -> Any:
    def ready() -> dict[str, Any]:
        obj = get(custom, namespace, name)
        status = obj.get("status") or {}
        assert condition(obj, "Ready")["status"] == "True", status.get("conditions")
        assert status.get("readyReplicas") == replicas, status
        return obj

    return ready


def test_a_lost_gpu_node_strands_its_replicas_truthfully_and_a_group_comes_back_whole(
    operator: OperatorProcess,
    cluster: Cluster,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    lose_node: Any,
) -> None:
    """One node loss, two kinds of replica: a LeaderWorkerSet group whose worker ran there,
    and a one-GPU replica that can only run there (a nodeSelector in its pod template
    patch, so that its replacement has nowhere else to go). One pod-GC wait serves both."""
    try:
        client.ApiextensionsV1Api(cluster.api).read_custom_resource_definition(
            "leaderworkersets.leaderworkerset.x-k8s.io"
        )
    except ApiException as exc:
        if exc.status == 404:
            pytest.skip("no LeaderWorkerSet CRD on this cluster")
        raise
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="hf-token"), string_data={"token": "x"}),
    )
    group = yaml.safe_load(EXAMPLE_405B.read_text())
    group["metadata"]["namespace"] = namespace
    name = group["metadata"]["name"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, group)
    eventually(serving(custom, namespace, name, 1), timeout=120, description="group serving")
    assert get(custom, namespace, name)["status"]["plan"]["nodesPerReplica"] == 2
    selector = f"{LLMD_LABEL}={name}"
    before = {p.metadata.name: p.metadata.uid for p in pods_of(core, namespace, selector)}
    assert len(before) == 2, before
    pods = pods_of(core, namespace, selector)
    worker = next(p for p in pods if not p.metadata.name.endswith("-0"))
    assert LWS_NAME_LABEL in worker.metadata.labels
    lost = worker.spec.node_name

    pinned = "pinned"
    body = llmd_body(
        pinned,
        scaling={"minReplicas": 1, "maxReplicas": 1},
        overrides={
            "podTemplatePatch": {"spec": {"nodeSelector": {"kubernetes.io/hostname": lost}}}
        },
    )
    body["metadata"]["namespace"] = namespace
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    eventually(serving(custom, namespace, pinned, 1), timeout=90, description="pinned serving")

    lose_node(lost)

    def stranded() -> dict[str, Any]:
        now = {p.metadata.name: p.metadata.uid for p in pods_of(core, namespace, selector)}
        assert set(now) == set(before), now
        # Both pods are new: the group was recreated as a unit, the healthy leader too.
        assert all(now[n] != before[n] for n in now), (before, now)
        found = {}
        for obj_name in (name, pinned):
            obj = get(custom, namespace, obj_name)
            status = obj.get("status") or {}
            assert status.get("readyReplicas", 0) == 0, (obj_name, status)
            assert condition(obj, "Ready")["status"] == "False", (obj_name, status["conditions"])
            # The scheduler's own reason, surfaced where `kubectl get` and alerts look.
            degraded = condition(obj, "Degraded")
            assert degraded["status"] == "True", (obj_name, degraded)
            assert "nodes are available" in degraded["message"], (obj_name, degraded)
            found[obj_name] = degraded["message"]
        return found

    found = eventually(stranded, timeout=RECOVERY_S, interval=2, description="stranded")
    print(f"while {lost} is gone: {found}")
    reasons = [e.reason for e in core.list_namespaced_event(namespace).items]
    assert "RecreateGroup" in reasons, reasons  # the LeaderWorkerSet controller's own word

    restore_node(cluster, core, lost)
    for obj_name in (name, pinned):
        eventually(serving(custom, namespace, obj_name, 1), timeout=RECOVERY_S, interval=2,
                   description=f"{obj_name} Ready again")  # fmt: skip
    pods = pods_of(core, namespace, selector)
    assert len({p.spec.node_name for p in pods}) == 2
    assert all(p.status.phase == "Running" for p in pods)
