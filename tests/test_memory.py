"""Memory model: the seed calculator, KV bytes per token, TP sharding, MLA, windows."""

from __future__ import annotations

import pytest

from llm_operator.api.v1alpha1 import Architecture
from llm_operator.catalog import GIB, Catalog
from llm_operator.engines.vllm import ENGINE as VLLM
from llm_operator.planner import memory


@pytest.mark.parametrize(
    ("quant", "gb"), [("fp32", 280), ("fp16", 140), ("int8", 70), ("int4", 35)]
)
def test_seed_calculator_nominal_weights(quant: str, gb: float) -> None:
    assert memory.nominal_weight_gb(70e9, quant) == pytest.approx(gb)


def test_stored_weights_include_scales_and_16_bit_embeddings(catalog: Catalog) -> None:
    arch = catalog.model("llama-3.1-70b").architecture
    bf16 = memory.weight_bytes(arch, "bf16")
    awq = memory.weight_bytes(arch, "awq")
    assert bf16 == 2 * arch.params  # type: ignore[operator]
    # 4-bit body plus group scales, 16-bit embeddings: between a quarter and a third of bf16
    assert 0.26 * bf16 < awq < 0.33 * bf16


def test_kv_bytes_per_token_standard_gqa(catalog: Catalog) -> None:
    arch = catalog.model("llama-3.1-70b").architecture
    # 2 x 80 layers x 8 KV heads x 128 head_dim x 2 bytes
    assert memory.kv_bytes_per_token(arch, 2) == 2 * 80 * 8 * 128 * 2
    assert memory.kv_bytes_per_token(arch, 1) == 80 * 8 * 128 * 2


def test_kv_per_gpu_splits_heads_then_replicates(catalog: Catalog) -> None:
    arch = catalog.model("llama-3.1-70b").architecture  # 8 KV heads
    full = memory.kv_bytes_per_token_per_gpu(arch, 2, 1, 1)
    assert memory.kv_bytes_per_token_per_gpu(arch, 2, 4, 1) == full // 4
    assert memory.kv_bytes_per_token_per_gpu(arch, 2, 8, 1) == full // 8
    # TP 16 > 8 KV heads: each rank keeps one replicated head, no further saving
    assert memory.kv_bytes_per_token_per_gpu(arch, 2, 16, 1) == full // 8
    assert memory.kv_bytes_per_token_per_gpu(arch, 2, 8, 2) == full // 16


def test_mla_caches_the_latent_once_per_layer(catalog: Catalog) -> None:
    arch = catalog.model("deepseek-ai/DeepSeek-V3").architecture
    assert arch.is_mla
    per_token = memory.kv_bytes_per_token(arch, 2)
    assert per_token == arch.layers * (512 + 64) * 2
    # The latent is replicated on every TP rank
    assert memory.kv_bytes_per_token_per_gpu(arch, 2, 8, 1) == per_token


def test_sliding_window_layers_cap_their_tokens() -> None:
    arch = Architecture(
        layers=42, hidden_size=3584, attention_heads=16, kv_heads=8, head_dim=256,
        intermediate_size=14336, vocab_size=256000, max_context=8192,
        sliding_window=4096, sliding_window_layers=21,
    )  # fmt: skip
    assert memory.kv_tokens_per_sequence(arch, 2048) == 2048
    assert memory.kv_tokens_per_sequence(arch, 8192) == (21 * 8192 + 21 * 4096) / 42


def test_params_from_shape_close_to_catalog(catalog: Catalog) -> None:
    for entry in catalog.models:
        arch = entry.architecture
        # NOTE: GPT-3's MLP has two matrices, not the gated three the shape formula assumes.
        if arch.params is None or entry.name == "gpt-175b":
            continue
        estimate = memory.params_from_shape(arch)
        assert estimate == pytest.approx(arch.params, rel=0.06), entry.name


def test_vllm_memory_split_matches_calibration(catalog: Catalog) -> None:
    """Calibration c19/c20: Llama-3.1-8B bf16 on H100, util 0.9: 14.99 GiB weights, 51.38 KV."""
    fit = memory.memory_fit(
        catalog.model("llama-3.1-8b").architecture, catalog.gpu("H100"), "bf16", 1, 1,
        VLLM.memory,
    )  # fmt: skip
    assert fit.weights_bytes / GIB == pytest.approx(14.99, rel=0.01)
    assert fit.kv_bytes / GIB == pytest.approx(51.38, rel=0.03)


def test_a_speculative_draft_head_takes_memory_next_to_the_target(catalog: Catalog) -> None:
    arch = catalog.model("llama-3.1-8b-instruct").architecture
    gpu = catalog.gpu("L4")
    plain = memory.memory_fit(arch, gpu, "bf16", 1, 1, VLLM.memory)
    eagle = memory.memory_fit(
        arch,
        gpu,
        "bf16",
        1,
        1,
        VLLM.memory,
        extra_weight_bytes=memory.draft_weight_bytes(arch, "eagle"),
    )
    eagle3 = memory.draft_weight_bytes(arch, "eagle3")
    assert memory.draft_weight_bytes(arch, "ngram") == 0
    # One Llama-3.1-8B decoder layer in 16 bits is ~0.44 GiB; EAGLE-3 adds its own head.
    assert 0.4 * GIB < eagle.weights_bytes - plain.weights_bytes < 0.5 * GIB
    assert eagle3 > memory.draft_weight_bytes(arch, "eagle") + 0.9 * GIB
    assert eagle.max_kv_tokens < plain.max_kv_tokens
