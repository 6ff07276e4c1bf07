"""vLLM v0.12.0 (`vllm serve`): capability matrix, image, arguments, environment, metrics.

Everything here was read in vLLM's own source at the pinned release (the v0.12.0 wheel on
PyPI, `vllm-0.12.0-cp38-abi3-manylinux_2_31_x86_64.whl`); each entry names the file. The
rendered arguments are fed to vLLM's own argument parser and config classes in
`make test` (tests/test_engine_contracts.py). Called through the registry in
`engines/__init__.py` by the planner, the renderer and the autoscaler.
"""

from __future__ import annotations

from typing import Any

from llm_operator.engines.base import (
    Accelerator,
    Ask,
    Capabilities,
    Efficiency,
    Engine,
    EngineMemory,
    Launch,
    Metrics,
    QuantSupport,
    Refusal,
    ceil_to,
    compact_json,
    flatten,
    sorted_env,
)

VERSION = "v0.12.0"
SOURCE = "vllm-project/vllm@v0.12.0 (PyPI wheel vllm==0.12.0)"

NVIDIA: frozenset[Accelerator] = frozenset({"nvidia"})

# Quantizations. vLLM reads a pre-quantized checkpoint's `quantization_config` itself and
# picks the fastest kernel (awq -> awq_marlin, gptq -> gptq_marlin: vllm/config/model.py
# `_verify_quantization`, the `override_quantization_method` hooks), so no flag is passed
# for one; `--quantization fp8` on such a checkpoint is a mismatch error when its method is
# compressed-tensors or fbgemm_fp8. From a 16-bit checkpoint vLLM casts (`--dtype`) or
# quantizes to FP8 while loading (`--quantization fp8`, vllm/model_executor/layers/
# quantization/fp8.py; Ampere runs it weight-only through Marlin). It does not make int8
# or int4 weights while loading: those need a compressed-tensors W8A8/W4A16, AWQ or GPTQ
# checkpoint.
# NOTE: AMD is left out: the pinned v0.12.0 has no ROCm image we could verify (AMD's
# rocm/vllm tags carry other vLLM versions, e.g. rocm7.0.0_vllm_0.11.2_20251210), and
# flags are only checked against the pinned version.
QUANTIZATIONS = {
    "fp32": QuantSupport(NVIDIA, on_the_fly=True, from_checkpoint=False),
    "fp16": QuantSupport(NVIDIA, on_the_fly=True, from_checkpoint=False),
    "bf16": QuantSupport(NVIDIA, on_the_fly=True, from_checkpoint=False),
    "fp8": QuantSupport(NVIDIA, on_the_fly=True, from_checkpoint=True),
    "int8": QuantSupport(NVIDIA, on_the_fly=False, from_checkpoint=True),
    "int4": QuantSupport(NVIDIA, on_the_fly=False, from_checkpoint=True),
    "awq": QuantSupport(NVIDIA, on_the_fly=False, from_checkpoint=True),
    "gptq": QuantSupport(NVIDIA, on_the_fly=False, from_checkpoint=True),
}

CAPABILITIES = Capabilities(
    quantizations=QUANTIZATIONS,
    tensor_parallel=True,
    pipeline_parallel=True,
    multi_node=True,  # Ray executor (--distributed-executor-backend ray)
    prefix_caching=True,  # --enable-prefix-caching / --no-enable-prefix-caching
    kv_cache_dtypes={"nvidia": "fp8"},  # --kv-cache-dtype fp8 (vllm/config/cache.py)
    lora=True,
    # vllm/config/speculative.py `SpeculativeMethod`: "draft_model" raises
    # NotImplementedError in __post_init__ at v0.12.0, and "suffix" needs the optional
    # arctic-inference package the image does not carry; the rest work.
    speculative_methods=frozenset({"ngram", "eagle", "eagle3", "medusa", "mlp_speculator", "mtp"}),
    model_sources=frozenset({"hf", "pvc", "s3"}),  # s3: --load-format runai_streamer
    # vllm/config/model.py `_FLOAT16_NOT_SUPPORTED_MODELS` ("Numerical instability").
    float16_refused=frozenset({"gemma2", "gemma3", "gemma3_text", "plamo2", "glm4"}),
)

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# vllm/config/lora.py `MaxLoRARanks`: the ranks --max-lora-rank accepts.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# `vllm serve` defaults max-num-batched-tokens to 8192 on GPUs with at least 70 GiB that
# are not A100s, and to 2048 elsewhere (vllm/engine/arg_utils.py
# `EngineArgs.get_batch_defaults`, OPENAI_API_SERVER context; A100 excluded after vLLM
# PR #17885 measured lower throughput with the larger budget). The renderer passes the
# budget explicitly, so what the planner sizes is what the pod runs with.
LARGE_GPU_GIB = 70.0
SMALL_GPU_BATCHED_TOKENS = 2048


class Vllm(Engine):
    """vLLM's OpenAI-compatible server."""

    def refusals(self, ask: Ask) -> list[Refusal]:
        """The matrix, plus the LoRA rank limit (vllm/config/lora.py `MaxLoRARanks`)."""
        out = super().refusals(ask)
        too_big = [a.name for a in ask.lora_adapters if a.rank > max(LORA_RANKS)]
        if too_big:
            out.append(
                Refusal(
                    "spec.features.loraAdapters",
                    f"vLLM {VERSION} serves LoRA ranks up to {max(LORA_RANKS)}; "
                    f"{', '.join(too_big)} have more",
                )
            )
        return out

    def memory_on(self, memory_gib: float, gpu_name: str, accelerator: Accelerator) -> EngineMemory:
        """vLLM's prefill budget depends on the GPU (see LARGE_GPU_GIB)."""
        mem = super().memory_on(memory_gib, gpu_name, accelerator)
        if memory_gib < LARGE_GPU_GIB or "A100" in gpu_name.upper():
            return EngineMemory(
                utilization=mem.utilization,
                batched_tokens=SMALL_GPU_BATCHED_TOKENS,
                non_torch_gib=mem.non_torch_gib,
                comm_buffer_gib=mem.comm_buffer_gib,
            )
        return mem

    def args(self, launch: Launch) -> list[str]:
        """`vllm serve <model> ...` arguments (vllm/entrypoints/openai/cli_args.py and
        vllm/engine/arg_utils.py `EngineArgs.add_cli_args`)."""
        pairs: list[tuple[str, Any]] = [
            ("--port", launch.port),
            ("--served-model-name", launch.served_name),
            ("--tensor-parallel-size", launch.tensor_parallel),
            ("--pipeline-parallel-size", launch.pipeline_parallel),
            ("--max-model-len", launch.max_model_len),
            ("--max-num-seqs", max(1, launch.max_sequences)),
            ("--gpu-memory-utilization", launch.gpu_memory_utilization),
        ]
        if launch.batched_tokens:
            pairs.append(("--max-num-batched-tokens", launch.batched_tokens))
        if launch.checkpoint is None:
            if launch.quantization in DTYPES:
                pairs.append(("--dtype", DTYPES[launch.quantization]))
            elif launch.quantization == "fp8":
                pairs.append(("--quantization", "fp8"))
        # A pre-quantized checkpoint: no flag, vLLM reads its quantization_config.
        # `enable_prefix_caching: bool | None` becomes a BooleanOptionalAction
        # (vllm/engine/arg_utils.py `_compute_kwargs`).
        caching = "--no-enable-prefix-caching"
        if launch.prefix_caching:
            caching = "--enable-prefix-caching"
        pairs.append((caching, None))
        if launch.fp8_kv_cache:
            pairs.append(("--kv-cache-dtype", "fp8"))
        if launch.speculative is not None:
            spec = launch.speculative
            config: dict[str, Any] = {
                "method": spec.method,
                "num_speculative_tokens": spec.num_tokens,
            }
            if spec.model is not None:
                config["model"] = spec.model
            if spec.prompt_lookup_max is not None:
                config["prompt_lookup_max"] = spec.prompt_lookup_max
            if spec.prompt_lookup_min is not None:
                config["prompt_lookup_min"] = spec.prompt_lookup_min
            pairs.append(("--speculative-config", compact_json(config)))
        if launch.lora:
            # --lora-modules takes JSON items ({"name", "path"}): the `name=path` form
            # splits on every "=" (cli_args.py `LoRAParserAction`).
            pairs += [
                ("--enable-lora", None),
                ("--max-loras", len(launch.lora)),
                ("--max-lora-rank", ceil_to(max(a.rank for a in launch.lora), LORA_RANKS)),
                (
                    "--lora-modules",
                    [compact_json({"name": a.name, "path": a.source}) for a in launch.lora],
                ),
            ]
        if launch.revision:
            pairs.append(("--revision", launch.revision))
        if launch.model_source == "s3":
            pairs.append(("--load-format", "runai_streamer"))
        if launch.multi_node:
            pairs.append(("--distributed-executor-backend", "ray"))
        return [launch.model, *flatten(pairs)]

    def download_command(self, model: str, revision: str | None) -> list[str] | None:
        """huggingface_hub's snapshot_download, which the image carries (a vLLM
        dependency), into HF_HOME: the same cache layout `vllm serve` reads offline."""
        call = f"snapshot_download(repo_id={model!r}, revision={revision!r})"
        return ["python3", "-c", f"from huggingface_hub import snapshot_download; {call}"]

    def env(self, launch: Launch) -> list[dict[str, Any]]:
        """HOME and caches on a writable volume (the pod runs as a non-root UID with no
        passwd entry: USER keeps `getpass.getuser()` working, vllm/config/vllm.py), the
        Hugging Face cache on the model volume, and no usage-stats upload."""
        return sorted_env(
            {
                "HF_HOME": f"{launch.model_dir}/hf",
                "HOME": launch.home_dir,
                "USER": "vllm",
                "VLLM_NO_USAGE_STATS": "1",  # vllm/envs.py
            }
        )


# The reference efficiency of an optimised engine, checked by bench/calibration.py against
# ../shared/calibration/measured.csv (TensorRT-LLM and FasterTransformer rows): compute 0.70
# was that fit's value under the earlier timing model (TTFT rows within 5%). The engines
# the operator deploys are fitted on their own measurements (below; docs/planner.md).
REFERENCE = Efficiency(
    bandwidth=0.75,
    compute=0.70,
    step_overhead_ms=2.0,
    request_overhead_ms=5.0,
    allreduce_latency_us=10.0,
)

ENGINE = Vllm(
    name="vllm",
    version=VERSION,
    source=SOURCE,
    images={"nvidia": f"vllm/vllm-openai:{VERSION}"},
    capabilities=CAPABILITIES,
    # The memory split follows vLLM's profiler (gpu-memory-utilization 0.9 default, a
    # profiling pass of max-num-batched-tokens, non-torch 0.13 GiB measured in calibration
    # c20; NCCL/custom all-reduce buffers of ~0.5 GiB with TP > 1 are an assumption).
    memory=EngineMemory(
        utilization=0.90, batched_tokens=8192, non_torch_gib=0.13, comm_buffer_gib=0.5
    ),
    # Fitted by bench/calibrate_engines.py on bench/data/engine_measurements.csv (vLLM
    # 0.5-0.19 rows of sources S1, S3-S7: serving benchmarks at concurrency 1-8, bursts of
    # 100-1000 requests, MoE and dense models on A100/H100/H200/L4/L40S/A10G), rounded;
    # docs/planner.md gives the fit and its leave-one-source-out errors. allreduce_latency_us
    # is not fitted (the reference's assumption).
    efficiency=Efficiency(
        bandwidth=0.79,
        compute=0.56,
        step_overhead_ms=2.3,
        request_overhead_ms=34.0,
        allreduce_latency_us=REFERENCE.allreduce_latency_us,
        sequence_overhead_us=90.0,
        stream_overhead_us=48.0,
        admission_ms=8.3,
        moe_half_width=260.0,
    ),
    max_sequences=1024,
    # vllm/v1/metrics/loggers.py (PrometheusStatLogger): counter vllm:generation_tokens
    # (exposed with _total), gauges vllm:num_requests_running / _waiting and
    # vllm:kv_cache_usage_perc (0..1; vllm:gpu_cache_usage_perc before it).
    metrics=Metrics(
        output_tokens_per_second="rate(vllm:generation_tokens_total{$selector}[$window])",
        running_requests="vllm:num_requests_running{$selector}",
        waiting_requests="vllm:num_requests_waiting{$selector}",
        # NOTE: `or` keeps whichever of the two names a vLLM version exports.
        kv_cache_usage=(
            "vllm:kv_cache_usage_perc{$selector} or vllm:gpu_cache_usage_perc{$selector}"
        ),
        # Histograms of vllm/v1/metrics/loggers.py at v0.12.0: time_to_first_token_seconds
        # (arrival to first token) and request_time_per_output_token_seconds (per finished
        # request: decode time / (generated tokens - 1), v1/metrics/stats.py), whose means
        # are sum / count.
        ttft_seconds=(
            "sum $by (rate(vllm:time_to_first_token_seconds_sum{$selector}[$window])) / "
            "sum $by (rate(vllm:time_to_first_token_seconds_count{$selector}[$window]))"
        ),
        tpot_seconds=(
            "sum $by (rate(vllm:request_time_per_output_token_seconds_sum{$selector}[$window]))"
            " / sum $by "
            "(rate(vllm:request_time_per_output_token_seconds_count{$selector}[$window]))"
        ),
    ),
    # The image installs vLLM system-wide (uv pip install --system, docker/Dockerfile), so
    # any UID can run it once HOME points at a writable volume.
    pod_security="restricted",
    run_as_user=65532,
)
