"""The LLMDeployment API, version v1alpha1: pydantic models that are the source of truth.

The CRD in `crds/` is generated from these models (`llm_operator.api.crd`), so every
field description here becomes `kubectl explain` text and every cross-field rule is
written once (`Rule`) and enforced twice: by the apiserver as a CEL
`x-kubernetes-validations` rule and by pydantic when `llmctl` reads a file offline.

Called by: the planner and renderer (read the spec), the operator (validates the
custom object and writes `status`), `llmctl` (reads example files).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from llm_operator import engines
from llm_operator.api import security

GROUP = "serving.llm-operator.io"
VERSION = "v1alpha1"
KIND = "LLMDeployment"
PLURAL = "llmdeployments"
SINGULAR = "llmdeployment"
SHORT_NAMES = ("llmd",)
API_VERSION = f"{GROUP}/{VERSION}"

Quantization = Literal[
    "auto",
    "fp32",
    "fp16",
    "bf16",
    "fp8",
    "int8",
    "int4",
    "awq",
    "gptq",
    "q4_0",
    "q4_1",
    "q4_k_m",
    "q5_k_m",
    "q6_k",
    "q8_0",
]
ConcreteQuantization = Literal[
    "fp32",
    "fp16",
    "bf16",
    "fp8",
    "int8",
    "int4",
    "awq",
    "gptq",
    "q4_0",
    "q4_1",
    "q4_k_m",
    "q5_k_m",
    "q6_k",
    "q8_0",
]
EngineName = Literal["auto", "vllm", "tgi", "llamacpp"]
ConcreteEngine = Literal["vllm", "tgi", "llamacpp"]
ModelSourceKind = Literal["hf", "pvc", "s3", "url"]
ScalingMode = Literal["builtin", "external"]

GGUF_QUANTIZATIONS: tuple[str, ...] = ("q4_0", "q4_1", "q4_k_m", "q5_k_m", "q6_k", "q8_0")
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
        opt_out: the operator setting that lifts the rule, when one does; pydantic then
            leaves it to the renderer, which knows the setting, and the CRD generated
            for an opted-out install omits it.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None
    opt_out: str | None = None


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
            if rule.opt_out is None and not rule.check(self):
                raise ValueError(rule.message)
        return self


class QuantizationConfig(ApiModel):
    """How a checkpoint's weights are stored: config.json `quantization_config`."""

    quant_method: Literal["awq", "gptq", "fp8", "fbgemm_fp8", "compressed-tensors"] = Field(
        ...,
        description="quantMethod is quantization_config.quant_method of the checkpoint.",
    )
    bits: int = Field(
        ...,
        ge=2,
        le=16,
        description="bits per weight (AWQ/GPTQ `bits`, compressed-tensors weights.num_bits; "
        "8 for FP8).",
    )
    group_size: int | None = Field(
        None, ge=-1, description="groupSize of the weight scales (AWQ/GPTQ group_size)."
    )
    weight_type: Literal["int", "float"] = Field(
        "int",
        description="weightType is int or float (compressed-tensors weights.type; float for "
        "FP8 checkpoints).",
    )

    @property
    def quantization(self) -> str:
        """The quantization this checkpoint is served as (awq, gptq, fp8, int8 or int4)."""
        if self.quant_method in ("awq", "gptq"):
            return self.quant_method
        if self.quant_method in ("fp8", "fbgemm_fp8") or self.weight_type == "float":
            return "fp8"
        return "int8" if self.bits == 8 else "int4"


class Architecture(ApiModel):
    """Transformer shape, enough to size weights, KV cache and compute."""

    model_type: str | None = Field(
        None,
        description="modelType is model_type from config.json (e.g. llama, gemma2); engines "
        "refuse some formats for some families.",
    )
    quantization_config: QuantizationConfig | None = Field(
        None,
        description="quantizationConfig describes a pre-quantized checkpoint "
        "(config.json quantization_config); absent for a 16/32-bit checkpoint.",
    )

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

    @property
    def checkpoint_quantization(self) -> str | None:
        """The format the checkpoint is stored in; None for a 16/32-bit checkpoint."""
        q = self.quantization_config
        return None if q is None else q.quantization


class SecretKeyRef(ApiModel):
    """A key in a Secret in the LLMDeployment's namespace."""

    name: str = Field(..., min_length=1, description="name of the Secret.")
    key: str = Field("token", min_length=1, description="key in the Secret's data.")


class ModelCacheSpec(ApiModel):
    """Where the weights downloaded from the Hub are kept."""

    shared: bool = Field(
        False,
        description="shared keeps one copy for every replica: a download Job fills a "
        "PersistentVolumeClaim once and every pod mounts it read-only, so scaling up does not "
        "download again. false: each pod downloads into its own emptyDir.",
    )
    claim_name: str | None = Field(
        None,
        min_length=1,
        description="claimName is an existing ReadWriteMany PersistentVolumeClaim to use as the "
        "shared cache; unset, the operator creates one.",
    )
    storage_class_name: str | None = Field(
        None,
        min_length=1,
        description="storageClassName of the ReadWriteMany claim the operator creates "
        "(unset: the cluster's default class).",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.shared || (!has(self.claimName) && !has(self.storageClassName))",
            message="model.cache.claimName and storageClassName need model.cache.shared: true",
            check=lambda c: c.shared or (c.claim_name is None and c.storage_class_name is None),
        ),
        Rule(
            cel="!has(self.claimName) || !has(self.storageClassName)",
            message="model.cache: set claimName (an existing claim) or storageClassName (for the "
            "claim the operator creates), not both",
            check=lambda c: c.claim_name is None or c.storage_class_name is None,
            field_path=".storageClassName",
        ),
    )


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
    cache: ModelCacheSpec = Field(
        default_factory=ModelCacheSpec,
        description="cache says where weights downloaded from the Hub are kept (source hf).",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.source == 'hf' || has(self.uri)",
            message="model.uri is required when model.source is pvc, s3 or url",
            check=lambda m: m.source == "hf" or m.uri is not None,
            field_path=".uri",
        ),
        Rule(
            cel="!has(self.cache) || !has(self.cache.shared) || !self.cache.shared || "
            "self.source == 'hf'",
            message="model.cache.shared applies to model.source hf (a pvc source is already "
            "shared)",
            check=lambda m: not m.cache.shared or m.source == "hf",
            field_path=".cache",
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
        description="concurrency is the number of requests the deployment holds in flight at "
        "once (all replicas together). A replica runs at most what fits its KV cache and "
        "meets the SLOs, so more load plans more replicas; unset: one replica's worth.",
    )
    target_output_tokens_per_second: float | None = Field(
        None,
        gt=0,
        description="targetOutputTokensPerSecond is the total output token rate to provision "
        "for; sets the initial replica count.",
    )
    slo: SloSpec | None = Field(None, description="slo holds latency objectives.")
    prefix_hit_rate: float = Field(
        0.0,
        ge=0,
        le=0.99,
        description="prefixHitRate is the share of each prompt's tokens the prefix cache "
        "already holds (a shared system prompt, few-shot examples, the conversation so far): "
        "only the rest is prefilled, which shortens TTFT and frees compute. Planned only with "
        "features.prefixCaching on. 0 (the default) plans no saving; on vLLM measure it as "
        "rate(vllm:prefix_cache_hits_total) / rate(vllm:prefix_cache_queries_total).",
    )
    draft_acceptance_rate: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="draftAcceptanceRate is the chance that the model accepts a token the "
        "speculative proposer drafted (features.speculativeDecoding); it decides what "
        "speculation saves. Unset: a conservative default per method (ngram 0.3, medusa and "
        "mlp_speculator 0.5, eagle 0.6, eagle3 and mtp 0.7). On vLLM measure it as "
        "rate(vllm:spec_decode_num_accepted_tokens_total) / "
        "rate(vllm:spec_decode_num_draft_tokens_total).",
    )


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
        0.6,
        gt=0,
        le=1,
        description="targetUtilization is the fraction of a replica's predicted output tokens/s "
        "the autoscaler aims for; the rest is headroom for bursts while new replicas start "
        "(0.6 leaves under 1% of demand unserved on the replayed bursty day, "
        "docs/autoscaling.md).",
    )
    scale_up_stabilization_seconds: int = Field(
        30,
        ge=0,
        description="scaleUpStabilizationSeconds: demand must persist this long (requests "
        "waiting in the engines' queues skip it).",
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
    predictive: bool = Field(
        True,
        description="predictive scales up for the demand its rising trend reaches one start-up "
        "ahead (the replicas' measured start-up time plus scaleUpStabilizationSeconds); "
        "scaling down always waits for the demand itself.",
    )
    spare_replicas: int = Field(
        0,
        ge=0,
        le=100,
        description="spareReplicas keeps this many replicas beyond what the demand needs at "
        "full speed, so that losing them (a preempted spot node, a crash) still serves it "
        "while they restart; 1 suits spot capacity.",
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


SpeculativeMethod = Literal["ngram", "eagle", "eagle3", "medusa", "mlp_speculator", "mtp"]
SPECULATIVE_METHODS_WITH_MODEL = ("eagle", "eagle3", "medusa", "mlp_speculator")
# ASSUMPTIONS, not measurements: the per-token acceptance the planner uses when
# workload.draftAcceptanceRate is unset, deliberately below what the methods' papers report
# on chat benchmarks (EAGLE arXiv:2401.15077, EAGLE-3 arXiv:2503.01840, Medusa
# arXiv:2401.10774, DeepSeek-V3's MTP arXiv:2412.19437 section 5.4.3: 85-90% for its second
# token). Prompt lookup (ngram) accepts only where the reply repeats the prompt, which
# chat rarely does.
DEFAULT_DRAFT_ACCEPTANCE: dict[str, float] = {
    "ngram": 0.3,
    "medusa": 0.5,
    "mlp_speculator": 0.5,
    "eagle": 0.6,
    "eagle3": 0.7,
    "mtp": 0.7,
}


class SpeculativeDecodingSpec(ApiModel):
    """Speculative decoding: a cheap proposer drafts tokens the model verifies in one step."""

    method: SpeculativeMethod = Field(
        "ngram",
        description="method is how tokens are proposed: ngram (prompt lookup, no extra "
        "model), eagle/eagle3/medusa/mlp_speculator (a trained draft head named by model), "
        "or mtp (the model's own multi-token-prediction layers). A separate draft model is "
        "not offered: vLLM v0.12.0 raises NotImplementedError for it.",
    )
    model: str | None = Field(
        None,
        min_length=1,
        description="model is the draft head's Hugging Face id (eagle, eagle3, medusa, "
        "mlp_speculator only).",
    )
    num_speculative_tokens: int = Field(
        5, ge=1, le=16, description="numSpeculativeTokens is how many tokens are proposed."
    )
    prompt_lookup_max: int | None = Field(
        None, ge=1, description="promptLookupMax is the longest n-gram matched (ngram only)."
    )
    prompt_lookup_min: int | None = Field(
        None, ge=1, description="promptLookupMin is the shortest n-gram matched (ngram only)."
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.model) == (self.method in "
            + str(list(SPECULATIVE_METHODS_WITH_MODEL)).replace('"', "'")
            + ")",
            message="speculativeDecoding.model is required for eagle, eagle3, medusa and "
            "mlp_speculator, and must be empty for ngram and mtp",
            check=lambda s: (s.model is not None) == (s.method in SPECULATIVE_METHODS_WITH_MODEL),
            field_path=".model",
        ),
        Rule(
            cel="self.method == 'ngram' || (!has(self.promptLookupMax) && "
            "!has(self.promptLookupMin))",
            message="speculativeDecoding.promptLookupMax/Min apply to method ngram only",
            check=lambda s: (
                s.method == "ngram" or (s.prompt_lookup_max is None and s.prompt_lookup_min is None)
            ),
        ),
        Rule(
            cel="!has(self.promptLookupMax) || !has(self.promptLookupMin) || "
            "self.promptLookupMin <= self.promptLookupMax",
            message="speculativeDecoding.promptLookupMin must be at most promptLookupMax",
            check=lambda s: (
                s.prompt_lookup_max is None
                or s.prompt_lookup_min is None
                or s.prompt_lookup_min <= s.prompt_lookup_max
            ),
            field_path=".promptLookupMin",
        ),
    )


class LoraAdapter(ApiModel):
    """A LoRA adapter served next to the base model."""

    name: str = Field(..., min_length=1, description="name is the model name clients request.")
    source: str = Field(
        ...,
        min_length=1,
        description="source is the adapter's Hugging Face id or a local path (on a PVC).",
    )
    rank: int = Field(
        16,
        ge=1,
        le=4096,
        description="rank is the adapter's LoRA rank (r in adapter_config.json); the engine "
        "reserves room for the largest.",
    )


class FeaturesSpec(ApiModel):
    """Engine features to enable."""

    prefix_caching: bool = Field(True, description="prefixCaching reuses KV of shared prefixes.")
    speculative_decoding: SpeculativeDecodingSpec | None = Field(
        None, description="speculativeDecoding enables speculative decoding (vLLM only)."
    )
    fp8_kv_cache: bool = Field(
        False,
        description="fp8KvCache stores the KV cache in 8 bits (FP8 on vLLM and TGI, q8_0 on "
        "llama.cpp), nearly doubling its capacity.",
    )
    lora_adapters: list[LoraAdapter] = Field(
        default_factory=list, description="loraAdapters are served alongside the base model."
    )


IntOrString = Annotated[int | str, WithJsonSchema({"x-kubernetes-int-or-string": True})]


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
    resources: dict[str, dict[str, IntOrString]] | None = Field(
        None,
        description="resources replaces the engine container's requests/limits "
        "(core/v1 ResourceRequirements: {requests: {...}, limits: {...}}).",
    )
    pod_template_patch: Annotated[dict[str, Any] | None, WithJsonSchema(security.PATCH_SCHEMA)] = (
        Field(None)
    )

    # NOTE: opt_out: pydantic leaves these to the renderer, which knows whether the
    # operator was installed with the opt-in (security.violations).
    rules: ClassVar[tuple[Rule, ...]] = tuple(
        Rule(
            cel=security.cel_rule(guard),
            message=guard.message,
            check=lambda o: not security.violations(o.pod_template_patch),
            field_path=".podTemplatePatch",
            opt_out=security.OPT_OUT_SETTING,
        )
        for guard in security.GUARDS
    )


def _cel_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _engine_allows(engine: str, what: str, allowed: list[str]) -> Callable[[Any], bool]:
    """The pydantic side of an engine rule: `what` (quantization or source) is allowed."""

    def check(spec: Any) -> bool:
        value = spec.quantization if what == "quantization" else spec.model.source
        return bool(spec.engine != engine or value in allowed)

    return check


def _engine_rules() -> tuple[Rule, ...]:
    """CEL rules generated from the engines' capability matrix: what an explicitly chosen
    engine does not serve is refused at admission (and by pydantic offline), whatever the
    hardware. What depends on the model or the GPU is checked when planning."""
    rules: list[Rule] = []
    for name, engine in engines.ENGINES.items():
        caps = engine.capabilities
        served = sorted(caps.quantizations)
        rules.append(
            Rule(
                cel=f"self.engine != '{name}' || self.quantization in "
                + _cel_list(["auto", *served]),
                message=f"engine {name} serves quantization {', '.join(served)} (or auto): "
                "change quantization, or set engine to auto",
                check=_engine_allows(name, "quantization", ["auto", *served]),
                field_path=".quantization",
            )
        )
        sources = sorted(caps.model_sources)
        rules.append(
            Rule(
                cel=f"self.engine != '{name}' || !has(self.model.source) || "
                f"self.model.source in {_cel_list(sources)}",
                message=f"engine {name} loads models from {', '.join(sources)}: change "
                "model.source or the engine",
                check=_engine_allows(name, "source", sources),
                field_path=".model.source",
            )
        )
    speculative = sorted(
        n for n, e in engines.ENGINES.items() if e.capabilities.speculative_methods
    )
    rules.append(
        Rule(
            cel="!(has(self.features) && has(self.features.speculativeDecoding)) || "
            f"self.engine in {_cel_list(['auto', *speculative])}",
            message="features.speculativeDecoding is supported by "
            f"{', '.join(speculative)} only: set engine to {' or '.join(speculative)} or auto",
            check=lambda s: (
                s.features.speculative_decoding is None or s.engine in ("auto", *speculative)
            ),
            field_path=".engine",
        )
    )
    lora = sorted(n for n, e in engines.ENGINES.items() if e.capabilities.lora)
    rules.append(
        Rule(
            cel="!(has(self.features) && has(self.features.loraAdapters) && "
            f"size(self.features.loraAdapters) > 0) || self.engine in {_cel_list(['auto', *lora])}",
            message=f"features.loraAdapters are served by {', '.join(lora)} only: set engine to "
            f"{' or '.join(lora)} or auto",
            check=lambda s: not s.features.lora_adapters or s.engine in ("auto", *lora),
            field_path=".engine",
        )
    )
    return tuple(rules)


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

    def engine_ask(self, arch: Architecture | None, gguf_repo: bool = False) -> engines.Ask:
        """What this spec asks of an engine, for its capability check (`Engine.refusals`).

        Args:
            arch: the model's resolved architecture (checkpoint format, model type).
            gguf_repo: whether a GGUF repository is known for the model.
        """
        features = self.features
        spec_decoding = features.speculative_decoding
        return engines.Ask(
            quantization=self.quantization,
            checkpoint=arch.checkpoint_quantization if arch is not None else None,
            model_type=arch.model_type if arch is not None else None,
            model_source=self.model.source,
            gguf_repo=gguf_repo,
            prefix_caching=features.prefix_caching,
            fp8_kv_cache=features.fp8_kv_cache,
            lora_adapters=tuple(
                engines.Lora(a.name, a.source, a.rank) for a in features.lora_adapters
            ),
            speculative_method=spec_decoding.method if spec_decoding is not None else None,
        )

    rules: ClassVar[tuple[Rule, ...]] = (
        *_engine_rules(),
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
        ...,
        description="lastTransitionTime is when status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        None, description="observedGeneration is the spec generation the condition reflects."
    )


class LoadPoint(ApiModel):
    """The planner's prediction for one replica at one number of requests in flight, at
    the workload's prompt and output lengths."""

    concurrency: int = Field(..., description="concurrency is the requests in flight.")
    ttft_ms: float = Field(..., description="ttftMs is the mean time to first token.")
    tpot_ms: float = Field(..., description="tpotMs is the mean time per output token.")
    output_tokens_per_second: float = Field(
        ..., description="outputTokensPerSecond is the replica's output rate."
    )


class PlanCalibration(ApiModel):
    """The fleet calibration a plan's predictions include (`llmctl calibrate`)."""

    decode: float = Field(..., description="decode multiplies every predicted decode step's time.")
    prefill: float = Field(
        ..., description="prefill multiplies every predicted prefill and request overhead."
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
    download_gib: float | None = Field(
        None,
        description="downloadGiB is the size of the checkpoint each pod downloads (a 16-bit "
        "checkpoint quantized while loading is downloaded whole); it sizes the model cache.",
    )
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
    calibration: PlanCalibration | None = Field(
        None,
        description="calibration is the fleet calibration of this engine on this GPU type "
        "that the predictions include; absent when none was loaded.",
    )
    load_curve: list[LoadPoint] | None = Field(
        None,
        description="loadCurve is the prediction at other numbers of requests in flight, "
        "which the observed latencies are compared with (status.performance).",
        max_length=16,
    )


class Comparison(ApiModel):
    """One measured figure next to what the planner predicts at the measured load."""

    observed: float = Field(..., description="observed is what the engines measured.")
    predicted: float = Field(
        ..., description="predicted is the planner's figure at the observed load."
    )
    error: float = Field(..., description="error is observed / predicted - 1.")


class PerformanceStatus(ApiModel):
    """Predicted against observed, per replica, at the load the engines report."""

    concurrency_per_replica: float = Field(
        ..., description="concurrencyPerReplica is the requests each ready replica runs."
    )
    ttft_ms: Comparison | None = Field(
        None, description="ttftMs is the mean time to first token, milliseconds."
    )
    tpot_ms: Comparison | None = Field(
        None, description="tpotMs is the mean time per output token, milliseconds."
    )
    output_tokens_per_second: Comparison | None = Field(
        None, description="outputTokensPerSecond is one replica's output rate."
    )


class Handover(ApiModel):
    """A previous workload kept serving while its replacement starts (make before break)."""

    previous: str = Field(..., description="previous is the kept workload, Kind/name.")
    since: str = Field(
        ...,
        description="since is when the handover began (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    previous_cost_per_hour: float = Field(
        0.0, description="previousCostPerHour is what the kept workload costs, USD per hour."
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
    handover: Handover | None = Field(
        None,
        description="handover is set while a previous workload keeps serving until its "
        "replacement is ready (e.g. a Deployment replaced by a LeaderWorkerSet).",
    )
    tokens_per_second: float | None = Field(
        None,
        description="tokensPerSecond is the output token rate kubectl shows (TOK/S): the "
        "observed one while metrics arrive, else what the ready replicas are planned to make; "
        "tokensPerSecondSource says which.",
    )
    tokens_per_second_source: Literal["observed", "planned"] | None = Field(
        None, description="tokensPerSecondSource is observed or planned (see tokensPerSecond)."
    )
    performance: PerformanceStatus | None = Field(
        None,
        description="performance compares the engines' measured latencies and rate with "
        "the plan's predictions at the measured load; absent without metrics.",
    )

    def with_shown_rate(self) -> LLMDeploymentStatus:
        """This status with tokensPerSecond set from the observed rate, or else the plan's
        rate per replica times the ready replicas."""
        if self.observed_tokens_per_second is not None:
            rate, source = self.observed_tokens_per_second, "observed"
        elif self.plan is not None and self.ready_replicas:
            rate = round(self.plan.output_tokens_per_second * self.ready_replicas, 1)
            source = "planned"
        else:
            rate, source = None, None
        return self.model_copy(
            update={"tokens_per_second": rate, "tokens_per_second_source": source}
        )


DNS_LABEL = "^[a-z]([-a-z0-9]*[a-z0-9])?$"  # RFC 1035, as a Service name must be
MAX_NAME = 45


def _name_ok(obj: Any) -> bool:
    name = obj.metadata.get("name")
    return name is None or (
        isinstance(name, str)
        and len(name) <= MAX_NAME
        and re.fullmatch(DNS_LABEL, name) is not None
    )


class LLMDeployment(ApiModel):
    """LLMDeployment turns model + quantization + context + load + budget into serving."""

    # NOTE: the name is the Service's name and a label value of every child (an RFC 1035
    # label, at most 63 characters), and children add to it: the download Job
    # <name>-download-<8 hex> (its name is a label value of its pods), the LeaderWorkerSet
    # <name>-lws whose StatefulSets <name>-lws-<group> must stay within 52. A custom
    # object's own name may be longer and hold dots; it would be refused child by child.
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=f"!has(self.metadata.name) || (size(self.metadata.name) <= {MAX_NAME} && "
            f"self.metadata.name.matches('{DNS_LABEL}'))",
            message=f"metadata.name must be at most {MAX_NAME} characters of lower-case "
            "letters, digits and '-', starting with a letter and not ending with '-' (it "
            "names the Service, the pods' labels and, with suffixes, the download Job and "
            "the LeaderWorkerSet): choose such a name",
            check=_name_ok,
        ),
    )

    api_version: Literal["serving.llm-operator.io/v1alpha1"] = Field(
        "serving.llm-operator.io/v1alpha1",
        alias="apiVersion",
        description="apiVersion of the object.",
    )
    kind: Literal["LLMDeployment"] = Field("LLMDeployment", description="kind of the object.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="standard metadata.")
    spec: LLMDeploymentSpec = Field(..., description="spec is the desired deployment.")
    status: LLMDeploymentStatus | None = Field(None, description="status is observed state.")
