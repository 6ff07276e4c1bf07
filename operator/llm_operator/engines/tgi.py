"""Text Generation Inference 3.3.6 (`text-generation-launcher`): capability matrix, images,
arguments, environment, metrics.

Read in TGI's source at the tag v3.3.6 (github.com/huggingface/text-generation-inference):
the launcher's clap `Args` (launcher/src/main.rs), its value enums and argument checks, the
router's checks (backends/v3/src/main.rs), the Dockerfiles and the image workflow. The
launcher is Rust and in no registry reachable here, so the rendered flags are checked in
`make test` against the launcher's argument list kept as data
(e2e/contracts/tgi-3.3.6-launcher.json, tests/test_engine_contracts.py). Called through the
registry in `engines/__init__.py`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from llm_operator.engines.base import (
    Accelerator,
    Ask,
    Capabilities,
    Engine,
    EngineMemory,
    Launch,
    Metrics,
    QuantSupport,
    Refusal,
    flatten,
    sorted_env,
)
from llm_operator.engines.vllm import ENGINE as VLLM

VERSION = "3.3.6"
SOURCE = "huggingface/text-generation-inference@v3.3.6"

NVIDIA: frozenset[Accelerator] = frozenset({"nvidia"})
GPUS: frozenset[Accelerator] = frozenset({"nvidia", "amd"})

# Quantizations (launcher/src/main.rs `Quantization`, `Dtype`). From a 16-bit checkpoint
# TGI casts (--dtype float16|bfloat16; there is no float32) or quantizes while loading:
# fp8 (--quantize fp8), int8 (--quantize eetq), int4 (--quantize bitsandbytes-nf4). A
# pre-quantized checkpoint (awq, gptq, fp8, compressed-tensors int8/int4) needs no flag:
# the launcher reads `quantization_config.quant_method` from config.json and passes it on
# (`let quantize = args.quantize.or(quantize)` in `main`). On ROCm, AWQ checkpoints are
# not supported (docs/source/installation_amd.md, "Unsupported features";
# server/text_generation_server/layers/gptq/__init__.py raises NotImplementedError), and
# EETQ and bitsandbytes are CUDA kernels.
QUANTIZATIONS = {
    "fp16": QuantSupport(GPUS, on_the_fly=True, from_checkpoint=False),
    "bf16": QuantSupport(GPUS, on_the_fly=True, from_checkpoint=False),
    "fp8": QuantSupport(NVIDIA, on_the_fly=True, from_checkpoint=True),
    "int8": QuantSupport(NVIDIA, on_the_fly=True, from_checkpoint=True),
    "int4": QuantSupport(NVIDIA, on_the_fly=True, from_checkpoint=True),
    "awq": QuantSupport(NVIDIA, on_the_fly=False, from_checkpoint=True),
    "gptq": QuantSupport(GPUS, on_the_fly=False, from_checkpoint=True),
}
ON_THE_FLY_FLAGS = {
    "fp16": ("--dtype", "float16"),
    "bf16": ("--dtype", "bfloat16"),
    "fp8": ("--quantize", "fp8"),
    "int8": ("--quantize", "eetq"),
    "int4": ("--quantize", "bitsandbytes-nf4"),
}

CAPABILITIES = Capabilities(
    quantizations=QUANTIZATIONS,
    tensor_parallel=True,  # --num-shard, within one node
    pipeline_parallel=False,
    multi_node=False,
    # The launcher reads PREFIX_CACHING from the environment (`resolve_attention`), and the
    # server honours "0" (server/text_generation_server/models/globals.py).
    prefix_caching=True,
    kv_cache_dtypes={"nvidia": "fp8"},  # --kv-cache-dtype fp8_e4m3fn (`KVCacheDtype`)
    lora=True,  # --lora-adapters
    speculative_methods=frozenset(),  # TGI speculates only with Medusa heads or n-grams
    # of its own choosing (--speculate); not offered through this API.
    model_sources=frozenset({"hf", "pvc"}),
)

# At least TGI's own default (128, `max_concurrent_requests`): above it the router answers
# 429 instead of queueing, so overload must queue well beyond the planned batch.
MIN_CONCURRENT_REQUESTS = 128
QUEUE_FACTOR = 4


class Tgi(Engine):
    """TGI's launcher: one router and --num-shard model shards in one pod."""

    def refusals(self, ask: Ask) -> list[Refusal]:
        """The matrix, plus LoRA naming: `--lora-adapters` names a Hub adapter by its id;
        only a local path can be given another name (`name=path`; launcher/src/main.rs
        skips the download of items containing '=')."""
        out = super().refusals(ask)
        for adapter in ask.lora_adapters:
            if adapter.name != adapter.source and not adapter.source.startswith("/"):
                out.append(
                    Refusal(
                        "spec.features.loraAdapters",
                        f"TGI names a Hub adapter by its id: set name to {adapter.source!r}, "
                        "or give a local path (on a PVC) as source",
                    )
                )
        return out

    def args(self, launch: Launch) -> list[str]:
        """`text-generation-launcher` arguments (the image's entrypoint execs it)."""
        pairs: list[tuple[str, Any]] = [
            ("--model-id", launch.model),
            ("--port", launch.port),
            ("--num-shard", launch.tensor_parallel),
            ("--max-input-tokens", launch.max_model_len - 1),
            ("--max-total-tokens", launch.max_model_len),
            (
                "--max-concurrent-requests",
                max(MIN_CONCURRENT_REQUESTS, QUEUE_FACTOR * max(1, launch.max_sequences)),
            ),
            ("--cuda-memory-fraction", launch.gpu_memory_utilization),
        ]
        # NOTE: --max-batch-total-tokens is left to TGI: for flash-attention models it
        # infers the largest value the memory left after warm-up holds (the flag's doc).
        if launch.accelerator == "amd":
            # The ROCm image turns prefill chunking off (PREFILL_CHUNKING=0, Dockerfile_amd),
            # and then the router needs the prefill budget to hold a whole prompt
            # (backends/v3/src/main.rs: max_batch_prefill_tokens >= max_input_tokens).
            pairs.append(("--max-batch-prefill-tokens", launch.max_model_len))
        if launch.checkpoint is None and launch.quantization in ON_THE_FLY_FLAGS:
            pairs.append(ON_THE_FLY_FLAGS[launch.quantization])
        if launch.fp8_kv_cache:
            pairs.append(("--kv-cache-dtype", "fp8_e4m3fn"))
        if launch.lora:
            pairs.append(
                (
                    "--lora-adapters",
                    ",".join(
                        a.source if a.name == a.source else f"{a.name}={a.source}"
                        for a in launch.lora
                    ),
                )
            )
        if launch.revision:
            pairs.append(("--revision", launch.revision))
        return flatten(pairs)

    def download_command(self, model: str, revision: str | None) -> list[str] | None:
        """TGI's own `text-generation-server download-weights` (the step the launcher runs
        before the shards start: it also converts .bin weights to safetensors), from the
        image's virtualenv (server/text_generation_server/cli.py at v3.3.6)."""
        command = ["text-generation-server", "download-weights", model]
        return [*command, "--revision", revision] if revision else command

    def env(self, launch: Launch) -> list[dict[str, Any]]:
        """The Hugging Face cache on the model volume, prefix caching as asked, and no
        usage-stats upload (`--usage-stats`, env USAGE_STATS)."""
        values = {"HF_HOME": f"{launch.model_dir}/hf", "USAGE_STATS": "off"}
        if not launch.prefix_caching:
            values["PREFIX_CACHING"] = "0"
        return sorted_env(values)


ENGINE = Tgi(
    name="tgi",
    version=VERSION,
    source=SOURCE,
    # .github/workflows/build.yaml at v3.3.6: tags `{{version}}${LABEL_EXTENSION}`, with
    # the extension "-rocm" for the ROCm build (Dockerfile_amd).
    images={
        "nvidia": f"ghcr.io/huggingface/text-generation-inference:{VERSION}",
        "amd": f"ghcr.io/huggingface/text-generation-inference:{VERSION}-rocm",
    },
    capabilities=CAPABILITIES,
    # Warm-up runs a prefill of --max-batch-prefill-tokens (4096 by default) and gives
    # the rest to the KV cache; the renderer passes --cuda-memory-fraction, so the plan's
    # utilisation is what the shard uses.
    memory=EngineMemory(
        utilization=0.95, batched_tokens=4096, non_torch_gib=0.5, comm_buffer_gib=0.5
    ),
    # Fitted by bench/calibrate_engines.py on bench/data/engine_measurements.csv: TGI's
    # rows (S3 wall times of k6 runs, S9 prefill steps on an A100) measure prefill, so only
    # the compute efficiency is TGI's own; the rest is vLLM's fit (an assumption: no row
    # measures TGI's decode step, host costs or request overhead). docs/planner.md.
    efficiency=replace(VLLM.efficiency, compute=0.88),
    max_sequences=512,
    # router/src/server.rs and backends/v3/src/{queue,backend}.rs: histogram
    # tgi_request_generated_tokens (observed when a request ends), gauges tgi_queue_size
    # and tgi_batch_current_size; no KV gauge.
    metrics=Metrics(
        output_tokens_per_second="rate(tgi_request_generated_tokens_sum{$selector}[$window])",
        running_requests="tgi_batch_current_size{$selector}",
        waiting_requests="tgi_queue_size{$selector}",
        kv_cache_usage=None,
        # NOTE: the router measures no time to first token (its per-request histograms are
        # validation, queue and whole inference); tgi_request_mean_time_per_token_duration
        # is each request's inference time over its generated tokens (router/src/server.rs),
        # the prefill spread over the tokens: a little above vLLM's TPOT for short replies.
        ttft_seconds=None,
        tpot_seconds=(
            "sum $by (rate(tgi_request_mean_time_per_token_duration_sum{$selector}[$window]))"
            " / sum $by "
            "(rate(tgi_request_mean_time_per_token_duration_count{$selector}[$window]))"
        ),
    ),
    # NOTE: the image's Python lives under /root (uv's interpreter,
    # /root/.local/share/uv/python, Dockerfile at v3.3.6), which only root can read, and
    # its entrypoint runs ldconfig: TGI runs as the image's root user, so its pods meet
    # the `baseline` Pod Security level, not `restricted` (docs/engines.md).
    pod_security="baseline",
    run_as_user=None,
)
