"""The real node of the local e2e cluster runs llama.cpp's llama-server for real.

e2e/cluster/node.sh joins one node (kubelet + containerd + kube-proxy on this machine)
to the local control plane, with the pinned llama-server imported under the image
reference the operator renders and the SmolLM2-135M GGUF on a read-only local
PersistentVolume. Here a hand-written pod serves that model: readiness on /health, an
OpenAI chat completion through the pod IP and the Service's ClusterIP, Prometheus
metrics on /metrics. The operator-level tests build on the same node.

Skipped when the cluster has no real node (E2E_KUBECONFIG, E2E_REAL_NODE=0).
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from helpers import eventually
from realnode import (
    ENGINE_UID,
    NODE_NAME,
    POOL,
    POOL_LABEL,
    TAINT_KEY,
    create_model_claim,
    pins,
    release_model_claim,
)

pytestmark = pytest.mark.real_engine

PINS = pins()
PORT = 8000
ENGINE_ARGS = [
    *("-m", f"/models/{PINS.model_file}"),
    *("--host", "0.0.0.0", "--port", str(PORT)),
    *("-c", "2048", "--metrics"),
]
# A container that waits for one of these never gets better: fail at once.
HOPELESS = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "CrashLoopBackOff"}


@pytest.fixture
def model_pvc(core: client.CoreV1Api, namespace: str) -> Iterator[str]:
    """A claim bound to the model PV; the PV is made Available again afterwards."""
    name = create_model_claim(core, namespace)
    try:
        yield name
    finally:
        release_model_claim(core, namespace, name)


def engine_pod(name: str, claim: str) -> client.V1Pod:
    """llama-server serving the model from the PVC, as the operator's pods run it:
    UID 65532, restricted security context, read-only root filesystem."""
    probe = client.V1Probe(
        http_get=client.V1HTTPGetAction(path="/health", port=PORT),
        period_seconds=2,
        failure_threshold=3,
    )
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": name}),
        spec=client.V1PodSpec(
            node_selector={POOL_LABEL: POOL},
            tolerations=[
                client.V1Toleration(key=TAINT_KEY, operator="Exists", effect="NoSchedule")
            ],
            automount_service_account_token=False,
            enable_service_links=False,
            termination_grace_period_seconds=5,
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=ENGINE_UID,
                run_as_group=ENGINE_UID,
                fs_group=ENGINE_UID,
                seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
            ),
            containers=[
                client.V1Container(
                    name="engine",
                    image=PINS.image,
                    image_pull_policy="IfNotPresent",
                    args=ENGINE_ARGS,
                    ports=[client.V1ContainerPort(name="http", container_port=PORT)],
                    readiness_probe=probe,
                    startup_probe=client.V1Probe(
                        http_get=client.V1HTTPGetAction(path="/health", port=PORT),
                        period_seconds=1,
                        failure_threshold=120,
                    ),
                    resources=client.V1ResourceRequirements(
                        requests={"cpu": "1", "memory": "512Mi"},
                        limits={"memory": "1Gi"},
                    ),
                    security_context=client.V1SecurityContext(
                        allow_privilege_escalation=False,
                        capabilities=client.V1Capabilities(drop=["ALL"]),
                        read_only_root_filesystem=True,
                    ),
                    volume_mounts=[
                        client.V1VolumeMount(name="model", mount_path="/models", read_only=True),
                        client.V1VolumeMount(name="tmp", mount_path="/tmp"),
                    ],
                )
            ],
            volumes=[
                client.V1Volume(
                    name="model",
                    persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                        claim_name=claim, read_only=True
                    ),
                ),
                client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource()),
            ],
        ),
    )


def http(method: str, url: str, body: Any = None, timeout: float = 60) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read()


def chat(base: str) -> dict[str, Any]:
    """One short, deterministic OpenAI chat completion."""
    status, raw = http(
        "POST",
        f"{base}/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "Name three colours."}],
            "max_tokens": 24,
            "temperature": 0,
        },
    )
    assert status == 200, raw
    result: dict[str, Any] = json.loads(raw)
    return result


def test_real_node_is_ready_with_the_machines_resources(real_node: client.V1Node) -> None:
    ready = next(c for c in real_node.status.conditions if c.type == "Ready")
    assert ready.status == "True", ready.message
    labels = real_node.metadata.labels
    assert labels[POOL_LABEL] == POOL
    assert "type" not in labels  # not one of kwok's
    assert "kwok.x-k8s.io/node" not in (real_node.metadata.annotations or {})
    assert any(t.key == TAINT_KEY and t.effect == "NoSchedule" for t in real_node.spec.taints)
    # Capacity is this machine's; allocatable is that minus kubelet's reservations.
    cpus = os.cpu_count() or 0
    mem_kib = int(re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())[1])
    capacity, allocatable = real_node.status.capacity, real_node.status.allocatable
    assert int(capacity["cpu"]) == cpus
    assert capacity["memory"] == f"{mem_kib}Ki"
    alloc_cpu = allocatable["cpu"]
    alloc_millis = int(alloc_cpu[:-1]) if alloc_cpu.endswith("m") else int(alloc_cpu) * 1000
    assert 0 < alloc_millis < cpus * 1000
    alloc_kib = int(allocatable["memory"].removesuffix("Ki"))
    assert mem_kib // 2 < alloc_kib < mem_kib
    assert real_node.status.node_info.container_runtime_version.startswith("containerd://2.")
    assert real_node.status.node_info.kubelet_version == "v1.34.4"
    images = {n for img in real_node.status.images or [] for n in img.names or []}
    assert PINS.image in images


def test_llama_server_pod_serves_the_model(
    real_node: client.V1Node, core: client.CoreV1Api, namespace: str, model_pvc: str
) -> None:
    name = "llama"
    core.create_namespaced_pod(namespace, engine_pod(name, model_pvc))
    core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1ServiceSpec(
                selector={"app": name},
                ports=[client.V1ServicePort(name="http", port=80, target_port=PORT)],
            ),
        ),
    )
    try:
        _check_serving(core, namespace, name)
    finally:
        # The PVC fixture waits for the claim, which waits for the pod.
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def _check_serving(core: client.CoreV1Api, namespace: str, name: str) -> None:
    def ready() -> client.V1Pod:
        pod = core.read_namespaced_pod(name, namespace)
        for status in pod.status.container_statuses or []:
            waiting = status.state.waiting
            if waiting and waiting.reason in HOPELESS:
                pytest.fail(f"engine container {waiting.reason}: {waiting.message}")
        conds = {c.type: c.status for c in pod.status.conditions or []}
        assert conds.get("Ready") == "True", (pod.status.phase, conds)
        return pod

    pod = eventually(ready, timeout=180, interval=1, description="llama-server pod Ready")
    assert pod.spec.node_name == NODE_NAME
    base = f"http://{pod.status.pod_ip}:{PORT}"

    status, raw = http("GET", f"{base}/health")
    assert (status, json.loads(raw)) == (200, {"status": "ok"})

    answer = chat(base)
    text = answer["choices"][0]["message"]["content"]
    assert text.strip(), answer
    assert answer["usage"]["completion_tokens"] > 0

    # The Service's ClusterIP, through kube-proxy's iptables rules.
    svc = core.read_namespaced_service(name, namespace)
    via_service = eventually(
        lambda: chat(f"http://{svc.spec.cluster_ip}:80"),
        timeout=30,
        retry_on=(AssertionError, OSError),
        description=f"chat completion via ClusterIP {svc.spec.cluster_ip}",
    )
    assert via_service["choices"][0]["message"]["content"].strip(), via_service

    status, raw = http("GET", f"{base}/metrics")
    metrics = raw.decode()
    assert status == 200
    values = {
        m[1]: float(m[2]) for m in re.finditer(r"^(llamacpp:[a-z_]+) ([0-9.e+-]+)$", metrics, re.M)
    }
    assert values["llamacpp:prompt_tokens_total"] > 0, metrics
    assert values["llamacpp:tokens_predicted_total"] >= 2 * answer["usage"]["completion_tokens"]
    for gauge in ("llamacpp:requests_processing", "llamacpp:requests_deferred"):
        assert gauge in values, metrics

    # The engine really runs as the non-root UID (its process, seen from this host).
    assert ENGINE_UID in _uids_of("llama-server")


def _uids_of(comm: str) -> set[int]:
    uids: set[int] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() != comm:
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        match = re.search(r"^Uid:\s+(\d+)", status, re.M)
        if match:
            uids.add(int(match[1]))
    return uids
