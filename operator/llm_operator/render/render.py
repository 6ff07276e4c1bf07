"""LLMDeployment + plan -> the Kubernetes objects that run the engine (pure; no I/O).

`render_objects()` builds a context of plain values in Python, renders the jinja2
templates under `templates/` (one folder per engine for its container and arguments,
`common/` for the workload, Service, PodDisruptionBudget and PodMonitor) and loads each
rendered YAML text into a dict. Every value reaches YAML through `| tojson`, so a model
name or a user's extra argument can never change the document's structure. `spec.overrides`
apply last, then the pod template is hashed into the `serving.llm-operator.io/spec-hash`
annotation so that any change rolls the pods. Called by `reconcile.desired` (the
operator) and by `llmctl render` through `render_for()`.

Engine choices (each flag checked against the engine's own docs/source; see
tests/test_render.py `ENGINE_FLAGS` for the URLs):

* Quantization -> flags (`QUANT_FLAGS`):
  vLLM: fp32/fp16/bf16 -> `--dtype float32|float16|bfloat16`; fp8 -> `--quantization fp8`
  (dynamic FP8 from a 16-bit checkpoint, or an FP8 checkpoint); awq -> `--quantization
  awq_marlin` and gptq -> `--quantization gptq_marlin` (the Marlin kernels vLLM itself
  picks for these checkpoints; they need compute capability >= 8.0, which every GPU in
  the catalog has); int8/int4 -> no flag: such checkpoints (compressed-tensors W8A8/W4A16)
  carry their quantization config and vLLM auto-detects it.
  TGI: fp16/bf16 -> `--dtype float16|bfloat16`; fp8 -> `--quantize fp8`; awq -> `--quantize
  awq`; gptq -> `--quantize gptq`; int8 -> `--quantize eetq` (8-bit, any checkpoint);
  int4 -> `--quantize bitsandbytes-nf4` (4-bit, any checkpoint).
  llama.cpp: the quantization picks the GGUF file of the catalog's GGUF repository
  (`--hf-repo <repo>:<QUANT>`, e.g. `:Q4_K_M`; 16/32-bit -> `:F16`, `:BF16`, `:F32`).
* Security context: every container drops ALL capabilities, forbids privilege escalation
  and uses the RuntimeDefault seccomp profile. llama.cpp also runs as non-root (UID 65532):
  `llama-server` needs no root and writes only to the model cache. The vLLM and TGI images
  run as root (vLLM and Ray write caches under /root; TGI's entrypoint runs `ldconfig` and
  loads libraries from /root/.local), so `runAsNonRoot` is not set for them.
* Multi-node (plan.nodes_per_replica > 1, vLLM only): a LeaderWorkerSet whose leader runs
  `ray start --head`, waits until the group's nodes joined, then `vllm serve ...
  --distributed-executor-backend ray`; workers run `ray start --address=<leader>:6379
  --block`. The Service selects leader pods only (worker-index "0").
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import yaml

from llm_operator.api.v1alpha1 import LLMDeployment, PlanStatus
from llm_operator.catalog import Catalog, GpuType, ModelEntry, UnknownNameError

GROUP = "serving.llm-operator.io"
LABEL_LLMD = f"{GROUP}/llmdeployment"
LABEL_ENGINE = f"{GROUP}/engine"
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"

PORT = 8000  # OpenAI-compatible HTTP port, the same for every engine
ENGINE_CONTAINER = "engine"  # name of the serving container (stable for podTemplatePatch)
MODEL_DIR = "/models"  # model cache (emptyDir) or the PVC holding the weights
GPU_MEMORY_UTILIZATION = 0.9
RAY_PORT = 6379
NON_ROOT_UID = 65532

# Images pinned by tag. The flag spellings in the templates are checked for these versions.
VLLM_VERSION = "v0.12.0"
TGI_VERSION = "3.3.6"
LLAMACPP_BUILD = "b10644"
IMAGES: dict[str, str] = {
    "vllm": f"vllm/vllm-openai:{VLLM_VERSION}",
    "tgi": f"ghcr.io/huggingface/text-generation-inference:{TGI_VERSION}",
    "tgi-rocm": f"ghcr.io/huggingface/text-generation-inference:{TGI_VERSION}-rocm",
    "llamacpp-cpu": f"ghcr.io/ggml-org/llama.cpp:server-{LLAMACPP_BUILD}",
    "llamacpp-cuda": f"ghcr.io/ggml-org/llama.cpp:server-cuda-{LLAMACPP_BUILD}",
    "llamacpp-rocm": f"ghcr.io/ggml-org/llama.cpp:server-rocm-{LLAMACPP_BUILD}",
}

# Plan quantization -> engine flags (see the module docstring for why).
QUANT_FLAGS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "vllm": {
        "fp32": [("--dtype", "float32")],
        "fp16": [("--dtype", "float16")],
        "bf16": [("--dtype", "bfloat16")],
        "fp8": [("--quantization", "fp8")],
        "awq": [("--quantization", "awq_marlin")],
        "gptq": [("--quantization", "gptq_marlin")],
        "int8": [],
        "int4": [],
    },
    "tgi": {
        "fp16": [("--dtype", "float16")],
        "bf16": [("--dtype", "bfloat16")],
        "fp8": [("--quantize", "fp8")],
        "awq": [("--quantize", "awq")],
        "gptq": [("--quantize", "gptq")],
        "int8": [("--quantize", "eetq")],
        "int4": [("--quantize", "bitsandbytes-nf4")],
    },
}
# llama.cpp: plan quantization -> the quant tag of `--hf-repo <repo>:<tag>`.
GGUF_TAGS: dict[str, str] = {
    "q4_k_m": "Q4_K_M",
    "q5_k_m": "Q5_K_M",
    "q8_0": "Q8_0",
    "fp16": "F16",
    "bf16": "BF16",
    "fp32": "F32",
}

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("llm_operator.render", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,  # NOTE: YAML, not HTML; values are escaped by `tojson` instead
)
# NOTE: keep dict keys in the order render.py builds them (jinja2 sorts them by default),
# so the output reads name/image/command/args/... like hand-written manifests.
_ENV.policies["json.dumps_kwargs"] = {"sort_keys": False}


class RenderError(ValueError):
    """The spec and plan cannot be rendered as written (names the field and the fix)."""


@dataclass(frozen=True)
class _Model:
    """Where the engine loads the weights from."""

    ref: str  # HF id, local path, s3:// URI or URL
    source: str
    pvc: str | None = None


# Host memory a GPU pod requests per GPU at most (see `_context`).
HOST_MEMORY_GIB_PER_GPU = 24


def _render(template: str, **ctx: Any) -> Any:
    return yaml.safe_load(_ENV.get_template(template).render(**ctx))


def labels_for(name: str, engine: str) -> dict[str, str]:
    """The labels on every rendered object and pod."""
    return {
        "app.kubernetes.io/name": engine,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/managed-by": "llm-operator",
        LABEL_LLMD: name,
        LABEL_ENGINE: engine,
    }


def selector_for(name: str, engine: str) -> dict[str, str]:
    """The pods' selector: only the two serving.llm-operator.io labels."""
    return {LABEL_LLMD: name, LABEL_ENGINE: engine}


def _model(llmd: LLMDeployment, entry: ModelEntry | None, engine: str) -> _Model:
    spec = llmd.spec.model
    if spec.source == "hf":
        return _Model(ref=entry.name if entry is not None else spec.name, source="hf")
    uri = spec.uri or ""
    if spec.source == "pvc":
        claim, _, sub = uri.partition("/")
        path = f"{MODEL_DIR}/{sub}" if sub else MODEL_DIR
        return _Model(ref=path, source="pvc", pvc=claim)
    if spec.source == "s3" and engine == "vllm":
        return _Model(ref=uri, source="s3")
    if spec.source == "url" and engine == "llamacpp":
        return _Model(ref=uri, source="url")
    raise RenderError(
        f"spec.model.source: {spec.source} is not supported by engine {engine} "
        "(s3 needs vllm, url needs llamacpp; use hf or pvc)"
    )


def _gguf_repo(llmd: LLMDeployment, entry: ModelEntry | None, quantization: str) -> str:
    repo = entry.gguf if entry is not None else None
    if repo is None:
        raise RenderError(
            f"spec.model.name: {llmd.spec.model.name} has no GGUF repository in the catalog; "
            "serve it with model.source pvc or url for llamacpp"
        )
    if quantization not in GGUF_TAGS:
        raise RenderError(f"spec.quantization: llamacpp cannot serve {quantization}")
    return f"{repo}:{GGUF_TAGS[quantization]}"


def _cpu_threads(gpu: GpuType) -> int:
    """Generation threads for a CPU node class: its physical cores.

    NOTE: the catalog has no vCPU field yet, so the count is read from the name or an
    alias (`CPU-64C-256GiB` = 64 vCPUs = 32 cores); 8 when none says.
    """
    for name in (gpu.name, *gpu.aliases):
        match = re.search(r"(\d+)C\b", name, re.IGNORECASE)
        if match:
            return max(1, int(match.group(1)) // 2)
    return 8


def image_for(engine: str, gpu: GpuType) -> str:
    """The pinned image of an engine for a device kind (CPU, NVIDIA or AMD).

    NOTE: vLLM on AMD needs a ROCm build of vLLM; the CUDA image is rendered and
    `spec.overrides.image` must replace it.
    """
    if engine == "llamacpp":
        flavour = "cpu" if gpu.kind == "cpu" else ("rocm" if gpu.vendor == "amd" else "cuda")
        return IMAGES[f"llamacpp-{flavour}"]
    if engine == "tgi" and gpu.vendor == "amd":
        return IMAGES["tgi-rocm"]
    return IMAGES[engine]


def _gib(value: float) -> str:
    return f"{max(1, math.ceil(value))}Gi"


def startup_failure_threshold(weights_gib: float, period_s: int = 10) -> int:
    """Startup probe failures allowed: 5 minutes plus 10 s per GiB of weights.

    Downloading and loading run at roughly 100 MiB/s per pod in the worst case we plan
    for, so a 15 GiB model gets 7.5 minutes and a 400 GiB one about 72 minutes.
    """
    return math.ceil((300 + 10 * weights_gib) / period_s)


def _pairs(raw: Sequence[Sequence[Any]]) -> list[str]:
    """Sorted flag/value pairs flattened to argv, each flag next to its value(s)."""
    out: list[str] = []
    for flag, value in sorted(raw, key=lambda p: str(p[0])):
        out.append(str(flag))
        if isinstance(value, list):
            out.extend(str(v) for v in value)
        elif value is not None:
            out.append(str(value))
    return out


def _context(
    llmd: LLMDeployment,
    plan: PlanStatus,
    gpu: GpuType,
    replicas: int,
    model: ModelEntry | None,
    monitoring: bool,
) -> dict[str, Any]:
    name = str(llmd.metadata.get("name") or "")
    if not name:
        raise RenderError("metadata.name: the LLMDeployment has no name")
    engine = plan.engine
    spec = llmd.spec
    cpu = gpu.kind == "cpu"
    nodes = max(1, plan.nodes_per_replica)
    if nodes > 1 and engine != "vllm":
        raise RenderError(f"plan: {engine} cannot span nodes; only vllm runs multi-node")
    gpus_per_pod = 0 if cpu else plan.tensor_parallel * plan.pipeline_parallel // nodes
    weights_gib = plan.weights_gib_per_gpu * max(1, plan.gpus_per_replica)
    weights_per_pod = weights_gib / nodes
    src = _model(llmd, model, engine)

    resources: dict[str, dict[str, str]]
    threads = _cpu_threads(gpu) if cpu else 0
    if cpu:
        # Weights are memory-mapped, the KV cache and compute buffers come on top.
        memory = _gib(weights_gib + plan.kv_cache_gib_per_gpu + 2)
        resources = {
            "requests": {"cpu": str(threads), "memory": memory},
            "limits": {"memory": memory},
        }
    else:
        resource = "amd.com/gpu" if gpu.vendor == "amd" else "nvidia.com/gpu"
        # NOTE: host memory holds the process, tokenizer and the weights while they are
        # streamed to the GPUs; safetensors are memory-mapped (reclaimable page cache), so
        # the request need not hold them whole. Capped per GPU so a one-GPU node
        # (g5.2xlarge, g6.2xlarge: 32 GiB, ~30 GiB allocatable) can take the pod; no limit.
        host_gib = min(weights_per_pod + 16, HOST_MEMORY_GIB_PER_GPU * gpus_per_pod)
        resources = {
            "requests": {
                "cpu": str(4 * gpus_per_pod),
                "memory": _gib(host_gib),
                resource: str(gpus_per_pod),
            },
            "limits": {resource: str(gpus_per_pod)},
        }

    env: list[dict[str, Any]] = [{"name": "HF_HOME", "value": f"{MODEL_DIR}/hf"}]
    if engine == "llamacpp":
        env.append({"name": "LLAMA_CACHE", "value": f"{MODEL_DIR}/llama.cpp"})
    secret = spec.model.hf_token_secret
    if secret is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}},
            }
        )

    tolerations = [
        t.model_dump(by_alias=True, exclude_none=True) for t in spec.hardware.tolerations
    ]
    node_selector: dict[str, str] = {}
    if not cpu:
        if gpu.vendor == "nvidia" and gpu.product_labels:
            node_selector["nvidia.com/gpu.product"] = gpu.product_labels[0]
        key = "amd.com/gpu" if gpu.vendor == "amd" else "nvidia.com/gpu"
        tolerations.insert(0, {"key": key, "operator": "Exists", "effect": "NoSchedule"})
    node_selector.update(spec.hardware.node_selector)

    features = spec.features
    speculative = None
    if features.speculative_decoding is not None:
        speculative = json.dumps(
            {
                "method": "draft_model",
                "model": features.speculative_decoding.draft_model,
                "num_speculative_tokens": features.speculative_decoding.num_speculative_tokens,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
    workload = spec.workload
    ctx: dict[str, Any] = {
        "name": name,
        "namespace": llmd.metadata.get("namespace"),
        "engine": engine,
        "labels": labels_for(name, engine),
        "selector": selector_for(name, engine),
        "replicas": replicas,
        "nodes": nodes,
        "multinode": nodes > 1,
        "monitoring": monitoring,
        "cpu": cpu,
        "gpus_per_pod": gpus_per_pod,
        "threads": threads,
        "port": PORT,
        "ray_port": RAY_PORT,
        "container_name": ENGINE_CONTAINER,
        "model_dir": MODEL_DIR,
        "model": src.ref,
        "model_source": src.source,
        "pvc": src.pvc,
        "revision": spec.model.revision,
        "served_model_name": spec.model.name,
        "gguf": (
            _gguf_repo(llmd, model, plan.quantization)
            if engine == "llamacpp" and src.source == "hf"
            else None
        ),
        "quant_flags": [list(p) for p in QUANT_FLAGS.get(engine, {}).get(plan.quantization, [])],
        "plan": plan.model_dump(),
        "max_model_len": plan.max_model_len,
        "max_seqs": max(1, plan.max_concurrent_sequences),
        "batched_tokens": plan.max_num_batched_tokens,
        "max_batch_total_tokens": max(
            plan.max_model_len,
            max(1, plan.max_concurrent_sequences)
            * min(plan.max_model_len, workload.input_tokens + workload.output_tokens),
        ),
        "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
        "prefix_caching": features.prefix_caching,
        "fp8_kv_cache": features.fp8_kv_cache,
        "speculative_config": speculative,
        "lora": [{"name": a.name, "source": a.source} for a in features.lora_adapters],
        "image": image_for(engine, gpu),
        "resources": resources,
        "env": sorted(env, key=lambda e: str(e["name"])),
        "shm_size": _gib(max(1, 2 * plan.tensor_parallel) if not cpu else 1),
        "cache_size": _gib(weights_per_pod * 1.25 + 5),
        "startup_failure_threshold": startup_failure_threshold(weights_per_pod),
        "node_selector": node_selector,
        "tolerations": tolerations,
        "non_root_uid": NON_ROOT_UID,
        "run_as_non_root": engine == "llamacpp",
    }
    return ctx


def _containers(ctx: Mapping[str, Any], role: str) -> list[dict[str, Any]]:
    engine = ctx["engine"]
    args = _pairs(_render(f"{engine}/args.yaml.j2", **ctx) or [])
    container = _render(f"{engine}/container.yaml.j2", **ctx, role=role, args=args)
    return [container]


def _pod_template(ctx: Mapping[str, Any], role: str) -> dict[str, Any]:
    containers = _containers(ctx, role)
    template: dict[str, Any] = _render(
        "common/pod-template.yaml.j2", **ctx, role=role, containers=containers
    )
    return template


def _engine_containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template.get("spec", {})
    return [c for c in spec.get("containers", []) if c.get("name") == ENGINE_CONTAINER]


def strategic_merge(base: Any, patch: Any) -> Any:
    """A small strategic merge: what `podTemplatePatch` means.

    Dicts merge key by key, recursively; a `None` value in the patch deletes the key.
    Lists whose items are all dicts with a `name` (containers, initContainers, volumes,
    env, volumeMounts, ports...) merge item by item on `name`: a patch item with a known
    name merges into it, a new name is appended. Every other list, and every scalar,
    replaces the base value. Neither input is modified.

    Args:
        base: the rendered value.
        patch: the user's patch.

    Returns:
        The merged value.
    """
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if _named_list(base) and _named_list(patch):
        merged = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged)}
        for item in patch:
            if item["name"] in index:
                i = index[item["name"]]
                merged[i] = strategic_merge(merged[i], item)
            else:
                index[item["name"]] = len(merged)
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(patch)


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and "name" in i for i in value)


def _apply_overrides(llmd: LLMDeployment, template: dict[str, Any], serving: bool) -> None:
    """Apply spec.overrides to one pod template in place.

    `serving` is False for LeaderWorkerSet workers: they run Ray, not the engine's
    server, so extra arguments do not apply to them.
    """
    over = llmd.spec.overrides
    for container in _engine_containers(template):
        if over.image:
            container["image"] = over.image
        if over.extra_args and serving:
            container["args"] = [*container.get("args", []), *over.extra_args]
        if over.env:
            env = {e["name"]: e for e in container.get("env", [])}
            for var in over.env:
                env[var.name] = {"name": var.name, "value": var.value}
            container["env"] = sorted(env.values(), key=lambda e: str(e["name"]))
        if over.resources is not None:
            container["resources"] = copy.deepcopy(over.resources)
    if over.pod_template_patch:
        patched = strategic_merge(template, over.pod_template_patch)
        template.clear()
        template.update(patched)


def spec_hash(*specs: Mapping[str, Any]) -> str:
    """A short, stable hash of rendered pod specs (canonical JSON, SHA-256)."""
    text = json.dumps(list(specs), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stamp(templates: Sequence[dict[str, Any]]) -> None:
    digest = spec_hash(*(t.get("spec", {}) for t in templates))
    for template in templates:
        meta = template.setdefault("metadata", {})
        meta.setdefault("annotations", {})[ANNOTATION_SPEC_HASH] = digest


def render_objects(
    llmd: LLMDeployment,
    plan: PlanStatus,
    gpu: GpuType,
    replicas: int,
    model: ModelEntry | None = None,
    *,
    monitoring: bool = False,
) -> list[dict[str, Any]]:
    """The child objects that serve an LLMDeployment under a plan.

    Args:
        llmd: the LLMDeployment (metadata.name required; metadata.namespace optional).
        plan: the chosen plan (`status.plan`).
        gpu: the catalog entry of plan.gpu.
        replicas: serving replicas (pods, or pod groups for multi-node plans).
        model: the catalog entry of the model (GGUF repository, canonical HF id); None
            for a model described by spec.model.architecture.
        monitoring: also render a PodMonitor (prometheus-operator).

    Returns:
        Objects in apply order: the workload (Deployment, or LeaderWorkerSet when a
        replica spans nodes), the Service, a PodDisruptionBudget when replicas > 1 and a
        PodMonitor when asked. No ownerReferences: the reconciler adds them.

    Raises:
        RenderError: the spec cannot be served as written by the planned engine.
    """
    ctx = _context(llmd, plan, gpu, replicas, model, monitoring)
    objects: list[dict[str, Any]] = []
    if ctx["multinode"]:
        leader = _pod_template(ctx, "leader")
        worker = _pod_template(ctx, "worker")
        _apply_overrides(llmd, leader, serving=True)
        _apply_overrides(llmd, worker, serving=False)
        _stamp([leader, worker])
        objects.append(
            _render("common/leaderworkerset.yaml.j2", **ctx, leader=leader, worker=worker)
        )
    else:
        pod = _pod_template(ctx, "single")
        _apply_overrides(llmd, pod, serving=True)
        _stamp([pod])
        objects.append(_render("common/deployment.yaml.j2", **ctx, pod=pod))
    objects.append(_render("common/service.yaml.j2", **ctx))
    if replicas > 1:
        objects.append(_render("common/pdb.yaml.j2", **ctx))
    if monitoring:
        objects.append(_render("common/podmonitor.yaml.j2", **ctx))
    return objects


def to_yaml(objects: Sequence[Mapping[str, Any]]) -> str:
    """Multi-document YAML of rendered objects, keys in rendered order."""
    return yaml.safe_dump_all(
        [dict(o) for o in objects], sort_keys=False, default_flow_style=False, width=100
    )


def render_for(
    llmd: LLMDeployment, catalog: Catalog, *, monitoring: bool = False
) -> list[dict[str, Any]]:
    """Plan an LLMDeployment and render its objects in one call (`llmctl render`).

    The replica count is the planner's (target tokens/s within min/max and budget), or
    spec.replicas when scaling.mode is external and it is set.

    Args:
        llmd: the LLMDeployment.
        catalog: models and GPU types.
        monitoring: also render a PodMonitor.

    Raises:
        RenderError: no feasible plan, or the plan cannot be rendered.
        PlanInputError: the spec names an unknown model or GPU type.
    """
    # NOTE: imported here so that importing the renderer does not pull in the planner.
    from llm_operator.planner.search import plan as make_plan

    result = make_plan(llmd.spec, catalog)
    if result.chosen is None:
        closest = "; ".join(f"{r.label}: {r.reason}" for r in result.rejected[:3])
        raise RenderError(f"spec: no feasible plan ({closest or 'no GPU type available'})")
    chosen = result.chosen.to_status()
    entry: ModelEntry | None = None
    try:
        entry = catalog.model(llmd.spec.model.name)
    except UnknownNameError:
        if llmd.spec.model.architecture is None:
            raise
    replicas = result.replicas
    if llmd.spec.scaling.mode == "external" and llmd.spec.replicas is not None:
        replicas = llmd.spec.replicas
    return render_objects(
        llmd, chosen, catalog.gpu(chosen.gpu), replicas, entry, monitoring=monitoring
    )
