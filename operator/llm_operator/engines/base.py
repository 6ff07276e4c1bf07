"""The one small interface every serving engine implements, and the data it is made of.

An `Engine` is everything the operator knows about one engine at one pinned version: what
it can serve (`Capabilities`, the capability matrix), its images per accelerator, its
command line and environment (`args`, `env`), its metric names (`Metrics`) and the
planner's parameters for it (`EngineMemory`, `Efficiency`, `max_sequences`). The planner,
the renderer, the autoscaler and the API's validation all ask the engine, so nothing can be
planned that the engine refuses. Pure: no I/O; the inputs are plain values (this package
imports nothing from the API models, so that the API can generate CEL rules from it).
Called by `engines/__init__.py` (the registry) and the three engine modules.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Accelerator = Literal["nvidia", "amd", "cpu"]
ACCELERATORS: tuple[Accelerator, ...] = ("nvidia", "amd", "cpu")
PodSecurityLevel = Literal["restricted", "baseline"]

# Quantizations a 16-bit checkpoint can be served as without a quantized checkpoint:
# a cast (fp32/fp16/bf16) or quantization while loading (`on_the_fly` in `QuantSupport`).
SIXTEEN_BIT = frozenset({"fp32", "fp16", "bf16"})


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
        sequence_overhead_us: host cost per running sequence per step in the engine's own
            loop (scheduling, input preparation, sampling), in series with the device.
        stream_overhead_us: host cost per running sequence per step of turning tokens into
            response streams (detokenising, sending), done by another process while the
            device runs: a step lasts at least this times the sequences.
        layer_overhead_us: kernel launch cost per layer per step, for an engine that runs
            its layers without CUDA graphs.
        admission_ms: host time to admit one request (parse, chat template, tokenise),
            spent one request at a time: requests that arrive together queue for it.
        moe_half_width: the per-GPU expert width (intermediate size / TP) at which MoE
            expert layers reach half the dense efficiencies: grouped GEMMs over narrow
            experts fill the GPU's tiles poorly (efficiency width / (width + this)).
    """

    bandwidth: float
    compute: float
    step_overhead_ms: float
    request_overhead_ms: float
    allreduce_latency_us: float
    sequence_overhead_us: float = 0.0
    stream_overhead_us: float = 0.0
    layer_overhead_us: float = 0.0
    admission_ms: float = 0.0
    moe_half_width: float = 0.0

    def calibrated(self, decode: float, prefill: float) -> Efficiency:
        """These efficiencies with every decode-step cost `decode` times and every prefill
        and request cost `prefill` times what they were (a fleet calibration,
        `catalog.Calibration`): decode steps read memory and run host work, prefills
        compute, so a step that mixes both keeps the physics of the two rooflines."""
        return replace(
            self,
            bandwidth=self.bandwidth / decode,
            step_overhead_ms=self.step_overhead_ms * decode,
            allreduce_latency_us=self.allreduce_latency_us * decode,
            sequence_overhead_us=self.sequence_overhead_us * decode,
            stream_overhead_us=self.stream_overhead_us * decode,
            layer_overhead_us=self.layer_overhead_us * decode,
            compute=self.compute / prefill,
            request_overhead_ms=self.request_overhead_ms * prefill,
            admission_ms=self.admission_ms * prefill,
        )


@dataclass(frozen=True)
class EngineMemory:
    """How an engine carves up device memory.

    Attributes:
        utilization: fraction of device memory the engine may use (vLLM
            --gpu-memory-utilization; TGI --cuda-memory-fraction; llama.cpp: what we leave).
        batched_tokens: tokens in the profiling/warm-up forward pass that sets the activation
            peak (vLLM max-num-batched-tokens, TGI max-batch-prefill-tokens, llama.cpp ubatch).
        non_torch_gib: CUDA context, allocator and library memory outside activations.
        comm_buffer_gib: extra per GPU when TP > 1 (NCCL and custom all-reduce buffers).
    """

    utilization: float
    batched_tokens: int
    non_torch_gib: float
    comm_buffer_gib: float


@dataclass(frozen=True)
class QuantSupport:
    """How an engine serves one quantization (a row of the capability matrix).

    Attributes:
        accelerators: where it works at the pinned version.
        on_the_fly: served from a 16-bit checkpoint (a cast, or quantized while loading).
        from_checkpoint: served from a checkpoint already stored in this format.
    """

    accelerators: frozenset[Accelerator]
    on_the_fly: bool
    from_checkpoint: bool


@dataclass(frozen=True)
class Capabilities:
    """What an engine supports at its pinned version (each entry cites the engine's source
    in the engine's module).

    Attributes:
        quantizations: quantization -> how it is supported.
        tensor_parallel: shards a replica over GPUs of one node.
        pipeline_parallel: splits layers over GPUs.
        multi_node: one replica may span nodes.
        prefix_caching: automatic prefix caching can be switched on and off.
        kv_cache_dtypes: 8-bit KV cache formats it offers, per accelerator (`fp8` or `q8_0`).
        lora: serves LoRA adapters next to the base model.
        speculative_methods: speculative decoding methods that work.
        model_sources: where it loads weights from (hf, pvc, s3, url).
        float16_refused: model types (config.json model_type) it refuses to run in float16.
    """

    quantizations: Mapping[str, QuantSupport]
    tensor_parallel: bool
    pipeline_parallel: bool
    multi_node: bool
    prefix_caching: bool
    kv_cache_dtypes: Mapping[Accelerator, str]
    lora: bool
    speculative_methods: frozenset[str]
    model_sources: frozenset[str]
    float16_refused: frozenset[str] = frozenset()

    @property
    def accelerators(self) -> frozenset[Accelerator]:
        """Every accelerator some quantization runs on."""
        return frozenset(a for q in self.quantizations.values() for a in q.accelerators)


@dataclass(frozen=True)
class Lora:
    """One LoRA adapter: the name clients request, where it is, its rank."""

    name: str
    source: str
    rank: int


@dataclass(frozen=True)
class Ask:
    """What a deployment asks of an engine, as plain values (for `Engine.refusals`).

    Attributes:
        quantization: the concrete quantization to serve.
        checkpoint: the checkpoint's own format: None for a 16/32-bit checkpoint, else the
            quantization it is stored in (awq, gptq, fp8, int8, int4, or a GGUF type).
        model_type: config.json model_type, when known.
        accelerator: where it would run; None when not decided yet.
        model_source: hf, pvc, s3 or url.
        gguf_repo: whether a GGUF repository is known for the model (llama.cpp from hf).
        prefix_caching: whether prefix caching is asked for.
        fp8_kv_cache: whether an 8-bit KV cache is asked for.
        lora_adapters: the LoRA adapters asked for.
        speculative_method: the speculative decoding method asked for, if any.
        multi_node: whether one replica spans nodes.
    """

    quantization: str
    checkpoint: str | None = None
    model_type: str | None = None
    accelerator: Accelerator | None = None
    model_source: str = "hf"
    gguf_repo: bool = False
    prefix_caching: bool = True
    fp8_kv_cache: bool = False
    lora_adapters: tuple[Lora, ...] = ()
    speculative_method: str | None = None
    multi_node: bool = False


@dataclass(frozen=True)
class Refusal:
    """Why an engine cannot serve what is asked: the spec field, and what to do.

    Attributes:
        field: the spec field to change, e.g. `spec.quantization`.
        message: one sentence naming the limit and the fix.
    """

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class Speculative:
    """Speculative decoding as the engine should run it."""

    method: str
    model: str | None
    num_tokens: int
    prompt_lookup_max: int | None = None
    prompt_lookup_min: int | None = None


@dataclass(frozen=True)
class Launch:
    """Everything an engine's command line and environment depend on (plain values).

    Attributes:
        model: what the engine loads: a Hugging Face id, a local path, an s3:// URI or URL.
        model_source: hf, pvc, s3 or url.
        gguf_file: for llama.cpp from the Hub: `<repo>:<QUANT>`; None otherwise.
        served_name: the model name clients send.
        revision: Hugging Face revision, if pinned.
        port: the HTTP port.
        quantization: the plan's quantization.
        checkpoint: the checkpoint's own format (see `Ask.checkpoint`).
        accelerator: nvidia, amd or cpu.
        tensor_parallel: TP degree.
        pipeline_parallel: PP degree.
        multi_node: whether the replica spans nodes.
        max_model_len: longest sequence one request may have.
        max_sequences: sequences the engine runs at once (llama.cpp: slots).
        batched_tokens: prefill token budget per step, when the plan set one.
        gpu_memory_utilization: the fraction of device memory the plan sized for.
        threads: CPU threads for CPU inference (0 on GPUs).
        prefix_caching: prefix caching on or off.
        fp8_kv_cache: 8-bit KV cache.
        speculative: speculative decoding, if asked.
        lora: LoRA adapters.
        model_dir: where the model cache volume is mounted.
        home_dir: a writable directory for HOME and caches.
    """

    model: str
    model_source: str
    served_name: str
    port: int
    quantization: str
    accelerator: Accelerator
    max_model_len: int
    max_sequences: int
    model_dir: str
    home_dir: str
    gguf_file: str | None = None
    revision: str | None = None
    checkpoint: str | None = None
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    multi_node: bool = False
    batched_tokens: int | None = None
    gpu_memory_utilization: float = 0.9
    threads: int = 0
    prefix_caching: bool = True
    fp8_kv_cache: bool = False
    speculative: Speculative | None = None
    lora: tuple[Lora, ...] = ()


@dataclass(frozen=True)
class Metrics:
    """PromQL expressions of one engine's own metrics, per pod; `$selector` is the label
    matcher and `$window` the rate window. The autoscaler aggregates them by
    (namespace, llmdeployment): sums, and the mean for KV-cache usage.

    Attributes:
        output_tokens_per_second: generated tokens/s of a pod.
        running_requests: requests being generated.
        waiting_requests: requests queued.
        kv_cache_usage: KV-cache usage 0..1, or None when the engine has no gauge.
        ttft_seconds: mean time to first token over the window, already aggregated with
            `$by` (the grouping), or None when the engine does not measure it.
        tpot_seconds: mean time per output token of the requests finished in the window
            (each request's decode time over its tokens after the first), aggregated with
            `$by`, or None.
    """

    output_tokens_per_second: str
    running_requests: str
    waiting_requests: str
    kv_cache_usage: str | None
    ttft_seconds: str | None = None
    tpot_seconds: str | None = None


@dataclass(frozen=True)
class Engine(ABC):
    """One serving engine at one pinned version.

    Attributes:
        name: engine id as used in the API.
        version: the pinned release.
        source: where its behaviour was read (repository at the pinned tag).
        images: accelerator -> image; an accelerator without an image is unsupported.
        capabilities: the capability matrix.
        memory: how it carves up device memory (planner).
        efficiency: calibrated roofline efficiencies (planner).
        max_sequences: cap on concurrently running sequences the planner configures.
        metrics: its Prometheus metric queries (autoscaler).
        pod_security: the Pod Security Standard level its pods meet.
        run_as_user: the UID its container runs as; None keeps the image's (root) user.
    """

    name: str
    version: str
    source: str
    images: Mapping[Accelerator, str]
    capabilities: Capabilities
    memory: EngineMemory
    efficiency: Efficiency
    max_sequences: int
    metrics: Metrics
    pod_security: PodSecurityLevel
    run_as_user: int | None
    notes: Mapping[str, str] = field(default_factory=dict)

    def image(self, accelerator: Accelerator) -> str:
        """The pinned image for an accelerator.

        Raises:
            KeyError: the engine has no image for it (`refusals` says so first).
        """
        return self.images[accelerator]

    def memory_on(self, memory_gib: float, gpu_name: str, accelerator: Accelerator) -> EngineMemory:
        """How the engine carves up the memory of one device (defaults to `memory`)."""
        del memory_gib, gpu_name
        if accelerator == "cpu":
            return EngineMemory(
                utilization=self.memory.utilization,
                batched_tokens=self.memory.batched_tokens,
                non_torch_gib=0.0,
                comm_buffer_gib=self.memory.comm_buffer_gib,
            )
        return self.memory

    def kv_cache_element_bytes(
        self, quantization: str, fp8_kv_cache: bool, accelerator: Accelerator | None
    ) -> float:
        """Bytes per KV cache element as the engine stores it.

        16 bits by default, 32 for fp32 models; with `fp8_kv_cache` the engine's 8-bit
        format on this accelerator (1 byte for FP8, 34/32 for llama.cpp's q8_0 blocks).
        """
        if fp8_kv_cache:
            kind = self.capabilities.kv_cache_dtypes.get(accelerator or "nvidia")
            if kind == "q8_0":
                return 34 / 32  # ggml block_q8_0: 32 int8 values and one fp16 scale
            if kind == "fp8":
                return 1.0
        return 4.0 if quantization == "fp32" else 2.0

    def refusals(self, ask: Ask) -> list[Refusal]:
        """Everything in `ask` that the capability matrix forbids (empty: supported).

        Checked by the planner for every candidate and by the operator/`llmctl` before
        planning; the messages name the spec field and the fix.
        """
        caps = self.capabilities
        out: list[Refusal] = []
        support = caps.quantizations.get(ask.quantization)
        served = ", ".join(sorted(caps.quantizations))
        if support is None:
            out.append(
                Refusal(
                    "spec.quantization",
                    f"{self.name} {self.version} does not serve {ask.quantization} "
                    f"(it serves {served}); choose one of those or another engine",
                )
            )
        else:
            out.extend(self._checkpoint_refusals(ask, support))
            if ask.accelerator is not None and ask.accelerator not in support.accelerators:
                where = ", ".join(sorted(support.accelerators)) or "nowhere"
                out.append(
                    Refusal(
                        "spec.hardware.gpuTypes",
                        f"{self.name} {self.version} serves {ask.quantization} on {where} "
                        f"only, not on {ask.accelerator}",
                    )
                )
        if ask.accelerator is not None and ask.accelerator not in self.images:
            out.append(
                Refusal(
                    "spec.hardware.gpuTypes",
                    f"{self.name} {self.version} has no verified {ask.accelerator} image; "
                    "choose another engine or GPU type",
                )
            )
        if (
            ask.quantization == "fp16"
            and ask.model_type is not None
            and ask.model_type in caps.float16_refused
        ):
            out.append(
                Refusal(
                    "spec.quantization",
                    f"{self.name} refuses float16 for {ask.model_type} models (numerical "
                    "instability); use bf16 or fp32",
                )
            )
        if ask.model_source not in caps.model_sources:
            sources = ", ".join(sorted(caps.model_sources))
            out.append(
                Refusal(
                    "spec.model.source",
                    f"{self.name} loads models from {sources}, not {ask.model_source}: "
                    "change spec.model.source or choose another engine",
                )
            )
        if not ask.prefix_caching and not caps.prefix_caching:
            out.append(
                Refusal(
                    "spec.features.prefixCaching",
                    f"{self.name} cannot switch prefix caching off; set it to true",
                )
            )
        if ask.fp8_kv_cache:
            kinds = caps.kv_cache_dtypes
            if not kinds or (ask.accelerator is not None and ask.accelerator not in kinds):
                where = f" on {ask.accelerator}" if ask.accelerator else ""
                out.append(
                    Refusal(
                        "spec.features.fp8KvCache",
                        f"{self.name} has no 8-bit KV cache{where}; set it to false",
                    )
                )
        if ask.lora_adapters and not caps.lora:
            out.append(
                Refusal(
                    "spec.features.loraAdapters",
                    f"{self.name} does not serve LoRA adapters here; use vllm or tgi",
                )
            )
        if ask.speculative_method is not None and (
            ask.speculative_method not in caps.speculative_methods
        ):
            methods = ", ".join(sorted(caps.speculative_methods)) or "none"
            out.append(
                Refusal(
                    "spec.features.speculativeDecoding.method",
                    f"{self.name} {self.version} does not support speculative method "
                    f"{ask.speculative_method} (supported: {methods})",
                )
            )
        if ask.multi_node and not caps.multi_node:
            out.append(
                Refusal(
                    "spec.hardware",
                    f"{self.name} cannot span a replica over nodes; choose GPUs that hold "
                    "the model on one node, or vllm",
                )
            )
        return out

    def _checkpoint_refusals(self, ask: Ask, support: QuantSupport) -> list[Refusal]:
        """A quantization must match the checkpoint: a quantized checkpoint is served in its
        own format, and a 16-bit one only in the formats the engine makes while loading."""
        if ask.checkpoint is not None:
            if ask.checkpoint == ask.quantization and support.from_checkpoint:
                return []
            if ask.checkpoint == ask.quantization:
                return [
                    Refusal(
                        "spec.model.name",
                        f"{self.name} does not load {ask.quantization} checkpoints; "
                        "choose another engine",
                    )
                ]
            return [
                Refusal(
                    "spec.quantization",
                    f"the checkpoint is stored as {ask.checkpoint}: set quantization to "
                    f"{ask.checkpoint} (or auto), or name a checkpoint stored as "
                    f"{ask.quantization}",
                )
            ]
        if support.on_the_fly:
            return []
        hint = " or use fp8, which is quantized while loading" if self._fp8_on_the_fly() else ""
        return [
            Refusal(
                "spec.model.name",
                f"{self.name} serves {ask.quantization} only from a checkpoint quantized "
                f"that way, and this one is stored in 16 bits: name a {ask.quantization} "
                f"checkpoint{hint}",
            )
        ]

    def _fp8_on_the_fly(self) -> bool:
        fp8 = self.capabilities.quantizations.get("fp8")
        return fp8 is not None and fp8.on_the_fly

    def download_command(self, model: str, revision: str | None) -> list[str] | None:
        """The command, in the engine's own image, that downloads `model` into HF_HOME for a
        shared cache; None when the engine cannot fill one (the capability matrix row)."""
        del model, revision
        return None

    @abstractmethod
    def args(self, launch: Launch) -> list[str]:
        """The engine's arguments (the container's args; vLLM: after `vllm serve`)."""

    @abstractmethod
    def env(self, launch: Launch) -> list[dict[str, Any]]:
        """The engine's environment variables (name/value dicts, sorted by name)."""

    def downloaded_format(self, quantization: str, checkpoint: str | None) -> str:
        """The format of the checkpoint the engine downloads, to size the model cache.

        A pre-quantized checkpoint is downloaded as stored; a 16-bit checkpoint is
        downloaded whole, also when it is cast or quantized while loading.
        """
        if checkpoint is not None:
            return checkpoint
        return "fp32" if quantization == "fp32" else "bf16"


def flatten(pairs: Sequence[tuple[str, Any]]) -> list[str]:
    """Sorted flag/value pairs flattened to argv, each flag next to its value(s).

    A value None is a switch; a list is several values after one flag.
    """
    out: list[str] = []
    for flag, value in sorted(pairs, key=lambda p: p[0]):
        out.append(flag)
        if isinstance(value, list):
            out.extend(str(v) for v in value)
        elif value is not None:
            out.append(str(value))
    return out


def compact_json(value: Mapping[str, Any]) -> str:
    """JSON for a flag value: sorted keys, no spaces (stable across renders)."""
    return json.dumps(dict(value), sort_keys=True, separators=(",", ":"))


def sorted_env(pairs: Mapping[str, str]) -> list[dict[str, Any]]:
    """name/value env entries sorted by name."""
    return [{"name": k, "value": v} for k, v in sorted(pairs.items())]


def ceil_to(value: int, allowed: Sequence[int]) -> int:
    """The smallest allowed value >= value (the largest when none is)."""
    for option in sorted(allowed):
        if option >= value:
            return option
    return max(allowed)
