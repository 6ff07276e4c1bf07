"""Renderer: goldens per example, Kubernetes schema validation, engine flags, invariants."""

from __future__ import annotations

import copy
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from llm_operator import engines
from llm_operator.api.v1alpha1 import LLMDeployment, ModelSpec, PlanStatus
from llm_operator.catalog import Catalog, GpuType, load_catalog
from llm_operator.engines import Ask
from llm_operator.render import (
    ANNOTATION_SPEC_HASH,
    IMAGES,
    RenderError,
    render_for,
    render_objects,
    strategic_merge,
    to_yaml,
)
from tests.conftest import EXAMPLES, ROOT, make_spec
from tests.regen_golden import golden_text

K8S_VERSION = "1.34"
# The LeaderWorkerSet CRD ships inside the pinned sigs.k8s.io/lws module;
# e2e/cluster/tools.sh (`make tools`) copies it to the tools cache.
TOOLS_SH = ROOT / "e2e" / "cluster" / "tools.sh"
LWS_CRD = "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
SECRET_TOKEN = "hf_SHOULD_NEVER_BE_RENDERED"

# NOTE: which flags each engine accepts is not modelled here: tests/test_engine_contracts.py
# feeds what is rendered to the engines' own parsers and binaries at the pinned versions.


# ---------------------------------------------------------------- builders and helpers


def make_llmd(name: str = "chat", namespace: str | None = "team-a", **spec: Any) -> LLMDeployment:
    """A valid LLMDeployment (Llama-3.1-8B, bf16, vLLM) with camelCase spec overrides."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return LLMDeployment(metadata=metadata, spec=make_spec(**spec))


def load_example(path: Path) -> LLMDeployment:
    return LLMDeployment.model_validate(yaml.safe_load(path.read_text()))


def pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Deployment":
        return [obj["spec"]["template"]]
    if obj["kind"] == "LeaderWorkerSet":
        lwt = obj["spec"]["leaderWorkerTemplate"]
        return [lwt["leaderTemplate"], lwt["workerTemplate"]]
    return []


def engine_container(obj: dict[str, Any]) -> dict[str, Any]:
    """The serving container of the workload (the leader's for a LeaderWorkerSet)."""
    containers = pod_templates(obj)[0]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "engine")


def flag_values(args: list[str]) -> dict[str, list[str]]:
    """Flags and the values that follow each (up to the next flag)."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for arg in args:
        if arg.startswith("-") and not arg.lstrip("-").replace(".", "").isdigit():
            current = arg
            out.setdefault(arg, [])
        elif current is not None:
            out[current].append(arg)
    return out


def _strict(schema: Any) -> Any:
    """Forbid unknown fields where the CRD would prune them (structural schema)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def lws_validator() -> jsonschema.Draft7Validator:
    """The openAPIV3Schema of LeaderWorkerSet v1, from the CRD in the tools cache."""
    crd_dir = subprocess.run(
        [str(TOOLS_SH), "--print-crd-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = Path(crd_dir) / LWS_CRD
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make tools` (or e2e/cluster/tools.sh lws-crds)")
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def validate(obj: dict[str, Any]) -> None:
    """Validate one rendered object against the Kubernetes (or its CRD's) schema."""
    if obj["kind"] == "LeaderWorkerSet":
        errors = sorted(lws_validator().iter_errors(obj), key=lambda e: list(e.path))
        assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
        for template in pod_templates(obj):
            wrapped = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": obj["metadata"]["name"]},
                "template": template,
            }
            kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)
    elif obj["kind"] == "PodMonitor":
        # NOTE: no prometheus-operator CRD is vendored; check the fields we rely on.
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        endpoint = obj["spec"]["podMetricsEndpoints"][0]
        assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@st.composite
def plans(draw: st.DrawFn, catalog: Catalog) -> tuple[PlanStatus, GpuType]:
    """A consistent plan: engine, device, TP x PP within what the device's nodes hold."""
    gpu = draw(st.sampled_from(catalog.gpus))
    if gpu.kind == "cpu":
        engine, tp, pp, nodes = "llamacpp", 1, 1, 1
    else:
        engine = draw(st.sampled_from(["vllm", "tgi", "llamacpp"]))
        per_node = gpu.gpus_per_node
        if engine == "llamacpp":
            tp, pp, nodes = 1, 1, 1
        else:
            tp = draw(st.sampled_from([d for d in (1, 2, 4, 8) if d <= per_node]))
            if engine == "tgi":
                pp, nodes = 1, 1
            else:
                pp = draw(st.sampled_from([1, 2, 4]))
                if tp * pp <= per_node:
                    nodes = 1
                elif tp == per_node or per_node % tp == 0:
                    nodes = tp * pp // per_node if (tp * pp) % per_node == 0 else pp
                else:
                    nodes = pp
    quant = draw(st.sampled_from(sorted(engines.get(engine).capabilities.quantizations)))
    # Only what the engine serves for the 16-bit checkpoint `llmd_for` names, on this GPU.
    assume(
        not engines.get(engine).refusals(
            Ask(quantization=quant, accelerator=gpu.accelerator, gguf_repo=True)
        )
    )
    mml = draw(st.integers(min_value=256, max_value=131072))
    plan = PlanStatus(
        gpu=gpu.name,
        gpus_per_replica=tp * pp,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        nodes_per_replica=nodes,
        engine=engine,
        quantization=quant,
        max_model_len=mml,
        max_concurrent_sequences=draw(st.integers(min_value=1, max_value=1024)),
        weights_gib_per_gpu=draw(st.floats(min_value=0.5, max_value=80)),
        kv_cache_gib_per_gpu=draw(st.floats(min_value=0, max_value=60)),
        ttft_ms=100.0,
        tpot_ms=20.0,
        output_tokens_per_second=500.0,
        cost_per_hour=4.0,
        cost_per_million_output_tokens=2.0,
    )
    return plan, gpu


def llmd_for(plan: PlanStatus, **spec: Any) -> LLMDeployment:
    base: dict[str, Any] = {
        "engine": plan.engine,
        "quantization": plan.quantization,
        "model": {"name": "meta-llama/Llama-2-7b-chat-hf", "hfTokenSecret": {"name": "hf"}},
    }
    base.update(spec)
    return make_llmd(**base)


# ---------------------------------------------------------------- goldens and examples


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: Path(p).stem)
def test_golden_matches_rendered_example(path: Path) -> None:
    golden = ROOT / "tests" / "golden" / path.name
    assert golden.exists(), "run `python tests/regen_golden.py`"
    assert golden_text(path) == golden.read_text(), "run `python tests/regen_golden.py`"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: Path(p).stem)
def test_example_objects_validate(path: Path, catalog: Catalog) -> None:
    objects = render_for(load_example(path), catalog, monitoring=True)
    kinds = [o["kind"] for o in objects]
    assert "Service" in kinds and kinds[-1] == "PodMonitor", kinds
    for obj in objects:
        validate(obj)
        assert "ownerReferences" not in obj["metadata"]


def test_images_are_pinned() -> None:
    for image in IMAGES.values():
        tag = image.rsplit(":", 1)[1]
        assert tag not in {"latest", "server", "server-cuda", "main"}
        assert any(ch.isdigit() for ch in tag)


def test_multinode_example_is_a_leaderworkerset_with_ray(catalog: Catalog) -> None:
    path = next(p for p in EXAMPLES if "405b" in p.name)
    objects = render_for(load_example(path), catalog)
    lws, service = objects[0], objects[1]
    assert lws["kind"] == "LeaderWorkerSet"
    lwt = lws["spec"]["leaderWorkerTemplate"]
    leader = lwt["leaderTemplate"]["spec"]["containers"][0]
    worker = lwt["workerTemplate"]["spec"]["containers"][0]
    assert "ray start --head" in leader["command"][2]
    assert "exec vllm serve" in leader["command"][2]
    assert leader["args"][leader["args"].index("--distributed-executor-backend") + 1] == "ray"
    assert worker["command"][2] == "ray start --address=$(LWS_LEADER_ADDRESS):6379 --block"
    assert lwt["size"] >= 2
    # Pods that serve HTTP: the leaders, whatever the workload kind; never the workers.
    llmd_label = "serving.llm-operator.io/llmdeployment"
    serves = "serving.llm-operator.io/serves"
    assert service["spec"]["selector"] == {llmd_label: "llama-3-1-405b", serves: "http"}
    assert lwt["leaderTemplate"]["metadata"]["labels"][serves] == "http"
    assert serves not in lwt["workerTemplate"]["metadata"]["labels"]
    hashes = {t["metadata"]["annotations"][ANNOTATION_SPEC_HASH] for t in pod_templates(lws)}
    assert len(hashes) == 1


# ---------------------------------------------------------------- object shape


def _single(catalog: Catalog, **spec: Any) -> list[dict[str, Any]]:
    return render_for(make_llmd(**spec), catalog)


def render_for_plan(catalog: Catalog, **spec: Any) -> PlanStatus:
    """The plan `llmctl` would choose for make_llmd(**spec)."""
    from llm_operator.planner.search import plan

    chosen = plan(make_llmd(**spec).spec, catalog).chosen
    assert chosen is not None
    return chosen.to_status()


def test_labels_selector_names_and_namespace(catalog: Catalog) -> None:
    objects = render_for(make_llmd(scaling={"minReplicas": 2}), catalog, monitoring=True)
    assert [o["kind"] for o in objects] == [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "PodMonitor",
    ]
    want = {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": "chat",
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/managed-by": "llm-operator",
        "serving.llm-operator.io/llmdeployment": "chat",
        "serving.llm-operator.io/engine": "vllm",
    }
    selector = {
        "serving.llm-operator.io/llmdeployment": "chat",
        "serving.llm-operator.io/engine": "vllm",
    }
    for obj in objects:
        assert obj["metadata"]["name"] == "chat"
        assert obj["metadata"]["namespace"] == "team-a"
        assert obj["metadata"]["labels"] == want
    deployment, service, pdb, monitor = objects
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    assert deployment["spec"]["template"]["metadata"]["labels"] == {
        **want,
        "serving.llm-operator.io/serves": "http",
    }
    assert service["spec"]["selector"] == {
        "serving.llm-operator.io/llmdeployment": "chat",
        "serving.llm-operator.io/serves": "http",
    }
    assert service["spec"]["ports"][0]["name"] == "http"
    assert service["spec"]["ports"][0]["port"] == 8000
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    relabel = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]
    assert relabel["targetLabel"] == "llmdeployment"
    assert relabel["sourceLabels"] == [
        "__meta_kubernetes_pod_label_serving_llm_operator_io_llmdeployment"
    ]


def test_namespace_omitted_when_absent(catalog: Catalog) -> None:
    objects = render_for(make_llmd(namespace=None), catalog)
    assert all("namespace" not in o["metadata"] for o in objects)


def test_vllm_container(catalog: Catalog) -> None:
    spec = {
        "features": {
            "fp8KvCache": True,
            "speculativeDecoding": {
                "method": "eagle",
                "model": "yuhuili/EAGLE-LLaMA3.1-Instruct-8B",
                "numSpeculativeTokens": 3,
            },
            "loraAdapters": [{"name": "sql", "source": "org/sql-lora", "rank": 64}],
        },
        "hardware": {
            "gpuTypes": ["L40S"],
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        },
    }
    deployment = _single(catalog, **spec)[0]
    pod = deployment["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["vllm", "serve"]
    assert c["args"][0] == "meta-llama/Llama-3.1-8B-Instruct"
    flags = flag_values(c["args"][1:])
    assert flags["--gpu-memory-utilization"] == ["0.9"]
    assert flags["--kv-cache-dtype"] == ["fp8"]
    assert flags["--lora-modules"] == ['{"name":"sql","path":"org/sql-lora"}']
    assert flags["--max-lora-rank"] == ["64"]
    assert "--enable-lora" in flags and "--enable-prefix-caching" in flags
    assert flags["--speculative-config"] == [
        '{"method":"eagle","model":"yuhuili/EAGLE-LLaMA3.1-Instruct-8B","num_speculative_tokens":3}'
    ]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HOME"] == "/home/engine" and env["USER"] == "vllm"
    gpus = c["resources"]["limits"]["nvidia.com/gpu"]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L40S", "pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert {"key": "dedicated", "operator": "Exists"} in pod["tolerations"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"


def test_tgi_flags_and_quantization(catalog: Catalog) -> None:
    c = engine_container(_single(catalog, engine="tgi", quantization="fp8")[0])
    flags = flag_values(c["args"])
    assert flags["--quantize"] == ["fp8"]
    assert int(flags["--max-input-tokens"][0]) < int(flags["--max-total-tokens"][0])
    assert "command" not in c  # the image's entrypoint runs the launcher


def test_llamacpp_on_cpu(catalog: Catalog) -> None:
    objects = _single(
        catalog,
        model={"name": "meta-llama/Llama-2-7b-chat-hf"},
        engine="llamacpp",
        quantization="q4_k_m",
        context={"maxModelLen": 4096},
        hardware={"gpuTypes": ["CPU"], "allowCpu": True},
    )
    pod = objects[0]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    flags = flag_values(c["args"])
    assert flags["--hf-repo"] == ["TheBloke/Llama-2-7B-Chat-GGUF:Q4_K_M"]
    assert flags["--threads"] == ["32"] and flags["--n-gpu-layers"] == ["0"]
    assert flags["--host"] == ["0.0.0.0"] and flags["--port"] == ["8000"]
    # One unified KV cache for every slot: --ctx-size is slots x the longest request.
    slots = int(flags["--parallel"][0])
    assert int(flags["--ctx-size"][0]) == slots * 4096
    assert "nvidia.com/gpu" not in c["resources"]["requests"]
    assert set(c["resources"]["requests"]) == {"cpu", "memory", "ephemeral-storage"}
    assert "tolerations" not in pod and "nodeSelector" not in pod
    assert c["image"] == IMAGES["llamacpp-cpu"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_pvc_model_source_mounts_the_claim(catalog: Catalog) -> None:
    model = {"name": "meta-llama/Llama-3.1-8B-Instruct", "source": "pvc", "uri": "weights/l8b"}
    deployment = _single(catalog, model=model)[0]
    pod = deployment["spec"]["template"]["spec"]
    cache_volume = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert cache_volume["persistentVolumeClaim"]["claimName"] == "weights"
    assert pod["containers"][0]["args"][0] == "/models/l8b"


def test_unsupported_source_is_refused(catalog: Catalog) -> None:
    model = {"name": "meta-llama/Llama-3.1-8B-Instruct", "source": "url", "uri": "https://x/y"}
    with pytest.raises(ValidationError, match=r"engine vllm loads models from hf, pvc, s3"):
        make_llmd(model=model)
    # An object admitted before the rule existed is still refused by the renderer.
    llmd = make_llmd()
    stale = llmd.model_copy(
        update={"spec": llmd.spec.model_copy(update={"model": ModelSpec.model_validate(model)})}
    )
    plan = render_for_plan(catalog)
    with pytest.raises(RenderError, match=r"spec\.model\.source"):
        render_objects(stale, plan, catalog.gpu(plan.gpu), 1, None)


def test_startup_probe_grows_with_model_size(catalog: Catalog) -> None:
    small = engine_container(_single(catalog)[0])
    big = engine_container(
        _single(
            catalog,
            model={"name": "meta-llama/Llama-3.1-70B-Instruct"},
            hardware={"gpuTypes": ["H100"]},
        )[0]
    )
    assert big["startupProbe"]["failureThreshold"] > small["startupProbe"]["failureThreshold"]


# ---------------------------------------------------------------- overrides


def test_overrides_apply_last_and_still_validate(catalog: Catalog) -> None:
    overrides = {
        "image": "registry.example.com/vllm:patched",
        "extraArgs": ["--enforce-eager"],
        "env": [{"name": "HF_HOME", "value": "/cache"}, {"name": "A_FIRST", "value": "1"}],
        "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "64Gi"}},
        "podTemplatePatch": {
            "spec": {
                "priorityClassName": "inference",
                "containers": [{"name": "engine", "workingDir": "/tmp"}],
                "volumes": [{"name": "extra", "emptyDir": {}}],
            }
        },
    }
    plain = _single(catalog)[0]
    deployment = _single(catalog, overrides=overrides)[0]
    validate(deployment)
    pod = deployment["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "registry.example.com/vllm:patched"
    assert c["args"][-1] == "--enforce-eager"
    assert [e["name"] for e in c["env"]] == sorted(e["name"] for e in c["env"])
    assert {"name": "HF_HOME", "value": "/cache"} in c["env"]
    assert c["resources"] == {"limits": {"nvidia.com/gpu": 1, "memory": "64Gi"}}
    assert c["workingDir"] == "/tmp" and c["ports"]  # merged by name, not replaced
    assert [v["name"] for v in pod["volumes"]] == ["dshm", "home", "model-cache", "extra"]
    assert pod["priorityClassName"] == "inference"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (
        annotations[ANNOTATION_SPEC_HASH]
        != plain["spec"]["template"]["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    )


def test_strategic_merge() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "items": [{"name": "x", "v": 1}], "gone": 1}
    patch = {"a": {"c": [3]}, "items": [{"name": "x", "w": 2}, {"name": "y"}], "gone": None}
    assert strategic_merge(base, patch) == {
        "a": {"b": 1, "c": [3]},
        "items": [{"name": "x", "v": 1, "w": 2}, {"name": "y"}],
    }
    assert base["items"] == [{"name": "x", "v": 1}]  # inputs untouched


# ---------------------------------------------------------------- properties


@cache
def _catalog() -> Catalog:
    return load_catalog()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_invariants_over_plans(data: st.DataObject) -> None:
    catalog = _catalog()
    plan, gpu = data.draw(plans(catalog))
    replicas = data.draw(st.integers(min_value=1, max_value=4))
    llmd = llmd_for(plan)
    model = catalog.model(llmd.spec.model.name)
    objects = render_objects(llmd, plan, gpu, replicas, model)
    # Same input, byte-identical output.
    assert to_yaml(objects) == to_yaml(render_objects(llmd, plan, gpu, replicas, model))
    workload = objects[0]
    assert workload["kind"] == ("LeaderWorkerSet" if plan.nodes_per_replica > 1 else "Deployment")
    assert workload["spec"]["replicas"] == replicas
    assert plan.tensor_parallel * plan.pipeline_parallel == plan.gpus_per_replica
    c = engine_container(workload)
    per_pod = int(
        c["resources"]["limits"].get(
            "nvidia.com/gpu", c["resources"]["limits"].get("amd.com/gpu", "0")
        )
    )
    if gpu.kind == "cpu":
        assert per_pod == 0
    else:
        assert per_pod * plan.nodes_per_replica == plan.gpus_per_replica
        assert per_pod <= gpu.gpus_per_node
        # Host memory stays within what a node of that many GPUs offers (24 GiB per GPU).
        host = c["resources"]["requests"]["memory"]
        assert host.endswith("Gi") and float(host[:-2]) <= 24 * per_pod, host
    flags = flag_values(c["args"][1:] if plan.engine == "vllm" else c["args"])
    if plan.engine == "llamacpp":
        # One KV pool of --ctx-size tokens for --parallel slots of max_model_len each.
        slots = int(flags["--parallel"][0])
        assert int(flags["--ctx-size"][0]) == slots * plan.max_model_len
    else:
        context = {"vllm": "--max-model-len", "tgi": "--max-total-tokens"}
        assert int(flags[context[plan.engine]][0]) <= plan.max_model_len
    if plan.engine == "vllm":
        tp = int(flags["--tensor-parallel-size"][0])
        pp = int(flags["--pipeline-parallel-size"][0])
        assert tp * pp == plan.gpus_per_replica
    # The HF token comes from the Secret only.
    for template in pod_templates(workload):
        for container in template["spec"]["containers"]:
            token = [e for e in container["env"] if e["name"] == "HF_TOKEN"]
            assert token == [
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
            ]
    for obj in objects:
        validate(obj)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    image=st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8})?:[a-z0-9.]{1,8}", fullmatch=True),
    args=st.lists(st.from_regex(r"--[a-z][a-z-]{0,12}", fullmatch=True), max_size=3),
    env=st.dictionaries(
        st.from_regex(r"[A-Z][A-Z_]{0,10}", fullmatch=True), st.text(max_size=20), max_size=3
    ),
)
def test_overrides_always_validate(
    data: st.DataObject, image: str, args: list[str], env: dict[str, str]
) -> None:
    catalog = _catalog()
    plan, gpu = data.draw(plans(catalog))
    overrides = {
        "image": image,
        "extraArgs": args,
        "env": [{"name": k, "value": v} for k, v in env.items()],
    }
    llmd = llmd_for(plan, overrides=overrides)
    objects = render_objects(llmd, plan, gpu, 2, catalog.model(llmd.spec.model.name))
    for obj in objects:
        validate(obj)
    for template in pod_templates(objects[0]):
        c = template["spec"]["containers"][0]
        assert c["image"] == image
        names = [e["name"] for e in c["env"]]
        assert names == sorted(names) and set(env) <= set(names)
    leader = engine_container(objects[0])
    assert leader["args"][len(leader["args"]) - len(args) :] == args


def test_hf_token_value_never_inline(catalog: Catalog) -> None:
    llmd = make_llmd(
        model={"name": "meta-llama/Llama-3.1-8B-Instruct", "hfTokenSecret": {"name": "s"}},
        overrides={"podTemplatePatch": {"metadata": {"annotations": {"x": "y"}}}},
    )
    text = to_yaml(render_for(llmd, catalog))
    assert SECRET_TOKEN not in text
    docs = list(yaml.safe_load_all(text))
    env = engine_container(docs[0])["env"]
    token = next(e for e in env if e["name"] == "HF_TOKEN")
    assert "value" not in token and token["valueFrom"]["secretKeyRef"]["name"] == "s"


def test_render_is_pure(catalog: Catalog) -> None:
    llmd = make_llmd(overrides={"podTemplatePatch": {"spec": {"hostIPC": False}}})
    before = copy.deepcopy(llmd.model_dump())
    render_for(llmd, catalog)
    assert llmd.model_dump() == before


# ---------------------------------------------------------------- model cache


def test_cache_is_sized_from_what_is_downloaded(catalog: Catalog) -> None:
    # FP8 from a 16-bit checkpoint: the whole 16-bit checkpoint is downloaded (~15 GiB for
    # the 8B), not the ~8 GiB of FP8 weights the GPU holds.
    deployment = _single(catalog, quantization="fp8", hardware={"gpuTypes": ["H100"]})[0]
    pod = deployment["spec"]["template"]["spec"]
    cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    size = int(cache["emptyDir"]["sizeLimit"].removesuffix("Gi"))
    assert 15 <= size <= 20, size
    requests = pod["containers"][0]["resources"]["requests"]
    assert int(requests["ephemeral-storage"].removesuffix("Gi")) >= size


def test_shared_cache_is_one_claim_filled_by_a_job_and_mounted_read_only(
    catalog: Catalog,
) -> None:
    objects = _single(
        catalog,
        model={
            "name": "meta-llama/Llama-3.1-8B-Instruct",
            "hfTokenSecret": {"name": "hf"},
            "cache": {"shared": True, "storageClassName": "efs"},
        },
        scaling={"minReplicas": 2},
    )
    kinds = [o["kind"] for o in objects]
    assert kinds[:4] == ["Deployment", "Service", "PersistentVolumeClaim", "Job"], kinds
    deployment, _, claim, job = objects[:4]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "efs"
    pod = deployment["spec"]["template"]["spec"]
    cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert cache["persistentVolumeClaim"] == {
        "claimName": claim["metadata"]["name"],
        "readOnly": True,
    }
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"
    runner = job["spec"]["template"]["spec"]
    download = runner["containers"][0]
    assert download["image"] == pod["containers"][0]["image"]  # the engine's own image
    assert download["command"][:2] == ["python3", "-c"]
    assert "snapshot_download(repo_id='meta-llama/Llama-3.1-8B-Instruct'" in download["command"][2]
    assert runner["volumes"][0]["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in (
        download["env"]
    )
    assert runner["securityContext"]["runAsNonRoot"] is True
    for obj in objects:
        validate(obj)
    # Another model is another claim and Job (a Job's template cannot change).
    other = _single(
        catalog,
        model={"name": "meta-llama/Llama-3.1-8B", "cache": {"shared": True}},
    )
    assert other[2]["metadata"]["name"] != claim["metadata"]["name"]
    assert other[3]["metadata"]["name"] != job["metadata"]["name"]


def test_shared_cache_refused_where_the_engine_cannot_fill_one(catalog: Catalog) -> None:
    with pytest.raises(RenderError, match=r"spec\.model\.cache\.shared: llamacpp cannot fill"):
        _single(
            catalog,
            model={"name": "meta-llama/Llama-2-7b-chat-hf", "cache": {"shared": True}},
            engine="llamacpp",
            quantization="q4_k_m",
            hardware={"gpuTypes": ["CPU"], "allowCpu": True},
        )


def test_tgi_on_rocm_prefills_a_whole_prompt_at_once(catalog: Catalog) -> None:
    c = engine_container(
        _single(catalog, engine="tgi", quantization="bf16", hardware={"gpuTypes": ["MI300X"]})[0]
    )
    flags = flag_values(c["args"])
    assert int(flags["--max-batch-prefill-tokens"][0]) > int(flags["--max-input-tokens"][0])
    assert c["image"].endswith("-rocm")


def test_engine_images_replace_the_upstream_reference(catalog: Catalog) -> None:
    llmd = make_llmd()
    chosen = render_for_plan(catalog)
    mirror = {"vllm-nvidia": "registry.example.com/vllm/vllm-openai:v0.12.0"}
    objects = render_objects(llmd, chosen, catalog.gpu(chosen.gpu), 1, None, images=mirror)
    assert engine_container(objects[0])["image"] == mirror["vllm-nvidia"]
    other = {"llamacpp-cpu": "registry.example.com/llama.cpp:server-b10380"}
    plain = render_objects(llmd, chosen, catalog.gpu(chosen.gpu), 1, None, images=other)
    assert engine_container(plain[0])["image"] == "vllm/vllm-openai:v0.12.0"


def test_engine_images_setting_names_a_bad_item() -> None:
    from llm_operator.settings import parse_images

    assert parse_images(" llamacpp-cpu=a:1 , ") == {"llamacpp-cpu": "a:1"}
    with pytest.raises(ValueError, match="LLM_OPERATOR_ENGINE_IMAGES: 'vllm' is not"):
        parse_images("vllm")
