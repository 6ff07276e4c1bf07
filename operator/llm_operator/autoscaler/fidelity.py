"""Predicted against observed: how far the plan's numbers are from what the engines measure.

The planner predicts each replica's time to first token, time per output token and output
rate at the workload's load (`status.plan`), and at 1, 2, 4, ... requests in flight up to
its slots (`status.plan.loadCurve`). A replica rarely runs at exactly the planned load, so
the engines' means over the rate window (`decide.Observation`: each engine's own
histograms and counters, `Engine.metrics`) are compared with the curve at the load they
were measured at: the requests each ready replica runs. Pure: the autoscaler loop calls
`compare` on each tick and writes the result to `status.performance`; `llmctl calibrate`
fits the fleet calibration from the same comparison (`docs/planner.md`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Final

from llm_operator.api.v1alpha1 import Comparison, LoadPoint, PerformanceStatus, PlanStatus
from llm_operator.autoscaler.decide import Observation
from llm_operator.catalog import Calibration

# NOTE: requests waiting in a replica's queue add a wait to TTFT that the curve (requests
# in flight, up to the slots) does not hold; with more than this many waiting per ready
# replica the TTFT comparison is left out rather than blamed on the planner.
MAX_WAITING_PER_REPLICA: Final = 0.5
# The default |observed / predicted - 1| beyond which a deployment's predictions are said
# to diverge (LLM_OPERATOR_PREDICTION_TOLERANCE); they are back within it at 80% of it.
DEFAULT_TOLERANCE: Final = 0.25
RECOVERY_SHARE: Final = 0.8


def at_load(curve: Sequence[LoadPoint], concurrency: float) -> LoadPoint:
    """The curve's prediction at `concurrency` requests in flight: linear between the two
    nearest points, the end points beyond them (past the slots, requests only queue).

    Raises:
        ValueError: for an empty curve.
    """
    if not curve:
        raise ValueError("an empty load curve")
    points = sorted(curve, key=lambda p: p.concurrency)
    loads = [p.concurrency for p in points]
    i = bisect_left(loads, concurrency)
    if i == 0:
        return points[0]
    if i == len(points):
        return points[-1]
    lo, hi = points[i - 1], points[i]
    w = (concurrency - lo.concurrency) / (hi.concurrency - lo.concurrency)

    def mix(a: float, b: float) -> float:
        return a + w * (b - a)

    return LoadPoint(
        concurrency=round(concurrency),
        ttft_ms=mix(lo.ttft_ms, hi.ttft_ms),
        tpot_ms=mix(lo.tpot_ms, hi.tpot_ms),
        output_tokens_per_second=mix(lo.output_tokens_per_second, hi.output_tokens_per_second),
    )


def _comparison(observed: float | None, predicted: float, digits: int) -> Comparison | None:
    if observed is None or observed <= 0 or predicted <= 0:
        return None
    return Comparison(
        observed=round(observed, digits),
        predicted=round(predicted, digits),
        error=round(observed / predicted - 1.0, 3),
    )


def compare(plan: PlanStatus, observation: Observation, ready: int) -> PerformanceStatus | None:
    """The engines' measurements next to the plan's predictions at the measured load.

    Args:
        plan: status.plan, with its load curve.
        observation: the engines' means over the rate window (summed over the pods).
        ready: ready replicas.

    Returns:
        The comparison, or None without a curve, a ready replica, a running count or any
        latency measured (no request finished in the window).
    """
    running = observation.running_requests
    if not plan.load_curve or ready <= 0 or running is None or running <= 0:
        return None
    per_replica = running / ready
    predicted = at_load(plan.load_curve, per_replica)
    queued = (observation.waiting_requests or 0.0) / ready > MAX_WAITING_PER_REPLICA
    ttft = None if queued or observation.ttft_seconds is None else observation.ttft_seconds
    tpot = observation.tpot_seconds
    served = observation.output_tokens_per_second
    if ttft is None and tpot is None:
        return None
    return PerformanceStatus(
        concurrency_per_replica=round(per_replica, 2),
        ttft_ms=_comparison(None if ttft is None else ttft * 1000, predicted.ttft_ms, 1),
        tpot_ms=_comparison(None if tpot is None else tpot * 1000, predicted.tpot_ms, 2),
        output_tokens_per_second=_comparison(
            None if served is None else served / ready, predicted.output_tokens_per_second, 1
        ),
    )


def errors(performance: PerformanceStatus | None) -> dict[str, float]:
    """metric -> observed / predicted - 1, for the metrics compared."""
    if performance is None:
        return {}
    pairs = {
        "ttft": performance.ttft_ms,
        "tpot": performance.tpot_ms,
        "tokens_per_second": performance.output_tokens_per_second,
    }
    return {name: c.error for name, c in pairs.items() if c is not None}


def diverged(performance: PerformanceStatus | None, tolerance: float) -> str | None:
    """A sentence naming each metric off by more than `tolerance`, or None."""
    if performance is None:
        return None
    named = {
        "TTFT": (performance.ttft_ms, "ms"),
        "TPOT": (performance.tpot_ms, "ms"),
        "tokens/s per replica": (performance.output_tokens_per_second, ""),
    }
    off = [
        f"{name} {c.observed:g}{unit} observed vs {c.predicted:g}{unit} predicted ({c.error:+.0%})"
        for name, (c, unit) in named.items()
        if c is not None and abs(c.error) > tolerance
    ]
    if not off:
        return None
    return (
        f"{', '.join(off)} at {performance.concurrency_per_replica:g} requests in flight per "
        f"replica: beyond the {tolerance:.0%} tolerance (`llmctl calibrate` fits the planner "
        "to what the fleet measures)"
    )


# A fitted factor is kept within these bounds: beyond them the measurement, not the
# planner, is wrong (a stuck histogram, a replica that never warmed up).
FACTOR_BOUNDS: Final = (0.1, 10.0)


@dataclass(frozen=True)
class FleetSample:
    """One deployment's comparison, with what its predictions already included.

    Attributes:
        engine: status.plan.engine.
        gpu: status.plan.gpu.
        plan: the plan the predictions came from (its calibration, if any, is divided
            out: the fit is of the planner's own efficiencies).
        performance: the comparison at the observed load (`compare`).
    """

    engine: str
    gpu: str
    plan: PlanStatus
    performance: PerformanceStatus


def fit(
    samples: Iterable[FleetSample], previous: Sequence[Calibration], fitted: str
) -> tuple[tuple[Calibration, ...], list[str]]:
    """The fleet calibration per (engine, GPU type): the median over deployments of
    observed / predicted TPOT (decode) and TTFT (prefill), times the calibration each
    prediction already included (so re-fitting converges instead of compounding).

    Args:
        samples: deployments with a comparison.
        previous: the calibration in use; its entries without new samples are kept.
        fitted: the time to stamp on new entries (RFC 3339).

    Returns:
        The calibration (sorted by engine and GPU), and one line per fitted entry.
    """
    groups: dict[tuple[str, str], list[FleetSample]] = {}
    for sample in samples:
        groups.setdefault((sample.engine, sample.gpu), []).append(sample)
    kept: dict[tuple[str, str], Calibration] = {(c.engine, c.gpu): c for c in previous}
    out = dict(kept)
    lines: list[str] = []
    low, high = FACTOR_BOUNDS
    for (engine, gpu), group in sorted(groups.items()):
        decode = [
            (1 + s.performance.tpot_ms.error)
            * (s.plan.calibration.decode if s.plan.calibration else 1)
            for s in group
            if s.performance.tpot_ms is not None
        ]
        prefill = [
            (1 + s.performance.ttft_ms.error)
            * (s.plan.calibration.prefill if s.plan.calibration else 1)
            for s in group
            if s.performance.ttft_ms is not None
        ]
        before = kept.get((engine, gpu))
        entry = Calibration(
            engine=engine,
            gpu=gpu,
            decode=round(min(max(median(decode), low), high), 4)
            if decode
            else (before.decode if before else 1.0),
            prefill=round(min(max(median(prefill), low), high), 4)
            if prefill
            else (before.prefill if before else 1.0),
            deployments=len(group),
            fitted=fitted,
        )
        out[(engine, gpu)] = entry
        lines.append(
            f"{engine} on {gpu}: decode x{entry.decode:.3f} ({len(decode)} TPOT measurements), "
            f"prefill x{entry.prefill:.3f} ({len(prefill)} TTFT measurements), "
            f"{len(group)} deployments"
        )
    return tuple(out[k] for k in sorted(out)), lines
