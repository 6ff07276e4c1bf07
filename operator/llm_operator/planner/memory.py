"""Memory model: weight bytes, KV cache bytes per token, engine overhead, what fits.

Pure functions over an `Architecture` and a `GpuType`. Called by `planner.search` and
`planner.estimate`. All sizes are bytes (ints); convert with `GIB`/`GB` only for display.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llm_operator.api.v1alpha1 import GGUF_QUANTIZATIONS, Architecture
from llm_operator.catalog import GB, GIB, GpuType
from llm_operator.engines import EngineMemory

# Bits per weight as sold: the seed calculator's numbers (70B x 16 bits = 140 GB).
NOMINAL_BITS: dict[str, float] = {
    "fp32": 32,
    "fp16": 16,
    "bf16": 16,
    "fp8": 8,
    "int8": 8,
    "int4": 4,
    "awq": 4,
    "gptq": 4,
    "q4_0": 4,
    "q4_1": 4,
    "q4_k_m": 4,
    "q5_k_m": 5,
    "q6_k": 6,
    "q8_0": 8,
}

# Bits per weight as stored, scales included.
# - int4/awq/gptq: 4-bit weights, one fp16 scale and one packed 4-bit zero point per group
#   of 128 (AutoAWQ and AutoGPTQ default group_size=128): 4 + 16/128 + 4/128 = 4.156.
# - q8_0: blocks of 32 int8 weights with one fp16 scale: 8 + 16/32 = 8.5 (llama.cpp
#   ggml-common.h block_q8_0).
# - q4_0 / q4_1: blocks of 32 4-bit weights with one fp16 scale (q4_1: and an fp16 min):
#   4 + 16/32 = 4.5 and 4 + 32/32 = 5.0 (ggml-common.h block_q4_0, block_q4_1).
# - q6_k: super-blocks of 256 6-bit weights, 16 int8 scales and an fp16 scale: 210 bytes
#   per 256 weights = 6.5625 (ggml-common.h block_q6_K).
# - q4_k_m / q5_k_m: whole-file averages for Llama-3.1-8B as listed in llama.cpp
#   tools/quantize/README.md (Q4_K_M 4.89 BPW, Q5_K_M 5.70 BPW); the mixes keep some
#   tensors at higher precision, so they are averages over every tensor, embeddings included.
STORED_BITS: dict[str, float] = {
    "fp32": 32,
    "fp16": 16,
    "bf16": 16,
    "fp8": 8,
    "int8": 8,
    "int4": 4 + 16 / 128 + 4 / 128,
    "awq": 4 + 16 / 128 + 4 / 128,
    "gptq": 4 + 16 / 128 + 4 / 128,
    "q4_0": 4.5,
    "q4_1": 5.0,
    "q4_k_m": 4.89,
    "q5_k_m": 5.70,
    "q6_k": 6.5625,
    "q8_0": 8.5,
}

# Formats where vLLM/TGI keep the embedding and output head in 16 bits (only the linear
# layers of the transformer blocks are quantized: vLLM quantization configs return
# UnquantizedEmbeddingMethod for VocabParallelEmbedding/ParallelLMHead).
_LINEAR_ONLY = {"fp8", "int8", "int4", "awq", "gptq"}


def nominal_weight_gb(params: float, quantization: str) -> float:
    """Weights in GB (1e9 bytes) at the nominal bit width, as a back-of-envelope calculator."""
    return params * NOMINAL_BITS[quantization] / 8 / GB


def embedding_params(arch: Architecture) -> int:
    """Parameters of the token embedding plus the output head (once when tied)."""
    return arch.vocab_size * arch.hidden_size * (1 if arch.tie_word_embeddings else 2)


def params_from_shape(arch: Architecture) -> int:
    """Total parameters estimated from the shape (used when `params` is not given).

    Per layer: attention (Q and O: hidden x heads x headDim each; K and V: hidden x kvHeads x
    headDim each, or the MLA down/up projections), and a gated MLP of 3 x hidden x
    intermediate per expert; plus embeddings. Norms and biases are ignored (<0.1%).
    """
    hd = arch.head_dim_or_default
    if arch.is_mla:
        rank = arch.kv_lora_rank or 0
        rope = arch.qk_rope_head_dim or 0
        attn = (
            arch.hidden_size * arch.attention_heads * (hd + rope)
            + arch.hidden_size * (rank + rope)
            + rank * arch.attention_heads * 2 * hd
            + arch.attention_heads * hd * arch.hidden_size
        )
    else:
        attn = arch.hidden_size * hd * (2 * arch.attention_heads + 2 * arch.kv_heads_or_default)
    mlp = 3 * arch.hidden_size * arch.intermediate_size * (arch.experts or 1)
    return arch.layers * (attn + mlp) + embedding_params(arch)


def total_params(arch: Architecture) -> int:
    """The catalog's parameter count, or the shape estimate."""
    return arch.params or params_from_shape(arch)


def active_params(arch: Architecture) -> int:
    """Parameters touched per token (MoE: routed experts only)."""
    return arch.active_params or total_params(arch)


def stored_bits(arch: Architecture, quantization: str) -> float:
    """Bits per weight as stored, scales included.

    An AWQ/GPTQ checkpoint says its own width (config.json quantization_config bits and
    group_size): bits + one fp16 scale and one packed zero point per group, which for the
    default 4 bits in groups of 128 is `STORED_BITS` (4.156); an 8-bit GPTQ checkpoint is
    twice that, not the 4-bit figure.
    """
    q = arch.quantization_config
    if quantization in ("awq", "gptq") and q is not None and q.quantization == quantization:
        group = q.group_size if q.group_size and q.group_size > 0 else None
        return q.bits + ((16 + q.bits) / group if group else 0.0)
    return STORED_BITS[quantization]


def weight_bytes(arch: Architecture, quantization: str) -> int:
    """Bytes of all weights as stored at `quantization`, scales and 16-bit embeddings included."""
    params = total_params(arch)
    bits = stored_bits(arch, quantization)
    if quantization in _LINEAR_ONLY:
        embed = embedding_params(arch)
        return math.ceil((params - embed) * bits / 8 + embed * 2)
    return math.ceil(params * bits / 8)


def _kv_width(arch: Architecture, kv_heads: int) -> int:
    """Elements stored per token per layer: K and V heads, or the MLA latent."""
    if arch.is_mla:
        return (arch.kv_lora_rank or 0) + (arch.qk_rope_head_dim or 0)
    return 2 * kv_heads * arch.head_dim_or_default


def draft_weight_bytes(arch: Architecture, method: str | None, params: int | None = None) -> int:
    """Weights a speculative decoding method adds next to the target model, whole replica:
    `params` (the head's own count, `resolve.draft_head_from_config`) in 16 bits when the
    caller read its config.json, else an estimate from the target's shape:

    - ngram: none (prompt lookup).
    - eagle, mtp, mlp_speculator: about one decoder layer of the target in 16 bits (an EAGLE
      head is one transformer layer over the target's hidden states, arXiv:2401.15077; an
      MTP module is one more layer, DeepSeek-V3 num_nextn_predict_layers: 1; MLP
      speculators are a few hidden x hidden projections).
    - eagle3, medusa: the same plus an output head of vocab x hidden in 16 bits (EAGLE-3
      and Medusa heads carry their own, arXiv:2503.01840, arXiv:2401.10774).
    """
    if method is None or method == "ngram":
        return 0
    if params is not None:
        return params * 2
    layer = (total_params(arch) - embedding_params(arch)) // arch.layers * 2
    head = arch.vocab_size * arch.hidden_size * 2 if method in ("eagle3", "medusa") else 0
    return layer + head


def kv_bytes_per_token(arch: Architecture, dtype_bytes: float) -> int:
    """KV cache bytes per token for the whole model, every layer at full attention.

    2 x layers x KV heads x head_dim x bytes; for MLA, layers x (kv_lora_rank +
    qk_rope_head_dim) x bytes (the compressed latent is what is cached).
    """
    return math.ceil(arch.layers * _kv_width(arch, arch.kv_heads_or_default) * dtype_bytes)


def kv_bytes_per_token_per_gpu(
    arch: Architecture, dtype_bytes: float, tensor_parallel: int, pipeline_parallel: int
) -> int:
    """KV bytes per token on one GPU of a TP x PP group.

    KV heads are split across TP ranks; when TP exceeds the KV heads each rank keeps a
    replica of one head. The MLA latent is replicated on every TP rank. PP splits layers.
    """
    layers = math.ceil(arch.layers / pipeline_parallel)
    kv_heads = 0 if arch.is_mla else math.ceil(arch.kv_heads_or_default / tensor_parallel)
    return math.ceil(layers * _kv_width(arch, kv_heads) * dtype_bytes)


def kv_tokens_per_sequence(arch: Architecture, length: int) -> float:
    """KV slots one sequence of `length` tokens occupies, in full-attention-token units.

    Sliding-window layers keep at most `slidingWindow` tokens, so a long sequence costs
    less than `length` full tokens.
    """
    if arch.sliding_window is None:
        return float(length)
    windowed = arch.layers if arch.sliding_window_layers is None else arch.sliding_window_layers
    full = arch.layers - windowed
    return (full * length + windowed * min(length, arch.sliding_window)) / arch.layers


def activation_bytes(arch: Architecture, mem: EngineMemory, tensor_parallel: int) -> int:
    """Peak activation memory of the profiling pass, per GPU.

    Dominated by fp32 logits over the vocabulary for every batched token, plus the gated
    MLP intermediates (split by TP) and a few hidden-size buffers. Calibrated on vLLM 0.11
    Llama-3.1-8B/H100 (calibration c20: 4.76 GiB measured, this gives 4.82 GiB).
    """
    per_token = (
        4 * arch.vocab_size
        + 6 * arch.intermediate_size * (arch.experts_per_token or 1) // tensor_parallel
        + 8 * arch.hidden_size
    )
    return mem.batched_tokens * per_token


def overhead_bytes(arch: Architecture, mem: EngineMemory, tensor_parallel: int) -> int:
    """Fixed engine memory per GPU outside weights and KV cache."""
    comm = mem.comm_buffer_gib if tensor_parallel > 1 else 0.0
    return activation_bytes(arch, mem, tensor_parallel) + int((mem.non_torch_gib + comm) * GIB)


@dataclass(frozen=True)
class MemoryFit:
    """Memory of one GPU in a TP x PP group.

    Attributes:
        usable_bytes: device memory x utilization.
        weights_bytes: this GPU's share of the weights.
        overhead_bytes: activations and runtime memory.
        kv_bytes: what is left for the KV cache (negative when the weights do not fit).
        kv_bytes_per_token: KV bytes per token on this GPU.
        max_kv_tokens: tokens the replica's KV cache holds.
    """

    usable_bytes: int
    weights_bytes: int
    overhead_bytes: int
    kv_bytes: int
    kv_bytes_per_token: int
    max_kv_tokens: int

    @property
    def weights_fit(self) -> bool:
        """Whether weights and overhead leave any room for the KV cache."""
        return self.kv_bytes > 0


def memory_fit(
    arch: Architecture,
    gpu: GpuType,
    quantization: str,
    tensor_parallel: int,
    pipeline_parallel: int,
    mem: EngineMemory,
    kv_element_bytes: float = 2.0,
    extra_weight_bytes: int = 0,
) -> MemoryFit:
    """Split one GPU's memory into weights, overhead and KV cache.

    Weights are assumed evenly split over TP x PP ranks (embeddings are vocab-parallel).
    `kv_element_bytes` is what the engine stores per KV element
    (`Engine.kv_cache_element_bytes`: 2 for 16-bit, 1 for FP8, 34/32 for q8_0);
    `extra_weight_bytes` (a speculative draft head, whole replica) is split like the weights.
    """
    usable = int(gpu.memory_bytes * mem.utilization)
    weights = math.ceil(
        (weight_bytes(arch, quantization) + extra_weight_bytes)
        / (tensor_parallel * pipeline_parallel)
    )
    overhead = overhead_bytes(arch, mem, tensor_parallel)
    kv = usable - weights - overhead
    per_token = kv_bytes_per_token_per_gpu(
        arch, kv_element_bytes, tensor_parallel, pipeline_parallel
    )
    return MemoryFit(
        usable_bytes=usable,
        weights_bytes=weights,
        overhead_bytes=overhead,
        kv_bytes=kv,
        kv_bytes_per_token=per_token,
        max_kv_tokens=max(0, kv // per_token),
    )


def is_gguf(quantization: str) -> bool:
    """Whether the quantization is a llama.cpp GGUF format."""
    return quantization in GGUF_QUANTIZATIONS
