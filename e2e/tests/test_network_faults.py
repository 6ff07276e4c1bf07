"""The operator behind a real fault proxy: latency, stalls, connection resets and
timeouts between it and the apiserver, and between it and Prometheus.

Shopify's toxiproxy (e2e/toxiproxy.py) runs on loopback with one proxy to the apiserver
and one to Prometheus; the operator process is given only the proxies' addresses (its
kubeconfig's server, LLM_OPERATOR_PROMETHEUS_URL), while the test itself talks to the
cluster directly. Promises checked: reconciles back off and retry and everything
converges once the network heals (`faults.violations` is empty, the operator never
exited); the autoscaler holds replicas while metrics are unreliable and says why in
MetricsAvailable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client
from test_operator import create, get, wait_ready

from faults import violations
from helpers import GROUP, PLURAL, VERSION, Cluster, condition, eventually
from helpers import llmd_body as llmd
from operator_proc import OperatorProcess
from toxiproxy import Toxiproxy

API_TIMEOUT_S = 4  # the operator's LLM_OPERATOR_API_TIMEOUT here (30 by default)
QUERY_TIMEOUT_S = 2


def host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


@pytest.fixture
def proxied(
    cluster: Cluster, own_operator: Callable[..., OperatorProcess], tmp_path: Path
) -> Iterator[tuple[Toxiproxy, OperatorProcess]]:
    """toxiproxy with proxies "apiserver" and "prometheus", and an operator using them."""
    with Toxiproxy(tmp_path / "toxiproxy.log") as proxy:
        server = yaml.safe_load(Path(cluster.kubeconfig).read_text())["clusters"][0]["cluster"]
        listen = proxy.proxy("apiserver", host_port(server["server"]))
        prometheus = proxy.proxy("prometheus", host_port(cluster.prometheus_url))
        op = own_operator(
            {
                "LLM_OPERATOR_API_TIMEOUT": str(API_TIMEOUT_S),
                "LLM_OPERATOR_RECONCILE_INTERVAL": "20",
                "LLM_OPERATOR_AUTOSCALE_INTERVAL": "2",
                "LLM_OPERATOR_PROMETHEUS_URL": f"http://{prometheus}",
                "LLM_OPERATOR_QUERY_TIMEOUT": str(QUERY_TIMEOUT_S),
            },
            # NOTE: the apiserver's serving certificate names 127.0.0.1, where it listens.
            server=f"https://{listen}",
        )
        yield proxy, op


def assert_alive(op: OperatorProcess) -> None:
    assert op.proc is not None and op.proc.poll() is None, f"operator exited:\n{op.tail()}"


def converged(
    custom: client.CustomObjectsApi, apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str
) -> bool:
    found = violations(custom, apps, core, namespace)
    assert not found, found
    return True


def test_apiserver_latency_stalls_and_resets_are_retried_until_converged(
    proxied: tuple[Toxiproxy, OperatorProcess],
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    proxy, op = proxied
    first = create(custom, namespace, llmd("net-0"))
    wait_ready(custom, namespace, first)

    # Latency (1 s +- 0.5 s each way): slower, still correct.
    with (
        proxy.toxic("apiserver", "latency", "downstream", latency=1000, jitter=500),
        proxy.toxic("apiserver", "latency", "upstream", latency=500),
    ):
        create(custom, namespace, llmd("net-latency"))
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, first, {"spec": {"quantization": "fp8"}}
        )
        eventually(
            lambda: get(custom, namespace, first)["status"]["plan"]["quantization"] == "fp8",
            timeout=90,
            interval=1,
            description="re-planned through 1 s of latency",
        )
    # A stall: nothing comes back for longer than the operator's API timeout.
    with proxy.toxic("apiserver", "timeout", "downstream", timeout=0):
        create(custom, namespace, llmd("net-stall"))
        time.sleep(3 * API_TIMEOUT_S)
        assert_alive(op)
    # Connection resets: every connection is torn down (TCP RST) as data arrives.
    with proxy.toxic("apiserver", "reset_peer", "upstream", timeout=0):
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, first, {"spec": {"quantization": "bf16"}}
        )
        time.sleep(2 * API_TIMEOUT_S)
        assert_alive(op)
    # Healed: everything converges, with nothing duplicated or orphaned.
    eventually(
        lambda: get(custom, namespace, first)["status"]["plan"]["quantization"] == "bf16",
        timeout=120,
        interval=1,
        description="the change made during the resets is applied",
    )
    eventually(
        lambda: converged(custom, apps, core, namespace),
        timeout=120,
        interval=2,
        description="converged after the network healed",
    )
    assert_alive(op)


def test_prometheus_stalls_and_resets_hold_replicas_and_say_so(
    proxied: tuple[Toxiproxy, OperatorProcess],
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    proxy, op = proxied
    name = create(
        custom, namespace, llmd("net-metrics", scaling={"minReplicas": 1, "maxReplicas": 3})
    )
    wait_ready(custom, namespace, name)

    def metrics(status: str) -> dict[str, str]:
        obj = get(custom, namespace, name)
        found = condition(obj, "MetricsAvailable")
        assert found["status"] == status, found
        return found

    eventually(lambda: metrics("True"), timeout=60, description="metrics read")
    replicas = get(custom, namespace, name)["status"]["desiredReplicas"]
    # Latency under the query timeout is no fault.
    with proxy.toxic("prometheus", "latency", "downstream", latency=QUERY_TIMEOUT_S * 250):
        time.sleep(3 * QUERY_TIMEOUT_S)
        assert metrics("True")
    for kind, words in (("timeout", "did not answer within"), ("reset_peer", "reset")):
        with proxy.toxic("prometheus", kind, "downstream", timeout=0):
            held = eventually(lambda: metrics("False"), timeout=30, description=f"{kind} seen")
            assert words in held["message"], held
            time.sleep(3 * QUERY_TIMEOUT_S)  # several ticks without metrics
            assert get(custom, namespace, name)["status"]["desiredReplicas"] == replicas
        eventually(lambda: metrics("True"), timeout=60, description=f"metrics back after {kind}")
    assert_alive(op)
