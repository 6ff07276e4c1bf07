"""Time model: engine steps on rooflines, scheduled the way a continuous-batching engine
runs them, with the queues a request meets on the way.

One engine step runs the running sequences' next tokens plus, within the engine's prefill
token budget, a chunk of a waiting prompt (vLLM's chunked prefill and
max-num-batched-tokens, TGI's max-batch-prefill-tokens, llama.cpp's batch). Each kind of
kernel (dense linear layers, MoE experts, attention) takes max(bytes moved / achieved
bandwidth, FLOPs / achieved compute), plus tensor-parallel all-reduces and host work per
step, per running sequence and per layer. Pipeline parallelism pipelines the decodes in
micro-batches (bubbles when there are fewer sequences than stages). `predict` turns steps
into the steady state of a load: TTFT, TPOT and throughput as a client sees them (means,
and p95 estimates for the SLOs), with the waits for the server's admission, the prefill
budget and a free sequence slot. Called by `planner.search` and
`bench/calibrate_engines.py` (which fits the efficiencies; docs/planner.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llm_operator.api.v1alpha1 import Architecture
from llm_operator.catalog import GpuType
from llm_operator.engines import Efficiency
from llm_operator.planner import memory

# z of the 95th percentile of a normal distribution (tail of a Poisson count).
Z95 = 1.645


@dataclass(frozen=True)
class Layout:
    """Where one replica runs and in which format.

    Attributes:
        arch: model shape.
        gpu: device type.
        quantization: weight format.
        tensor_parallel: TP degree.
        pipeline_parallel: PP degree.
        kv_bytes_per_token_per_gpu: from the memory model.
        efficiency: the engine's calibrated efficiencies.
    """

    arch: Architecture
    gpu: GpuType
    quantization: str
    tensor_parallel: int
    pipeline_parallel: int
    kv_bytes_per_token_per_gpu: int
    efficiency: Efficiency


@dataclass(frozen=True)
class Timing:
    """Predicted latency and throughput of one replica at one load.

    Attributes:
        ttft_ms: mean time to first token of a request arriving at that load.
        tpot_ms: mean time between output tokens a client sees, prefill interference
            included (vLLM's TPOT: (latency - TTFT) / (output tokens - 1)).
        output_tokens_per_second: the whole replica's output rate.
        step_ms: one decode step of the running batch (the median inter-token latency).
        prefill_ms: prefill of one request's prompt on an idle replica, with the request's
            fixed overhead.
        ttft_p95_ms: 95th percentile of TTFT (what `slo.ttftMsP95` is compared with).
        tpot_p95_ms: 95th percentile over requests of their TPOT (`slo.tpotMsP95`).
        queue_ms: mean wait for a free sequence slot when the load exceeds them (in TTFT).
        running: sequences the replica runs at once at this load.
    """

    ttft_ms: float
    tpot_ms: float
    output_tokens_per_second: float
    step_ms: float
    prefill_ms: float
    ttft_p95_ms: float
    tpot_p95_ms: float
    queue_ms: float
    running: int


@dataclass(frozen=True)
class Speculation:
    """Speculative decoding as the timing model sees it.

    Each decode step the proposer drafts `tokens` tokens per sequence (reading
    `draft_bytes` of weights per drafted token: 0 for n-gram lookup) and the model verifies
    them all in one pass; each is accepted with probability `acceptance`, independently,
    up to the first rejection, and the pass adds one token of its own. A step therefore
    yields (1 - a^(k+1)) / (1 - a) tokens per sequence (Leviathan et al., "Fast Inference
    from Transformers via Speculative Decoding", arXiv:2211.17192, eq. 1).
    """

    tokens: int
    acceptance: float
    draft_bytes: int = 0

    @property
    def tokens_per_step(self) -> float:
        a = min(max(self.acceptance, 0.0), 0.999)
        return (1 - a ** (self.tokens + 1)) / (1 - a)


def compute_flops_per_gpu(gpu: GpuType, quantization: str) -> float:
    """Dense tensor FLOP/s one device reaches in the format's compute type.

    FP8 and INT8 (W8A8) use the low-precision tensor cores where the device has them;
    weight-only formats (AWQ/GPTQ/int4, GGUF) dequantise and compute in FP16; FP32 runs
    on TF32 tensor cores at half the FP16 rate.
    """
    if quantization == "fp8" and gpu.fp8_tflops:
        return gpu.fp8_tflops * 1e12
    if quantization == "int8" and gpu.int8_tops:
        return gpu.int8_tops * 1e12
    if quantization == "fp32":
        return gpu.fp16_tflops * 1e12 / 2
    return gpu.fp16_tflops * 1e12


def _allreduce_s(layout: Layout, tokens: int) -> float:
    """Two ring all-reduces of the hidden state per layer per stage (attention + MLP)."""
    tp = layout.tensor_parallel
    if tp == 1:
        return 0.0
    message = tokens * layout.arch.hidden_size * 2
    per_call = layout.efficiency.allreduce_latency_us * 1e-6 + (
        2 * (tp - 1) / tp * message / (layout.gpu.interconnect_gbps * 1e9)
    )
    layers = math.ceil(layout.arch.layers / layout.pipeline_parallel)
    return 2 * layers * per_call


def _expert_share(arch: Architecture) -> float:
    """Fraction of the parameters in routed experts (0 for a dense model)."""
    if not arch.is_moe:
        return 0.0
    experts = arch.experts or 1
    top_k = arch.experts_per_token or 1
    share = 1 - memory.active_params(arch) / memory.total_params(arch)
    return min(1.0, share * experts / (experts - top_k))


def _touched(arch: Architecture, tokens: int) -> float:
    """Fraction of a MoE layer's experts that `tokens` tokens are routed to."""
    experts = arch.experts or 1
    top_k = arch.experts_per_token or 1
    return 1 - (1 - top_k / experts) ** max(1, tokens)


def _weights_read_per_gpu(layout: Layout, tokens: int) -> float:
    """Weight bytes one GPU streams per step: MoE reads only the experts `tokens` touch."""
    arch = layout.arch
    total = memory.weight_bytes(arch, layout.quantization) / (
        layout.tensor_parallel * layout.pipeline_parallel
    )
    share = _expert_share(arch)
    return total * ((1 - share) + share * (_touched(arch, tokens) if share else 0.0))


def _attention_flops(arch: Architecture, query_tokens: float, context: float) -> float:
    """QK^T and AV FLOPs of `query_tokens` attending to `context` tokens, all layers
    (sliding-window layers attend to at most their window)."""
    width = arch.attention_heads * arch.head_dim_or_default
    span = memory.kv_tokens_per_sequence(arch, round(context))
    return 4 * arch.layers * query_tokens * span * width


def _stage_s(
    layout: Layout, decodes: int, context: float, prefill_tokens: int, prefill_context: float
) -> float:
    """One pipeline stage's share of a step, without host overheads.

    Each kind of kernel is on its own roofline, max(bytes / bandwidth, FLOPs / compute),
    and they run one after another: the dense linear layers (weights once per step), the
    routed experts (the experts the step's tokens touch; slower the narrower each GPU's
    slice of an expert is) and
    attention (the decodes' KV cache reads; FLOPs in 16 bits).
    """
    arch = layout.arch
    eff = layout.efficiency
    shards = layout.tensor_parallel * layout.pipeline_parallel
    tokens = decodes + prefill_tokens
    bandwidth = layout.gpu.memory_bandwidth_gbps * 1e9 * eff.bandwidth
    linear_peak = compute_flops_per_gpu(layout.gpu, layout.quantization) * eff.compute
    # NOTE: attention runs in 16 bits whatever the weight format (FP8 and int8 formats
    # quantize the linear layers; the engines' default attention kernels are 16-bit).
    attention_peak = compute_flops_per_gpu(layout.gpu, "bf16") * eff.compute

    weights = memory.weight_bytes(arch, layout.quantization) / shards
    share = _expert_share(arch)
    active = memory.active_params(arch)
    expert_active = (
        memory.total_params(arch) * share * ((arch.experts_per_token or 1) / (arch.experts or 1))
    )
    dense = max(
        weights * (1 - share) / bandwidth,
        2 * (active - expert_active) * tokens / shards / linear_peak,
    )
    expert = 0.0
    if share:
        width = arch.intermediate_size / layout.tensor_parallel
        expert = max(
            weights * share * _touched(arch, tokens) / bandwidth,
            2 * expert_active * tokens / shards / linear_peak,
        ) * ((width + eff.moe_half_width) / width)

    kv_read = decodes * memory.kv_tokens_per_sequence(arch, round(context))
    attention = max(
        kv_read * layout.kv_bytes_per_token_per_gpu / bandwidth,
        (
            _attention_flops(arch, decodes, context)
            + _attention_flops(arch, prefill_tokens, prefill_context)
        )
        / shards
        / attention_peak,
    )
    return dense + expert + attention + _allreduce_s(layout, tokens)


def step_s(
    layout: Layout,
    decodes: int,
    context: float,
    prefill_tokens: int = 0,
    prefill_context: float = 0.0,
) -> float:
    """One engine step: `decodes` sequences of `context` tokens get one token each, and
    `prefill_tokens` prompt tokens (a chunk) whose attention spans `prefill_context`
    tokens on average are prefilled beside them.

    With PP the decodes pass the stages in PP micro-batches, which pipeline; a prompt's
    chunk passes the stages one after another, so PP does not shorten it. Host work in
    series with the device: a fixed cost per step, a launch cost per layer and the engine
    loop's cost per sequence. The per-sequence work of turning tokens into response
    streams is done by another process while the device runs, so the step takes at least
    that long.
    """
    pp = layout.pipeline_parallel
    eff = layout.efficiency
    micro = math.ceil(decodes / pp) if decodes else 0
    sequences = decodes + (1 if prefill_tokens else 0)
    device = (
        pp * _stage_s(layout, micro, context, prefill_tokens, prefill_context)
        + eff.step_overhead_ms * 1e-3
        + eff.layer_overhead_us * 1e-6 * layout.arch.layers
        + eff.sequence_overhead_us * 1e-6 * sequences
    )
    return max(device, eff.stream_overhead_us * 1e-6 * sequences)


def decode_step_s(layout: Layout, batch: int, context: float) -> float:
    """Time for every sequence of the batch to get one more token (TPOT without prefill)."""
    return step_s(layout, max(1, batch), context)


def _chunks(input_tokens: int, room: int, cached: int = 0) -> list[tuple[int, float]]:
    """The uncached part of a prompt cut into chunks of at most `room` tokens: (size, mean
    attention span). The first `cached` tokens come from the prefix cache: they are not
    computed, but every later token attends to them."""
    out = []
    done = min(cached, input_tokens)
    while done < input_tokens:
        size = min(room, input_tokens - done)
        out.append((size, done + size / 2))
        done += size
    return out


def _prompt_s(
    layout: Layout, input_tokens: int, decodes: int, context: float, room: int, cached: int = 0
) -> float:
    """Wall time of one prompt's prefill steps, `decodes` other sequences decoding in each."""
    return sum(
        step_s(layout, decodes, context, size, span)
        for size, span in _chunks(input_tokens, max(1, room), cached)
    )


def prefill_s(
    layout: Layout, input_tokens: int, chunk_tokens: int | None = None, cached: int = 0
) -> float:
    """Prefill of one prompt on an idle replica, in chunks of `chunk_tokens` (None: one
    pass), `cached` of its tokens from the prefix cache, with the request's fixed latency
    and admission: TTFT without load."""
    eff = layout.efficiency
    room = chunk_tokens or max(1, input_tokens - cached)
    latency = (eff.request_overhead_ms + eff.admission_ms) / 1e3
    return _prompt_s(layout, input_tokens, 0, 0.0, room, cached) + latency


def _decode_token_s(
    layout: Layout, running: int, context: float, speculation: Speculation | None
) -> float:
    """Time per output token of one decode step of `running` sequences: the step itself,
    or with speculation the verification of every drafted token plus the drafting, over
    the tokens a step yields."""
    if speculation is None:
        return step_s(layout, running, context)
    k = speculation.tokens
    verify = step_s(layout, running, context, running * k, context)
    bandwidth = layout.gpu.memory_bandwidth_gbps * 1e9 * layout.efficiency.bandwidth
    draft = k * (
        speculation.draft_bytes / layout.tensor_parallel / bandwidth
        + layout.efficiency.layer_overhead_us * 1e-6
    )
    return (verify + draft) / speculation.tokens_per_step


def _md1(load: float, service: float, cap: float) -> tuple[float, float]:
    """Mean and p95 wait in an M/D/1 queue (Poisson arrivals, fixed service time).

    Mean load x service / (2 (1 - load)); for the p95, P(wait > 0) = load and the wait
    given one is about exponential with mean (mean / load). Both are capped at `cap` (a
    closed loop has at most its other requests ahead of one), and the load at 0.95.
    """
    if load <= 0 or service <= 0:
        return 0.0, 0.0
    load = min(load, 0.95)
    mean = load * service / (2 * (1 - load))
    p95 = mean / load * math.log(load / 0.05) if load > 0.05 else 0.0
    return min(mean, cap), min(p95, cap)


def predict(
    layout: Layout,
    input_tokens: int,
    output_tokens: int,
    concurrency: int,
    chunk_tokens: int | None = None,
    max_sequences: int | None = None,
    prefix_hit: float = 0.0,
    speculation: Speculation | None = None,
) -> Timing:
    """Steady state of `concurrency` requests in flight, each prompt `input_tokens`, reply
    `output_tokens` (a closed loop: a finished request is replaced by a new one).

    `prefix_hit` of each prompt's tokens come from the prefix cache (only the rest is
    prefilled, attending to all of it); `speculation` makes each decode step verify drafted
    tokens and yield more than one per sequence (`Speculation`).

    The replica runs at most `max_sequences` at once (None: all); the rest wait for a
    slot, which adds to TTFT, not to the batch. A running request's prompt is prefilled
    in chunks that fit the step's token budget next to the other sequences' decodes
    (`chunk_tokens`; None prefills a whole prompt in one step), so:

    - cycle: each stream needs chunks + output - 1 steps (more when the budget cannot
      take every prompt), each a decode step of the batch, plus the extra time the
      prompts' chunks add to the steps that carry them;
    - TPOT: a stream's decode steps plus the chunks of the other streams' prompts that
      land in them, over output - 1; its p95 takes the 95th percentile of that (Poisson)
      count of chunks;
    - TTFT: the request's fixed latency, its admission by the server (one request at a
      time, an M/D/1 queue), half a step in flight (a full one for the p95), the wait for
      the prefill budget (an M/D/1 queue of prompts), the wait for a slot, and its own
      chunks; the p95 takes the queues' p95s;
    - throughput: streams x output / (latency + cycle) (Little's law over the requests in
      flight), capped by the slots (slots / cycle) and the frontend (1 / admission).
    """
    eff = layout.efficiency
    n_in = max(0, input_tokens)
    n_out = max(1, output_tokens)
    cached = min(n_in, round(n_in * max(0.0, prefix_hit)))
    fresh = n_in - cached  # the prompt tokens that are computed
    running = max(1, concurrency if max_sequences is None else min(concurrency, max_sequences))
    context = n_in + n_out / 2
    budget = chunk_tokens or max(1, fresh)
    # Each decode takes one token of the step's budget, and its drafted tokens too.
    per_decode = 1 + (speculation.tokens if speculation is not None else 0)
    room = max(1, budget - (running - 1) * per_decode) if chunk_tokens else budget
    chunks = _chunks(n_in, room, cached)
    t_dec = _decode_token_s(layout, running, context, speculation)
    own = _prompt_s(layout, n_in, running - 1, context, room, cached)
    extra = max(0.0, own - len(chunks) * step_s(layout, running - 1, context))
    steps = max(len(chunks) + n_out - (1 if chunks else 0), running * fresh / room)
    cycle = steps * t_dec + running * extra
    admit = eff.admission_ms / 1e3
    latency = eff.request_overhead_ms / 1e3 + admit

    # Two servers a request queues for: the frontend, one admission at a time, and the
    # prefill budget, where one prompt occupies n_in / room steps of a full budget (its
    # last, partial chunk leaves the rest of that step to the next prompt).
    full = step_s(layout, running - 1, context, min(room, fresh), cached + fresh / 2)
    service = (fresh / room) * full if chunks else 0.0
    rate = running / (latency + cycle)
    wait, wait_p95 = _md1(rate * service, service, (running - 1) * service)
    front, front_p95 = _md1(rate * admit, admit, (concurrency - 1) * admit)
    # Little's law over the requests in flight, capped by what the slots and the frontend
    # can pass; a closed loop beyond either waits in a queue (TTFT), not in the batch. The
    # cycle already holds the steps a saturated prefill budget adds, so the budget's
    # queueing (an open-arrival estimate, for TTFT) is not charged to throughput again.
    rate = min(concurrency / (latency + cycle), running / cycle)
    if admit > 0:
        rate = min(rate, 1 / admit)
    queue = max(0.0, concurrency / rate - (latency + cycle))
    in_flight = t_dec if running > 1 else 0.0
    base_ttft = latency + queue + own
    if n_out > 1:
        tpot = max(t_dec, (cycle - own) / (n_out - 1))
        others = (running - 1) * (n_out - 1) / steps
        tpot_p95 = tpot + extra * Z95 * math.sqrt(others) / (n_out - 1)
    else:
        tpot = tpot_p95 = t_dec
    return Timing(
        ttft_ms=(base_ttft + front + wait + in_flight / 2) * 1e3,
        tpot_ms=tpot * 1e3,
        output_tokens_per_second=rate * output_tokens,
        step_ms=t_dec * 1e3,
        prefill_ms=prefill_s(layout, n_in, chunk_tokens, cached) * 1e3,
        ttft_p95_ms=(base_ttft + front_p95 + wait_p95 + in_flight) * 1e3,
        tpot_p95_ms=tpot_p95 * 1e3,
        queue_ms=queue * 1e3,
        running=running,
    )
