"""Planner speed: whole-process `llmctl plan` wall time, in-process `plan()` time, peak RSS.

`python bench/plan_speed.py` runs `llmctl plan -f examples/<each>.yaml` as a child process
(one warm-up, then `--runs` timed runs each), and `llmctl --help` as the floor of interpreter
start-up and imports; it reads each child's peak RSS from `os.wait4`. It then times
`llm_operator.planner.search.plan()` in this process on the same specs, catalog loaded once,
for about `--seconds` per example. It prints a markdown section for docs/benchmarks.md.
Takes under a minute on 2 cores with the defaults. Needs a POSIX system (posix_spawn, wait4).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llm_operator.catalog import load_catalog
from llm_operator.cli import load_llmdeployment
from llm_operator.planner.search import plan

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@dataclass(frozen=True)
class Sample:
    """Timings of one measured command or call.

    Attributes:
        label: what was measured (an example file name, or a command).
        seconds: one wall time per run.
        max_rss_kib: the largest peak resident set size of the runs (child processes only).
    """

    label: str
    seconds: list[float]
    max_rss_kib: int | None = None


def llmctl_path() -> Path:
    """The `llmctl` console script next to the running interpreter (the venv's)."""
    path = Path(sys.executable).parent / "llmctl"
    if not path.exists():
        raise SystemExit(f"{path} not found: install the package (pip install -e .) first")
    return path


def run_once(argv: list[str]) -> tuple[float, int]:
    """Run one child process with output discarded.

    Args:
        argv: the command; argv[0] is an executable path.

    Returns:
        (wall seconds from spawn to reaped, the child's peak RSS in KiB).

    Raises:
        RuntimeError: when the child exits non-zero.
    """
    devnull = [
        (os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0)
        for fd in (sys.stdout.fileno(), sys.stderr.fileno())
    ]
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=devnull)
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {code}; run it by hand to see why")
    # NOTE: Linux reports ru_maxrss in KiB, macOS in bytes.
    rss_kib = usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss
    return elapsed, rss_kib


def time_process(label: str, argv: list[str], runs: int) -> Sample:
    """One warm-up run (page cache, .pyc files), then `runs` timed runs.

    Args:
        label: the row name.
        argv: the command.
        runs: how many timed runs.

    Returns:
        The wall times and the largest peak RSS of the timed runs.
    """
    run_once(argv)
    results = [run_once(argv) for _ in range(runs)]
    return Sample(label, [s for s, _ in results], max(rss for _, rss in results))


def time_in_process(path: Path, seconds: float) -> Sample:
    """Time `plan(spec, catalog)` repeatedly for about `seconds` after one warm-up call.

    Args:
        path: an LLMDeployment YAML file.
        seconds: the time budget for this example.

    Returns:
        One wall time per call (at least 20 calls).
    """
    catalog = load_catalog()
    spec = load_llmdeployment(path).spec
    plan(spec, catalog)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 20 or time.perf_counter() < deadline:
        start = time.perf_counter()
        plan(spec, catalog)
        times.append(time.perf_counter() - start)
    return Sample(path.name, times)


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile, linear interpolation between closest ranks.

    Args:
        values: at least two numbers.
        q: 1 to 99.

    Returns:
        The percentile.
    """
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else what `platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    """CPUs this process may run on (what `nproc` prints)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def _row(sample: Sample) -> str:
    s = sample.seconds
    rss = f" | {sample.max_rss_kib / 1024:.1f}" if sample.max_rss_kib is not None else ""
    return (
        f"| {sample.label} | {len(s)} | {_ms(statistics.median(s))} | {_ms(percentile(s, 95))}"
        f" | {_ms(min(s))}{rss} |"
    )


def report(
    processes: list[Sample], floor: Sample, calls: list[Sample], runs: int, load: str
) -> str:
    """The markdown section for docs/benchmarks.md.

    Args:
        processes: one `llmctl plan -f` sample per example.
        floor: the `llmctl --help` sample (start-up and imports, no planning).
        calls: one in-process `plan()` sample per example.
        runs: timed runs per command.
        load: the 1/5/15-minute load averages when the run started.

    Returns:
        Markdown text.
    """
    all_runs = Sample(
        "all examples",
        [t for p in processes for t in p.seconds],
        max(p.max_rss_kib or 0 for p in processes),
    )
    lines = [
        "## Planner speed",
        "",
        f"`python bench/plan_speed.py --runs {runs}` on {usable_cpus()} CPUs ({cpu_model()}),"
        f" Python {platform.python_version()}, {platform.system()} {platform.release()};"
        f" load average {load} when it started.",
        "",
        f"Whole process, `llmctl plan -f examples/<file>`: one warm-up, then {runs} runs each,"
        " output discarded; peak RSS is the child's `ru_maxrss` (`os.wait4`).",
        "",
        "| command | runs | p50 ms | p95 ms | min ms | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
        *(_row(p) for p in processes),
        _row(all_runs),
        _row(floor),
        "",
        "In process, `planner.search.plan(spec, catalog)` with the catalog already loaded:",
        "",
        "| example | calls | p50 ms | p95 ms | min ms |",
        "|---|---:|---:|---:|---:|",
        *(_row(c) for c in calls),
        "",
    ]
    # NOTE: minima, not medians: on a shared 2-core machine the median of the floor can
    # exceed the median of the full command; the fastest runs show the fixed cost.
    floor_min, plan_min = min(floor.seconds), min(all_runs.seconds)
    rest = (
        f"the other {_ms(plan_min - floor_min)} ms load the catalog, validate the spec,"
        " plan and print"
        if plan_min > floor_min
        else "loading the catalog, validating the spec, planning and printing are lost in the noise"
    )
    lines.append(
        f"Fastest runs: `llmctl --help` (interpreter start-up and imports, no planning)"
        f" {_ms(floor_min)} ms, {floor_min / plan_min:.0%} of the fastest `llmctl plan`;"
        f" {rest}."
    )
    return "\n".join(lines)


def main() -> int:
    """Measure and print the markdown section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15, help="timed llmctl runs per example")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="in-process time budget per example"
    )
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    llmctl = str(llmctl_path())
    examples = sorted(EXAMPLES.glob("*.yaml"))
    processes = [time_process(p.name, [llmctl, "plan", "-f", str(p)], args.runs) for p in examples]
    floor = time_process("`llmctl --help`", [llmctl, "--help"], args.runs)
    calls = [time_in_process(p, args.seconds) for p in examples]
    print(report(processes, floor, calls, args.runs, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
