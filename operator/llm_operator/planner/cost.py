"""Cost arithmetic: $/hour of a replica and $ per million output tokens.

Called by `planner.search` and the autoscaler's status reporting.
"""

from __future__ import annotations

from llm_operator.catalog import GpuType


def cost_per_hour(gpu: GpuType, devices: int) -> float:
    """USD per hour of `devices` GPUs (or CPU nodes) of type `gpu`."""
    return gpu.price_per_hour * devices


def cost_per_million_tokens(dollars_per_hour: float, tokens_per_second: float) -> float:
    """USD per million tokens at a steady rate: $/h x 1e6 / (tok/s x 3600).

    $1.20/h at 1000 tok/s is $0.33 per million; $3/h at 600 tok/s is $1.39.
    Returns infinity when no tokens flow.
    """
    if tokens_per_second <= 0:
        return float("inf")
    return dollars_per_hour * 1e6 / (tokens_per_second * 3600)
