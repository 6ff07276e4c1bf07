"""What each cost lever buys: the plan's $/1M output tokens with and without it.

The levers are the ones the planner prices: weight quantization, batching, prefix caching
and speculative decoding. For each, the whole search runs again on the spec with that lever
taken away (16-bit weights; one sequence per replica; no prefix-cache hits; no speculation),
so a lever's price includes every layout change it causes (fewer GPUs, another GPU type).
A lever the spec does not use is reported as such, with the field that turns it on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llm_operator.api.v1alpha1 import DEFAULT_DRAFT_ACCEPTANCE, Architecture, LLMDeploymentSpec
from llm_operator.catalog import Catalog
from llm_operator.catalog.resolve import DraftHead
from llm_operator.planner.search import PlanInputError, PlanResult, plan

SIXTEEN_BIT = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Lever:
    """One lever's effect on the chosen plan.

    Attributes:
        name: the lever (quantization, batching, prefix caching, speculative decoding).
        setting: how the plan uses it, e.g. "awq", "batch 64", "50% of prompt tokens".
        with_cost: $/1M output tokens of the plan as asked (None: nothing feasible).
        without_cost: the same without the lever (None: nothing feasible without it).
        note: why there is no comparison, when there is none (the field to set).
    """

    name: str
    setting: str
    with_cost: float | None
    without_cost: float | None
    note: str | None = None

    @property
    def saving(self) -> float | None:
        """Share of the cost the lever saves (negative: it costs more)."""
        if self.with_cost is None or self.without_cost is None or self.without_cost <= 0:
            return None
        return 1 - self.with_cost / self.without_cost


def _cost(result: PlanResult) -> float | None:
    return result.chosen.cost_per_million if result.chosen is not None else None


def levers(
    spec: LLMDeploymentSpec,
    catalog: Catalog,
    available_gpus: Mapping[str, int] | None = None,
    *,
    resolved: Architecture | None = None,
    draft: DraftHead | None = None,
) -> list[Lever]:
    """Each lever's $/1M output tokens with and without it, for this spec's workload.

    Raises:
        PlanInputError: as `plan`.
    """

    def priced(changed: LLMDeploymentSpec) -> PlanResult:
        return plan(changed, catalog, available_gpus, resolved=resolved, draft=draft)

    def with_(section: str, **changes: Any) -> LLMDeploymentSpec:
        part = getattr(spec, section).model_copy(update=changes)
        return spec.model_copy(update={section: part})

    base = priced(spec)
    chosen = base.chosen
    cost = _cost(base)
    if chosen is None:
        return []
    out: list[Lever] = []

    if chosen.quantization in SIXTEEN_BIT:
        out.append(Lever("quantization", chosen.quantization, cost, cost, "16-bit weights already"))
    else:
        try:
            without = _cost(priced(spec.model_copy(update={"quantization": "bf16"})))
            note = None
        except PlanInputError:
            # NOTE: a pre-quantized checkpoint has no 16-bit twin under its name.
            without, note = None, "the checkpoint is stored quantized"
        out.append(Lever("quantization", chosen.quantization, cost, without, note))

    one = priced(with_("workload", concurrency=1, target_output_tokens_per_second=None))
    out.append(Lever("batching", f"batch {chosen.batch}", cost, _cost(one)))

    hit = spec.workload.prefix_hit_rate
    if not spec.features.prefix_caching:
        out.append(Lever("prefix caching", "off", cost, cost, "set features.prefixCaching"))
    elif hit <= 0:
        out.append(
            Lever("prefix caching", "no hits stated", cost, cost, "set workload.prefixHitRate")
        )
    else:
        cold = priced(with_("workload", prefix_hit_rate=0.0))
        out.append(Lever("prefix caching", f"{hit:.0%} of prompt tokens", cost, _cost(cold)))

    speculative = spec.features.speculative_decoding
    if speculative is None:
        out.append(
            Lever(
                "speculative decoding",
                "off",
                cost,
                cost,
                "set features.speculativeDecoding",
            )
        )
    else:
        acceptance = (
            spec.workload.draft_acceptance_rate or DEFAULT_DRAFT_ACCEPTANCE[speculative.method]
        )
        plain = priced(with_("features", speculative_decoding=None))
        setting = (
            f"{speculative.method}, {speculative.num_speculative_tokens} tokens, "
            f"acceptance {acceptance:.2f}"
        )
        out.append(Lever("speculative decoding", setting, cost, _cost(plain)))
    return out
