"""What each serving engine supports and how efficiently it runs: one profile per engine.

The efficiencies are the planner's calibrated constants (see docs/planner.md and
`bench/calibrate.py`, which fits them to ../shared/calibration/measured.csv). Called by
`planner.timing`, `planner.search` and `planner.estimate`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from llm_operator.catalog import GpuType
from llm_operator.planner.memory import EngineMemory


@dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of the datasheet roofline, and fixed per-step costs.

    Attributes:
        bandwidth: fraction of datasheet memory bandwidth achieved in decode.
        compute: fraction of dense tensor throughput achieved in prefill/large batches.
        step_overhead_ms: scheduling, sampling and launch cost per engine step.
        request_overhead_ms: per-request fixed cost before the first token (tokenise,
            schedule, return).
        allreduce_latency_us: latency of one all-reduce over the GPU interconnect.
    """

    bandwidth: float
    compute: float
    step_overhead_ms: float
    request_overhead_ms: float
    allreduce_latency_us: float


@dataclass(frozen=True)
class EngineProfile:
    """One serving engine: supported formats, parallelism limits, memory carve-up, speed.

    Attributes:
        name: engine id as used in the API.
        quantizations: weight formats it serves.
        runs_on_cpu: whether it can run on a CPU node class.
        tensor_parallel: whether it shards a replica over several GPUs (TP).
        pipeline_parallel: whether it splits layers over GPUs/nodes (PP, multi-node).
        max_sequences: cap on concurrently running sequences the planner will configure.
        memory: how the engine carves up device memory.
        efficiency: calibrated roofline efficiencies.
    """

    name: str
    quantizations: frozenset[str]
    runs_on_cpu: bool
    tensor_parallel: bool
    pipeline_parallel: bool
    max_sequences: int
    memory: EngineMemory
    efficiency: Efficiency


# The reference efficiency of an optimised engine, checked by bench/calibration.py against
# ../shared/calibration/measured.csv (TensorRT-LLM and FasterTransformer rows): compute 0.70
# is the fitted value (TTFT rows within 5%); bandwidth and the overheads are not the fit's
# corner values, which compensate for the timing model's known gaps (docs/planner.md).
REFERENCE = Efficiency(
    bandwidth=0.75,
    compute=0.70,
    step_overhead_ms=2.0,
    request_overhead_ms=5.0,
    allreduce_latency_us=10.0,
)

# vLLM: the memory split follows vLLM's profiler (gpu-memory-utilization 0.9 default,
# a profiling pass of max-num-batched-tokens, 8192 on large GPUs (see
# `vllm_batched_tokens`), non-torch 0.13 GiB measured in calibration c20; NCCL/custom
# all-reduce buffers of ~0.5 GiB with TP > 1 are an assumption).
# NOTE: there is no public vLLM throughput row in the calibration data, so vLLM's
# efficiencies are the reference scaled by assumption (python scheduler: more per-step
# overhead, slightly lower achieved bandwidth); docs/planner.md states this.
VLLM = EngineProfile(
    name="vllm",
    quantizations=frozenset({"fp32", "fp16", "bf16", "fp8", "int8", "int4", "awq", "gptq"}),
    runs_on_cpu=False,
    tensor_parallel=True,
    pipeline_parallel=True,
    max_sequences=1024,
    memory=EngineMemory(
        utilization=0.90, batched_tokens=8192, non_torch_gib=0.13, comm_buffer_gib=0.5
    ),
    efficiency=Efficiency(
        bandwidth=REFERENCE.bandwidth * 0.9,
        compute=REFERENCE.compute * 0.9,
        step_overhead_ms=REFERENCE.step_overhead_ms * 2,
        request_overhead_ms=REFERENCE.request_overhead_ms * 2,
        allreduce_latency_us=REFERENCE.allreduce_latency_us,
    ),
)

# TGI: shards with --num-shard inside one node (no pipeline parallelism); warm-up runs a
# prefill of --max-batch-prefill-tokens (4096 default) and gives the rest to the KV cache
# (--cuda-memory-fraction 1.0 default; we plan with 0.95 to leave headroom).
TGI = EngineProfile(
    name="tgi",
    quantizations=frozenset({"fp16", "bf16", "fp8", "int8", "int4", "awq", "gptq"}),
    runs_on_cpu=False,
    tensor_parallel=True,
    pipeline_parallel=False,
    max_sequences=512,
    memory=EngineMemory(
        utilization=0.95, batched_tokens=4096, non_torch_gib=0.5, comm_buffer_gib=0.5
    ),
    efficiency=Efficiency(
        bandwidth=REFERENCE.bandwidth * 0.85,
        compute=REFERENCE.compute * 0.85,
        step_overhead_ms=REFERENCE.step_overhead_ms * 2,
        request_overhead_ms=REFERENCE.request_overhead_ms * 2,
        allreduce_latency_us=REFERENCE.allreduce_latency_us,
    ),
)

# llama.cpp (llama-server): GGUF on one GPU or on CPU; the KV cache is exactly -c tokens
# shared by --parallel slots; compute buffers sized by the 512-token ubatch.
# NOTE: the planner keeps llama.cpp to one device per replica; its layer split over
# several GPUs runs them one after another and gains no throughput.
LLAMACPP = EngineProfile(
    name="llamacpp",
    quantizations=frozenset({"fp32", "fp16", "bf16", "q8_0", "q5_k_m", "q4_k_m"}),
    runs_on_cpu=True,
    tensor_parallel=False,
    pipeline_parallel=False,
    max_sequences=16,
    memory=EngineMemory(
        utilization=0.95, batched_tokens=512, non_torch_gib=0.4, comm_buffer_gib=0.0
    ),
    efficiency=Efficiency(
        bandwidth=REFERENCE.bandwidth * 0.8,
        compute=REFERENCE.compute * 0.5,
        step_overhead_ms=REFERENCE.step_overhead_ms,
        request_overhead_ms=REFERENCE.request_overhead_ms,
        allreduce_latency_us=REFERENCE.allreduce_latency_us,
    ),
)

ENGINES: dict[str, EngineProfile] = {e.name: e for e in (VLLM, TGI, LLAMACPP)}


# `vllm serve` defaults max-num-batched-tokens to 8192 on GPUs with at least 70 GiB that
# are not A100s, and to 2048 elsewhere (vllm/engine/arg_utils.py,
# EngineArgs.get_batch_defaults, OPENAI_API_SERVER context, v0.9 to v0.12; A100 excluded
# after vLLM PR #17885 measured lower throughput with the larger budget).
VLLM_LARGE_GPU_GIB = 70.0
VLLM_SMALL_GPU_BATCHED_TOKENS = 2048


def memory_on(engine: EngineProfile, gpu: GpuType) -> EngineMemory:
    """How `engine` carves up the memory of one `gpu`.

    The renderer passes the batched-token budget to the engine explicitly
    (`--max-num-batched-tokens`), so what the planner sizes is what the pod runs with.
    """
    mem = engine.memory
    if gpu.is_cpu:
        return replace(mem, non_torch_gib=0.0)
    if engine.name == "vllm" and (
        gpu.memory_gib < VLLM_LARGE_GPU_GIB or "A100" in gpu.name.upper()
    ):
        return replace(mem, batched_tokens=VLLM_SMALL_GPU_BATCHED_TOKENS)
    return mem
