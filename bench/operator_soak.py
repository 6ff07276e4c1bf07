"""Soak: LLMDeployments under random create/update/delete churn, with faults injected, then
the invariants (figures for docs/reliability.md).

    python bench/operator_soak.py [--objects 1000] [--minutes 15] [--seed 1]
        [--ops-per-second 2] [--no-faults] [--settle 0] [--out-json PATH]

Brings the local cluster up (e2e/cluster/cluster.sh up, a no-op when it runs; it honours
E2E_STATE_DIR and the other variables of its header), adds a kwok pool of H100 nodes with
room for every replica the churn can ask for, and runs `llm-operator run` as the chart's
ServiceAccount (safety-net pass every 30 s instead of 300; the autoscaler reads the local
Prometheus every 15 s, its default, since MetricsAvailable is part of the invariant). Then:

1. `--objects` LLMDeployments created one after another, and a bounded wait until all are
   Ready;
2. `--minutes` of churn at `--ops-per-second`: creates of new names, spec updates that
   change the plan or the rendered Deployment (quantization bf16 <-> fp8, maxModelLen,
   replica bounds) and deletes, the population kept within 10 % of `--objects`. At 1/3 of
   it kube-apiserver is SIGKILLed and down for 12 s (`faults.outage`), at 2/3 the
   operator is SIGKILLed and started again; the churn goes on meanwhile (its requests
   fail while the apiserver is down and are re-read from the server after). The
   operator's RSS (VmRSS) is sampled every 10 s;
3. convergence (bounded), then the invariants: `faults.violations` (every LLMDeployment
   Ready with MetricsAvailable, exactly one Deployment and Service each, the desired pods,
   no orphan or duplicate), no deletion left hanging, the surviving set equal to what the
   churn created and did not delete, each workload following the last spec update; zero
   writes over 60 s at rest (from 5 s after convergence, or `--settle` s more); the
   operator's RSS flat from 2/3 of the churn to the end (`leak_window`: the restarted
   process once warm; growth below `LEAK_MIB_PER_MIN`, a robust slope).

Prints a markdown section for docs/reliability.md; with --out-json, writes the raw samples.
Exits 1 when an invariant fails. Cleans up its namespace and node pool.

The short version in the e2e suite (e2e/tests/test_soak.py) runs through `soak()` here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "e2e"), str(REPO / "e2e" / "cluster"), str(REPO)]

from nodes import node_manifests  # noqa: E402

from faults import LLMD_LABEL, changes, outage, violations  # noqa: E402
from helpers import GROUP, PLURAL, VERSION, llmd_body  # noqa: E402
from operator_proc import OperatorProcess, apply_all, token_kubeconfig  # noqa: E402

STATE = Path(os.environ.get("E2E_STATE_DIR", REPO / "e2e" / ".state"))
NAMESPACE = "bench-soak"
POOL = "soak-h100"
# What the churn's requests may take; the outage makes some fail at once (refused).
REQUEST_TIMEOUT = 10
# The leak threshold. At the default 2 operations/s, 1 MiB/min is 8.5 KiB kept per
# operation: less than one LLMDeployment body as Kopf hands it over (~7 KiB of JSON with
# status and managedFields, ~30 KiB as Python dicts and strings, measured with tracemalloc),
# so anything retained per object or per event shows. RSS moves in steps (pymalloc's 1 MiB
# arenas, glibc trimming its heaps): growth below LEAK_FLOOR_MIB over the whole window is
# no evidence either way, which only matters for windows shorter than two minutes (the
# e2e test's).
LEAK_MIB_PER_MIN = 1.0
LEAK_FLOOR_MIB = 2.0
# A (re)started operator's RSS rose for 30-60 s after its first passes over every object in
# every run seen (86 -> 124..134 MiB at 100 objects): not judged.
WARMUP_S = 60.0

# The replica bounds the churn chooses from; (2, 2) takes two GPUs. Zero load: the
# autoscaler keeps minReplicas.
SCALING = ({"minReplicas": 1, "maxReplicas": 1}, {"minReplicas": 1, "maxReplicas": 2},
           {"minReplicas": 1, "maxReplicas": 3}, {"minReplicas": 2, "maxReplicas": 2})  # fmt: skip
MAX_MODEL_LENS = (4096, 8192, 16384, 32768)


# --- objects and capacity ------------------------------------------------------------------


def soak_body(name: str) -> dict[str, Any]:
    """A churn object: Llama-3.1-8B bf16 on one H100, 1-2 replicas (`helpers.llmd_body`)."""
    return llmd_body(name, scaling=dict(SCALING[1]))


def pool_nodes(objects: int, name: str = POOL) -> list[dict[str, Any]]:
    """kwok H100 nodes (8 GPUs each) for `objects` LLMDeployments under churn.

    NOTE: 1.6 GPUs per object: the population may reach 1.1 x objects, and one in four
    scaling updates asks for two replicas (in the long run ~1.25 GPUs per object); the
    rest is margin for pods whose deletion lags (the garbage collector after an outage).
    """
    pool = {
        "name": name,
        "count": math.ceil(1.6 * objects / 8) + 1,
        "instanceType": "p5.48xlarge",
        "cpu": "192",
        "memory": "2048Gi",
        "pods": "110",
        "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": 8, "memoryMiB": 81559,
                "family": "hopper", "computeMajor": 9, "computeMinor": 0},
    }  # fmt: skip
    return node_manifests({"pools": [pool]})


# --- churn ----------------------------------------------------------------------------------


def mutate(rng: random.Random, spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One random spec change that changes the plan or the rendered Deployment.

    Returns:
        (what changed, the merge patch of `spec`).
    """
    what = rng.choice(("quantization", "maxModelLen", "scaling"))
    if what == "quantization":
        return what, {"quantization": "fp8" if spec.get("quantization") == "bf16" else "bf16"}
    if what == "maxModelLen":
        current = (spec.get("context") or {}).get("maxModelLen")
        choice = rng.choice([n for n in MAX_MODEL_LENS if n != current])
        return what, {"context": {"maxModelLen": choice}}
    current = spec.get("scaling") or {}
    choices = [
        s
        for s in SCALING
        if (s["minReplicas"], s["maxReplicas"])
        != (current.get("minReplicas"), current.get("maxReplicas"))
    ]
    return what, {"scaling": dict(rng.choice(choices))}


def _failure(err: Exception) -> str | None:
    """A short name for a failed request whose fate is unknown (no answer, 5xx, 429): it
    may or may not have been applied. None for any other error (raised)."""
    if isinstance(err, ApiException):
        if err.status == 0 or err.status >= 500 or err.status == 429:
            return f"http-{err.status}"
        return None
    if isinstance(err, HTTPError | OSError):
        return "unreachable"
    return None


@dataclass
class Churn:
    """Random creates, updates and deletes in one namespace, the population kept near
    `target`, and the record of what should exist.

    Names are never reused (`<prefix>-00000`, ...), so a deleted object's leftovers can
    never be mistaken for a new one's. A request that fails without an answer (the
    apiserver down) may or may not have been applied: the churn re-reads the namespace
    before its next operation and takes the server's word.
    """

    custom: client.CustomObjectsApi
    namespace: str
    target: int
    rng: random.Random
    prefix: str = "soak"
    live: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> spec
    ops: Counter[str] = field(default_factory=Counter)  # done, by kind
    changes: Counter[str] = field(default_factory=Counter)  # updates, by field
    failed: Counter[str] = field(default_factory=Counter)  # by kind of failure
    resyncs: int = 0
    anomalies: list[str] = field(default_factory=list)  # answers no correct server gives
    deleted_at: dict[str, float] = field(default_factory=dict)  # name -> time.monotonic()
    _names: itertools.count[int] = field(default_factory=itertools.count)
    _dirty: bool = False

    def create(self) -> None:
        name = f"{self.prefix}-{next(self._names):05d}"
        body = soak_body(name)
        body["metadata"]["namespace"] = self.namespace
        self._call(
            "create",
            lambda: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body, _request_timeout=REQUEST_TIMEOUT
            ),
        )
        if not self._dirty:
            self.live[name] = body["spec"]

    def update(self) -> None:
        name = self.rng.choice(sorted(self.live))
        what, patch = mutate(self.rng, self.live[name])
        self._call(
            "update",
            lambda: self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, {"spec": patch},
                _request_timeout=REQUEST_TIMEOUT,
            ),
        )  # fmt: skip
        if not self._dirty:
            self.live[name] = {**self.live[name], **patch}
            self.changes[what] += 1

    def delete(self) -> None:
        name = self.rng.choice(sorted(self.live))
        self._call(
            "delete",
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
            ),
        )
        if not self._dirty:
            del self.live[name]
            self.deleted_at[name] = time.monotonic()

    def step(self) -> None:
        """One operation: create below 90 % of the target, delete above 110 %, else one of
        create / update / update / delete."""
        if not self.settled():
            return
        n = len(self.live)
        if n < 0.9 * self.target or n == 0:
            self.create()
        elif n > 1.1 * self.target:
            self.delete()
        else:
            self.rng.choice((self.create, self.update, self.update, self.delete))()

    def settled(self) -> bool:
        """Whether the record is the server's (re-read after a request without an answer)."""
        return not self._dirty or self.resync()

    def resync(self) -> bool:
        """Take the server's word for what exists (after a request without an answer)."""
        try:
            items = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, _request_timeout=REQUEST_TIMEOUT
            )["items"]
        except Exception as err:
            kind = _failure(err)
            if kind is None:
                raise
            self.failed[f"list {kind}"] += 1
            return False
        self.live = {
            o["metadata"]["name"]: o["spec"]
            for o in items
            if not o["metadata"].get("deletionTimestamp")
        }
        self.resyncs += 1
        self._dirty = False
        return True

    def _call(self, kind: str, request: Callable[[], Any]) -> None:
        try:
            request()
        except Exception as err:
            failure = _failure(err)
            if isinstance(err, ApiException) and err.status in (404, 409):
                # An object the record has is gone, or a never-used name exists: kept as a
                # violation; the record is re-read so that the churn goes on.
                self.anomalies.append(f"{kind} answered {err.status}: {err.reason}")
                failure = f"http-{err.status}"
            if failure is None:
                raise
            self.failed[f"{kind} {failure}"] += 1
            self._dirty = True
            return
        self.ops[kind] += 1


# --- faults and samples ---------------------------------------------------------------------


@dataclass
class Fault:
    """A fault injected at `at` (a fraction of the churn) by `inject` (blocking)."""

    name: str
    at: float
    inject: Callable[[], None]


@dataclass
class FaultRecord:
    name: str
    started_s: float  # since the churn began
    took_s: float
    error: str | None = None


def apiserver_outage(at: float = 1 / 3) -> Fault:
    """kube-apiserver SIGKILLed, down for 12 s, started again (`faults.outage`)."""
    return Fault("kube-apiserver SIGKILLed, down 12 s", at, lambda: outage("kube-apiserver"))


def operator_kill(op: OperatorProcess, at: float = 2 / 3) -> Fault:
    """The operator SIGKILLed mid-churn and started again (healthy again: the end)."""

    def inject() -> None:
        op.stop(signal.SIGKILL)
        op.start()

    return Fault("operator SIGKILLed and restarted", at, inject)


class MemoryCgroup:
    """A memory cgroup the operator runs in, limited as the chart limits its container
    (`resources.limits.memory`), so that the soak shows whether it would be OOM-killed.

    cgroup v1 (`/sys/fs/cgroup/memory/NAME`) or v2 (`/sys/fs/cgroup/NAME`); the kernel
    enforces the limit exactly as kubelet's cgroup for the container would. Its usage
    includes the page cache of the files the process writes (its log), which the kernel
    reclaims before it kills anything.
    """

    def __init__(self, name: str, limit_mib: int) -> None:
        v1 = Path("/sys/fs/cgroup/memory")
        self.v2 = not v1.is_dir()
        self.path = (Path("/sys/fs/cgroup") if self.v2 else v1) / name
        self.limit_mib = limit_mib
        try:
            self.path.mkdir(exist_ok=True)
            limit = str(limit_mib * 2**20)
            (self.path / ("memory.max" if self.v2 else "memory.limit_in_bytes")).write_text(limit)
        except OSError as err:
            raise SystemExit(
                f"--memory-limit: cannot create the memory cgroup {self.path} ({err}); run "
                "where cgroups are writable (root, or a delegated cgroup v2 subtree)"
            ) from err

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def peak_mib(self) -> float:
        """Highest usage since creation (v1 max_usage_in_bytes; v2 memory.peak)."""
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int(self._read(name)) / 2**20

    def oom_kills(self) -> int:
        """Processes the kernel killed in this cgroup for exceeding the limit."""
        text = self._read("memory.events" if self.v2 else "memory.oom_control")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        with_pids = self._read("cgroup.procs").split()
        if not with_pids:
            self.path.rmdir()


@dataclass
class Sample:
    t: float  # seconds since the churn began (negative: before it)
    rss_mib: float
    pid: int
    reconciles: float  # llm_operator_reconcile_total of this pid


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for {pid}")


def reconcile_passes(op: OperatorProcess) -> float:
    total = 0.0
    for line in op.metrics().splitlines():
        if line.startswith("llm_operator_reconcile_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Sampler:
    """The operator's VmRSS and reconcile count every `interval` s (a background thread),
    whichever process runs it (a restart changes the pid; a sample is skipped while none
    answers)."""

    def __init__(self, op: OperatorProcess, interval: float) -> None:
        self.samples: list[Sample] = []  # t: time.monotonic()
        self._op, self._interval = op, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            proc = self._op.proc
            if proc is not None and proc.poll() is None:
                try:
                    rss = vm_rss_mib(proc.pid)
                    passes = reconcile_passes(self._op)
                except (OSError, ValueError):
                    pass  # between a kill and the restart
                else:
                    self.samples.append(Sample(time.monotonic(), round(rss, 1), proc.pid, passes))
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def run_churn(
    churn: Churn,
    seconds: float,
    ops_per_second: float,
    faults: list[Fault],
    origin: float,
    progress: Callable[[str], None] = lambda _: None,
) -> list[FaultRecord]:
    """Churn for `seconds` at `ops_per_second`; each fault runs in a thread of its own at
    its time, the churn going on meanwhile. Returns when the churn and every fault ended."""
    records: list[FaultRecord] = []
    threads: list[threading.Thread] = []
    pending = sorted(faults, key=lambda f: f.at)

    def inject(fault: Fault) -> None:
        started = time.monotonic()
        record = FaultRecord(fault.name, round(started - origin, 1), 0.0)
        try:
            fault.inject()
        except Exception as err:  # reported with the result, never hidden
            record.error = f"{type(err).__name__}: {err}"
        record.took_s = round(time.monotonic() - started, 1)
        records.append(record)
        progress(f"fault done: {record}")

    step = 0
    next_report = 60.0
    while (now := time.monotonic() - origin) < seconds:
        while pending and now >= pending[0].at * seconds:
            fault = pending.pop(0)
            progress(f"{now:.0f}s: injecting {fault.name}")
            threads.append(threading.Thread(target=inject, args=(fault,), daemon=True))
            threads[-1].start()
        churn.step()
        step += 1
        if now >= next_report:
            progress(f"{now:.0f}s: {len(churn.live)} objects, ops {dict(churn.ops)}")
            next_report += 60
        delay = origin + step / ops_per_second - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    for thread in threads:
        thread.join()
    return sorted(records, key=lambda r: r.started_s)


# --- invariants -----------------------------------------------------------------------------


def _args(deployment: client.V1Deployment) -> list[str]:
    containers = deployment.spec.template.spec.containers
    engine = next((c for c in containers if c.name == "engine"), containers[0])
    return list(engine.args or [])


def _flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def soak_violations(
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
    churn: Churn,
) -> list[str]:
    """`faults.violations`, and what churn adds to it: no deletion left hanging, the
    surviving set equal to the churn's record, each status and workload following the
    last spec update (generation observed, planned quantization and maxModelLen, the
    engine's flags, replicas within the bounds and the Deployment at desiredReplicas)."""
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    names = {o["metadata"]["name"] for o in items}
    # NOTE: an object being deleted gets one sentence, not violations()'s about its status
    # (its timers are stopped: MetricsAvailable may be stale while it waits).
    terminating = {o["metadata"]["name"] for o in items if o["metadata"].get("deletionTimestamp")}
    found = [
        v
        for v in violations(custom, apps, core, namespace)
        if v.split(": ", 1)[0] not in terminating
    ]
    for o in items:
        name = o["metadata"]["name"]
        if name in terminating:
            since = churn.deleted_at.get(name)
            ago = f" {time.monotonic() - since:.0f} s ago" if since is not None else ""
            found.append(f"{name}: deleted{ago} but still there (finalizers "
                         f"{o['metadata'].get('finalizers')})")  # fmt: skip
    for name in sorted(set(churn.live) - names):
        found.append(f"{name}: created and not deleted, but gone")
    for name in sorted(names - set(churn.live) - terminating):
        found.append(f"{name}: deleted (or never created), but there")
    deployments = {
        (d.metadata.labels or {}).get(LLMD_LABEL): d
        for d in apps.list_namespaced_deployment(namespace).items
    }
    for o in items:
        name, spec = o["metadata"]["name"], o["spec"]
        if name in terminating:
            continue
        status = o.get("status") or {}
        plan = status.get("plan") or {}
        if status.get("observedGeneration") != o["metadata"].get("generation"):
            found.append(f"{name}: observedGeneration {status.get('observedGeneration')} of "
                         f"generation {o['metadata'].get('generation')}")  # fmt: skip
        want_len = spec["context"]["maxModelLen"]
        if plan.get("quantization") != spec["quantization"] or plan.get("maxModelLen") != want_len:
            found.append(f"{name}: planned {plan.get('quantization')}/{plan.get('maxModelLen')}"
                         f", spec {spec['quantization']}/{want_len}")  # fmt: skip
        desired = status.get("desiredReplicas")
        bounds = spec["scaling"]
        if desired is None or not bounds["minReplicas"] <= desired <= bounds["maxReplicas"]:
            found.append(f"{name}: desiredReplicas {desired} outside {bounds}")
        deployment = deployments.get(name)
        if deployment is None:
            continue  # violations() said so
        if deployment.spec.replicas != desired:
            found.append(f"{name}: Deployment replicas {deployment.spec.replicas}, desired "
                         f"{desired}")  # fmt: skip
        args = _args(deployment)
        fp8 = _flag(args, "--quantization") == "fp8"
        if _flag(args, "--max-model-len") != str(plan.get("maxModelLen")) or fp8 != (
            plan.get("quantization") == "fp8"
        ):
            found.append(f"{name}: engine args {args} do not follow the plan {plan}")
    return found


def converge(
    check: Callable[[], list[str]],
    timeout: float,
    interval: float = 5,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[float, list[str]]:
    """Seconds until `check` finds nothing (bounded), and what it found last."""
    start = time.monotonic()
    while True:
        try:
            found = check()
        except (ApiException, HTTPError, OSError) as err:
            found = [f"check failed: {type(err).__name__}: {err}"]
        waited = time.monotonic() - start
        if not found or waited > timeout:
            return waited, found
        progress(f"  {waited:.0f}s: {len(found)} violations, e.g. {found[0]}")
        time.sleep(interval)


def _objects(custom: client.CustomObjectsApi, namespace: str) -> dict[str, dict[str, Any]]:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    for o in items:
        o["metadata"].pop("managedFields", None)
    return {o["metadata"]["name"]: o for o in items}


def writes_by_verb(op: OperatorProcess) -> Counter[str]:
    """llm_operator_api_writes_total by its verb label."""
    out: Counter[str] = Counter()
    for line in op.metrics().splitlines():
        if line.startswith("llm_operator_api_writes_total{"):
            verb = line.split('verb="', 1)[1].split('"', 1)[0]
            out[verb] += int(float(line.rsplit(" ", 1)[1]))
    return out


@dataclass
class Rest:
    """What was written while nothing changed."""

    seconds: float
    writes_per_min: float
    by_verb: dict[str, int]  # the operator's writes, by verb
    written: list[str]  # LLMDeployments whose resourceVersion changed
    examples: dict[str, dict[str, Any]]  # a few of them: path -> [before, after]
    after_s: float = 0.0  # how long after convergence the window began


def writes_at_rest(
    op: OperatorProcess, custom: client.CustomObjectsApi, namespace: str, seconds: float
) -> Rest:
    """The operator's API writes and the LLMDeployments' changes over `seconds` with nothing
    changing (`faults.changes` says what changed in the first few)."""
    # NOTE: the counter's window encloses the listings': a write the operator makes while
    # a listing runs is counted, never missed.
    w0 = writes_by_verb(op)
    before = _objects(custom, namespace)
    time.sleep(seconds)
    after = _objects(custom, namespace)
    w1 = writes_by_verb(op)
    written = sorted(
        n
        for n, o in before.items()
        if after.get(n, {}).get("metadata", {}).get("resourceVersion")
        != o["metadata"]["resourceVersion"]
    )
    return Rest(
        seconds=seconds,
        writes_per_min=round(sum((w1 - w0).values()) * 60 / seconds, 1),
        by_verb=dict(w1 - w0),
        written=written,
        examples={
            n: {k: list(v) for k, v in changes(before[n], after.get(n, {})).items()}
            for n in written[:3]
        },
    )


def theil_sen(points: list[tuple[float, float]]) -> float:
    """The median of the pairwise slopes: one GC pause or arena release moves it little."""
    slopes = [
        (y2 - y1) / (x2 - x1)
        for (x1, y1), (x2, y2) in itertools.combinations(points, 2)
        if x2 != x1
    ]
    return statistics.median(slopes) if slopes else math.nan


def leak_window(samples: list[Sample], churn_s: float, population: int) -> list[Sample]:
    """The samples the leak is judged on: from the last third of the churn to the end of
    the run (convergence and rest included), of the last operator process once it is warm:
    it has made as many reconcile passes as there are objects (a restarted process first
    lists and resumes them all) and run for `WARMUP_S`. Its working set grows until then,
    which is no leak. Sample times count from the start of the churn."""
    last_pid = samples[-1].pid if samples else None
    mine = [s for s in samples if s.pid == last_pid]
    if not mine:
        return []
    resumed = next((s.t for s in mine if s.reconciles >= population), math.inf)
    warm = max(resumed, mine[0].t + WARMUP_S)
    return [s for s in mine if s.t >= max(churn_s * 2 / 3, warm)]


def stale_series(op: OperatorProcess, names: set[str], namespace: str) -> list[str]:
    """Per-object series of the operator's /metrics that name an object no longer there."""
    stale: list[str] = []
    for line in op.metrics().splitlines():
        if line.startswith("#") or f'namespace="{namespace}"' not in line:
            continue
        name = line.split('name="', 1)[1].split('"', 1)[0] if 'name="' in line else None
        if name is not None and name not in names:
            stale.append(line.rsplit(" ", 1)[0])
    return stale


# --- the soak -------------------------------------------------------------------------------


@dataclass
class SoakResult:
    objects: int
    churn_s: float
    ops_per_second: float
    seed: int
    initial_ready_s: float
    initial_violations: int  # left when the wait for the first Ready ended
    ops: dict[str, int]
    changes: dict[str, int]
    failed: dict[str, int]
    resyncs: int
    faults: list[FaultRecord]
    objects_at_end: int
    converge_s: float
    violations: list[str]
    rss: list[Sample]
    leak_samples: int
    leak_from_s: float  # the window's first sample (t)
    leak_window_s: float
    leak_mib_per_min: float  # Theil-Sen slope over the window
    leak_growth_mib: float  # the slope times the window
    leak_floor_mib: float  # growth below this is no evidence (LEAK_FLOOR_MIB)
    rest: Rest
    stale_metric_series: int
    wall_s: float
    memory_limit_mib: int | None = None  # the cgroup limit the operator ran under
    memory_peak_mib: float | None = None  # the cgroup's peak usage (page cache included)
    oom_kills: int = 0

    @property
    def leak_limit_mib(self) -> float:
        """LEAK_MIB_PER_MIN over the window."""
        return LEAK_MIB_PER_MIN * self.leak_window_s / 60

    @property
    def failures(self) -> list[str]:
        """Each invariant that does not hold, one sentence each."""
        out = [f"violation: {v}" for v in self.violations]
        out += [f"fault {f.name} failed: {f.error}" for f in self.faults if f.error]
        if self.leak_samples < 3 or math.isnan(self.leak_mib_per_min):
            out.append(f"RSS: {self.leak_samples} samples in the leak window, too few")
        elif self.leak_growth_mib >= max(self.leak_floor_mib, self.leak_limit_mib):
            out.append(
                f"RSS grows {self.leak_mib_per_min:.2f} MiB/min, {self.leak_growth_mib:.1f} MiB "
                f"over {self.leak_window_s:.0f} s (limit {LEAK_MIB_PER_MIN:g} MiB/min, "
                f"{self.leak_floor_mib:g} MiB at least)"
            )
        if self.oom_kills:
            out.append(
                f"the operator was OOM-killed {self.oom_kills} times at a "
                f"{self.memory_limit_mib} MiB limit (peak {self.memory_peak_mib:.0f} MiB)"
            )
        rest = self.rest
        if rest.writes_per_min or rest.written:
            out.append(f"at rest: {rest.writes_per_min:.1f} writes/min {rest.by_verb}, "
                       f"{len(rest.written)} written, e.g. {rest.examples}")  # fmt: skip
        return out


def soak(
    op: OperatorProcess,
    api: client.ApiClient,
    namespace: str,
    *,
    objects: int,
    churn_s: float,
    ops_per_second: float,
    seed: int,
    faults: Callable[[OperatorProcess], list[Fault]],
    sample_s: float = 10.0,
    ready_timeout: float = 900.0,
    converge_timeout: float = 600.0,
    rest_s: float = 60.0,
    settle_s: float = 0.0,
    leak_floor_mib: float = LEAK_FLOOR_MIB,
    progress: Callable[[str], None] = lambda _: None,
) -> SoakResult:
    """Create `objects`, churn for `churn_s` with `faults(op)` injected, converge, measure.

    The operator `op` must run and watch `namespace`, which must have room (nodes) for the
    population; what is created stays (the caller deletes the namespace).
    """
    custom, apps, core = client.CustomObjectsApi(api), client.AppsV1Api(api), client.CoreV1Api(api)
    start = time.monotonic()
    churn = Churn(custom, namespace, objects, random.Random(seed))
    sampler = Sampler(op, sample_s)
    origin = start  # the churn's start, once it has one
    try:
        for _ in range(objects):
            churn.create()
        churn.ops.clear()  # counted: the churn's operations
        ready_s, found = converge(
            lambda: violations(custom, apps, core, namespace), ready_timeout, progress=progress
        )
        progress(f"{objects} created, Ready after {ready_s:.0f}s ({len(found)} violations)")
        initial_violations = len(found)
        origin = time.monotonic()
        records = run_churn(churn, churn_s, ops_per_second, faults(op), origin, progress)
        progress(f"churn done: {len(churn.live)} objects, ops {dict(churn.ops)}")

        def check() -> list[str]:
            if not churn.settled():
                return ["the churn's record is not re-read yet"]
            found = soak_violations(custom, apps, core, namespace, churn)
            return [f"churn: {a}" for a in churn.anomalies] + found

        converge_s, found = converge(check, converge_timeout, progress=progress)
        progress(f"converged after {converge_s:.0f}s ({len(found)} violations)")
        # The last status writes of the convergence land; `settle_s` more, if asked.
        time.sleep(5 + settle_s)
        rest = replace(writes_at_rest(op, custom, namespace, rest_s), after_s=5 + settle_s)
        stale = stale_series(op, set(churn.live), namespace)
    finally:
        sampler.stop()
    samples = [replace(s, t=round(s.t - origin, 1)) for s in sampler.samples]
    window = leak_window(samples, churn_s, len(churn.live))
    slope = theil_sen([(s.t / 60, s.rss_mib) for s in window])
    window_s = window[-1].t - window[0].t if window else 0.0
    return SoakResult(
        objects=objects,
        churn_s=churn_s,
        ops_per_second=ops_per_second,
        seed=seed,
        initial_ready_s=round(ready_s, 1),
        initial_violations=initial_violations,
        ops=dict(churn.ops),
        changes=dict(churn.changes),
        failed=dict(churn.failed),
        resyncs=churn.resyncs,
        faults=records,
        objects_at_end=len(churn.live),
        converge_s=round(converge_s, 1),
        violations=found,
        rss=samples,
        leak_samples=len(window),
        leak_from_s=window[0].t if window else math.nan,
        leak_window_s=round(window_s, 1),
        leak_mib_per_min=round(slope, 3),
        leak_growth_mib=round(slope * window_s / 60, 2),
        rest=rest,
        leak_floor_mib=leak_floor_mib,
        stale_metric_series=len(stale),
        wall_s=round(time.monotonic() - start, 1),
    )


# --- report ---------------------------------------------------------------------------------


def markdown(r: SoakResult, command: str, setup: str) -> str:
    """The section for docs/reliability.md; `setup` says how the operator ran."""
    restarts = [s.t for a, s in itertools.pairwise(r.rss) if s.pid != a.pid]
    out = [
        "## Soak: churn with faults\n",
        f"`{command}` on the local cluster ({os.cpu_count()} cores shared by the control "
        f"plane, kwok, Prometheus, the engine simulator and the operator; {setup}).\n",
        "| measure | value |",
        "|---|---|",
        f"| objects (target population) / at the end | {r.objects} / {r.objects_at_end} |",
        f"| initial {r.objects} Ready | {r.initial_ready_s:.0f} s"
        + (f" ({r.initial_violations} violations left)" if r.initial_violations else "")
        + " |",
        f"| churn | {r.churn_s / 60:.1f} min at {r.ops_per_second:g} ops/s (seed {r.seed}) |",
        f"| operations done | {sum(r.ops.values())}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(r.ops.items()))
        + " (updates: "
        + ", ".join(f"{k} {v}" for k, v in sorted(r.changes.items()))
        + ") |",
        f"| requests failed (faults) | {sum(r.failed.values())}"
        + (": " + ", ".join(f"{k} {v}" for k, v in sorted(r.failed.items())) if r.failed else "")
        + f"; re-read from the server {r.resyncs} times |",
    ]
    for f in r.faults:
        out.append(f"| fault at {f.started_s:.0f} s | {f.name} (over in {f.took_s:.0f} s)"
                   f"{'; FAILED: ' + f.error if f.error else ''} |")  # fmt: skip
    out += [
        f"| converged after the churn | {r.converge_s:.0f} s |",
        f"| invariant violations | {len(r.violations)} |",
        f"| operator RSS, t = {r.leak_from_s:.0f} s to the end ({r.leak_samples} samples over "
        f"{r.leak_window_s:.0f} s; `leak_window`) | {r.leak_mib_per_min:+.2f} MiB/min, "
        f"{r.leak_growth_mib:+.1f} MiB (limit {LEAK_MIB_PER_MIN:g} MiB/min: "
        f"{max(r.leak_floor_mib, r.leak_limit_mib):.1f} MiB) |",
        f"| API writes at rest ({r.rest.seconds:.0f} s, from {r.rest.after_s:.0f} s after "
        f"convergence) | {r.rest.writes_per_min:.1f} per minute"
        f"{f' {r.rest.by_verb}' if r.rest.by_verb else ''}; {len(r.rest.written)} "
        "LLMDeployments changed resourceVersion |",
        f"| per-object metric series left for deleted objects | {r.stale_metric_series} |",
        *(
            [
                f"| operator memory cgroup (limit {r.memory_limit_mib} MiB, the chart's) | peak "
                f"{r.memory_peak_mib:.0f} MiB with page cache, peak RSS "
                f"{max((x.rss_mib for x in r.rss), default=0):.0f} MiB; OOM kills: "
                f"{r.oom_kills} |"
            ]
            if r.memory_limit_mib is not None
            else []
        ),
        f"| wall time | {r.wall_s / 60:.1f} min |",
        "",
        "Operator RSS (VmRSS; t from the start of the churn"
        + (f"; restarted at {', '.join(f'{t:.0f} s' for t in restarts)}" if restarts else "")
        + "):\n",
        "| t (s) | RSS (MiB) |",
        "|---|---|",
    ]
    every = max(1, round(60 / max(1.0, _interval(r.rss))))
    shown = [s for i, s in enumerate(r.rss) if i % every == 0 or s.t in restarts]
    out += [f"| {round(s.t)} | {s.rss_mib:.0f}{' (restarted)' if s.t in restarts else ''} |"
            for s in shown]  # fmt: skip
    if r.violations:
        out += ["", "Violations:", ""] + [f"- {v}" for v in r.violations]
    return "\n".join(out)


def _interval(samples: list[Sample]) -> float:
    gaps = [b.t - a.t for a, b in itertools.pairwise(samples)]
    return statistics.median(gaps) if gaps else 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ops-per-second", type=float, default=2.0)
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--out-json", type=Path)
    parser.add_argument(
        "--memory-limit",
        type=int,
        metavar="MIB",
        help="run the operator in a memory cgroup with this limit (the chart's is 512) and "
        "report its peak and OOM kills",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds to wait after convergence before the writes-at-rest window (default 0: "
        "measured at once; the autoscaler's 300 s scale-down window still rewrites "
        "status.lastScalingReason of objects whose metrics resumed < 300 s before)",
    )
    args = parser.parse_args()

    def progress(message: str) -> None:
        print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    subprocess.run(
        [str(REPO / "e2e" / "cluster" / "cluster.sh"), "up"], check=True, stdout=sys.stderr
    )
    kubeconfig = str(STATE / "kubeconfig")
    api = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api)
    install = [d for d in yaml.safe_load_all((REPO / "manifests" / "install.yaml").read_text())]
    apply_all(api, [d for d in install if d and d["kind"] == "CustomResourceDefinition"])
    nodes = pool_nodes(args.objects)
    apply_all(api, nodes)
    apply_all(api, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
    time.sleep(3)  # the CRD is Established and kwok has marked the nodes Ready

    work = Path(tempfile.mkdtemp(prefix="operator-soak-"))
    prometheus = f"http://127.0.0.1:{os.environ.get('E2E_PROMETHEUS_PORT', '9090')}"
    op = OperatorProcess(
        token_kubeconfig(kubeconfig, api, work / "kubeconfig"),
        work / "operator.log",
        # NOTE: the safety net every 30 s rather than 300, as in operator_scale.py: the
        # rest window sees every object re-checked twice.
        extra_env={
            "LLM_OPERATOR_RECONCILE_INTERVAL": "30",
            "LLM_OPERATOR_PROMETHEUS_URL": prometheus,
        },
    )
    cgroup = (
        MemoryCgroup(f"llm-operator-soak-{os.getpid()}", args.memory_limit)
        if args.memory_limit
        else None
    )
    op.cgroup = cgroup.path if cgroup is not None else None
    op.start()
    progress(f"operator log: {op.log_path}; {len(nodes)} nodes in pool {POOL}")

    def faults(op: OperatorProcess) -> list[Fault]:
        return [] if args.no_faults else [apiserver_outage(), operator_kill(op)]

    try:
        result = soak(
            op,
            api,
            NAMESPACE,
            objects=args.objects,
            churn_s=args.minutes * 60,
            ops_per_second=args.ops_per_second,
            seed=args.seed,
            faults=faults,
            ready_timeout=max(300.0, args.objects * 1.5),
            converge_timeout=max(300.0, args.objects * 0.9),
            settle_s=args.settle,
            progress=progress,
        )
    finally:
        # NOTE: deleted while the operator still runs: it removes its finalizer from each
        # LLMDeployment; stopped first, the namespace would hang in Terminating.
        progress("cleaning up")
        core.delete_namespace(NAMESPACE)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                core.read_namespace(NAMESPACE)
            except ApiException as err:
                if err.status == 404:
                    break
                raise
            time.sleep(2)
        op.stop()
        for node in nodes:
            core.delete_node(node["metadata"]["name"])
        memory = (
            (cgroup.limit_mib, round(cgroup.peak_mib(), 1), cgroup.oom_kills())
            if cgroup is not None
            else None
        )
        if cgroup is not None:
            cgroup.remove()
    if memory is not None:
        limit, peak, kills = memory
        result = replace(result, memory_limit_mib=limit, memory_peak_mib=peak, oom_kills=kills)

    command = "python bench/operator_soak.py " + " ".join(sys.argv[1:])
    setup = "the operator as its ServiceAccount, full re-check every 30 s, autoscaler every 15 s"
    print(markdown(result, command.strip(), setup))
    if args.out_json:
        args.out_json.write_text(
            json.dumps({**asdict(result), "failures": result.failures}, indent=1) + "\n"
        )
    for failure in result.failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
