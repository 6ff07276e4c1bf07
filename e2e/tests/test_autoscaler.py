"""The autoscaler end to end: simulator load -> Prometheus -> operator -> Deployment replicas.

The engine simulator serves at most Ready pods x the plan's predicted tokens/s and queues
the rest; Prometheus scrapes it every 2 s; the operator (tick every 2 s) reads it through
prometheus-api-client. Windows are shortened in the specs so the suite stays in minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from helpers import (
    GROUP,
    PLURAL,
    VERSION,
    Cluster,
    clear_load,
    condition,
    eventually,
    llmd_body,
    prometheus_pid,
    set_load,
    stop_prometheus,
)
from llm_operator.catalog import load_catalog
from operator_proc import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "e2e" / "cluster" / "cluster.sh"
STATE_DIR = Path(os.environ.get("E2E_STATE_DIR", REPO / "e2e" / ".state"))
LLMD_LABEL = "serving.llm-operator.io/llmdeployment"
H100 = "NVIDIA-H100-80GB-HBM3"
CATALOG = load_catalog()
DOWN_WINDOW_S = 20


def body(name: str, **spec: Any) -> dict[str, Any]:
    """The e2e LLMDeployment (one H100 per replica) with short autoscaler windows."""
    scaling = {
        "minReplicas": 1,
        "maxReplicas": 4,
        "scaleUpStabilizationSeconds": 4,
        "scaleDownStabilizationSeconds": DOWN_WINDOW_S,
        **spec.pop("scaling", {}),
    }
    return llmd_body(name, scaling=scaling, **spec)


class Scaled:
    """One LLMDeployment under test: create it, read it, offer it load."""

    def __init__(
        self,
        cluster: Cluster,
        custom: client.CustomObjectsApi,
        apps: client.AppsV1Api,
        namespace: str,
        obj: dict[str, Any],
    ) -> None:
        self.cluster, self.custom, self.apps, self.namespace = cluster, custom, apps, namespace
        self.name = obj["metadata"]["name"]
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, {**obj, "metadata": {**obj["metadata"]}}
        )
        self.peak = 0

    def get(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name
        )
        return obj

    def condition(self, type_: str) -> dict[str, Any]:
        return condition(self.get(), type_)

    def replicas(self) -> int:
        """The Deployment's replica count (tracking the highest seen)."""
        n = int(self.apps.read_namespaced_deployment(self.name, self.namespace).spec.replicas)
        self.peak = max(self.peak, n)
        return n

    def per_replica(self) -> float:
        """The plan's predicted output tokens/s of one replica (the simulator's capacity)."""
        return float(self.get()["status"]["plan"]["outputTokensPerSecond"])

    def load(self, replicas_worth: float) -> float:
        """Offer the load that `replicas_worth` replicas serve at the target utilisation."""
        utilization = float(self.get()["spec"]["scaling"]["targetUtilization"])  # defaulted
        tps = replicas_worth * self.per_replica() * utilization
        set_load(self.cluster.sim_url, self.namespace, self.name, tps)
        return tps

    def wait_replicas(self, n: int, timeout: float) -> None:
        def ready() -> bool:
            status = self.get().get("status", {})
            assert self.replicas() == n, f"Deployment has {self.replicas()} replicas, want {n}"
            assert status.get("readyReplicas") == n, status.get("readyReplicas")
            return True

        eventually(ready, timeout=timeout, interval=1, description=f"{self.name}: {n} replicas")


@pytest.fixture
def scaled(
    cluster: Cluster,
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    namespace: str,
) -> Iterator[Any]:
    made: list[Scaled] = []

    def make(obj: dict[str, Any]) -> Scaled:
        s = Scaled(cluster, custom, apps, namespace, obj)
        made.append(s)
        eventually(
            lambda: s.get().get("status", {}).get("readyReplicas") == 1,
            timeout=90,
            interval=1,
            description=f"{s.name} serving",
        )
        return s

    try:
        yield make
    finally:
        for s in made:
            clear_load(cluster.sim_url, namespace, s.name)


def restart_observability(cluster: Cluster) -> None:
    args = ["up"] if cluster.local else ["obs-up", cluster.kubeconfig]
    subprocess.run([str(CLUSTER_SH), *args], cwd=REPO, check=True, capture_output=True)


def test_load_step_scales_up_then_down_only_after_the_window(
    scaled: Any, core: client.CoreV1Api, namespace: str
) -> None:
    s = scaled(body("step"))
    s.load(2.6)  # needs 3 replicas at the target utilisation
    s.wait_replicas(3, timeout=150)
    pods = core.list_namespaced_pod(namespace, label_selector=f"{LLMD_LABEL}={s.name}").items
    assert len(pods) == 3
    for pod in pods:
        assert pod.status.phase == "Running"
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels["nvidia.com/gpu.product"] == H100
    status = s.get()["status"]
    assert status["observedTokensPerSecond"] > 0
    assert status["capacityTokensPerSecond"] > 0
    assert status["costPerMillionTokens"] > 0
    assert s.condition("MetricsAvailable")["status"] == "True"

    dropped = time.monotonic()
    s.load(0.5)
    s.wait_replicas(1, timeout=240)
    assert time.monotonic() - dropped >= DOWN_WINDOW_S, "scaled down inside the window"
    assert s.peak <= 4


def test_a_spare_replica_is_kept_beyond_what_the_load_needs(scaled: Any) -> None:
    s = scaled(body("spare", scaling={"spareReplicas": 1}))
    s.load(0.5)  # half a replica's worth at the target: one replica would do
    s.wait_replicas(2, timeout=120)
    assert "2 replicas" in s.get()["status"]["lastScalingReason"]
    time.sleep(DOWN_WINDOW_S + 5)  # and it stays: the spare is not scaled away
    assert s.replicas() == 2 and s.peak == 2


def test_load_beyond_the_budget_stops_at_the_budget(
    scaled: Any, core: client.CoreV1Api, namespace: str
) -> None:
    price = CATALOG.gpu("H100").price_per_hour  # one H100 per replica
    s = scaled(body("budget", budget={"maxCostPerHour": round(price * 2.5, 2)}))
    s.load(4)

    def limited() -> dict[str, Any]:
        c = s.condition("BudgetLimited")
        assert c["status"] == "True", c
        return c

    c = eventually(limited, timeout=150, interval=1, description="BudgetLimited")
    assert "budget" in c["message"].lower(), c["message"]
    s.wait_replicas(2, timeout=120)
    events = core.list_namespaced_event(namespace).items
    assert any(e.reason == "BudgetLimited" and e.involved_object.name == s.name for e in events)
    for _ in range(5):  # a few more ticks: it stays at what the budget buys
        assert s.replicas() == 2
        time.sleep(1)
    assert s.peak == 2


def test_prometheus_outage_holds_replicas_and_flips_metrics_available(
    cluster: Cluster, scaled: Any
) -> None:
    if prometheus_pid(STATE_DIR) is None:
        pytest.skip("Prometheus is not the one e2e/cluster/cluster.sh runs (E2E_PROMETHEUS_URL)")
    s = scaled(body("outage"))
    s.load(1.8)
    s.wait_replicas(2, timeout=150)
    s.load(0)  # demand falls as the metrics vanish: nothing may scale down without data
    stop_prometheus(STATE_DIR)
    try:

        def unavailable() -> dict[str, Any]:
            c = s.condition("MetricsAvailable")
            assert (c["status"], c["reason"]) == ("False", "NoMetrics"), c
            return c

        eventually(unavailable, timeout=60, interval=1, description="MetricsAvailable=False")
        waited = time.monotonic()
        while time.monotonic() - waited < DOWN_WINDOW_S + 10:  # longer than the down window
            assert s.replicas() == 2, "scaled down without metrics"
            time.sleep(2)
    finally:
        restart_observability(cluster)
    eventually(
        lambda: s.condition("MetricsAvailable")["status"] == "True",
        timeout=90,
        interval=1,
        description="MetricsAvailable=True again",
    )


def test_operator_restart_mid_window_does_not_scale_down(
    operator: OperatorProcess, scaled: Any
) -> None:
    s = scaled(body("restart", scaling={"scaleDownStabilizationSeconds": 40}))
    s.load(2.6)
    s.wait_replicas(3, timeout=150)
    dropped = time.monotonic()
    s.load(0.5)
    operator.stop(signal.SIGKILL)
    operator.start()
    while time.monotonic() - dropped < 30:  # well inside the 40 s window, after the restart
        assert s.replicas() == 3, "the restarted operator scaled down inside the window"
        time.sleep(2)
    # The restarted operator sees the low demand and waits its window out (that the
    # scale-down then happens is the load-step test's).
    reason = s.get()["status"]["lastScalingReason"]
    assert reason.startswith("StabilizingDown:"), reason
