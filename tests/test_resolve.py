"""Any model's shape from its own config.json or GGUF header (`catalog.resolve`, pure).

The config.json fixtures in tests/data/configs/ are the public files (tests/data/configs/
SOURCES.md says where each was copied from); where the catalog has the same checkpoint,
what the resolver reads must be the catalog entry, to the parameter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFWriter, LlamaFileType

from llm_operator.catalog import Catalog
from llm_operator.catalog.resolve import (
    ConfigError,
    architecture_from_config,
    architecture_from_gguf,
    language_model_config,
)
from llm_operator.hub import read_gguf_header
from llm_operator.planner import memory

CONFIGS = Path(__file__).parent / "data" / "configs"


def config(repo_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONFIGS / f"{repo_id.replace('/', '--')}.json").read_text())
    return data


@pytest.mark.parametrize(
    "repo_id",
    [
        "meta-llama/Llama-3.1-8B-Instruct",  # dense, GQA
        "mistralai/Mixtral-8x7B-Instruct-v0.1",  # MoE, 2 of 8 experts
        "deepseek-ai/DeepSeek-V3",  # MLA, 3 dense + 58 MoE layers, shared expert, FP8
        "google/gemma-2-9b-it",  # tied, 4 norms per layer, every other layer windowed
        "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",  # AWQ
        "meta-llama/Llama-3.1-405B-Instruct-FP8",  # fbgemm_fp8
    ],
)
def test_config_json_gives_the_catalog_entry_exactly(catalog: Catalog, repo_id: str) -> None:
    resolved = architecture_from_config(config(repo_id), repo_id)
    assert resolved == catalog.model(repo_id).architecture


def test_dense_gqa_llama_and_its_kv_cache(catalog: Catalog) -> None:
    arch = architecture_from_config(config("meta-llama/Llama-3.1-8B-Instruct"))
    assert (arch.attention_heads, arch.kv_heads, arch.head_dim) == (32, 8, 128)
    assert arch.params == 8_030_261_248 and arch.active_params is None
    assert arch.max_context == 131_072 and not arch.tie_word_embeddings
    # 2 (K and V) x 32 layers x 8 KV heads x 128 x 2 bytes
    assert memory.kv_bytes_per_token(arch, 2) == 2 * 32 * 8 * 128 * 2


def test_moe_active_and_total_params() -> None:
    mixtral = architecture_from_config(config("mistralai/Mixtral-8x7B-Instruct-v0.1"))
    assert (mixtral.experts, mixtral.experts_per_token, mixtral.intermediate_size) == (8, 2, 14336)
    assert (mixtral.params, mixtral.active_params) == (46_702_792_704, 12_879_925_248)
    qwen = architecture_from_config(config("Qwen/Qwen3-30B-A3B"))
    # Qwen3-30B-A3B model card: 30.5B total, 3.3B activated; 128 experts, 8 per token.
    assert (qwen.params, qwen.active_params) == (30_532_122_624, 3_353_032_704)
    assert (qwen.experts, qwen.experts_per_token, qwen.intermediate_size) == (128, 8, 768)
    assert qwen.sliding_window is None  # use_sliding_window: false


def test_mla_caches_the_latent_and_counts_dense_first_layers_and_shared_experts() -> None:
    arch = architecture_from_config(config("deepseek-ai/DeepSeek-V3"))
    assert arch.is_mla and (arch.kv_lora_rank, arch.qk_rope_head_dim) == (512, 64)
    assert memory.kv_bytes_per_token(arch, 2) == 61 * (512 + 64) * 2
    # Paper (arXiv:2412.19437): 671B total, 37B activated per token.
    assert (arch.params, arch.active_params) == (671_026_419_200, 37_552_297_472)
    no_dense = {**config("deepseek-ai/DeepSeek-V3"), "first_k_dense_replace": 0}
    assert architecture_from_config(no_dense).params > arch.params  # 3 more MoE layers


def test_sliding_windows_only_where_the_engine_keeps_the_window() -> None:
    mistral = architecture_from_config(config("mistralai/Mistral-7B-v0.1"))
    assert (mistral.sliding_window, mistral.sliding_window_layers) == (4096, None)  # all layers
    assert mistral.params == 7_241_732_096
    gemma = architecture_from_config(config("google/gemma-2-9b-it"))
    assert (gemma.sliding_window, gemma.sliding_window_layers) == (4096, 21)
    # A windowed layer holds at most 4096 tokens: an 8192-token sequence costs 3/4 of full.
    assert memory.kv_tokens_per_sequence(gemma, 8192) == (21 * 8192 + 21 * 4096) / 42
    qwen = architecture_from_config(config("Qwen/Qwen2.5-0.5B-Instruct"))
    assert qwen.sliding_window is None  # sliding_window: 32768 but use_sliding_window: false
    on = {**config("Qwen/Qwen2.5-0.5B-Instruct"), "use_sliding_window": True}
    assert architecture_from_config(on).sliding_window_layers == 24 - 21  # from max_window_layers
    typed = {
        **config("meta-llama/Llama-3.1-8B-Instruct"),
        "sliding_window": 1024,
        "layer_types": ["sliding_attention", "full_attention"] * 16,
    }
    assert architecture_from_config(typed).sliding_window_layers == 16
    phi3_like = {**config("meta-llama/Llama-3.1-8B-Instruct"), "model_type": "phi3"}
    assert architecture_from_config({**phi3_like, "sliding_window": 2047}).sliding_window is None


def test_tied_embeddings_are_counted_once() -> None:
    arch = architecture_from_config(config("Qwen/Qwen2.5-0.5B-Instruct"))
    assert arch.tie_word_embeddings
    # Qwen2.5-0.5B: 494,032,768 parameters (model card "0.49B"), QKV biases included.
    assert arch.params == 494_032_768
    untied = {**config("Qwen/Qwen2.5-0.5B-Instruct"), "tie_word_embeddings": False}
    assert architecture_from_config(untied).params == arch.params + 151_936 * 896


@pytest.mark.parametrize(
    ("repo_id", "quantization", "bits"),
    [
        ("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "awq", 4),
        ("hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4", "gptq", 4),
        ("meta-llama/Llama-3.1-405B-Instruct-FP8", "fp8", 8),
        ("deepseek-ai/DeepSeek-V3", "fp8", 8),
        ("neuralmagic/Meta-Llama-3.1-8B-Instruct-quantized.w8a8", "int8", 8),
    ],
)
def test_quantized_checkpoints_say_their_format(repo_id: str, quantization: str, bits: int) -> None:
    arch = architecture_from_config(config(repo_id))
    assert arch.checkpoint_quantization == quantization
    assert arch.quantization_config is not None and arch.quantization_config.bits == bits


def test_gptq_width_comes_from_the_checkpoint() -> None:
    four = architecture_from_config(config("hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4"))
    raw = config("hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4")
    raw["quantization_config"] = {**raw["quantization_config"], "bits": 8}
    eight = architecture_from_config(raw)
    embed = memory.embedding_params(four) * 2  # kept in 16 bits either way
    body4 = memory.weight_bytes(four, "gptq") - embed
    body8 = memory.weight_bytes(eight, "gptq") - embed
    assert body8 / body4 == pytest.approx((8 + 24 / 128) / (4 + 20 / 128), rel=1e-6)
    assert memory.stored_bits(four, "gptq") == memory.STORED_BITS["gptq"]


def _ct(weights: dict[str, Any]) -> dict[str, Any]:
    return {
        **config("meta-llama/Llama-3.1-8B-Instruct"),
        "compression_config": {  # compressed-tensors' older key, still read by vLLM
            "quant_method": "compressed-tensors",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}},
        },
    }


def test_compressed_tensors_variants() -> None:
    fp8 = architecture_from_config(_ct({"num_bits": 8, "type": "float", "strategy": "channel"}))
    assert fp8.checkpoint_quantization == "fp8"
    w4 = architecture_from_config(
        _ct({"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128})
    )
    assert w4.checkpoint_quantization == "int4" and w4.quantization_config is not None
    assert w4.quantization_config.group_size == 128
    with pytest.raises(ConfigError, match="NVFP4"):
        architecture_from_config(_ct({"num_bits": 4, "type": "float"}))


def test_an_unsized_quantization_method_is_refused_by_name() -> None:
    raw = {**config("meta-llama/Llama-3.1-8B-Instruct"), "quantization_config": {
        "quant_method": "bitsandbytes", "load_in_4bit": True}}  # fmt: skip
    with pytest.raises(ConfigError, match="bitsandbytes is not a format the planner sizes"):
        architecture_from_config(raw)


def test_multimodal_text_config_with_family_defaults() -> None:
    arch = architecture_from_config(config("google/gemma-3-4b-it"))
    # text_config names 5 fields; Gemma3TextConfig supplies heads, KV heads, head_dim,
    # vocab, context, the 1-in-6 global pattern and tied embeddings.
    assert arch.model_type == "gemma3_text"
    assert (arch.layers, arch.hidden_size, arch.intermediate_size) == (34, 2560, 10240)
    assert (arch.attention_heads, arch.kv_heads, arch.head_dim) == (8, 4, 256)
    assert (arch.vocab_size, arch.max_context, arch.tie_word_embeddings) == (262_208, 131_072, True)
    assert (arch.sliding_window, arch.sliding_window_layers) == (1024, 29)
    assert arch.params == 3_880_263_168  # the language model; the SigLIP tower is not counted


def test_text_config_keeps_outer_quantization_and_tie() -> None:
    raw = {
        "model_type": "llava",
        "tie_word_embeddings": True,
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128},
        "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24},
        "text_config": {
            k: v
            for k, v in config("meta-llama/Llama-3.1-8B-Instruct").items()
            if k != "tie_word_embeddings"
        },
    }
    lm = language_model_config(raw)
    assert lm["hidden_size"] == 4096 and "vision_config" not in lm
    arch = architecture_from_config(raw)
    assert arch.checkpoint_quantization == "awq" and arch.tie_word_embeddings
    assert arch.layers == 32  # not the vision tower's 24


def test_an_unknown_model_type_with_the_standard_fields() -> None:
    raw = {
        "model_type": "acme_lm",
        "num_hidden_layers": 4,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
        "vocab_size": 1000,
        "max_position_embeddings": 2048,
    }
    arch = architecture_from_config(raw)
    assert (arch.kv_heads, arch.head_dim, arch.model_type) == (4, 64, "acme_lm")
    assert not arch.tie_word_embeddings  # unknown: the head counted twice, the safe side
    per_layer = 4 * 256 * 256 + 3 * 256 * 1024 + 2 * 256
    assert arch.params == 4 * per_layer + 2 * 1000 * 256 + 256
    gpt2_names = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12,
                  "n_positions": 1024, "vocab_size": 50257, "n_inner": None}  # fmt: skip
    gpt2 = architecture_from_config(gpt2_names)
    assert (gpt2.layers, gpt2.intermediate_size, gpt2.max_context) == (12, 3072, 1024)
    # GPT-2 small: 124,439,808 with biases and learned positions, which are not counted.
    assert gpt2.params == pytest.approx(124_439_808, rel=0.01)


def test_a_missing_field_names_it_and_the_fix() -> None:
    raw = config("meta-llama/Llama-3.1-8B-Instruct")
    del raw["num_hidden_layers"]
    with pytest.raises(ConfigError) as err:
        architecture_from_config(raw, "config.json of x/y@main")
    message = str(err.value)
    assert "config.json of x/y@main has no num_hidden_layers" in message
    assert "spec.model.architecture" in message and "--model-config" in message
    moe = {**config("mistralai/Mixtral-8x7B-Instruct-v0.1"), "num_experts_per_tok": None}
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        architecture_from_config(moe)


def _gguf(path: Path, arch: str, file_type: int, moe: bool = False, tied: bool = True) -> Path:
    """A tiny, valid GGUF file written by ggml's own writer: 2 layers, hidden 64."""
    writer = GGUFWriter(path, arch)
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_feed_forward_length(128)
    writer.add_context_length(8192)
    writer.add_file_type(file_type)
    writer.add_token_list([f"t{i}" for i in range(5000)])
    if moe:
        writer.add_expert_count(4)
        writer.add_expert_used_count(2)
        writer.add_expert_feed_forward_length(32)
    if arch == "gemma2":
        writer.add_sliding_window(4096)
    tensors: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (5000, 64),
        "output_norm.weight": (64,),
    }
    if not tied:
        tensors["output.weight"] = (5000, 64)
    for i in range(2):
        tensors |= {
            f"blk.{i}.attn_q.weight": (64, 64),
            f"blk.{i}.attn_k.weight": (32, 64),
            f"blk.{i}.attn_v.weight": (32, 64),
            f"blk.{i}.attn_output.weight": (64, 64),
            f"blk.{i}.attn_norm.weight": (64,),
            f"blk.{i}.ffn_norm.weight": (64,),
        }
        if moe:
            tensors |= {
                f"blk.{i}.ffn_gate_inp.weight": (4, 64),
                f"blk.{i}.ffn_gate_exps.weight": (4, 32, 64),
                f"blk.{i}.ffn_up_exps.weight": (4, 32, 64),
                f"blk.{i}.ffn_down_exps.weight": (4, 64, 32),
            }
        else:
            tensors |= {
                f"blk.{i}.ffn_gate.weight": (128, 64),
                f"blk.{i}.ffn_up.weight": (128, 64),
                f"blk.{i}.ffn_down.weight": (64, 128),
            }
    for name, shape in tensors.items():
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_header_gives_shape_params_and_file_type(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "m.gguf", "llama", LlamaFileType.MOSTLY_Q4_K_M)
    resolved = architecture_from_gguf(read_gguf_header(path), str(path))
    arch = resolved.architecture
    assert resolved.quantization == "q4_k_m"
    assert (arch.layers, arch.hidden_size, arch.attention_heads, arch.kv_heads) == (2, 64, 4, 2)
    assert (arch.intermediate_size, arch.max_context, arch.vocab_size) == (128, 8192, 5000)
    per_layer = 64 * 64 * 2 + 32 * 64 * 2 + 3 * 128 * 64 + 2 * 64
    assert arch.params == 5000 * 64 + 64 + 2 * per_layer
    assert arch.tie_word_embeddings and arch.model_type == "llama"
    untied = architecture_from_gguf(
        read_gguf_header(_gguf(tmp_path / "u.gguf", "llama", LlamaFileType.MOSTLY_Q8_0, tied=False))
    )
    assert untied.quantization == "q8_0" and not untied.architecture.tie_word_embeddings
    assert untied.architecture.params == arch.params + 5000 * 64


def test_gguf_moe_and_window(tmp_path: Path) -> None:
    moe = architecture_from_gguf(
        read_gguf_header(
            _gguf(tmp_path / "moe.gguf", "qwen3moe", LlamaFileType.MOSTLY_Q6_K, moe=True)
        )
    ).architecture
    experts = 2 * 3 * 4 * 32 * 64
    assert (moe.experts, moe.experts_per_token, moe.intermediate_size) == (4, 2, 32)
    assert moe.params is not None and moe.active_params == moe.params - experts // 2
    gemma = architecture_from_gguf(
        read_gguf_header(_gguf(tmp_path / "g.gguf", "gemma2", LlamaFileType.MOSTLY_F16))
    )
    assert gemma.quantization == "fp16"
    assert (gemma.architecture.sliding_window, gemma.architecture.sliding_window_layers) == (
        4096,
        1,
    )


def test_gguf_of_a_type_the_planner_does_not_size(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "s.gguf", "llama", LlamaFileType.MOSTLY_Q4_K_S)
    with pytest.raises(ConfigError, match="MOSTLY_Q4_K_S, not a GGUF type the planner sizes"):
        architecture_from_gguf(read_gguf_header(path), str(path))
