"""Time model: prefill is compute-bound, decode is bandwidth-bound, both on a roofline.

One engine step over a batch costs max(bytes moved / achieved bandwidth, FLOPs / achieved
compute) per pipeline stage, plus tensor-parallel all-reduces and a fixed step overhead.
MoE models read only the experts a batch touches and compute with active parameters.
Pipeline parallelism splits a batch into micro-batches; with fewer sequences than stages
the pipeline has bubbles. Called by `planner.search` and `planner.estimate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llm_operator.api.v1alpha1 import Architecture
from llm_operator.catalog import GpuType
from llm_operator.engines import Efficiency
from llm_operator.planner import memory


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
    """Predicted latency and throughput of one replica at one concurrency.

    Attributes:
        ttft_ms: time to first token of a request arriving at that load.
        tpot_ms: time between output tokens a client sees, prefill interference included.
        output_tokens_per_second: the whole replica's output rate.
        step_ms: one decode step of the running batch.
        prefill_ms: prefill of one request's prompt alone.
    """

    ttft_ms: float
    tpot_ms: float
    output_tokens_per_second: float
    step_ms: float
    prefill_ms: float


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


def _weights_read_per_gpu(layout: Layout, batch: int) -> float:
    """Weight bytes one GPU streams per decode step: MoE reads only the touched experts."""
    arch = layout.arch
    total = memory.weight_bytes(arch, layout.quantization) / (
        layout.tensor_parallel * layout.pipeline_parallel
    )
    if not arch.is_moe:
        return total
    experts = arch.experts or 1
    top_k = arch.experts_per_token or 1
    touched = 1 - (1 - top_k / experts) ** batch
    expert_share = 1 - memory.active_params(arch) / memory.total_params(arch)
    expert_share = expert_share * experts / (experts - top_k)
    expert_share = min(1.0, expert_share)
    return total * ((1 - expert_share) + expert_share * touched)


def _attention_flops(arch: Architecture, query_tokens: int, context: float) -> float:
    """QK^T and AV FLOPs of `query_tokens` attending to `context` tokens, all layers."""
    width = arch.attention_heads * arch.head_dim_or_default
    return 4 * arch.layers * query_tokens * context * width


def stage_step_s(layout: Layout, batch: int, context: float) -> float:
    """One pipeline stage's decode step for `batch` sequences of `context` tokens each."""
    pp = layout.pipeline_parallel
    eff = layout.efficiency
    kv_read = batch * memory.kv_tokens_per_sequence(layout.arch, round(context))
    bytes_moved = _weights_read_per_gpu(layout, batch) + kv_read * layout.kv_bytes_per_token_per_gpu
    flops = (
        2 * memory.active_params(layout.arch) * batch
        + _attention_flops(layout.arch, batch, context)
    ) / (layout.tensor_parallel * pp)
    t_mem = bytes_moved / (layout.gpu.memory_bandwidth_gbps * 1e9 * eff.bandwidth)
    t_compute = flops / (compute_flops_per_gpu(layout.gpu, layout.quantization) * eff.compute)
    return max(t_mem, t_compute) + _allreduce_s(layout, batch)


def decode_step_s(layout: Layout, batch: int, context: float) -> float:
    """Time for every sequence of the batch to get one more token (TPOT without prefill)."""
    pp = layout.pipeline_parallel
    micro = max(1, math.ceil(batch / pp))
    return pp * stage_step_s(layout, micro, context) + layout.efficiency.step_overhead_ms / 1e3


def prefill_s(layout: Layout, input_tokens: int) -> float:
    """Prefill of one prompt alone (what a request's TTFT waits for), with the request's
    fixed overhead."""
    return (
        _prefill_work_s(layout, 1, input_tokens, None) + layout.efficiency.request_overhead_ms / 1e3
    )


def _prefill_work_s(
    layout: Layout, prompts: int, input_tokens: int, chunk_tokens: int | None
) -> float:
    """GPU time to prefill `prompts` prompts together: compute-bound, with the weights read
    once per chunk of `chunk_tokens` prompt tokens (vLLM's chunked prefill, TGI's
    max-batch-prefill-tokens, llama.cpp's ubatch); None prefills each prompt on its own."""
    arch = layout.arch
    eff = layout.efficiency
    tokens = prompts * input_tokens
    flops = prompts * (
        2 * memory.active_params(arch) * input_tokens
        + _attention_flops(arch, input_tokens, input_tokens / 2)
    )
    t_compute = flops / (
        layout.tensor_parallel
        * compute_flops_per_gpu(layout.gpu, layout.quantization)
        * eff.compute
    )
    chunk = chunk_tokens if chunk_tokens else input_tokens
    chunks = math.ceil(tokens / max(1, chunk))
    t_weights = (
        layout.pipeline_parallel
        * chunks
        * _weights_read_per_gpu(layout, min(chunk, tokens))
        / (layout.gpu.memory_bandwidth_gbps * 1e9 * eff.bandwidth)
    )
    comm = layout.pipeline_parallel * _allreduce_s(layout, tokens)
    return max(t_compute, t_weights) + comm


def predict(
    layout: Layout,
    input_tokens: int,
    output_tokens: int,
    concurrency: int,
    chunk_tokens: int | None = None,
) -> Timing:
    """Steady state of `concurrency` streams, each prompt `input_tokens`, reply `output_tokens`.

    In one cycle every stream produces `output_tokens` tokens in as many decode steps, and
    the replica prefills one new prompt per stream, the cycle's prompts together in chunks
    of `chunk_tokens` (each chunk reads the weights once; None: one prompt at a time).
    Prefill is charged in full (no overlap with decode), the conservative end of chunked
    prefill; a client sees the other streams' prefills as pauses between its tokens. The
    per-request overhead (tokenising, scheduling, detokenising) delays a request's first
    token but runs beside the GPU's work, so it is in TTFT, not in the cycle.
    """
    batch = max(1, concurrency)
    context = input_tokens + output_tokens / 2
    step = decode_step_s(layout, batch, context)
    prefill = prefill_s(layout, input_tokens)
    prefills = _prefill_work_s(layout, batch, input_tokens, chunk_tokens)
    own = _prefill_work_s(layout, 1, input_tokens, chunk_tokens)
    cycle = output_tokens * step + prefills
    return Timing(
        ttft_ms=(prefill + step) * 1e3,
        tpot_ms=(output_tokens * step + prefills - own) / output_tokens * 1e3,
        output_tokens_per_second=batch * output_tokens / cycle,
        step_ms=step * 1e3,
        prefill_ms=prefill * 1e3,
    )
