"""Replay a bursty diurnal load through the autoscaler's `decide()` and two baselines.

`python bench/autoscale_replay.py` builds a seeded one-day trace (hours compressed, see
`--hour-seconds`), replays it in 15 s steps against a simulated serving fleet and prints a
Markdown table per scenario: GPU-hours, unserved demand, scaling actions and budget
violations for

* `decide()` (llm_operator.autoscaler.decide), fed what the engines would report;
* static peak provisioning: the fewest replicas that serve the trace's peak, all day;
* a KubeAI-like policy: desired = ceil(moving average of in-flight requests / target
  requests per replica), scale-up at once, scale-down after `scaleDownDelaySeconds` of
  consecutive lower recommendations (KubeAI's `targetRequests`, `scaleDownDelaySeconds`
  and `timeWindow` settings), which knows nothing of the budget.

The fleet model is the e2e simulator's (e2e/sim/engine_sim.py): a ready replica serves up
to `--capacity` output tokens/s, a request streams 40 tokens/s, demand above capacity
waits; the token rate is averaged over the last minute (PromQL `rate(...[1m])`), a new
replica is ready `--startup` seconds after it is created, or `download_s` later when its
node lacks the weights (30% of starts), spot nodes are reclaimed (0.25 an hour, the
replica restarts elsewhere without cached weights), Prometheus is down twice for ten
minutes. `--plot` writes the figure used in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llm_operator.autoscaler.decide import (
    RATE_WINDOW_S,
    Observation,
    Policy,
    ReplicaModel,
    ScalerState,
    decide,
)

ROOT = Path(__file__).resolve().parent.parent
STEP_S = 15.0
STREAM_TPS = 40.0  # tokens/s one request streams (engine_sim.py's default)


@dataclass(frozen=True)
class Config:
    """One replay: trace, fleet and policy parameters."""

    seed: int = 7
    hour_seconds: float = 600.0  # one trace hour lasts this long in the replay
    peak_tps: float = 6000.0  # diurnal peak of output tokens/s, before bursts and noise
    trough_fraction: float = 0.08
    bursts_per_hour: float = 0.5
    capacity: float = 1000.0  # real output tokens/s of one replica
    predicted: float = 1100.0  # the planner's prediction (10% optimistic)
    cost_per_hour: float = 4.0  # USD per replica-hour (one GPU per replica)
    gpus_per_replica: int = 1
    startup_s: float = 90.0  # a replica whose node has the weights cached
    # NOTE: a replica on a node without the weights downloads them first (the model-cache
    # design's cold start: 140 GB at ~1 GB/s for a 70B FP16 checkpoint); a share of the
    # starts find them missing, and a preempted spot replica always does (a new node).
    download_s: float = 180.0
    uncached_share: float = 0.3
    preemptions_per_hour: float = 0.25  # spot reclaims, one ready replica each
    outages: tuple[tuple[float, float], ...] = ((7.2, 600.0), (19.5, 600.0))  # (hour, s)
    min_replicas: int = 1
    max_replicas: int = 16
    budget: float = 48.0  # USD/hour: 12 replicas
    # decide()'s settings: the spec's defaults (spec.scaling)
    target_utilization: float = 0.6
    scale_up_window_s: float = 30.0
    scale_down_window_s: float = 300.0
    spare_replicas: int = 0
    predictive: bool = True
    kubeai_window_s: float = 600.0
    kubeai_scale_down_delay_s: float = 30.0


def make_trace(cfg: Config) -> list[float]:
    """Demanded output tokens/s per step: a diurnal curve, bursts and noise (seeded)."""
    rng = random.Random(cfg.seed)
    steps = round(24 * cfg.hour_seconds / STEP_S)
    bursts: list[tuple[float, float, float]] = []  # (start s, length s, factor)
    t = 0.0
    total = 24 * cfg.hour_seconds
    while True:
        t += rng.expovariate(cfg.bursts_per_hour / cfg.hour_seconds)
        if t >= total:
            break
        bursts.append((t, rng.uniform(120.0, 480.0), rng.uniform(1.3, 1.8)))
    out = []
    for i in range(steps):
        now = i * STEP_S
        hour = now / cfg.hour_seconds
        day = (1 - math.cos(2 * math.pi * (hour - 4.0) / 24.0)) / 2  # 0 at 04:00, 1 at 16:00
        base = cfg.peak_tps * (cfg.trough_fraction + (1 - cfg.trough_fraction) * day**1.5)
        factor = max([f for s, n, f in bursts if s <= now < s + n], default=1.0)
        out.append(max(0.0, base * factor * rng.gauss(1.0, 0.08)))
    return out


def make_preemptions(cfg: Config) -> list[float]:
    """Times (s) at which a spot node is reclaimed (seeded, the same for every policy)."""
    rng = random.Random(cfg.seed * 7919 + 1)
    out, t = [], 0.0
    while cfg.preemptions_per_hour > 0:
        t += rng.expovariate(cfg.preemptions_per_hour / cfg.hour_seconds)
        if t >= 24 * cfg.hour_seconds:
            return out
        out.append(t)
    return out


@dataclass
class Fleet:
    """Replicas with their ready times; tokens served; the metrics the engines export."""

    cfg: Config
    ready_at: list[float] = field(default_factory=list)
    served_window: deque[float] = field(default_factory=deque)
    rng: random.Random = field(default_factory=random.Random)

    def ready(self, now: float) -> int:
        return sum(1 for t in self.ready_at if t <= now)

    def start_time(self, cached: bool | None = None) -> float:
        """Seconds until a new replica serves: cached weights or a download first."""
        if cached is None:
            cached = self.rng.random() >= self.cfg.uncached_share
        return self.cfg.startup_s + (0.0 if cached else self.cfg.download_s)

    def preempt(self, now: float) -> bool:
        """A spot node is reclaimed: one ready replica's pod is recreated elsewhere by its
        controller (the replica count does not change) and starts without cached weights."""
        ready = [i for i, t in enumerate(self.ready_at) if t <= now]
        if not ready:
            return False
        self.ready_at[self.rng.choice(ready)] = now + self.start_time(cached=False)
        return True

    def scale(self, desired: int, now: float) -> None:
        while len(self.ready_at) < desired:
            self.ready_at.append(now + self.start_time())
        # Remove the newest (least ready) replicas first.
        self.ready_at.sort()
        del self.ready_at[desired:]

    def serve(self, demand: float, now: float) -> tuple[float, Observation]:
        ready = self.ready(now)
        served = min(demand, ready * self.cfg.capacity)
        self.served_window.append(served)
        while len(self.served_window) > round(RATE_WINDOW_S / STEP_S):
            self.served_window.popleft()
        rate = sum(self.served_window) / len(self.served_window)
        slots = self.cfg.capacity / STREAM_TPS
        running = served / STREAM_TPS
        obs = Observation(
            output_tokens_per_second=rate,
            running_requests=running,
            waiting_requests=(demand - served) / STREAM_TPS,
            kv_cache_usage=min(1.0, running / (ready * slots)) if ready else None,
        )
        return served, obs


@dataclass
class Result:
    """What one policy did over the trace."""

    name: str
    replicas: list[int]
    capacity: list[float]
    gpu_hours: float
    unserved_fraction: float
    actions: int
    budget_violations: int
    budget_limited_steps: int = 0


Scaler = Callable[[float, int, int, Observation], int]


def replay(cfg: Config, trace: list[float], name: str, scaler: Scaler, start: int) -> Result:
    """Run one policy over the trace; `scaler(now, current, ready, obs)` returns replicas."""
    fleet = Fleet(cfg, rng=random.Random(cfg.seed))
    fleet.ready_at = [0.0] * start  # ready at t=0
    preemptions = deque(make_preemptions(cfg))
    replicas, capacity = [], []
    unserved = demanded = gpu_s = 0.0
    actions = violations = 0
    for i, demand in enumerate(trace):
        now = i * STEP_S
        while preemptions and preemptions[0] <= now:
            fleet.preempt(preemptions.popleft())
        served, obs = fleet.serve(demand, now)
        unserved += (demand - served) * STEP_S
        demanded += demand * STEP_S
        if _in_outage(cfg, now):
            obs = Observation.unavailable("replayed outage")
        current = len(fleet.ready_at)
        desired = scaler(now, current, fleet.ready(now), obs)
        if desired != current:
            actions += 1
            fleet.scale(desired, now)
        n = len(fleet.ready_at)
        violations += n * cfg.cost_per_hour > cfg.budget + 1e-9
        gpu_s += n * cfg.gpus_per_replica * STEP_S
        replicas.append(n)
        capacity.append(fleet.ready(now) * cfg.capacity)
    return Result(
        name=name,
        replicas=replicas,
        capacity=capacity,
        gpu_hours=gpu_s / 3600.0,
        unserved_fraction=unserved / demanded if demanded else 0.0,
        actions=actions,
        budget_violations=violations,
    )


def _in_outage(cfg: Config, now: float) -> bool:
    return any(
        h * cfg.hour_seconds <= now < h * cfg.hour_seconds + length for h, length in cfg.outages
    )


def run_decide(cfg: Config, trace: list[float]) -> Result:
    """The operator's autoscaler, state persisted as JSON between calls like the loop does."""
    policy = Policy(
        min_replicas=cfg.min_replicas,
        max_replicas=cfg.max_replicas,
        target_utilization=cfg.target_utilization,
        scale_up_window_s=cfg.scale_up_window_s,
        scale_down_window_s=cfg.scale_down_window_s,
        max_cost_per_hour=cfg.budget,
        spare_replicas=cfg.spare_replicas,
        predictive=cfg.predictive,
    )
    # NOTE: the planner's per-request stream is as optimistic as its replica prediction.
    stream = STREAM_TPS * cfg.predicted / cfg.capacity
    model = ReplicaModel(cfg.predicted, cfg.cost_per_hour, request_tokens_per_second=stream)
    annotation = ScalerState().to_json()
    limited = 0

    def scaler(now: float, current: int, ready: int, obs: Observation) -> int:
        nonlocal annotation, limited
        decision = decide(
            obs,
            now=now,
            current_replicas=current,
            ready_replicas=ready,
            replica=model,
            policy=policy,
            state=ScalerState.from_json(annotation),
        )
        annotation = decision.state.to_json()
        limited += decision.budget_limited
        return decision.replicas

    start = math.ceil(trace[0] / (cfg.predicted * cfg.target_utilization))
    result = replay(cfg, trace, "decide()", scaler, max(start, cfg.min_replicas))
    result.budget_limited_steps = limited
    return result


def run_static(cfg: Config, trace: list[float]) -> Result:
    """The fewest replicas that serve the whole trace (hindsight), never changed."""
    peak = math.ceil(max(trace) / cfg.capacity)
    return replay(cfg, trace, f"static peak ({peak})", lambda *_: peak, peak)


def run_kubeai(cfg: Config, trace: list[float], window_s: float) -> Result:
    """KubeAI-like: moving average of in-flight requests over targetRequests per replica."""
    target_requests = cfg.predicted * cfg.target_utilization / STREAM_TPS
    history: deque[float] = deque(maxlen=max(1, round(window_s / STEP_S)))
    lower_for = 0.0

    def scaler(now: float, current: int, ready: int, obs: Observation) -> int:
        nonlocal lower_for
        if not obs.available:
            return current  # the proxy's own counts; here: keep, like decide()
        history.append((obs.running_requests or 0.0) + (obs.waiting_requests or 0.0))
        avg = sum(history) / len(history)
        want = min(max(math.ceil(avg / target_requests), cfg.min_replicas), cfg.max_replicas)
        if want > current:
            lower_for = 0.0
            return want
        if want < current:
            lower_for += STEP_S
            if lower_for >= cfg.kubeai_scale_down_delay_s:
                lower_for = 0.0
                return want
            return current
        lower_for = 0.0
        return current

    start = math.ceil(trace[0] / (cfg.predicted * cfg.target_utilization))
    return replay(cfg, trace, f"KubeAI-like ({window_s / 60:.0f} min avg)", scaler, max(start, 1))


def table(results: list[Result], static: Result) -> str:
    """Markdown rows: GPU-hours (and saving against static peak), unserved, actions."""
    lines = [
        "| policy | GPU-hours | saved vs static peak | unserved demand | scaling actions "
        "| budget violations (steps) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        saving = "-" if r is static else f"{1 - r.gpu_hours / static.gpu_hours:.1%}"
        lines.append(
            f"| {r.name} | {r.gpu_hours:.1f} | {saving} | {r.unserved_fraction:.2%} "
            f"| {r.actions} | {r.budget_violations} |"
        )
    return "\n".join(lines)


def plot(cfg: Config, trace: list[float], results: list[Result], path: Path) -> None:
    """Demand against ready capacity, and replicas, per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [i * STEP_S / cfg.hour_seconds for i in range(len(trace))]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    top.plot(hours, trace, color="black", lw=0.8, label="demand (output tokens/s)")
    for r in results:
        top.plot(hours, r.capacity, lw=1.0, label=f"ready capacity: {r.name}")
        bottom.step(hours, r.replicas, where="post", lw=1.0, label=r.name)
    budget_replicas = math.floor(cfg.budget / cfg.cost_per_hour)
    bottom.axhline(budget_replicas, color="red", ls="--", lw=0.8, label="budget")
    for h, length in cfg.outages:
        for ax in (top, bottom):
            ax.axvspan(h, h + length / cfg.hour_seconds, color="grey", alpha=0.2)
    top.set_ylabel("tokens/s")
    bottom.set_ylabel("replicas")
    bottom.set_xlabel(f"trace hour (1 h replayed in {cfg.hour_seconds:.0f} s; grey: no metrics)")
    top.legend(fontsize=7, loc="upper left")
    bottom.legend(fontsize=7, loc="upper left")
    top.set_title(f"Autoscaler replay, seed {cfg.seed}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--hour-seconds", type=float, default=Config.hour_seconds)
    parser.add_argument("--startup", type=float, default=Config.startup_s)
    parser.add_argument("--plot", type=Path, default=None, help="write the figure here")
    parser.add_argument(
        "--seeds", type=int, default=10, help="also summarise decide() over seeds 1..N"
    )
    args = parser.parse_args(argv)
    base = Config(seed=args.seed, hour_seconds=args.hour_seconds, startup_s=args.startup)
    scenarios = [
        ("budget $48/h (12 replicas)", base),
        ("tight budget $28/h (7 replicas)", Config(**{**vars(base), "budget": 28.0})),
    ]
    for title, cfg in scenarios:
        trace = make_trace(cfg)
        static = run_static(cfg, trace)
        ours = run_decide(cfg, trace)
        results = [
            ours,
            static,
            run_kubeai(cfg, trace, cfg.kubeai_window_s),
            run_kubeai(cfg, trace, 60.0),
        ]
        print(f"### {title}, seed {cfg.seed}\n")
        print(table(results, static))
        print(
            f"\ndecide() reported BudgetLimited in {ours.budget_limited_steps} of "
            f"{len(trace)} steps.\n"
        )
        if args.plot is not None and cfg is base:
            plot(cfg, trace, results, args.plot)
    if args.seeds:
        print(seed_summary(base, args.seeds))
        print()
        print(policy_sweep(base, args.seeds))
    return 0


SWEEP: tuple[tuple[str, dict[str, object]], ...] = (
    ("spec defaults", {}),
    ("spareReplicas 1", {"spare_replicas": 1}),
    ("predictive false", {"predictive": False}),
    ("targetUtilization 0.7", {"target_utilization": 0.7}),
    ("targetUtilization 0.7, spareReplicas 1", {"target_utilization": 0.7, "spare_replicas": 1}),
    ("scaleDownStabilizationSeconds 120", {"scale_down_window_s": 120.0}),
    ("scaleDownStabilizationSeconds 120, spareReplicas 1",
     {"scale_down_window_s": 120.0, "spare_replicas": 1}),
    ("targetUtilization 0.8, predictive false (the old defaults)",
     {"target_utilization": 0.8, "predictive": False}),
)  # fmt: skip


def policy_sweep(base: Config, seeds: int) -> str:
    """decide() over seeds 1..N for spec settings that trade GPU-hours for headroom, with
    the KubeAI-like baseline (10 min) at the same target as the reference for actions."""
    lines = [
        f"### decide() settings over seeds 1..{seeds} (budget ${base.budget:.0f}/h)\n",
        "| settings (spec.scaling) | saved vs static: mean / worst seed | unserved: mean / "
        "worst seed | scaling actions (KubeAI-like) | budget violations |",
        "|---|---:|---:|---:|---:|",
    ]
    for title, overrides in SWEEP:
        saved, unserved, actions, kubeai_actions, violations = [], [], 0, 0, 0
        for seed in range(1, seeds + 1):
            cfg = Config(**{**vars(base), "seed": seed, **overrides})  # type: ignore[arg-type]
            trace = make_trace(cfg)
            static = run_static(cfg, trace)
            ours = run_decide(cfg, trace)
            saved.append(1 - ours.gpu_hours / static.gpu_hours)
            unserved.append(ours.unserved_fraction)
            actions += ours.actions
            kubeai_actions += run_kubeai(cfg, trace, cfg.kubeai_window_s).actions
            violations += ours.budget_violations
        lines.append(
            f"| {title} | {statistics.fmean(saved):.1%} / {min(saved):.1%} "
            f"| {statistics.fmean(unserved):.2%} / {max(unserved):.2%} "
            f"| {actions} ({kubeai_actions}) | {violations} |"
        )
    return "\n".join(lines)


def seed_summary(base: Config, seeds: int) -> str:
    """decide() against static peak and KubeAI-like (10 min) over several traces."""
    lines = [
        f"### decide() over seeds 1..{seeds} (budget ${base.budget:.0f}/h)\n",
        "| seed | static peak | saved vs static | unserved | actions | budget violations "
        "| KubeAI-like 10 min: saved / unserved |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for seed in range(1, seeds + 1):
        cfg = Config(**{**vars(base), "seed": seed})
        trace = make_trace(cfg)
        static = run_static(cfg, trace)
        ours = run_decide(cfg, trace)
        kubeai = run_kubeai(cfg, trace, cfg.kubeai_window_s)
        lines.append(
            f"| {seed} | {static.replicas[0]} | {1 - ours.gpu_hours / static.gpu_hours:.1%} "
            f"| {ours.unserved_fraction:.2%} | {ours.actions} | {ours.budget_violations} "
            f"| {1 - kubeai.gpu_hours / static.gpu_hours:.1%} / "
            f"{kubeai.unserved_fraction:.2%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
