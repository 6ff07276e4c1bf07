"""The e2e cluster itself: CRD validation, GPU scheduling on kwok nodes, engine metrics."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from helpers import GROUP, PLURAL, VERSION, Cluster, clear_load, eventually, scalar, set_load

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "llama-3.1-8b-a10g-vllm.yaml"
LLMD_LABEL = "serving.llm-operator.io/llmdeployment"
ENGINE_LABEL = "serving.llm-operator.io/engine"
GPU_TOLERATION = client.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")


def deployment(
    name: str,
    *,
    replicas: int = 1,
    gpus: int = 0,
    node_selector: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> client.V1Deployment:
    pod_labels = {"app": name, **(labels or {})}
    resources = client.V1ResourceRequirements(requests={"cpu": "100m", "memory": "128Mi"})
    if gpus:
        resources = client.V1ResourceRequirements(
            requests={"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": str(gpus)},
            limits={"nvidia.com/gpu": str(gpus)},
        )
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=pod_labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=pod_labels),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="engine", image="vllm/vllm-openai:latest", resources=resources
                        )
                    ],
                    node_selector=node_selector,
                    tolerations=[GPU_TOLERATION] if gpus else None,
                ),
            ),
        ),
    )


def pods_of(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"app={app}").items)


def condition(pod: client.V1Pod, kind: str) -> client.V1PodCondition | None:
    return next((c for c in pod.status.conditions or [] if c.type == kind), None)


# --- the CRD -------------------------------------------------------------------------------


def test_apiserver_accepts_the_crd_and_enforces_its_validation(
    crds: list[str], custom: client.CustomObjectsApi, namespace: str
) -> None:
    assert f"{PLURAL}.{GROUP}" in crds
    valid: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    valid["metadata"]["namespace"] = namespace
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, valid)
    # Structural-schema defaulting ran on the server.
    assert created["spec"]["quantization"] == "bf16"

    invalid = copy.deepcopy(valid)
    invalid["metadata"]["name"] = "bad-quantization"
    invalid["spec"]["quantization"] = "int3"
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, invalid)
    assert info.value.status == 422
    message = json.loads(info.value.body)["message"]
    assert 'spec.quantization: Unsupported value: "int3"' in message, message


# --- scheduling on the fake GPU nodes ----------------------------------------------------


def test_gpu_pod_is_scheduled_on_a_matching_kwok_node_and_runs(
    apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str
) -> None:
    apps.create_namespaced_deployment(
        namespace,
        deployment("a10g", gpus=1, node_selector={"nvidia.com/gpu.product": "NVIDIA-A10G"}),
    )

    def running() -> client.V1Pod:
        pods = pods_of(core, namespace, "a10g")
        assert len(pods) == 1, [p.metadata.name for p in pods]
        pod = pods[0]
        assert pod.status.phase == "Running", pod.status.phase
        ready = condition(pod, "Ready")
        assert ready is not None and ready.status == "True"
        return pod

    pod = eventually(running, timeout=60, description="the A10G pod runs")
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.name.startswith("gpu-a10g-")
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-A10G"
    assert node.status.allocatable["nvidia.com/gpu"] == "1"

    eventually(
        lambda: (
            apps.read_namespaced_deployment_status("a10g", namespace).status.available_replicas == 1
        ),
        timeout=30,
        description="the Deployment is available",
    )


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(
    apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str
) -> None:
    apps.create_namespaced_deployment(namespace, deployment("nine-gpus", gpus=9))

    def unschedulable() -> client.V1Pod:
        pods = pods_of(core, namespace, "nine-gpus")
        assert len(pods) == 1, [p.metadata.name for p in pods]
        pod = pods[0]
        scheduled = condition(pod, "PodScheduled")
        assert scheduled is not None and scheduled.status == "False"
        assert scheduled.reason == "Unschedulable", scheduled.reason
        assert "nvidia.com/gpu" in (scheduled.message or ""), scheduled.message
        return pod

    pod = eventually(unschedulable, timeout=30, description="the 9-GPU pod is Unschedulable")
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None


# --- engine metrics through Prometheus -----------------------------------------------------


def test_prometheus_returns_the_simulated_token_rate_of_one_llmdeployment(
    cluster: Cluster,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    prometheus: Any,
    namespace: str,
) -> None:
    name = "chat"
    labels = {LLMD_LABEL: name, ENGINE_LABEL: "vllm"}
    apps.create_namespaced_deployment(namespace, deployment(name, replicas=2, labels=labels))

    def ready_pods() -> bool:
        pods = pods_of(core, namespace, name)
        assert len(pods) == 2
        for pod in pods:
            ready = condition(pod, "Ready")
            assert ready is not None and ready.status == "True", pod.metadata.name
        return True

    eventually(ready_pods, timeout=60, description="2 Ready engine pods")

    selector = f'namespace="{namespace}",llmdeployment="{name}"'
    tokens = f"sum(rate(vllm:generation_tokens_total{{{selector}}}[10s]))"
    waiting = f"sum(vllm:num_requests_waiting{{{selector}}})"
    try:
        # Within capacity (2 replicas x 1000 tokens/s): everything is served.
        set_load(cluster.sim_url, namespace, name, 600, per_replica_capacity=1000)

        def served(expected: float) -> float:
            value = scalar(prometheus, tokens)
            assert value is not None, f"no series for {tokens}"
            assert value == pytest.approx(expected, rel=0.05), value
            return value

        eventually(lambda: served(600), timeout=60, interval=1, description=tokens)
        assert scalar(prometheus, waiting) == 0

        # Over capacity: served tokens/s is capped at 2000, the rest waits.
        set_load(cluster.sim_url, namespace, name, 5000, per_replica_capacity=1000)
        eventually(lambda: served(2000), timeout=60, interval=1, description=tokens)
        eventually(
            lambda: (scalar(prometheus, waiting) or 0) > 0,
            timeout=30,
            description=f"{waiting} > 0",
        )
    finally:
        clear_load(cluster.sim_url, namespace, name)
