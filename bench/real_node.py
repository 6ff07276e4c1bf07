"""Measured vs predicted: SmolLM2 served by the operator on the e2e cluster's real node.

`python bench/real_node.py` measures a RUNNING LLMDeployment on the real node (default
`demo/smollm2`, which `make demo` leaves serving; `--namespace/--name` for another, e.g.
one of e2e/tests/test_real_engine.py): closed-loop clients, each sending one streamed
OpenAI chat completion after another through the rendered Service's ClusterIP, with a
prompt of about the workload's inputTokens and exactly its outputTokens (`ignore_eos`).
Per concurrency (default 1 and the plan's batch, `status.plan.maxConcurrentSequences`)
it reports TTFT (to the first streamed token), time per output token after it, and the
replica's output tokens/s (all tokens / wall time), next to `llmctl estimate` for the
same model file, layout and load, and the error (predicted / measured - 1).

It prints the commands it ran and a markdown table for docs/benchmarks.md; `--json`
prints the numbers instead. Needs the local cluster up (`make demo`, or a test's
deployment) and runs for about 1-3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "e2e")]

from kubernetes import client, config  # noqa: E402

from realnode import CPU_CLASS, pins, post, service_url, timed_stream  # noqa: E402

GROUP, VERSION, PLURAL = "serving.llm-operator.io", "v1alpha1", "llmdeployments"
# Repeated to the workload's inputTokens (calibrated against the server's own count).
PROMPT_UNIT = "Tell me about the history of the river and the towns along its banks. "
_serial = itertools.count()


@dataclass(frozen=True)
class Level:
    """What one concurrency level measured, or what the planner predicted for it."""

    concurrency: int
    ttft_ms: float
    tpot_ms: float
    tokens_per_second: float
    requests: int = 0
    prompt_tokens: float = 0.0


def prompt_of(units: int) -> str:
    """`units` sentences after a number no other request had: llama-server reuses a
    cached prompt prefix (cache_prompt), which would hide the prefill from TTFT."""
    return f"Request {next(_serial)} {os.getpid()}. " + PROMPT_UNIT * max(1, units)


def calibrated_units(base: str, tokens: int) -> tuple[int, int]:
    """Units whose chat prompt the server counts closest to `tokens`, and that count."""
    one, two = prompt_tokens(base, prompt_of(1)), prompt_tokens(base, prompt_of(2))
    per_unit = max(1, two - one)
    units = max(1, round((tokens - (one - per_unit)) / per_unit))
    return units, prompt_tokens(base, prompt_of(units))


def measure(base: str, concurrency: int, requests: int, units: int, output_tokens: int) -> Level:
    """`requests` streamed chat completions from `concurrency` closed-loop clients, each
    prompt `units` sentences long and unique. All clients start at once."""
    results: list[dict[str, float]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    todo = list(range(requests))

    def client_loop() -> None:
        while True:
            with lock:
                if not todo or errors:
                    return
                todo.pop()
            try:
                one = timed_stream(base, prompt_of(units), output_tokens)
            except BaseException as exc:  # reported after the level, not lost in a thread
                with lock:
                    errors.append(exc)
                return
            with lock:
                results.append(one)

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"concurrency {concurrency}: {errors[0]!r}") from errors[0]
    return Level(
        concurrency=concurrency,
        ttft_ms=1000 * statistics.mean(r["ttft_s"] for r in results),
        tpot_ms=1000 * statistics.mean(r["tpot_s"] for r in results),
        tokens_per_second=sum(r["tokens"] for r in results) / wall,
        requests=len(results),
    )


def prompt_tokens(base: str, prompt: str) -> int:
    """What the server counts for a chat prompt (its template included)."""
    answer = post(
        f"{base}/v1/chat/completions",
        {"messages": [{"role": "user", "content": prompt}], "max_tokens": 1},
    )
    return int(answer["usage"]["prompt_tokens"])


def estimate_command(
    plan: dict[str, Any], input_tokens: int, output_tokens: int, concurrency: int
) -> list[str]:
    """`llmctl estimate` for the model file the deployment serves, as planned."""
    return [
        str(Path(sys.executable).with_name("llmctl")),
        "estimate",
        *("--model", str(pins().model_path)),
        *("--quantization", plan["quantization"]),
        *("--gpu", plan["gpu"]),
        *("--gpus", "1", "--tensor-parallel", "1"),
        *("--engine", plan["engine"]),
        *("--input-tokens", str(input_tokens), "--output-tokens", str(output_tokens)),
        *("--concurrency", str(concurrency)),
        *("--max-model-len", str(plan["maxModelLen"])),
        *("--output", "json"),
    ]


def predict(
    plan: dict[str, Any], input_tokens: int, output_tokens: int, concurrency: int
) -> tuple[Level, list[str]]:
    cmd = estimate_command(plan, input_tokens, output_tokens, concurrency)
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    level = Level(concurrency, out["ttftMs"], out["tpotMs"], out["outputTokensPerSecond"])
    return level, cmd


def error(predicted: float, measured: float) -> str:
    return f"{100 * (predicted / measured - 1):+.0f}%" if measured else "n/a"


def table(rows: list[tuple[Level, Level]]) -> str:
    """Markdown: measured vs predicted per concurrency."""
    out = [
        "| concurrency | requests | TTFT ms measured / predicted (error) "
        "| TPOT ms measured / predicted (error) | tokens/s measured / predicted (error) |",
        "|---|---|---|---|---|",
    ]
    for m, p in rows:
        out.append(
            f"| {m.concurrency} | {m.requests} "
            f"| {m.ttft_ms:.0f} / {p.ttft_ms:.0f} ({error(p.ttft_ms, m.ttft_ms)}) "
            f"| {m.tpot_ms:.1f} / {p.tpot_ms:.1f} ({error(p.tpot_ms, m.tpot_ms)}) "
            f"| {m.tokens_per_second:.1f} / {p.tokens_per_second:.1f} "
            f"({error(p.tokens_per_second, m.tokens_per_second)}) |"
        )
    return "\n".join(out)


def one_line(measured: Level, predicted: Level) -> str:
    """The summary `make demo` prints."""
    return (
        f"concurrency {measured.concurrency}: TTFT {measured.ttft_ms:.0f} ms measured vs "
        f"{predicted.ttft_ms:.0f} ms predicted ({error(predicted.ttft_ms, measured.ttft_ms)}), "
        f"TPOT {measured.tpot_ms:.1f} vs {predicted.tpot_ms:.1f} ms "
        f"({error(predicted.tpot_ms, measured.tpot_ms)}), "
        f"{measured.tokens_per_second:.1f} vs {predicted.tokens_per_second:.1f} tokens/s "
        f"({error(predicted.tokens_per_second, measured.tokens_per_second)})"
    )


def run(
    api: client.ApiClient,
    namespace: str,
    name: str,
    levels: list[int] | None = None,
    rounds: int = 2,
) -> tuple[dict[str, Any], list[tuple[Level, Level]], list[list[str]]]:
    """Measure and predict each concurrency level of a Ready LLMDeployment.

    Returns:
        (its status.plan, [(measured, predicted)], the estimate commands run).
    """
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    plan = obj["status"]["plan"]
    if plan["gpu"] != CPU_CLASS:
        raise SystemExit(f"{namespace}/{name} is planned on {plan['gpu']}, not {CPU_CLASS}")
    workload = obj["spec"].get("workload") or {}
    input_tokens = int(workload.get("inputTokens", 1024))
    output_tokens = int(workload.get("outputTokens", 256))
    base = service_url(core, namespace, name)
    timed_stream(base, prompt_of(1), 4)  # warm-up
    units, counted = calibrated_units(base, input_tokens)
    rows, commands = [], []
    for c in levels or [1, int(plan["maxConcurrentSequences"])]:
        measured = measure(base, c, max(3, c * rounds), units, output_tokens)
        measured = Level(**{**asdict(measured), "prompt_tokens": counted})
        predicted, cmd = predict(plan, counted, output_tokens, c)
        rows.append((measured, predicted))
        commands.append(cmd)
    return plan, rows, commands


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", default=str(ROOT / "e2e" / ".state" / "kubeconfig"))
    parser.add_argument("--namespace", default="demo")
    parser.add_argument("--name", default="smollm2")
    parser.add_argument(
        "--concurrency", type=int, action="append", help="a level (repeatable); default 1 and "
        "the plan's batch"
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    api = config.new_client_from_config(config_file=args.kubeconfig)
    load_before = os.getloadavg()
    plan, rows, commands = run(api, args.namespace, args.name, args.concurrency, args.rounds)
    load_after = os.getloadavg()
    if args.json:
        print(json.dumps([{"measured": asdict(m), "predicted": asdict(p)} for m, p in rows]))
        return 0
    print(
        f"# {args.namespace}/{args.name}: {plan['gpu']} {plan['engine']} {plan['quantization']},"
        f" max-model-len {plan['maxModelLen']}, batch {plan['maxConcurrentSequences']}"
    )
    print(f"# prompt: {rows[0][0].prompt_tokens:.0f} tokens as the server counts them")
    print(
        f"# load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
        f"({os.cpu_count()} CPUs; the engine runs 1 thread)"
    )
    for cmd in commands:
        print("$ " + shlex.join(cmd))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
