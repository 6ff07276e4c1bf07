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


@pytest.fixture(autouse=True)
def _no_hugging_face_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reaches the Hugging Face Hub or reads the developer's cache or token.

    `llm_operator.hub` reads HF_HUB_OFFLINE, HF_ENDPOINT and HF_HUB_CACHE when asked, so a
    test that serves config.json itself (tests/hub_server.py) sets HF_ENDPOINT and unsets
    HF_HUB_OFFLINE. NOTE: huggingface_hub reads HF_HUB_OFFLINE once, when imported; it is
    imported first so that the offline switch below stays ours.
    """
    from llm_operator import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing answers
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub-cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub.clear_memo()
