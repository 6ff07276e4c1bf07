"""Predicted against observed (`autoscaler.fidelity`), the fleet calibration the planner
loads (`catalog.Calibration`), and re-planning with it (`search.replan`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from llm_operator.api.v1alpha1 import LLMDeployment, LoadPoint
from llm_operator.autoscaler import fidelity, loop
from llm_operator.autoscaler.decide import Observation
from llm_operator.catalog import Calibration, Catalog, CatalogError, parse_calibrations
from llm_operator.catalog.reload import CatalogFiles
from llm_operator.planner.search import REPLAN_GAIN, plan, replan
from llm_operator.reconcile.desired import recalibrated
from tests.conftest import make_spec
from tests.fakes import FakePrometheus, vector
from tests.test_autoscaler_loop import NOW, planned

CURVE = [
    LoadPoint(concurrency=1, ttft_ms=100.0, tpot_ms=10.0, output_tokens_per_second=90.0),
    LoadPoint(concurrency=4, ttft_ms=160.0, tpot_ms=13.0, output_tokens_per_second=280.0),
    LoadPoint(concurrency=8, ttft_ms=200.0, tpot_ms=16.0, output_tokens_per_second=450.0),
]


def test_the_curve_is_read_between_its_points_and_held_beyond_them() -> None:
    assert fidelity.at_load(CURVE, 2.0).ttft_ms == pytest.approx(120.0)
    assert fidelity.at_load(CURVE, 6.0).tpot_ms == pytest.approx(14.5)
    assert fidelity.at_load(CURVE, 0.3) == CURVE[0]
    assert fidelity.at_load(CURVE, 50.0) == CURVE[-1]
    with pytest.raises(ValueError):
        fidelity.at_load([], 1.0)


def test_measurements_are_compared_at_the_load_they_were_measured_at(catalog: Catalog) -> None:
    llmd = planned(catalog, running=2)
    plan_status = llmd.status.plan if llmd.status else None
    assert plan_status is not None and plan_status.load_curve
    expected = fidelity.at_load(plan_status.load_curve, 3.0)
    obs = Observation(
        output_tokens_per_second=2 * expected.output_tokens_per_second,
        running_requests=6.0,  # 3 per ready replica
        waiting_requests=0.0,
        ttft_seconds=expected.ttft_ms * 1.5 / 1000,
        tpot_seconds=expected.tpot_ms * 0.8 / 1000,
    )
    perf = fidelity.compare(plan_status, obs, ready=2)
    assert perf is not None and perf.ttft_ms and perf.tpot_ms and perf.output_tokens_per_second
    assert perf.concurrency_per_replica == 3.0
    assert perf.ttft_ms.error == pytest.approx(0.5, abs=0.002)
    assert perf.tpot_ms.error == pytest.approx(-0.2, abs=0.002)
    assert perf.output_tokens_per_second.error == pytest.approx(0.0, abs=0.002)
    assert fidelity.errors(perf) == {
        "ttft": perf.ttft_ms.error,
        "tpot": perf.tpot_ms.error,
        "tokens_per_second": perf.output_tokens_per_second.error,
    }
    message = fidelity.diverged(perf, 0.25)
    assert message is not None and "TTFT" in message and "+50%" in message
    assert "TPOT" not in message  # -20% is within 25%
    assert fidelity.diverged(perf, 0.6) is None


def test_a_queue_leaves_ttft_out_and_nothing_measured_gives_nothing(catalog: Catalog) -> None:
    llmd = planned(catalog)
    assert llmd.status is not None and llmd.status.plan is not None
    queued = Observation(100.0, running_requests=4.0, waiting_requests=9.0, ttft_seconds=3.0,
                         tpot_seconds=0.02)  # fmt: skip
    perf = fidelity.compare(llmd.status.plan, queued, ready=2)
    assert perf is not None and perf.ttft_ms is None and perf.tpot_ms is not None
    assert fidelity.compare(llmd.status.plan, Observation(100.0, running_requests=4.0), 2) is None
    assert fidelity.compare(llmd.status.plan, Observation(0.0, running_requests=0.0), 2) is None
    no_curve = llmd.status.plan.model_copy(update={"load_curve": None})
    assert fidelity.compare(no_curve, queued, ready=2) is None


def test_a_tick_reports_divergence_once(catalog: Catalog) -> None:
    llmd = planned(catalog, running=1)
    assert llmd.status is not None and llmd.status.plan is not None
    point = fidelity.at_load(llmd.status.plan.load_curve or [], 4.0)
    slow = FakePrometheus(
        {
            "generation_tokens": vector(point.output_tokens_per_second),
            "num_requests_running": vector(4),
            "num_requests_waiting": vector(0),
            "time_to_first_token": vector(point.ttft_ms / 1000),
            "request_time_per_output_token": vector(2 * point.tpot_ms / 1000),
        }
    )
    first = loop.tick(slow, llmd, now=NOW, timeout_s=1, last_persisted=None)
    perf = first.status.performance
    assert perf is not None and perf.tpot_ms is not None
    assert perf.tpot_ms.error == pytest.approx(1.0, abs=0.01)
    assert first.diverged is not None and "TPOT" in first.diverged
    again = LLMDeployment.model_validate(
        {**llmd.model_dump(by_alias=True), "status": first.status.model_dump(by_alias=True)}
    )
    second = loop.tick(slow, again, now=NOW + 15, timeout_s=1, last_persisted=None)
    assert second.diverged is None  # still off: said once
    down = loop.tick(FakePrometheus({}), again, now=NOW + 30, timeout_s=1, last_persisted=None)
    assert down.status.performance is None  # no metrics: no comparison shown


# -- the fleet calibration ----------------------------------------------------------------

CALIBRATION = """\
calibrations:
  - engine: vllm
    gpu: H100            # an alias works as in the GPU catalog
    decode: 1.5
    prefill: 1.2
    deployments: 3
    fitted: "2026-12-02T05:00:00Z"
"""


def test_a_calibration_file_parses_and_names_bad_fields() -> None:
    (entry,) = parse_calibrations(CALIBRATION)
    assert (entry.engine, entry.decode, entry.prefill) == ("vllm", 1.5, 1.2)
    with pytest.raises(CatalogError, match=r"calibrations\[0\]\.decode"):
        parse_calibrations("calibrations: [{engine: vllm, gpu: H100, decode: -1}]")
    with pytest.raises(CatalogError, match=r"calibrations\[0\]\.engine"):
        parse_calibrations("calibrations: [{engine: trt, gpu: H100}]")


def test_the_planner_takes_a_calibrated_engine_as_that_much_slower(catalog: Catalog) -> None:
    spec = make_spec(hardware={"gpuTypes": ["H100"]}, engine="vllm")
    before = plan(spec, catalog).chosen
    slower = replace(catalog, calibrations=parse_calibrations(CALIBRATION))
    h100 = catalog.gpu("H100")
    assert slower.calibration("vllm", h100) is not None
    assert slower.calibration("tgi", h100) is None
    after = plan(spec, slower).chosen
    assert before is not None and after is not None
    assert before.calibration is None and after.calibration is not None
    # A decode step takes 1.5x as long: TPOT at one request in flight follows it.
    one_before, one_after = before.load_curve[0][1], after.load_curve[0][1]
    assert one_after.step_ms / one_before.step_ms == pytest.approx(1.5, rel=0.02)
    assert one_after.ttft_ms > one_before.ttft_ms
    assert after.to_status().calibration is not None


def _with_status(llmd: LLMDeployment, **update: Any) -> LLMDeployment:
    assert llmd.status is not None
    return llmd.model_copy(update={"status": llmd.status.model_copy(update=update)})


def test_a_new_calibration_keeps_the_layout_unless_another_saves_enough(
    catalog: Catalog,
) -> None:
    spec = make_spec(hardware={"gpuTypes": ["H100", "A100-80GB"]}, engine="vllm")
    current = plan(spec, catalog).chosen
    assert current is not None
    status = current.to_status()
    gpu = catalog.gpu(current.gpu.name)

    def calibrated(decode: float) -> Catalog:
        entry = Calibration(engine="vllm", gpu=gpu.name, decode=decode, prefill=decode)
        return replace(catalog, calibrations=(entry,))

    assert not recalibrated(status, catalog)
    assert recalibrated(status, calibrated(1.05))
    # 5% slower: nothing else saves REPLAN_GAIN, the layout stays with new predictions.
    kept = replan(spec, calibrated(1.05), status).chosen
    assert kept is not None
    assert (kept.gpu.name, kept.tensor_parallel) == (current.gpu.name, current.tensor_parallel)
    assert kept.calibration is not None and kept.load_curve
    assert kept.timing.tpot_ms > current.timing.tpot_ms
    # 3x slower on this GPU type: the other one is far cheaper per token now.
    moved = replan(spec, calibrated(3.0), status).chosen
    assert moved is not None and moved.gpu.name != current.gpu.name
    fresh = plan(spec, calibrated(3.0)).chosen
    assert fresh is not None
    assert fresh.cost_per_million <= moved.cost_per_million * (1 + 1e-9)
    assert REPLAN_GAIN > 0


def test_a_calibration_file_is_reloaded_like_a_catalog(tmp_path: Path) -> None:
    path = tmp_path / "calibration.yaml"
    path.write_text("calibrations: []\n")
    clock = [0.0]
    files = CatalogFiles(interval_s=1.0, clock=lambda: clock[0], calibration_path=path)
    assert files.catalog.calibrations == ()
    path.write_text(CALIBRATION)
    clock[0] = 2.0
    (change,) = files.refresh()
    assert change.ok and "fleet calibration reloaded" in change.message()
    assert len(files.catalog.calibrations) == 1
    path.write_text("calibrations: [{engine: vllm, gpu: H100, prefill: 0}]\n")
    clock[0] = 4.0
    (bad,) = files.refresh()
    assert not bad.ok and "calibrations[0].prefill" in bad.message()
    assert "llmctl calibrate" in bad.message()
    assert len(files.catalog.calibrations) == 1  # the last good one stays


def test_the_fit_divides_out_what_the_predictions_already_included(catalog: Catalog) -> None:
    llmd = planned(catalog)
    assert llmd.status is not None and llmd.status.plan is not None
    base = llmd.status.plan
    gpu = base.gpu

    def sample(tpot_error: float, ttft_error: float | None, decode: float = 1.0) -> Any:
        perf = fidelity.PerformanceStatus(
            concurrency_per_replica=2.0,
            tpot_ms=fidelity.Comparison(observed=1, predicted=1, error=tpot_error),
            ttft_ms=(
                None
                if ttft_error is None
                else fidelity.Comparison(observed=1, predicted=1, error=ttft_error)
            ),
        )
        cal = fidelity.PlanStatus.model_validate(
            {**base.model_dump(by_alias=True), "calibration": {"decode": decode, "prefill": 1.0}}
        )
        return fidelity.FleetSample("vllm", gpu, cal, perf)

    other = Calibration(engine="tgi", gpu="L4", decode=2.0, prefill=2.0)
    fitted, lines = fidelity.fit(
        [sample(0.5, 0.2), sample(0.4, None), sample(0.6, 0.4)], [other], "now"
    )
    by = {(c.engine, c.gpu): c for c in fitted}
    assert by[("vllm", gpu)].decode == pytest.approx(1.5)  # the median of +40/+50/+60%
    assert by[("vllm", gpu)].prefill == pytest.approx(1.3)
    assert by[("vllm", gpu)].deployments == 3 and len(lines) == 1
    assert by[("tgi", "L4")] == other  # nothing new measured: kept
    # Predictions that already include x1.5 and are now right: the fit stays at 1.5.
    again, _ = fidelity.fit([sample(0.0, None, decode=1.5)], list(fitted), "later")
    assert {(c.engine, c.gpu): c for c in again}[("vllm", gpu)].decode == pytest.approx(1.5)
    # A wild measurement is bounded.
    wild, _ = fidelity.fit([sample(99.0, None)], [], "now")
    assert wild[0].decode == fidelity.FACTOR_BOUNDS[1]
