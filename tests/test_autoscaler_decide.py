"""The autoscaler's pure decision: table tests and hypothesis properties of `decide()`."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_operator.autoscaler import decide as d
from llm_operator.autoscaler.decide import (
    Decision,
    Observation,
    Policy,
    ReplicaModel,
    ScalerState,
    decide,
)
from tests.conftest import make_spec

# One replica: 1000 output tokens/s predicted, $4/hour; at 80% it is planned for 800.
REPLICA = ReplicaModel(output_tokens_per_second=1000.0, cost_per_hour=4.0)
PER_REPLICA = 800.0
STEP = 15.0  # the loop's default interval, seconds


def make_policy(**overrides: Any) -> Policy:
    """Min 1, max 8, 80% (one replica planned for 800 tokens/s), 30 s up, 300 s down, no
    scaling ahead (the tests of the trend turn it on), with overrides."""
    base: dict[str, Any] = {
        "min_replicas": 1,
        "max_replicas": 8,
        "target_utilization": 0.8,
        "predictive": False,
    }
    return Policy(**(base | overrides))


def load(tps: float, waiting: float = 0.0, running: float | None = None) -> Observation:
    """An observation; running defaults to served / 40 tokens/s per stream."""
    return Observation(
        output_tokens_per_second=tps,
        running_requests=tps / 40.0 if running is None else running,
        waiting_requests=waiting,
    )


@dataclass
class Run:
    """Steps `decide()` like the loop does: the decision's replicas become ready at once.

    `offer(demand)` observes what the engines would report for that demand, as
    e2e/sim/engine_sim.py does: replicas serve up to `capacity` tokens/s each, a request
    streams 40 tokens/s, and what is not served waits.
    """

    policy: Policy
    replicas: int
    now: float = 0.0
    state: ScalerState = field(default_factory=ScalerState)
    last: Decision | None = None
    capacity: float = REPLICA.output_tokens_per_second

    def step(self, observation: Observation, dt: float = STEP) -> Decision:
        self.now += dt
        decision = decide(
            observation,
            now=self.now,
            current_replicas=self.replicas,
            ready_replicas=self.replicas,
            replica=REPLICA,
            policy=self.policy,
            state=self.state,
        )
        # What the loop does: persist the state as JSON and read it back next time.
        self.state = ScalerState.from_json(decision.state.to_json())
        self.replicas = decision.replicas
        self.last = decision
        return decision

    def observe(self, demand: float) -> Observation:
        served = min(demand, self.replicas * self.capacity)
        slots = self.capacity / 40.0
        return Observation(
            output_tokens_per_second=served,
            running_requests=served / 40.0,
            waiting_requests=(demand - served) / 40.0,
            kv_cache_usage=served / 40.0 / (self.replicas * slots) if self.replicas else None,
        )

    def offer(self, demand: float, dt: float = STEP) -> Decision:
        return self.step(self.observe(demand), dt)

    def hold(self, demand: float, seconds: float) -> Decision:
        decision = self.offer(demand)
        for _ in range(round(seconds / STEP) - 1):
            decision = self.offer(demand)
        return decision

    def hold_obs(self, observation: Observation, seconds: float) -> Decision:
        decision = self.step(observation)
        for _ in range(round(seconds / STEP) - 1):
            decision = self.step(observation)
        return decision


def warmed(policy: Policy, replicas: int, demand: float, capacity: float = 1000.0) -> Run:
    """A run that has seen `demand` for longer than both windows at `replicas`."""
    run = Run(policy, replicas, capacity=capacity)
    run.hold(demand, policy.scale_down_window_s + 2 * STEP)
    assert run.replicas == replicas, run.last
    return run


# -- table tests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "tps", "expected"),
    [
        (2, 1600.0, 2),  # exactly 2 x 800
        (2, 1700.0, 2),  # +6%: within the 10% tolerance
        (2, 1500.0, 2),  # -6%: within the tolerance
        (2, 2600.0, 4),  # ceil(2600 / 800) = 4
        (4, 700.0, 1),
        (3, 0.0, 1),  # no traffic, minReplicas 1
        (2, 9000.0, 8),  # maxReplicas 8
    ],
)
def test_settles_on_demand_over_capacity(replicas: int, tps: float, expected: int) -> None:
    run = Run(make_policy(), replicas)
    run.hold(tps, 2 * 300.0)
    assert run.replicas == expected


def test_scale_up_waits_the_up_window_then_jumps_to_the_need() -> None:
    run = warmed(make_policy(), 2, 1600.0)
    first = run.offer(1850.0)  # served without a queue: demand must persist
    assert (first.replicas, first.reason) == (2, d.STABILIZING_UP)
    assert first.needed_replicas == 3
    run.offer(1850.0)
    third = run.offer(1850.0)  # 30 s after the first high sample
    assert (third.replicas, third.reason) == (3, d.SCALE_UP)


def test_a_queue_in_two_samples_in_a_row_skips_the_up_window() -> None:
    run = warmed(make_policy(scale_up_window_s=120.0), 2, 1600.0)
    first = run.offer(4000.0)  # 2 replicas serve 2000: 50 requests wait
    assert (first.replicas, first.reason) == (2, d.STABILIZING_UP)
    second = run.offer(4000.0)
    assert (second.replicas, second.reason) == (5, d.SCALE_UP)


def test_a_one_sample_spike_does_not_scale_up() -> None:
    run = warmed(make_policy(), 2, 1600.0)
    run.offer(8000.0)
    for _ in range(40):
        assert run.offer(1600.0).replicas == 2


def test_scale_down_waits_the_down_window() -> None:
    policy = make_policy()
    run = warmed(policy, 4, 3200.0)
    # Low demand must be seen at both ends of a 300 s span: 21 samples 15 s apart.
    decisions = [run.offer(700.0) for _ in range(round(300 / STEP) + 1)]
    assert all(x.replicas == 4 for x in decisions[:-1])
    assert all(x.reason == d.STABILIZING_DOWN for x in decisions[:-1])
    assert (decisions[-1].replicas, decisions[-1].reason) == (1, d.SCALE_DOWN)


def test_scale_down_takes_the_highest_recommendation_of_the_window() -> None:
    run = warmed(make_policy(), 6, 4800.0)
    for _ in range(10):
        run.offer(700.0)
    run.offer(2300.0)  # one busier sample: 3 replicas
    run.hold(700.0, 300.0 - 10 * STEP)
    assert run.replicas == 3
    assert run.last is not None and run.last.reason == d.SCALE_DOWN


def test_scale_down_waits_the_down_window_after_a_scale_up() -> None:
    run = warmed(make_policy(), 2, 1600.0)
    run.hold(4000.0, 45.0)
    assert run.replicas == 5
    scaled_at = run.now
    while run.replicas == 5:
        run.offer(700.0)
    assert run.now - scaled_at >= 300.0


def test_no_scale_down_while_the_rate_still_averages_a_queue() -> None:
    """A queue scales up within seconds; the 1 min token rate shows the new replicas a
    minute later. Once the queue drains the rate still says what one replica served, and
    with a down window shorter than the rate's, 3 replicas went back to 1 within 16 s
    (e2e test_autoscaler's load step under CI load)."""
    policy = make_policy(scale_up_window_s=4.0, scale_down_window_s=20.0)
    run = warmed(policy, 1, 700.0)
    queued = Observation(800.0, running_requests=20.0, waiting_requests=40.0)  # asks 2400
    while run.replicas < 3:
        run.step(queued, dt=2.0)
    drained = run.now
    lagging = Observation(800.0, running_requests=20.0, waiting_requests=0.0)
    while run.replicas == 3 and run.now - drained < 300.0:
        run.step(lagging, dt=2.0)
    # The rate's window must pass since the last queue, then the whole down window.
    assert run.now - drained >= d.RATE_WINDOW_S + policy.scale_down_window_s - 2.0
    assert run.replicas == 1  # and then the low rate does count


def test_queue_adds_to_demand() -> None:
    # 2 replicas serve 1600 with 40 running and 40 waiting: demand is 3200 tokens/s.
    run = warmed(make_policy(), 2, 1600.0)
    decision = run.step(load(1600.0, waiting=40.0, running=40.0))
    assert decision.demand_tokens_per_second == pytest.approx(3200.0)


def test_queue_without_running_count_doubles_the_demand() -> None:
    run = warmed(make_policy(), 2, 1600.0)
    obs = Observation(output_tokens_per_second=1600.0, waiting_requests=5.0)
    assert run.step(obs).demand_tokens_per_second == pytest.approx(3200.0)


def test_saturated_replicas_refine_capacity_down() -> None:
    # The planner says 1000 tokens/s per replica but two saturated replicas serve 600 each.
    run = warmed(make_policy(max_replicas=2), 2, 1000.0, capacity=600.0)
    for _ in range(round(d.SETTLE_S / STEP) + 10):  # saturation must last SETTLE_S first
        decision = run.offer(1600.0)  # 1200 served, 10 requests waiting
    assert run.state.capacity_estimate == pytest.approx(600.0)
    assert decision.capacity_tokens_per_second == pytest.approx(480.0)
    # demand 1600 over 480 per replica: 4 replicas, where the prediction alone says 2.
    assert decision.needed_replicas == 4
    assert decision.reason == d.MAX_REPLICAS


def test_no_capacity_measurement_right_after_scaling() -> None:
    run = warmed(make_policy(), 2, 1600.0)
    run.hold(4000.0, 45.0)
    assert run.replicas == 5
    # The rate still shows what 2 replicas served while 5 are ready and requests queue.
    measured = run.state.capacity_estimate
    scaled_at = run.state.last_scale_time
    assert scaled_at is not None
    lagging = Observation(1600.0, running_requests=40.0, waiting_requests=60.0)
    while run.now + STEP - scaled_at < d.SETTLE_S:
        run.step(lagging)
        assert run.state.capacity_estimate == measured
    for _ in range(round(d.SETTLE_S / STEP) + 1):  # saturated for SETTLE_S: it counts
        run.step(lagging)
    assert run.state.capacity_estimate is not None
    assert run.state.capacity_estimate != measured
    assert run.state.capacity_estimate < PER_REPLICA / 0.8


def test_unsaturated_rate_above_the_prediction_raises_capacity() -> None:
    run = warmed(make_policy(), 1, 700.0, capacity=2000.0)
    decision = run.offer(1500.0)  # served without a queue: the prediction (1000) is low
    assert run.state.capacity_estimate == pytest.approx(1500.0)
    assert decision.capacity_tokens_per_second == pytest.approx(1200.0)


def test_full_kv_cache_counts_as_saturation() -> None:
    run = warmed(make_policy(), 2, 1200.0)
    obs = Observation(output_tokens_per_second=1200.0, kv_cache_usage=0.97)
    for _ in range(round(d.SETTLE_S / STEP) + 1):
        run.step(obs)
    assert run.state.capacity_estimate == pytest.approx(600.0)


def test_a_load_step_does_not_collapse_capacity_while_the_rate_catches_up() -> None:
    """Queues fill at once after a load step; the 1 min rate shows the new load later.

    Reading that lag as slow replicas once cut the estimate to a quarter of the plan and
    asked for 4x the replicas (seen in `make demo`).
    """
    run = warmed(make_policy(max_replicas=50), 3, 1800.0)
    ramp = [1800.0 + 1200.0 * min(1.0, i / 4) for i in range(1, round(d.SETTLE_S / STEP))]
    for served in ramp:  # the rate climbs over a minute; 100 requests wait all along
        decision = run.step(Observation(served, running_requests=60.0, waiting_requests=100.0))
        assert run.state.capacity_estimate is None, served
        assert decision.capacity_tokens_per_second == pytest.approx(PER_REPLICA)


def test_unsaturated_replicas_keep_the_prediction() -> None:
    run = warmed(make_policy(), 2, 1200.0)
    assert run.state.capacity_estimate is None
    assert run.last is not None
    assert run.last.capacity_tokens_per_second == pytest.approx(PER_REPLICA)


def test_missing_data_keeps_replicas_and_restarts_the_windows() -> None:
    policy = make_policy()
    run = warmed(policy, 4, 3200.0)
    for _ in range(40):  # ten minutes without data
        decision = run.step(Observation.unavailable("connection refused"))
        assert (decision.replicas, decision.reason) == (4, d.METRICS_UNAVAILABLE)
        assert not decision.metrics_available
        assert "connection refused" in decision.message
    # Data is back and low: a whole scale-down window of it is needed first.
    decisions = [run.offer(700.0) for _ in range(round(300 / STEP) + 1)]
    assert all(x.replicas == 4 for x in decisions[:-1])
    assert decisions[-1].replicas == 1


def test_scale_to_zero_after_the_idle_period_and_back_at_once() -> None:
    policy = make_policy(min_replicas=0, scale_to_zero_after_s=600.0)
    run = warmed(policy, 1, 700.0)
    idle = [run.offer(0.0) for _ in range(round(600 / STEP))]
    assert all(x.replicas == 1 for x in idle[:-1])
    assert (idle[-1].replicas, idle[-1].reason) == (0, d.SCALE_TO_ZERO)
    assert run.offer(0.0).replicas == 0
    back = run.step(Observation(output_tokens_per_second=0.0, waiting_requests=3.0))
    assert (back.replicas, back.reason) == (1, d.SCALE_FROM_ZERO)


def test_min_replicas_zero_without_idle_period_uses_the_down_window() -> None:
    run = warmed(make_policy(min_replicas=0), 1, 700.0)
    idle = [run.offer(0.0) for _ in range(round(300 / STEP))]
    assert [x.replicas for x in idle[-2:]] == [1, 0]


def test_missing_data_does_not_count_as_idle() -> None:
    policy = make_policy(min_replicas=0, scale_to_zero_after_s=120.0)
    run = warmed(policy, 1, 700.0)
    run.hold_obs(Observation.unavailable("timeout"), 600.0)
    assert run.offer(0.0).replicas == 1  # the idle timer starts when data is back


def test_budget_caps_replicas_and_says_so() -> None:
    # $13/h buys 3 replicas at $4/h; 4400 tokens/s needs 6.
    run = warmed(make_policy(max_cost_per_hour=13.0), 2, 1600.0)
    decision = run.hold(4400.0, 60.0)
    assert decision.replicas == 3
    assert decision.budget_limited
    assert decision.reason == d.BUDGET_LIMITED
    assert decision.affordable_replicas == 3
    assert "4400 tokens/s" in decision.message
    assert "needs 6 replicas" in decision.message
    assert "2400 tokens/s" in decision.message  # what the budget buys


def test_lowered_budget_scales_down_at_once_even_without_data() -> None:
    run = warmed(make_policy(), 5, 4000.0)
    run.policy = make_policy(max_cost_per_hour=8.0)
    decision = run.step(Observation.unavailable("timeout"))
    assert decision.replicas == 2


def test_max_replicas_is_reported() -> None:
    run = warmed(make_policy(max_replicas=3), 2, 1600.0)
    decision = run.hold(8000.0, 60.0)
    assert (decision.replicas, decision.reason) == (3, d.MAX_REPLICAS)
    assert not decision.budget_limited


def test_restart_with_persisted_state_does_not_scale_down() -> None:
    policy = make_policy()
    run = warmed(policy, 4, 3200.0)
    for _ in range(10):
        run.offer(700.0)
    # The operator restarts: the state comes back from the annotation.
    resumed = Run(policy, 4, now=run.now, state=ScalerState.from_json(run.state.to_json()))
    assert resumed.offer(700.0).replicas == 4
    # A lost annotation (fresh state) does not scale down either.
    fresh = Run(policy, 4, now=run.now)
    assert fresh.offer(700.0).replicas == 4


def test_state_json_round_trip_and_format() -> None:
    run = warmed(make_policy(), 2, 1600.0)
    run.step(load(1200.0, waiting=3.0, running=30.0))
    text = run.state.to_json()
    doc = json.loads(text)
    assert doc["v"] == 1
    assert set(doc) == {
        "v",
        "rec",
        "since",
        "lastScale",
        "lastActive",
        "capacity",
        "saturatedSince",
        "lastSaturated",
        "demand",
        "startup",
        "startingSince",
    }
    assert ScalerState.from_json(text) == run.state
    assert len(text) < 2048  # one scale-down window of recommendations


@pytest.mark.parametrize(
    "text", [None, "", "not json", "[]", '{"v": 99}', '{"v": 1, "rec": [["x", 1]]}']
)
def test_unreadable_state_is_fresh(text: str | None) -> None:
    assert ScalerState.from_json(text) == ScalerState()


def test_policy_from_spec() -> None:
    spec = make_spec(
        scaling={
            "minReplicas": 0,
            "maxReplicas": 6,
            "targetUtilization": 0.7,
            "scaleUpStabilizationSeconds": 15,
            "scaleDownStabilizationSeconds": 600,
            "scaleToZeroAfterSeconds": 900,
            "tolerance": 0.2,
        },
        budget={"maxCostPerHour": 20},
    )
    assert Policy.from_spec(spec) == Policy(
        min_replicas=0,
        max_replicas=6,
        target_utilization=0.7,
        scale_up_window_s=15.0,
        scale_down_window_s=600.0,
        scale_to_zero_after_s=900.0,
        tolerance=0.2,
        max_cost_per_hour=20.0,
    )


@pytest.mark.parametrize("predictive", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_noisy_steady_load_does_not_flap(seed: int, predictive: bool) -> None:
    rng = random.Random(seed)
    run = warmed(make_policy(predictive=predictive), 3, 2400.0)
    changes = 0
    for _ in range(round(4 * 3600 / STEP)):  # four hours of +-20% noise around 3 replicas
        before = run.replicas
        run.offer(2300.0 * rng.uniform(0.8, 1.2))
        changes += run.replicas != before
    assert changes <= 2


def _ramp(predictive: bool) -> list[int]:
    """Replicas per step while demand rises 2 tokens/s every second, without a queue."""
    run = warmed(make_policy(predictive=predictive, max_replicas=16), 1, 500.0)
    return [run.offer(500.0 + 2.0 * STEP * i).replicas for i in range(1, 200)]


def test_a_rising_trend_is_scaled_for_one_start_up_ahead() -> None:
    reactive, ahead = _ramp(False), _ramp(True)
    # Never later, and earlier at every step up; neither scales down while demand rises.
    assert all(a >= r for a, r in zip(ahead, reactive, strict=True))
    for count in range(2, max(reactive) + 1):
        assert ahead.index(count) < reactive.index(count), count
    assert ahead == sorted(ahead) and reactive == sorted(reactive)
    # How far ahead: the measured start-up (the Run's replicas are ready at the next call:
    # one step) plus the up window, of demand growth.
    lead = round((STEP + make_policy().scale_up_window_s) / STEP)
    for count in range(3, max(reactive) + 1):
        assert reactive.index(count) - ahead.index(count) == lead, count


def test_before_any_start_up_was_seen_the_plans_estimate_sets_how_far_ahead() -> None:
    # Demand rose 2 tokens/s every second for 5 minutes, now 1300 tokens/s on 2 replicas.
    rising = tuple((float(t), 700.0 + 2.0 * t) for t in range(0, 300, 15))
    state = ScalerState(recommendations=((285.0, 2),), observed_since=0.0, demand=rising)
    policy = make_policy(scale_up_window_s=0.0, tolerance=0.0, predictive=True)
    for startup, needed in [(60.0, 2), (300.0, 3)]:
        decision = decide(
            load(1300.0),
            now=300.0,
            current_replicas=2,
            ready_replicas=2,
            replica=replace(REPLICA, startup_s=startup),
            policy=policy,
            state=state,
        )
        # 1300 + 2 x startup tokens/s: 1420 fits 2 x 800, 1900 does not.
        assert decision.needed_replicas == needed, startup


def test_start_up_is_measured_from_scale_up_to_all_ready() -> None:
    policy = make_policy()
    state, now = ScalerState(), 0.0
    obs = Observation(800.0, running_requests=20.0, waiting_requests=0.0)
    for current, ready in [(1, 1), (3, 1), (3, 1), (3, 2), (3, 2), (3, 3), (3, 3)]:
        now += STEP
        decision = decide(
            obs,
            now=now,
            current_replicas=current,
            ready_replicas=ready,
            replica=REPLICA,
            policy=policy,
            state=state,
        )
        state = decision.state
    # Starting from the call that saw 3 replicas (t=30) until all 3 were ready (t=90).
    assert state.startup_s == pytest.approx(60.0)
    assert state.starting_since is None


def test_a_stuck_rollout_is_not_a_start_up_sample() -> None:
    state = ScalerState(starting_since=0.0)
    decision = decide(
        load(800.0),
        now=d.MAX_STARTUP_S + 60.0,
        current_replicas=2,
        ready_replicas=2,
        replica=REPLICA,
        policy=make_policy(),
        state=state,
    )
    assert decision.state.startup_s is None


def test_spare_replicas_cover_the_loss_of_one_at_full_speed() -> None:
    # 1600 tokens/s: two replicas at 80%; at full speed 1.6 replicas, so one spare makes 3.
    assert warmed(make_policy(), 2, 1600.0).replicas == 2
    spared = Run(make_policy(spare_replicas=1), 3)
    spared.hold(1600.0, 600.0)
    assert spared.replicas == 3
    # Busier, headroom already holds a spare: 6 at 80% for 4400, 4.4 + 1 at full speed.
    spared.hold(4400.0, 600.0)
    assert spared.replicas == 6


def test_a_queue_with_no_replica_serving_is_priced_by_the_planned_stream() -> None:
    streaming = replace(REPLICA, request_tokens_per_second=40.0)
    decision = decide(
        Observation(0.0, running_requests=0.0, waiting_requests=100.0),
        now=1000.0,
        current_replicas=2,
        ready_replicas=0,
        replica=streaming,
        policy=make_policy(),
        state=ScalerState(),
    )
    assert decision.demand_tokens_per_second == pytest.approx(4000.0)
    assert decision.needed_replicas == 5


def test_a_state_older_than_the_tick_gap_restarts_the_windows() -> None:
    run = warmed(make_policy(), 4, 3200.0)
    # The operator was away (restart, failover) for 10 minutes; demand fell meanwhile.
    decision = run.step(run.observe(700.0), dt=600.0)
    assert (decision.replicas, decision.reason) == (4, d.STABILIZING_DOWN)
    held = run.hold(700.0, 300.0 - STEP)
    assert held.replicas == 4
    assert run.offer(700.0).replicas == 1


# -- properties ----------------------------------------------------------------------------

policies = st.builds(
    lambda lo, span, util, up, down, tol, budget, zero, spare, ahead: Policy(
        min_replicas=lo,
        max_replicas=max(1, lo + span),
        target_utilization=util,
        scale_up_window_s=up,
        scale_down_window_s=down,
        scale_to_zero_after_s=zero if lo == 0 else None,
        tolerance=tol,
        max_cost_per_hour=budget,
        spare_replicas=spare,
        predictive=ahead,
    ),
    st.integers(0, 4),
    st.integers(0, 12),
    st.floats(0.3, 1.0),
    st.sampled_from([0.0, 15.0, 30.0, 60.0]),
    st.sampled_from([0.0, 60.0, 300.0]),
    st.sampled_from([0.0, 0.05, 0.1, 0.2]),
    st.none() | st.floats(1.0, 60.0),
    st.none() | st.sampled_from([0.0, 120.0]),
    st.integers(0, 2),
    st.booleans(),
)
observations = st.builds(
    Observation,
    output_tokens_per_second=st.floats(0.0, 20000.0),
    running_requests=st.none() | st.floats(0.0, 500.0),
    waiting_requests=st.none() | st.floats(0.0, 500.0),
    kv_cache_usage=st.none() | st.floats(0.0, 1.0),
)
states = st.builds(
    ScalerState,
    recommendations=st.lists(st.tuples(st.floats(0.0, 999.0), st.integers(0, 20)), max_size=30).map(
        lambda xs: tuple(sorted(xs))
    ),
    observed_since=st.none() | st.floats(0.0, 1000.0),
    last_scale_time=st.none() | st.floats(0.0, 1000.0),
    last_active_time=st.none() | st.floats(0.0, 1000.0),
    capacity_estimate=st.none() | st.floats(100.0, 3000.0),
)


def _call(
    obs: Observation, policy: Policy, state: ScalerState, current: int, ready: int
) -> Decision:
    return decide(
        obs,
        now=1000.0,
        current_replicas=current,
        ready_replicas=min(ready, current),
        replica=REPLICA,
        policy=policy,
        state=state,
    )


@settings(max_examples=400, deadline=None)
@given(
    observations | st.just(Observation.unavailable("down")),
    policies,
    states,
    st.integers(0, 20),
    st.integers(0, 20),
)
def test_never_above_max_or_budget_never_below_min(
    obs: Observation, policy: Policy, state: ScalerState, current: int, ready: int
) -> None:
    decision = _call(obs, policy, state, current, ready)
    assert 0 <= decision.replicas <= policy.max_replicas
    if policy.max_cost_per_hour is not None:
        assert decision.replicas * REPLICA.cost_per_hour <= policy.max_cost_per_hour + 1e-9
    affordable = decision.affordable_replicas
    floor = policy.min_replicas if affordable is None else min(policy.min_replicas, affordable)
    assert decision.replicas >= floor
    if decision.replicas == 0 and obs.available:
        assert policy.min_replicas == 0 or affordable == 0
    assert ScalerState.from_json(decision.state.to_json()) == decision.state


@settings(max_examples=400, deadline=None)
@given(policies, states, st.integers(0, 20), st.integers(0, 20), st.text(max_size=20))
def test_no_scale_down_on_missing_data(
    policy: Policy, state: ScalerState, current: int, ready: int, why: str
) -> None:
    decision = _call(Observation.unavailable(why), policy, state, current, ready)
    bounded = min(max(current, policy.min_replicas), policy.max_replicas)
    affordable = decision.affordable_replicas
    assert decision.replicas == (bounded if affordable is None else min(bounded, affordable))
    assert decision.reason == d.METRICS_UNAVAILABLE
    assert not decision.metrics_available
    assert decision.state.recommendations == state.recommendations


@settings(max_examples=400, deadline=None)
@given(
    observations,
    st.floats(0.0, 20000.0),
    st.floats(0.0, 500.0),
    policies,
    states,
    st.integers(0, 20),
    st.integers(0, 20),
)
def test_monotone_in_demand(
    obs: Observation,
    more_tokens: float,
    more_waiting: float,
    policy: Policy,
    state: ScalerState,
    current: int,
    ready: int,
) -> None:
    assert obs.output_tokens_per_second is not None
    busier = replace(
        obs,
        output_tokens_per_second=obs.output_tokens_per_second + more_tokens,
        waiting_requests=(obs.waiting_requests or 0.0) + more_waiting,
    )
    quiet = _call(obs, policy, state, current, ready)
    busy = _call(busier, policy, state, current, ready)
    assert busy.replicas >= quiet.replicas
    assert busy.demand_tokens_per_second is not None
    assert quiet.demand_tokens_per_second is not None
    assert busy.demand_tokens_per_second >= quiet.demand_tokens_per_second - 1e-6


steps = st.lists(
    st.tuples(
        st.sampled_from([5.0, 15.0, 15.0, 15.0, 60.0]),
        st.none() | st.floats(0.0, 8000.0),  # None: metrics unavailable
        st.sampled_from([0.0, 0.0, 0.0, 5.0]),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 3),
    st.sampled_from([0.0, 30.0, 60.0]),
    st.sampled_from([60.0, 300.0]),
    st.integers(1, 6),
    steps,
)
def test_stabilisation_windows_hold(
    min_replicas: int,
    up: float,
    down: float,
    start: int,
    trace: list[tuple[float, float | None, float]],
) -> None:
    policy = make_policy(min_replicas=min_replicas, scale_up_window_s=up, scale_down_window_s=down)
    run = Run(policy, max(start, min_replicas))
    seen: list[tuple[float, int | None]] = []  # (time, needed) per call; None: no data
    queued = [False]  # per call: requests waited in a sample with data
    last_change: float | None = None
    for dt, tps, waiting in trace:
        obs = (
            Observation.unavailable("gap")
            if tps is None
            else Observation(tps, running_requests=tps / 40.0, waiting_requests=waiting)
        )
        before = run.replicas
        decision = run.step(obs, dt)
        seen.append((run.now, decision.needed_replicas))
        queued.append(tps is not None and waiting > 0)
        after = decision.replicas
        if after > before and not (queued[-1] and queued[-2]):
            # Demand above the old count for the whole up window, with no gap in it (a
            # queue in two samples in a row skips the window).
            window = [n for t, n in seen if t >= run.now - up]
            assert all(n is not None and n > before for n in window)
            assert _data_for(seen, run.now) >= up
        if after < before:
            window = [n for t, n in seen if t >= run.now - down]
            assert all(n is not None and n <= after for n in window)
            assert _data_for(seen, run.now) >= down
            assert last_change is None or run.now - last_change >= down
        if after != before:
            last_change = run.now


def _data_for(seen: list[tuple[float, int | None]], now: float) -> float:
    """How long data has been continuously available up to `now`."""
    start = now
    for t, needed in reversed(seen):
        if needed is None:
            break
        start = t
    return now - start


def test_capacity_estimate_is_bounded_by_the_prediction() -> None:
    run = warmed(make_policy(), 4, 3200.0)
    obs = Observation(output_tokens_per_second=40.0, running_requests=1.0, waiting_requests=50.0)
    for _ in range(20):
        run.step(obs)
    low, _ = d.CAPACITY_BOUNDS
    assert run.state.capacity_estimate is not None
    assert run.state.capacity_estimate >= low * REPLICA.output_tokens_per_second - 1e-9
    assert math.isfinite(run.state.capacity_estimate)
