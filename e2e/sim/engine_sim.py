"""Engine metrics simulator for the e2e cluster (not shipped in the package).

kwok runs no containers, so nothing would expose the serving engines' Prometheus
metrics. This process stands in for every engine at once: for each Running pod of an
LLMDeployment (label ``serving.llm-operator.io/llmdeployment``) on a kwok node (label
``type=kwok``; a pod on a real node exposes its engine's own) it exposes the metrics the
real engine exposes, with the real names and types, labelled ``namespace``,
``llmdeployment`` and ``pod`` (the target labels a PodMonitor relabelling produces), on
one ``/metrics`` endpoint that the local Prometheus scrapes.

Which engine a pod runs comes from its ``serving.llm-operator.io/engine`` label
(``vllm`` | ``tgi`` | ``llamacpp``, default vllm). Metric names, from the engines' sources:

* vLLM (v1 engine, ``vllm/v1/metrics/loggers.py``): counters ``vllm:generation_tokens_total``,
  ``vllm:prompt_tokens_total``, ``vllm:request_success_total``; gauges
  ``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``
  (the KV-cache gauge was ``vllm:gpu_cache_usage_perc`` before v0.10; not emitted).
* TGI (router, ``docs/source/reference/metrics.md``): histograms
  ``tgi_request_generated_tokens`` and ``tgi_request_input_length``; counters
  ``tgi_request_count`` and ``tgi_request_success`` (no ``_total`` suffix, as the Rust
  exporter writes them, hence typed untyped here); gauges ``tgi_queue_size`` and
  ``tgi_batch_current_size``.
* llama.cpp server (``tools/server``, ``--metrics``): counters
  ``llamacpp:prompt_tokens_total``, ``llamacpp:tokens_predicted_total``,
  ``llamacpp:prompt_seconds_total``, ``llamacpp:tokens_predicted_seconds_total``; gauges
  ``llamacpp:predicted_tokens_seconds``, ``llamacpp:requests_processing``,
  ``llamacpp:requests_deferred``.

Offered load is set per LLMDeployment over HTTP:

    PUT    /load/<namespace>/<name>  {"outputTokensPerSecond": X, "perReplicaCapacity": Y?,
                                      "promptTokensPerOutputToken": R?, "latencyFactor": F?}
    GET    /load                     all loads;   GET /load/<namespace>/<name>  one load
    DELETE /load/<namespace>/<name>  back to zero load
    GET    /state                    what each LLMDeployment serves now (JSON)
    GET    /metrics, GET /healthz

Per-replica capacity (output tokens/s) is ``perReplicaCapacity`` when given, else the
LLMDeployment's ``status.plan.outputTokensPerSecond``, else ``--default-capacity``. Served
tokens/s = min(load, Ready pods x capacity), spread evenly over the Ready pods; the rest
shows up as waiting (queued) requests.

Latencies: each finished request measured what the plan predicts at its pod's load
(``status.plan.loadCurve`` at the requests the pod runs, with the plan's fleet calibration
divided out) times ``latencyFactor`` (1 by default), exported as vLLM's TTFT and
per-request TPOT histograms, TGI's mean time per token and llama.cpp's generation seconds:
a test sets how far the engines are from the planner and checks that the operator measures
it and `llmctl calibrate` fits it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from llm_operator.api.v1alpha1 import LoadPoint
from llm_operator.autoscaler.fidelity import at_load

LLMD_LABEL = "serving.llm-operator.io/llmdeployment"
ENGINE_LABEL = "serving.llm-operator.io/engine"
KWOK_NODE_LABEL = "type=kwok"  # e2e/cluster/nodes.py labels every fake node
MODEL_ANNOTATION = "serving.llm-operator.io/model"
GROUP, VERSION, PLURAL = "serving.llm-operator.io", "v1alpha1", "llmdeployments"
ENGINES = ("vllm", "tgi", "llamacpp")
TARGET_LABELS = ["namespace", "llmdeployment", "pod"]
TOKEN_BUCKETS = [1.0, 10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0]
SECONDS_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]

log = logging.getLogger("engine-sim")


@dataclass
class Load:
    output_tokens_per_second: float = 0.0
    per_replica_capacity: float | None = None
    prompt_tokens_per_output_token: float | None = None
    latency_factor: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "outputTokensPerSecond": self.output_tokens_per_second,
            "perReplicaCapacity": self.per_replica_capacity,
            "promptTokensPerOutputToken": self.prompt_tokens_per_output_token,
            "latencyFactor": self.latency_factor,
        }


@dataclass
class PodState:
    namespace: str
    name: str
    llmd: str
    engine: str
    model: str
    ready: bool = False
    # cumulative counters
    generation_tokens: float = 0.0
    prompt_tokens: float = 0.0
    requests_finished: float = 0.0
    generation_seconds: float = 0.0
    prompt_seconds: float = 0.0
    ttft_seconds: float = 0.0  # sums over finished requests (the histograms' _sum)
    tpot_seconds: float = 0.0
    # gauges
    served_tps: float = 0.0
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0

    def labels(self) -> list[str]:
        return [self.namespace, self.llmd, self.name]


@dataclass
class GroupState:
    ready: int = 0
    running_pods: int = 0
    capacity_per_replica: float = 0.0
    capacity_source: str = ""
    offered: float = 0.0
    served: float = 0.0
    waiting_requests: float = 0.0
    pods: list[str] = field(default_factory=list)


class Simulator:
    def __init__(
        self,
        default_capacity: float,
        prompt_ratio: float,
        tokens_per_request: float,
        stream_tps: float,
    ) -> None:
        self.default_capacity = default_capacity
        self.prompt_ratio = prompt_ratio
        self.tokens_per_request = tokens_per_request
        self.stream_tps = stream_tps
        self.lock = threading.Lock()
        self.loads: dict[tuple[str, str], Load] = {}
        self.pods: dict[str, PodState] = {}  # by pod uid
        self.plan_capacity: dict[tuple[str, str], float] = {}
        self.plan_curve: dict[tuple[str, str], list[LoadPoint]] = {}
        self.plan_calibration: dict[tuple[str, str], tuple[float, float]] = {}
        self.groups: dict[tuple[str, str], GroupState] = {}

    # -- cluster view -------------------------------------------------------------------
    def refresh(self, core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
        # NOTE: raw JSON, not the client's models: with a thousand pods and LLMDeployments
        # (bench/operator_scale.py) building models took a CPU core every second, which
        # the operator under benchmark was short of.
        pods = _items(core.list_pod_for_all_namespaces(label_selector=LLMD_LABEL, **RAW))
        # NOTE: only kwok's nodes run nothing; a pod on a real node (the local cluster's
        # real-cpu-0) runs its engine, which Prometheus scrapes itself.
        nodes = _items(core.list_node(label_selector=KWOK_NODE_LABEL, **RAW))
        fake = {n["metadata"]["name"] for n in nodes}
        plan_capacity: dict[tuple[str, str], float] = {}
        plan_curve: dict[tuple[str, str], list[LoadPoint]] = {}
        plan_calibration: dict[tuple[str, str], tuple[float, float]] = {}
        try:
            llmds = _items(custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **RAW))
        except ApiException as exc:  # CRD not installed yet
            if exc.status != 404:
                raise
            llmds = []
        for obj in llmds:
            meta = obj.get("metadata", {})
            plan = (obj.get("status") or {}).get("plan") or {}
            tps = plan.get("outputTokensPerSecond")
            key = (meta.get("namespace", ""), meta.get("name", ""))
            if isinstance(tps, int | float) and tps > 0:
                plan_capacity[key] = float(tps)
            if plan.get("loadCurve"):
                plan_curve[key] = [LoadPoint.model_validate(p) for p in plan["loadCurve"]]
            calibration = plan.get("calibration") or {}
            plan_calibration[key] = (
                float(calibration.get("prefill", 1.0)),
                float(calibration.get("decode", 1.0)),
            )
        seen: dict[str, tuple[dict[str, Any], bool]] = {}
        for pod in pods:
            meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
            if status.get("phase") != "Running" or meta.get("deletionTimestamp"):
                continue
            if spec.get("nodeName") not in fake:
                continue
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or []
            )
            seen[meta["uid"]] = (meta, ready)
        with self.lock:
            self.plan_capacity = plan_capacity
            self.plan_curve = plan_curve
            self.plan_calibration = plan_calibration
            for uid in list(self.pods):
                if uid not in seen:
                    del self.pods[uid]
            for uid, (meta, ready) in seen.items():
                state = self.pods.get(uid)
                if state is None:
                    labels = meta.get("labels") or {}
                    engine = labels.get(ENGINE_LABEL, "vllm")
                    annotations = meta.get("annotations") or {}
                    state = PodState(
                        namespace=meta["namespace"],
                        name=meta["name"],
                        llmd=labels[LLMD_LABEL],
                        engine=engine if engine in ENGINES else "vllm",
                        model=annotations.get(MODEL_ANNOTATION, labels[LLMD_LABEL]),
                    )
                    self.pods[uid] = state
                state.ready = ready

    # -- load model ---------------------------------------------------------------------
    def capacity_for(self, key: tuple[str, str]) -> tuple[float, str]:
        load = self.loads.get(key)
        if load is not None and load.per_replica_capacity:
            return load.per_replica_capacity, "load"
        if key in self.plan_capacity:
            return self.plan_capacity[key], "status.plan"
        return self.default_capacity, "default"

    def advance(self, dt: float) -> None:
        with self.lock:
            by_group: dict[tuple[str, str], list[PodState]] = {}
            for pod in self.pods.values():
                by_group.setdefault((pod.namespace, pod.llmd), []).append(pod)
            groups: dict[tuple[str, str], GroupState] = {}
            for key, pods in by_group.items():
                load = self.loads.get(key, Load())
                capacity, source = self.capacity_for(key)
                ready = [p for p in pods if p.ready]
                offered = max(load.output_tokens_per_second, 0.0)
                served = min(offered, capacity * len(ready))
                ratio = (
                    load.prompt_tokens_per_output_token
                    if load.prompt_tokens_per_output_token is not None
                    else self.prompt_ratio
                )
                # Unserved tokens/s queue up as requests: one request streams
                # stream_tps tokens/s, so a backlog of (offered - served) tokens/s is
                # (offered - served) / stream_tps requests that nobody runs.
                waiting_total = (offered - served) / self.stream_tps
                max_running = max(capacity / self.stream_tps, 1.0)
                share = served / len(ready) if ready else 0.0
                factor = load.latency_factor or 1.0
                curve = self.plan_curve.get(key)
                # The engine's speed is the planner's own times latencyFactor: a fleet
                # calibration the plan includes is divided out (it changes the prediction,
                # not the engine).
                prefill_cal, decode_cal = self.plan_calibration.get(key, (1.0, 1.0))
                for pod in pods:
                    pod.served_tps = share if pod.ready else 0.0
                    pod.running = pod.served_tps / self.stream_tps
                    holders = ready or pods
                    pod.waiting = waiting_total / len(holders) if pod in holders else 0.0
                    pod.kv_usage = min(1.0, pod.running / max_running)
                    gen = pod.served_tps * dt
                    finished = gen / self.tokens_per_request
                    # What a finished request measured: the plan's prediction at the
                    # pod's load (its loadCurve), times the load's latencyFactor, so a
                    # test knows exactly how far the engines are from the planner.
                    ttft, tpot = self._latencies(curve, pod.running)
                    pod.generation_tokens += gen
                    pod.prompt_tokens += gen * ratio
                    pod.requests_finished += finished
                    ttft *= factor / prefill_cal
                    tpot *= factor / decode_cal
                    pod.ttft_seconds += finished * ttft
                    pod.tpot_seconds += finished * tpot
                    if gen > 0:
                        # llama-server adds each slot's generation time: tokens x TPOT.
                        pod.generation_seconds += gen * tpot
                        pod.prompt_seconds += dt * 0.05
                groups[key] = GroupState(
                    ready=len(ready),
                    running_pods=len(pods),
                    capacity_per_replica=capacity,
                    capacity_source=source,
                    offered=offered,
                    served=served,
                    waiting_requests=waiting_total,
                    pods=sorted(p.name for p in pods),
                )
            self.groups = groups

    def _latencies(self, curve: list[LoadPoint] | None, running: float) -> tuple[float, float]:
        """(TTFT, TPOT) in seconds at `running` requests in flight: the plan's curve, or
        without one 100 ms and one stream's token interval."""
        if not curve:
            return 0.1, 1.0 / self.stream_tps
        point = at_load(curve, max(running, 1.0))
        return point.ttft_ms / 1000, point.tpot_ms / 1000

    def snapshot(self) -> list[PodState]:
        with self.lock:
            return [PodState(**vars(p)) for p in self.pods.values()]

    def state_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                f"{ns}/{name}": {
                    "readyReplicas": g.ready,
                    "runningPods": g.running_pods,
                    "perReplicaCapacity": g.capacity_per_replica,
                    "capacitySource": g.capacity_source,
                    "offeredTokensPerSecond": g.offered,
                    "servedTokensPerSecond": g.served,
                    "waitingRequests": g.waiting_requests,
                    "pods": g.pods,
                }
                for (ns, name), g in sorted(self.groups.items())
            }


class EngineCollector(Collector):
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def collect(self) -> Iterable[Metric]:
        pods = self.sim.snapshot()
        yield from self._vllm([p for p in pods if p.engine == "vllm"])
        yield from self._tgi([p for p in pods if p.engine == "tgi"])
        yield from self._llamacpp([p for p in pods if p.engine == "llamacpp"])

    def _vllm(self, pods: list[PodState]) -> Iterable[Metric]:
        labels = [*TARGET_LABELS, "model_name", "engine"]
        gen = CounterMetricFamily(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels=labels
        )
        prompt = CounterMetricFamily(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels=labels
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*labels, "finished_reason"],
        )
        running = GaugeMetricFamily(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            labels=labels,
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            labels=labels,
        )
        kv = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels=labels
        )
        ttft = HistogramMetricFamily(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels=labels,
        )
        tpot = HistogramMetricFamily(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            labels=labels,
        )
        for p in pods:
            values = [*p.labels(), p.model, "0"]
            gen.add_metric(values, p.generation_tokens)
            prompt.add_metric(values, p.prompt_tokens)
            success.add_metric([*values, "stop"], p.requests_finished)
            running.add_metric(values, p.running)
            waiting.add_metric(values, p.waiting)
            kv.add_metric(values, p.kv_usage)
            n = p.requests_finished
            ttft.add_metric(values, _buckets(n, p.ttft_seconds / n if n else 0.0, SECONDS_BUCKETS),
                            p.ttft_seconds)  # fmt: skip
            tpot.add_metric(values, _buckets(n, p.tpot_seconds / n if n else 0.0, SECONDS_BUCKETS),
                            p.tpot_seconds)  # fmt: skip
        if pods:
            yield from (gen, prompt, success, running, waiting, kv, ttft, tpot)

    def _tgi(self, pods: list[PodState]) -> Iterable[Metric]:
        generated = HistogramMetricFamily(
            "tgi_request_generated_tokens", "Generated tokens per request", labels=TARGET_LABELS
        )
        input_length = HistogramMetricFamily(
            "tgi_request_input_length", "Input token length per request", labels=TARGET_LABELS
        )
        # TGI's Rust exporter writes these counters without a _total suffix, which
        # prometheus_client cannot express for a "counter" (it always appends _total), so
        # they go out with the real sample names typed "untyped"; PromQL treats both alike.
        count = Metric("tgi_request_count", "Total number of requests", "unknown")
        success = Metric("tgi_request_success", "Number of successful requests", "unknown")
        queue = GaugeMetricFamily("tgi_queue_size", "Current queue size", labels=TARGET_LABELS)
        batch = GaugeMetricFamily(
            "tgi_batch_current_size", "Current batch size", labels=TARGET_LABELS
        )
        per_token = HistogramMetricFamily(
            "tgi_request_mean_time_per_token_duration",
            "Mean time per token per request",
            labels=TARGET_LABELS,
        )
        per_request = self.sim.tokens_per_request
        for p in pods:
            values = p.labels()
            label_map = dict(zip(TARGET_LABELS, values, strict=True))
            n = p.requests_finished
            generated.add_metric(values, _buckets(n, per_request), p.generation_tokens)
            prompt_per_request = p.prompt_tokens / n if n else 0.0
            input_length.add_metric(values, _buckets(n, prompt_per_request), p.prompt_tokens)
            count.add_sample("tgi_request_count", label_map, n + p.running + p.waiting)
            success.add_sample("tgi_request_success", label_map, n)
            queue.add_metric(values, p.waiting)
            batch.add_metric(values, p.running)
            mean_tpot = p.tpot_seconds / n if n else 0.0
            per_token.add_metric(values, _buckets(n, mean_tpot, SECONDS_BUCKETS), p.tpot_seconds)
        if pods:
            yield from (generated, input_length, count, success, queue, batch, per_token)

    def _llamacpp(self, pods: list[PodState]) -> Iterable[Metric]:
        families = {
            "prompt_tokens": CounterMetricFamily(
                "llamacpp:prompt_tokens", "Number of prompt tokens processed.", labels=TARGET_LABELS
            ),
            "prompt_seconds": CounterMetricFamily(
                "llamacpp:prompt_seconds", "Prompt process time", labels=TARGET_LABELS
            ),
            "tokens_predicted": CounterMetricFamily(
                "llamacpp:tokens_predicted",
                "Number of generation tokens processed.",
                labels=TARGET_LABELS,
            ),
            "tokens_predicted_seconds": CounterMetricFamily(
                "llamacpp:tokens_predicted_seconds", "Predict process time", labels=TARGET_LABELS
            ),
            "predicted_tokens_seconds": GaugeMetricFamily(
                "llamacpp:predicted_tokens_seconds",
                "Average generation throughput in tokens/s.",
                labels=TARGET_LABELS,
            ),
            "requests_processing": GaugeMetricFamily(
                "llamacpp:requests_processing",
                "Number of requests processing.",
                labels=TARGET_LABELS,
            ),
            "requests_deferred": GaugeMetricFamily(
                "llamacpp:requests_deferred", "Number of requests deferred.", labels=TARGET_LABELS
            ),
        }
        for p in pods:
            values = p.labels()
            families["prompt_tokens"].add_metric(values, p.prompt_tokens)
            families["prompt_seconds"].add_metric(values, p.prompt_seconds)
            families["tokens_predicted"].add_metric(values, p.generation_tokens)
            families["tokens_predicted_seconds"].add_metric(values, p.generation_seconds)
            families["predicted_tokens_seconds"].add_metric(values, p.served_tps)
            families["requests_processing"].add_metric(values, p.running)
            families["requests_deferred"].add_metric(values, p.waiting)
        if pods:
            yield from families.values()


def _buckets(
    count: float, value: float, bounds: list[float] = TOKEN_BUCKETS
) -> list[tuple[str, float]]:
    """Cumulative histogram buckets with ``count`` observations, all equal to ``value``."""
    out = [(repr(b), count if value <= b else 0.0) for b in bounds]
    out.append(("+Inf", count))
    return out


LOAD_PATH = re.compile(r"^/load/([a-z0-9]([-a-z0-9]*[a-z0-9])?)/([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$")


def make_handler(sim: Simulator, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "llm-operator-engine-sim/1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s - %s", self.address_string(), format % args)

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, (json.dumps(obj, indent=1) + "\n").encode())

        def _key(self) -> tuple[str, str] | None:
            m = LOAD_PATH.match(self.path.split("?", 1)[0])
            return (m.group(1), m.group(3)) if m else None

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(registry), "text/plain; version=0.0.4")
            elif path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n", "text/plain")
            elif path == "/state":
                self._json(HTTPStatus.OK, sim.state_json())
            elif path == "/load":
                with sim.lock:
                    loads = {f"{k[0]}/{k[1]}": v.to_json() for k, v in sim.loads.items()}
                self._json(HTTPStatus.OK, loads)
            elif (key := self._key()) is not None:
                with sim.lock:
                    load = sim.loads.get(key, Load())
                self._json(HTTPStatus.OK, load.to_json())
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}"})

        def do_PUT(self) -> None:
            key = self._key()
            if key is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": "use PUT /load/<namespace>/<name>"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                load = Load(
                    output_tokens_per_second=float(body["outputTokensPerSecond"]),
                    per_replica_capacity=_opt_float(body.get("perReplicaCapacity")),
                    prompt_tokens_per_output_token=_opt_float(
                        body.get("promptTokensPerOutputToken")
                    ),
                    latency_factor=_opt_float(body.get("latencyFactor")),
                )
                if load.output_tokens_per_second < 0:
                    raise ValueError("outputTokensPerSecond must be >= 0")
            except (KeyError, TypeError, ValueError) as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": f"bad load: {exc!r}"})
                return
            with sim.lock:
                sim.loads[key] = load
            log.info("load %s/%s = %s", *key, load.to_json())
            self._json(HTTPStatus.OK, load.to_json())

        def do_DELETE(self) -> None:
            key = self._key()
            if key is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": "use DELETE /load/<namespace>/<name>"})
                return
            with sim.lock:
                sim.loads.pop(key, None)
            self._json(HTTPStatus.OK, Load().to_json())

    return Handler


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    out = float(value)
    if out <= 0:
        raise ValueError("must be > 0")
    return out


def _clients(kubeconfig: str | None, stop: threading.Event) -> tuple[Any, Any] | None:
    while not stop.is_set():  # the kubeconfig may not be there yet
        try:
            api = config.new_client_from_config(config_file=kubeconfig)
            return client.CoreV1Api(api), client.CustomObjectsApi(api)
        except Exception:
            log.exception("loading the kubeconfig failed; retrying")
            stop.wait(2.0)
    return None


RAW: Final[dict[str, Any]] = {"_preload_content": False}


def _items(response: Any) -> list[dict[str, Any]]:
    """The items of a LIST answered as raw JSON (`RAW`)."""
    return list(json.loads(response.data).get("items") or [])


def run_loop(sim: Simulator, kubeconfig: str | None, poll: float, stop: threading.Event) -> None:
    clients = _clients(kubeconfig, stop)
    last = time.monotonic()
    next_refresh = 0.0
    while clients is not None and not stop.is_set():
        now = time.monotonic()
        if now >= next_refresh:
            try:
                sim.refresh(*clients)
            except Exception:  # keep serving the last view while the apiserver is away
                log.exception("listing pods failed; reloading the kubeconfig")
                # A restarted cluster may listen on another port: read the file again.
                clients = _clients(kubeconfig, stop)
            # NOTE: a refresh costs the apiserver and this process more as objects grow: at
            # most a fifth of the time goes to it (poll seconds apart while it is cheap).
            next_refresh = now + max(poll, 5 * (time.monotonic() - now))
        now = time.monotonic()
        sim.advance(now - last)
        last = now
        stop.wait(0.25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9400)
    parser.add_argument("--poll", type=float, default=1.0, help="pod list interval, seconds")
    parser.add_argument(
        "--default-capacity",
        type=float,
        default=1000.0,
        help="output tokens/s one Ready replica serves when neither the load nor "
        "the LLMDeployment's status.plan says",
    )
    parser.add_argument("--prompt-ratio", type=float, default=4.0, help="prompt/output tokens")
    parser.add_argument("--tokens-per-request", type=float, default=256.0)
    parser.add_argument("--stream-tps", type=float, default=40.0, help="tokens/s per request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    sim = Simulator(
        args.default_capacity, args.prompt_ratio, args.tokens_per_request, args.stream_tps
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(sim))
    stop = threading.Event()
    loop = threading.Thread(
        target=run_loop, args=(sim, args.kubeconfig, args.poll, stop), daemon=True
    )
    loop.start()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(sim, registry))
    log.info("engine simulator on http://%s:%d (metrics, load API)", args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
