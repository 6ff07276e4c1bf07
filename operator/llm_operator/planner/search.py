"""Plan search: every GPU type x TP x PP x quantization x engine, cheapest that fits.

`evaluate()` sizes one candidate layout (memory, context, concurrency, timing, cost) or
says why it is rejected; `plan()` enumerates candidates for an LLMDeployment spec and ranks
the feasible ones by $ per million output tokens, ties broken by fewer GPUs. Pure: the
operator passes in the GPU types the cluster has. Called by `llmctl` and the reconciler.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from llm_operator import engines as registry
from llm_operator.api.v1alpha1 import (
    DEFAULT_DRAFT_ACCEPTANCE,
    Architecture,
    LLMDeploymentSpec,
    LoadPoint,
    PlanCalibration,
    PlanStatus,
)
from llm_operator.catalog import (
    GIB,
    Calibration,
    Catalog,
    GpuType,
    ModelEntry,
    UnknownNameError,
)
from llm_operator.catalog.resolve import DraftHead
from llm_operator.engines import Ask, Engine
from llm_operator.planner import cost, memory, timing
from llm_operator.planner.timing import Layout, Speculation, Timing

# `quantization: auto` considers only formats that keep quality close to the checkpoint:
# 16-bit, FP8 on GPUs with FP8 tensor cores, and GGUF q8_0 for llama.cpp. 4-bit formats
# are chosen only when asked for.
AUTO_QUANTIZATIONS = ("bf16", "fp8", "q8_0")
ENGINE_PREFERENCE = registry.PREFERENCE
KV_BLOCK_TOKENS = 16  # vLLM's default paged-attention block size
CONTEXT_GRANULE = 256  # `maxModelLen: auto` is rounded down to a multiple of this


class PlanInputError(ValueError):
    """The spec cannot be planned as written (names the field and the fix)."""


@dataclass(frozen=True)
class Candidate:
    """A feasible layout with its predictions (per replica)."""

    gpu: GpuType
    engine: Engine
    quantization: str
    tensor_parallel: int
    pipeline_parallel: int
    nodes: int
    fit: memory.MemoryFit
    max_model_len: int
    max_sequences: int
    batched_tokens: int
    batch: int
    timing: timing.Timing
    cost_per_hour: float
    cost_per_million: float
    kv_allocated_bytes: int | None = None
    download_bytes: int | None = None
    calibration: Calibration | None = None
    layout: Layout | None = None
    speculation: Speculation | None = None
    load_curve: tuple[tuple[int, Timing], ...] = ()

    @property
    def kv_bytes(self) -> int:
        """KV cache bytes per GPU: what the engine allocates (llama.cpp: exactly
        --ctx-size tokens), else all memory left after weights and overhead."""
        return self.fit.kv_bytes if self.kv_allocated_bytes is None else self.kv_allocated_bytes

    @property
    def gpus(self) -> int:
        """Devices per replica (TP x PP)."""
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def label(self) -> str:
        """Short human name, e.g. `H100-SXM-80GB x2 (TP2 PP1) vllm fp8`."""
        return (
            f"{self.gpu.name} x{self.gpus} (TP{self.tensor_parallel} PP{self.pipeline_parallel})"
            f" {self.engine.name} {self.quantization}"
        )

    def to_status(self) -> PlanStatus:
        """The plan as written to `status.plan`."""
        return PlanStatus(
            gpu=self.gpu.name,
            gpus_per_replica=self.gpus,
            tensor_parallel=self.tensor_parallel,
            pipeline_parallel=self.pipeline_parallel,
            nodes_per_replica=self.nodes,
            engine=self.engine.name,
            quantization=self.quantization,
            max_model_len=self.max_model_len,
            max_concurrent_sequences=self.max_sequences,
            max_num_batched_tokens=self.batched_tokens,
            weights_gib_per_gpu=round(self.fit.weights_bytes / GIB, 2),
            download_gib=(
                None if self.download_bytes is None else round(self.download_bytes / GIB, 2)
            ),
            kv_cache_gib_per_gpu=round(max(0, self.kv_bytes) / GIB, 2),
            ttft_ms=round(self.timing.ttft_ms, 1),
            tpot_ms=round(self.timing.tpot_ms, 2),
            output_tokens_per_second=round(self.timing.output_tokens_per_second, 1),
            cost_per_hour=round(self.cost_per_hour, 4),
            cost_per_million_output_tokens=round(self.cost_per_million, 4),
            calibration=(
                PlanCalibration(
                    decode=round(self.calibration.decode, 4),
                    prefill=round(self.calibration.prefill, 4),
                )
                if self.calibration is not None
                else None
            ),
            load_curve=[
                LoadPoint(
                    concurrency=n,
                    ttft_ms=round(t.ttft_ms, 1),
                    tpot_ms=round(t.tpot_ms, 2),
                    output_tokens_per_second=round(t.output_tokens_per_second, 1),
                )
                for n, t in self.load_curve
            ]
            or None,
        )


# What to change in the spec, added to a rejection's reason (the planner tries every layout
# itself, so a layout's own limits point at the GPU type).
FIX_LAYOUT = "spec.hardware.gpuTypes: a GPU type that holds the model in fewer devices"
FIX_MEMORY = "spec.hardware.gpuTypes: a GPU type with more memory, or spec.quantization: fewer bits"


@dataclass(frozen=True)
class Rejection:
    """A layout that does not work, and why.

    Attributes:
        label: the layout, e.g. `A10G-24GB x1 (TP1 PP1) vllm bf16`.
        reason: one sentence naming the limit and the numbers, then (in parentheses) the
            spec field to change and how.
        shortfall: how far off it is (needed / available, >= 1); lower is closer.
    """

    label: str
    reason: str
    shortfall: float = math.inf


@dataclass(frozen=True)
class Request:
    """Everything `evaluate` needs beyond the layout, taken from the spec or the CLI."""

    input_tokens: int = 1024
    output_tokens: int = 256
    concurrency: int | None = None
    max_model_len: int | None = None  # None: auto
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    max_cost_per_hour: float | None = None
    max_cost_per_million: float | None = None
    min_replicas: int = 1
    fp8_kv_cache: bool = False
    gpu_memory_utilization: float | None = None
    ask: Ask = field(default_factory=lambda: Ask(quantization="auto"))
    draft_params: int | None = None  # the speculative draft head's, when its config was read
    prefix_hit: float = 0.0  # share of prompt tokens from the prefix cache
    speculative_tokens: int = 0  # tokens drafted per step (0: no speculation)
    draft_acceptance: float = 0.0

    @classmethod
    def from_spec(
        cls, spec: LLMDeploymentSpec, arch: Architecture | None = None, gguf_repo: bool = False
    ) -> Request:
        """The planning request an LLMDeployment spec makes.

        Args:
            spec: the spec.
            arch: the resolved architecture (its checkpoint format and model type feed the
                engines' capability checks).
            gguf_repo: whether a GGUF repository is known for the model.
        """
        slo = spec.workload.slo
        mml = spec.context.max_model_len
        ask = spec.engine_ask(arch, gguf_repo)
        workload, speculative = spec.workload, spec.features.speculative_decoding
        return cls(
            input_tokens=spec.workload.input_tokens,
            output_tokens=spec.workload.output_tokens,
            concurrency=spec.workload.concurrency,
            max_model_len=None if mml == "auto" else int(mml),
            ttft_ms=slo.ttft_ms_p95 if slo else None,
            tpot_ms=slo.tpot_ms_p95 if slo else None,
            max_cost_per_hour=spec.budget.max_cost_per_hour,
            max_cost_per_million=spec.budget.max_cost_per_million_tokens,
            min_replicas=max(1, spec.scaling.min_replicas),
            fp8_kv_cache=spec.features.fp8_kv_cache,
            ask=ask,
            prefix_hit=workload.prefix_hit_rate if spec.features.prefix_caching else 0.0,
            speculative_tokens=speculative.num_speculative_tokens if speculative else 0,
            draft_acceptance=(
                workload.draft_acceptance_rate or DEFAULT_DRAFT_ACCEPTANCE[speculative.method]
                if speculative
                else 0.0
            ),
        )


@dataclass(frozen=True)
class PlanResult:
    """The outcome of a search.

    Attributes:
        chosen: the best candidate, or None when nothing is feasible.
        alternatives: the next best feasible candidates (best first).
        rejected: the closest infeasible candidates (closest first).
        replicas: replicas the workload needs (target tokens/s, concurrency), within
            min/max replicas and the budget.
        replicas_limited: when the load needs more replicas than maxReplicas or the budget
            allow, a sentence saying so (the plan still serves what it can).
    """

    chosen: Candidate | None
    alternatives: list[Candidate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    replicas: int = 1
    replicas_limited: str | None = None


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _tp_valid(arch: Architecture, tp: int) -> str | None:
    """vLLM/TGI shard attention heads evenly; KV heads split or replicate evenly."""
    kvh = arch.kv_heads_or_default
    if arch.attention_heads % tp:
        return f"{arch.attention_heads} attention heads are not divisible by TP {tp}"
    if not arch.is_mla and kvh % tp and tp % kvh:
        return f"{kvh} KV heads neither divide nor are divided by TP {tp}"
    return None


def _sequence_tokens(arch: Architecture, length: int) -> int:
    """KV tokens one sequence holds, rounded up to whole paged-attention blocks."""
    tokens = memory.kv_tokens_per_sequence(arch, length)
    return max(KV_BLOCK_TOKENS, math.ceil(tokens / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS)


def _max_len_that_fits(arch: Architecture, kv_tokens: int) -> int:
    """Longest sequence whose KV fits in `kv_tokens` (sliding windows stretch it)."""
    if arch.sliding_window is not None and arch.sliding_window_layers in (None, arch.layers):
        return arch.max_context if kv_tokens >= arch.sliding_window else kv_tokens
    lo, hi = 0, arch.max_context
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if memory.kv_tokens_per_sequence(arch, mid) <= kv_tokens:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _largest_batch(
    layout: timing.Layout,
    req: Request,
    limit: int,
    chunk_tokens: int,
    speculation: timing.Speculation | None = None,
) -> tuple[int, timing.Timing, str | None]:
    """Largest batch <= limit that meets the SLOs (predictions worsen with batch).

    The SLOs are 95th percentiles (`slo.ttftMsP95`, `slo.tpotMsP95`), so they are compared
    with the p95 estimates at that load, not the means. `chunk_tokens` is the engine's
    prefill chunk (the batched-token budget it runs with).
    """

    def misses(t: timing.Timing) -> str | None:
        if req.ttft_ms is not None and t.ttft_p95_ms > req.ttft_ms:
            return f"TTFT p95 {t.ttft_p95_ms:.0f} ms > SLO {req.ttft_ms:.0f} ms"
        if req.tpot_ms is not None and t.tpot_p95_ms > req.tpot_ms:
            return f"TPOT p95 {t.tpot_p95_ms:.1f} ms > SLO {req.tpot_ms:.1f} ms"
        return None

    def at(batch: int) -> timing.Timing:
        return timing.predict(
            layout,
            req.input_tokens,
            req.output_tokens,
            batch,
            chunk_tokens,
            prefix_hit=req.prefix_hit,
            speculation=speculation,
        )

    best = at(limit)
    if misses(best) is None:
        return limit, best, None
    one = at(1)
    if (why := misses(one)) is not None:
        return 1, one, why
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if misses(at(mid)) is None:
            lo = mid
        else:
            hi = mid - 1
    return lo, at(lo), None


def evaluate(
    arch: Architecture,
    gpu: GpuType,
    engine: Engine,
    quantization: str,
    tensor_parallel: int,
    pipeline_parallel: int,
    req: Request,
    gpus_per_node: int | None = None,
    calibration: Calibration | None = None,
) -> Candidate | Rejection:
    """Size one layout for a request, or say why it cannot serve it.

    Args:
        arch: model shape.
        gpu: device type.
        engine: serving engine profile.
        quantization: concrete weight format.
        tensor_parallel: TP degree.
        pipeline_parallel: PP degree.
        req: workload, context, SLOs and budget.
        gpus_per_node: overrides the catalog's GPUs per node.
        calibration: the fleet calibration of this engine on this GPU type, if any.

    Returns:
        A Candidate with its predictions, or a Rejection with the reason.
    """
    tp, pp = tensor_parallel, pipeline_parallel
    per_node = gpus_per_node or gpu.gpus_per_node
    label = f"{gpu.name} x{tp * pp} (TP{tp} PP{pp}) {engine.name} {quantization}"

    def reject(reason: str, shortfall: float = math.inf, fix: str = FIX_LAYOUT) -> Rejection:
        return Rejection(label, f"{reason} ({fix})" if fix else reason, shortfall)

    caps = engine.capabilities
    ask = replace(
        req.ask,
        quantization=quantization,
        accelerator=gpu.accelerator,
        multi_node=tp * pp > per_node,
    )
    if refused := engine.refusals(ask):
        return reject("; ".join(str(r) for r in refused), fix="")
    if tp > 1 and not caps.tensor_parallel:
        return reject(f"{engine.name} does not shard a replica (tensor parallel)")
    if pp > 1 and not caps.pipeline_parallel:
        return reject(f"{engine.name} does not split layers over GPUs (pipeline parallel)")
    if tp > per_node:
        return reject(f"TP {tp} exceeds {per_node} GPUs per node")
    if tp * pp > per_node and tp != per_node:
        return reject("a multi-node replica must use whole nodes for TP")
    if pp > arch.layers:
        return reject(f"PP {pp} exceeds {arch.layers} layers")
    if (why := _tp_valid(arch, tp)) is not None:
        return reject(why)

    mem = engine.memory_on(gpu.memory_gib, gpu.name, gpu.accelerator)
    if req.gpu_memory_utilization is not None:
        mem = replace(mem, utilization=req.gpu_memory_utilization)
    kv_element = engine.kv_cache_element_bytes(quantization, req.fp8_kv_cache, gpu.accelerator)
    draft = memory.draft_weight_bytes(arch, req.ask.speculative_method, req.draft_params)
    fit = memory.memory_fit(arch, gpu, quantization, tp, pp, mem, kv_element, draft)
    if not fit.weights_fit:
        needed = fit.weights_bytes + fit.overhead_bytes
        return reject(
            f"weights {_gib(fit.weights_bytes)} + engine overhead {_gib(fit.overhead_bytes)} "
            f"> {_gib(fit.usable_bytes)} usable per device",
            needed / fit.usable_bytes,
            FIX_MEMORY,
        )

    if req.max_model_len is not None and req.max_model_len > arch.max_context:
        return reject(
            f"maxModelLen {req.max_model_len} exceeds the model's maximum context "
            f"{arch.max_context}",
            fix=f"spec.context.maxModelLen: at most {arch.max_context}, or auto",
        )
    workload_len = req.input_tokens + req.output_tokens
    seq_tokens = _sequence_tokens(arch, workload_len)
    fits_len = _max_len_that_fits(arch, fit.max_kv_tokens)
    if engine.name == "llamacpp":
        # llama-server allocates exactly --ctx-size tokens, shared by --parallel slots
        # (--kv-unified): the renderer passes slots x maxModelLen.
        slots = max(1, min(engine.max_sequences, fit.max_kv_tokens // seq_tokens))
        if req.max_model_len is not None:
            slots = max(1, min(slots, fit.max_kv_tokens // max(1, req.max_model_len)))
        fits_len = min(fits_len, _max_len_that_fits(arch, fit.max_kv_tokens // slots))
    max_model_len = req.max_model_len or min(
        arch.max_context, fits_len // CONTEXT_GRANULE * CONTEXT_GRANULE or fits_len
    )
    if max_model_len > fits_len:
        return reject(
            f"KV cache holds {fits_len} tokens ({_gib(fit.kv_bytes)}) < maxModelLen "
            f"{max_model_len}",
            max_model_len / max(1, fits_len),
            "spec.context.maxModelLen: lower it or set auto; or spec.hardware.gpuTypes: a GPU "
            "type with more memory, or spec.features.fp8KvCache: true",
        )
    if max_model_len < workload_len:
        return reject(
            f"maxModelLen {max_model_len} < input + output tokens {workload_len}",
            workload_len / max(1, max_model_len),
            "spec.context.maxModelLen: raise it, or shorten spec.workload.inputTokens and "
            "outputTokens",
        )
    kv_allocated: int | None = None
    if engine.name == "llamacpp":
        max_sequences = slots
        kv_allocated = (
            slots
            * math.ceil(memory.kv_tokens_per_sequence(arch, max_model_len))
            * fit.kv_bytes_per_token
        )
    else:
        max_sequences = min(engine.max_sequences, fit.max_kv_tokens // seq_tokens)

    layout = timing.Layout(
        arch=arch,
        gpu=gpu,
        quantization=quantization,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        kv_bytes_per_token_per_gpu=fit.kv_bytes_per_token,
        efficiency=(
            engine.efficiency.calibrated(calibration.decode, calibration.prefill)
            if calibration is not None
            else engine.efficiency
        ),
    )
    limit = min(req.concurrency or max_sequences, max_sequences)
    speculation = (
        timing.Speculation(req.speculative_tokens, req.draft_acceptance, draft)
        if req.speculative_tokens
        else None
    )
    batch, predicted, slo_miss = _largest_batch(layout, req, limit, mem.batched_tokens, speculation)
    if slo_miss is not None:
        return reject(
            f"misses the SLO even with one sequence: {slo_miss}",
            fix="spec.workload.slo: relax it, or spec.hardware.gpuTypes: a faster GPU type",
        )
    dollars = cost.cost_per_hour(gpu, 1 if gpu.is_cpu else tp * pp)
    per_million = cost.cost_per_million_tokens(dollars, predicted.output_tokens_per_second)
    floor_cost = dollars * req.min_replicas
    if req.max_cost_per_hour is not None and floor_cost > req.max_cost_per_hour:
        return reject(
            f"{req.min_replicas} replica(s) cost ${floor_cost:.2f}/h > budget "
            f"${req.max_cost_per_hour:.2f}/h",
            floor_cost / req.max_cost_per_hour,
            "spec.budget.maxCostPerHour: raise it, or lower spec.scaling.minReplicas",
        )
    if req.max_cost_per_million is not None and per_million > req.max_cost_per_million:
        return reject(
            f"${per_million:.2f} per 1M output tokens > budget ${req.max_cost_per_million:.2f}",
            per_million / req.max_cost_per_million,
            "spec.budget.maxCostPerMillionTokens: raise it, or spec.hardware.gpuTypes: a "
            "cheaper GPU type",
        )
    return Candidate(
        gpu=gpu,
        engine=engine,
        quantization=quantization,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        nodes=math.ceil(tp * pp / per_node),
        fit=fit,
        max_model_len=max_model_len,
        max_sequences=max_sequences,
        batched_tokens=mem.batched_tokens,
        batch=batch,
        timing=predicted,
        cost_per_hour=dollars,
        cost_per_million=per_million,
        kv_allocated_bytes=kv_allocated,
        download_bytes=memory.weight_bytes(
            arch, engine.downloaded_format(quantization, ask.checkpoint)
        ),
        calibration=calibration,
        layout=layout,
        speculation=speculation,
    )


# Requests in flight at which a plan states its predictions (status.plan.loadCurve).
CURVE_POINTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def with_load_curve(candidate: Candidate, req: Request) -> Candidate:
    """The candidate with its predictions at 1, 2, 4, ... requests in flight up to its
    slots (beyond them requests only queue), for comparing with what the engines measure
    (status.plan.loadCurve). Only the chosen candidate needs them."""
    layout = candidate.layout
    if layout is None:
        return candidate
    slots = max(1, candidate.max_sequences)
    points = [n for n in CURVE_POINTS if n < slots] + [slots]
    curve = tuple(
        (
            n,
            timing.predict(
                layout,
                req.input_tokens,
                req.output_tokens,
                n,
                candidate.batched_tokens,
                prefix_hit=req.prefix_hit,
                speculation=candidate.speculation,
            ),
        )
        for n in points
    )
    return replace(candidate, load_curve=curve)


def resolve_architecture(
    spec: LLMDeploymentSpec, catalog: Catalog, resolved: Architecture | None = None
) -> Architecture:
    """The spec's inline architecture, else the one the caller resolved, else the catalog's.

    Args:
        spec: the spec.
        catalog: models and GPU types.
        resolved: the model's shape read from its own config.json or GGUF header by the
            caller (`llm_operator.hub`); the planner itself never reads files.

    Raises:
        PlanInputError: naming spec.model.name and the closest catalog names.
    """
    if spec.model.architecture is not None:
        return spec.model.architecture
    if resolved is not None:
        return resolved
    try:
        return catalog.model(spec.model.name).architecture
    except UnknownNameError as err:
        raise PlanInputError(
            f"spec.model.name: {err}. Use a catalog model, a Hugging Face id the operator can "
            "read config.json of, or set spec.model.architecture"
        ) from err


def _gpu_types(
    spec: LLMDeploymentSpec, catalog: Catalog, available: Mapping[str, int] | None
) -> list[GpuType]:
    """GPU types allowed by the spec, present in the cluster (or provisionable)."""
    try:
        allowed = [catalog.gpu(n) for n in spec.hardware.gpu_types] or [
            g for g in catalog.gpus if not g.is_cpu
        ]
        provisionable = {catalog.gpu(n).name for n in spec.hardware.provisionable_gpu_types}
    except UnknownNameError as err:
        raise PlanInputError(f"spec.hardware: {err}") from err
    if spec.hardware.allow_cpu:
        # NOTE: CPU classes that gpuTypes names are the allowed ones (as for GPU types);
        # allowCpu alone, or next to GPU types only, allows every CPU class of the catalog.
        if not any(g.is_cpu for g in allowed):
            allowed += [g for g in catalog.gpus if g.is_cpu]
    else:
        allowed = [g for g in allowed if not g.is_cpu]
    if available is None:
        return allowed
    return [g for g in allowed if g.name in available or g.name in provisionable or g.provisionable]


def _absent_types(
    spec: LLMDeploymentSpec, catalog: Catalog, available: Mapping[str, int] | None
) -> Rejection:
    """Why no GPU type can be planned: what was asked, what the cluster has, the fix."""
    asked = ", ".join(spec.hardware.gpu_types) or "any catalog GPU type"
    have = sorted(available or {})
    cpu = [g.name for g in catalog.gpus if g.is_cpu]
    has_cpu = any(name in cpu for name in have)
    gpus_here = [n for n in have if n not in cpu]
    present = ", ".join(gpus_here) or "no GPU nodes the catalog knows"
    if has_cpu and not spec.hardware.allow_cpu:
        present += " (and CPU nodes: set spec.hardware.allowCpu to use them)"
    return Rejection(
        "spec.hardware.gpuTypes",
        f"asks for {asked}, but the cluster has {present}: add the type to "
        "spec.hardware.provisionableGpuTypes if a node autoscaler can create such nodes, "
        "or choose a type the cluster has",
    )


COST_TIE = 0.02  # relative $/1M-token difference the planner treats as equal


def _gpus_per_node(
    spec: LLMDeploymentSpec, gpu: GpuType, available: Mapping[str, int] | None
) -> int:
    """GPUs one node offers: the spec's override, else the catalog's, capped by the cluster.

    NOTE: a cluster whose GPU nodes are smaller than the catalog's node size (one-GPU
    g5.2xlarge rather than a g5.48xlarge) cannot schedule a pod asking for more, so the
    nodes that exist bound tensor parallelism. A type absent from `available` is
    provisionable and keeps its nominal size.
    """
    per_node = spec.hardware.gpus_per_node or gpu.gpus_per_node
    in_cluster = (available or {}).get(gpu.name, 0)
    if in_cluster > 0:
        per_node = min(per_node, in_cluster)
    return per_node


def _layouts(arch: Architecture, per_node: int, engine: Engine) -> list[tuple[int, int]]:
    """TP x PP pairs worth trying: TP a power of two within a node, PP over up to 8 nodes."""
    caps = engine.capabilities
    tps = [t for t in (1, 2, 4, 8, 16) if t <= per_node] if caps.tensor_parallel else [1]
    pps = range(1, min(arch.layers, 8 * per_node) + 1) if caps.pipeline_parallel else [1]
    return [
        (tp, pp)
        for tp in tps
        for pp in pps
        if (tp * pp <= per_node or tp == per_node) and pp <= max(2, 8 * per_node // tp)
    ]


def plan(
    spec: LLMDeploymentSpec,
    catalog: Catalog,
    available_gpus: Mapping[str, int] | None = None,
    keep: int = 5,
    *,
    resolved: Architecture | None = None,
    draft: DraftHead | None = None,
) -> PlanResult:
    """Choose the cheapest feasible layout for an LLMDeployment spec.

    Args:
        spec: the LLMDeployment spec.
        catalog: models and GPU types.
        available_gpus: what the cluster has: catalog GPU name -> the most GPUs
            allocatable on one node of that type (0 for CPU classes). None means any
            catalog type with its catalog node size. Provisionable types not in the
            mapping keep their catalog node size.
        keep: how many alternatives and rejections to report.
        resolved: the model's shape as the caller read it from the model's own files
            (`hub.resolve`: config.json from the Hub or a directory, a GGUF header), for a
            model the catalog does not know; spec.model.architecture still overrides it.
        draft: the speculative draft head as the caller read it from its config.json
            (`resolve.draft_head_from_config`); None: its size is estimated.

    Returns:
        The chosen candidate (or None), alternatives, closest rejections, replicas.

    Raises:
        PlanInputError: when the spec names an unknown model or GPU type.
    """
    arch, req = _request(spec, catalog, resolved, draft)
    gpus = _gpu_types(spec, catalog, available_gpus)
    combos = _engine_quantizations(spec, arch, req.ask)
    if not gpus:
        return PlanResult(chosen=None, rejected=[_absent_types(spec, catalog, available_gpus)])

    feasible: list[Candidate] = []
    rejected: list[Rejection] = []
    for gpu in gpus:
        per_node = _gpus_per_node(spec, gpu, available_gpus)
        for engine, quant in combos:
            if spec.quantization == "auto" and quant == "fp8" and not gpu.supports_fp8:
                continue
            if gpu.accelerator not in engine.images and not spec.hardware.gpu_types:
                continue  # only a GPU type the spec names is worth a rejection line
            best_reject: Rejection | None = None
            for tp, pp in _layouts(arch, per_node if not gpu.is_cpu else 1, engine):
                out = evaluate(
                    arch, gpu, engine, quant, tp, pp, req, per_node,
                    catalog.calibration(engine.name, gpu),
                )  # fmt: skip
                if isinstance(out, Candidate):
                    feasible.append(out)
                elif best_reject is None or out.shortfall < best_reject.shortfall:
                    best_reject = out
            if best_reject is not None and not any(
                c.gpu == gpu and c.engine == engine and c.quantization == quant for c in feasible
            ):
                rejected.append(best_reject)

    order = {name: i for i, name in enumerate(ENGINE_PREFERENCE)}
    # NOTE: a replica that spans nodes is ranked after every single-node one: it adds a
    # network hop per step, a second failure domain and a LeaderWorkerSet, which is worth
    # it only when the model does not fit one node (vLLM's distributed-serving guidance).
    feasible.sort(
        key=lambda c: (
            c.nodes > 1,
            round(c.cost_per_million, 4),
            c.gpus,
            order[c.engine.name],
            c.gpu.name,
        )
    )
    rejected.sort(key=lambda r: r.shortfall)
    if not feasible:
        return PlanResult(chosen=None, rejected=rejected[:keep], replicas=0)
    # NOTE: costs within COST_TIE of the cheapest are a tie, not a ranking: the planner's
    # error is far larger, and fewer GPUs per replica mean finer scaling steps, a smaller
    # failure domain and no all-reduce.
    best = feasible[0]
    ties = [
        c
        for c in feasible
        if (c.nodes > 1) == (best.nodes > 1)
        and c.cost_per_million <= best.cost_per_million * (1 + COST_TIE)
    ]
    chosen = min(ties, key=lambda c: (c.gpus, c.cost_per_million, order[c.engine.name]))
    chosen = with_load_curve(chosen, req)
    replicas, limited = replicas_for(spec, chosen)
    return PlanResult(
        chosen=chosen,
        alternatives=_distinct([c for c in feasible if c is not chosen], keep),
        rejected=rejected[:keep],
        replicas=replicas,
        replicas_limited=limited,
    )


def _request(
    spec: LLMDeploymentSpec,
    catalog: Catalog,
    resolved: Architecture | None,
    draft: DraftHead | None,
) -> tuple[Architecture, Request]:
    arch = resolve_architecture(spec, catalog, resolved)
    entry = model_entry(spec, catalog, resolved)
    req = Request.from_spec(spec, arch, gguf_repo=entry is not None and entry.gguf is not None)
    if draft is not None:
        req = replace(req, draft_params=draft.params)
    return arch, req


# NOTE: a running deployment moves to another layout after a new fleet calibration only
# when that saves at least this share of its cost per token: the calibration is itself a
# measurement with an error, and a move restarts every replica.
REPLAN_GAIN = 0.10


def replan(
    spec: LLMDeploymentSpec,
    catalog: Catalog,
    current: PlanStatus,
    available_gpus: Mapping[str, int] | None = None,
    *,
    resolved: Architecture | None = None,
    draft: DraftHead | None = None,
) -> PlanResult:
    """Plan a running deployment again after something outside its spec changed (a fleet
    calibration), with hysteresis: the current layout stays, with fresh predictions,
    unless the best layout now costs at least `REPLAN_GAIN` less per token or the current
    one no longer serves the spec (an SLO it now misses, a budget it now exceeds).

    Args:
        spec: the LLMDeployment spec (unchanged since `current` was planned).
        catalog: models, GPU types and the calibrations now in use.
        current: the plan the workload runs.
        available_gpus, resolved, draft: as for `plan`.

    Returns:
        The plan to run: the current layout re-predicted, or the better one.
    """
    fresh = plan(spec, catalog, available_gpus, resolved=resolved, draft=draft)
    best = fresh.chosen
    if best is None or (
        best.gpu.name, best.engine.name, best.quantization, best.tensor_parallel,
        best.pipeline_parallel,
    ) == (
        current.gpu, current.engine, current.quantization, current.tensor_parallel,
        current.pipeline_parallel,
    ):  # fmt: skip
        return fresh
    arch, req = _request(spec, catalog, resolved, draft)
    try:
        gpu = catalog.gpu(current.gpu)
        engine = registry.get(current.engine)
    except (UnknownNameError, KeyError):
        return fresh  # the current layout's GPU or engine is gone from the catalog
    kept = evaluate(
        arch, gpu, engine, current.quantization, current.tensor_parallel,
        current.pipeline_parallel, req, _gpus_per_node(spec, gpu, available_gpus),
        catalog.calibration(engine.name, gpu),
    )  # fmt: skip
    if not isinstance(kept, Candidate):
        return fresh
    if best.cost_per_million <= kept.cost_per_million * (1 - REPLAN_GAIN):
        return fresh
    kept = with_load_curve(kept, req)
    replicas, limited = replicas_for(spec, kept)
    return replace(fresh, chosen=kept, replicas=replicas, replicas_limited=limited)


def model_entry(
    spec: LLMDeploymentSpec, catalog: Catalog, resolved: Architecture | None = None
) -> ModelEntry | None:
    """The catalog entry of the spec's model; for a model the catalog does not know, an
    entry made of the shape the caller resolved (its name as written, no GGUF repository),
    or None when the spec describes the model inline.

    Raises:
        UnknownNameError: the catalog does not know the name and nothing describes it.
    """
    try:
        return catalog.model(spec.model.name)
    except UnknownNameError:
        if spec.model.architecture is not None:
            return None
        if resolved is not None:
            return ModelEntry(name=spec.model.name, architecture=resolved)
        raise


def _engine_quantizations(
    spec: LLMDeploymentSpec, arch: Architecture, ask: Ask
) -> list[tuple[Engine, str]]:
    """The (engine, quantization) pairs worth trying, whatever the hardware.

    `auto` tries the checkpoint's own format when it is pre-quantized (else 16-bit and
    FP8), and GGUF q8_0 for llama.cpp. A pair the engine refuses for this model is dropped;
    when the spec named both engine and quantization, the refusal is the answer.

    Raises:
        PlanInputError: naming the spec field, when nothing the spec allows can be served.
    """
    names = ENGINE_PREFERENCE if spec.engine == "auto" else (spec.engine,)
    checkpoint = arch.checkpoint_quantization
    if spec.quantization != "auto":
        quants: tuple[str, ...] = (spec.quantization,)
    elif checkpoint is not None:
        quants = (checkpoint, "q8_0")
    else:
        quants = AUTO_QUANTIZATIONS
    pairs: list[tuple[Engine, str]] = []
    refusals: list[str] = []
    for name in names:
        engine = registry.get(name)
        for quant in quants:
            if quant not in engine.capabilities.quantizations and (
                spec.quantization == "auto" or spec.engine == "auto"
            ):
                continue
            refused = engine.refusals(replace(ask, quantization=quant))
            if refused:
                refusals += [f"{name} {quant}: {r}" for r in refused]
            else:
                pairs.append((engine, quant))
    if not pairs:
        raise PlanInputError(
            "; ".join(refusals)
            if refusals
            else f"spec.quantization: no engine serves {spec.quantization}"
        )
    return pairs


def _distinct(candidates: list[Candidate], keep: int) -> list[Candidate]:
    """The best candidate of each (GPU, engine, quantization), so alternatives differ."""
    seen: set[tuple[str, str, str]] = set()
    out: list[Candidate] = []
    for c in candidates:
        key = (c.gpu.name, c.engine.name, c.quantization)
        if key not in seen:
            seen.add(key)
            out.append(c)
        if len(out) == keep:
            break
    return out


def initial_replicas(spec: LLMDeploymentSpec, chosen: Candidate) -> int:
    """Replicas for the workload, within min/max and the budget (see `replicas_for`)."""
    return replicas_for(spec, chosen)[0]


def replicas_for(spec: LLMDeploymentSpec, chosen: Candidate) -> tuple[int, str | None]:
    """Replicas the workload needs, within min/max and the budget, and what limits them.

    The workload needs enough replicas for its target output tokens/s (at the target
    utilisation) and for its concurrent requests (each replica runs at most `batch`
    sequences: what fits its KV cache and meets the SLOs).

    Returns:
        (replicas to run, None) or (replicas to run, a sentence saying what the load needs
        and what forbids it: maxReplicas or the budget).
    """
    scaling = spec.scaling
    workload = spec.workload
    wanted = scaling.min_replicas
    needs: list[str] = []
    if workload.target_output_tokens_per_second is not None:
        per_replica = chosen.timing.output_tokens_per_second * scaling.target_utilization
        n = math.ceil(workload.target_output_tokens_per_second / per_replica)
        needs.append(f"{workload.target_output_tokens_per_second:g} output tokens/s needs {n}")
        wanted = max(wanted, n)
    if workload.concurrency is not None:
        n = math.ceil(workload.concurrency / max(1, chosen.batch))
        needs.append(
            f"{workload.concurrency} concurrent requests at {chosen.batch} per replica need {n}"
        )
        wanted = max(wanted, n)
    allowed = scaling.max_replicas
    limits = [f"maxReplicas {scaling.max_replicas}"]
    if spec.budget.max_cost_per_hour is not None:
        affordable = int(spec.budget.max_cost_per_hour // chosen.cost_per_hour)
        limits.append(
            f"budget ${spec.budget.max_cost_per_hour:.2f}/h buys {affordable} at "
            f"${chosen.cost_per_hour:.2f}/h"
        )
        allowed = min(allowed, affordable)
    # NOTE: minReplicas 0 still starts one replica; scale to zero happens after idling.
    replicas = max(min(wanted, allowed), 1)
    if wanted > allowed:
        return replicas, (
            f"the load needs {wanted} replicas ({'; '.join(needs)}), but "
            f"{' and '.join(limits)} allow {allowed}: raise them or plan for less load"
        )
    return replicas, None
