"""LLMDeployment + plan -> the Kubernetes objects that run the engine (pure; no I/O).

`render_objects()` asks the planned engine (`llm_operator.engines`) for its image, command
line and environment, builds a context of plain values, renders the jinja2 templates under
`templates/` (`common/` for the workload, pod template, Service, PodDisruptionBudget and
PodMonitor; one folder per engine for its container) and loads each rendered YAML text
into a dict. Every value reaches YAML through `| tojson`, so a model name or a user's
extra argument can never change the document's structure. `spec.overrides` apply last
(a pod template patch that reaches the host or raises privileges is refused, see
`api.security`), then the pod template is hashed into the
`serving.llm-operator.io/spec-hash` annotation so that any change rolls the pods. Called
by `reconcile.desired` (the operator) and by `llmctl render` through `render_for()`.

Pods: no service links (Kubernetes would inject `<SERVICE>_PORT=tcp://...` variables
that vLLM reads as VLLM_PORT and TGI's launcher as PORT/MASTER_PORT), no API token,
seccomp RuntimeDefault, every capability dropped, no privilege escalation; engines whose
images allow it (vLLM, llama.cpp) run as a non-root UID with HOME on a writable volume,
which meets the `restricted` Pod Security Standard; TGI runs as its image's root user
(`baseline`, see engines/tgi.py). The model cache is an emptyDir sized from what the
engine downloads (a 16-bit checkpoint quantized while loading is downloaded whole), with
a matching `ephemeral-storage` request and a startup-probe budget that covers the
download; multi-node replicas download on every node.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jinja2
import yaml

from llm_operator import engines
from llm_operator.api import security
from llm_operator.api.v1alpha1 import Architecture, LLMDeployment, PlanStatus
from llm_operator.catalog import Catalog, GpuType, ModelEntry
from llm_operator.engines import Engine, Launch, Lora, Speculative
from llm_operator.engines.llamacpp import GGUF_TAGS

GROUP = "serving.llm-operator.io"
LABEL_LLMD = f"{GROUP}/llmdeployment"
LABEL_ENGINE = f"{GROUP}/engine"
# On every pod that serves HTTP: single-node pods and LeaderWorkerSet leaders, not workers.
LABEL_SERVES = f"{GROUP}/serves"
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"

PORT = 8000  # OpenAI-compatible HTTP port, the same for every engine
ENGINE_CONTAINER = "engine"  # name of the serving container (stable for podTemplatePatch)
MODEL_DIR = "/models"  # model cache (emptyDir) or the PVC holding the weights
HOME_DIR = "/home/engine"  # HOME and the engines' own caches (emptyDir)
HOME_SIZE_GIB = 10  # torch.compile, Triton and FlashInfer caches
GPU_MEMORY_UTILIZATION = 0.9
RAY_PORT = 6379

# Images of every engine and accelerator (from the engine modules), e.g. for `llmctl`.
IMAGES: dict[str, str] = {
    f"{name}-{accelerator}": image
    for name, engine in engines.ENGINES.items()
    for accelerator, image in engine.images.items()
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


# NOTE: libyaml's safe loader (bundled with PyYAML's wheels) parses the rendered text ~20x
# faster than the pure-Python one, which was 95% of a render (bench/plan_speed.py).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _render(template: str, **ctx: Any) -> Any:
    text = _ENV.get_template(template).render(**ctx)
    try:
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError:
        # NOTE: libyaml refuses the surrogate-pair escapes json.dumps writes for characters
        # beyond the BMP (an emoji in a user's env value); the pure-Python parser reads them.
        return yaml.safe_load(text)


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


def _model(llmd: LLMDeployment, entry: ModelEntry | None, engine: Engine) -> _Model:
    """The weights to load: exactly the checkpoint the user named.

    A catalog alias resolves to one checkpoint (never to a base or quantized sibling), so a
    catalog model is loaded by its canonical id; any other name is loaded as written.
    """
    spec = llmd.spec.model
    if spec.source not in engine.capabilities.model_sources:
        sources = ", ".join(sorted(engine.capabilities.model_sources))
        raise RenderError(
            f"spec.model.source: {engine.name} loads models from {sources}, not {spec.source}"
        )
    if spec.source == "hf":
        return _Model(ref=entry.name if entry is not None else spec.name, source="hf")
    uri = spec.uri or ""
    if spec.source == "pvc":
        claim, _, sub = uri.partition("/")
        path = f"{MODEL_DIR}/{sub}" if sub else MODEL_DIR
        return _Model(ref=path, source="pvc", pvc=claim)
    return _Model(ref=uri, source=spec.source)


def _gguf_file(llmd: LLMDeployment, entry: ModelEntry | None, quantization: str) -> str:
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


def image_for(engine: str, gpu: GpuType, images: Mapping[str, str] | None = None) -> str:
    """The pinned image of an engine for a device kind (CPU, NVIDIA or AMD).

    `images` ("<engine>-<accelerator>" -> image, the operator's LLM_OPERATOR_ENGINE_IMAGES)
    replaces the upstream reference, e.g. with a mirror in a private registry or the
    locally built image of the e2e cluster's real node; it must be the same engine build.

    Raises:
        RenderError: the engine has no image for that accelerator.
    """
    override = (images or {}).get(f"{engine}-{gpu.accelerator}")
    if override:
        return override
    try:
        return engines.get(engine).image(gpu.accelerator)
    except KeyError:
        raise RenderError(
            f"spec.hardware.gpuTypes: {engine} has no image for {gpu.accelerator} "
            f"({gpu.name}); choose another engine or GPU type"
        ) from None


def _gib(value: float) -> str:
    return f"{max(1, math.ceil(value))}Gi"


def startup_failure_threshold(download_gib: float, period_s: int = 10) -> int:
    """Startup probe failures allowed: 5 minutes plus 10 s per GiB downloaded.

    Downloading and loading run at roughly 100 MiB/s per pod in the worst case we plan
    for, so a 15 GiB model gets 7.5 minutes and a 400 GiB one about 72 minutes.
    """
    return math.ceil((300 + 10 * download_gib) / period_s)


def _launch(
    llmd: LLMDeployment,
    plan: PlanStatus,
    gpu: GpuType,
    src: _Model,
    entry: ModelEntry | None,
    threads: int,
) -> Launch:
    """What the engine's command line is made of, as plain values."""
    spec = llmd.spec
    features = spec.features
    arch = spec.model.architecture or (entry.architecture if entry is not None else None)
    spec_decoding = features.speculative_decoding
    return Launch(
        model=src.ref,
        model_source=src.source,
        gguf_file=(
            _gguf_file(llmd, entry, plan.quantization)
            if plan.engine == "llamacpp" and src.source == "hf"
            else None
        ),
        served_name=spec.model.name,
        revision=spec.model.revision,
        port=PORT,
        quantization=plan.quantization,
        checkpoint=arch.checkpoint_quantization if arch is not None else None,
        accelerator=gpu.accelerator,
        tensor_parallel=plan.tensor_parallel,
        pipeline_parallel=plan.pipeline_parallel,
        multi_node=plan.nodes_per_replica > 1,
        max_model_len=plan.max_model_len,
        max_sequences=max(1, plan.max_concurrent_sequences),
        batched_tokens=plan.max_num_batched_tokens,
        gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
        threads=threads,
        prefix_caching=features.prefix_caching,
        fp8_kv_cache=features.fp8_kv_cache,
        speculative=(
            None
            if spec_decoding is None
            else Speculative(
                method=spec_decoding.method,
                model=spec_decoding.model,
                num_tokens=spec_decoding.num_speculative_tokens,
                prompt_lookup_max=spec_decoding.prompt_lookup_max,
                prompt_lookup_min=spec_decoding.prompt_lookup_min,
            )
        ),
        lora=tuple(Lora(a.name, a.source, a.rank) for a in features.lora_adapters),
        model_dir=MODEL_DIR,
        home_dir=HOME_DIR,
    )


def _token_env(llmd: LLMDeployment) -> list[dict[str, Any]]:
    """HF_TOKEN from spec.model.hfTokenSecret (a secretKeyRef; the value is never rendered)."""
    secret = llmd.spec.model.hf_token_secret
    if secret is None:
        return []
    ref = {"name": secret.name, "key": secret.key}
    return [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}}]


def _shared_cache(
    llmd: LLMDeployment, engine: Engine, src: _Model, download_gib: float
) -> dict[str, Any] | None:
    """The shared model cache (spec.model.cache.shared): a ReadWriteMany claim that a
    download Job fills once, mounted read-only by every pod. None: per-pod emptyDir.

    Names carry a hash of what is downloaded, so a new model or revision gets a new claim
    and Job (a Job's template is immutable) and the old ones are pruned.

    Raises:
        RenderError: the engine cannot fill a shared cache.
    """
    cache = llmd.spec.model.cache
    if not cache.shared or src.source != "hf":
        return None
    command = engine.download_command(src.ref, llmd.spec.model.revision)
    if command is None:
        raise RenderError(
            f"spec.model.cache.shared: {engine.name} cannot fill a shared cache from the Hub; "
            "put the model file on a PVC (model.source: pvc) or set shared to false"
        )
    name = str(llmd.metadata.get("name") or "")
    digest = spec_hash({"model": src.ref, "revision": llmd.spec.model.revision})[:8]
    return {
        "claim": cache.claim_name or f"{name}-model-cache-{digest}",
        "create_claim": cache.claim_name is None,
        "storage_class": cache.storage_class_name,
        "size": _gib(download_gib * 1.1 + 5),
        "job": f"{name}-download-{digest}",
        "command": command,
    }


def _context(
    llmd: LLMDeployment,
    plan: PlanStatus,
    gpu: GpuType,
    replicas: int,
    model: ModelEntry | None,
    monitoring: bool,
    images: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    name = str(llmd.metadata.get("name") or "")
    if not name:
        raise RenderError("metadata.name: the LLMDeployment has no name")
    engine = engines.get(plan.engine)
    spec = llmd.spec
    cpu = gpu.kind == "cpu"
    nodes = max(1, plan.nodes_per_replica)
    # NOTE: the planner never proposes what the engine refuses; checked again here so a
    # plan kept from an older operator version cannot render a pod the engine rejects.
    arch = spec.model.architecture or (model.architecture if model is not None else None)
    ask = replace(
        spec.engine_ask(arch, gguf_repo=model is not None and model.gguf is not None),
        quantization=plan.quantization,
        accelerator=gpu.accelerator,
        multi_node=nodes > 1,
    )
    if refused := engine.refusals(ask):
        raise RenderError("; ".join(str(r) for r in refused))
    gpus_per_pod = 0 if cpu else plan.tensor_parallel * plan.pipeline_parallel // nodes
    weights_gib = plan.weights_gib_per_gpu * max(1, plan.gpus_per_replica)
    weights_per_pod = weights_gib / nodes
    # NOTE: every pod of a replica downloads the whole checkpoint (each node of a
    # multi-node group too); the plan says how large it is as stored.
    download_gib = plan.download_gib if plan.download_gib is not None else weights_gib
    src = _model(llmd, model, engine)
    shared = _shared_cache(llmd, engine, src, download_gib)
    if shared is not None:
        src = _Model(ref=src.ref, source=src.source, pvc=shared["claim"])
    cache_gib = 0.0 if src.pvc else download_gib * 1.05 + 2
    threads = _cpu_threads(gpu) if cpu else 0

    storage = {"ephemeral-storage": _gib(cache_gib + HOME_SIZE_GIB)}
    resources: dict[str, dict[str, str]]
    if cpu:
        # llama.cpp memory-maps the weights and allocates exactly its KV cache (--ctx-size)
        # plus compute buffers; the request is that, not the node's memory.
        memory = _gib(weights_gib + plan.kv_cache_gib_per_gpu + 1)
        resources = {
            "requests": {"cpu": str(threads), "memory": memory, **storage},
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
                **storage,
            },
            "limits": {resource: str(gpus_per_pod)},
        }

    launch = _launch(llmd, plan, gpu, src, model, threads)
    env = engine.env(launch) + _token_env(llmd)
    download_env = [
        {"name": "HF_HOME", "value": f"{MODEL_DIR}/hf"},
        {"name": "HOME", "value": HOME_DIR},
        *_token_env(llmd),
    ]
    if shared is not None:
        # The weights are in the shared cache (filled by the download Job): never download.
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})

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

    ctx: dict[str, Any] = {
        "name": name,
        "namespace": llmd.metadata.get("namespace"),
        "engine": engine.name,
        "labels": labels_for(name, engine.name),
        "selector": selector_for(name, engine.name),
        "service_selector": {LABEL_LLMD: name, LABEL_SERVES: "http"},
        "serving_label": {LABEL_SERVES: "http"},
        "replicas": replicas,
        "nodes": nodes,
        "multinode": nodes > 1,
        "monitoring": monitoring,
        "cpu": cpu,
        "port": PORT,
        "ray_port": RAY_PORT,
        "container_name": ENGINE_CONTAINER,
        "model_dir": MODEL_DIR,
        "home_dir": HOME_DIR,
        "home_size": _gib(HOME_SIZE_GIB),
        "pvc": src.pvc,
        "shared_cache": shared,
        "download_env": download_env,
        "args": engine.args(launch),
        "image": image_for(engine.name, gpu, images),
        "resources": resources,
        "env": sorted(env, key=lambda e: str(e["name"])),
        "shm_size": _gib(max(1, 2 * plan.tensor_parallel) if not cpu else 1),
        "cache_size": _gib(cache_gib),
        "startup_failure_threshold": startup_failure_threshold(download_gib),
        "node_selector": node_selector,
        "tolerations": tolerations,
        "run_as_user": engine.run_as_user,
    }
    return ctx


def _containers(ctx: Mapping[str, Any], role: str) -> list[dict[str, Any]]:
    container = _render(f"{ctx['engine']}/container.yaml.j2", **ctx, role=role)
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
    allow_privileged_overrides: bool = False,
    images: Mapping[str, str] | None = None,
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
        allow_privileged_overrides: the operator-level opt-in that lets
            `overrides.podTemplatePatch` reach the host or raise privileges.
        images: image references replacing the pinned upstream ones (see `image_for`).

    Returns:
        Objects in apply order: the workload (Deployment, or LeaderWorkerSet when a
        replica spans nodes), the Service, with a shared model cache its
        PersistentVolumeClaim (unless the user named one) and download Job, a
        PodDisruptionBudget when replicas > 1 and a PodMonitor when asked. No
        ownerReferences: the reconciler adds them.

    Raises:
        RenderError: the spec cannot be served as written by the planned engine, or
            its pod template patch is refused.
    """
    if not allow_privileged_overrides:
        refused = security.violations(llmd.spec.overrides.pod_template_patch)
        if refused:
            raise RenderError(f"spec.overrides.podTemplatePatch: {'; '.join(refused)}")
    ctx = _context(llmd, plan, gpu, replicas, model, monitoring, images)
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
    shared = ctx["shared_cache"]
    if shared is not None:
        if shared["create_claim"]:
            objects.append(_render("common/cache-claim.yaml.j2", **ctx))
        objects.append(_render("common/download-job.yaml.j2", **ctx))
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
    llmd: LLMDeployment,
    catalog: Catalog,
    *,
    resolved: Architecture | None = None,
    monitoring: bool = False,
    allow_privileged_overrides: bool = False,
) -> list[dict[str, Any]]:
    """Plan an LLMDeployment and render its objects in one call (`llmctl render`).

    The replica count is the planner's (target tokens/s within min/max and budget), or
    spec.replicas when scaling.mode is external and it is set.

    Args:
        llmd: the LLMDeployment.
        catalog: models and GPU types.
        resolved: the model's shape read from its own config.json by the caller
            (`hub.resolve`), for a model the catalog does not know.
        monitoring: also render a PodMonitor.
        allow_privileged_overrides: see `render_objects`.

    Raises:
        RenderError: no feasible plan, or the plan cannot be rendered.
        PlanInputError: the spec names an unknown model or GPU type.
    """
    # NOTE: imported here so that importing the renderer does not pull in the planner.
    from llm_operator.planner.search import model_entry
    from llm_operator.planner.search import plan as make_plan

    result = make_plan(llmd.spec, catalog, resolved=resolved)
    if result.chosen is None:
        closest = "; ".join(f"{r.label}: {r.reason}" for r in result.rejected[:3])
        raise RenderError(f"spec: no feasible plan ({closest or 'no GPU type available'})")
    chosen = result.chosen.to_status()
    entry = model_entry(llmd.spec, catalog, resolved)
    replicas = result.replicas
    if llmd.spec.scaling.mode == "external" and llmd.spec.replicas is not None:
        replicas = llmd.spec.replicas
    return render_objects(
        llmd,
        chosen,
        catalog.gpu(chosen.gpu),
        replicas,
        entry,
        monitoring=monitoring,
        allow_privileged_overrides=allow_privileged_overrides,
    )
