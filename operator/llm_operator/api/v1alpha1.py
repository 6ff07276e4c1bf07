"""The LLMDeployment API, version v1alpha1: pydantic models that are the source of truth.

The CRD in `crds/` is generated from these models (`llm_operator.api.crd`), so every
field description here becomes `kubectl explain` text and every cross-field rule is
written once (`Rule`) and enforced twice: by the apiserver as a CEL
`x-kubernetes-validations` rule and by pydantic when `llmctl` reads a file offline.

Called by: the planner and renderer (read the spec), the operator (validates the
custom object and writes `status`), `llmctl` (reads example files).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

GROUP = "serving.llm-operator.io"
VERSION = "v1alpha1"
KIND = "LLMDeployment"
PLURAL = "llmdeployments"
SINGULAR = "llmdeployment"
SHORT_NAMES = ("llmd",)
API_VERSION = f"{GROUP}/{VERSION}"

Quantization = Literal[
    "auto", "fp32", "fp16", "bf16", "fp8", "int8", "int4", "awq", "gptq", "q4_k_m", "q5_k_m", "q8_0"
]
ConcreteQuantization = Literal[
    "fp32", "fp16", "bf16", "fp8", "int8", "int4", "awq", "gptq", "q4_k_m", "q5_k_m", "q8_0"
]
EngineName = Literal["auto", "vllm", "tgi", "llamacpp"]
ConcreteEngine = Literal["vllm", "tgi", "llamacpp"]
ModelSourceKind = Literal["hf", "pvc", "s3", "url"]
ScalingMode = Literal["builtin", "external"]

GGUF_QUANTIZATIONS: tuple[str, ...] = ("q4_k_m", "q5_k_m", "q8_0")
QUANTIZATIONS: tuple[str, ...] = Quantization.__args__  # type: ignore[attr-defined]
ENGINES: tuple[str, ...] = EngineName.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, written once for the apiserver (CEL) and for pydantic.

    Attributes:
        cel: the CEL expression, evaluated with `self` bound to the object it sits on.
        message: what the user reads when the rule fails; names the field and the fix.
        check: the same rule in Python, given the model instance.
        field_path: optional JSON path (relative to the object) the error is reported on.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None


class ApiModel(BaseModel):
    """Base for every API object: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        if cls.rules:
            target = handler.resolve_ref_schema(json_schema)
            target["x-kubernetes-validations"] = [
                {"rule": r.cel, "message": r.message}
                | ({"fieldPath": r.field_path} if r.field_path else {})
                for r in cls.rules
            ]
        return json_schema

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for rule in self.rules:
            if not rule.check(self):
                raise ValueError(rule.message)
        return self


class Architecture(ApiModel):
    """Transformer shape, enough to size weights, KV cache and compute."""

    params: int | None = Field(
        None,
        ge=1,
        description="params is the total parameter count (all experts for MoE). "
        "Computed from the shape when omitted.",
    )
    active_params: int | None = Field(
        None,
        ge=1,
        description="activeParams is the parameter count used per token (MoE only); "
        "defaults to params.",
    )
    layers: int = Field(..., ge=1, description="layers is num_hidden_layers from config.json.")
    hidden_size: int = Field(..., ge=1, description="hiddenSize is hidden_size from config.json.")
    attention_heads: int = Field(
        ..., ge=1, description="attentionHeads is num_attention_heads from config.json."
    )
    kv_heads: int | None = Field(
        None,
        ge=1,
        description="kvHeads is num_key_value_heads (GQA/MQA); defaults to attentionHeads.",
    )
    head_dim: int | None = Field(
        None, ge=1, description="headDim is head_dim; defaults to hiddenSize / attentionHeads."
    )
    intermediate_size: int = Field(
        ..., ge=1, description="intermediateSize is the MLP (per expert for MoE) width."
    )
    vocab_size: int = Field(..., ge=1, description="vocabSize is vocab_size from config.json.")
    max_context: int = Field(
        ..., ge=1, description="maxContext is the longest context the model supports, in tokens."
    )
    tie_word_embeddings: bool = Field(
        False,
        description="tieWordEmbeddings is true when the output head shares the embedding matrix.",
    )
    experts: int | None = Field(
        None, ge=1, description="experts is the number of routed experts per MoE layer."
    )
    experts_per_token: int | None = Field(
        None, ge=1, description="expertsPerToken is how many experts each token is routed to."
    )
    kv_lora_rank: int | None = Field(
        None,
        ge=1,
        description="kvLoraRank is the compressed KV latent rank of multi-head latent "
        "attention (MLA, DeepSeek-V2/V3).",
    )
    qk_rope_head_dim: int | None = Field(
        None, ge=0, description="qkRopeHeadDim is the decoupled RoPE key width of MLA."
    )
    sliding_window: int | None = Field(
        None, ge=1, description="slidingWindow is the attention window of sliding-window layers."
    )
    sliding_window_layers: int | None = Field(
        None,
        ge=0,
        description="slidingWindowLayers is how many layers use the window; "
        "defaults to all layers when slidingWindow is set.",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.experts) || (has(self.expertsPerToken) && "
            "self.expertsPerToken <= self.experts)",
            message="architecture.expertsPerToken must be set and at most experts for MoE models",
            check=lambda a: (
                a.experts is None
                or (a.experts_per_token is not None and a.experts_per_token <= a.experts)
            ),
        ),
        Rule(
            cel="!has(self.kvLoraRank) || has(self.qkRopeHeadDim)",
            message="architecture.qkRopeHeadDim must be set with kvLoraRank (MLA)",
            check=lambda a: a.kv_lora_rank is None or a.qk_rope_head_dim is not None,
        ),
        Rule(
            cel="!has(self.slidingWindowLayers) || self.slidingWindowLayers <= self.layers",
            message="architecture.slidingWindowLayers must be at most layers",
            check=lambda a: a.sliding_window_layers is None or a.sliding_window_layers <= a.layers,
        ),
    )

    @property
    def kv_heads_or_default(self) -> int:
        """Key/value heads, defaulting to the attention heads (plain multi-head attention)."""
        return self.kv_heads or self.attention_heads

    @property
    def head_dim_or_default(self) -> int:
        """Head width, defaulting to hiddenSize / attentionHeads."""
        return self.head_dim or self.hidden_size // self.attention_heads

    @property
    def is_moe(self) -> bool:
        """Whether the model routes tokens to a subset of experts."""
        return self.experts is not None and self.experts > 1

    @property
    def is_mla(self) -> bool:
        """Whether the model uses multi-head latent attention."""
        return self.kv_lora_rank is not None


class SecretKeyRef(ApiModel):
    """A key in a Secret in the LLMDeployment's namespace."""

    name: str = Field(..., min_length=1, description="name of the Secret.")
    key: str = Field("token", min_length=1, description="key in the Secret's data.")


class ModelSpec(ApiModel):
    """Which model to serve and where its weights come from."""

    name: str = Field(
        ...,
        min_length=1,
        description="name is a Hugging Face id (e.g. meta-llama/Llama-3.1-70B-Instruct) or a "
        "catalog alias (e.g. llama-3.1-70b). `llmctl catalog models` lists them.",
    )
    architecture: Architecture | None = Field(
        None,
        description="architecture describes a model that is not in the catalog; "
        "when set it overrides the catalog entry.",
    )
    source: ModelSourceKind = Field(
        "hf",
        description="source of the weights: hf (Hugging Face Hub), pvc (a PersistentVolumeClaim), "
        "s3 (an S3 URI) or url (a GGUF file URL for llama.cpp).",
    )
    uri: str | None = Field(
        None,
        description="uri locates the weights: the PVC name for pvc, s3://bucket/prefix for s3, "
        "an https URL of a .gguf file for url. Ignored for hf.",
    )
    revision: str | None = Field(
        None, description="revision is the Hugging Face branch, tag or commit to serve."
    )
    hf_token_secret: SecretKeyRef | None = Field(
        None,
        description="hfTokenSecret references a Secret holding the Hugging Face token "
        "(gated models). Tokens are never written inline.",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.source == 'hf' || has(self.uri)",
            message="model.uri is required when model.source is pvc, s3 or url",
            check=lambda m: m.source == "hf" or m.uri is not None,
            field_path=".uri",
        ),
    )


class ContextSpec(ApiModel):
    """How long a sequence (prompt plus output) the deployment accepts."""

    max_model_len: int | Literal["auto"] = Field(
        "auto",
        description="maxModelLen is the longest sequence in tokens, or auto: the largest that "
        "fits the chosen hardware, capped by the model's maximum context.",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="type(self.maxModelLen) == int ? self.maxModelLen >= 16 : "
            "self.maxModelLen == 'auto'",
            message="context.maxModelLen must be an integer of at least 16 or the string auto",
            check=lambda c: (
                c.max_model_len == "auto"
                or (isinstance(c.max_model_len, int) and c.max_model_len >= 16)
            ),
            field_path=".maxModelLen",
        ),
    )


class SloSpec(ApiModel):
    """Latency objectives the plan must meet."""

    ttft_ms_p95: float | None = Field(
        None, gt=0, description="ttftMsP95 is the p95 time to first token in milliseconds."
    )
    tpot_ms_p95: float | None = Field(
        None, gt=0, description="tpotMsP95 is the p95 time per output token in milliseconds."
    )


class WorkloadSpec(ApiModel):
    """The traffic the deployment should serve."""

    input_tokens: int = Field(1024, ge=1, description="inputTokens is the typical prompt length.")
    output_tokens: int = Field(
        256, ge=1, description="outputTokens is the typical completion length."
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        description="concurrency is the number of requests in flight per replica to plan for; "
        "defaults to as many as fit in the KV cache.",
    )
    target_output_tokens_per_second: float | None = Field(
        None,
        gt=0,
        description="targetOutputTokensPerSecond is the total output token rate to provision "
        "for; sets the initial replica count.",
    )
    slo: SloSpec | None = Field(None, description="slo holds latency objectives.")


class Toleration(ApiModel):
    """A pod toleration, passed through unchanged (core/v1 Toleration)."""

    key: str | None = Field(None, description="key is the taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] | None = Field(
        None, description="operator is Exists or Equal."
    )
    value: str | None = Field(None, description="value is the taint value to match.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="effect is the taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        None, description="tolerationSeconds bounds how long a NoExecute taint is tolerated."
    )


class HardwareSpec(ApiModel):
    """Which hardware the planner may choose from."""

    gpu_types: list[str] = Field(
        default_factory=list,
        description="gpuTypes lists allowed GPU types by catalog id or alias (e.g. H100, A10G); "
        "empty allows every type in the catalog.",
    )
    provisionable_gpu_types: list[str] = Field(
        default_factory=list,
        description="provisionableGpuTypes lists GPU types a cluster autoscaler can add nodes "
        "of, so the operator may plan for them even when no such node exists yet.",
    )
    gpus_per_node: int | None = Field(
        None,
        ge=1,
        description="gpusPerNode overrides the catalog's GPUs per node for the chosen type.",
    )
    allow_cpu: bool = Field(
        False, description="allowCpu lets the planner choose CPU nodes (llama.cpp)."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="nodeSelector is added to the pods' node selector.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="tolerations are added to the pods' tolerations."
    )


class ScalingSpec(ApiModel):
    """Replica bounds and how the autoscaler behaves."""

    mode: ScalingMode = Field(
        "builtin",
        description="mode builtin lets the operator's autoscaler set replicas; external leaves "
        "them to an HPA/KEDA acting on the scale subresource (spec.replicas).",
    )
    min_replicas: int = Field(
        1,
        ge=0,
        description="minReplicas is the fewest replicas (0 allows scale to zero, see "
        "scaleToZeroAfterSeconds).",
    )
    max_replicas: int = Field(4, ge=1, description="maxReplicas is the most replicas.")
    target_utilization: float = Field(
        0.8,
        gt=0,
        le=1,
        description="targetUtilization is the fraction of a replica's predicted output tokens/s "
        "the autoscaler aims for.",
    )
    scale_up_stabilization_seconds: int = Field(
        30, ge=0, description="scaleUpStabilizationSeconds: demand must persist this long."
    )
    scale_down_stabilization_seconds: int = Field(
        300, ge=0, description="scaleDownStabilizationSeconds: low demand must persist this long."
    )
    scale_to_zero_after_seconds: int | None = Field(
        None,
        ge=0,
        description="scaleToZeroAfterSeconds removes every replica after this long without "
        "traffic; needs minReplicas 0.",
    )
    tolerance: float = Field(
        0.1,
        ge=0,
        le=1,
        description="tolerance is the relative change in demand the autoscaler ignores "
        "around the current replica count (0.1: within 10%, keep the count).",
    )
    tokens_per_second_query: str | None = Field(
        None,
        description="tokensPerSecondQuery overrides the PromQL query for observed output "
        "tokens/s; $namespace and $name are substituted.",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="scaling.minReplicas must be less than or equal to scaling.maxReplicas",
            check=lambda s: s.min_replicas <= s.max_replicas,
            field_path=".minReplicas",
        ),
        Rule(
            cel="!has(self.scaleToZeroAfterSeconds) || self.minReplicas == 0",
            message="scaling.scaleToZeroAfterSeconds needs scaling.minReplicas: 0",
            check=lambda s: s.scale_to_zero_after_seconds is None or s.min_replicas == 0,
            field_path=".scaleToZeroAfterSeconds",
        ),
    )


class BudgetSpec(ApiModel):
    """Cost bounds the plan and the autoscaler never exceed."""

    max_cost_per_hour: float | None = Field(
        None, gt=0, description="maxCostPerHour caps replicas x $/hour per replica, in USD."
    )
    max_cost_per_million_tokens: float | None = Field(
        None,
        gt=0,
        description="maxCostPerMillionTokens rejects plans whose predicted USD per million "
        "output tokens is higher.",
    )


class SpeculativeDecodingSpec(ApiModel):
    """Draft-model speculative decoding."""

    draft_model: str = Field(..., min_length=1, description="draftModel is the draft model's id.")
    num_speculative_tokens: int = Field(
        5, ge=1, le=16, description="numSpeculativeTokens is how many tokens the draft proposes."
    )


class LoraAdapter(ApiModel):
    """A LoRA adapter served next to the base model."""

    name: str = Field(..., min_length=1, description="name is the model name clients request.")
    source: str = Field(..., min_length=1, description="source is the adapter's id or path.")


class FeaturesSpec(ApiModel):
    """Engine features to enable."""

    prefix_caching: bool = Field(True, description="prefixCaching reuses KV of shared prefixes.")
    speculative_decoding: SpeculativeDecodingSpec | None = Field(
        None, description="speculativeDecoding enables a draft model (vLLM only)."
    )
    fp8_kv_cache: bool = Field(
        False, description="fp8KvCache stores the KV cache in FP8, doubling its capacity."
    )
    lora_adapters: list[LoraAdapter] = Field(
        default_factory=list, description="loraAdapters are served alongside the base model."
    )


class EnvVar(ApiModel):
    """An environment variable with a literal value."""

    name: str = Field(..., min_length=1, description="name of the variable.")
    value: str = Field("", description="value of the variable.")


class OverridesSpec(ApiModel):
    """Escape hatches applied last, for what the planner cannot know."""

    image: str | None = Field(None, description="image replaces the engine image.")
    extra_args: list[str] = Field(
        default_factory=list, description="extraArgs are appended to the engine's arguments."
    )
    env: list[EnvVar] = Field(
        default_factory=list, description="env is added to (and overrides) the engine's env."
    )
    resources: dict[str, dict[str, str]] | None = Field(
        None,
        description="resources replaces the engine container's requests/limits "
        "(core/v1 ResourceRequirements: {requests: {...}, limits: {...}}).",
    )
    pod_template_patch: dict[str, Any] | None = Field(
        None,
        description="podTemplatePatch is a strategic-merge patch applied to the pod template.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class LLMDeploymentSpec(ApiModel):
    """What to serve, how much, and under which budget."""

    model: ModelSpec = Field(..., description="model to serve.")
    quantization: Quantization = Field(
        "auto",
        description="quantization of the weights; auto lets the planner choose the cheapest "
        "that fits.",
    )
    engine: EngineName = Field(
        "auto", description="engine that serves the model; auto lets the planner choose."
    )
    context: ContextSpec = Field(default_factory=ContextSpec, description="context length.")
    workload: WorkloadSpec = Field(
        default_factory=WorkloadSpec, description="workload to plan for."
    )
    hardware: HardwareSpec = Field(
        default_factory=HardwareSpec, description="hardware the planner may choose."
    )
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="replica scaling.")
    budget: BudgetSpec = Field(default_factory=BudgetSpec, description="cost bounds.")
    features: FeaturesSpec = Field(
        default_factory=FeaturesSpec, description="engine features to enable."
    )
    overrides: OverridesSpec = Field(
        default_factory=OverridesSpec, description="overrides applied after rendering."
    )
    replicas: int | None = Field(
        None,
        ge=0,
        description="replicas is set only by an external autoscaler through the scale "
        "subresource when scaling.mode is external; the built-in autoscaler leaves it alone.",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!(self.quantization in ['q4_k_m', 'q5_k_m', 'q8_0']) || "
            "self.engine in ['auto', 'llamacpp']",
            message="quantization q4_k_m, q5_k_m and q8_0 are GGUF formats: set engine to "
            "llamacpp or auto",
            check=lambda s: (
                s.quantization not in GGUF_QUANTIZATIONS or s.engine in ("auto", "llamacpp")
            ),
            field_path=".engine",
        ),
        Rule(
            cel="!(has(self.features) && has(self.features.speculativeDecoding)) || "
            "self.engine in ['auto', 'vllm']",
            message="features.speculativeDecoding is supported by vllm only: set engine to "
            "vllm or auto",
            check=lambda s: s.features.speculative_decoding is None or s.engine in ("auto", "vllm"),
            field_path=".engine",
        ),
        Rule(
            cel="!has(self.scaling) || !has(self.scaling.mode) || "
            "self.scaling.mode != 'external' || has(self.replicas)",
            message="replicas is required when scaling.mode is external: set it to the starting "
            "replica count (the HPA/KEDA scale target reads and writes it)",
            check=lambda s: s.scaling.mode != "external" or s.replicas is not None,
            field_path=".replicas",
        ),
    )


class Condition(ApiModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    model_config = ConfigDict(frozen=True)

    type: str = Field(..., description="type of the condition, e.g. Ready.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="status of it.")
    reason: str = Field(..., description="reason is a CamelCase word for the last transition.")
    message: str = Field("", description="message explains the status to a person.")
    last_transition_time: str = Field(
        ..., description="lastTransitionTime is when status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        None, description="observedGeneration is the spec generation the condition reflects."
    )


class PlanStatus(ApiModel):
    """The chosen plan: hardware, engine settings and predictions per replica."""

    gpu: str = Field(..., description="gpu is the catalog id of the chosen GPU (or CPU class).")
    gpus_per_replica: int = Field(..., description="gpusPerReplica is TP x PP.")
    tensor_parallel: int = Field(..., description="tensorParallel is the tensor-parallel degree.")
    pipeline_parallel: int = Field(
        ..., description="pipelineParallel is the pipeline-parallel degree."
    )
    nodes_per_replica: int = Field(..., description="nodesPerReplica is >1 for multi-node.")
    engine: ConcreteEngine = Field(..., description="engine chosen.")
    quantization: ConcreteQuantization = Field(..., description="quantization chosen.")
    max_model_len: int = Field(..., description="maxModelLen is the context the engine gets.")
    max_concurrent_sequences: int = Field(
        ..., description="maxConcurrentSequences fit in the KV cache at the workload's lengths."
    )
    max_num_batched_tokens: int | None = Field(
        None,
        description="maxNumBatchedTokens is the prefill token budget per engine step the "
        "memory plan assumed (vLLM --max-num-batched-tokens).",
    )
    weights_gib_per_gpu: float = Field(..., description="weightsGiBPerGpu is weight memory.")
    kv_cache_gib_per_gpu: float = Field(..., description="kvCacheGiBPerGpu is KV cache memory.")
    ttft_ms: float = Field(..., description="ttftMs is the predicted time to first token.")
    tpot_ms: float = Field(..., description="tpotMs is the predicted time per output token.")
    output_tokens_per_second: float = Field(
        ..., description="outputTokensPerSecond is one replica's predicted output rate."
    )
    cost_per_hour: float = Field(..., description="costPerHour is one replica's USD per hour.")
    cost_per_million_output_tokens: float = Field(
        ..., description="costPerMillionOutputTokens is predicted USD per million output tokens."
    )


class LLMDeploymentStatus(ApiModel):
    """What the operator observed and decided."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    observed_generation: int | None = Field(
        None, description="observedGeneration is the last spec generation acted upon."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="conditions: Ready, Planned, Progressing, Degraded..."
    )
    plan: PlanStatus | None = Field(None, description="plan is the chosen plan.")
    replicas: int | None = Field(None, description="replicas that exist.")
    ready_replicas: int | None = Field(None, description="readyReplicas serving traffic.")
    desired_replicas: int | None = Field(None, description="desiredReplicas wanted now.")
    selector: str | None = Field(
        None, description="selector is the pods' label selector (for the scale subresource)."
    )
    observed_tokens_per_second: float | None = Field(
        None, description="observedTokensPerSecond is the measured output token rate."
    )
    cost_per_hour: float | None = Field(
        None, description="costPerHour is the current USD per hour of all replicas."
    )
    capacity_tokens_per_second: float | None = Field(
        None,
        description="capacityTokensPerSecond is one replica's output tokens/s at the target "
        "utilisation (the planner's prediction, refined by observation when saturated).",
    )
    cost_per_million_tokens: float | None = Field(
        None, description="costPerMillionTokens is observed USD per million output tokens."
    )
    last_scaling_reason: str | None = Field(
        None, description="lastScalingReason explains the last replica decision."
    )


class LLMDeployment(ApiModel):
    """LLMDeployment turns model + quantization + context + load + budget into serving."""

    api_version: Literal["serving.llm-operator.io/v1alpha1"] = Field(
        "serving.llm-operator.io/v1alpha1",
        alias="apiVersion",
        description="apiVersion of the object.",
    )
    kind: Literal["LLMDeployment"] = Field("LLMDeployment", description="kind of the object.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="standard metadata.")
    spec: LLMDeploymentSpec = Field(..., description="spec is the desired deployment.")
    status: LLMDeploymentStatus | None = Field(None, description="status is observed state.")
