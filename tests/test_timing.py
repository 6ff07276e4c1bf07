"""The time model's physics: rooflines per kernel, chunked prefill, queues, p95s."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_operator.catalog import Catalog
from llm_operator.engines import Efficiency
from llm_operator.engines.vllm import ENGINE as VLLM
from llm_operator.planner import memory, search, timing

# Efficiencies with no host costs, so that device time alone is compared.
BARE = Efficiency(
    bandwidth=0.5, compute=0.5, step_overhead_ms=0.0, request_overhead_ms=0.0,
    allreduce_latency_us=0.0,
)  # fmt: skip


def _layout(
    catalog: Catalog,
    model: str = "llama-3.1-8b",
    gpu: str = "H100",
    quantization: str = "bf16",
    tp: int = 1,
    pp: int = 1,
    eff: Efficiency = BARE,
) -> timing.Layout:
    arch = catalog.model(model).architecture
    kv = memory.kv_bytes_per_token_per_gpu(arch, 2.0, tp, pp)
    return timing.Layout(arch, catalog.gpu(gpu), quantization, tp, pp, kv, eff)


def test_one_decode_reads_the_weights_and_its_kv_cache(catalog: Catalog) -> None:
    layout = _layout(catalog)
    context = 1000
    weights = memory.weight_bytes(layout.arch, "bf16")
    kv = context * layout.kv_bytes_per_token_per_gpu
    bandwidth = layout.gpu.memory_bandwidth_gbps * 1e9 * BARE.bandwidth
    assert timing.step_s(layout, 1, context) == pytest.approx((weights + kv) / bandwidth, 1e-3)


def test_a_long_prefill_is_compute_bound(catalog: Catalog) -> None:
    layout = _layout(catalog)
    slow = timing.prefill_s(layout, 8192)
    faster_compute = timing.prefill_s(replace(layout, efficiency=replace(BARE, compute=1.0)), 8192)
    faster_memory = timing.prefill_s(replace(layout, efficiency=replace(BARE, bandwidth=1.0)), 8192)
    assert faster_compute == pytest.approx(slow / 2, 1e-6)
    assert faster_memory == pytest.approx(slow, 1e-6)


def test_attention_stays_16_bit_when_the_weights_are_fp8(catalog: Catalog) -> None:
    """FP8 halves the linear layers' time, not attention's: the longer the prompt, the
    less FP8 saves."""
    bf16 = _layout(catalog)
    fp8 = _layout(catalog, quantization="fp8")
    short = timing.prefill_s(fp8, 512) / timing.prefill_s(bf16, 512)
    long = timing.prefill_s(fp8, 32768) / timing.prefill_s(bf16, 32768)
    assert 0.5 <= short < long < 1.0


def test_pipeline_stages_do_not_shorten_one_prompt(catalog: Catalog) -> None:
    one = _layout(catalog)
    two = _layout(catalog, pp=2)
    assert timing.prefill_s(two, 4096) == pytest.approx(timing.prefill_s(one, 4096), 1e-6)


def test_narrower_expert_slices_cost_more(catalog: Catalog) -> None:
    """Splitting Mixtral's experts over more GPUs shrinks each GPU's slice; the grouped
    GEMMs lose efficiency as (width + half width) / width."""
    eff = replace(BARE, moe_half_width=1024.0)

    def penalty(tp: int) -> float:
        with_width = timing.step_s(_layout(catalog, "mixtral-8x7b", tp=tp, eff=eff), 64, 512)
        without = timing.step_s(_layout(catalog, "mixtral-8x7b", tp=tp), 64, 512)
        return with_width / without

    assert 1.0 < penalty(1) < penalty(2) < penalty(4)


def test_streaming_work_bounds_a_large_batch_step(catalog: Catalog) -> None:
    eff = replace(BARE, stream_overhead_us=200.0)
    layout = _layout(catalog, eff=eff)
    assert timing.step_s(layout, 1, 512) == timing.step_s(_layout(catalog), 1, 512)
    assert timing.step_s(layout, 1000, 512) >= 1000 * 200e-6 * 0.999


def test_requests_beyond_the_slots_wait_for_one(catalog: Catalog) -> None:
    layout = _layout(catalog, eff=VLLM.efficiency)
    full = timing.predict(layout, 1024, 256, 64, 8192, max_sequences=64)
    over = timing.predict(layout, 1024, 256, 128, 8192, max_sequences=64)
    assert over.running == full.running == 64
    assert full.queue_ms == 0.0
    assert over.queue_ms > 0.0
    assert over.ttft_ms >= full.ttft_ms + over.queue_ms * 0.99
    assert over.output_tokens_per_second == pytest.approx(full.output_tokens_per_second, rel=0.02)
    assert over.tpot_ms == pytest.approx(full.tpot_ms, rel=1e-6)


def test_long_prompts_under_load_wait_for_the_prefill_budget(catalog: Catalog) -> None:
    layout = _layout(catalog, eff=VLLM.efficiency)
    alone = timing.predict(layout, 20000, 2000, 1, 8192)
    loaded = timing.predict(layout, 20000, 2000, 8, 8192)
    assert loaded.prefill_ms == alone.prefill_ms
    assert loaded.ttft_ms > alone.ttft_ms
    assert loaded.ttft_p95_ms > loaded.ttft_ms


def test_the_server_admits_one_request_at_a_time(catalog: Catalog) -> None:
    eff = replace(VLLM.efficiency, admission_ms=20.0)
    layout = _layout(catalog, eff=eff)
    t = timing.predict(layout, 64, 8, 512, 8192)
    assert t.output_tokens_per_second / 8 <= 1000 / 20.0 * 1.001


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 512),
    input_tokens=st.integers(1, 16384),
    output_tokens=st.integers(1, 2048),
    chunk=st.sampled_from([None, 2048, 8192]),
)
def test_p95_is_never_below_the_mean(
    catalog: Catalog, batch: int, input_tokens: int, output_tokens: int, chunk: int | None
) -> None:
    layout = _layout(catalog, eff=VLLM.efficiency)
    t = timing.predict(layout, input_tokens, output_tokens, batch, chunk)
    assert t.ttft_p95_ms >= t.ttft_ms
    assert t.tpot_p95_ms >= t.tpot_ms
    assert t.tpot_ms >= t.step_ms * 0.999


def test_slos_are_checked_against_the_p95(catalog: Catalog) -> None:
    """A TPOT SLO equal to the mean TPOT at some batch is missed there by the p95, so the
    planner settles on a smaller batch whose p95 meets it."""
    layout = _layout(catalog, eff=VLLM.efficiency)
    at_32 = timing.predict(layout, 2048, 256, 32, 2048)
    assert at_32.tpot_p95_ms > at_32.tpot_ms
    req = search.Request(input_tokens=2048, output_tokens=256, tpot_ms=at_32.tpot_ms)
    batch, chosen, miss = search._largest_batch(layout, req, 256, 2048)
    assert miss is None
    assert batch < 32
    assert chosen.tpot_p95_ms <= at_32.tpot_ms
    assert timing.predict(layout, 2048, 256, batch + 1, 2048).tpot_p95_ms > at_32.tpot_ms
