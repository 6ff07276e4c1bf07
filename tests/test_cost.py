"""Cost arithmetic, including the seed calculator's errata."""

from __future__ import annotations

import math

import pytest

from llm_operator.planner.cost import cost_per_million_tokens


def test_one_dollar_twenty_at_1000_tokens_per_second() -> None:
    assert cost_per_million_tokens(1.20, 1000) == pytest.approx(0.3333, abs=1e-4)


def test_three_dollars_at_600_tokens_per_second_is_not_the_seeds_083() -> None:
    value = cost_per_million_tokens(3.0, 600)
    assert value == pytest.approx(1.3889, abs=1e-4)
    assert value != pytest.approx(0.83, abs=0.01)


def test_no_tokens_costs_infinity() -> None:
    assert math.isinf(cost_per_million_tokens(3.0, 0))
