"""Prefix caching and speculative decoding as planned effects, and `llmctl plan`'s "what
each lever buys" table (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llm_operator.catalog import Catalog
from llm_operator.cli import main
from llm_operator.engines.vllm import ENGINE as VLLM
from llm_operator.planner import timing
from llm_operator.planner.levers import levers
from llm_operator.planner.search import plan
from tests.conftest import make_spec


def _layout(catalog: Catalog, quantization: str = "bf16") -> timing.Layout:
    arch = catalog.model("llama-3.1-8b").architecture
    return timing.Layout(arch, catalog.gpu("H100"), quantization, 1, 1, 131072, VLLM.efficiency)


def test_a_prefix_hit_shortens_the_prefill_only(catalog: Catalog) -> None:
    layout = _layout(catalog)
    cold = timing.predict(layout, 4096, 256, 16, 8192)
    assert timing.predict(layout, 4096, 256, 16, 8192, prefix_hit=0.0) == cold
    warm = timing.predict(layout, 4096, 256, 16, 8192, prefix_hit=0.75)
    assert warm.ttft_ms < cold.ttft_ms * 0.6
    assert warm.prefill_ms < cold.prefill_ms
    assert warm.output_tokens_per_second > cold.output_tokens_per_second
    # The cached tokens are still attended to: decoding is not any cheaper.
    assert warm.step_ms == pytest.approx(cold.step_ms)


def test_speculation_pays_when_memory_bound_and_not_when_nothing_is_accepted(
    catalog: Catalog,
) -> None:
    layout = _layout(catalog)
    plain = timing.predict(layout, 512, 256, 1, 8192)
    good = timing.predict(
        layout, 512, 256, 1, 8192, speculation=timing.Speculation(3, 0.7, 400_000_000)
    )
    # One sequence reads all weights per step: 3 drafts at 0.7 give 2.5 tokens a step.
    assert plain.tpot_ms / good.tpot_ms > 1.8
    hopeless = timing.predict(
        layout, 512, 256, 1, 8192, speculation=timing.Speculation(3, 0.01, 400_000_000)
    )
    assert hopeless.tpot_ms > plain.tpot_ms
    # A large batch is compute-bound: verifying 4 tokens a sequence costs about what it
    # yields, and the saving shrinks.
    big_plain = timing.predict(layout, 512, 256, 256, 8192)
    big = timing.predict(
        layout, 512, 256, 256, 8192, speculation=timing.Speculation(3, 0.7, 400_000_000)
    )
    assert big_plain.tpot_ms / big.tpot_ms < plain.tpot_ms / good.tpot_ms


def test_the_planner_prices_them_only_where_asked(catalog: Catalog) -> None:
    base = make_spec(hardware={"gpuTypes": ["H100"]}, workload={"inputTokens": 4096})
    hit = make_spec(
        hardware={"gpuTypes": ["H100"]}, workload={"inputTokens": 4096, "prefixHitRate": 0.5}
    )
    off = make_spec(
        hardware={"gpuTypes": ["H100"]},
        workload={"inputTokens": 4096, "prefixHitRate": 0.5},
        features={"prefixCaching": False},
    )
    cost = {n: plan(s, catalog).chosen for n, s in (("base", base), ("hit", hit), ("off", off))}
    assert all(c is not None for c in cost.values())
    assert cost["hit"].timing.ttft_ms < cost["base"].timing.ttft_ms  # type: ignore[union-attr]
    assert cost["off"].timing == cost["base"].timing  # type: ignore[union-attr]
    spec = make_spec(
        hardware={"gpuTypes": ["H100"]},
        workload={"concurrency": 1},
        features={"speculativeDecoding": {"method": "ngram"}},
    )
    stated = make_spec(
        hardware={"gpuTypes": ["H100"]},
        workload={"concurrency": 1, "draftAcceptanceRate": 0.9},
        features={"speculativeDecoding": {"method": "ngram"}},
    )
    default, better = plan(spec, catalog).chosen, plan(stated, catalog).chosen
    assert default is not None and better is not None
    assert better.timing.tpot_ms < default.timing.tpot_ms


def test_levers_price_each_with_and_without(catalog: Catalog) -> None:
    spec = make_spec(
        quantization="fp8",
        hardware={"gpuTypes": ["H100"]},
        workload={"inputTokens": 2048, "prefixHitRate": 0.6},
        features={"speculativeDecoding": {"method": "ngram"}},
    )
    found = {lever.name: lever for lever in levers(spec, catalog)}
    assert set(found) == {"quantization", "batching", "prefix caching", "speculative decoding"}
    chosen = plan(spec, catalog).chosen
    assert chosen is not None
    for lever in found.values():
        assert lever.with_cost == chosen.cost_per_million
        assert lever.note is None and lever.saving is not None and lever.saving > 0, lever
    bf16 = plan(make_spec(**{**spec.model_dump(by_alias=True), "quantization": "bf16"}), catalog)
    assert found["quantization"].without_cost == bf16.chosen.cost_per_million  # type: ignore[union-attr]
    plain = {lever.name: lever for lever in levers(make_spec(), catalog)}
    assert plain["prefix caching"].note == "set workload.prefixHitRate"
    assert plain["speculative decoding"].note == "set features.speculativeDecoding"
    assert plain["quantization"].note == "16-bit weights already"


def test_llmctl_plan_shows_what_each_lever_buys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = {
        "apiVersion": "serving.llm-operator.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": "x"},
        "spec": make_spec(
            quantization="fp8",
            hardware={"gpuTypes": ["H100"]},
            workload={"prefixHitRate": 0.5},
        ).model_dump(by_alias=True, exclude_none=True),
    }
    path = tmp_path / "llmd.yaml"
    path.write_text(yaml.safe_dump(body))
    assert main(["plan", "-f", str(path)]) == 0
    text = capsys.readouterr().out
    assert "what each lever buys" in text
    assert "50% of prompt tokens" in text and "set features.speculativeDecoding" in text
    assert main(["plan", "-f", str(path), "--output", "json"]) == 0
    rows = {r["lever"]: r for r in json.loads(capsys.readouterr().out)["levers"]}
    assert (
        rows["prefix caching"]["costPerMillionWithout"]
        > rows["prefix caching"]["costPerMillionWith"]
    )
