"""Planner accuracy on published vLLM, TGI and llama.cpp measurements, and the fit of the
engines' efficiencies (bench/data/engine_measurements.csv; sources in bench/data/SOURCES.md).

`python bench/calibrate_engines.py` maps every row to a planner layout (the model from the
catalog, or inline below from its config.json; the device from the GPU catalog, or inline
below from its datasheet), predicts what the row measured with the efficiencies the engine
modules carry ("in use"), refits them leaving out one source at a time and predicts that
source's rows with the refit ("LOSO": leave-one-source-out cross-validation), and prints
the median and p90 |error| per metric and per engine, then every row. It takes about three
minutes on two CPUs. Options: `--fit` also prints the fit on every row (what the engine
modules carry, rounded) and each fold's; `--baseline FILE` adds the predictions of an
earlier planner's timing.py (e.g. `git show 951bff1:operator/llm_operator/planner/
timing.py > /tmp/timing_951bff1.py`); `--markdown FILE` writes the output to a file
(docs/calibration-engines.md); `--no-loso` skips the refits.

How a row is predicted (the planner's own functions; nothing is set per row):

- weights: `memory.weight_bytes` of the row's format (the GGUF file size llama-bench
  prints).
- the engine's defaults: its memory carve-up and prefill budget (`Engine.memory_on`), the
  KV dtype the row states (16-bit where it states none: what the engines default to), and
  its sequence slots: vLLM's default --max-num-seqs (1024 on GPUs with at least 70 GiB that
  are not A100s, else 256; vllm/engine/arg_utils.py `get_batch_defaults`) or what the row
  launched, TGI 3's router's 128 (`--max-concurrent-requests`), capped by the sequences
  the KV cache holds at full length.
- a closed loop with many requests per client (`vllm bench serve --max-concurrency`):
  `timing.predict`, the steady state the planner plans with.
- a burst (all requests at once) or a closed loop of few requests per client (k6): `replay`
  below, the run replayed on the planner's step model (`timing.step_s`).
- llama-bench `tgN`: one stream decoding N tokens from an empty context; `ppN`: one
  N-token prefill; TGI's `text-generation-benchmark` prefill (S9): one step prefilling
  batch x 40 tokens. None of the three has a server's per-request costs.

The fit minimises the weighted mean |log(predicted / measured)| (a burst's TTFT and TPOT
count half: they also depend on the output-length distribution, which no row states) plus
a weak pull of each efficiency towards its prior (`PRIOR`): a coordinate search over log
grids, then Nelder-Mead. scipy is not needed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import re
import statistics
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from llm_operator import engines
from llm_operator.api.v1alpha1 import Architecture
from llm_operator.catalog import GIB, Catalog, GpuType, UnknownNameError, load_catalog
from llm_operator.engines import Efficiency, Engine
from llm_operator.planner import memory, timing

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT / "bench" / "data" / "engine_measurements.csv"
ENGINES = ("vllm", "tgi", "llamacpp")
FAMILIES = ("ttft", "tpot", "tokens/s", "memory")

# ---------------------------------------------------------------------------- models
# Models the catalog does not have, from their config.json (values copied as published).


def _moe_active(arch: Architecture) -> int:
    """Parameters per token of a MoE whose every layer routes to `expertsPerToken` of
    `experts` gated-MLP experts of width `intermediateSize` (Qwen3-MoE, gpt-oss)."""
    experts, top_k = arch.experts or 1, arch.experts_per_token or 1
    idle = arch.layers * (experts - top_k) * 3 * arch.hidden_size * arch.intermediate_size
    return memory.params_from_shape(arch) - idle


def _counted(arch: Architecture) -> Architecture:
    """The architecture with its parameter counts filled in from the shape."""
    update = {"params": memory.params_from_shape(arch)}
    if arch.is_moe:
        update["active_params"] = _moe_active(arch)
    return arch.model_copy(update=update)


INLINE_MODELS: dict[str, Architecture] = {
    # https://huggingface.co/Qwen/Qwen3-8B/blob/main/config.json
    "Qwen/Qwen3-8B": _counted(
        Architecture(
            model_type="qwen3",
            layers=36,
            hidden_size=4096,
            attention_heads=32,
            kv_heads=8,
            head_dim=128,
            intermediate_size=12288,
            vocab_size=151936,
            max_context=40960,
        )
    ),
    # https://huggingface.co/Qwen/Qwen3-14B/blob/main/config.json
    "Qwen/Qwen3-14B": _counted(
        Architecture(
            model_type="qwen3",
            layers=40,
            hidden_size=5120,
            attention_heads=40,
            kv_heads=8,
            head_dim=128,
            intermediate_size=17408,
            vocab_size=151936,
            max_context=40960,
        )
    ),
    # https://huggingface.co/Qwen/Qwen3-32B/blob/main/config.json; also the text model of
    # Qwen3-VL-32B (https://huggingface.co/Qwen/Qwen3-VL-32B-Instruct/blob/main/config.json
    # text_config: the same widths); the vision tower (~0.4 B) is not counted.
    "Qwen/Qwen3-32B": _counted(
        Architecture(
            model_type="qwen3",
            layers=64,
            hidden_size=5120,
            attention_heads=64,
            kv_heads=8,
            head_dim=128,
            intermediate_size=25600,
            vocab_size=151936,
            max_context=40960,
        )
    ),
    # https://huggingface.co/Qwen/Qwen3-235B-A22B-Instruct-2507/blob/main/config.json
    # (moe_intermediate_size 1536, num_experts 128, num_experts_per_tok 8; every layer MoE)
    "Qwen/Qwen3-235B-A22B-Instruct-2507": _counted(
        Architecture(
            model_type="qwen3_moe",
            layers=94,
            hidden_size=4096,
            attention_heads=64,
            kv_heads=4,
            head_dim=128,
            intermediate_size=1536,
            vocab_size=151936,
            max_context=262144,
            experts=128,
            experts_per_token=8,
        )
    ),
    # https://huggingface.co/openai/gpt-oss-120b/blob/main/config.json (sliding_window 128
    # on every other layer: layer_types alternate sliding_attention / full_attention)
    "openai/gpt-oss-120b": _counted(
        Architecture(
            model_type="gpt_oss",
            layers=36,
            hidden_size=2880,
            attention_heads=64,
            kv_heads=8,
            head_dim=64,
            intermediate_size=2880,
            vocab_size=201088,
            max_context=131072,
            experts=128,
            experts_per_token=4,
            sliding_window=128,
            sliding_window_layers=18,
        )
    ),
    # https://huggingface.co/openai/gpt-oss-20b/blob/main/config.json
    "openai/gpt-oss-20b": _counted(
        Architecture(
            model_type="gpt_oss",
            layers=24,
            hidden_size=2880,
            attention_heads=64,
            kv_heads=8,
            head_dim=64,
            intermediate_size=2880,
            vocab_size=201088,
            max_context=131072,
            experts=32,
            experts_per_token=4,
            sliding_window=128,
            sliding_window_layers=12,
        )
    ),
}

# Row model -> catalog name or INLINE_MODELS key, where the row's name differs.
MODEL_ALIASES: dict[str, str] = {
    "Qwen/Qwen3-8B-AWQ": "Qwen/Qwen3-8B",
    "Qwen/Qwen3-8B-GPTQ-Int4": "Qwen/Qwen3-8B",
    "Qwen/Qwen3-8B-GPTQ-Int8": "Qwen/Qwen3-8B",
    "Qwen/Qwen3-8B-FP8": "Qwen/Qwen3-8B",
    "Qwen/Qwen3-8B-FP8-dynamic": "Qwen/Qwen3-8B",
    "Qwen/Qwen3-14B-FP8": "Qwen/Qwen3-14B",
    "Qwen/Qwen3-14B-AWQ": "Qwen/Qwen3-14B",
    "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8": "Qwen/Qwen3-235B-A22B-Instruct-2507",
    "Qwen/Qwen3-VL-32B-Instruct-FP8": "Qwen/Qwen3-32B",
    # DeepSeek-R1-0528 has DeepSeek-V3's config.json shape
    # (https://huggingface.co/deepseek-ai/DeepSeek-R1-0528/blob/main/config.json).
    "deepseek-ai/DeepSeek-R1-0528": "deepseek-ai/DeepSeek-V3",
    # Llama 3 has Llama 3.1's widths (https://huggingface.co/meta-llama/Meta-Llama-3-8B and
    # -70B config.json); only the context length and RoPE scaling differ.
    "meta-llama/Meta-Llama-3-8B": "meta-llama/Llama-3.1-8B",
    "meta-llama/Meta-Llama-3-70B": "meta-llama/Llama-3.1-70B",
    "meta-llama/Meta-Llama-3-8B (proprietary fine-tune, same architecture)": (
        "meta-llama/Llama-3.1-8B"
    ),
}

# Row format -> planner quantization. MXFP4 (gpt-oss experts: 4-bit values with an 8-bit
# scale per 32, 4.25 bits) is planned as int4 (4.16 bits on every linear layer): its
# 16-bit attention is counted at 4 bits, 4% (120b) to 9% (20b) too few weight bytes.
# GPTQ int8 on an A100 is weight-only 8-bit with FP16 compute, which is what the planner's
# fp8 is on a GPU without FP8 tensor cores.
QUANTIZATIONS: dict[str, str] = {
    "bf16": "bf16",
    "fp16": "fp16",
    "fp8": "fp8",
    "fp8-static": "fp8",
    "fp8-dynamic": "fp8",
    "awq": "awq",
    "gptq-int4": "gptq",
    "gptq-int8": "fp8",
    "mxfp4": "int4",
    "gguf-f16": "fp16",
    "gguf-q4_k_m": "q4_k_m",
    "gguf-q4_0": "q4_0",
}

# ---------------------------------------------------------------------------- hardware
# Devices the rows use that the GPU catalog does not list. They stay here rather than in
# gpus.yaml: a catalog entry is a product the planner may choose and price, and these
# have no price source; the benchmark needs only what they move and compute.
INLINE_GPUS: dict[str, GpuType] = {
    # NVIDIA A100 datasheet (A100 80GB PCIe column), nvidia-a100-datasheet-us-nvidia-
    # 1758950-r4-web.pdf: 80 GB HBM2e, 1,935 GB/s, FP16 312 TFLOPS (624 sparse), INT8 624
    # TOPS, PCIe Gen4 64 GB/s (32 each way). nvidia-smi "NVIDIA A100 80GB PCIe, 81920 MiB".
    "A100-PCIe-80GB": GpuType(
        name="A100-PCIe-80GB",
        memory_gb=80,
        memory_gib=80.0,
        memory_bandwidth_gbps=1935,
        fp16_tflops=312,
        int8_tops=624,
        interconnect="pcie",
        interconnect_gbps=32,
        gpus_per_node=8,
        price_per_hour=1.0,  # not used: no price source, nothing is planned
    ),
    # NVIDIA H100 datasheet (H100 NVL column, https://www.nvidia.com/en-us/data-center/h100/):
    # 94 GB HBM3, 3.9 TB/s, FP16 1,671 TFLOPS* , FP8 3,341*, INT8 3,341* (* sparsity), PCIe
    # Gen5 128 GB/s (64 each way; the NVLink bridge pairs cards only). nvidia-smi "NVIDIA H100
    # NVL, 95830 MiB" = 93.58 GiB.
    "H100-NVL-94GB": GpuType(
        name="H100-NVL-94GB",
        memory_gb=94,
        memory_gib=93.58,
        memory_bandwidth_gbps=3900,
        fp16_tflops=835.5,
        fp8_tflops=1670.5,
        int8_tops=1670.5,
        interconnect="pcie",
        interconnect_gbps=64,
        gpus_per_node=8,
        price_per_hour=1.0,  # not used
    ),
    # Two AMD EPYC 9175F (16 Zen 5 cores each, AVX-512 with two 512-bit FMA pipes = 64
    # FP32 FLOP/cycle, 4.2 GHz base; AMD product page) with 16 DDR5-6400 DIMMs, as the
    # row states: 16 x 51.2 GB/s = 819.2 GB/s. FP32 peak 2 x 16 x 64 x 4.2e9 = 8.6 TFLOPS.
    # Memory size not stated (not needed: one stream).
    "CPU (2x AMD EPYC 9175F, 16x DDR5-6400)": GpuType(
        name="2x EPYC 9175F",
        kind="cpu",
        vendor="cpu",
        memory_gb=824.6,
        memory_gib=768,
        memory_bandwidth_gbps=819.2,
        fp16_tflops=8.6,
        interconnect="none",
        interconnect_gbps=1,
        gpus_per_node=1,
        price_per_hour=1.0,  # not used
    ),
    # AMD Ryzen Threadripper PRO 5995WX: 64 Zen 3 cores, 8 channels DDR4-3200 = 204.8 GB/s
    # (AMD product page); AVX2, two 256-bit FMA pipes = 32 FP32 FLOP/cycle, 2.7 GHz base:
    # 64 x 32 x 2.7e9 = 5.5 TFLOPS. The row does not state how many channels were filled.
    "CPU (AMD Ryzen Threadripper PRO 5995WX, 64 cores)": GpuType(
        name="TR PRO 5995WX",
        kind="cpu",
        vendor="cpu",
        memory_gb=274.9,
        memory_gib=256,
        memory_bandwidth_gbps=204.8,
        fp16_tflops=5.5,
        interconnect="none",
        interconnect_gbps=1,
        gpus_per_node=1,
        price_per_hour=1.0,  # not used
    ),
}

# The efficiencies before this calibration (the TensorRT-LLM reference scaled by
# assumption), for `--baseline`.
_REF = Efficiency(0.75, 0.70, 2.0, 5.0, 10.0)
BEFORE: dict[str, Efficiency] = {
    "vllm": Efficiency(_REF.bandwidth * 0.9, _REF.compute * 0.9, 4.0, 10.0, 10.0),
    "tgi": Efficiency(_REF.bandwidth * 0.85, _REF.compute * 0.85, 4.0, 10.0, 10.0),
    "llamacpp": Efficiency(_REF.bandwidth * 0.8, _REF.compute * 0.5, 2.0, 5.0, 10.0),
}

# Where the fit starts and what it is pulled towards: the values above, and for the new
# terms engineering estimates (weakly informative; the pull is `PRIOR_WEIGHT` x the
# squared log distance, small next to one row's error): tens of microseconds of host
# work per sequence per step, a few milliseconds to template and tokenise one request,
# a GEMM tile (128) for the expert width at half efficiency, and ten launches of ~5 us
# per layer for an engine without CUDA graphs.
PRIOR: dict[str, Efficiency] = {
    "vllm": replace(
        BEFORE["vllm"],
        sequence_overhead_us=50.0,
        stream_overhead_us=50.0,
        admission_ms=5.0,
        moe_half_width=128.0,
    ),
    "tgi": BEFORE["tgi"],
    "llamacpp": replace(BEFORE["llamacpp"], layer_overhead_us=50.0),
}

# The efficiencies the fit moves (the rest stay as the engine module has them).
FITTED: dict[str, tuple[str, ...]] = {
    "vllm": (
        "bandwidth",
        "compute",
        "step_overhead_ms",
        "sequence_overhead_us",
        "stream_overhead_us",
        "request_overhead_ms",
        "admission_ms",
        "moe_half_width",
    ),
    # TGI's rows (S3 wall times, S9 prefill steps) measure prefill; the rest is vLLM's.
    "tgi": ("compute",),
    "llamacpp": ("bandwidth", "compute", "step_overhead_ms", "layer_overhead_us"),
}
BOUNDS: dict[str, tuple[float, float]] = {
    "bandwidth": (0.2, 1.0),
    "compute": (0.1, 1.0),
    "step_overhead_ms": (0.05, 50.0),
    "sequence_overhead_us": (0.5, 400.0),
    "stream_overhead_us": (0.5, 400.0),
    "request_overhead_ms": (0.5, 500.0),
    "layer_overhead_us": (0.5, 500.0),
    "admission_ms": (0.05, 50.0),
    "moe_half_width": (1.0, 4096.0),
}
PRIOR_WEIGHT = 0.01

# ---------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Target:
    """One measured number of a row: its metric family, name, value and statistic."""

    family: str
    name: str
    value: float
    stat: str = "mean"
    half: bool = False  # counts half in the fit (a burst's TTFT and TPOT, `build_case`)


@dataclass
class Case:
    """A row mapped onto the planner: what to predict and how."""

    id: str
    source: str
    engine: str
    label: str
    kind: str  # steady | replay | tg | pp | prefill_step
    weight: float
    targets: list[Target]
    layout: timing.Layout | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    concurrency: int = 1
    requests: int = 1
    slots: int = 1
    chunk: int | None = None
    burst: bool = False
    batch: int = 1  # prefill_step: sequences in the step
    fixed: bool = True  # output lengths fixed (else exponential, ShareGPT)
    weight_bytes: int = 0


def _float(text: str) -> float | None:
    text = text.strip().lstrip("~<=")
    try:
        return float(text)
    except ValueError:
        return None


def _weight(row: dict[str, str]) -> float:
    """Rows SOURCES.md says to weight low count a quarter. Every part of a row's workload
    that was inferred rather than stated halves its weight: the lengths, the concurrency,
    the host (threads, memory channels, shards)."""
    notes = row["notes"].lower()
    inferred = row["inferred"].lower()
    if "outlier" in notes or "weight low" in notes:
        return 0.25
    unknown = [
        any(w in inferred for w in ("tokens", "max_tokens", "tg length"))
        or row["output_tokens"].startswith("<="),
        "concurrency" in inferred,
        any(w in inferred for w in ("thread", "channels", "num-shard")),
    ]
    return 0.5 ** sum(unknown)


def _arch(name: str, catalog: Catalog) -> Architecture:
    name = MODEL_ALIASES.get(name, name)
    if name in INLINE_MODELS:
        return INLINE_MODELS[name]
    return catalog.model(name).architecture


def _gpu(name: str, catalog: Catalog) -> GpuType:
    if name in INLINE_GPUS:
        return INLINE_GPUS[name]
    return catalog.gpu(name)


def _slots(engine: Engine, gpu: GpuType, row: dict[str, str]) -> int:
    """Sequences the engine runs at once with its defaults (or as the row launched it)."""
    launched = re.search(r"max-num-seqs (\d+)", row["concurrency"])
    if launched:
        return int(launched.group(1))
    if engine.name == "vllm":
        return 1024 if gpu.memory_gib >= 70 and "A100" not in gpu.name.upper() else 256
    if engine.name == "tgi":
        return 128
    return 1


def build_case(row: dict[str, str], catalog: Catalog) -> Case | str:
    """The planner's view of one row, or why it cannot be predicted."""
    rid, engine_name = row["row_id"], row["engine"]
    if "2nd run" in row["notes"]:
        return "warm prefix cache (2nd run): the planner does not model prefix caching"
    if not row["input_tokens"] and not row["output_tokens"]:
        return "input/output lengths not stated (MLPerf summarisation set)"
    try:
        arch = _arch(row["model"], catalog)
        gpu = _gpu(row["gpu"], catalog)
    except UnknownNameError as err:
        return f"not expressible: {err}"
    quant = QUANTIZATIONS.get(row["quantization"])
    if quant is None:
        return f"format {row['quantization']} has no planner equivalent"
    engine = engines.get(engine_name)
    tp = int(row["tensor_parallel"] or 1)
    pp = int(row["pipeline_parallel"] or 1)
    mem = engine.memory_on(gpu.memory_gib, gpu.name, gpu.accelerator)
    kv_dtype = row["kv_cache_dtype"].lower()
    kv_element = 1.0 if kv_dtype.startswith("fp8") else 2.0
    fit = memory.memory_fit(arch, gpu, quant, tp, pp, mem, kv_element)
    layout = timing.Layout(arch, gpu, quant, tp, pp, fit.kv_bytes_per_token, engine.efficiency)
    n_in = _float(row["input_tokens"]) or 0.0
    n_out = _float(row["output_tokens"]) or 0.0
    label = (
        f"{row['model'].split('/')[-1].split(' ')[0]} {row['quantization']} "
        f"{gpu.name} x{max(1, int(row['num_gpus']))}"
    )
    if tp * pp > 1:
        label += f" TP{tp}" + (f" PP{pp}" if pp > 1 else "")
    targets: list[Target] = []
    if row["memory_gib"]:
        targets.append(Target("memory", "weights GiB", float(row["memory_gib"])))
    case = Case(
        id=rid,
        source=row["source_id"],
        engine=engine_name,
        label=label,
        kind="steady",
        weight=_weight(row),
        targets=targets,
        layout=layout,
        input_tokens=round(n_in),
        output_tokens=round(n_out),
        weight_bytes=memory.weight_bytes(arch, quant),
    )
    if row["prefill_tokens_per_s"]:
        case.kind = "pp"
        # One N-token prefill; compared as its duration (the TTFT of an idle server).
        pp_ms = n_in / float(row["prefill_tokens_per_s"]) * 1e3
        targets.append(Target("ttft", "pp time ms", pp_ms))
        return case
    if row["source_id"] == "S9":
        case.kind = "prefill_step"
        case.batch = int(row["concurrency"])
        targets.append(Target("ttft", "prefill step ms", float(row["ttft_ms"]), "single run"))
        return case
    if engine_name == "llamacpp":
        case.kind = "tg"
        targets.append(Target("tokens/s", "tg tok/s", float(row["output_tokens_per_s"])))
        return case
    # A served benchmark.
    conc = re.match(r"\s*(\d+)", row["concurrency"])
    case.burst = conc is None or "submitted at once" in row["concurrency"]
    case.requests = int(row["num_requests"] or 1000)
    case.fixed = "sharegpt" not in row["dataset"].lower()
    case.slots = _slots(engine, gpu, row)
    per_sequence = math.ceil((n_in + n_out) / 16) * 16
    case.slots = max(1, min(case.slots, fit.max_kv_tokens // max(1, per_sequence)))
    case.concurrency = case.requests if case.burst else int(conc.group(1))  # type: ignore[union-attr]
    case.chunk = mem.batched_tokens
    # A burst, or a closed loop that sends few requests per client, is replayed; a closed
    # loop of many requests per client is the planner's steady state.
    case.kind = "replay" if case.burst or case.requests < 4 * case.concurrency else "steady"
    # NOTE: SOURCES.md (S1, S7): in an all-at-once run TTFT is mostly queueing and TPOT
    # mixed prefill/decode batches. Both are modelled (the replay below), but they also
    # depend on the length distribution the rows do not state (ShareGPT), so they count
    # half in the fit.
    half = case.burst
    if row["ttft_ms"]:
        targets.append(Target("ttft", "TTFT ms", float(row["ttft_ms"]), row["ttft_stat"], half))
    if row["tpot_ms"]:
        targets.append(Target("tpot", "TPOT ms", float(row["tpot_ms"]), row["tpot_stat"], half))
    elif row["itl_ms"]:
        targets.append(Target("tpot", "ITL ms", float(row["itl_ms"]), row["itl_stat"], half))
    if row["output_tokens_per_s"]:
        targets.append(Target("tokens/s", "output tok/s", float(row["output_tokens_per_s"])))
    elif row["total_tokens_per_s"] or row["tokens_per_s_unlabelled"]:
        total = float(row["total_tokens_per_s"] or row["tokens_per_s_unlabelled"])
        targets.append(Target("tokens/s", "total tok/s", total))
    elif row["duration_s"]:
        targets.append(Target("tokens/s", "requests/s", case.requests / float(row["duration_s"])))
    if not targets:
        return "no metric the planner predicts"
    return case


def read_cases(path: Path, catalog: Catalog) -> tuple[list[Case], dict[str, str]]:
    """Every row as a case; the rows that cannot be predicted, with the reason."""
    cases: list[Case] = []
    skipped: dict[str, str] = {}
    files: set[tuple[str, str, str]] = set()
    with path.open() as f:
        for row in csv.DictReader(f):
            out = build_case(row, catalog)
            if isinstance(out, str):
                skipped[row["row_id"]] = out
                continue
            # llama-bench prints the same GGUF file size on every row of a file: count it once.
            file = (row["model"], row["quantization"], row["memory_gib"])
            if row["memory_gib"] and file in files:
                out.targets = [t for t in out.targets if t.family != "memory"]
            files.add(file)
            cases.append(out)
    return cases, skipped


# ---------------------------------------------------------------------------- predict


@dataclass
class _Cohort:
    """Requests that move through the engine together (a fluid of `count` requests)."""

    count: float
    arrived: float  # when the client sent them
    ready: float = 0.0  # when the server has admitted them (parsed, tokenised)
    todo: float = 0.0  # prompt tokens left to prefill, per request
    left: float = 0.0  # decode tokens left per request (fixed lengths)
    steps: float = 0.0  # decode steps since the first token
    time: float = 0.0  # wall time since the first token


@dataclass(frozen=True)
class Replay:
    """What a benchmark client measures over a whole run."""

    ttft_mean_ms: float
    ttft_median_ms: float
    tpot_mean_ms: float
    requests_per_s: float


MAX_COHORTS = 12  # decoding cohorts kept apart (older ones are merged)


def replay(case: Case, layout: timing.Layout) -> Replay:
    """A benchmark run replayed on the planner's step model (`timing.step_s`).

    `requests` requests; `concurrency` of them are sent at once and each completion sends
    the next (all at once: concurrency = requests). The server admits them one at a time
    (`Efficiency.admission_ms` each), the engine takes them into its sequence slots first
    come first served, prefills them within its per-step token budget next to the running
    decodes (vLLM V1 schedules the running requests first) and decodes every running
    sequence once per step. Output lengths are fixed (random datasets, k6) or, for
    ShareGPT, exponential with the row's mean (memoryless: a running population finishes
    at 1 / mean per step); that long tail is why a burst's throughput is below the steady
    state at full batch. Fluid: cohorts of at most requests / 32 (and slots / 8) requests,
    time advanced from event to event (a cohort's prefill or decode ends, a cohort is
    admitted, or a quarter of the mean output).
    """
    eff = layout.efficiency
    n_in, n_out = case.input_tokens, max(1, case.output_tokens)
    decode_tokens = n_out - 1
    context = n_in + n_out / 2
    budget = case.chunk or 10**9
    granule = max(1.0, min(case.requests / 32, case.slots / 8))
    admit_s = eff.admission_ms / 1e3
    waiting: list[_Cohort] = []
    prefilling: list[_Cohort] = []
    decoding: list[_Cohort] = []
    frontend_free = 0.0

    def arrive(count: float, at: float) -> None:
        nonlocal frontend_free
        while count > 1e-9:
            size = min(count, granule)
            frontend_free = max(at, frontend_free) + size * admit_s
            waiting.append(_Cohort(size, at, frontend_free, float(n_in)))
            count -= size

    issued = float(min(case.concurrency, case.requests))
    arrive(issued, 0.0)
    ttfts: list[tuple[float, float]] = []
    tpot_sum = tpot_count = 0.0
    busy = running = 0.0
    t = 0.0
    while True:
        free = case.slots - busy
        while waiting and waiting[0].ready <= t + 1e-12 and free >= waiting[0].count - 1e-6:
            c = waiting.pop(0)
            prefilling.append(c)
            busy += c.count
            free -= c.count
        if not prefilling and not decoding:
            if not waiting:
                break
            t = max(t, waiting[0].ready)
            continue
        room = max(1.0, budget - running)
        todo = sum(c.count * c.todo for c in prefilling)
        step = timing.step_s(layout, round(running), context, round(min(room, todo)), n_in / 2)
        horizon = math.inf
        if prefilling:
            head = prefilling[0]
            horizon = max(1.0, head.count * head.todo / room)
        if decoding:
            horizon = min(
                horizon,
                max(1.0, min(c.left for c in decoding)) if case.fixed else decode_tokens / 4,
            )
        if waiting and free >= waiting[0].count - 1e-6:
            horizon = min(horizon, max(1.0, (waiting[0].ready - t) / step))
        horizon = max(1.0, horizon)
        capacity = room * horizon
        finished: list[_Cohort] = []
        for c in prefilling:
            take = min(c.count * c.todo, capacity)
            c.todo -= take / c.count
            capacity -= take
            if c.todo <= 1e-6:
                finished.append(c)
        dt = horizon * step
        t += dt
        done = 0.0
        survive = math.exp(-horizon / max(1.0, decode_tokens))
        tail = not waiting and not prefilling and running * survive < 0.5
        for c in list(decoding):
            c.steps += horizon
            c.time += dt
            if case.fixed:
                c.left -= horizon
                gone = c.count if c.left <= 1e-6 else 0.0
                tpot = c.time / c.steps
            else:
                gone = c.count if tail else c.count * (1 - survive)
                tpot = (c.time - dt / 2) / max(1.0, c.steps - horizon / 2)
            tpot_sum += gone * tpot
            tpot_count += gone
            done += gone
            c.count -= gone
            if c.count <= 1e-9:
                decoding.remove(c)
        for c in finished:
            prefilling.remove(c)
            ttfts.append((c.count, t - c.arrived))
            if decode_tokens <= 0:
                done += c.count
                continue
            c.left = float(decode_tokens)
            decoding.append(c)
            running += c.count
        if not case.fixed and len(decoding) > MAX_COHORTS:  # merge the two oldest
            a, b = decoding[0], decoding.pop(1)
            total = a.count + b.count
            a.time = (a.time * a.count + b.time * b.count) / total
            a.steps = (a.steps * a.count + b.steps * b.count) / total
            a.left = max(a.left, b.left)
            a.count = total
        busy -= done
        running -= done
        if done and issued < case.requests:
            more = min(done, case.requests - issued)
            arrive(more, t)
            issued += more
    total = sum(n for n, _ in ttfts)
    mean = sum(n * v for n, v in ttfts) / total
    acc, median = 0.0, 0.0
    for n, v in sorted(ttfts, key=lambda x: x[1]):
        acc += n
        median = v
        if acc >= total / 2:
            break
    overhead = eff.request_overhead_ms
    return Replay(
        ttft_mean_ms=mean * 1e3 + overhead,
        ttft_median_ms=median * 1e3 + overhead,
        tpot_mean_ms=(tpot_sum / tpot_count * 1e3) if tpot_count else 0.0,
        requests_per_s=case.requests / t,
    )


def predict(case: Case, eff: Efficiency) -> dict[str, float]:
    """The planner's value for each of the case's targets, by target name."""
    assert case.layout is not None
    layout = replace(case.layout, efficiency=eff)
    out: dict[str, float] = {}
    for t in case.targets:
        if t.family == "memory":
            out[t.name] = case.weight_bytes / GIB
    bench = replace(layout, efficiency=replace(eff, request_overhead_ms=0.0))
    if case.kind == "pp":
        out["pp time ms"] = timing.prefill_s(bench, case.input_tokens) * 1e3
        return out
    if case.kind == "prefill_step":
        tokens = case.batch * case.input_tokens
        out["prefill step ms"] = timing.step_s(layout, 0, 0.0, tokens, case.input_tokens / 2) * 1e3
        return out
    if case.kind == "tg":
        out["tg tok/s"] = timing.predict(bench, 0, case.output_tokens, 1).output_tokens_per_second
        return out
    n_out = max(1, case.output_tokens)
    if case.kind == "replay":
        r = replay(case, layout)
        ttft_mean, ttft_median, tpot, itl, rate = (
            r.ttft_mean_ms,
            r.ttft_median_ms,
            r.tpot_mean_ms,
            r.tpot_mean_ms,
            r.requests_per_s,
        )
    else:
        p = timing.predict(
            layout,
            case.input_tokens,
            case.output_tokens,
            case.concurrency,
            case.chunk,
            case.slots,
        )
        ttft_mean = ttft_median = p.ttft_ms
        tpot, itl, rate = p.tpot_ms, p.step_ms, p.output_tokens_per_second / n_out
    for target in case.targets:
        if target.name == "TTFT ms":
            out[target.name] = ttft_median if target.stat == "median" else ttft_mean
        elif target.name == "TPOT ms":
            out[target.name] = tpot
        elif target.name == "ITL ms":
            out[target.name] = itl
        elif target.name == "output tok/s":
            out[target.name] = rate * n_out
        elif target.name == "total tok/s":
            out[target.name] = rate * (case.input_tokens + case.output_tokens)
        elif target.name == "requests/s":
            out[target.name] = rate
    return out


# ---------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Point:
    """One predicted target."""

    case: Case
    target: Target
    predicted: float

    @property
    def error(self) -> float:
        return self.predicted / self.target.value - 1


Params = dict[str, Efficiency]


def points(cases: Iterable[Case], params: Params) -> list[Point]:
    """Predicted targets of the cases with these efficiencies."""
    out = []
    for case in cases:
        values = predict(case, params[case.engine])
        out.extend(Point(case, t, values[t.name]) for t in case.targets if t.name in values)
    return out


def loss(cases: list[Case], params: Params, prior: Params, tie: float = PRIOR_WEIGHT) -> float:
    """Weighted mean |log(predicted / measured)| over the targets, plus the pull of each
    fitted efficiency towards its prior (log distance squared x `tie`)."""
    pts = points(cases, params)
    weights = [p.case.weight * (0.5 if p.target.half else 1.0) for p in pts]
    total = sum(weights)
    data = sum(
        w * abs(math.log(p.predicted / p.target.value)) for w, p in zip(weights, pts, strict=True)
    )
    pull = 0.0
    for engine, names in FITTED.items():
        for name in names:
            a, b = getattr(params[engine], name), getattr(prior[engine], name)
            if a > 0 and b > 0:
                pull += math.log(a / b) ** 2
    return data / max(total, 1e-9) + tie * pull


def fit(cases: list[Case], rounds: int = 3) -> Params:
    """Fit the efficiencies of every engine on `cases`.

    vLLM first, pulled weakly towards its prior (`PRIOR`); then TGI,
    whose rows measure prefill only: its compute efficiency is fitted and the rest is
    vLLM's fit; then llama.cpp, pulled weakly towards its own prior.
    """
    params = dict(PRIOR)
    for engine in ENGINES:
        if engine == "tgi":
            params["tgi"] = replace(
                params["vllm"], allreduce_latency_us=PRIOR["tgi"].allreduce_latency_us
            )
        mine = [c for c in cases if c.engine == engine]
        params = fit_engine(mine, params, engine, rounds)
    return params


# What each engine's fit starts from besides its own rows (TGI starts from vLLM's fit).
DEPENDS: dict[str, tuple[str, ...]] = {"vllm": (), "tgi": ("vllm",), "llamacpp": ()}
_FITS: dict[tuple[object, ...], Efficiency] = {}


def fit_engine(cases: list[Case], params: Params, engine: str, rounds: int = 3) -> Params:
    """One engine's efficiencies: a coordinate search over grids, then Nelder-Mead.
    Memoised on the rows and the starting point (LOSO folds that hold out another
    engine's source reuse the fit)."""
    key = (engine, rounds, tuple(c.id for c in cases), tuple(params[e] for e in DEPENDS[engine]))
    if key in _FITS:
        return {**params, engine: _FITS[key]}
    prior = dict(params)
    for r in range(rounds):
        for name in FITTED[engine]:
            params = _line_search(cases, params, prior, engine, name, r, PRIOR_WEIGHT)
    if cases:
        params = _simplex(cases, params, prior, engine, PRIOR_WEIGHT)
    _FITS[key] = params[engine]
    return params


def _simplex(
    cases: list[Case], params: Params, prior: Params, engine: str, tie: float, evals: int = 150
) -> Params:
    """Nelder-Mead over the engine's fitted efficiencies in log space (bounds clamped),
    from the coordinate search's answer: it moves correlated efficiencies together
    (bandwidth and the per-step overhead trade off in every decode step)."""
    names = FITTED[engine]
    lo = [math.log(BOUNDS[n][0]) for n in names]
    hi = [math.log(BOUNDS[n][1]) for n in names]

    def clamp(x: list[float]) -> list[float]:
        return [min(h, max(low, v)) for v, low, h in zip(x, lo, hi, strict=True)]

    def at(x: list[float]) -> Params:
        values = {n: math.exp(v) for n, v in zip(names, clamp(x), strict=True)}
        return {**params, engine: replace(params[engine], **values)}

    def score(x: list[float]) -> float:
        return loss(cases, at(x), prior, tie)

    start = clamp([math.log(max(getattr(params[engine], n), BOUNDS[n][0])) for n in names])
    simplex = [start] + [
        [v + (0.15 if i == j else 0.0) for j, v in enumerate(start)] for i in range(len(names))
    ]
    scores = [score(x) for x in simplex]
    used = len(simplex)
    while used < evals:
        order = sorted(range(len(simplex)), key=lambda i: scores[i])
        simplex = [simplex[i] for i in order]
        scores = [scores[i] for i in order]
        centroid = [sum(x[j] for x in simplex[:-1]) / (len(simplex) - 1) for j in range(len(names))]
        worst = simplex[-1]
        reflect = [c + (c - w) for c, w in zip(centroid, worst, strict=True)]
        r_score = score(reflect)
        used += 1
        if r_score < scores[0]:
            expand = [c + 2 * (c - w) for c, w in zip(centroid, worst, strict=True)]
            e_score = score(expand)
            used += 1
            simplex[-1], scores[-1] = (expand, e_score) if e_score < r_score else (reflect, r_score)
        elif r_score < scores[-2]:
            simplex[-1], scores[-1] = reflect, r_score
        else:
            contract = [c + 0.5 * (w - c) for c, w in zip(centroid, worst, strict=True)]
            c_score = score(contract)
            used += 1
            if c_score < scores[-1]:
                simplex[-1], scores[-1] = contract, c_score
            else:
                best = simplex[0]
                simplex = [best] + [
                    [b + 0.5 * (v - b) for b, v in zip(best, x, strict=True)] for x in simplex[1:]
                ]
                scores = [scores[0]] + [score(x) for x in simplex[1:]]
                used += len(simplex) - 1
    best = min(range(len(simplex)), key=lambda i: scores[i])
    return at(simplex[best])


def _line_search(
    cases: list[Case],
    params: Params,
    prior: Params,
    engine: str,
    name: str,
    round_: int,
    tie: float,
) -> Params:
    lo, hi = BOUNDS[name]

    def at(value: float) -> Params:
        return {**params, engine: replace(params[engine], **{name: value})}

    def score(value: float) -> float:
        if cases:
            return loss(cases, at(value), prior, tie)
        anchor = getattr(prior[engine], name)
        return math.log(value / anchor) ** 2 if anchor > 0 else value

    current = min(hi, max(lo, getattr(params[engine], name)))
    if round_ == 0:
        grid = [lo * (hi / lo) ** (k / 11) for k in range(12)]
    else:
        step = (hi / lo) ** (1 / 11 / 2 ** (round_ - 1) / 3)
        grid = [current * step**k for k in range(-3, 4)]
    grid = [min(hi, max(lo, g)) for g in grid] + [current]
    return at(min(grid, key=score))


def current() -> Params:
    """The efficiencies the engine modules carry."""
    return {e: engines.get(e).efficiency for e in ENGINES}


def baseline_points(cases: Iterable[Case], path: Path) -> list[Point]:
    """What an earlier planner predicted: its timing module (a copy of
    operator/llm_operator/planner/timing.py from another commit, e.g. `git show
    951bff1:operator/llm_operator/planner/timing.py`) with the efficiencies of that time
    (`BEFORE`). That planner had no queues, so a run is its steady state at
    min(concurrency, slots) and a llama-bench/TGI step is its prefill of the same tokens."""
    spec = importlib.util.spec_from_file_location("baseline_timing", path)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old  # dataclasses look their module up while it loads
    spec.loader.exec_module(old)
    out = []
    for case in cases:
        eff = BEFORE[case.engine]
        assert case.layout is not None
        c = case.layout
        layout = old.Layout(
            c.arch,
            c.gpu,
            c.quantization,
            c.tensor_parallel,
            c.pipeline_parallel,
            c.kv_bytes_per_token_per_gpu,
            eff,
        )
        values: dict[str, float] = {"weights GiB": case.weight_bytes / GIB}
        n_out = max(1, case.output_tokens)
        if case.kind == "pp":
            values["pp time ms"] = (
                old.prefill_s(layout, case.input_tokens) * 1e3 - eff.request_overhead_ms
            )
        elif case.kind == "prefill_step":
            tokens = case.batch * case.input_tokens
            values["prefill step ms"] = (
                old._prefill_work_s(layout, case.batch, case.input_tokens, tokens) * 1e3
            )
        elif case.kind == "tg":
            values["tg tok/s"] = old.predict(layout, 0, n_out, 1).output_tokens_per_second
        else:
            t = old.predict(
                layout,
                case.input_tokens,
                case.output_tokens,
                min(case.concurrency, case.slots),
                case.chunk,
            )
            rate = t.output_tokens_per_second / n_out
            values |= {
                "TTFT ms": t.ttft_ms,
                "TPOT ms": t.tpot_ms,
                "ITL ms": t.step_ms,
                "output tok/s": t.output_tokens_per_second,
                "requests/s": rate,
                "total tok/s": rate * (case.input_tokens + case.output_tokens),
            }
        out.extend(Point(case, t, values[t.name]) for t in case.targets if t.name in values)
    return out


def loso(cases: list[Case]) -> tuple[list[Point], dict[str, Params]]:
    """Each source's rows predicted with efficiencies fitted on the other sources."""
    out: list[Point] = []
    fitted: dict[str, Params] = {}
    for source in sorted({c.source for c in cases}, key=lambda s: int(s[1:])):
        train = [c for c in cases if c.source != source]
        params = fit(train)
        fitted[source] = params
        out.extend(points([c for c in cases if c.source == source], params))
    return out, fitted


# ---------------------------------------------------------------------------- report


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(pts: list[Point], key: Callable[[Point], str]) -> dict[str, tuple[int, float, float]]:
    """(points, median |error|, p90 |error|) per group."""
    groups: dict[str, list[float]] = {}
    for p in pts:
        groups.setdefault(key(p), []).append(abs(p.error))
    return {
        k: (len(v), statistics.median(v), _percentile(v, 0.9)) for k, v in sorted(groups.items())
    }


LOADS = {
    "steady": "closed loop",
    "replay": "burst or k6",
    "tg": "single stream",
    "pp": "single stream",
    "prefill_step": "single stream",
}


def summary_table(columns: dict[str, list[Point]]) -> list[str]:
    """Median / p90 |error| per metric, per engine and metric, and per load and metric
    (closed loop: `timing.predict`; burst or k6: `replay`; single stream: llama-bench and
    TGI's prefill benchmark), one column pair per set of points."""
    names = list(columns)
    head = "| metric | points | " + " | ".join(f"{n} median | {n} p90" for n in names) + " |"
    lines = [head, "|---|---:|" + "---:|---:|" * len(names)]
    groupings: list[Callable[[Point], tuple[str, ...]]] = [
        lambda p: (p.target.family,),
        lambda p: (p.case.engine, p.target.family),
        lambda p: (LOADS[p.case.kind], p.target.family),
    ]
    for grouping in groupings:
        tables = {
            n: summary(pts, lambda p, g=grouping: " ".join(g(p))) for n, pts in columns.items()
        }
        labels = {" ".join(grouping(p)): grouping(p) for pts in columns.values() for p in pts}
        order = sorted(labels, key=lambda g: (labels[g][:-1], FAMILIES.index(labels[g][-1])))
        for g in order:
            count = next(t[g][0] for t in tables.values() if g in t)
            cells = []
            for n in names:
                if g in tables[n]:
                    _, med, p90 = tables[n][g]
                    cells.append(f"{med:.0%} | {p90:.0%}")
                else:
                    cells.append("- | -")
            lines.append(f"| {g} | {count} | " + " | ".join(cells) + " |")
    return lines


def row_table(columns: dict[str, list[Point]]) -> list[str]:
    """Every predicted target: measured, then predicted and error per set of points."""
    names = list(columns)
    lines = [
        "| row | source | engine | layout | workload | metric | weight | measured | "
        + " | ".join(f"{n} | {n} error" for n in names)
        + " |",
        "|---|---|---|---|---|---|---:|---:|" + "---:|---:|" * len(names),
    ]
    index = {n: {(p.case.id, p.target.name): p for p in pts} for n, pts in columns.items()}
    first = columns[names[0]]
    for p in sorted(first, key=lambda p: (int(p.case.id[1:]), p.target.name)):
        c = p.case
        if c.kind in ("tg", "pp"):
            load = f"llama-bench {c.kind}{c.input_tokens or c.output_tokens}"
        elif c.kind == "prefill_step":
            load = f"prefill {c.batch} x {c.input_tokens}"
        else:
            how = f"{c.requests} at once" if c.burst else f"c={c.concurrency}"
            load = f"{c.input_tokens}/{c.output_tokens}, {how}, slots {c.slots}"
        cells = []
        for n in names:
            q = index[n].get((c.id, p.target.name))
            cells.append("- | -" if q is None else f"{q.predicted:.4g} | {q.error:+.0%}")
        lines.append(
            f"| {c.id} | {c.source} | {c.engine} | {c.label} | {load} | {p.target.name}"
            f" ({p.target.stat}) | {c.weight:g} | {p.target.value:.4g} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def format_params(params: Params) -> list[str]:
    lines = []
    for engine in ENGINES:
        e = params[engine]
        values = ", ".join(f"{n}={getattr(e, n):.3g}" for n in FITTED[engine])
        lines.append(f"{engine}: {values}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--fit", action="store_true", help="print the fit on every row")
    parser.add_argument(
        "--baseline", type=Path, help="an earlier planner's timing.py, for a 'before' column"
    )
    parser.add_argument("--no-loso", action="store_true", help="skip the cross-validation")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    catalog = load_catalog()
    cases, skipped = read_cases(args.csv, catalog)
    columns: dict[str, list[Point]] = {}
    if args.baseline:
        columns["before"] = baseline_points(cases, args.baseline)
    columns["in use"] = points(cases, current())
    fitted_loso: dict[str, Params] = {}
    if not args.no_loso:
        columns["LOSO"], fitted_loso = loso(cases)
    out: list[str] = []
    if args.fit:
        out += ["Fitted on every row:", "", *format_params(fit(cases)), ""]
        for source, params in fitted_loso.items():
            out += [f"- without {source}: " + "; ".join(format_params(params))]
        out.append("")
    out += summary_table(columns)
    out += ["", *row_table(columns), ""]
    out.append(f"Rows predicted: {len(cases)}; skipped: {len(skipped)}")
    out += [f"- {rid}: {why}" for rid, why in skipped.items()]
    text = "\n".join(out)
    print(text)
    if args.markdown:
        command = " ".join(["python bench/calibrate_engines.py", *sys.argv[1:]])
        head = (
            "# Engine calibration, every row\n\nGenerated by `" + command + "`; do not edit. "
            "The model and the fit: [planner.md](planner.md#the-engines-we-deploy-vllm-tgi-"
            "llamacpp).\n\n"
        )
        args.markdown.write_text(head + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
