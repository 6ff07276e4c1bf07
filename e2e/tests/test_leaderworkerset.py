"""Multi-node replicas on the real control plane: a rendered LeaderWorkerSet runs.

The 405B example is rendered in-process the way `llmctl render` does it and applied as
it is. The LeaderWorkerSet controller that e2e/cluster/cluster.sh runs (with its
webhooks) creates the leader and worker StatefulSets, kube-scheduler places the pods on
the H100 kwok nodes and kwok makes them Running and Ready.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from helpers import Cluster, eventually
from llm_operator.catalog import load_catalog
from llm_operator.cli import load_llmdeployment
from llm_operator.render import render_for
from operator_proc import apply_all

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "llama-3.1-405b-fp8-multinode.yaml"
LWS_GROUP, LWS_VERSION, LWS_PLURAL = "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"
LWS_CRD = f"{LWS_PLURAL}.{LWS_GROUP}"
NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
H100 = "NVIDIA-H100-80GB-HBM3"


@pytest.fixture
def lws_crd(cluster: Cluster) -> None:
    """The LeaderWorkerSet CRD: the local cluster must have it; elsewhere it may not."""
    try:
        client.ApiextensionsV1Api(cluster.api).read_custom_resource_definition(LWS_CRD)
    except ApiException as exc:
        if exc.status != 404:
            raise
        if cluster.local:
            pytest.fail(f"{LWS_CRD} is not installed: e2e/cluster/cluster.sh up installs it")
        pytest.skip(f"{LWS_CRD} is not installed on E2E_KUBECONFIG's cluster")


def rendered(namespace: str) -> list[dict[str, Any]]:
    """The example's objects as `llmctl render -f` prints them, in ``namespace``."""
    objects = render_for(load_llmdeployment(EXAMPLE), load_catalog())
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
    return objects


def ready(pod: client.V1Pod) -> bool:
    conds = pod.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conds)


def test_rendered_leaderworkerset_runs_on_h100_nodes(
    cluster: Cluster,
    lws_crd: None,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    objects = rendered(namespace)
    lws = next(o for o in objects if o["kind"] == "LeaderWorkerSet")
    name = lws["metadata"]["name"]
    size = lws["spec"]["leaderWorkerTemplate"]["size"]
    replicas = lws["spec"]["replicas"]
    assert (replicas, size) == (1, 2)  # the example: one replica over two 4-GPU nodes

    apply_all(cluster.api, objects)

    def pods_running() -> list[client.V1Pod]:
        pods = core.list_namespaced_pod(namespace, label_selector=f"{NAME_LABEL}={name}").items
        assert len(pods) == replicas * size, [p.metadata.name for p in pods]
        for pod in pods:
            assert pod.status.phase == "Running", (pod.metadata.name, pod.status.phase)
            assert ready(pod), pod.metadata.name
        return list(pods)

    pods = eventually(pods_running, timeout=90, description="leader and worker pods Ready")

    by_index = {p.metadata.labels[WORKER_INDEX_LABEL]: p for p in pods}
    assert sorted(by_index) == ["0", "1"]
    assert by_index["0"].metadata.name == f"{name}-0"  # the leader
    for pod in pods:
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels["nvidia.com/gpu.product"] == H100, node.metadata.name
        (engine,) = pod.spec.containers
        assert engine.resources.requests["nvidia.com/gpu"] == "4"
        assert engine.resources.limits["nvidia.com/gpu"] == "4"
    # The LWS pod webhook ran: the worker knows where its leader is.
    worker_env = {e.name: e.value for e in by_index["1"].spec.containers[0].env or []}
    assert worker_env["LWS_LEADER_ADDRESS"].startswith(f"{name}-0.")
    assert worker_env["LWS_GROUP_SIZE"] == str(size)

    def lws_ready() -> dict[str, Any]:
        obj = custom.get_namespaced_custom_object(
            LWS_GROUP, LWS_VERSION, namespace, LWS_PLURAL, name
        )
        status = obj.get("status") or {}
        assert status.get("readyReplicas") == replicas, status
        conds = {c["type"]: c["status"] for c in status.get("conditions", [])}
        assert conds.get("Available") == "True", conds
        return status

    eventually(lws_ready, timeout=60, description="LeaderWorkerSet status readyReplicas")

    # The rendered (user-facing) Service sends traffic to the leader only.
    discovery = client.DiscoveryV1Api(cluster.api)
    service = next(o for o in objects if o["kind"] == "Service")["metadata"]["name"]
    assert service != name, "the LWS needs its own name for its headless Service"

    def service_targets_leader() -> bool:
        slices = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector=f"kubernetes.io/service-name={service}"
        ).items
        ips = [a for s in slices for e in s.endpoints or [] for a in e.addresses]
        assert ips == [by_index["0"].status.pod_ip], ips
        return True

    eventually(service_targets_leader, timeout=30, description="Service endpoints = leader")


def test_leader_address_has_its_headless_service(
    cluster: Cluster,
    lws_crd: None,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    namespace: str,
) -> None:
    objects = rendered(namespace)
    name = next(o for o in objects if o["kind"] == "LeaderWorkerSet")["metadata"]["name"]
    apply_all(cluster.api, objects)
    leaders = eventually(
        lambda: apps.read_namespaced_stateful_set(name, namespace),
        timeout=60,
        description="the leader StatefulSet",
    )
    # NOTE: the LeaderWorkerSet controller creates the headless Service after the
    # StatefulSet, sometimes a moment later (CI saw a 404 in between).
    service = eventually(
        lambda: core.read_namespaced_service(leaders.spec.service_name, namespace),
        timeout=30,
        description="the leaders' headless Service",
    )
    assert service.spec.cluster_ip == "None", service.spec.cluster_ip
