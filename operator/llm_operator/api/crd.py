"""Generate the LLMDeployment CustomResourceDefinition from the pydantic models.

pydantic emits JSON Schema (2020-12 flavour); the apiserver wants a structural OpenAPI
v3.0 schema. This module converts one into the other: `$ref`s inlined, `anyOf` with
null turned into `nullable`, int-or-string marked, titles dropped, exclusive bounds
rewritten. Called by `llmctl crd`, `make crds` and the drift test.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from llm_operator.api import v1alpha1 as api

JSON = dict[str, Any]

PRINTER_COLUMNS: list[JSON] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
    {"name": "GPU", "type": "string", "jsonPath": ".status.plan.gpu"},
    {"name": "TP", "type": "integer", "jsonPath": ".status.plan.tensorParallel"},
    {"name": "PP", "type": "integer", "jsonPath": ".status.plan.pipelineParallel"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Tok/s", "type": "number", "jsonPath": ".status.tokensPerSecond"},
    {"name": "$/hr", "type": "number", "jsonPath": ".status.costPerHour"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Tok/s from",
        "type": "string",
        "jsonPath": ".status.tokensPerSecondSource",
        "priority": 1,
    },
]

_DROP_KEYS = {"title"}


def _inline(node: Any, defs: dict[str, JSON]) -> Any:
    """Replace every `$ref` by a deep copy of its definition, recursively."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs)
    return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}


def _structural(node: Any) -> Any:
    """Rewrite one inlined JSON Schema node into the apiserver's OpenAPI v3.0 dialect."""
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: JSON = {k: _structural(v) for k, v in node.items() if k not in _DROP_KEYS}

    if out.get("x-kubernetes-int-or-string"):
        out.pop("anyOf", None)
        out.pop("type", None)
    elif "anyOf" in out:
        variants = out.pop("anyOf")
        non_null = [v for v in variants if v.get("type") != "null"]
        if len(non_null) != len(variants):
            out["nullable"] = True
        if len(non_null) != 1:
            raise ValueError(f"cannot express anyOf {variants!r} structurally")
        out = {**non_null[0], **out}

    if out.get("additionalProperties") is False:
        # NOTE: structural schemas forbid `additionalProperties: false`; the apiserver prunes
        # unknown fields instead and reports them under strict field validation.
        del out["additionalProperties"]
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out.get(bound), bool):
            out[plain] = out[bound]
            out[bound] = True
    if out.get("default", 0) is None:
        del out["default"]
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out["type"] = "object"
        out.pop("additionalProperties", None)
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def openapi_schema(model: type[api.ApiModel]) -> JSON:
    """The structural OpenAPI v3 schema of one model, refs inlined.

    Args:
        model: a pydantic model class of the API.

    Returns:
        A JSON-compatible dict usable in a CRD's openAPIV3Schema.
    """
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: JSON = _structural(_inline(raw, defs))
    return schema


def _status_schema() -> JSON:
    schema = openapi_schema(api.LLMDeploymentStatus)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def crd() -> JSON:
    """The complete LLMDeployment CustomResourceDefinition as a dict."""
    spec_schema = openapi_schema(api.LLMDeploymentSpec)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "llm-operator"},
        },
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["llm"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": api.LLMDeployment.__doc__,
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                {"rule": r.cel, "message": r.message}
                                for r in api.LLMDeployment.rules
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": _status_schema(),
                            },
                        }
                    },
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML document committed in `crds/`."""
    header = "# Generated by `llmctl crd` from llm_operator.api.v1alpha1. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)
