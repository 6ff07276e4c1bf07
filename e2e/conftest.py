"""Session plumbing for the e2e tests.

* Every test under e2e/ gets the ``e2e`` marker.
* ``cluster`` brings the local kwok cluster up with e2e/cluster/cluster.sh (and takes it
  down at the end if it started it, unless ``E2E_KEEP_CLUSTER=1``), or, when
  ``E2E_KUBECONFIG`` is set (kind, a real cluster), uses that cluster and starts only the
  engine simulator + Prometheus locally (unless ``E2E_PROMETHEUS_URL`` and
  ``E2E_SIM_URL`` point at running ones).
* On the local cluster, ``cluster`` first removes what ``make demo`` left running (the
  namespace ``demo``: its LLMDeployments hold kwok GPU capacity and the real node's CPU and
  model volume that the tests need), saying so on the terminal.
* ``crds`` installs crds/*.yaml; ``namespace`` is a fresh namespace per test and
  ``module_namespace`` one per test module, deleted after.
* ``real_node`` is the local cluster's real node (skips where there is none).
* A failed e2e test gets a dump of nodes, pods, events and LLMDeployments in its report.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from helpers import GROUP, PLURAL, VERSION, Cluster, clear_load, eventually
from operator_proc import OperatorProcess, token_kubeconfig
from realnode import NODE_NAME, free_model_pv

E2E_DIR = Path(__file__).resolve().parent
REPO = E2E_DIR.parent
CLUSTER_SH = E2E_DIR / "cluster" / "cluster.sh"
CRD_DIR = REPO / "crds"
STATE_DIR = Path(os.environ.get("E2E_STATE_DIR", E2E_DIR / ".state"))

_api_key = pytest.StashKey[client.ApiClient]()
_ns_key = pytest.StashKey[str]()
_operator_key = pytest.StashKey[OperatorProcess]()
_module_ns_key = pytest.StashKey[dict[str, str]]()
DEMO_NAMESPACE = "demo"  # e2e/demo.py


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER_SH), *args], cwd=REPO, text=True, capture_output=True, check=False
    )


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    keep = os.environ.get("E2E_KEEP_CLUSTER") == "1"
    prom_port = os.environ.get("E2E_PROMETHEUS_PORT", "9090")
    sim_port = os.environ.get("E2E_SIM_PORT", "9400")
    prometheus_url = os.environ.get("E2E_PROMETHEUS_URL", f"http://127.0.0.1:{prom_port}")
    sim_url = os.environ.get("E2E_SIM_URL", f"http://127.0.0.1:{sim_port}")
    external = os.environ.get("E2E_KUBECONFIG")
    stop: tuple[str, ...] = ()
    if external:
        kubeconfig = str(Path(external).resolve())
        if not ("E2E_PROMETHEUS_URL" in os.environ and "E2E_SIM_URL" in os.environ):
            _check(_run("obs-up", kubeconfig), "cluster.sh obs-up")
            stop = ("obs-down",)
    else:
        kubeconfig = str(STATE_DIR / "kubeconfig")
        was_up = _run("status").returncode == 0
        if not was_up:
            stop = ("down",)
        proc = subprocess.run([str(CLUSTER_SH), "up"], cwd=REPO, text=True, check=False)
        if proc.returncode != 0:
            if stop and not keep:
                _run(*stop)
            raise RuntimeError("e2e/cluster/cluster.sh up failed (see the output above)")
    api = config.new_client_from_config(config_file=kubeconfig)
    request.config.stash[_api_key] = api
    if not external:
        _clear_demo(request.config, api, sim_url)
    try:
        yield Cluster(kubeconfig, prometheus_url, sim_url, api, local=not external)
    finally:
        api.close()
        if stop and not keep:
            _check(_run(*stop), f"cluster.sh {stop[0]}")


def _clear_demo(config: pytest.Config, api: client.ApiClient, sim_url: str) -> None:
    """Delete the namespace `make demo` leaves running, and wait until it is gone.

    NOTE: its LLMDeployments hold most of the kwok GPU nodes and the real node's CPU and
    model volume, and the tests' operator would reconcile and autoscale them (the demo's
    simulated load included). The tests bring no capacity of their own: they expect the
    cluster of e2e/cluster/nodes.yaml, so the demo makes way. `make demo` creates it again.
    """
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    try:
        core.read_namespace(DEMO_NAMESPACE)
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    note = (
        f"e2e: deleting namespace {DEMO_NAMESPACE} (left by make demo) so that the tests get "
        "the cluster's GPU nodes and the real node; make demo creates it again"
    )
    if reporter is not None:
        reporter.write_line(note, yellow=True)
    try:
        llmds = custom.list_namespaced_custom_object(GROUP, VERSION, DEMO_NAMESPACE, PLURAL)
    except ApiException as exc:  # no CRD yet
        if exc.status != 404:
            raise
        llmds = {"items": []}
    for obj in llmds["items"]:
        name = obj["metadata"]["name"]
        with contextlib.suppress(OSError, ValueError):  # no simulator, or no load for it
            clear_load(sim_url, DEMO_NAMESPACE, name)
        # The demo's operator is gone: nothing would remove Kopf's finalizer.
        if obj["metadata"].get("finalizers"):
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, DEMO_NAMESPACE, PLURAL, name, {"metadata": {"finalizers": None}}
            )
    try:
        core.delete_namespace(DEMO_NAMESPACE, propagation_policy="Background")
    except ApiException as exc:
        if exc.status not in (404, 409):  # gone, or already terminating
            raise

    def gone() -> bool:
        try:
            core.read_namespace(DEMO_NAMESPACE)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    start = time.monotonic()
    eventually(gone, timeout=180, interval=1, description=f"namespace {DEMO_NAMESPACE} deleted")
    free_model_pv(core)
    if reporter is not None:
        reporter.write_line(
            f"e2e: namespace {DEMO_NAMESPACE} gone ({time.monotonic() - start:.0f}s)"
        )


@pytest.fixture(scope="session")
def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api)


@pytest.fixture(scope="session")
def apps(cluster: Cluster) -> client.AppsV1Api:
    return client.AppsV1Api(cluster.api)


@pytest.fixture(scope="session")
def custom(cluster: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api)


@pytest.fixture(scope="session")
def prometheus(cluster: Cluster) -> Any:
    from prometheus_api_client import PrometheusConnect

    prom = PrometheusConnect(url=cluster.prometheus_url, disable_ssl=True)

    # NOTE: not prom.check_prometheus_connection(): it asks for "/", the web UI, which the
    # e2e build of Prometheus leaves out (e2e/cluster/tools.sh); /-/ready is the API's.
    def ready() -> bool:
        with urllib.request.urlopen(f"{cluster.prometheus_url}/-/ready", timeout=5) as resp:
            return resp.status == 200

    eventually(ready, timeout=30, retry_on=(AssertionError, OSError), description="prometheus")
    return prom


def crd_files() -> list[Path]:
    return sorted(CRD_DIR.glob("*.yaml"))


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> list[str]:
    """Install (create or replace) every CRD in crds/ and wait until it is Established."""
    files = crd_files()
    if not files:
        pytest.skip("crds/ has no CRD yet")
    ext = client.ApiextensionsV1Api(cluster.api)
    names: list[str] = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            name = doc["metadata"]["name"]
            try:
                ext.create_custom_resource_definition(doc)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                current = ext.read_custom_resource_definition(name)
                doc["metadata"]["resourceVersion"] = current.metadata.resource_version
                ext.replace_custom_resource_definition(name, doc)
            names.append(name)

    def established() -> bool:
        for name in names:
            conds = ext.read_custom_resource_definition(name).status.conditions or []
            assert any(c.type == "Established" and c.status == "True" for c in conds), name
        return True

    eventually(established, timeout=30, description="CRDs established")
    return names


@pytest.fixture(scope="session")
def operator_process(
    request: pytest.FixtureRequest, cluster: Cluster, crds: list[str], tmp_path_factory: Any
) -> Iterator[OperatorProcess]:
    """The real `llm-operator run`, authenticated as the chart's ServiceAccount.

    The safety-net pass runs every 30 s here (300 s by default; child changes are watched,
    so a test that sees a revert within a few seconds proves the watch did it) and the
    autoscaler every 2 s (15 s by default), reading the e2e Prometheus.
    """
    work = tmp_path_factory.mktemp("operator")
    kubeconfig = token_kubeconfig(cluster.kubeconfig, cluster.api, work / "kubeconfig")
    op = OperatorProcess(
        kubeconfig,
        work / "operator.log",
        extra_env={
            "LLM_OPERATOR_RECONCILE_INTERVAL": "30",
            "LLM_OPERATOR_AUTOSCALE_INTERVAL": "2",
            "LLM_OPERATOR_PROMETHEUS_URL": cluster.prometheus_url,
            "LLM_OPERATOR_QUERY_TIMEOUT": "2",
            # A Secret created or fixed during a test is seen within 5 s, not 30.
            "LLM_OPERATOR_SECRET_CACHE_TTL": "5",
        },
    )
    op.start()
    request.config.stash[_operator_key] = op
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def operator(operator_process: OperatorProcess) -> OperatorProcess:
    """The operator, running (restarted if an earlier test stopped it)."""
    if operator_process.proc is None or operator_process.proc.poll() is not None:
        operator_process.start()
    return operator_process


@pytest.fixture
def own_operator(
    cluster: Cluster, crds: list[str], operator_process: OperatorProcess, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start an operator of the test's own, in place of the session's (one operator at a
    time; the `operator` fixture restarts the session's for later tests); stopped after.

    The returned function takes the environment to add, the log format and, optionally,
    the server its kubeconfig names (a proxy in front of the apiserver).
    """
    started: list[OperatorProcess] = []

    def start(
        extra_env: dict[str, str], *, log_format: str = "plain", server: str | None = None
    ) -> OperatorProcess:
        operator_process.stop()
        kubeconfig = token_kubeconfig(cluster.kubeconfig, cluster.api, tmp_path / "kubeconfig")
        if server is not None:
            doc = yaml.safe_load(kubeconfig.read_text())
            doc["clusters"][0]["cluster"]["server"] = server
            kubeconfig.write_text(yaml.safe_dump(doc))
        op = OperatorProcess(
            kubeconfig, tmp_path / "operator.log", extra_env=extra_env, log_format=log_format
        )
        started.append(op)
        op.start()
        return op

    try:
        yield start
    finally:
        for op in started:
            op.stop()


def _new_namespace(core: client.CoreV1Api) -> str:
    name = f"e2e-{uuid.uuid4().hex[:10]}"
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"llm-operator.io/e2e": "true"})
        )
    )
    # Pods need the default ServiceAccount, which kube-controller-manager adds shortly.
    eventually(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        description=f"default ServiceAccount in {name}",
    )
    return name


def _delete_namespace(core: client.CoreV1Api, name: str) -> None:
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def namespace(request: pytest.FixtureRequest, core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = _new_namespace(core)
    request.node.stash[_ns_key] = name
    try:
        yield name
    finally:
        _delete_namespace(core, name)


@pytest.fixture(scope="module")
def module_namespace(request: pytest.FixtureRequest, core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace shared by the tests of one module (one deployment they all use),
    deleted (without waiting) after the last of them."""
    name = _new_namespace(core)
    request.config.stash.setdefault(_module_ns_key, {})[request.node.nodeid] = name
    try:
        yield name
    finally:
        _delete_namespace(core, name)


@pytest.fixture(scope="session")
def real_node(cluster: Cluster, core: client.CoreV1Api) -> client.V1Node:
    """The local cluster's real node (e2e/cluster/node.sh); skips where there is none."""
    if not cluster.local:
        pytest.skip("the real node belongs to the local cluster (not E2E_KUBECONFIG)")
    try:
        return core.read_node(NODE_NAME)
    except ApiException as exc:
        if exc.status == 404 and os.environ.get("E2E_REAL_NODE", "1") == "0":
            pytest.skip("E2E_REAL_NODE=0: the cluster has no real node")
        raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and item.get_closest_marker("e2e") is not None:
        api = item.config.stash.get(_api_key, None)
        if api is not None:
            namespace = item.stash.get(_ns_key, None)
            if namespace is None and isinstance(item, pytest.Item):
                module = item.getparent(pytest.Module)
                modules = item.config.stash.get(_module_ns_key, {})
                namespace = modules.get(module.nodeid) if module is not None else None
            try:
                dump = _dump_cluster(api, namespace)
            except Exception as exc:  # the dump must never hide the failure
                dump = f"(cluster dump failed: {exc!r})"
            report.sections.append(("cluster state", dump))
        op = item.config.stash.get(_operator_key, None)
        if op is not None:
            report.sections.append(("operator log (tail)", op.tail()))
    return report


def _dump_cluster(api: client.ApiClient, namespace: str | None) -> str:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    out: list[str] = ["== nodes"]
    for node in core.list_node().items:
        alloc = node.status.allocatable or {}
        ready = next((c.status for c in node.status.conditions or [] if c.type == "Ready"), "?")
        out.append(
            f"{node.metadata.name:16} ready={ready} gpu={alloc.get('nvidia.com/gpu', '-')} "
            f"cpu={alloc.get('cpu')} mem={alloc.get('memory')} "
            f"product={(node.metadata.labels or {}).get('nvidia.com/gpu.product', '-')}"
        )
    if namespace is None:
        return "\n".join(out)
    out.append(f"== pods in {namespace}")
    for pod in core.list_namespaced_pod(namespace).items:
        conds = ", ".join(
            f"{c.type}={c.status}{f' ({c.reason}: {c.message})' if c.reason else ''}"
            for c in pod.status.conditions or []
        )
        out.append(
            f"{pod.metadata.name} phase={pod.status.phase} node={pod.spec.node_name} [{conds}]"
        )
    out.append(f"== events in {namespace}")
    events = sorted(
        core.list_namespaced_event(namespace).items,
        key=lambda e: str(e.last_timestamp or e.event_time or ""),
    )
    for ev in events:
        obj = ev.involved_object
        out.append(f"{ev.type} {obj.kind}/{obj.name} {ev.reason}: {ev.message}")
    out.append(f"== llmdeployments in {namespace}")
    try:
        llmds = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        out.extend(yaml.safe_dump(obj, sort_keys=False) for obj in llmds)
    except ApiException as exc:
        out.append(f"(not listed: {exc.status} {exc.reason})")
    return "\n".join(out)
