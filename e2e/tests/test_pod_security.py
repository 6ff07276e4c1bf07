"""Pod Security admission of the real apiserver admits every pod the renderer produces.

Each example and a matrix of variants (engine x quantization x feature x accelerator) is
rendered in-process as `llmctl render` does, and every pod template (a Deployment's, or a
LeaderWorkerSet's leader and worker) is created as a Pod with `dryRun=All` in a namespace
labelled `pod-security.kubernetes.io/enforce` at the level the engine promises
(`Engine.pod_security`: restricted for vLLM and llama.cpp, baseline for TGI). Admission runs
for dry-run requests, so the apiserver's own Pod Security plugin judges the pod, and a
refusal fails the test with the apiserver's message. A second check shows the guard is
real: a TGI pod is refused under `restricted`.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from helpers import Cluster
from llm_operator import engines
from llm_operator.api.v1alpha1 import LLMDeployment
from llm_operator.catalog import load_catalog
from llm_operator.cli import load_llmdeployment
from llm_operator.render import render_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
LEVEL_LABEL = "pod-security.kubernetes.io/enforce"


def _variant(name: str, **spec: Any) -> LLMDeployment:
    base: dict[str, Any] = {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "hfTokenSecret": {"name": "hf"}},
        "workload": {"inputTokens": 512, "outputTokens": 128},
    }
    base.update(spec)
    return LLMDeployment.model_validate({"metadata": {"name": name}, "spec": base})


VARIANTS: dict[str, LLMDeployment] = {
    "vllm-fp8-lora-eagle": _variant(
        "vllm-fp8",
        engine="vllm",
        quantization="fp8",
        hardware={"gpuTypes": ["H100"]},
        features={
            "fp8KvCache": True,
            "loraAdapters": [{"name": "sql", "source": "org/sql-lora", "rank": 32}],
            "speculativeDecoding": {
                "method": "eagle",
                "model": "yuhuili/EAGLE-LLaMA3.1-Instruct-8B",
            },
        },
    ),
    "vllm-pvc-no-prefix-cache": _variant(
        "vllm-pvc",
        engine="vllm",
        quantization="bf16",
        model={"name": "meta-llama/Llama-3.1-8B-Instruct", "source": "pvc", "uri": "weights/8b"},
        features={"prefixCaching": False},
        hardware={"gpuTypes": ["L40S"]},
    ),
    "tgi-bf16-mi300": _variant(
        "tgi-mi300",
        engine="tgi",
        quantization="bf16",
        hardware={"gpuTypes": ["MI300X"]},
    ),
    "tgi-eetq-lora": _variant(
        "tgi-eetq",
        engine="tgi",
        quantization="int8",
        hardware={"gpuTypes": ["A100"]},
        features={"prefixCaching": False, "loraAdapters": [{"name": "a/b", "source": "a/b"}]},
    ),
    "llamacpp-cuda-q8-kv": _variant(
        "llamacpp-cuda",
        model={"name": "meta-llama/Llama-3.1-8B-Instruct"},
        engine="llamacpp",
        quantization="q4_k_m",
        hardware={"gpuTypes": ["L4"]},
        features={"fp8KvCache": True},
    ),
    "llamacpp-cpu": _variant(
        "llamacpp-cpu",
        engine="llamacpp",
        quantization="q8_0",
        hardware={"gpuTypes": ["CPU"], "allowCpu": True},
    ),
}


def _cases() -> dict[str, LLMDeployment]:
    out = {path.stem: load_llmdeployment(path) for path in EXAMPLES}
    out.update(VARIANTS)
    return out


CASES = _cases()


@pytest.fixture(scope="module")
def levels(core: client.CoreV1Api) -> Iterator[dict[str, str]]:
    """One namespace per Pod Security level, labelled to enforce it."""
    made: dict[str, str] = {}
    for level in ("restricted", "baseline"):
        name = f"e2e-pss-{level}-{uuid.uuid4().hex[:6]}"
        core.create_namespace(
            client.V1Namespace(
                metadata=client.V1ObjectMeta(
                    name=name, labels={LEVEL_LABEL: level, "llm-operator.io/e2e": "true"}
                )
            )
        )
        made[level] = name
    try:
        yield made
    finally:
        for name in made.values():
            core.delete_namespace(name, propagation_policy="Background")


def _pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Deployment":
        return [obj["spec"]["template"]]
    if obj["kind"] == "LeaderWorkerSet":
        lwt = obj["spec"]["leaderWorkerTemplate"]
        return [lwt["leaderTemplate"], lwt["workerTemplate"]]
    return []


def _dry_run_pod(core: client.CoreV1Api, namespace: str, template: dict[str, Any]) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**copy.deepcopy(template["metadata"]), "generateName": "pss-"},
        "spec": copy.deepcopy(template["spec"]),
    }
    core.create_namespaced_pod(namespace, pod, dry_run="All")


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_pods_pass_pod_security_admission(
    cluster: Cluster, core: client.CoreV1Api, levels: dict[str, str], case: str
) -> None:
    del cluster
    llmd = CASES[case]
    workload = render_for(llmd, load_catalog())[0]
    engine = engines.get(workload["metadata"]["labels"]["serving.llm-operator.io/engine"])
    namespace = levels[engine.pod_security]
    for template in _pod_templates(workload):
        try:
            _dry_run_pod(core, namespace, template)
        except ApiException as exc:
            pytest.fail(f"{case} ({engine.name}) refused at {engine.pod_security}: {exc.body}")


def test_a_root_engine_is_refused_under_restricted(
    cluster: Cluster, core: client.CoreV1Api, levels: dict[str, str]
) -> None:
    """The check above can fail: TGI runs as root, which `restricted` forbids."""
    del cluster
    workload = render_for(VARIANTS["tgi-eetq-lora"], load_catalog())[0]
    with pytest.raises(ApiException) as err:
        _dry_run_pod(core, levels["restricted"], _pod_templates(workload)[0])
    assert err.value.status == 403
    assert "violates PodSecurity" in str(err.value.body)
