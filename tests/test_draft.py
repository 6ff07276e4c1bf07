"""Speculative draft heads: read from their own config.json, checked against the model they
draft for, and sized into the plan (issue 15, item 6).

The draft configs here are written for the tests in the layouts vLLM v0.12.0 loads
(vllm/transformers_utils/configs/{eagle,medusa,mlp_speculator}.py), shaped for
Llama-3.1-8B-Instruct (hidden 4096, vocabulary 128256); they are not copies of published
heads. The operator reads them through the real huggingface_hub client from the local Hub
of tests/hub_server.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from llm_operator.api.v1alpha1 import LLMDeployment
from llm_operator.catalog import Catalog
from llm_operator.catalog.resolve import ConfigError, DraftHead, draft_head_from_config
from llm_operator.errors import InvalidSpecError
from llm_operator.planner.search import plan
from llm_operator.reconcile.run import resolve_draft
from tests.conftest import make_spec
from tests.hub_server import LocalHub

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"

# One Llama-3.1-8B decoder layer as an EAGLE head's config (LlamaConfig fields).
EAGLE: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 1,
    "vocab_size": 128256,
}
EAGLE3 = {**EAGLE, "architectures": ["LlamaForCausalLMEagle3"], "draft_vocab_size": 32000}
MEDUSA = {"medusa_num_heads": 4, "medusa_num_layers": 1, "hidden_size": 4096, "vocab_size": 128256}
MLP = {
    "model_type": "mlp_speculator",
    "emb_dim": 4096,
    "inner_dim": 3072,
    "n_predict": 4,
    "vocab_size": 128256,
}


def _head(config: dict[str, Any], method: str, catalog: Catalog) -> DraftHead:
    target = catalog.model(LLAMA).architecture
    return draft_head_from_config(config, method, target, LLAMA, "config.json of org/head")


def test_a_heads_size_comes_from_its_own_config(catalog: Catalog) -> None:
    eagle = _head(EAGLE, "eagle", catalog)
    # One decoder layer of Llama-3.1-8B is 218M parameters (8.03B minus 1.05B of
    # embeddings, over 32 layers), plus the 2 x 4096 x 4096 fc.
    assert 240e6 < eagle.params < 260e6
    two_layers = _head({**EAGLE, "num_hidden_layers": 2}, "eagle", catalog)
    assert two_layers.params - eagle.params == pytest.approx(218e6, rel=0.01)
    # EAGLE-3 carries its own output head over its draft vocabulary.
    assert _head(EAGLE3, "eagle3", catalog).params > eagle.params + 32000 * 4096
    # vLLM's converted EAGLEConfig nests the decoder config under "model".
    assert _head({"model": EAGLE}, "eagle", catalog) == eagle
    medusa = _head(MEDUSA, "medusa", catalog)
    assert _head({**MEDUSA, "medusa_num_heads": 2}, "medusa", catalog).params * 2 == medusa.params
    tied = _head({**MLP, "tie_weights": True}, "mlp_speculator", catalog)
    assert tied.params < _head(MLP, "mlp_speculator", catalog).params / 3


@pytest.mark.parametrize(
    ("config", "method", "words"),
    [
        (
            {**EAGLE, "hidden_size": 5120},
            "eagle",
            "hidden size 4096, so it was trained for another model",
        ),
        ({**EAGLE, "vocab_size": 32000}, "eagle3", "vocabulary of 32000 tokens"),
        ({**MLP, "emb_dim": 2048}, "mlp_speculator", "emb_dim 2048"),
        ({**MEDUSA, "vocab_size": 152064}, "medusa", "another tokenizer"),
        ({**EAGLE, "num_attention_heads": "many"}, "eagle", "num_attention_heads is 'many'"),
    ],
)
def test_a_head_for_another_model_is_refused(
    catalog: Catalog, config: dict[str, Any], method: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _head(config, method, catalog)
    assert words in str(err.value) and "config.json of org/head" in str(err.value)


def test_the_head_takes_memory_from_the_kv_cache(catalog: Catalog) -> None:
    spec = make_spec(
        hardware={"gpuTypes": ["L40S"]},
        features={"speculativeDecoding": {"method": "medusa", "model": "org/head"}},
    )
    estimated = plan(spec, catalog)
    read = plan(spec, catalog, draft=_head({**MEDUSA, "medusa_num_heads": 8}, "medusa", catalog))
    assert estimated.chosen is not None and read.chosen is not None
    assert read.chosen.tensor_parallel == estimated.chosen.tensor_parallel == 1
    # Eight heads of 542M parameters (a 4096 x 4096 block and a 128256 x 4096 output head
    # each) are 8.67 GB in 16 bits, where the estimate from the target's shape (one layer
    # and one output head) is 1.49 GB: the KV cache loses the difference.
    lost = estimated.chosen.fit.kv_bytes - read.chosen.fit.kv_bytes
    assert lost == pytest.approx(8.67e9 - 1.49e9, rel=0.01)


# --- the operator: read through the Hub ------------------------------------------------------


class _Kube:
    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        del namespace, name, key
        return "hf_good"


def _llmd(speculative: dict[str, Any]) -> LLMDeployment:
    spec = make_spec(
        model={"name": LLAMA, "hfTokenSecret": {"name": "hf"}},
        features={"speculativeDecoding": speculative},
    ).model_dump(by_alias=True, exclude_none=True)
    return LLMDeployment.model_validate(
        {
            "apiVersion": "serving.llm-operator.io/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"name": "m", "namespace": "team", "generation": 1},
            "spec": spec,
        }
    )


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    with LocalHub() as server:
        server.add("org/eagle", json.dumps(EAGLE).encode())
        server.add("org/eagle-for-qwen", json.dumps({**EAGLE, "hidden_size": 3584}).encode())
        server.add("org/gated-eagle", json.dumps(EAGLE).encode(), token="hf_other")
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        yield server


def test_the_operator_reads_the_head_with_the_models_token(
    local_hub: LocalHub, catalog: Catalog
) -> None:
    llmd = _llmd({"method": "eagle", "model": "org/eagle"})
    head = resolve_draft(_Kube(), llmd, catalog)  # type: ignore[arg-type]
    assert head is not None and head.params == _head(EAGLE, "eagle", catalog).params
    assert local_hub.requests[-1].authorization == "Bearer hf_good"
    assert resolve_draft(_Kube(), _llmd({"method": "ngram"}), catalog) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "field", "words"),
    [
        (
            "nobody/nothing",
            "spec.features.speculativeDecoding.model",
            "name a draft head (eagle) on the Hub",
        ),
        (
            "org/eagle-for-qwen",
            "spec.features.speculativeDecoding.model",
            "trained for another model",
        ),
        ("org/gated-eagle", "spec.model.hfTokenSecret", "has no access to it"),
    ],
)
def test_the_operator_names_what_is_wrong_with_the_head(
    local_hub: LocalHub, catalog: Catalog, model: str, field: str, words: str
) -> None:
    with pytest.raises(InvalidSpecError) as err:
        resolve_draft(_Kube(), _llmd({"method": "eagle", "model": model}), catalog)  # type: ignore[arg-type]
    assert err.value.field == field and words in str(err.value), str(err.value)


def test_an_offline_operator_refuses_a_head_it_cannot_read(catalog: Catalog) -> None:
    with pytest.raises(InvalidSpecError) as err:
        resolve_draft(_Kube(), _llmd({"method": "eagle3", "model": "org/eagle"}), catalog)  # type: ignore[arg-type]
    assert err.value.field == "spec.features.speculativeDecoding.model"
    assert "HF_HUB_OFFLINE" in str(err.value)
