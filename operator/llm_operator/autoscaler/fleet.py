"""The fleet calibration from what the running deployments measured: read, compare, fit.

`llmctl calibrate` and the operator's opt-in self-calibration (LLM_OPERATOR_SELF_CALIBRATE_
INTERVAL) both call `calibrate`: the LLMDeployments as listed (their plans and load
curves), each engine's metrics from Prometheus over a window (`metrics.observe_fleet`),
compared at the measured load (`fidelity.compare`) and fitted per (engine, GPU type)
(`fidelity.fit`). The only I/O is the Prometheus read through the client passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml
from pydantic import ValidationError

from llm_operator.api.v1alpha1 import LLMDeploymentStatus
from llm_operator.autoscaler import fidelity, metrics
from llm_operator.catalog import Calibration, Catalog, UnknownNameError

# NOTE: the operator writes a new calibration only when a factor moves by more than this:
# a fit over a window of live traffic wanders by a few percent from hour to hour, and each
# write re-predicts every deployment of that engine and GPU type.
MATERIAL_CHANGE: Final = 0.05


@dataclass(frozen=True)
class Fit:
    """One calibration run.

    Attributes:
        calibrations: the calibration to use (fitted entries and the kept ones).
        previous: the calibration that was in use (GPU names made canonical).
        samples: how many deployments measured something.
        lines: one sentence per fitted entry, and per deployment without measurements.
    """

    calibrations: tuple[Calibration, ...]
    previous: tuple[Calibration, ...]
    samples: int
    lines: list[str]

    @property
    def material(self) -> bool:
        """Whether the fit differs from what was in use by more than MATERIAL_CHANGE in
        any factor (or in which engines and GPU types it covers)."""
        before = {(c.engine, c.gpu): (c.decode, c.prefill) for c in self.previous}
        after = {(c.engine, c.gpu): (c.decode, c.prefill) for c in self.calibrations}
        if before.keys() != after.keys():
            return True
        return any(
            abs(a / b - 1.0) > MATERIAL_CHANGE
            for key, pair in after.items()
            for a, b in zip(pair, before[key], strict=True)
        )

    def to_yaml(self, header: str) -> str:
        """The calibration file, `header` (comment lines) first."""
        body = yaml.safe_dump(
            {
                "calibrations": [
                    c.model_dump(by_alias=True, exclude_none=True) for c in self.calibrations
                ]
            },
            sort_keys=False,
        )
        return header + body


def calibrate(
    prometheus: metrics.QueryClient,
    items: Iterable[Mapping[str, Any]],
    catalog: Catalog,
    *,
    window: str,
    timeout_s: float,
    fitted: str,
) -> Fit:
    """Fit the calibration from the LLMDeployments `items` (as the API lists them).

    Args:
        prometheus: a Prometheus client (`metrics.make_client`).
        items: LLMDeployment objects; those without a current plan, a load curve or a
            ready replica are skipped.
        catalog: the catalog with the calibration in use (kept where nothing new is
            measured).
        window: PromQL duration to average over, e.g. "1h".
        timeout_s: seconds per query.
        fitted: the time to stamp on new entries (RFC 3339).

    Raises:
        metrics.MetricsError: Prometheus could not be read.
    """
    by_engine: dict[str, list[tuple[tuple[str, str], LLMDeploymentStatus]]] = {}
    for item in items:
        meta = item.get("metadata") or {}
        try:
            status = LLMDeploymentStatus.model_validate(item.get("status") or {})
        except ValidationError:
            continue  # another version's status: nothing to compare
        if status.plan is None or not status.plan.load_curve or not status.ready_replicas:
            continue
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        by_engine.setdefault(status.plan.engine, []).append((key, status))
    samples: list[fidelity.FleetSample] = []
    lines: list[str] = []
    for engine, members in sorted(by_engine.items()):
        observed = metrics.observe_fleet(prometheus, engine, timeout_s=timeout_s, window=window)
        for key, status in members:
            assert status.plan is not None
            obs = observed.get(key)
            ready = status.ready_replicas or 0
            perf = fidelity.compare(status.plan, obs, ready) if obs is not None else None
            if perf is None:
                lines.append(f"{key[0]}/{key[1]}: nothing measured in {window}")
                continue
            samples.append(fidelity.FleetSample(engine, status.plan.gpu, status.plan, perf))
    previous = tuple(
        c.model_copy(update={"gpu": _canonical_gpu(catalog, c.gpu)}) for c in catalog.calibrations
    )
    calibrations, fit_lines = fidelity.fit(samples, previous, fitted)
    return Fit(calibrations, previous, len(samples), lines + fit_lines)


def _canonical_gpu(catalog: Catalog, name: str) -> str:
    try:
        return catalog.gpu(name).name
    except UnknownNameError:
        return name
