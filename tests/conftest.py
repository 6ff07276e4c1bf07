"""Shared builders for unit tests: `make_spec(**overrides)` and the built-in catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llm_operator.api.v1alpha1 import LLMDeploymentSpec
from llm_operator.catalog import Catalog, load_catalog

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def make_spec(**overrides: Any) -> LLMDeploymentSpec:
    """A valid spec (Llama-3.1-8B, bf16, vLLM) with camelCase overrides merged in."""
    base: dict[str, Any] = {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "quantization": "bf16",
        "engine": "vllm",
        "workload": {"inputTokens": 1024, "outputTokens": 256},
    }
    return LLMDeploymentSpec.model_validate(_merge(base, overrides))


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()
