"""The CRD's CEL rules on the real apiserver: what no engine or install allows is refused at
`kubectl apply`, with a message naming the field.

Two families, both generated (api/v1alpha1.py): the capability matrix of an explicitly
chosen engine (engines/), and the guards on overrides.podTemplatePatch (api/security.py).
The same objects go through pydantic offline (tests/test_api.py); here the apiserver, whose
CEL cost estimator must also accept the rules, is the judge.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from helpers import GROUP, PLURAL, VERSION

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llama-3.1-8b-a10g-vllm.yaml"


def _object(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"] = {**copy.deepcopy(body["spec"]), **spec}
    return body


def _refusal(custom: client.CustomObjectsApi, body: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, body["metadata"]["namespace"], PLURAL, body
        )
    assert info.value.status == 422, info.value.body
    return str(json.loads(info.value.body)["message"])


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "gguf-on-vllm": (
        {"engine": "vllm", "quantization": "q4_k_m"},
        'spec.quantization: Invalid value: "object": engine vllm serves quantization',
    ),
    "fp32-on-tgi": ({"engine": "tgi", "quantization": "fp32"}, "engine tgi serves quantization"),
    "url-source-on-vllm": (
        {"model": {"name": "x/y", "source": "url", "uri": "https://example.com/m.gguf"}},
        "engine vllm loads models from hf, pvc, s3",
    ),
    "speculation-on-tgi": (
        {"engine": "tgi", "quantization": "bf16", "features": {"speculativeDecoding": {}}},
        "features.speculativeDecoding is supported by vllm only",
    ),
    "eagle-without-its-head": (
        {"features": {"speculativeDecoding": {"method": "eagle"}}},
        "speculativeDecoding.model is required for eagle",
    ),
    "lora-on-llamacpp": (
        {
            "engine": "llamacpp",
            "quantization": "q4_k_m",
            "features": {"loraAdapters": [{"name": "a", "source": "b/c"}]},
        },
        "features.loraAdapters are served by tgi, vllm only",
    ),
    "host-network": (
        {"overrides": {"podTemplatePatch": {"spec": {"hostNetwork": True}}}},
        "spec.overrides.podTemplatePatch: Invalid value",
    ),
    "host-path": (
        {
            "overrides": {
                "podTemplatePatch": {
                    "spec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
                }
            }
        },
        "may not add hostPath volumes",
    ),
    "privileged-init-container": (
        {
            "overrides": {
                "podTemplatePatch": {
                    "spec": {
                        "initContainers": [
                            {
                                "name": "x",
                                "image": "busybox",
                                "securityContext": {"privileged": True},
                            }
                        ]
                    }
                }
            }
        },
        "may not make a container privileged",
    ),
    "added-capability": (
        {
            "overrides": {
                "podTemplatePatch": {
                    "spec": {
                        "containers": [
                            {
                                "name": "engine",
                                "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
                            }
                        ]
                    }
                }
            }
        },
        "add capabilities",
    ),
    "service-account": (
        {"overrides": {"podTemplatePatch": {"spec": {"serviceAccountName": "admin"}}}},
        "may not set serviceAccountName",
    ),
    "host-port": (
        {
            "overrides": {
                "podTemplatePatch": {
                    "spec": {"containers": [{"name": "engine", "ports": [{"hostPort": 80}]}]}
                }
            }
        },
        "may not open host ports",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_apiserver_refuses_what_no_engine_or_install_allows(
    crds: list[str], custom: client.CustomObjectsApi, namespace: str, case: str
) -> None:
    del crds
    spec, expected = REFUSED[case]
    message = _refusal(custom, _object(namespace, case, **spec))
    assert expected in message, message


def test_harmless_patches_and_integer_resources_are_admitted(
    crds: list[str], custom: client.CustomObjectsApi, namespace: str
) -> None:
    del crds
    body = _object(
        namespace,
        "harmless",
        overrides={
            "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "64Gi"}},
            "podTemplatePatch": {
                "spec": {
                    "priorityClassName": "inference",
                    "hostNetwork": False,
                    "containers": [{"name": "engine", "securityContext": {"privileged": False}}],
                    "volumes": [{"name": "extra", "emptyDir": {}}],
                }
            },
        },
    )
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert created["spec"]["overrides"]["resources"]["limits"]["nvidia.com/gpu"] == 1
