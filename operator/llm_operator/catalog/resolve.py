"""Any model's shape from its own files: config.json, or a GGUF header, into an `Architecture`.

Pure: the caller hands in the parsed `config.json` (a dict) or the GGUF header's key/value
metadata and tensor shapes; `llm_operator.hub` fetches and reads them. The catalog stays
the offline cache of well-known configs; this module is how every other model is sized.
Called by `hub` (and through it by `llmctl` and the operator's reconcile).

What is read, and why each default (the transformers configuration classes are the
authority: a config.json omits any field equal to its class default, so the defaults the
families rely on are repeated here with their source):

- layers, hidden size, heads, KV heads, head_dim, vocab, max_position_embeddings and
  tie_word_embeddings, under their usual names (GPT-2 style aliases accepted), from the
  language model's part of a multimodal config (`text_config`, `language_config`,
  `llm_config`).
- MoE: experts (num_local_experts / n_routed_experts / num_experts), experts per token,
  the per-expert width (moe_intermediate_size, else intermediate_size), shared experts and
  the dense layers some families keep (first_k_dense_replace, mlp_only_layers,
  decoder_sparse_step, interleave_moe_layer_step), so `params`/`activeParams` are exact.
- MLA (kv_lora_rank, qk_rope_head_dim, q_lora_rank) for DeepSeek-V2/V3-style attention.
- Sliding windows only where the engines limit the KV cache to the window (see
  `sliding_window`); anything else is planned as full attention, which never undersizes.
- `quantization_config` (or compressed-tensors' older `compression_config`): AWQ/GPTQ bits
  and group size, FP8 (fp8, fbgemm_fp8), compressed-tensors weight bits and type.

Parameter counts are exact for the families above (they reproduce the catalog's published
totals to the parameter: embeddings, attention with its biases and norms, gated MLP or
experts with routers and shared experts, final norm); other families are counted with the
same convention, within a fraction of a percent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from llm_operator.api.v1alpha1 import Architecture, QuantizationConfig

FIX = "set spec.model.architecture (llmctl: --model-config FILE) to describe the model"

# Nested sections that hold the language model of a multimodal config: transformers'
# Gemma3Config / Llama4Config / Qwen2VLConfig (recent) / LlavaConfig `text_config`,
# DeepSeek-VL2 `language_config`, InternVL `llm_config`.
TEXT_SECTIONS = ("text_config", "language_config", "llm_config")

# Field names, first the transformers standard, then older aliases (GPT-2's n_layer, n_embd,
# n_head, n_positions, n_inner; Falcon's n_head_kv; ChatGLM's seq_length).
NAMES: dict[str, tuple[str, ...]] = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "model_dim"),
    "attention_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv", "n_kv_heads"),
    "vocab_size": ("vocab_size", "padded_vocab_size", "n_vocab"),
    "max_context": (
        "max_position_embeddings",
        "n_positions",
        "max_sequence_length",
        "seq_length",
        "n_ctx",
    ),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim"),
    "experts": ("num_local_experts", "n_routed_experts", "num_experts", "moe_num_experts"),
    "experts_per_token": ("num_experts_per_tok", "num_experts_per_token", "moe_top_k"),
}

# Where the API field names the user would set instead.
API_FIELD = {
    "layers": "layers",
    "hidden_size": "hiddenSize",
    "attention_heads": "attentionHeads",
    "vocab_size": "vocabSize",
    "max_context": "maxContext",
    "intermediate_size": "intermediateSize",
}

# Class defaults of fields that real config.json files omit (transformers
# models/<family>/configuration_<family>.py). google/gemma-3-4b-it's text_config, for one,
# names only hidden_size, intermediate_size, num_hidden_layers, rope_scaling and
# sliding_window; Gemma3TextConfig supplies the rest.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": {
        "vocab_size": 262_208,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 131_072,
        "sliding_window": 4096,
        "sliding_window_pattern": 6,
        "tie_word_embeddings": True,
    },
    "gemma2": {"sliding_window": 4096, "tie_word_embeddings": True},  # Gemma2Config
    "gemma": {"tie_word_embeddings": True},  # GemmaConfig
    "cohere2": {"sliding_window_pattern": 4, "tie_word_embeddings": True},  # Cohere2Config
    "gpt2": {"tie_word_embeddings": True},  # PretrainedConfig default, kept by GPT2Config
}

# NOTE: an unknown family whose config.json does not say tie_word_embeddings is planned
# with an untied output head: PretrainedConfig's own default is True, but counting the head
# twice can only oversize the weights by vocab x hidden, never undersize them.
UNTIED_BY_DEFAULT = False

# Families whose MLP is not gated (2 matrices, not 3): transformers GPT2MLP, GPTNeoXMLP,
# GPTJMLP, OPT's fc1/fc2, BloomMLP, FalconMLP, PhiMLP, GPTBigCodeMLP, Starcoder2MLP, MptMLP.
NON_GATED_MLP = frozenset(
    {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "gpt_bigcode", "starcoder2"}
)

# Families with biases on q, k and v but not o (transformers Qwen2Attention:
# `nn.Linear(..., bias=True)` for q_proj/k_proj/v_proj, `bias=False` for o_proj).
QKV_BIAS = frozenset({"qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl", "qwen2_vl_text"})

# Families with an RMSNorm of head_dim on queries and keys (Qwen3Attention q_norm/k_norm,
# Gemma3Attention q_norm/k_norm).
QK_NORM = frozenset({"qwen3", "qwen3_moe", "gemma3_text"})

# Families with four RMSNorms per layer (input, post-attention, pre- and post-feedforward:
# Gemma2DecoderLayer, Gemma3DecoderLayer); every other family counts two.
FOUR_NORMS = frozenset({"gemma2", "gemma3_text"})

# GGUF general.file_type (ggml's `LlamaFileType`) -> the GGUF quantizations this project
# plans for (api.v1alpha1.GGUF_QUANTIZATIONS, plus 16/32-bit files).
# NOTE: the gguf package is imported when a GGUF header is read, not with this module: it
# pulls in numpy, a sixth of `llmctl`'s start-up.
GGUF_FILE_TYPE_NAMES: dict[str, str] = {
    "ALL_F32": "fp32",
    "MOSTLY_F16": "fp16",
    "MOSTLY_BF16": "bf16",
    "MOSTLY_Q4_0": "q4_0",
    "MOSTLY_Q4_1": "q4_1",
    "MOSTLY_Q8_0": "q8_0",
    "MOSTLY_Q4_K_M": "q4_k_m",
    "MOSTLY_Q5_K_M": "q5_k_m",
    "MOSTLY_Q6_K": "q6_k",
}


def gguf_file_types() -> dict[int, str]:
    """general.file_type value -> quantization name, from ggml's own `LlamaFileType`."""
    from gguf import LlamaFileType

    return {int(LlamaFileType[name]): q for name, q in GGUF_FILE_TYPE_NAMES.items()}


class ConfigError(ValueError):
    """A config.json or GGUF header the planner cannot size; the message names what is
    missing or unsupported and what to set instead."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model's shape as read from its own files.

    Attributes:
        architecture: the shape, with exact `params`/`activeParams`.
        origin: where it was read from, for messages (`config.json of org/name@main`).
        quantization: the stored weight type of a GGUF file (q4_k_m, ...): the planner
            plans for exactly that; None for a config.json (a pre-quantized checkpoint says
            its format in `architecture.quantizationConfig`).
    """

    architecture: Architecture
    origin: str
    quantization: str | None = None


@dataclass(frozen=True)
class GgufHeader:
    """What a GGUF file's header says, as plain values (read by `hub.read_gguf_header`).

    Attributes:
        metadata: key -> value (int, float, bool, str, or a list of them; a long array,
            such as tokenizer.ggml.tokens, may be given as its length).
        tensors: (name, shape) of every tensor in the file.
    """

    metadata: Mapping[str, Any]
    tensors: tuple[tuple[str, tuple[int, ...]], ...] = field(default_factory=tuple)


def _first(cfg: Mapping[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        value = cfg.get(name)
        if value is not None:
            return value
    return None


def _int(cfg: Mapping[str, Any], what: str, origin: str, required: bool = True) -> int | None:
    names = NAMES[what]
    value = _first(cfg, names)
    if value is None:
        if not required:
            return None
        aliases = f" (nor {', '.join(names[1:])})" if len(names) > 1 else ""
        raise ConfigError(
            f"{origin} has no {names[0]}{aliases}: {FIX} "
            f"(spec.model.architecture.{API_FIELD.get(what, what)})"
        )
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ConfigError(f"{origin}: {names[0]} is {value!r}, not a whole number: {FIX}")
    return int(value)


def language_model_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The language model's part of a config, with its family's omitted defaults filled in.

    A multimodal config keeps the LM under `text_config` (or `language_config`,
    `llm_config`); its fields win over the top level's, which still supplies what the nested
    part leaves out (tie_word_embeddings, quantization_config, a vocab_size on the outside).
    """
    nested = next((config[k] for k in TEXT_SECTIONS if isinstance(config.get(k), Mapping)), None)
    outer = {
        k: v
        for k, v in config.items()
        if k not in TEXT_SECTIONS and not (k.endswith("_config") and isinstance(v, Mapping))
    }
    for key in ("quantization_config", "compression_config"):
        if isinstance(config.get(key), Mapping):
            outer[key] = config[key]
    merged = {**outer, **(dict(nested) if nested is not None else {})}
    defaults = FAMILY_DEFAULTS.get(str(merged.get("model_type") or ""), {})
    return {**defaults, **{k: v for k, v in merged.items() if v is not None}}


def sliding_window(lm: Mapping[str, Any], layers: int) -> tuple[int | None, int | None]:
    """(window, layers that use it), only where the engines cap those layers' KV cache.

    - `layer_types` (transformers >= 4.53 writes it for Gemma 2/3, Qwen 2/3, GPT-OSS,
      Cohere 2): the layers marked `sliding_attention`.
    - mistral: `sliding_window` on every layer when set (Mistral-7B-v0.1: 4096; v0.2 and
      later: null). vLLM's KV cache manager frees blocks that fall out of the window.
    - qwen2/qwen2_moe/qwen3/qwen3_moe: only with `use_sliding_window: true`, on the layers
      from `max_window_layers` on (Qwen2Config docstring; all released checkpoints say false).
    - gemma2: every other layer, starting with the first (Gemma2DecoderLayer:
      `not bool(layer_idx % 2)`; Gemma 2 paper sec. 2).
    - gemma3_text / cohere2: all but every `sliding_window_pattern`-th layer
      (`(layer_idx + 1) % pattern != 0`; Gemma3TextConfig, Cohere2Config).
    - Everything else, phi3 included, is planned as full attention: the catalog's Phi-3
      entry explains why (vLLM allocates the whole context for it), and a window the engine
      does not apply would undersize the KV cache.
    """
    model_type = str(lm.get("model_type") or "")
    window = lm.get("sliding_window")
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        return None, None
    types = lm.get("layer_types")
    if isinstance(types, Sequence) and not isinstance(types, str) and types:
        windowed = sum(1 for t in types[:layers] if t == "sliding_attention")
        return (window, windowed) if windowed else (None, None)
    if model_type == "mistral":
        return window, layers
    if model_type in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"):
        if lm.get("use_sliding_window") is not True:
            return None, None
        full = int(lm.get("max_window_layers") or 0)
        windowed = max(0, layers - full)
        return (window, windowed) if windowed else (None, None)
    if model_type == "gemma2":
        return window, math.ceil(layers / 2)
    if model_type in ("gemma3_text", "cohere2"):
        pattern = int(lm.get("sliding_window_pattern") or lm.get("_sliding_window_pattern") or 0)
        if pattern <= 1:
            return None, None
        return window, layers - layers // pattern
    return None, None


def quantization_config(config: Mapping[str, Any]) -> QuantizationConfig | None:
    """The checkpoint's stored format from `quantization_config` (None: 16/32-bit weights).

    Raises:
        ConfigError: a method the planner cannot size (bitsandbytes, mxfp4, NVFP4, ...).
    """
    q = config.get("quantization_config") or config.get("compression_config")
    if not isinstance(q, Mapping):
        return None
    method = str(q.get("quant_method") or "").lower()
    try:
        if method in ("awq", "gptq"):
            # AutoAWQ's own config names them w_bit and q_group_size.
            bits = int(q.get("bits") or q.get("w_bit") or 4)
            group = q.get("group_size", q.get("q_group_size"))
            return QuantizationConfig(
                quant_method=method, bits=bits, group_size=None if group is None else int(group)
            )
        if method in ("fp8", "fbgemm_fp8"):
            return QuantizationConfig(quant_method=method, bits=8, weight_type="float")
        if method == "compressed-tensors":
            return _compressed_tensors(q)
    except (TypeError, ValueError, ValidationError) as err:
        raise ConfigError(f"quantization_config ({method}) cannot be read: {err}") from err
    raise ConfigError(
        f"quantization_config.quant_method {method or '(none)'} is not a format the planner "
        "sizes (awq, gptq, fp8, fbgemm_fp8, compressed-tensors): serve a 16-bit or one of "
        "those checkpoints"
    )


def _compressed_tensors(q: Mapping[str, Any]) -> QuantizationConfig | None:
    """compressed-tensors: the widest weight scheme of its config_groups (a model mixing 4-
    and 8-bit groups is sized at 8, the safe side)."""
    groups = q.get("config_groups") or {}
    schemes = [
        g["weights"]
        for g in groups.values()
        if isinstance(g, Mapping) and isinstance(g.get("weights"), Mapping)
    ]
    if not schemes:
        return None  # activation or KV-cache schemes only: the weights stay 16-bit
    w = max(schemes, key=lambda s: int(s.get("num_bits") or 16))
    bits = int(w.get("num_bits") or 16)
    if bits >= 16:
        return None
    weight_type = "float" if str(w.get("type") or "int") == "float" else "int"
    if weight_type == "float" and bits != 8:
        raise ConfigError(
            f"compressed-tensors {bits}-bit float weights (e.g. NVFP4) are not a format the "
            "planner sizes: serve an FP8, INT8/INT4 or 16-bit checkpoint"
        )
    group = w.get("group_size") if w.get("strategy") == "group" else None
    return QuantizationConfig(
        quant_method="compressed-tensors",
        bits=bits,
        group_size=None if group is None else int(group),
        weight_type=weight_type,
    )


@dataclass(frozen=True)
class _Shape:
    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # the dense MLP width
    vocab: int
    tied: bool


def _attention_params(lm: Mapping[str, Any], s: _Shape) -> int:
    """One layer's attention: projections, their biases and q/k norms."""
    h = s.hidden
    rank = int(lm.get("kv_lora_rank") or 0)
    if rank:
        nope = int(lm.get("qk_nope_head_dim") or s.head_dim)
        rope = int(lm.get("qk_rope_head_dim") or 0)
        v = int(lm.get("v_head_dim") or nope)
        q_rank = int(lm.get("q_lora_rank") or 0)
        if q_rank:  # q_a_proj, its norm, q_b_proj
            q = h * q_rank + q_rank + q_rank * s.heads * (nope + rope)
        else:
            q = h * s.heads * (nope + rope)
        kv = h * (rank + rope) + rank + rank * s.heads * (nope + v)
        return q + kv + s.heads * v * h
    q_out, kv_out = s.heads * s.head_dim, s.kv_heads * s.head_dim
    params = 2 * h * q_out + 2 * h * kv_out
    if s.model_type in QKV_BIAS:
        params += q_out + 2 * kv_out
    elif lm.get("attention_bias") is True:
        params += q_out + 2 * kv_out + h
    if s.model_type in QK_NORM:
        params += 2 * s.head_dim
    return params


def _mlp(s: _Shape, width: int) -> int:
    return (2 if s.model_type in NON_GATED_MLP else 3) * s.hidden * width


def _moe_layer_count(lm: Mapping[str, Any], layers: int) -> int:
    """How many layers route to experts; the others keep a dense MLP.

    DeepSeek-V2/V3: `layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0`;
    Qwen2/3-MoE: not in `mlp_only_layers` and `(layer_idx + 1) % decoder_sparse_step == 0`;
    Llama 4: `moe_layers`, else every `interleave_moe_layer_step`-th layer; else all.
    """
    if "first_k_dense_replace" in lm:
        first = int(lm.get("first_k_dense_replace") or 0)
        freq = int(lm.get("moe_layer_freq") or 1)
        return sum(1 for i in range(layers) if i >= first and i % freq == 0)
    if "decoder_sparse_step" in lm or "mlp_only_layers" in lm:
        step = int(lm.get("decoder_sparse_step") or 1)
        dense = set(lm.get("mlp_only_layers") or [])
        return sum(1 for i in range(layers) if i not in dense and (i + 1) % step == 0)
    if isinstance(lm.get("moe_layers"), list):
        return len(lm["moe_layers"])
    if "interleave_moe_layer_step" in lm:
        step = int(lm.get("interleave_moe_layer_step") or 1)
        return len(range(step - 1, layers, step))
    return layers


def _expert_params(lm: Mapping[str, Any], s: _Shape, routed: int, experts: int) -> int:
    """One MoE layer with `routed` of its `experts` experts: routed and shared experts and
    the router (and DeepSeek-V3's per-expert score bias, `topk_method: noaux_tc`)."""
    width = int(lm.get("moe_intermediate_size") or lm.get("intermediate_size") or 0)
    params = routed * _mlp(s, width) + experts * s.hidden
    shared = int(lm.get("n_shared_experts") or lm.get("num_shared_experts") or 0)
    if s.model_type == "llama4_text":
        shared = 1  # Llama4TextMoe.shared_expert, always active
    params += shared * _mlp(s, width)
    if lm.get("shared_expert_intermediate_size"):
        # Qwen2MoeSparseMoeBlock: a shared expert of its own width and a sigmoid gate.
        params += _mlp(s, int(lm["shared_expert_intermediate_size"])) + s.hidden
    if lm.get("topk_method") == "noaux_tc":
        params += experts
    return params


def count_params(lm: Mapping[str, Any], s: _Shape, experts: int, per_token: int) -> tuple[int, int]:
    """(total, active) parameters of the language model."""
    norms = (4 if s.model_type in FOUR_NORMS else 2) * s.hidden
    base = s.layers * (_attention_params(lm, s) + norms)
    base += s.vocab * s.hidden * (1 if s.tied else 2) + s.hidden
    if experts <= 1:
        dense = s.layers * _mlp(s, s.intermediate)
        return base + dense, base + dense
    moe = _moe_layer_count(lm, s.layers)
    dense_width = int(lm.get("intermediate_size_mlp") or s.intermediate)
    dense = (s.layers - moe) * _mlp(s, dense_width)
    total = base + dense + moe * _expert_params(lm, s, experts, experts)
    active = base + dense + moe * _expert_params(lm, s, per_token, experts)
    return total, active


def architecture_from_config(
    config: Mapping[str, Any], origin: str = "config.json"
) -> Architecture:
    """The `Architecture` a checkpoint's config.json describes.

    Args:
        config: the parsed config.json.
        origin: where it came from, named in error messages.

    Raises:
        ConfigError: a field the planner needs is missing or unusable; the message names
            it and says to set spec.model.architecture instead.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"{origin} is not a JSON object: {FIX}")
    lm = language_model_config(config)
    model_type = str(lm.get("model_type") or "") or None
    layers = _int(lm, "layers", origin)
    hidden = _int(lm, "hidden_size", origin)
    heads = _int(lm, "attention_heads", origin)
    vocab = _int(lm, "vocab_size", origin)
    max_context = _int(lm, "max_context", origin)
    assert layers and hidden and heads and vocab and max_context
    kv_heads = _int(lm, "kv_heads", origin, required=False) or heads
    head_dim = int(lm.get("head_dim") or lm.get("qk_nope_head_dim") or hidden // heads)
    raw_experts = _int(lm, "experts", origin, required=False) or 0
    experts = raw_experts if raw_experts > 1 else 0
    intermediate = _int(lm, "intermediate_size", origin, required=False)
    if intermediate is None:
        if model_type in NON_GATED_MLP:
            intermediate = 4 * hidden  # GPT2MLP: n_inner None means 4 x n_embd
        else:
            _int(lm, "intermediate_size", origin)  # raises, naming the field
    assert intermediate is not None
    per_expert = int(lm.get("moe_intermediate_size") or intermediate) if experts else None
    per_token = _int(lm, "experts_per_token", origin, required=False) if experts else None
    if experts and per_token is None:
        raise ConfigError(f"{origin} has experts but no num_experts_per_tok: {FIX}")
    tied_raw = lm.get("tie_word_embeddings")
    tied = bool(tied_raw) if tied_raw is not None else UNTIED_BY_DEFAULT
    shape = _Shape(
        model_type=model_type or "",
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=intermediate,
        vocab=vocab,
        tied=tied,
    )
    total, active = count_params(lm, shape, experts, per_token or 0)
    window, windowed = sliding_window(lm, layers)
    mla_rank = lm.get("kv_lora_rank")
    try:
        return Architecture(
            model_type=model_type,
            quantization_config=quantization_config(lm),
            params=total,
            active_params=active if experts else None,
            layers=layers,
            hidden_size=hidden,
            attention_heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=per_expert or intermediate,
            vocab_size=vocab,
            max_context=max_context,
            tie_word_embeddings=tied,
            experts=experts or None,
            experts_per_token=per_token,
            kv_lora_rank=int(mla_rank) if mla_rank else None,
            qk_rope_head_dim=int(lm.get("qk_rope_head_dim") or 0) if mla_rank else None,
            sliding_window=window,
            sliding_window_layers=windowed if window is not None and windowed != layers else None,
        )
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{origin} describes an impossible shape ({problems}): {FIX}") from err


def _gguf_int(value: Any) -> int | None:
    """A GGUF metadata number; per-layer arrays (head_count_kv of some models) -> the
    largest, which sizes the KV cache on the safe side."""
    if isinstance(value, list | tuple):
        numbers = [int(v) for v in value if isinstance(v, int | float)]
        return max(numbers) if numbers else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


def architecture_from_gguf(header: GgufHeader, origin: str = "GGUF file") -> ResolvedModel:
    """The `Architecture` and stored weight type a GGUF file's header describes.

    Reads ggml's own keys (gguf `Keys`): general.architecture, <arch>.block_count,
    embedding_length, attention.head_count(_kv), feed_forward_length (the per-expert
    expert_feed_forward_length for MoE), context_length, expert_count/expert_used_count,
    attention.kv_lora_rank; the vocabulary from tokenizer.ggml.tokens; general.file_type for
    the quantization. Parameters are counted from the tensor shapes (experts'
    `*_exps` tensors scaled by expert_used_count / expert_count for the active count); the
    output head is tied when the file has no `output.weight`.

    Raises:
        ConfigError: a key is missing, or the file type is not one the planner sizes.
    """
    from gguf import Keys, LlamaFileType  # see GGUF_FILE_TYPE_NAMES

    meta = header.metadata
    arch = meta.get(Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise ConfigError(f"{origin} has no {Keys.General.ARCHITECTURE}: {FIX}")

    def key(template: str) -> Any:
        return meta.get(template.format(arch=arch))

    def need(template: str, api_field: str) -> int:
        value = _gguf_int(key(template))
        if value is None or value < 1:
            raise ConfigError(
                f"{origin} has no {template.format(arch=arch)}: {FIX} "
                f"(spec.model.architecture.{api_field})"
            )
        return value

    layers = need(Keys.LLM.BLOCK_COUNT, "layers")
    hidden = need(Keys.LLM.EMBEDDING_LENGTH, "hiddenSize")
    heads = need(Keys.Attention.HEAD_COUNT, "attentionHeads")
    max_context = need(Keys.LLM.CONTEXT_LENGTH, "maxContext")
    kv_heads = _gguf_int(key(Keys.Attention.HEAD_COUNT_KV)) or heads
    experts = _gguf_int(key(Keys.LLM.EXPERT_COUNT)) or 0
    per_token = _gguf_int(key(Keys.LLM.EXPERT_USED_COUNT)) if experts > 1 else None
    ffn = _gguf_int(key(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH)) if experts > 1 else None
    ffn = ffn or need(Keys.LLM.FEED_FORWARD_LENGTH, "intermediateSize")
    mla_rank = _gguf_int(key(Keys.Attention.KV_LORA_RANK))
    rope = _gguf_int(key(Keys.Rope.DIMENSION_COUNT)) if mla_rank else None
    # MLA files give key_length = nope + rope; the head width the API means is the value's.
    length_key = Keys.Attention.VALUE_LENGTH if mla_rank else Keys.Attention.KEY_LENGTH
    head_dim = _gguf_int(key(length_key))
    shapes = {name: shape for name, shape in header.tensors}
    tokens = meta.get(Keys.Tokenizer.LIST)
    vocab = (
        (len(tokens) if isinstance(tokens, list | tuple) else _gguf_int(tokens))
        or _gguf_int(key(Keys.LLM.VOCAB_SIZE))
        or max(shapes.get("token_embd.weight", (0,)), default=0)
    )
    if not vocab:
        raise ConfigError(f"{origin} has no {Keys.Tokenizer.LIST}: {FIX} (vocabSize)")
    if not header.tensors:
        raise ConfigError(f"{origin} lists no tensors, so its parameters cannot be counted")
    total = sum(math.prod(shape) for shape in shapes.values())
    experts_params = sum(math.prod(s) for n, s in shapes.items() if "_exps." in n)
    active = total
    if experts > 1 and per_token:
        active = total - experts_params + experts_params * per_token // experts

    file_type = _gguf_int(meta.get(Keys.General.FILE_TYPE))
    if file_type is None:
        raise ConfigError(f"{origin} has no {Keys.General.FILE_TYPE}: set spec.quantization")
    file_types = gguf_file_types()
    quantization = file_types.get(file_type)
    if quantization is None:
        try:
            name = LlamaFileType(file_type).name
        except ValueError:
            name = str(file_type)
        raise ConfigError(
            f"{origin} stores its weights as {name}, not a GGUF type the planner sizes "
            f"({', '.join(sorted(set(file_types.values())))}): use one of those files"
        )

    # llama.cpp keeps a window-sized KV cache for the sliding-window layers of its iSWA
    # models (llama_kv_cache_iswa; `--swa-full` turns it off): Gemma 2 every other layer,
    # Gemma 3 five of every six (llama-model.cpp `set_swa_pattern`). Other architectures
    # are planned with full attention.
    window = _gguf_int(key(Keys.Attention.SLIDING_WINDOW))
    windowed: int | None = None
    if window and arch == "gemma2":
        windowed = math.ceil(layers / 2)
    elif window and arch == "gemma3":
        windowed = layers - layers // 6
    else:
        window = None
    try:
        architecture = Architecture(
            model_type=arch,
            params=total,
            active_params=active if experts > 1 else None,
            layers=layers,
            hidden_size=hidden,
            attention_heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim or hidden // heads,
            intermediate_size=ffn,
            vocab_size=vocab,
            max_context=max_context,
            tie_word_embeddings="output.weight" not in shapes,
            experts=experts if experts > 1 else None,
            experts_per_token=per_token,
            kv_lora_rank=mla_rank,
            qk_rope_head_dim=rope if mla_rank else None,
            sliding_window=window,
            sliding_window_layers=windowed,
        )
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{origin} describes an impossible shape ({problems}): {FIX}") from err
    return ResolvedModel(architecture=architecture, origin=origin, quantization=quantization)


@dataclass(frozen=True)
class DraftHead:
    """A speculative decoding head as its own config.json describes it, checked against
    the model it drafts for.

    Attributes:
        params: the weights it adds to every replica (in the model's 16-bit dtype).
        origin: where it was read from, for messages.
    """

    params: int
    origin: str


def _draft_int(cfg: Mapping[str, Any], name: str, origin: str, default: int | None = None) -> int:
    value = cfg.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            f"{origin}: {name} is {value!r}, not a positive whole number; it does not "
            "describe a draft head vLLM can load"
        )
    return value


def _draft_layer_params(cfg: Mapping[str, Any], hidden: int, origin: str) -> int:
    """One decoder layer of an EAGLE head: attention (GQA) and a gated MLP."""
    heads = _draft_int(cfg, "num_attention_heads", origin)
    kv_heads = _draft_int(cfg, "num_key_value_heads", origin, heads)
    head_dim = _draft_int(cfg, "head_dim", origin, hidden // heads)
    intermediate = _draft_int(cfg, "intermediate_size", origin)
    return (
        2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * intermediate
    )


def draft_head_from_config(
    config: Mapping[str, Any], method: str, target: Architecture, model: str, origin: str
) -> DraftHead:
    """Size a draft head from its config.json and check it was trained for `target`.

    Each method's config is the one vLLM v0.12.0 loads
    (vllm/transformers_utils/configs/{eagle,medusa,mlp_speculator}.py):
    - eagle, eagle3: a decoder config (LlamaConfig or the like; vLLM's converted EAGLEConfig
      nests it under `model`), num_hidden_layers decoder layers over the target's hidden
      states, joined by an fc of 2 (eagle) or 3 (eagle3) x hidden x hidden
      (vllm/model_executor/models/llama_eagle{,3}.py); EAGLE-3 adds its own output head of
      draft_vocab_size x hidden. Token embeddings are the target's.
    - medusa: num_heads heads (any key with "num" and "heads", as MedusaConfig reads it),
      each num_hidden_layers residual blocks of hidden x hidden (+ bias) and an output head
      of truncated_vocab_size (else vocab_size) x hidden.
    - mlp_speculator: n_predict stages, each an embedding and an output head of
      vocab x inner_dim and a projection (emb_dim x inner_dim first, inner_dim squared after);
      tie_weights shares one of each after the first projection.

    Raises:
        ConfigError: the config is not a draft head of that method, or its hidden size or
            vocabulary differ from the model's (a head trained for another model or
            tokenizer: vLLM would fail loading it, or accept nothing it proposes).
    """
    cfg: Mapping[str, Any] = config
    if method in ("eagle", "eagle3") and isinstance(config.get("model"), Mapping):
        cfg = config["model"]
    hidden_key = "emb_dim" if method == "mlp_speculator" else "hidden_size"
    hidden = _draft_int(cfg, hidden_key, origin, target.hidden_size if method == "medusa" else None)
    vocab = _draft_int(cfg, "vocab_size", origin, target.vocab_size)
    fix = f"name a draft head ({method}) trained for {model}"
    if hidden != target.hidden_size:
        raise ConfigError(
            f"{origin}: {hidden_key} {hidden} is not {model}'s hidden size "
            f"{target.hidden_size}, so it was trained for another model; {fix}"
        )
    if vocab != target.vocab_size:
        raise ConfigError(
            f"{origin}: a vocabulary of {vocab} tokens, not {model}'s {target.vocab_size}, "
            f"so it was trained for another tokenizer; {fix}"
        )
    if method in ("eagle", "eagle3"):
        layers = _draft_int(cfg, "num_hidden_layers", origin, 1)
        params = layers * _draft_layer_params(cfg, hidden, origin)
        if method == "eagle":
            params += 2 * hidden * hidden
        else:
            draft_vocab = _draft_int(cfg, "draft_vocab_size", origin, vocab)
            params += 3 * hidden * hidden + draft_vocab * hidden
    elif method == "medusa":
        heads = next(
            (v for k, v in cfg.items() if "num" in k and "heads" in k and isinstance(v, int)), 5
        )
        layers = next(
            (v for k, v in cfg.items() if "num" in k and "layers" in k and isinstance(v, int)), 1
        )
        out_vocab = _draft_int(cfg, "truncated_vocab_size", origin, vocab)
        params = heads * (layers * (hidden * hidden + hidden) + out_vocab * hidden)
    elif method == "mlp_speculator":
        inner = int(cfg.get("inner_dim") or 0) or hidden
        stages = _draft_int(cfg, "n_predict", origin, 3)
        if cfg.get("tie_weights"):
            params = 2 * vocab * inner + hidden * inner + (inner * inner if stages > 1 else 0)
        else:
            params = 2 * stages * vocab * inner + hidden * inner + (stages - 1) * inner * inner
    else:
        raise ConfigError(f"method {method} takes no draft model")
    return DraftHead(params=params, origin=origin)
