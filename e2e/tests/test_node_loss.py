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


def test_a_lost_gpu_node_is_reported_and_its_replica_comes_back(
    operator: OperatorProcess,
    cluster: Cluster,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    lose_node: Any,
) -> None:
    name = "survivor"
    body = llmd_body(name, scaling={"minReplicas": 1, "maxReplicas": 1})
    body["metadata"]["namespace"] = namespace
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    eventually(serving(custom, namespace, name, 1), timeout=90, description="serving")
    (pod,) = pods_of(core, namespace, f"{LLMD_LABEL}={name}")
    first_node = pod.spec.node_name
    others = [
        n.metadata.name
        for n in core.list_node(label_selector=f"{POOL_LABEL}={H100_POOL}").items
        if n.metadata.name != first_node
    ]
    assert others, "the test needs a second H100 node"

    # Every H100 node goes: the replacement has nowhere to run, and status says why.
    lose_node(first_node)
    for other in others:
        lose_node(other)

    def stranded() -> dict[str, Any]:
        obj = get(custom, namespace, name)
        status = obj.get("status") or {}
        assert status.get("readyReplicas", 0) == 0, status
        ready = condition(obj, "Ready")
        assert ready["status"] == "False", ready
        pending = [p for p in pods_of(core, namespace, f"{LLMD_LABEL}={name}")
                   if p.status.phase == "Pending"]  # fmt: skip
        assert pending, "no replacement pod yet"
        text = " ".join(c["message"] for c in status.get("conditions", []))
        assert "nvidia.com/gpu" in text or "Unschedulable" in text or "node" in text, text
        return obj

    obj = eventually(stranded, timeout=RECOVERY_S, interval=2, description="reported stranded")
    messages = {c["type"]: c["message"] for c in obj["status"]["conditions"]}
    print(f"while no H100 node exists: {messages}")

    # One node comes back: the replica runs there, and the LLMDeployment is Ready again.
    restore_node(cluster, core, others[0])
    obj = eventually(serving(custom, namespace, name, 1), timeout=RECOVERY_S, interval=2,
                     description="Ready again")  # fmt: skip
    (pod,) = pods_of(core, namespace, f"{LLMD_LABEL}={name}")
    assert pod.spec.node_name == others[0]
    assert condition(obj, "Degraded")["status"] == "False", obj["status"]["conditions"]


def test_a_lost_node_of_a_multi_node_replica_recreates_the_whole_group(
    operator: OperatorProcess,
    cluster: Cluster,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    lose_node: Any,
) -> None:
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
    body = yaml.safe_load(EXAMPLE_405B.read_text())
    body["metadata"]["namespace"] = namespace
    name = body["metadata"]["name"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    eventually(serving(custom, namespace, name, 1), timeout=120, description="group serving")
    plan = get(custom, namespace, name)["status"]["plan"]
    assert plan["nodesPerReplica"] == 2
    selector = f"{LLMD_LABEL}={name}"
    before = {p.metadata.name: p.metadata.uid for p in pods_of(core, namespace, selector)}
    assert len(before) == 2, before
    pods = pods_of(core, namespace, selector)
    worker = next(p for p in pods if not p.metadata.name.endswith("-0"))
    assert LWS_NAME_LABEL in worker.metadata.labels

    # The worker's node goes: the leader's pod is fine, yet the group is one replica.
    lost = worker.spec.node_name
    lose_node(lost)

    def recreated() -> dict[str, Any]:
        pods = pods_of(core, namespace, selector)
        now = {p.metadata.name: p.metadata.uid for p in pods}
        assert set(now) == set(before), now
        # Both pods are new: the group was recreated as a unit, the leader included.
        assert all(now[n] != before[n] for n in now), (before, now)
        # The group's pods go on separate nodes and only one H100 node is left: the
        # new group cannot run, and the status says so.
        obj = get(custom, namespace, name)
        assert condition(obj, "Ready")["status"] == "False", obj["status"]["conditions"]
        degraded = condition(obj, "Degraded")
        assert degraded["status"] == "True" and "nodes are available" in degraded["message"]
        return obj

    obj = eventually(recreated, timeout=RECOVERY_S, interval=2, description="group recreated")
    print(f"group without its second node: {condition(obj, 'Degraded')['message']}")
    reasons = [e.reason for e in core.list_namespaced_event(namespace).items]
    assert "RecreateGroup" in reasons, reasons  # the LeaderWorkerSet controller's own word

    restore_node(cluster, core, lost)
    eventually(serving(custom, namespace, name, 1), timeout=RECOVERY_S, interval=2,
               description="the group Ready again")  # fmt: skip
    pods = pods_of(core, namespace, selector)
    assert len({p.spec.node_name for p in pods}) == 2
    assert all(p.status.phase == "Running" for p in pods)
