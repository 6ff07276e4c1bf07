"""Plan search over the built-in catalog: choices, rejections, constraints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_operator.api.v1alpha1 import LLMDeployment
from llm_operator.catalog import Catalog
from llm_operator.engines.vllm import ENGINE as VLLM
from llm_operator.planner import search, timing
from llm_operator.planner.search import Candidate, PlanInputError, Request, evaluate, plan
from tests.conftest import EXAMPLES, make_spec


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: Path(p).stem)
def test_every_example_has_a_feasible_plan(path: Path, catalog: Catalog) -> None:
    spec = LLMDeployment.model_validate(yaml.safe_load(path.read_text())).spec
    result = plan(spec, catalog)
    assert result.chosen is not None, [r.reason for r in result.rejected]
    c = result.chosen
    assert c.tensor_parallel * c.pipeline_parallel == c.gpus
    assert c.max_model_len <= c.fit.max_kv_tokens or c.engine.name == "llamacpp"
    if spec.budget.max_cost_per_hour:
        assert c.cost_per_hour * result.replicas <= spec.budget.max_cost_per_hour


def test_405b_multinode_example_spans_nodes(catalog: Catalog) -> None:
    path = next(p for p in EXAMPLES if "405b" in p.name)
    spec = LLMDeployment.model_validate(yaml.safe_load(path.read_text())).spec
    chosen = plan(spec, catalog).chosen
    assert chosen is not None
    assert chosen.nodes >= 2
    assert chosen.tensor_parallel == 4


def test_impossible_model_lists_reasons(catalog: Catalog) -> None:
    spec = make_spec(
        model={"name": "meta-llama/Llama-3.1-405B-Instruct"},
        quantization="fp16",
        hardware={"gpuTypes": ["A10G"]},
    )
    result = plan(spec, catalog)
    assert result.chosen is None
    assert result.rejected
    assert any("GiB" in r.reason and "usable" in r.reason for r in result.rejected)


def test_weights_that_do_not_fit_name_the_numbers(catalog: Catalog) -> None:
    arch = catalog.model("llama-3.1-70b").architecture
    out = evaluate(arch, catalog.gpu("H100"), VLLM, "bf16", 1, 1, Request())
    assert not isinstance(out, Candidate)
    assert out.reason.startswith("weights 131.4 GiB")
    assert "usable per device" in out.reason


def test_unknown_model_is_a_plan_input_error(catalog: Catalog) -> None:
    with pytest.raises(PlanInputError, match=r"spec.model.name.*closest"):
        plan(make_spec(model={"name": "meta-llama/Llama-3.1-8B-Instrct"}), catalog)


def test_auto_context_is_capped_by_the_model(catalog: Catalog) -> None:
    chosen = plan(make_spec(hardware={"gpuTypes": ["H100"]}), catalog).chosen
    assert chosen is not None
    assert chosen.max_model_len == catalog.model("llama-3.1-8b").architecture.max_context


def test_auto_context_is_capped_by_memory(catalog: Catalog) -> None:
    one_gpu = {"gpuTypes": ["A10G"], "gpusPerNode": 1}
    chosen = plan(make_spec(hardware=one_gpu), catalog).chosen
    assert chosen is not None and chosen.gpus == 1
    assert chosen.max_model_len < 131072
    assert chosen.max_model_len % 256 == 0
    assert chosen.max_model_len <= chosen.fit.max_kv_tokens


def test_budget_rejects_layouts_that_cost_too_much(catalog: Catalog) -> None:
    spec = make_spec(hardware={"gpuTypes": ["H100"]}, budget={"maxCostPerHour": 0.5})
    result = plan(spec, catalog)
    assert result.chosen is None
    assert any("budget" in r.reason for r in result.rejected)


def test_slo_limits_the_batch(catalog: Catalog) -> None:
    free = plan(make_spec(hardware={"gpuTypes": ["H100"]}), catalog).chosen
    tight = plan(
        make_spec(hardware={"gpuTypes": ["H100"]}, workload={"slo": {"tpotMsP95": 15}}), catalog
    ).chosen
    assert free is not None and tight is not None
    assert tight.timing.tpot_ms <= 15
    assert tight.batch < free.batch


def test_cluster_awareness_restricts_gpu_types(catalog: Catalog) -> None:
    spec = make_spec(quantization="auto", engine="auto")
    only_l4 = plan(spec, catalog, available_gpus={"L4-24GB": 8}).chosen
    assert only_l4 is not None and only_l4.gpu.name == "L4-24GB"
    assert plan(spec, catalog, available_gpus={}).chosen is None


def test_named_cpu_classes_are_the_allowed_ones(catalog: Catalog) -> None:
    """gpuTypes naming a CPU class plans on it alone; allowCpu without one adds them all."""
    cpu = {"quantization": "q4_k_m", "engine": "llamacpp", "model": {"name": "llama-2-7b"}}
    for named in ("CPU-2C-24GiB", "CPU-64C-256GiB"):
        spec = make_spec(**cpu, hardware={"gpuTypes": [named], "allowCpu": True})
        result = plan(spec, catalog)
        assert result.chosen is not None and result.chosen.gpu.name == named
        assert all(c.gpu.name == named for c in result.alternatives)
    spec = make_spec(**cpu, hardware={"allowCpu": True})
    assert {g.name for g in search._gpu_types(spec, catalog, None)} >= {
        "CPU-2C-24GiB",
        "CPU-64C-256GiB",
    }


SPEC_8B_A10G: dict[str, Any] = {
    "hardware": {"gpuTypes": ["A10G"]},
    "workload": {"inputTokens": 1024, "outputTokens": 256, "concurrency": 32},
}


def test_cluster_node_size_bounds_tensor_parallelism(catalog: Catalog) -> None:
    """One-GPU A10G nodes (g5.2xlarge) cannot host a TP2 pod, whatever the catalog says."""
    # A 64k context does not fit one A10G: 4-GPU nodes take it with TP on one node ...
    long = make_spec(**SPEC_8B_A10G, context={"maxModelLen": 65536})
    four = plan(long, catalog, available_gpus={"A10G-24GB": 4}).chosen
    assert four is not None and four.tensor_parallel > 1 and four.nodes == 1
    # ... one-GPU nodes never get a pod asking for more than one.
    single = plan(long, catalog, available_gpus={"A10G-24GB": 1})
    candidates = [c for c in [single.chosen, *single.alternatives] if c is not None]
    assert all(c.gpus // c.nodes <= 1 for c in candidates), [c.label for c in candidates]
    spec = make_spec(**SPEC_8B_A10G)
    one_gpu_nodes = plan(spec, catalog, available_gpus={"A10G-24GB": 1})
    assert one_gpu_nodes.chosen is not None
    assert (one_gpu_nodes.chosen.gpus, one_gpu_nodes.chosen.nodes) == (1, 1)
    assert all(c.gpus // c.nodes <= 1 for c in one_gpu_nodes.alternatives)
    # The spec's own gpusPerNode still bounds a layout on nodes that are larger.
    two = make_spec(**{**SPEC_8B_A10G, "hardware": {"gpuTypes": ["A10G"], "gpusPerNode": 2}})
    capped = plan(two, catalog, available_gpus={"A10G-24GB": 8}).chosen
    assert capped is not None and capped.tensor_parallel * capped.pipeline_parallel <= 2


def test_a_model_that_fits_one_node_is_not_spread_over_several(catalog: Catalog) -> None:
    result = plan(make_spec(**SPEC_8B_A10G), catalog, available_gpus={"A10G-24GB": 1})
    assert result.chosen is not None and result.chosen.nodes == 1
    # ... while one that cannot fit a node still gets a multi-node layout.
    big = make_spec(
        model={"name": "meta-llama/Llama-3.1-405B-Instruct"},
        quantization="fp8",
        hardware={"gpuTypes": ["H100"], "gpusPerNode": 4},
    )
    spread = plan(big, catalog).chosen
    assert spread is not None and spread.nodes > 1


def test_chosen_is_cheapest_per_token(catalog: Catalog) -> None:
    result = plan(make_spec(quantization="auto", engine="auto"), catalog)
    assert result.chosen is not None
    for alt in result.alternatives:
        assert result.chosen.cost_per_million <= alt.cost_per_million + 1e-9


def test_target_rate_sets_replicas_within_budget(catalog: Catalog) -> None:
    spec = make_spec(
        hardware={"gpuTypes": ["A10G"]},
        workload={"targetOutputTokensPerSecond": 100000},
        scaling={"maxReplicas": 50},
        budget={"maxCostPerHour": 5},
    )
    result = plan(spec, catalog)
    assert result.chosen is not None
    assert result.replicas * result.chosen.cost_per_hour <= 5


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 256),
    extra=st.integers(1, 64),
    input_tokens=st.integers(16, 4096),
)
def test_throughput_grows_and_latency_worsens_with_batch(
    catalog: Catalog, batch: int, extra: int, input_tokens: int
) -> None:
    arch = catalog.model("llama-3.1-8b").architecture
    layout = timing.Layout(arch, catalog.gpu("H100"), "bf16", 1, 1, 131072, VLLM.efficiency)
    for chunk in (2048, 8192):  # vLLM's two budgets
        small = timing.predict(layout, input_tokens, 256, batch, chunk)
        large = timing.predict(layout, input_tokens, 256, batch + extra, chunk)
        # While the budget takes every prompt next to the decodes, more streams mean more
        # tokens; past that, decodes crowd the prompts out and throughput can fall.
        # A prompt that no longer fits one chunk costs its stream one more step of its
        # 256: the only dip allowed.
        room = chunk - (batch + extra - 1)
        if (batch + extra) * input_tokens <= room * 255:
            assert large.output_tokens_per_second >= small.output_tokens_per_second * (1 - 1 / 256)
        assert large.tpot_ms >= small.tpot_ms
        assert large.ttft_p95_ms >= small.ttft_p95_ms
        assert large.tpot_p95_ms >= small.tpot_p95_ms
    # One whole prompt per step: latency still worsens with batch (throughput can level
    # off once the batch outnumbers the reply's tokens: every prompt needs its own step).
    small = timing.predict(layout, input_tokens, 256, batch)
    large = timing.predict(layout, input_tokens, 256, batch + extra)
    assert large.tpot_ms >= small.tpot_ms


def test_a_cycles_prompts_are_prefilled_in_chunks(catalog: Catalog) -> None:
    """Many short prompts: one weight read per 8192-token chunk, not one per prompt."""
    arch = catalog.model("llama-2-7b").architecture
    layout = timing.Layout(arch, catalog.gpu("H100"), "fp8", 1, 1, 65536, VLLM.efficiency)
    alone = timing.predict(layout, 128, 128, 768)
    chunked = timing.predict(layout, 128, 128, 768, chunk_tokens=8192)
    assert chunked.output_tokens_per_second > 1.3 * alone.output_tokens_per_second
    assert chunked.prefill_ms == alone.prefill_ms  # on an idle replica, the same work
    # Under load, prompts share the budget's steps instead of queueing one per step.
    assert chunked.ttft_ms < alone.ttft_ms
    # Long prompts are compute-bound: chunking them changes little.
    long_alone = timing.predict(layout, 8192, 128, 8)
    long_chunked = timing.predict(layout, 8192, 128, 8, chunk_tokens=8192)
    ratio = long_chunked.output_tokens_per_second / long_alone.output_tokens_per_second
    assert 0.99 <= ratio < 1.1  # an 8192-token prompt beside 7 decodes takes two chunks


def test_near_equal_cost_goes_to_fewer_gpus(catalog: Catalog) -> None:
    """8B on H100 without SLOs: TP2 and TP1 cost the same per token; TP1 is chosen."""
    result = plan(make_spec(hardware={"gpuTypes": ["H100"]}), catalog)
    assert result.chosen is not None and result.chosen.gpus == 1
    cheapest = min(c.cost_per_million for c in [result.chosen, *result.alternatives])
    assert result.chosen.cost_per_million <= cheapest * (1 + search.COST_TIE)


def test_concurrency_beyond_one_replica_plans_replicas_or_says_what_forbids_it(
    catalog: Catalog,
) -> None:
    a10g = {"gpuTypes": ["A10G"]}
    small = plan(make_spec(workload={"concurrency": 8}, hardware=a10g), catalog)
    assert small.chosen is not None and small.replicas == 1 and small.replicas_limited is None
    batch = small.chosen.max_sequences
    two = plan(make_spec(workload={"concurrency": batch + 1}, hardware=a10g), catalog)
    assert two.chosen is not None and two.chosen.batch == batch
    assert two.replicas == 2 and two.replicas_limited is None
    huge = plan(
        make_spec(workload={"concurrency": 1_000_000}, scaling={"maxReplicas": 4}, hardware=a10g),
        catalog,
    )
    assert huge.chosen is not None and huge.replicas == 4
    assert huge.replicas_limited is not None
    assert "1000000 concurrent requests" in huge.replicas_limited
    assert "maxReplicas 4" in huge.replicas_limited


def test_engine_refusals_are_field_named_plan_input_errors(catalog: Catalog) -> None:
    # vLLM does not quantize to int4 while loading: a 16-bit checkpoint cannot be served so.
    with pytest.raises(PlanInputError, match=r"spec\.model\.name: vllm serves int4 only from"):
        plan(make_spec(engine="vllm", quantization="int4"), catalog)
    # Gemma 2 refuses float16 in vLLM.
    with pytest.raises(PlanInputError, match=r"refuses float16 for gemma2"):
        plan(make_spec(model={"name": "google/gemma-2-9b-it"}, quantization="fp16"), catalog)
    # A pre-quantized checkpoint is served as stored; auto picks its format.
    awq = plan(
        make_spec(
            model={"name": "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"},
            quantization="auto",
            hardware={"gpuTypes": ["H100"]},
        ),
        catalog,
    )
    assert awq.chosen is not None and awq.chosen.quantization == "awq"
    with pytest.raises(PlanInputError, match=r"stored as awq: set quantization to awq"):
        plan(
            make_spec(
                model={"name": "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"},
                quantization="bf16",
            ),
            catalog,
        )
