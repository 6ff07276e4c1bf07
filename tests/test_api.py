"""The API models, the generated CRD and the examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from llm_operator.api import crd
from llm_operator.api.v1alpha1 import LLMDeployment, LLMDeploymentSpec
from tests.conftest import EXAMPLES, ROOT, make_spec

CRD_FILE = ROOT / "crds" / "serving.llm-operator.io_llmdeployments.yaml"


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == crd.crd_yaml(), "crds/ drifted: run `make crds`"


def _walk(schema: dict[str, Any], path: str) -> list[str]:
    missing = []
    for name, prop in schema.get("properties", {}).items():
        here = f"{path}.{name}"
        if "description" not in prop:
            missing.append(here)
        missing += _walk(prop, here)
        if "items" in prop:
            missing += _walk(prop["items"], here + "[]")
    return missing


def test_every_spec_and_status_field_has_a_description() -> None:
    versions = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    assert _walk(versions["spec"], "spec") == []
    assert _walk(versions["status"], "status") == []


def test_crd_is_structural() -> None:
    text = CRD_FILE.read_text()
    for forbidden in ("$ref", "anyOf", "$defs", "title:", "const:"):
        assert forbidden not in text


def test_crd_has_printer_columns_and_subresources() -> None:
    version = crd.crd()["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == [
        "Model", "GPU", "TP", "PP", "Replicas", "Ready", "Tok/s", "$/hr", "Age", "Tok/s from"
    ]  # fmt: skip
    assert [c.get("priority", 0) for c in version["additionalPrinterColumns"]][-1] == 1
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert "status" in version["subresources"]


def test_max_model_len_is_int_or_string() -> None:
    spec = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    field = spec["properties"]["context"]["properties"]["maxModelLen"]
    assert field["x-kubernetes-int-or-string"] is True
    assert make_spec(context={"maxModelLen": 4096}).context.max_model_len == 4096
    assert make_spec().context.max_model_len == "auto"


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"scaling": {"minReplicas": 3, "maxReplicas": 2}}, "scaling", "minReplicas"),
        ({"quantization": "q4_k_m", "engine": "vllm"}, "", "engine vllm serves quantization"),
        ({"quantization": "int3"}, "quantization", "Input should be"),
        ({"model": {"name": "x", "source": "pvc"}}, "model", "model.uri is required"),
        ({"context": {"maxModelLen": 8}}, "context", "at least 16"),
        ({"scaling": {"scaleToZeroAfterSeconds": 60}}, "scaling", "minReplicas: 0"),
        ({"workload": {"inputTokens": 0}}, "workload.inputTokens", "greater than"),
        ({"budget": {"maxCostPerHour": 1, "maxCostPerHuor": 2}}, "budget", "Extra inputs"),
        ({"scaling": {"mode": "external"}}, "", "replicas is required when scaling.mode"),
    ],
)
def test_invalid_specs_name_the_field(overrides: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_spec(**overrides)
    errors = info.value.errors()
    locs = [".".join(str(p) for p in e["loc"]) for e in errors]
    assert any(loc.startswith(field) for loc in locs), locs
    assert any(message in e["msg"] for e in errors), errors


def test_every_cel_rule_has_a_python_twin() -> None:
    """Each CEL rule in the CRD comes from a `Rule`, so llmctl and the apiserver agree."""
    text = CRD_FILE.read_text()
    rules = [v for v in yaml.safe_load(text)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
             ["properties"]["spec"].get("x-kubernetes-validations", [])]  # fmt: skip
    assert rules, "spec-level CEL rules expected"
    assert text.count("x-kubernetes-validations") >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: Path(p).stem)
def test_examples_are_valid_llmdeployments(path: Path) -> None:
    obj = LLMDeployment.model_validate(yaml.safe_load(path.read_text()))
    assert obj.metadata["name"]
    assert isinstance(obj.spec, LLMDeploymentSpec)


def test_round_trip_uses_camel_case() -> None:
    spec = make_spec(scaling={"minReplicas": 0, "scaleToZeroAfterSeconds": 600})
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["scaling"]["scaleToZeroAfterSeconds"] == 600
    assert LLMDeploymentSpec.model_validate(dumped) == spec
