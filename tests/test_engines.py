"""The engines' one interface: the capability matrix is the single source of what each
engine supports, and the docs show it as generated."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from llm_operator import engines
from llm_operator.engines import Ask

DOC = Path(__file__).resolve().parents[1] / "docs" / "engines.md"


def test_docs_show_the_generated_support_matrix() -> None:
    text = DOC.read_text()
    found = re.search(r"<!-- support-matrix:start -->\n(.*)<!-- support-matrix:end -->", text, re.S)
    assert found is not None, "docs/engines.md lost its support-matrix markers"
    assert found.group(1) == engines.support_matrix(), "run `llmctl engines` into docs/engines.md"
    out = subprocess.run(
        [str(Path(sys.executable).with_name("llmctl")), "engines"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == engines.support_matrix()


@pytest.mark.parametrize(
    ("engine", "ask", "field", "words"),
    [
        ("vllm", Ask("int4"), "spec.model.name", "only from a checkpoint quantized"),
        ("vllm", Ask("fp16", model_type="gemma2"), "spec.quantization", "refuses float16"),
        ("vllm", Ask("bf16", accelerator="amd"), "spec.hardware.gpuTypes", "no verified amd"),
        ("vllm", Ask("awq", checkpoint="gptq"), "spec.quantization", "stored as gptq"),
        ("vllm", Ask("bf16", speculative_method="draft_model"), "method", "draft_model"),
        ("tgi", Ask("awq", checkpoint="awq", accelerator="amd"), "gpuTypes", "nvidia only"),
        ("tgi", Ask("fp32"), "spec.quantization", "does not serve fp32"),
        ("tgi", Ask("bf16", multi_node=True), "spec.hardware", "cannot span"),
        ("llamacpp", Ask("q4_k_m"), "spec.model.name", "no GGUF repository"),
        (
            "llamacpp",
            Ask("q4_k_m", gguf_repo=True, lora_adapters=(engines.Lora("a", "b", 8),)),
            "loraAdapters",
            "LoRA",
        ),
    ],
)
def test_refusals_name_the_field_and_the_limit(
    engine: str, ask: Ask, field: str, words: str
) -> None:
    refused = engines.get(engine).refusals(ask)
    assert refused, f"{engine} accepted {ask}"
    assert any(field in r.field and words in r.message for r in refused), refused


@pytest.mark.parametrize(
    ("engine", "ask"),
    [
        ("vllm", Ask("bf16", accelerator="nvidia")),
        ("vllm", Ask("fp8", accelerator="nvidia")),  # quantized while loading
        ("vllm", Ask("fp8", checkpoint="fp8", accelerator="nvidia")),
        ("vllm", Ask("awq", checkpoint="awq", accelerator="nvidia")),
        ("tgi", Ask("int8", accelerator="nvidia")),  # EETQ while loading
        ("tgi", Ask("gptq", checkpoint="gptq", accelerator="amd")),
        ("llamacpp", Ask("q4_k_m", gguf_repo=True, accelerator="cpu", fp8_kv_cache=True)),
    ],
)
def test_supported_combinations_are_accepted(engine: str, ask: Ask) -> None:
    assert engines.get(engine).refusals(ask) == []


def test_kv_cache_element_sizes_follow_each_engine() -> None:
    assert engines.get("vllm").kv_cache_element_bytes("bf16", True, "nvidia") == 1.0
    assert engines.get("llamacpp").kv_cache_element_bytes("q4_k_m", True, "cpu") == 34 / 32
    assert engines.get("tgi").kv_cache_element_bytes("bf16", False, "nvidia") == 2.0
