"""`kube.Kube` under the operator's thread pool: discovery serialised, node lists shared."""

from __future__ import annotations

import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client

from llm_operator import kube as kube_module
from llm_operator.errors import TransientError
from llm_operator.kube import (
    BoundedApiClient,
    Kube,
    PodProblems,
    container_failure,
    pod_problems_of,
)


class FakeDiscovery:
    """Stands in for DynamicClient.resources; records overlapping calls, as the real
    (not thread-safe) discovery cache would corrupt itself under them."""

    def __init__(self) -> None:
        self.inside = 0
        self.overlaps = 0
        self.calls: list[tuple[str, str]] = []
        self._guard = threading.Lock()

    def get(self, api_version: str, kind: str) -> Any:
        with self._guard:
            self.inside += 1
            self.overlaps += self.inside > 1
            self.calls.append((api_version, kind))
        time.sleep(0.01)
        with self._guard:
            self.inside -= 1
        return object()


class FakeDynamic:
    def __init__(self) -> None:
        self.resources = FakeDiscovery()


def test_concurrent_lookups_never_overlap_and_resolve_once() -> None:
    kube = Kube(client.ApiClient())
    fake = FakeDynamic()
    kube.__dict__["dynamic"] = fake  # the cached_property, pre-filled
    kinds = [("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda k: kube.has_kind(*k), kinds * 20))
    assert all(results)
    assert fake.resources.overlaps == 0
    assert sorted(fake.resources.calls) == sorted(kinds)  # each kind discovered once


class CountingCore:
    def __init__(self) -> None:
        self.lists = 0

    def list_node(self) -> Any:
        self.lists += 1
        node = client.V1Node(
            metadata=client.V1ObjectMeta(name="n", labels={"nvidia.com/gpu.product": "X"}),
            status=client.V1NodeStatus(allocatable={"nvidia.com/gpu": "8"}),
            spec=client.V1NodeSpec(),
        )
        return client.V1NodeList(items=[node])


def test_node_inventory_is_listed_once_per_ttl(monkeypatch: Any) -> None:
    core = CountingCore()
    monkeypatch.setattr(client, "CoreV1Api", lambda api=None: core)
    kube = Kube(client.ApiClient(), inventory_ttl_s=60)
    first = kube.node_inventory()
    assert first.gpus_per_node == {"X": 8}
    for _ in range(50):
        assert kube.node_inventory() == first
    assert core.lists == 1
    expired = Kube(client.ApiClient(), inventory_ttl_s=0)
    expired.node_inventory()
    expired.node_inventory()
    assert core.lists == 3


def test_children_are_kept_trimmed() -> None:
    from llm_operator.kube import trim

    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "labels": {"a": "b"},
            "managedFields": [{"manager": "x"}] * 50,
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{...}" * 100,
                "keep": "me",
            },
            "ownerReferences": [{"uid": "u"}],
        },
        "spec": {"replicas": 1},
        "status": {"readyReplicas": 1},
    }
    kept = trim(obj)
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"keep": "me"}
    assert kept["spec"] == {"replicas": 1} and kept["status"] == {"readyReplicas": 1}
    assert kept["metadata"]["ownerReferences"] == [{"uid": "u"}]


def test_the_indexed_view_serves_a_pass_from_memory() -> None:
    from llm_operator.handlers import IndexedView

    child = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "m"}}
    view = IndexedView(
        {
            "children_services": {("ns", "m"): [child]},
            "children_deployments": {},
            "troubled_pods": {
                ("ns", "m"): [
                    PodProblems(unschedulable="pod m-1: 0/3 nodes are available"),
                    PodProblems(failing="pod m-0: container engine CrashLoopBackOff"),
                ]
            },
            "nodes": {None: [("NVIDIA-A10G", 1, True), (None, 0, True), ("NVIDIA-A10G", 1, False)]},
        }
    )
    assert view.children("ns", "m") == [child]
    assert view.children("ns", "other") == []
    assert view.pod_problems("ns", "m") == PodProblems(
        "pod m-1: 0/3 nodes are available", "pod m-0: container engine CrashLoopBackOff"
    )
    assert view.pod_problems("ns", "other") == PodProblems()
    inventory = view.node_inventory()
    assert inventory.gpus_per_node == {"NVIDIA-A10G": 1} and inventory.cpu_nodes == 1


def _pod(**status: Any) -> dict[str, Any]:
    """A pod as the API serves it (JSON), one container status."""
    container = {"name": "engine", "ready": False, "restartCount": 0, **status}
    return {"metadata": {"name": "m-1"}, "status": {"containerStatuses": [container]}}


KILLED = {"terminated": {"exitCode": 137, "reason": "Error"}}


def test_a_failing_engine_container_is_described() -> None:
    assert container_failure(_pod(state={"running": {}})) is None  # still loading its model
    assert container_failure(_pod(state=KILLED)) == (
        "pod m-1: container engine stopped (Error, exit code 137) after 0 restart(s)"
    )
    restarted = _pod(
        restartCount=2, state={"waiting": {"reason": "CrashLoopBackOff"}}, lastState=KILLED
    )
    message = container_failure(restarted)
    assert message is not None
    assert "exit code 137" in message and "restarted 2 time(s)" in message
    assert "CrashLoopBackOff" in message
    pull = {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}
    assert container_failure(_pod(state=pull)) == (
        "pod m-1: container engine ImagePullBackOff: not found"
    )
    healthy = _pod(ready=True, restartCount=3, lastState=KILLED)
    assert container_failure(healthy) is None  # it recovered: nothing to report


def test_pod_problems_skip_pods_being_deleted() -> None:
    refused = {
        "metadata": {"name": "m-2"},
        "status": {
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available"}
            ]
        },
    }  # fmt: skip
    going = {**_pod(state=KILLED), "metadata": {"name": "m-1", "deletionTimestamp": "now"}}
    assert pod_problems_of([going, refused]) == PodProblems(
        "pod m-2: 0/3 nodes are available", None
    )


# --- an apiserver that does not answer -------------------------------------------------------


class _Silent:
    """A TCP server on 127.0.0.1 that accepts and then says nothing (`stall`) or closes at
    once (`reset`): what a partition or a broken proxy looks like to a client."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.behaviour == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            else:
                self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("behaviour", ["stall", "reset"])
def test_a_silent_apiserver_is_a_transient_error_within_the_timeout(
    behaviour: str, monkeypatch: Any
) -> None:
    monkeypatch.setattr(kube_module, "REQUEST_TIMEOUT_S", (1.0, 1.0))
    silent = _Silent(behaviour)
    try:
        configuration = client.Configuration(host=silent.url)
        configuration.retries = 0
        kube = Kube(BoundedApiClient(configuration))
        start = time.monotonic()
        with pytest.raises(TransientError) as info:
            kube.secret_keys("ns", "hf")
        assert time.monotonic() - start < 5
        assert "no answer from the API server" in str(info.value)
    finally:
        silent.close()


def test_the_operators_api_session_is_bounded_and_logged_in_as_the_kubeconfig_says(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import logging

    import kopf

    from llm_operator import handlers

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443', "
        "insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: secret-token}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: team-a}}]\n"
    )
    from kubernetes.config import kube_config

    # NOTE: the kubernetes client reads $KUBECONFIG once, when it is imported.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    async def login() -> tuple[Any, int, str | None]:
        info = await handlers.login(
            logger=logging.getLogger("test"), settings=kopf.OperatorSettings()
        )
        assert isinstance(info, kopf.AiohttpSession)
        session = info.aiohttp_session
        try:
            return (
                info.server,
                session.connector.limit,
                session.headers.get("Authorization"),
            )
        finally:
            await session.close()

    server, limit, authorization = asyncio.run(login())
    assert server == "https://127.0.0.1:6443"
    assert limit == handlers.API_CONNECTIONS > 0  # aiohttp's 0 would mean unbounded
    assert authorization == "Bearer secret-token"
