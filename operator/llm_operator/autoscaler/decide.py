"""The autoscaler's decision: observed load in, desired replicas and a reason out (pure).

`decide()` does no I/O and reads no clock: the autoscaler loop passes it the latest
`Observation` (from `autoscaler.metrics`), the replica counts, the plan's per-replica
predictions (`ReplicaModel`), the spec's bounds (`Policy`) and the `ScalerState` it
persisted last time (an annotation holding `ScalerState.to_json()`), and writes back the
returned `Decision.state`. The benchmark `bench/autoscale_replay.py` drives it the same way.

The rules, in order (docs/autoscaling.md explains them):

1. No data, no action: when Prometheus is unreachable or has no series, or what it answers
   cannot be a measurement (`unreliable`: a negative rate, more tokens/s than the replicas
   could produce by far), replicas stay where they are (only the spec's bounds and the
   budget still apply) and the windows start again once data is back, so a gap never
   leads to a scale-down.
2. Demand is the observed output tokens/s, plus what the queue asks for: with W requests
   waiting and R running, demand = served x (1 + W / R).
3. Capacity per replica is the planner's prediction x targetUtilization; while replicas are
   saturated (requests queue or the KV cache is full) the measured tokens/s per ready replica
   replaces the prediction (a moving average kept in the state).
4. Scaling ahead (`predictive`): the demand the trend of the last `TREND_WINDOW_S`
   reaches one start-up later (the replicas' measured start-up time, the plan's estimate
   until one was seen, plus the up window) is what the recommendation is sized for; only a
   rise beyond noise counts (the slope's lower 95% bound).
5. A recommendation ceil(demand / capacity) is kept when it is within `tolerance` of the
   current count; `spareReplicas` more than the demand needs at full speed are kept so
   that losing them still serves it. Scale-up takes the lowest recommendation of the last
   scaleUpStabilizationSeconds (demand must persist; requests waiting in the queues skip
   the window: they are demand already unserved), scale-down the highest of the last
   scaleDownStabilizationSeconds, and neither acts before its window holds data (time
   this autoscaler watched: a state older than `MAX_TICK_GAP_S` starts them again).
   Scale-down also waits that window after the last scaling action.
6. Scale to zero only with minReplicas 0 after scaleToZeroAfterSeconds without traffic;
   any demand seen at zero replicas brings replicas back at once.
7. Clamp to [minReplicas, maxReplicas], then to what budget.maxCostPerHour buys; when
   demand needs more than the budget buys the decision says `budget_limited`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Final

from llm_operator.api.v1alpha1 import LLMDeploymentSpec, PlanStatus

STATE_VERSION: Final = 1
DEFAULT_TOLERANCE: Final = 0.1
SATURATED_KV_USAGE: Final = 0.95
MAX_RECOMMENDATIONS: Final = 512
MAX_RECOMMENDED: Final = 1_000_000  # replicas; keeps absurd inputs finite
# The window of the token rate autoscaler.metrics queries (rate(...[1m])).
RATE_WINDOW_S: Final = 60.0
SETTLE_S: Final = 2 * RATE_WINDOW_S  # no capacity measurement right after scaling
# NOTE: a measured capacity outside [1/4, 4] x the planner's prediction is taken as a
# measuring error (a replica still warming up, a stuck counter), not as the replica's speed.
CAPACITY_BOUNDS: Final = (0.25, 4.0)
# NOTE: a replica is trusted to outrun its prediction by CAPACITY_BOUNDS' 4x, not by 100x:
# a rate above 100x the predicted tokens/s of the replicas that exist is garbage (a rate
# across a spurious counter reset adds the whole counter, e.g. 1e9 tokens / 60 s). The
# margin is wide so that a tokensPerSecondQuery counting demand at a gateway, which can
# exceed what is served (at zero replicas, say), is not mistaken for garbage.
IMPLAUSIBLE_RATE_FACTOR: Final = 100.0
# NOTE: an engine pod holds an open socket per request it keeps; Linux caps a process at
# fs.nr_open = 2**20 descriptors by default, so no pod holds more requests than that.
MAX_REQUESTS_PER_REPLICA: Final = 2**20
# NOTE: how long a new replica takes to serve before one has been seen starting: a
# container start, the weights loaded from a node's cache and the engine's warm-up (CUDA
# graph capture) take about a minute on vLLM; a download comes on top
# (`ReplicaModel.startup_s`). The autoscaler measures its own replicas' start-up and uses
# that from then on (`ScalerState.startup_s`).
DEFAULT_STARTUP_S: Final = 120.0
# NOTE: an assumed download speed, ~1 GiB/s (a 10 Gbit/s node link at ~85%), until a
# start-up has been measured.
DOWNLOAD_GIB_PER_S: Final = 1.0
MAX_STARTUP_S: Final = 900.0  # a start-up measured longer is a stuck rollout, not a start
# NOTE: a state whose last call is older than this was not watching (the operator was
# down, or another replica of it led): the windows start again, as after a metrics gap.
# The autoscaler's interval (LLM_OPERATOR_AUTOSCALE_INTERVAL, 15 s) must stay below it.
MAX_TICK_GAP_S: Final = 2 * 60.0
TREND_WINDOW_S: Final = 300.0  # demand samples the trend is fitted over
MIN_TREND_SAMPLES: Final = 4
TREND_CONFIDENCE: Final = 2.0  # standard errors off the fitted slope (about 95%)
MAX_TREND_SAMPLES: Final = 64
_EPS: Final = 1e-9

# Reasons (CamelCase, for status.lastScalingReason and events).
METRICS_UNAVAILABLE: Final = "MetricsUnavailable"
SCALE_UP: Final = "ScaleUp"
SCALE_DOWN: Final = "ScaleDown"
SCALE_TO_ZERO: Final = "ScaleToZero"
SCALE_FROM_ZERO: Final = "ScaleFromZero"
STEADY: Final = "Steady"
STABILIZING_UP: Final = "StabilizingUp"
STABILIZING_DOWN: Final = "StabilizingDown"
BUDGET_LIMITED: Final = "BudgetLimited"
MAX_REPLICAS: Final = "MaxReplicas"
BOUNDS: Final = "Bounds"


@dataclass(frozen=True)
class Observation:
    """What the engines report for one LLMDeployment, summed over its pods.

    Attributes:
        output_tokens_per_second: generated tokens/s over the query window; None when the
            metrics are unavailable (Prometheus down, timed out, or no series).
        running_requests: requests in the engines' batches, when known.
        waiting_requests: requests queued in the engines, when known.
        kv_cache_usage: mean KV-cache usage over the pods (0..1), when the engine exports it.
        ttft_seconds: mean time to first token over the window, when the engine measures it.
        tpot_seconds: mean time per output token over the window, when measured.
        unavailable_reason: why `output_tokens_per_second` is None, for the message.
    """

    output_tokens_per_second: float | None
    running_requests: float | None = None
    waiting_requests: float | None = None
    kv_cache_usage: float | None = None
    ttft_seconds: float | None = None
    tpot_seconds: float | None = None
    unavailable_reason: str = ""

    @property
    def available(self) -> bool:
        """Whether there is a token rate to act on."""
        return self.output_tokens_per_second is not None

    @classmethod
    def unavailable(cls, reason: str) -> Observation:
        """An observation that carries only why there is none."""
        return cls(output_tokens_per_second=None, unavailable_reason=reason)


@dataclass(frozen=True)
class ReplicaModel:
    """What one replica of the chosen plan does and costs.

    Attributes:
        output_tokens_per_second: the planner's predicted output tokens/s at full load.
        cost_per_hour: USD per hour of one replica.
        startup_s: seconds from creating a replica to it serving, before any was measured.
        request_tokens_per_second: the tokens/s one request streams (1 / time per output
            token), which prices a queue when no replica serves; None when unknown.
    """

    output_tokens_per_second: float
    cost_per_hour: float
    startup_s: float = DEFAULT_STARTUP_S
    request_tokens_per_second: float | None = None

    @classmethod
    def from_plan(cls, plan: PlanStatus) -> ReplicaModel:
        """The per-replica figures of `status.plan`; the start-up adds the download."""
        stream = 1000.0 / plan.tpot_ms if plan.tpot_ms > 0 else None
        return cls(
            plan.output_tokens_per_second,
            plan.cost_per_hour,
            startup_s=DEFAULT_STARTUP_S + (plan.download_gib or 0.0) / DOWNLOAD_GIB_PER_S,
            request_tokens_per_second=stream,
        )


@dataclass(frozen=True)
class Policy:
    """The spec's bounds on scaling (spec.scaling and spec.budget), in plain numbers.

    Attributes:
        min_replicas: fewest replicas; 0 allows scale to zero.
        max_replicas: most replicas.
        target_utilization: fraction of a replica's capacity to plan for (0, 1].
        scale_up_window_s: how long demand must persist before scaling up.
        scale_down_window_s: how long low demand must persist before scaling down.
        scale_to_zero_after_s: idle time before removing every replica (min_replicas 0);
            None uses the scale-down window.
        tolerance: relative demand change ignored around the current replica count.
        max_cost_per_hour: budget cap on replicas x cost per replica; None: no cap.
        spare_replicas: replicas beyond what the demand needs at full speed, so that losing
            that many (a preempted node, a crash) still serves it while they restart.
        predictive: scale up for the demand the trend projects one start-up ahead.
    """

    min_replicas: int = 1
    max_replicas: int = 4
    target_utilization: float = 0.6
    scale_up_window_s: float = 30.0
    scale_down_window_s: float = 300.0
    scale_to_zero_after_s: float | None = None
    tolerance: float = DEFAULT_TOLERANCE
    max_cost_per_hour: float | None = None
    spare_replicas: int = 0
    predictive: bool = True

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(self.min_replicas, 1):
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if not 0 < self.target_utilization <= 1:
            raise ValueError("target_utilization must be in (0, 1]")
        if self.tolerance < 0 or self.scale_up_window_s < 0 or self.scale_down_window_s < 0:
            raise ValueError("tolerance and windows must be >= 0")

    @classmethod
    def from_spec(cls, spec: LLMDeploymentSpec) -> Policy:
        """The policy an LLMDeployment spec asks for.

        Args:
            spec: the LLMDeployment spec.

        Returns:
            The policy.
        """
        s = spec.scaling
        return cls(
            min_replicas=s.min_replicas,
            max_replicas=s.max_replicas,
            target_utilization=s.target_utilization,
            scale_up_window_s=float(s.scale_up_stabilization_seconds),
            scale_down_window_s=float(s.scale_down_stabilization_seconds),
            scale_to_zero_after_s=_opt_float(s.scale_to_zero_after_seconds),
            tolerance=s.tolerance,
            max_cost_per_hour=spec.budget.max_cost_per_hour,
            spare_replicas=s.spare_replicas,
            predictive=s.predictive,
        )


@dataclass(frozen=True)
class ScalerState:
    """What `decide()` remembers between calls; persisted as JSON in an annotation.

    Times are seconds on the caller's clock (the loop uses Unix time, so the state
    survives an operator restart).

    Attributes:
        recommendations: (time, replicas) recommended by recent calls, oldest first.
        observed_since: start of the current run of calls with data; None after a gap.
        last_scale_time: when the replica count last changed.
        last_active_time: when demand was last seen (or data was last missing).
        capacity_estimate: measured output tokens/s per saturated replica, if any.
        saturated_since: start of the current run of saturated observations; None when
            the last one was not saturated.
        last_saturated_time: when an observation was last saturated (a queue or a full
            KV cache).
        demand: (time, demanded tokens/s) of recent calls with data, oldest first.
        startup_s: measured seconds from a replica's creation to it serving (moving
            average); None until one was seen.
        starting_since: when replicas began to be short of ready (current > ready); None
            when all are ready.
    """

    recommendations: tuple[tuple[float, int], ...] = ()
    observed_since: float | None = None
    last_scale_time: float | None = None
    last_active_time: float | None = None
    capacity_estimate: float | None = None
    saturated_since: float | None = None
    last_saturated_time: float | None = None
    demand: tuple[tuple[float, float], ...] = ()
    startup_s: float | None = None
    starting_since: float | None = None

    @property
    def last_seen(self) -> float:
        """When the last call with data ran (-inf when none did)."""
        times = [t for t, _ in self.recommendations[-1:]] + [t for t, _ in self.demand[-1:]]
        return max(times, default=-math.inf)

    def to_json(self) -> str:
        """Compact JSON, e.g. `{"v":1,"rec":[[1700000000.0,3]],"since":...}`."""
        doc: dict[str, Any] = {
            "v": STATE_VERSION,
            "rec": [[t, n] for t, n in self.recommendations],
            "since": self.observed_since,
            "lastScale": self.last_scale_time,
            "lastActive": self.last_active_time,
            "capacity": self.capacity_estimate,
            "saturatedSince": self.saturated_since,
            "lastSaturated": self.last_saturated_time,
            "demand": [[t, d] for t, d in self.demand],
            "startup": self.startup_s,
            "startingSince": self.starting_since,
        }
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> ScalerState:
        """Parse `to_json()` output; anything unreadable gives a fresh state.

        A fresh state is the safe default: no scale-down happens until a whole
        scale-down window of data has been seen again.

        Args:
            text: the annotation value, or None when absent.

        Returns:
            The state.
        """
        if not text:
            return cls()
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("v") != STATE_VERSION:
                return cls()
            pairs = [(float(t), int(n)) for t, n in doc.get("rec", [])]
            recs = tuple((t, n) for t, n in pairs if n >= 0 and math.isfinite(t))
            samples = [(float(t), float(d)) for t, d in doc.get("demand", [])]
            demand = tuple(
                (t, d) for t, d in samples if math.isfinite(t) and math.isfinite(d) and d >= 0
            )
            return cls(
                recommendations=recs[-MAX_RECOMMENDATIONS:],
                observed_since=_opt_float(doc.get("since")),
                last_scale_time=_opt_float(doc.get("lastScale")),
                last_active_time=_opt_float(doc.get("lastActive")),
                capacity_estimate=_opt_positive(doc.get("capacity")),
                saturated_since=_opt_float(doc.get("saturatedSince")),
                last_saturated_time=_opt_float(doc.get("lastSaturated")),
                demand=demand[-MAX_TREND_SAMPLES:],
                startup_s=_opt_positive(doc.get("startup")),
                starting_since=_opt_float(doc.get("startingSince")),
            )
        except (ValueError, TypeError, OverflowError):
            return cls()


@dataclass(frozen=True)
class Decision:
    """The outcome of one `decide()` call.

    Attributes:
        replicas: desired replicas.
        reason: CamelCase reason (`ScaleUp`, `StabilizingDown`, `BudgetLimited`, ...).
        message: one sentence for status.lastScalingReason and events.
        metrics_available: whether the observation had data (condition MetricsAvailable).
        budget_limited: demand needs more replicas than budget.maxCostPerHour buys
            (condition BudgetLimited).
        demand_tokens_per_second: estimated demand, None without data.
        capacity_tokens_per_second: one replica's output tokens/s at the target utilisation.
        needed_replicas: replicas the demand needs now, before windows and bounds.
        affordable_replicas: most replicas the budget buys; None without a budget.
        state: the state to persist.
    """

    replicas: int
    reason: str
    message: str
    metrics_available: bool
    budget_limited: bool
    demand_tokens_per_second: float | None
    capacity_tokens_per_second: float
    needed_replicas: int | None
    affordable_replicas: int | None
    state: ScalerState = field(default_factory=ScalerState)


def affordable_replicas(policy: Policy, replica: ReplicaModel) -> int | None:
    """Most replicas whose cost stays within budget.maxCostPerHour (None: no budget)."""
    if policy.max_cost_per_hour is None or replica.cost_per_hour <= 0:
        return None
    return max(0, math.floor(policy.max_cost_per_hour / replica.cost_per_hour + _EPS))


def unreliable(observation: Observation, replicas: int, planned: float) -> str | None:
    """Why an observation cannot be a measurement of `replicas` replicas, or None.

    Whatever Prometheus answers that no engine could have produced (a proxy's garbage, a
    rate across a spurious counter reset, a broken recording rule) is refused, not clipped
    into a scale-up or a scale-down:

    - the token rate is not a finite number, or is negative (a rate of generated tokens
      never is; `delta()` or `deriv()` of a counter across a reset can be);
    - the token rate exceeds `IMPLAUSIBLE_RATE_FACTOR` x what `replicas` replicas of the
      plan's predicted tokens/s produce;
    - a request count (running, waiting) is not a finite number, is negative, or exceeds
      `MAX_REQUESTS_PER_REPLICA` per replica.

    A KV-cache usage outside 0..1 is not refused but ignored (`_refine_capacity`): it only
    tells saturation, and an engine reporting a percentage would otherwise look saturated.

    Args:
        observation: an available observation.
        replicas: replicas whose output the rate can count: max(1, current, ready).
        planned: one replica's predicted output tokens/s.

    Returns:
        A sentence for MetricsAvailable, or None when the observation can be acted on.
    """
    tokens = observation.output_tokens_per_second
    if tokens is None:
        return observation.unavailable_reason or "no data"
    if not math.isfinite(tokens):
        return f"output tokens/s is {tokens}, not a finite number"
    if tokens < 0:
        return f"output tokens/s is {tokens:.6g}: negative, and a rate of generated tokens never is"
    limit = IMPLAUSIBLE_RATE_FACTOR * planned * replicas
    if tokens > limit:
        return (
            f"output tokens/s {tokens:.3g} is more than {IMPLAUSIBLE_RATE_FACTOR:.0f}x what "
            f"{replicas} replica(s) of {planned:.0f} tokens/s produce ({limit:.3g}): "
            "not a measurement (a rate across a counter reset, a duplicated series?)"
        )
    counts = (
        ("running requests", observation.running_requests),
        ("waiting requests", observation.waiting_requests),
    )
    most = MAX_REQUESTS_PER_REPLICA * replicas
    for what, count in counts:
        if count is None:
            continue
        if not math.isfinite(count) or count < 0:
            return f"{what} is {count:.6g}, not a count (negative or not a finite number)"
        if count > most:
            return (
                f"{what} {count:.3g} is more than {replicas} pod(s) can hold "
                f"({MAX_REQUESTS_PER_REPLICA} each): not a measurement"
            )
    return None


def decide(
    observation: Observation,
    *,
    now: float,
    current_replicas: int,
    ready_replicas: int,
    replica: ReplicaModel,
    policy: Policy,
    state: ScalerState,
) -> Decision:
    """Desired replicas for one LLMDeployment.

    Args:
        observation: the latest metrics (`Observation.unavailable(...)` when there are none).
        now: the current time in seconds (Unix time in the operator).
        current_replicas: replicas that exist (spec of the workload).
        ready_replicas: replicas serving traffic.
        replica: the plan's per-replica tokens/s and $/hour.
        policy: bounds, windows, tolerance and budget.
        state: what the previous call returned in `Decision.state`.

    Returns:
        The decision, with the state to persist.
    """
    current = max(0, current_replicas)
    affordable = affordable_replicas(policy, replica)
    planned = max(replica.output_tokens_per_second, _EPS)

    why = unreliable(observation, max(1, current, ready_replicas), planned)
    served = observation.output_tokens_per_second
    if why is not None or served is None:
        return _hold(why or "no data", now, current, policy, replica, state, affordable, planned)

    estimate, saturated_since = _refine_capacity(
        observation, served, now, current, ready_replicas, planned, state
    )
    full = estimate if estimate is not None else planned
    per_replica = full * policy.target_utilization
    demand = _demand(observation, served, per_replica, replica.request_tokens_per_second)
    since = state.observed_since if state.observed_since is not None else now
    if state.last_seen < now - MAX_TICK_GAP_S:
        since = now  # the windows count only what this autoscaler watched
    startup_s, starting_since = _startup(now, current, ready_replicas, state)
    samples = tuple((t, d) for t, d in state.demand if t >= max(since, now - TREND_WINDOW_S))
    # NOTE: a sample is kept to the milli-token: the state is JSON in an annotation.
    samples = (*samples, (now, round(min(demand, 1e15), 3)))[-MAX_TREND_SAMPLES:]
    horizon = (startup_s if startup_s is not None else replica.startup_s) + policy.scale_up_window_s
    ahead = _project(samples, horizon) if policy.predictive else demand
    needed = _recommend(
        max(demand, ahead), per_replica, full, current, policy.tolerance, policy.spare_replicas
    )

    active = demand > 0
    last_active = now if active or state.last_active_time is None else state.last_active_time
    last_saturated = now if _saturated(observation) else state.last_saturated_time
    # NOTE: while the rate's window still covers a queue, the rate says what the replicas
    # could serve, not what was asked of them (right after a scale-up it still averages
    # the minute when fewer replicas served): such a recommendation never counts for less
    # than the replicas there are, so scale-down waits for the rate to show the demand.
    capped = last_saturated is not None and now - last_saturated < RATE_WINDOW_S
    horizon = now - max(policy.scale_up_window_s, policy.scale_down_window_s)
    recs = tuple((t, n) for t, n in state.recommendations if horizon <= t < now)
    recs = (*recs, (now, max(needed, current) if capped else needed))[-MAX_RECOMMENDATIONS:]

    # NOTE: requests waiting in this and the previous sample are demand already unserved,
    # not noise: scaling up for them does not wait for the up window (one sample's queue
    # may be a blip and does).
    queued = _saturated(observation) and state.saturated_since is not None
    up_window = 0.0 if queued else policy.scale_up_window_s
    target, reason = _stabilize(
        needed, current, now, since, recs, replace(policy, scale_up_window_s=up_window), state
    )

    # Scale to zero has its own timer, the idle period, and bypasses the windows.
    idle_after = (
        policy.scale_to_zero_after_s
        if policy.scale_to_zero_after_s is not None
        else policy.scale_down_window_s
    )
    idle = not active and (current == 0 or now - last_active >= idle_after)
    zero_ok = policy.min_replicas == 0 and idle
    floor = 0 if zero_ok else max(1, policy.min_replicas)
    if zero_ok:
        target, reason = 0, SCALE_TO_ZERO

    wanted = min(max(target, floor), policy.max_replicas)
    demand_wants = min(max(needed, floor), policy.max_replicas)
    budget_limited = affordable is not None and demand_wants > affordable
    desired = wanted if affordable is None else min(wanted, affordable)
    reason = _reason(reason, target, wanted, desired, current, budget_limited, policy)
    message = _message(reason, demand, per_replica, needed, desired, current, policy)
    if budget_limited and affordable is not None:
        message = (
            f"demand {demand:.0f} tokens/s needs {demand_wants} replicas of "
            f"{per_replica:.0f} tokens/s; budget ${policy.max_cost_per_hour:.2f}/h buys "
            f"{affordable} at ${replica.cost_per_hour:.2f}/h "
            f"(capacity {affordable * per_replica:.0f} tokens/s); {current} -> {desired} replicas"
        )
    new_state = ScalerState(
        recommendations=recs,
        observed_since=since,
        last_scale_time=now if desired != current else state.last_scale_time,
        last_active_time=last_active,
        capacity_estimate=estimate,
        saturated_since=saturated_since,
        last_saturated_time=last_saturated,
        demand=samples,
        startup_s=startup_s,
        starting_since=now if desired > current and starting_since is None else starting_since,
    )
    return Decision(
        replicas=desired,
        reason=reason,
        message=message,
        metrics_available=True,
        budget_limited=budget_limited,
        demand_tokens_per_second=demand,
        capacity_tokens_per_second=per_replica,
        needed_replicas=needed,
        affordable_replicas=affordable,
        state=new_state,
    )


def _hold(
    why: str,
    now: float,
    current: int,
    policy: Policy,
    replica: ReplicaModel,
    state: ScalerState,
    affordable: int | None,
    planned: float,
) -> Decision:
    """No data (or none to trust): keep replicas; only the spec's bounds and the budget
    still apply."""
    desired = min(max(current, policy.min_replicas), policy.max_replicas)
    if affordable is not None:
        desired = min(desired, affordable)
    message = f"metrics unavailable ({why}); keeping {desired} replicas"
    if desired != current:
        message = f"metrics unavailable ({why}); {current} -> {desired} replicas to meet the bounds"
    estimate = state.capacity_estimate
    # NOTE: the gap restarts both windows (observed_since = None), a run of queued samples
    # and the idle timer (last_active_time = now): what happened unseen is unknown.
    new_state = replace(
        state,
        observed_since=None,
        saturated_since=None,
        last_active_time=now,
        last_scale_time=now if desired != current else state.last_scale_time,
    )
    return Decision(
        replicas=desired,
        reason=METRICS_UNAVAILABLE,
        message=message,
        metrics_available=False,
        budget_limited=False,
        demand_tokens_per_second=None,
        capacity_tokens_per_second=(estimate or planned) * policy.target_utilization,
        needed_replicas=None,
        affordable_replicas=affordable,
        state=new_state,
    )


def _refine_capacity(
    observation: Observation,
    served: float,
    now: float,
    current: int,
    ready: int,
    planned: float,
    state: ScalerState,
) -> tuple[float | None, float | None]:
    """The measured tokens/s per replica (None while the prediction stands), and when the
    current run of saturated observations began.

    Saturated means requests wait in the engines' queues or the KV cache is nearly full:
    then the served rate per ready replica is what a replica can do (a moving average).
    Without saturation a rate above the prediction (or the estimate) proves it low. The
    token rate is averaged over a minute while the queue gauges are instant, so after a
    load step the queue fills long before the rate shows what the replicas serve: a
    saturated sample counts only once saturation has lasted `SETTLE_S`, and nothing is
    measured while replicas start or stop or within `SETTLE_S` of a scaling action.
    """
    estimate = state.capacity_estimate
    saturated = _saturated(observation)
    since = (
        (state.saturated_since if state.saturated_since is not None else now) if saturated else None
    )
    settling = state.last_scale_time is not None and now - state.last_scale_time < SETTLE_S
    if ready <= 0 or served <= 0 or ready != current or settling:
        return estimate, since
    per_ready = served / ready
    if saturated:
        if since is not None and now - since < SETTLE_S:
            return estimate, since
        estimate = per_ready if estimate is None else 0.5 * estimate + 0.5 * per_ready
    elif per_ready > (planned if estimate is None else estimate):
        estimate = per_ready
    if estimate is None:
        return None, since
    low, high = CAPACITY_BOUNDS
    return min(max(estimate, low * planned), high * planned), since


def _saturated(observation: Observation) -> bool:
    """Requests wait in the engines' queues, or the KV cache is nearly full."""
    waiting = observation.waiting_requests or 0.0
    kv = observation.kv_cache_usage
    kv = kv if kv is not None and 0.0 <= kv <= 1.0 else None  # not a fraction: unknown
    return waiting > 0 or (kv is not None and kv >= SATURATED_KV_USAGE)


def _demand(
    observation: Observation, served: float, per_replica: float, stream: float | None
) -> float:
    """Demanded output tokens/s: what is served plus what the queue asks for.

    Each waiting request wants what a running one gets (served / running), so the queue
    adds served x waiting / running. With nothing running (every replica gone or still
    starting) each waiting request wants one request's planned stream (`stream` tokens/s);
    without either the demand is taken as double what is served (Kubernetes HPA's default
    scale-up step is 100%). A queue means at least one replica's worth of demand.
    """
    waiting = observation.waiting_requests or 0.0
    if waiting <= 0:
        return served
    running = observation.running_requests
    if running is not None and running > 0:
        # NOTE: fewer than one running request is a sampling artefact; count it as one.
        queued = served * (1.0 + waiting / max(running, 1.0))
    elif stream is not None:
        queued = served + waiting * stream
    else:
        queued = 2.0 * served
    return max(queued, per_replica)


def _recommend(
    demand: float, per_replica: float, full: float, current: int, tolerance: float, spare: int
) -> int:
    """ceil(demand / capacity), or the current count when within the tolerance of it; and
    at least `spare` replicas more than the demand needs at full speed (`full` tokens/s)."""
    if demand <= 0:
        return 0
    if current > 0 and abs(demand / (current * per_replica) - 1.0) <= tolerance:
        needed = current
    else:
        needed = max(1, math.ceil(min(demand / per_replica, MAX_RECOMMENDED) - _EPS))
    if spare > 0:
        needed = max(needed, math.ceil(min(demand / full, MAX_RECOMMENDED) - _EPS) + spare)
    return min(needed, MAX_RECOMMENDED)


def _startup(
    now: float, current: int, ready: int, state: ScalerState
) -> tuple[float | None, float | None]:
    """The measured start-up time (moving average) and when replicas began starting.

    Replicas are starting while fewer are ready than exist; when all are ready again, the
    time since that began is one start-up sample (the slowest of the replicas started
    together, which is what scaling ahead must wait for). A sample beyond `MAX_STARTUP_S`
    is a stuck rollout or a crash loop, not a start-up, and is not taken.
    """
    estimate, since = state.startup_s, state.starting_since
    if current > ready:
        return estimate, since if since is not None else now
    if since is not None and 0 < now - since <= MAX_STARTUP_S:
        sample = now - since
        estimate = sample if estimate is None else 0.5 * estimate + 0.5 * sample
    return estimate, None


def _project(samples: tuple[tuple[float, float], ...], horizon_s: float) -> float:
    """The demand `horizon_s` after the last sample, on the least-squares trend of the
    samples: only a rising trend counts (scaling ahead is for scaling up; scaling down
    waits for the demand itself), and the projection is at most twice the last demand."""
    last = samples[-1][1]
    if len(samples) < MIN_TREND_SAMPLES:
        return last
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_d = sum(d for _, d in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var <= _EPS:
        return last
    slope = sum((t - mean_t) * (d - mean_d) for t, d in samples) / var
    # NOTE: noise alone gives a slope too; only what the trend's lower confidence bound
    # (slope - 2 standard errors) says is rising is projected.
    residual = sum((d - mean_d - slope * (t - mean_t)) ** 2 for t, d in samples)
    stderr = math.sqrt(residual / (n - 2) / var)
    rising = max(0.0, slope - TREND_CONFIDENCE * stderr)
    return min(last + rising * horizon_s, 2.0 * last)


def _stabilize(
    needed: int,
    current: int,
    now: float,
    since: float,
    recs: tuple[tuple[float, int], ...],
    policy: Policy,
    state: ScalerState,
) -> tuple[int, str]:
    """Apply the up and down windows to the latest recommendation."""
    if needed > current:
        if current == 0:
            return needed, SCALE_FROM_ZERO
        if now - since < policy.scale_up_window_s:
            return current, STABILIZING_UP
        window = [n for t, n in recs if t >= now - policy.scale_up_window_s]
        target = max(current, min(window))
        return target, (SCALE_UP if target > current else STABILIZING_UP)
    if needed < current:
        cooled = (
            state.last_scale_time is None
            or now - state.last_scale_time >= policy.scale_down_window_s
        )
        if now - since < policy.scale_down_window_s or not cooled:
            return current, STABILIZING_DOWN
        window = [n for t, n in recs if t >= now - policy.scale_down_window_s]
        target = min(current, max(window))
        return target, (SCALE_DOWN if target < current else STABILIZING_DOWN)
    return current, STEADY


def _reason(
    stabilized: str,
    target: int,
    wanted: int,
    desired: int,
    current: int,
    budget_limited: bool,
    policy: Policy,
) -> str:
    """The reason for the final count, after the bounds and the budget."""
    if budget_limited or desired < wanted:
        return BUDGET_LIMITED
    if target > policy.max_replicas:
        return MAX_REPLICAS
    if stabilized == SCALE_TO_ZERO:
        return SCALE_TO_ZERO if desired < current else STEADY
    if desired != current and target == current:
        return BOUNDS
    if desired > current:
        return SCALE_FROM_ZERO if current == 0 else SCALE_UP
    if desired < current:
        return SCALE_DOWN
    return STEADY if stabilized in (SCALE_UP, SCALE_DOWN, SCALE_FROM_ZERO) else stabilized


def _message(
    reason: str,
    demand: float,
    per_replica: float,
    needed: int,
    desired: int,
    current: int,
    policy: Policy,
) -> str:
    """One sentence on the decision."""
    load = f"demand {demand:.0f} tokens/s at {per_replica:.0f} tokens/s per replica"
    change = f"{current} -> {desired} replicas" if desired != current else f"{desired} replicas"
    if reason == SCALE_TO_ZERO:
        return f"no traffic for the idle period; {change}"
    if reason == STABILIZING_UP:
        return (
            f"{load} wants {needed} replicas; keeping {current} until it persists "
            f"{policy.scale_up_window_s:.0f}s"
        )
    if reason == STABILIZING_DOWN:
        return (
            f"{load} wants {needed} replicas; keeping {current} until it persists "
            f"{policy.scale_down_window_s:.0f}s"
        )
    if reason == MAX_REPLICAS:
        return f"{load} wants {needed} replicas; maxReplicas {policy.max_replicas}: {change}"
    if reason == BOUNDS:
        bounds = f"minReplicas {policy.min_replicas}, maxReplicas {policy.max_replicas}"
        return f"{load}: {change} ({bounds})"
    return f"{load}: {change}"


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _opt_positive(value: Any) -> float | None:
    out = _opt_float(value)
    return out if out is not None and out > 0 else None
