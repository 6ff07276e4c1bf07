"""Resolving any model through the real huggingface_hub client, against a local Hub.

`tests/hub_server.py` answers the routes `hf_hub_download` asks (HF_ENDPOINT points at it);
nothing here reaches the internet. Covers `hub` (fetch, cache, memo, classified errors,
local directories and GGUF files), `llmctl` with a Hugging Face id, a directory or
`--model-config`, and the operator's side (`reconcile.run.resolve_model`, `desired_state`
with a resolved model).
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.utils._http as hf_http
import pytest
import yaml
from gguf import LlamaFileType
from kubernetes import client

from llm_operator import hub
from llm_operator.api.v1alpha1 import Architecture, LLMDeployment
from llm_operator.catalog import Catalog
from llm_operator.catalog.resolve import ConfigError, architecture_from_config
from llm_operator.cli import main
from llm_operator.errors import InvalidSpecError, TransientError
from llm_operator.kube import Kube
from llm_operator.planner.search import plan
from llm_operator.reconcile.desired import ChildState, desired_state
from llm_operator.reconcile.run import resolve_model
from tests.conftest import make_spec
from tests.hub_server import LocalHub, fixture_config
from tests.test_resolve import _gguf

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
COPY = "someone/llama-3.1-8b-finetune"  # not in the catalog: the same config.json
CONFIG_PATH = "/someone/llama-3.1-8b-finetune/resolve/main/config.json"


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    with LocalHub() as server:
        server.add(COPY, fixture_config(LLAMA))
        server.add("org/gated", fixture_config(LLAMA), token="hf_good")
        server.add(
            "someone/awq-copy",
            fixture_config("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"),
        )
        server.add("someone/gguf-only", b"GGUF", filename="model.gguf")
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        yield server


@pytest.fixture(scope="session")
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections and never answers (a hung Hub or proxy).

    It stays up for the whole session: the fetches left behind by the deadline keep timing
    out against it instead of meeting a closed port (on a refused connection
    huggingface_hub closes its shared HTTP client, under any other fetch in flight).
    """
    with socket.create_server(("127.0.0.1", 0), backlog=64) as sock:
        host, port = sock.getsockname()[:2]
        yield f"http://{host}:{port}"


class _Clock:
    """huggingface_hub's `time` with an instant `sleep`: its retries (1, 2, 4, 8, 8 s) run
    at once, so no fetch outlives the test that started it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        del seconds


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    before = set(threading.enumerate())
    monkeypatch.setattr(hf_http, "time", _Clock())
    yield
    for worker in set(threading.enumerate()) - before:
        if worker.name.startswith("hub-fetch"):
            worker.join(timeout=10)
            assert not worker.is_alive()


def test_config_json_through_the_client_equals_the_catalog(
    local_hub: LocalHub, catalog: Catalog
) -> None:
    resolved = hub.resolve(COPY)
    assert resolved.architecture == catalog.model(LLAMA).architecture
    assert resolved.origin == f"config.json of {COPY}@main"
    assert [(r.method, r.path) for r in local_hub.requests] == [
        ("HEAD", CONFIG_PATH),
        ("GET", CONFIG_PATH),
    ]


def test_memo_then_disk_cache_then_offline(local_hub: LocalHub) -> None:
    hub.resolve(COPY)
    hub.resolve(COPY)
    assert len(local_hub.requests) == 2  # the second answer came from the memo
    hub.clear_memo()
    hub.resolve(COPY)
    assert [r.method for r in local_hub.requests[2:]] == ["HEAD"]  # cached file, same ETag
    hub.clear_memo()
    offline = hub.resolve(COPY, options=hub.HubOptions(offline=True))
    assert offline.architecture.layers == 32 and len(local_hub.requests) == 3


def test_the_disk_cache_answers_when_the_hub_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalHub() as server:
        server.add(COPY, fixture_config(LLAMA))
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        hub.resolve(COPY)
    hub.clear_memo()
    # The same endpoint, nothing listening: huggingface_hub falls back to its cache.
    assert hub.resolve(COPY, options=hub.HubOptions(timeout_s=2)).architecture.layers == 32


def test_a_revision_is_asked_for_by_name(local_hub: LocalHub) -> None:
    local_hub.add(COPY, fixture_config("mistralai/Mistral-7B-v0.1"), revision="v2")
    assert hub.resolve(COPY, revision="v2").architecture.sliding_window == 4096
    assert local_hub.requests[-1].path == CONFIG_PATH.replace("/main/", "/v2/")
    with pytest.raises(hub.ModelNotFound, match="no such revision"):
        hub.resolve(COPY, revision="v3")


def test_failures_are_classified(local_hub: LocalHub) -> None:
    with pytest.raises(hub.ModelNotFound, match="no such model on the Hub"):
        hub.resolve("nobody/nothing")
    with pytest.raises(hub.ModelNotFound, match=r"has no config\.json"):
        hub.resolve("someone/gguf-only")
    with pytest.raises(hub.ModelGated, match="gated"):
        hub.resolve("org/gated", token=False)
    with pytest.raises(hub.ModelGated):
        hub.resolve("org/gated", token="hf_wrong")
    assert hub.resolve("org/gated", token="hf_good").architecture.layers == 32
    assert local_hub.requests[-1].authorization == "Bearer hf_good"
    with pytest.raises(hub.ModelNotFound, match="neither a local path nor a Hugging Face id"):
        hub.resolve("not a/valid/id")


@pytest.mark.usefixtures("no_backoff")
def test_an_unreachable_hub_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")  # HF_ENDPOINT is the discard port: refused
    with pytest.raises(hub.HubUnavailable, match="cannot be reached"):
        hub.resolve(COPY, options=hub.HubOptions(timeout_s=2))


def test_a_hung_hub_is_cut_off_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch, silent_endpoint: str
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", silent_endpoint)
    started = time.monotonic()
    with pytest.raises(hub.HubUnavailable, match=r"did not answer within 0\.9 s"):
        hub.resolve(COPY, options=hub.HubOptions(timeout_s=0.3))
    assert time.monotonic() - started < 3


@pytest.mark.usefixtures("no_backoff")
def test_a_failing_hub_is_transient(local_hub: LocalHub) -> None:
    local_hub.fail_with = 503
    with pytest.raises(hub.HubUnavailable, match="503"):
        hub.resolve(COPY, options=hub.HubOptions(timeout_s=2))


def test_offline_without_a_cached_copy_is_not_found() -> None:
    with pytest.raises(hub.ModelNotFound, match="not in the local cache, and the Hub is not"):
        hub.resolve(COPY)  # the test session is offline (conftest)


def test_local_directory_and_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_bytes(fixture_config("Qwen/Qwen3-30B-A3B"))
    assert hub.resolve(str(tmp_path / "ckpt")).architecture.experts == 128
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        hub.resolve(str(tmp_path))
    gguf = _gguf(tmp_path / "m.gguf", "llama", LlamaFileType.MOSTLY_Q5_K_M)
    resolved = hub.resolve(str(gguf))
    assert resolved.quantization == "q5_k_m" and resolved.architecture.layers == 2


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_llmctl_plans_a_hub_model_exactly_as_the_catalog_one(
    local_hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--quantization", "bf16", "--engine", "vllm", "--gpu", "H100", "--output", "json"]
    code, out, _ = run_cli(capsys, "plan", "--model", COPY, *args)
    assert code == 0
    hub_plan = json.loads(out)
    assert [r.path for r in local_hub.requests] == [CONFIG_PATH, CONFIG_PATH]
    code, out, _ = run_cli(capsys, "plan", "--model", LLAMA, *args)
    assert code == 0 and len(local_hub.requests) == 2  # a catalog hit asks nothing
    catalog_plan = json.loads(out)
    assert hub_plan == catalog_plan  # the same weights, KV cache, context, speed and cost
    assert hub_plan["weightsGibPerGpu"] == pytest.approx(catalog_plan["weightsGibPerGpu"], rel=0.01)


def test_llmctl_directory_model_config_and_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "awq").mkdir()
    config = tmp_path / "awq" / "config.json"
    config.write_bytes(fixture_config("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"))
    code, out, _ = run_cli(capsys, "plan", "--model", str(tmp_path / "awq"), "--output", "json")
    assert code == 0 and json.loads(out)["quantization"] == "awq"  # the checkpoint's own
    code, out, _ = run_cli(
        capsys, "plan", "--model", "my-70b", "--model-config", str(config), "--output", "json"
    )
    assert code == 0 and json.loads(out)["quantization"] == "awq"
    estimate = ["--gpu", "H100", "--gpus", "1", "--tensor-parallel", "1", "--engine", "vllm",
                "--input-tokens", "1000", "--output-tokens", "200", "--concurrency", "8",
                "--output", "json"]  # fmt: skip
    code, out, _ = run_cli(
        capsys, "estimate", "--model-config", str(config), "--quantization", "awq", *estimate
    )
    assert code == 0 and json.loads(out)["fits"] is True
    from_config = json.loads(out)
    twin = "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
    code, out, _ = run_cli(capsys, "estimate", "--model", twin, "--quantization", "awq", *estimate)
    assert code == 0 and json.loads(out) == from_config  # the catalog's own numbers


def test_llmctl_plans_a_gguf_file_in_its_own_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf = _gguf(tmp_path / "tiny.gguf", "llama", LlamaFileType.MOSTLY_Q4_K_M)
    code, out, err = run_cli(
        capsys, "plan", "--model", str(gguf), "--allow-cpu", "--output", "json"
    )
    assert code == 0, err
    chosen = json.loads(out)
    assert (chosen["engine"], chosen["quantization"]) == ("llamacpp", "q4_k_m")
    code, _, err = run_cli(capsys, "plan", "--model", str(gguf), "--quantization", "q8_0")
    assert code == 2 and "stores its weights as q4_k_m" in err


def test_llmctl_unknown_model_names_the_closest_and_the_hub(
    local_hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "plan", "--model", "meta-llama/Llama-3.1-8B-Instrukt")
    assert code == 2
    assert "closest: meta-llama/Llama-3.1-8B-Instruct" in err and "no such model" in err


def test_llmctl_resolve_prints_an_architecture_to_paste(
    local_hub: LocalHub, capsys: pytest.CaptureFixture[str], catalog: Catalog
) -> None:
    code, out, err = run_cli(capsys, "resolve", COPY)
    assert code == 0, err
    assert out.startswith(f"# {COPY}: from config.json of {COPY}@main")
    doc = yaml.safe_load(out)
    assert (
        Architecture.model_validate(doc["model"]["architecture"])
        == catalog.model(LLAMA).architecture
    )


def test_llmctl_render_reads_a_hub_model_of_a_file(
    local_hub: LocalHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "llmd.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "serving.llm-operator.io/v1alpha1",
                "kind": "LLMDeployment",
                "metadata": {"name": "finetune"},
                "spec": {"model": {"name": COPY}, "quantization": "bf16", "engine": "vllm"},
            }
        )
    )
    code, out, err = run_cli(capsys, "render", "-f", str(path))
    assert code == 0, err
    deployment = next(d for d in yaml.safe_load_all(out) if d["kind"] == "Deployment")
    assert COPY in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


class _Kube:
    """Stands in for Kube.secret_value; records what was read."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets
        self.reads: list[str] = []

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        self.reads.append(f"{namespace}/{name}/{key}")
        return self.secrets.get(f"{namespace}/{name}/{key}")


def _llmd(model: dict[str, Any], generation: int = 1) -> LLMDeployment:
    spec = make_spec(model=model).model_dump(by_alias=True, exclude_none=True)
    return LLMDeployment.model_validate(
        {
            "apiVersion": "serving.llm-operator.io/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"name": "m", "namespace": "team", "generation": generation},
            "spec": spec,
        }
    )


def test_operator_resolves_only_what_the_catalog_does_not_know(
    local_hub: LocalHub, catalog: Catalog
) -> None:
    kube = _Kube({"team/hf/token": "hf_good"})
    secret = {"hfTokenSecret": {"name": "hf"}}
    assert resolve_model(kube, _llmd({"name": LLAMA, **secret}), catalog) is None  # type: ignore[arg-type]
    assert kube.reads == [] and local_hub.requests == []  # catalog hit: no Secret, no network
    arch = resolve_model(kube, _llmd({"name": "org/gated", **secret}), catalog)  # type: ignore[arg-type]
    assert arch == catalog.model(LLAMA).architecture
    assert kube.reads == ["team/hf/token"]
    assert local_hub.requests[-1].authorization == "Bearer hf_good"


@pytest.mark.parametrize(
    ("model", "secrets", "field", "words"),
    [
        ({"name": "nobody/nothing"}, {}, "spec.model.name", "set spec.model.architecture"),
        ({"name": "org/gated"}, {}, "spec.model.hfTokenSecret", "set spec.model.hfTokenSecret"),
        (
            {"name": "org/gated", "hfTokenSecret": {"name": "hf"}},
            {},
            "spec.model.hfTokenSecret",
            "Secret team/hf with key 'token' was not found",
        ),
        (
            {"name": "org/gated", "hfTokenSecret": {"name": "hf"}},
            {"team/hf/token": "hf_wrong"},
            "spec.model.hfTokenSecret",
            "has no access to it",
        ),
        (
            {"name": "my-gguf", "source": "pvc", "uri": "models/llama-q4_k_m.gguf"},
            {},
            "spec.model.architecture",
            "whose header the operator cannot read",
        ),
    ],
)
def test_operator_names_what_to_set(
    local_hub: LocalHub,
    catalog: Catalog,
    model: dict[str, Any],
    secrets: dict[str, str],
    field: str,
    words: str,
) -> None:
    with pytest.raises(InvalidSpecError) as err:
        resolve_model(_Kube(secrets), _llmd(model), catalog)  # type: ignore[arg-type]
    assert err.value.field == field and words in str(err.value)
    assert "hf_wrong" not in str(err.value)  # a token never reaches a message


def test_operator_offline_refuses_an_uncached_model(catalog: Catalog) -> None:
    with pytest.raises(InvalidSpecError) as err:
        resolve_model(_Kube({}), _llmd({"name": "acme/not-a-model"}), catalog)  # type: ignore[arg-type]
    message = str(err.value)  # what e2e/tests/test_operator.py expects of an unknown model
    assert err.value.field == "spec.model.name" and "HF_HUB_OFFLINE" in message
    assert "spec.model.architecture" in message


@pytest.mark.usefixtures("no_backoff")
def test_operator_retries_when_the_hub_is_down(
    monkeypatch: pytest.MonkeyPatch, catalog: Catalog
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(TransientError) as err:
        resolve_model(
            _Kube({}),  # type: ignore[arg-type]
            _llmd({"name": COPY}),
            catalog,
            hub.HubOptions(timeout_s=2),
        )
    assert err.value.delay > 0 and "spec.model.name" in str(err.value)


def test_desired_state_plans_and_renders_a_resolved_model(catalog: Catalog) -> None:
    awq = architecture_from_config(
        json.loads(fixture_config("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"))
    )
    llmd = _llmd({"name": "someone/awq-copy"})
    llmd = llmd.model_copy(update={"spec": llmd.spec.model_copy(update={"quantization": "auto"})})
    d = desired_state(llmd, catalog, None, ChildState(), resolved=awq)
    assert d.status.plan is not None and d.status.plan.quantization == "awq"
    container = next(o for o in d.objects if o["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert "someone/awq-copy" in container["args"]
    with pytest.raises(InvalidSpecError, match=r"spec\.model\.name"):
        desired_state(llmd, catalog, None, ChildState())  # nothing resolved it
    # A resolved model plans as its catalog twin does.
    twin = plan(
        make_spec(
            model={"name": "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"},
            quantization="awq",
        ),
        catalog,
    )
    copy = plan(
        make_spec(model={"name": "someone/awq-copy"}, quantization="awq"), catalog, resolved=awq
    )
    assert twin.chosen is not None and copy.chosen is not None
    assert twin.chosen.to_status() == copy.chosen.to_status()


def test_kube_reads_one_secret_value(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = client.V1Secret(data={"token": base64.b64encode(b"hf_value\n").decode()})

    class Core:
        def read_namespaced_secret(self, name: str, namespace: str) -> client.V1Secret:
            if name != "hf":
                raise client.ApiException(status=404)
            return secret

    monkeypatch.setattr(client, "CoreV1Api", lambda api=None: Core())
    kube = Kube(client.ApiClient())
    assert kube.secret_value("team", "hf", "token") == "hf_value"
    assert kube.secret_value("team", "hf", "other") is None
    assert kube.secret_value("team", "absent", "token") is None


def test_fixtures_name_their_source() -> None:
    sources = (Path(__file__).parent / "data" / "configs" / "SOURCES.md").read_text()
    for path in sorted((Path(__file__).parent / "data" / "configs").glob("*.json")):
        repo = path.stem.replace("--", "/")
        assert f"https://huggingface.co/{repo}/blob/main/config.json" in sources, repo
