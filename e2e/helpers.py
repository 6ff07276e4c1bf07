"""Helpers for the e2e tests: polling instead of sleeps, the simulator's load API, PromQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")

GROUP, VERSION, PLURAL = "serving.llm-operator.io", "v1alpha1", "llmdeployments"


@dataclass(frozen=True)
class Cluster:
    kubeconfig: str
    prometheus_url: str
    sim_url: str
    api: client.ApiClient
    local: bool  # the kwok cluster of e2e/cluster, not E2E_KUBECONFIG


# Exceptions that mean "not yet": a failed assertion or a transient API error.
RETRYABLE: tuple[type[BaseException], ...] = (AssertionError, ApiException, ConnectionError)


def eventually(
    fn: Callable[[], T],
    timeout: float = 60.0,
    interval: float = 0.5,
    description: str | None = None,
    retry_on: tuple[type[BaseException], ...] = RETRYABLE,
) -> T:
    """Call ``fn`` until it returns without raising, and return what it returned.

    ``fn`` signals "not yet" by raising (typically a failed ``assert``); any exception in
    ``retry_on`` is retried, others propagate at once. A return value of ``False`` or
    ``None`` also counts as "not yet", so ``eventually(lambda: x.ready)`` works. After
    ``timeout`` seconds the last error is raised as an AssertionError.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    attempts = 0
    while True:
        attempts += 1
        try:
            result = fn()
            if result is not None and result is not False:
                return result
            last = AssertionError(f"returned {result!r}")
        except retry_on as exc:
            last = exc
        if time.monotonic() >= deadline:
            what = description or getattr(fn, "__name__", "condition")
            raise AssertionError(
                f"{what} did not hold within {timeout:g}s ({attempts} attempts); "
                f"last error: {type(last).__name__}: {last}"
            ) from last
        time.sleep(interval)


def _http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def set_load(
    sim_url: str,
    namespace: str,
    name: str,
    output_tokens_per_second: float,
    per_replica_capacity: float | None = None,
    latency_factor: float | None = None,
) -> dict[str, Any]:
    """Offer ``output_tokens_per_second`` to LLMDeployment ``namespace/name`` in the simulator
    (whose engines take ``latency_factor`` x the planner's latencies)."""
    body: dict[str, Any] = {"outputTokensPerSecond": output_tokens_per_second}
    if per_replica_capacity is not None:
        body["perReplicaCapacity"] = per_replica_capacity
    if latency_factor is not None:
        body["latencyFactor"] = latency_factor
    result: dict[str, Any] = _http("PUT", f"{sim_url}/load/{namespace}/{name}", body)
    return result


def clear_load(sim_url: str, namespace: str, name: str) -> None:
    _http("DELETE", f"{sim_url}/load/{namespace}/{name}")


def sim_state(sim_url: str) -> dict[str, Any]:
    """What the simulator serves per LLMDeployment (keys ``namespace/name``)."""
    result: dict[str, Any] = _http("GET", f"{sim_url}/state")
    return result


def scalar(prometheus: Any, query: str) -> float | None:
    """The single value of an instant PromQL query, or None when it returns no series."""
    result = prometheus.custom_query(query=query)
    if not result:
        return None
    assert len(result) == 1, f"{query} returned {len(result)} series"
    return float(result[0]["value"][1])


def prometheus_pid(state_dir: Path) -> int | None:
    """The pid of the Prometheus that e2e/cluster/cluster.sh started, if it runs."""
    try:
        pid = int((state_dir / "prometheus.pid").read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def stop_prometheus(state_dir: Path) -> None:
    """Stop the e2e Prometheus (the autoscaler then sees no metrics)."""
    pid = prometheus_pid(state_dir)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        eventually(lambda: prometheus_pid(state_dir) is None or None, timeout=30,
                   description="prometheus stopped")  # fmt: skip


REPO = Path(__file__).resolve().parent.parent


def kubectl(kubeconfig: str, *args: str) -> str:
    """Run the pinned kubectl (`make tools`), else the one on PATH; return its stdout."""
    bin_dir = subprocess.run(
        [str(REPO / "e2e" / "cluster" / "tools.sh"), "--print-bin-dir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    exe = Path(bin_dir) / "kubectl"
    cmd = [str(exe) if exe.exists() else "kubectl", "--kubeconfig", kubeconfig, *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def llmd_body(name: str, **spec: Any) -> dict[str, Any]:
    """A small LLMDeployment: Llama-3.1-8B bf16 on one H100, 1-2 replicas; `spec` replaces
    top-level spec fields."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
            "quantization": "bf16",
            "engine": "vllm",
            "context": {"maxModelLen": 8192},
            "workload": {"inputTokens": 1024, "outputTokens": 256},
            "hardware": {"gpuTypes": ["H100"]},
            "scaling": {"minReplicas": 1, "maxReplicas": 2},
            **spec,
        },
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    """Condition `type_` of a custom object's status; AssertionError (retried by
    `eventually`) while it is not there."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    raise AssertionError(f"no {type_} condition yet: {obj.get('status')}")
