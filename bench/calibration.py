"""Planner accuracy against public measurements (../shared/calibration/measured.csv).

`python bench/calibration.py` prints, per row, the planner's prediction and its error, and
the median |error| per metric, with the reference efficiencies in
`llm_operator.engines.vllm.REFERENCE`. `--fit` grid-searches those efficiencies and
prints the best set (docs/planner.md records the fit). The engines the operator deploys
are calibrated by bench/calibrate_engines.py.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from llm_operator.catalog import GIB, Catalog, UnknownNameError, load_catalog
from llm_operator.engines import Efficiency
from llm_operator.engines.vllm import ENGINE as VLLM
from llm_operator.engines.vllm import REFERENCE
from llm_operator.planner import memory, timing

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT.parent / "shared" / "calibration" / "measured.csv"
MAX_BATCH = 2048  # TensorRT-LLM's benchmark default max batch size for "all at once" rows


@dataclass(frozen=True)
class Row:
    """One measurement, parsed."""

    id: str
    model: str
    quantization: str
    gpu: str
    gpus: int
    tensor_parallel: int | None
    engine: str
    input_tokens: int | None
    output_tokens: int | None
    concurrency: int | None  # None: all requests at once
    metric: str
    value: float
    source: str
    approximate: bool = False  # a token count was given as "~N"

    @property
    def weight(self) -> float:
        """Rows with "~N" token counts, or whose source says inputs are unclear, count half."""
        unclear = "not stated" in self.source or "~" in self.source
        return 0.5 if (unclear or self.approximate) else 1.0


def _int(text: str) -> int | None:
    text = text.strip().lstrip("~")
    return int(text) if text.isdigit() else None


def read_rows(path: Path) -> list[Row]:
    """Parse the calibration CSV."""
    with path.open() as f:
        return [
            Row(
                id=r["id"],
                model=r["model"],
                quantization=r["quantization"],
                gpu=r["gpu"],
                gpus=int(r["gpus"]),
                tensor_parallel=_int(r["tensor_parallel"]),
                engine=r["engine"],
                input_tokens=_int(r["input_tokens"]),
                output_tokens=_int(r["output_tokens"]),
                concurrency=_int(r["concurrency"]),
                metric=r["metric"],
                value=float(r["value"]),
                source=r["source"],
                approximate=any(
                    r[k].strip().startswith("~") for k in ("input_tokens", "output_tokens")
                ),
            )
            for r in csv.DictReader(f)
        ]


def predict(row: Row, catalog: Catalog, eff: Efficiency) -> float | None:
    """The planner's value for one row's metric, or None when it cannot be predicted."""
    try:
        arch = catalog.model(row.model).architecture
        gpu = catalog.gpu(row.gpu)
    except UnknownNameError:
        return None
    quant = row.quantization
    if quant not in memory.STORED_BITS:
        return None
    mem = VLLM.memory
    tp = row.tensor_parallel
    if tp is None:  # parallelism not stated: smallest TP that fits, data-parallel over the rest
        tp = next(
            t
            for t in (1, 2, 4, 8)
            if memory.memory_fit(arch, gpu, quant, t, 1, mem).max_kv_tokens > 4096
        )
    replicas = max(1, row.gpus // tp)
    fit = memory.memory_fit(arch, gpu, quant, tp, 1, mem)
    if row.metric == "weights_gib_per_gpu":
        return fit.weights_bytes / GIB
    if row.metric == "kv_cache_gib_per_gpu":
        return fit.kv_bytes / GIB
    if row.input_tokens is None or row.output_tokens is None:
        return None
    layout = timing.Layout(arch, gpu, quant, tp, 1, fit.kv_bytes_per_token, eff)
    if row.metric == "tpot_ms":
        context = row.input_tokens + row.output_tokens / 2
        return timing.decode_step_s(layout, row.concurrency or 1, context) * 1e3
    if row.metric == "ttft_ms":
        return timing.prefill_s(layout, row.input_tokens) * 1e3
    if row.metric == "output_tokens_per_second":
        per_seq = math.ceil((row.input_tokens + row.output_tokens) / 16) * 16
        batch = row.concurrency or min(MAX_BATCH, fit.max_kv_tokens // per_seq)
        t = timing.predict(
            layout, row.input_tokens, row.output_tokens, max(1, batch), mem.batched_tokens
        )
        return t.output_tokens_per_second * replicas
    return None


def errors(rows: list[Row], catalog: Catalog, eff: Efficiency) -> list[tuple[Row, float, float]]:
    """(row, predicted, relative error) for every row the planner can predict."""
    out = []
    for row in rows:
        value = predict(row, catalog, eff)
        if value is not None:
            out.append((row, value, value / row.value - 1))
    return out


def loss(rows: list[Row], catalog: Catalog, eff: Efficiency) -> float:
    """Weighted mean |log(predicted / measured)| over the timing rows."""
    scored = [
        (r.weight, abs(math.log(p / r.value)))
        for r, p, _ in errors(rows, catalog, eff)
        if r.metric in ("output_tokens_per_second", "ttft_ms", "tpot_ms")
    ]
    return sum(w * e for w, e in scored) / sum(w for w, _ in scored)


def fit(rows: list[Row], catalog: Catalog) -> Efficiency:
    """Grid search of the reference efficiencies."""
    grid = itertools.product(
        (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9),
        (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8),
        (0.5, 1.0, 2.0, 4.0, 8.0),
        (2.0, 5.0, 10.0, 20.0),
    )
    candidates = (
        replace(REFERENCE, bandwidth=b, compute=c, step_overhead_ms=s, request_overhead_ms=r)
        for b, c, s, r in grid
    )
    return min(candidates, key=lambda e: loss(rows, catalog, e))


def report(rows: list[Row], catalog: Catalog, eff: Efficiency) -> str:
    """A markdown table of every predictable row and the median |error| per metric."""
    lines = [
        "| id | model | gpu x n | metric | measured | predicted | error |",
        "|---|---|---|---|---|---|---|",
    ]
    by_metric: dict[str, list[float]] = {}
    for row, value, err in errors(rows, catalog, eff):
        by_metric.setdefault(row.metric, []).append(abs(err))
        lines.append(
            f"| {row.id} | {row.model.split('/')[-1]} {row.quantization} | {row.gpu} x{row.gpus}"
            f" | {row.metric} | {row.value:g} | {value:.4g} | {err:+.0%} |"
        )
    skipped = [r.id for r in rows if predict(r, catalog, eff) is None]
    lines.append("")
    lines.append("| metric | rows | median abs error |")
    lines.append("|---|---|---|")
    for metric, errs in sorted(by_metric.items()):
        lines.append(f"| {metric} | {len(errs)} | {statistics.median(errs):.0%} |")
    lines.append("")
    lines.append(f"Not predictable (inputs unstated or hardware not in the catalog): {skipped}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--fit", action="store_true", help="search the reference efficiencies")
    args = parser.parse_args()
    rows = read_rows(args.csv)
    catalog = load_catalog()
    eff = fit(rows, catalog) if args.fit else REFERENCE
    if args.fit:
        print(f"best: {eff} loss {loss(rows, catalog, eff):.3f}", file=sys.stderr)
    print(report(rows, catalog, eff))
    return 0


if __name__ == "__main__":
    sys.exit(main())
