"""Operator benchmarks on the local cluster (real control plane, kwok nodes).

    python bench/operator_scale.py [--latency-objects 50] [--objects 500] [--steady-seconds 60]

Brings the local cluster up (e2e/cluster/cluster.sh up, a no-op when it runs), adds a kwok
pool of 8 x H100 nodes large enough for every engine pod, and runs `llm-operator run` as
the chart's ServiceAccount (safety-net pass every 30 s instead of 300; the autoscaler off,
so the reconcile alone is measured). Then:

1. latency: `apply` -> child Deployment created, p50/p95 over `--latency-objects`
   LLMDeployments created one after another (a watch sees each Deployment appear);
2. scale: `--objects` LLMDeployments created at once -> all Ready: wall time, the
   operator's peak RSS (VmHWM) and CPU seconds (utime + stime);
3. steady state: API writes per minute once everything is Ready, from the operator's own
   `llm_operator_api_writes_total` and the LLMDeployments' resourceVersions.

Prints a markdown section for docs/benchmarks.md. Cleans up the namespace and the pool.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "e2e"), str(REPO / "e2e" / "cluster"), str(REPO)]

from nodes import node_manifests  # noqa: E402

from helpers import GROUP, PLURAL, VERSION, llmd_body  # noqa: E402
from operator_proc import OperatorProcess, apply_all, token_kubeconfig  # noqa: E402

STATE = Path(os.environ.get("E2E_STATE_DIR", REPO / "e2e" / ".state"))
NAMESPACE = "bench-operator"
POOL = "bench-h100"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def llmd(name: str) -> dict[str, Any]:
    body = llmd_body(name, scaling={"minReplicas": 1, "maxReplicas": 1})
    body["metadata"]["namespace"] = NAMESPACE
    return body


def proc_usage(pid: int) -> tuple[float, float]:
    """(peak RSS in MiB, CPU seconds) of a live process."""
    hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return hwm, cpu


def writes(op: OperatorProcess) -> float:
    total = 0.0
    for line in op.metrics().splitlines():
        if line.startswith("llm_operator_api_writes_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class DeploymentWatch:
    """Records when each Deployment in the namespace is first seen (a background watch)."""

    def __init__(self, apps: client.AppsV1Api) -> None:
        self.seen: dict[str, float] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(apps,), daemon=True)
        self._thread.start()

    def _run(self, apps: client.AppsV1Api) -> None:
        while not self._stop:
            w = watch.Watch()
            for event in w.stream(apps.list_namespaced_deployment, NAMESPACE, timeout_seconds=5):
                name = event["object"].metadata.name
                self.seen.setdefault(name, time.monotonic())
                if self._stop:
                    w.stop()

    def stop(self) -> None:
        self._stop = True


def ready_count(custom: client.CustomObjectsApi) -> int:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]
    return sum(
        1
        for o in items
        for c in o.get("status", {}).get("conditions", [])
        if c["type"] == "Ready" and c["status"] == "True"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-objects", type=int, default=50)
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="run the operator under tracemalloc (PYTHONTRACEMALLOC=FRAMES; slower) and "
        "print where its memory is once everything is Ready",
    )
    args = parser.parse_args()

    subprocess.run(
        [str(REPO / "e2e" / "cluster" / "cluster.sh"), "up"], check=True, stdout=sys.stderr
    )
    kubeconfig = str(STATE / "kubeconfig")
    api = config.new_client_from_config(config_file=kubeconfig)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    install = [d for d in yaml.safe_load_all((REPO / "manifests" / "install.yaml").read_text())]
    apply_all(api, [d for d in install if d and d["kind"] == "CustomResourceDefinition"])
    total = args.latency_objects + args.objects
    pool = {
        "name": POOL,
        "count": -(-total // 8),
        "instanceType": "p5.48xlarge",
        "cpu": "192",
        "memory": "2048Gi",
        "pods": "110",
        "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": 8, "memoryMiB": 81559},
    }
    bench_nodes = node_manifests({"pools": [pool]})
    apply_all(api, bench_nodes)
    apply_all(api, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
    time.sleep(3)  # the CRD is Established and kwok has marked the nodes Ready

    work = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    op = OperatorProcess(
        token_kubeconfig(kubeconfig, api, work / "kubeconfig"),
        work / "operator.log",
        # The safety-net pass every 30 s rather than 300: steady state is measured while
        # every object is still being re-checked.
        extra_env={
            "LLM_OPERATOR_RECONCILE_INTERVAL": "30",
            **({"PYTHONTRACEMALLOC": str(args.tracemalloc)} if args.tracemalloc else {}),
        },
    )
    op.start()
    assert op.proc is not None
    pid = op.proc.pid
    try:
        # 1. latency, one object after another
        dw = DeploymentWatch(apps)
        created: dict[str, float] = {}
        for i in range(args.latency_objects):
            name = f"lat-{i:03d}"
            created[name] = time.monotonic()
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, llmd(name))
            deadline = time.monotonic() + 60
            while name not in dw.seen and time.monotonic() < deadline:
                time.sleep(0.005)
        latencies = [(dw.seen[n] - t) * 1e3 for n, t in created.items() if n in dw.seen]
        dw.stop()

        # 2. scale: all at once, then wait for Ready
        start = time.monotonic()
        cpu_before = proc_usage(pid)[1]
        for i in range(args.objects):
            custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, llmd(f"obj-{i:04d}")
            )
        created_s = time.monotonic() - start
        # NOTE: under tracemalloc the operator is several times slower: its memory is
        # reported after 5 minutes whether or not everything is Ready by then.
        limit_s = 300 if args.tracemalloc else 1800
        while ready_count(custom) < total and time.monotonic() - start < limit_s:
            time.sleep(2)
        wall = time.monotonic() - start
        ready = ready_count(custom)
        rss, cpu_after = proc_usage(pid)

        # 3. steady state
        time.sleep(5)  # the last status writes land
        versions = {
            o["metadata"]["name"]: o["metadata"]["resourceVersion"]
            for o in custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)[
                "items"
            ]
        }
        w0 = writes(op)
        time.sleep(args.steady_seconds)
        w1 = writes(op)
        after = {
            o["metadata"]["name"]: o["metadata"]["resourceVersion"]
            for o in custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)[
                "items"
            ]
        }
        changed = sum(1 for n, v in versions.items() if after.get(n) != v)
        if args.tracemalloc:
            op.proc.send_signal(signal.SIGUSR2)
            time.sleep(30)  # a snapshot of a large heap takes a while
            report = [
                line.split("tracemalloc: ", 1)[1]
                for line in op.log_path.read_text(errors="replace").splitlines()
                if "tracemalloc: " in line
            ]
            print("\n".join(report), file=sys.stderr)
    finally:
        # NOTE: delete while the operator still runs: it removes its finalizer from each
        # LLMDeployment; stopped first, the namespace would hang in Terminating.
        core.delete_namespace(NAMESPACE)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                core.read_namespace(NAMESPACE)
            except client.exceptions.ApiException as err:
                if err.status == 404:
                    break
                raise
            time.sleep(2)
        op.stop()
        for node in bench_nodes:
            core.delete_node(node["metadata"]["name"])

    per_min = (w1 - w0) * 60 / args.steady_seconds
    print("## Operator at scale\n")
    print(
        f"`python bench/operator_scale.py` on the local cluster ({os.cpu_count()} cores; "
        "apiserver, etcd, controller-manager, scheduler, kwok and the operator share them). "
        "The operator runs as its ServiceAccount, full re-check every 30 s, autoscaler off.\n"
    )
    print("| measure | value |")
    print("|---|---|")
    if latencies:  # --latency-objects 0 measures none
        print(
            f"| apply -> Deployment created, p50 / p95 / max ({len(latencies)} objects, "
            f"one after another) | {statistics.median(latencies):.0f} / "
            f"{percentile(latencies, 0.95):.0f} / {max(latencies):.0f} ms |"
        )
    print(f"| {args.objects} LLMDeployments created (client, sequential) | {created_s:.1f} s |")
    print(f"| ... all {total} Ready (from the first create) | {wall:.1f} s ({ready} Ready) |")
    print(f"| operator peak RSS | {rss:.0f} MiB |")
    print(f"| operator CPU for the {args.objects} | {cpu_after - cpu_before:.1f} s |")
    print(
        f"| API writes in steady state ({args.steady_seconds:.0f} s, {total} objects) | "
        f"{per_min:.1f} per minute; {changed} LLMDeployments changed resourceVersion |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
