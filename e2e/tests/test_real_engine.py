"""The operator on the real node: a GGUF model planned from its header, served for real.

One LLMDeployment for the whole module: SmolLM2-135M-Instruct (Q4_1) from a claim bound
to the model PersistentVolume, `spec.model.architecture` and `quantization` as
`llmctl resolve <the .gguf>` reads them from the GGUF header (a model the catalog does
not list), llama.cpp on this machine's CPU class (`CPU-2C-24GiB`), pinned to the real
node by its nodeSelector and toleration. The real operator (the `operator_process`
fixture, as the chart's ServiceAccount) plans and renders it, the real kubelet starts
llama-server b10380 in containerd, its startup and readiness probes pass on the real
`/health`, and the operator reports Ready.

Requests go from this test process to the rendered Service's ClusterIP, which
kube-proxy's iptables rules on this machine translate to the pod's IP on the node's bridge
(`llmop0`, 10.88.0.0/24): the path a client inside the cluster takes. Prometheus finds
the pod through the apiserver (`kubernetes_sd_configs`, role pod, as its own
ServiceAccount; job `llm-engines` of e2e/cluster/cluster.sh) and the operator's
autoscaler reads the engine's real `llamacpp:*` series from it.

Skipped where the cluster has no real node (E2E_KUBECONFIG, E2E_REAL_NODE=0).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from helpers import GROUP, PLURAL, VERSION, Cluster, condition, eventually, scalar
from llm_operator.catalog import load_catalog
from operator_proc import OperatorProcess
from realnode import (
    CPU_CLASS,
    LLMD_LABEL,
    NODE_NAME,
    chat,
    complete,
    create_model_claim,
    get_text,
    metric_values,
    pins,
    release_model_claim,
    resolve_gguf,
    service_url,
    smollm2,
    wait_answering,
)

pytestmark = pytest.mark.real_engine

NAME = "smollm2"
NODE_CIDR = ipaddress.ip_network(os.environ.get("E2E_NODE_CIDR", "10.88.0.0/24"))
# The predicted per-replica rate x 0.1 (~6 tokens/s) is the capacity the autoscaler plans
# with: the few streams a 2-core machine drives without starving the engine are demand
# enough even when other jobs share the machine (the engine then makes ~10 tokens/s).
SCALING = {
    "minReplicas": 1,
    "maxReplicas": 2,
    "targetUtilization": 0.1,
    "scaleUpStabilizationSeconds": 4,
    "scaleDownStabilizationSeconds": 20,
}
LOAD_STREAMS = 3
LOAD_MAX_S = 240.0  # the load generator stops by itself after this long at most


@dataclass
class Served:
    """The module's LLMDeployment and how to reach it."""

    namespace: str
    name: str
    claim: str
    architecture: dict[str, Any]
    quantization: str
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    apps: client.AppsV1Api

    def get(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name
        )
        return obj

    def pods(self) -> list[client.V1Pod]:
        """Its pods that are not being deleted."""
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{LLMD_LABEL}={self.name}"
        ).items
        return [p for p in pods if p.metadata.deletion_timestamp is None]

    def pod(self) -> client.V1Pod:
        """Its one pod (AssertionError, which `eventually` retries, while there are more
        or none)."""
        pods = self.pods()
        assert len(pods) == 1, [(p.metadata.name, p.status.phase) for p in pods]
        return pods[0]

    def events(self, reason: str) -> list[client.CoreV1Event]:
        return [
            e
            for e in self.core.list_namespaced_event(self.namespace).items
            if e.involved_object.kind == "LLMDeployment"
            and e.involved_object.name == self.name
            and e.reason == reason
        ]

    def base(self) -> str:
        return service_url(self.core, self.namespace, self.name)

    def wait_ready(self, timeout: float = 240) -> dict[str, Any]:
        """Ready=True, rollout complete, one replica wanted and ready."""

        def ready() -> dict[str, Any]:
            obj = self.get()
            status = obj.get("status") or {}
            assert condition(obj, "Ready")["status"] == "True", status.get("conditions")
            assert condition(obj, "Progressing")["reason"] == "Complete", status.get("conditions")
            assert status.get("desiredReplicas") == status.get("readyReplicas") == 1, status
            assert status.get("observedGeneration") == obj["metadata"]["generation"]
            return obj

        return eventually(ready, timeout=timeout, interval=1, description=f"{self.name} Ready")


@pytest.fixture(scope="module")
def served(
    real_node: client.V1Node,
    operator_process: OperatorProcess,
    cluster: Cluster,
    module_namespace: str,
) -> Iterator[Served]:
    if operator_process.proc is None or operator_process.proc.poll() is not None:
        operator_process.start()
    core, custom = client.CoreV1Api(cluster.api), client.CustomObjectsApi(cluster.api)
    architecture, quantization = resolve_gguf(pins().model_path)
    claim = create_model_claim(core, module_namespace)
    body = smollm2(NAME, claim, architecture, quantization, scaling=SCALING)
    s = Served(
        module_namespace,
        NAME,
        claim,
        architecture,
        quantization,
        core,
        custom,
        client.AppsV1Api(cluster.api),
    )
    custom.create_namespaced_custom_object(GROUP, VERSION, module_namespace, PLURAL, body)
    try:
        yield s
    finally:
        try:
            custom.delete_namespaced_custom_object(GROUP, VERSION, module_namespace, PLURAL, NAME)
        except ApiException as exc:
            if exc.status != 404:
                raise
        # The claim goes once no pod mounts it; then the PV is free for the next test.
        release_model_claim(core, module_namespace, claim, timeout=240)


def test_planned_from_the_gguf_header_rendered_and_serving_on_the_real_node(
    served: Served,
) -> None:
    """Plan -> render -> the real kubelet starts llama-server -> probes pass -> Ready; then
    OpenAI chat and text completions through the Service's ClusterIP (kube-proxy)."""
    # What `llmctl resolve` read from the file is a llama-architecture Q4_1 model.
    assert served.architecture["modelType"] == "llama"
    assert served.architecture["layers"] == 30 and served.architecture["kvHeads"] == 3
    assert served.quantization == "q4_1"

    obj = served.wait_ready()
    status, plan = obj["status"], obj["status"]["plan"]
    assert (plan["gpu"], plan["engine"], plan["quantization"]) == (CPU_CLASS, "llamacpp", "q4_1")
    assert plan["maxModelLen"] == 2048
    assert condition(obj, "Planned")["status"] == "True"
    assert condition(obj, "Degraded")["status"] == "False"
    assert plan["costPerHour"] == pytest.approx(load_catalog().gpu(CPU_CLASS).price_per_hour)
    # The planner sized the weights from the header: within 25% of the file (which also
    # holds the tokenizer and metadata).
    file_gib = pins().model_path.stat().st_size / 2**30
    assert plan["weightsGibPerGpu"] == pytest.approx(file_gib, rel=0.25)

    # Rendered to fit the node: one llama.cpp thread per physical core of the class,
    # memory for the weights and exactly the KV cache it allocates.
    deployments = served.apps.list_namespaced_deployment(
        served.namespace, label_selector=f"{LLMD_LABEL}={served.name}"
    ).items
    assert len(deployments) == 1
    engine = deployments[0].spec.template.spec.containers[0]
    assert engine.image == pins().image
    args = engine.args
    assert args[args.index("--model") + 1] == f"/models/{pins().model_file}"
    assert args[args.index("--threads") + 1] == "1"
    slots = plan["maxConcurrentSequences"]
    assert args[args.index("--ctx-size") + 1] == str(slots * plan["maxModelLen"])
    requests = engine.resources.requests
    node = served.core.read_node(NODE_NAME)
    assert _millicpu(requests["cpu"]) <= _millicpu(node.status.allocatable["cpu"])
    assert _bytes(requests["memory"]) <= _bytes(node.status.allocatable["memory"])

    # The pod runs on the real node with an address on its bridge; its probes passed.
    pod = served.pod()
    assert pod.spec.node_name == NODE_NAME
    assert ipaddress.ip_address(pod.status.pod_ip) in NODE_CIDR
    (cstatus,) = pod.status.container_statuses
    assert cstatus.ready and cstatus.started and cstatus.state.running is not None
    assert engine.startup_probe.http_get.path == "/health"
    assert engine.readiness_probe.http_get.path == "/health"
    assert get_text(f"http://{pod.status.pod_ip}:8000/health").strip() == '{"status":"ok"}'
    assert status["readyReplicas"] == 1
    assert condition(obj, "Ready")["message"] == "1/1 replicas ready"

    # The Service's endpoints are that pod, ready.
    slices = (
        client.DiscoveryV1Api(served.core.api_client)
        .list_namespaced_endpoint_slice(
            served.namespace, label_selector=f"kubernetes.io/service-name={served.name}"
        )
        .items
    )
    endpoints = [e for s in slices for e in s.endpoints or []]
    assert [e.addresses for e in endpoints] == [[pod.status.pod_ip]]
    assert endpoints[0].conditions.ready

    base = served.base()
    answer = wait_answering(base)
    assert answer["choices"][0]["message"]["content"].strip(), answer
    assert answer["usage"]["completion_tokens"] > 0
    assert answer["model"] == obj["spec"]["model"]["name"]  # llama-server --alias
    text = complete(base)
    assert text["choices"][0]["text"].strip(), text
    assert text["usage"]["completion_tokens"] > 0
    # llama-server counted them (--metrics): what Prometheus will scrape.
    values = metric_values(get_text(f"http://{pod.status.pod_ip}:8000/metrics"))
    generated = answer["usage"]["completion_tokens"] + text["usage"]["completion_tokens"]
    assert values["llamacpp:tokens_predicted_total"] >= generated, values


def test_prometheus_discovers_the_pod_and_real_tokens_scale_it_up(
    served: Served, cluster: Cluster, prometheus: Any
) -> None:
    """Prometheus scrapes the pod it found through the apiserver; real load makes the
    operator's autoscaler want a second replica, which the one real node cannot hold."""
    served.wait_ready()
    pod = served.pod()
    selector = f'namespace="{served.namespace}",llmdeployment="{served.name}"'

    def discovered() -> dict[str, Any]:
        found = _targets(prometheus, "llm-engines")
        mine = [t for t in found if t["labels"].get("pod") == pod.metadata.name]
        assert mine, [t["labels"] for t in found]
        assert mine[0]["health"] == "up", mine[0]
        return mine[0]

    target = eventually(discovered, timeout=90, interval=2, description="target discovered")
    assert target["labels"]["namespace"] == served.namespace
    assert target["labels"]["llmdeployment"] == served.name
    # Found by service discovery (its meta labels), not written down as a static target.
    assert target["discoveredLabels"]["__meta_kubernetes_pod_node_name"] == NODE_NAME
    assert target["scrapeUrl"] == f"http://{pod.status.pod_ip}:8000/metrics"
    # The real engine's series, and none from the simulator for this pod.
    eventually(
        lambda: (
            scalar(prometheus, f'llamacpp:tokens_predicted_total{{{selector},job="llm-engines"}}')
            is not None
        ),
        timeout=30,
        description="llamacpp series in Prometheus",
    )
    assert not prometheus.custom_query(f'{{{selector},job="engine-sim"}}')

    load = LoadGenerator(served.base(), LOAD_STREAMS)
    load.start()
    try:

        def scaled_up() -> dict[str, Any]:
            load.check()
            status = served.get().get("status") or {}
            assert status.get("desiredReplicas") == 2, status.get("lastScalingReason")
            return status

        status = eventually(scaled_up, timeout=150, interval=1, description="scale-up to 2")
        rate = scalar(prometheus, f"sum(rate(llamacpp:tokens_predicted_total{{{selector}}}[1m]))")
        client_rate = load.tokens_per_second()

        def measured() -> dict[str, Any]:
            load.check()
            latest = served.get().get("status") or {}
            perf = latest.get("performance") or {}
            assert perf.get("tpotMs"), perf
            # The observed rate is the engine's: what the clients receive, once the rate
            # window has filled (scaling ahead may act while it still fills: the rate of
            # a load step rises for a minute, which is a rising trend).
            observed = latest.get("observedTokensPerSecond") or 0.0
            assert 0.3 * client_rate < observed < 3 * client_rate, (observed, client_rate)
            return dict(perf)

        # The real llama-server's own generation seconds and tokens, through the
        # operator's TPOT query, next to the plan's prediction at the measured load.
        perf = eventually(measured, timeout=60, interval=1, description="status.performance")
    finally:
        load.stop()
    print(
        f"scale-up: {status['lastScalingReason']}; Prometheus {rate} tokens/s, "
        f"clients {client_rate:.1f} tokens/s; performance {perf}"
    )
    # A stream's token interval as the clients saw it (LOAD_STREAMS streams share the
    # rate); llama-server's own per-slot count must agree within the windows' smoothing.
    client_tpot_ms = 1000.0 * LOAD_STREAMS / client_rate
    assert 0.3 * client_tpot_ms < perf["tpotMs"]["observed"] < 3 * client_tpot_ms, perf
    assert "ttftMs" not in perf  # llama-server counts no requests: no mean TTFT
    reason = status["lastScalingReason"]
    # ScaleUp, or MaxReplicas when the demand asks for more than maxReplicas.
    assert reason.split(":")[0] in ("ScaleUp", "MaxReplicas") and "1 -> 2 replicas" in reason
    plan_tps = float(status["plan"]["outputTokensPerSecond"])
    capacity = plan_tps * SCALING["targetUtilization"]
    assert status["observedTokensPerSecond"] > capacity, (status, capacity)
    assert rate is not None and rate > capacity
    assert condition(served.get(), "MetricsAvailable")["status"] == "True"
    assert any("1 -> 2 replicas" in e.message for e in served.events("Scaled"))

    # The second replica asks for a core the one real node no longer has.
    def unschedulable() -> client.V1Pod:
        pending = [p for p in served.pods() if p.status.phase == "Pending"]
        assert pending, [(p.metadata.name, p.status.phase) for p in served.pods()]
        scheduled = next(c for c in pending[0].status.conditions or [] if c.type == "PodScheduled")
        assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable"), scheduled
        return pending[0]

    pending = eventually(unschedulable, timeout=60, interval=1, description="2nd pod Pending")
    assert "Insufficient cpu" in next(
        c.message for c in pending.status.conditions if c.type == "PodScheduled"
    )

    def degraded() -> dict[str, Any]:
        c = condition(served.get(), "Degraded")
        assert (c["status"], c["reason"]) == ("True", "Unschedulable"), c
        return c

    c = eventually(degraded, timeout=60, interval=1, description="Degraded=Unschedulable")
    assert "Insufficient cpu" in c["message"] or "cpu" in c["message"].lower(), c
    assert served.events("Unschedulable")
    assert condition(served.get(), "Ready")["status"] == "True"  # the first still serves

    # Without load the autoscaler goes back to one replica after its window.
    def back_to_one() -> bool:
        status = served.get().get("status") or {}
        assert status.get("desiredReplicas") == 1, status.get("lastScalingReason")
        assert len(served.pods()) == 1
        assert condition(served.get(), "Degraded")["status"] == "False"
        return True

    eventually(back_to_one, timeout=240, interval=2, description="back to 1 replica")
    served.wait_ready()


def test_engine_killed_then_pod_deleted_the_deployment_recovers(served: Served) -> None:
    """SIGKILL of llama-server inside its container: the kubelet restarts it and the
    operator reports the replica unready and Degraded (EngineFailing), then Ready again.
    Deleting the pod: the Deployment's ReplicaSet makes another on the real node. Nothing
    is duplicated."""
    served.wait_ready()
    pod = served.pod()
    uid, restarts = pod.metadata.uid, pod.status.container_statuses[0].restart_count

    watch = ConditionRecorder(served)
    watch.start()
    try:
        pid = _engine_pid(uid)
        os.kill(pid, signal.SIGKILL)

        def restarted() -> client.V1Pod:
            now = served.pod()
            assert now.metadata.uid == uid  # the same pod: a container restart
            cstatus = now.status.container_statuses[0]
            assert cstatus.restart_count == restarts + 1, cstatus.restart_count
            assert cstatus.ready
            return now

        eventually(restarted, timeout=120, interval=1, description="engine restarted")
        served.wait_ready(timeout=120)
    finally:
        seen = watch.stop()
    print(f"after SIGKILL the operator reported: {seen}")
    # The operator saw the replica go unready and Degraded (the engine stopped and was
    # restarted), then Ready again and no longer Degraded.
    ready, progressing = watch.of("Ready"), watch.of("Progressing")
    degraded = watch.of("Degraded")
    assert ready[0] == ready[-1] == ("True", "Serving") and ("False", "Pending") in ready, seen
    assert progressing[-1] == ("False", "Complete"), seen
    assert ("True", "EngineFailing") in degraded and degraded[-1][0] == "False", seen
    assert served.events("EngineFailing"), "a Warning event names the stopped engine"
    assert _engine_pid(uid) != pid
    assert wait_answering(served.base())["usage"]["completion_tokens"] > 0

    served.core.delete_namespaced_pod(pod.metadata.name, served.namespace)

    def replaced() -> client.V1Pod:
        now = served.pod()
        assert now.metadata.uid != uid
        assert now.spec.node_name == NODE_NAME
        assert now.status.phase == "Running"
        assert all(c.ready for c in now.status.container_statuses or [False])
        return now

    new = eventually(replaced, timeout=180, interval=1, description="pod replaced")
    served.wait_ready(timeout=120)
    assert wait_answering(served.base())["usage"]["completion_tokens"] > 0

    # Exactly one of everything, and the old pod gone.
    selector = f"{LLMD_LABEL}={served.name}"
    ns = served.namespace

    def settled() -> bool:
        pods = served.core.list_namespaced_pod(ns, label_selector=selector).items
        assert [p.metadata.uid for p in pods] == [new.metadata.uid]
        return True

    eventually(settled, timeout=120, interval=1, description="old pod gone")
    assert len(served.apps.list_namespaced_deployment(ns, label_selector=selector).items) == 1
    assert len(served.apps.list_namespaced_replica_set(ns, label_selector=selector).items) == 1
    assert len(served.core.list_namespaced_service(ns, label_selector=selector).items) == 1
    claim = served.core.read_namespaced_persistent_volume_claim(served.claim, ns)
    assert claim.status.phase == "Bound"


# --- helpers ---------------------------------------------------------------------------------


class LoadGenerator:
    """`streams` threads sending short chat completions back to back to `base`, stopped
    by stop() or after LOAD_MAX_S; counts the completion tokens received."""

    def __init__(self, base: str, streams: int) -> None:
        self.base, self.streams = base, streams
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.tokens = 0
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self.threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.streams)
        ]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        deadline = self.started + LOAD_MAX_S
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                answer = chat(self.base, "Write a short story about a lighthouse.", 48)
            except OSError as exc:
                with self.lock:
                    self.errors.append(exc)
                return
            with self.lock:
                self.tokens += int(answer["usage"]["completion_tokens"])

    def check(self) -> None:
        with self.lock:
            if self.errors:
                raise self.errors[0]

    def tokens_per_second(self) -> float:
        with self.lock:
            return self.tokens / max(1e-9, time.monotonic() - self.started)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=120)


class ConditionRecorder:
    """Polls the LLMDeployment's Ready, Progressing and Degraded conditions in a thread
    (every 0.2 s) and keeps each change as (type, status, reason), in order."""

    TYPES = ("Ready", "Progressing", "Degraded")

    def __init__(self, served: Served) -> None:
        self.served = served
        self.seen: list[tuple[str, str, str]] = []
        self.last: dict[str, tuple[str, str, str]] = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _poll(self) -> None:
        try:
            obj = self.served.get()
        except ApiException:
            return
        for c in (obj.get("status") or {}).get("conditions") or []:
            key = (c["type"], c["status"], c["reason"])
            if c["type"] in self.TYPES and self.last.get(c["type"]) != key:
                self.last[c["type"]] = key
                self.seen.append(key)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            self._poll()
            self.stop_event.wait(0.2)

    def stop(self) -> list[tuple[str, str, str]]:
        """Stops polling and returns the changes, including the state at this moment (the
        thread's last poll may predate what the caller just waited for)."""
        self.stop_event.set()
        self.thread.join(timeout=10)
        self._poll()
        return self.seen

    def of(self, type_: str) -> list[tuple[str, str]]:
        """The (status, reason) changes of one condition type."""
        return [(status, reason) for t, status, reason in self.seen if t == type_]


def _engine_pid(pod_uid: str) -> int:
    """The host pid of llama-server in the pod (its cgroup path names the pod)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() != "llama-server":
                continue
            cgroup = (proc / "cgroup").read_text()
        except OSError:
            continue
        if f"pod{pod_uid}" in cgroup or f"pod{pod_uid.replace('-', '_')}" in cgroup:
            found.append(int(proc.name))
    assert len(found) == 1, f"llama-server processes of pod {pod_uid}: {found}"
    return found[0]


def _targets(prometheus: Any, job: str) -> list[dict[str, Any]]:
    """Prometheus's active targets of one scrape job (GET /api/v1/targets)."""
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/targets?state=active", timeout=5) as r:
        data = json.loads(r.read())["data"]
    return [t for t in data["activeTargets"] if t["scrapePool"] == job]


def _millicpu(value: str) -> int:
    return int(value[:-1]) if value.endswith("m") else int(float(value) * 1000)


def _bytes(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)
