"""Contract tests: what we render for vLLM, TGI and llama.cpp, fed to the engines' own rules.

Every example in examples/ is rendered with `llmctl render` (the CLI, as a user runs it);
the engine container's argv and env are taken out of the rendered pod and checked:

* vLLM v0.12.0 by vLLM's own code: e2e/contracts/vllm_check.py runs in a cached
  virtualenv with vllm==0.12.0 (built by e2e/contracts/vllm_env.sh on first use) and takes
  each case through `vllm serve`'s parser, `AsyncEngineArgs` and `create_engine_config`
  on a simulated node of the planned GPU (compute capability and count from the pod's
  nodeSelector and GPU limit), with the model's config.json from e2e/contracts/configs/.
* TGI 3.3.6 by e2e/contracts/tgi_check.py: the launcher's clap flag table taken from the
  source at that tag (tgi-3.3.6-launcher.json) and the launcher's own argument checks.
* llama.cpp by the pinned llama-server binary itself (e2e/node/build.sh, the one the real
  node runs): e2e/contracts/llamacpp_check.py runs it with the rendered args and env and
  `--help` last, so its parser takes every flag and value and exits before any model.

The env includes what Kubernetes adds to the container: the `kubernetes` Service's
variables, and the service-link variables of the rendered Services unless the pod sets
`enableServiceLinks: false`. One checker process serves every vLLM case.

Both checkers are also pinned here: known-bad inputs each checker must refuse (at the
stage that refuses them in the engine) and known-good ones it must accept, so a checker
that stopped checking fails too. An example the engine refuses today is marked
xfail(strict=True) with the engine's message in KNOWN_BROKEN; fixing the renderer turns
it into an XPASS failure, the cue to delete the entry.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLES, ROOT

CONTRACTS = ROOT / "e2e" / "contracts"
VLLM_ENV_SH = CONTRACTS / "vllm_env.sh"
VLLM_CHECK = CONTRACTS / "vllm_check.py"
# llmctl of the interpreter running the tests (.venv/bin/llmctl under `make test`).
LLMCTL = Path(sys.executable).with_name("llmctl")
ENGINE_CONTAINER = "engine"
# Addresses in the service-link variables: any ClusterIP will do, their form is the point.
CLUSTER_IP = "10.96.0.10"
SECRET_VALUE = "secret-from-kubernetes"

# Examples whose rendered engine invocation the engine refuses today, with its message.
KNOWN_BROKEN: dict[str, str] = {}


@dataclass(frozen=True)
class EngineCall:
    """One engine invocation taken out of a rendered pod."""

    id: str
    engine: str  # vllm | tgi
    argv: list[str]
    env: dict[str, str]
    device: dict[str, Any] | None = None


@dataclass
class Rendered:
    """The rendered objects of one example and the engine calls found in them."""

    example: str
    objects: list[dict[str, Any]]
    calls: list[EngineCall] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # engines without a checker


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tgi_check = _load_module("tgi_check", CONTRACTS / "tgi_check.py")
llamacpp_check = _load_module("llamacpp_check", CONTRACTS / "llamacpp_check.py")


def llamacpp(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """llama-server's own parser on one invocation (skips where the node build is absent:
    E2E_REAL_NODE=0 builds no llama-server)."""
    server = llamacpp_check.binary()
    if not server.exists():
        pytest.skip(f"{server} is not built (e2e/node/build.sh llama-server)")
    result: dict[str, Any] = llamacpp_check.check(argv, env, server)
    return result


@cache
def model_configs() -> dict[str, dict[str, Any]]:
    """Model id -> files of its local model dir (e2e/contracts/configs/*.json)."""
    out = {}
    for path in sorted((CONTRACTS / "configs").glob("*.json")):
        doc = json.loads(path.read_text())
        out[doc["model"]] = doc["files"]
    return out


@cache
def gpu_products() -> dict[str, dict[str, Any]]:
    products: dict[str, dict[str, Any]] = json.loads((CONTRACTS / "nvidia-gpus.json").read_text())[
        "products"
    ]
    return products


def render_file(path: Path) -> list[dict[str, Any]]:
    """`llmctl render -f path` as multi-document YAML, parsed."""
    proc = subprocess.run(
        [str(LLMCTL), "render", "-f", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"llmctl render -f {path} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def _service_links(objects: list[dict[str, Any]]) -> dict[str, str]:
    """What the kubelet injects for the rendered Services (docker-link style variables)."""
    env: dict[str, str] = {}
    for obj in objects:
        spec = obj.get("spec", {})
        if obj.get("kind") != "Service" or spec.get("clusterIP") == "None":
            continue
        prefix = obj["metadata"]["name"].upper().replace("-", "_")
        for i, port in enumerate(spec.get("ports", [])):
            number, proto = port["port"], port.get("protocol", "TCP")
            url = f"{proto.lower()}://{CLUSTER_IP}:{number}"
            if i == 0:
                env[f"{prefix}_SERVICE_HOST"] = CLUSTER_IP
                env[f"{prefix}_SERVICE_PORT"] = str(number)
                env[f"{prefix}_PORT"] = url
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(number)
            base = f"{prefix}_PORT_{number}_{proto}"
            env[base] = url
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(number)
            env[f"{base}_ADDR"] = CLUSTER_IP
    return env


# The `kubernetes` Service's variables: injected into every container, links or not.
KUBERNETES_ENV = {
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "KUBERNETES_SERVICE_PORT_HTTPS": "443",
    "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
    "KUBERNETES_PORT_443_TCP_PORT": "443",
    "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
}


def container_env(
    pod: dict[str, Any], container: dict[str, Any], objects: list[dict[str, Any]]
) -> dict[str, str]:
    """The container's environment as the kubelet builds it (values only)."""
    env = dict(KUBERNETES_ENV)
    if pod["spec"].get("enableServiceLinks", True):
        env.update(_service_links(objects))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "secretKeyRef" in var.get("valueFrom", {}):
            env[var["name"]] = SECRET_VALUE
        else:
            ref = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
            env[var["name"]] = "10.244.0.10" if ref.endswith("IP") else "value-from-kubernetes"
    return env


def _device(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    product = pod["spec"].get("nodeSelector", {}).get("nvidia.com/gpu.product")
    assert product in gpu_products(), (
        f"GPU product {product!r} is not in e2e/contracts/nvidia-gpus.json; add it with "
        "its compute capability"
    )
    count = int(container["resources"]["limits"]["nvidia.com/gpu"])
    return {**gpu_products()[product], "count": count}


def _vllm_argv(container: dict[str, Any]) -> list[str]:
    command = container.get("command") or []
    args = [str(a) for a in container.get("args", [])]
    if command == ["vllm", "serve"]:
        return args
    # LeaderWorkerSet leader: `sh -c '<start Ray, wait> && exec vllm serve "$@"' -- args`.
    if command[:2] == ["/bin/sh", "-c"] and command[3:] == ["--"]:
        assert command[2].rstrip().endswith('exec vllm serve "$@"'), command[2]
        return args
    raise AssertionError(f"unrecognised vLLM container command {command}")


def engine_calls(example: str, objects: list[dict[str, Any]]) -> Rendered:
    """The serving containers of the rendered workloads, as checker cases."""
    rendered = Rendered(example=example, objects=objects)
    for obj in objects:
        if obj.get("kind") == "Deployment":
            pods = [("", obj["spec"]["template"])]
        elif obj.get("kind") == "LeaderWorkerSet":
            # Workers run `ray start --block`, not the engine's server.
            pods = [("/leader", obj["spec"]["leaderWorkerTemplate"]["leaderTemplate"])]
        else:
            continue
        for role, pod in pods:
            for container in pod["spec"]["containers"]:
                if container["name"] != ENGINE_CONTAINER:
                    continue
                image, call_id = container["image"], f"{example}{role}"
                env = container_env(pod, container, objects)
                if image.startswith("vllm/vllm-openai:"):
                    rendered.calls.append(
                        EngineCall(
                            call_id, "vllm", _vllm_argv(container), env, _device(pod, container)
                        )
                    )
                elif image.startswith("ghcr.io/ggml-org/llama.cpp:server"):
                    # The image's entrypoint is llama-server; the args are its argv.
                    assert not container.get("command"), container.get("command")
                    argv = [str(a) for a in container.get("args", [])]
                    rendered.calls.append(EngineCall(call_id, "llamacpp", argv, env))
                elif "text-generation-inference" in image:
                    # The image's entrypoint execs text-generation-launcher with the args.
                    assert not container.get("command"), container.get("command")
                    argv = [str(a) for a in container.get("args", [])]
                    rendered.calls.append(EngineCall(call_id, "tgi", argv, env))
                else:
                    rendered.unchecked.append(image)
    return rendered


def vllm_case(call: EngineCall) -> dict[str, Any]:
    case: dict[str, Any] = {"id": call.id, "argv": call.argv, "env": call.env}
    if call.device is not None:
        case["device"] = call.device
    files = model_configs().get(call.argv[0]) if call.argv else None
    if files is not None:
        case["config_dir_files"] = files
    return case


# ---------------------------------------------------------------- pinned vLLM cases
H100 = {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "count": 1}
A10G = {"name": "NVIDIA A10G", "capability": "8.6", "count": 1}
SERVE = ["--port", "8000", "--max-model-len", "8192"]
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
DRAFT = "meta-llama/Llama-3.2-1B-Instruct"


def _pinned(model: str, *flags: str, device: dict[str, Any] = H100, **extra: Any) -> dict:
    return {
        "argv": [model, *SERVE, *flags],
        "config_dir_files": model_configs()[model],
        "device": device,
        **extra,
    }


# id -> (case, stage the engine refuses it at, a piece of the engine's message)
VLLM_MUST_REFUSE: dict[str, tuple[dict[str, Any], str, str]] = {
    "fp8-flag-on-compressed-tensors-checkpoint": (
        _pinned("RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8-dynamic", "--quantization", "fp8"),
        "model_config",
        "does not match the quantization method specified in the `quantization` argument",
    ),
    "float16-for-gemma2": (
        _pinned("google/gemma-2-9b-it", "--dtype", "float16"),
        "model_config",
        "'gemma2' does not support float16",
    ),
    "awq-marlin-without-quantization-config": (
        _pinned(LLAMA_8B, "--quantization", "awq_marlin"),
        "vllm_config",
        "Cannot find the config file for awq_marlin",
    ),
    "gptq-marlin-on-awq-checkpoint": (
        _pinned(
            "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "--quantization", "gptq_marlin"
        ),
        "model_config",
        "does not match the quantization method",
    ),
    "speculative-draft-model": (
        _pinned(
            LLAMA_8B,
            "--speculative-config",
            json.dumps({"method": "draft_model", "model": DRAFT, "num_speculative_tokens": 4}),
            model_dirs={DRAFT: "draft"},
        ),
        "engine_config",
        "Draft model speculative decoding is not supported yet",
    ),
    "max-lora-rank-not-a-choice": (
        _pinned(LLAMA_8B, "--enable-lora", "--max-lora-rank", "24"),
        "parse",
        "argument --max-lora-rank: invalid choice: 24",
    ),
    "max-cpu-loras-below-max-loras": (
        _pinned(LLAMA_8B, "--enable-lora", "--max-loras", "4", "--max-cpu-loras", "2"),
        "lora_config",
        "max_cpu_loras (2) must be >= max_loras (4)",
    ),
    "vllm-port-is-a-service-link": (
        _pinned(LLAMA_8B, env={"VLLM_PORT": "tcp://10.0.0.1:8000"}),
        "env",
        "VLLM_PORT 'tcp://10.0.0.1:8000' appears to be a URI",
    ),
    "unknown-flag": (_pinned(LLAMA_8B, "--no-such-flag"), "parse", "unrecognized arguments"),
    "lora-module-name-equals-path-with-equals": (
        _pinned(LLAMA_8B, "--enable-lora", "--lora-modules", "sql=s3://bucket/run=3"),
        "parse",
        "too many values to unpack",
    ),
    "quantization-not-a-choice": (
        _pinned(LLAMA_8B, "--quantization", "awq-marlin"),
        "model_config",
        "Unknown quantization method: awq-marlin",
    ),
    "tensor-parallel-beyond-the-node": (
        _pinned(LLAMA_8B, "--tensor-parallel-size", "2"),
        "parallel_config",
        "Tensor parallel size (2) cannot be larger than the number of available GPUs (1)",
    ),
    "kv-cache-dtype-not-a-choice": (
        _pinned(LLAMA_8B, "--kv-cache-dtype", "fp9"),
        "parse",
        "argument --kv-cache-dtype: invalid choice: 'fp9'",
    ),
}

VLLM_MUST_ACCEPT: dict[str, dict[str, Any]] = {
    "bf16-llama": _pinned(LLAMA_8B, "--dtype", "bfloat16", device=A10G),
    "awq-checkpoint-with-awq-marlin": _pinned(
        "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "--quantization", "awq_marlin"
    ),
    "gptq-checkpoint-with-gptq-marlin": _pinned(
        "hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4", "--quantization", "gptq_marlin"
    ),
    "fp8-checkpoint-without-flag": _pinned("RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8-dynamic"),
    "lora-rank-16-with-modules": _pinned(
        LLAMA_8B,
        *("--enable-lora", "--max-lora-rank", "16", "--max-loras", "2", "--lora-modules"),
        *('{"name":"sql","path":"org/sql-lora"}', "chat=org/chat-lora"),
    ),
    "ngram-speculation": _pinned(
        LLAMA_8B,
        "--speculative-config",
        json.dumps({"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}),
    ),
    "vllm-port-a-number": _pinned(LLAMA_8B, env={"VLLM_PORT": "8000"}),
}


def _pinned_vllm_cases() -> list[dict[str, Any]]:
    cases = []
    for prefix, table in (
        ("refuse", {k: v[0] for k, v in VLLM_MUST_REFUSE.items()}),
        ("accept", VLLM_MUST_ACCEPT),
    ):
        for name, case in table.items():
            case = dict(case)
            dirs = case.pop("model_dirs", None)
            if dirs:
                case["model_dirs"] = {ref: model_configs()[ref] for ref in dirs}
            cases.append({"id": f"{prefix}:{name}", **case})
    return cases


# ---------------------------------------------------------------- fixtures
# Examples with the engine features switched on that no example uses, so that the flags
# and env they render reach the checkers too: id -> (example, patch merged into it).
FEATURE_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-3.1-8b-a10g-vllm+features": (
        "llama-3.1-8b-a10g-vllm",
        {
            "features": {
                "prefixCaching": False,
                "fp8KvCache": True,
                "speculativeDecoding": {
                    "method": "ngram",
                    "numSpeculativeTokens": 4,
                    "promptLookupMax": 4,
                },
                "loraAdapters": [
                    {"name": "sql", "source": "org/sql-lora", "rank": 16},
                    {"name": "chat", "source": "org/chat-lora", "rank": 64},
                ],
            }
        },
    ),
    # The engine x quantization x feature x accelerator matrix beyond the examples.
    "llama-3.1-8b-a10g-vllm+fp8-from-bf16-on-h100": (
        "llama-3.1-8b-a10g-vllm",
        {"quantization": "fp8", "hardware": {"gpuTypes": ["H100"]}, "budget": {}},
    ),
    "llama-3.1-8b-a10g-vllm+fp32-on-l40s": (
        "llama-3.1-8b-a10g-vllm",
        {"quantization": "fp32", "hardware": {"gpuTypes": ["L40S"]}, "budget": {}},
    ),
    "llama-3.1-8b-a10g-vllm+gemma-bf16": (
        "llama-3.1-8b-a10g-vllm",
        {"model": {"name": "google/gemma-2-9b-it"}, "hardware": {"gpuTypes": ["L4"]}},
    ),
    "mixtral-8x7b-tgi+eetq-int8": ("mixtral-8x7b-tgi", {"quantization": "int8"}),
    "mixtral-8x7b-tgi+nf4-int4": ("mixtral-8x7b-tgi", {"quantization": "int4"}),
    "mixtral-8x7b-tgi+fp8": ("mixtral-8x7b-tgi", {"quantization": "fp8"}),
    "mixtral-8x7b-tgi+features": (
        "mixtral-8x7b-tgi",
        {
            "features": {
                "prefixCaching": False,
                "fp8KvCache": True,
                "loraAdapters": [{"name": "org/chat-lora", "source": "org/chat-lora"}],
            }
        },
    ),
}
# An LLMDeployment gets a Service of its own name; these names are the ones whose
# service-link variables an engine reads (VLLM_PORT, PROMETHEUS_PORT).
BREAKING_NAMES = {"vllm": "vllm", "tgi": "prometheus"}


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in patch.items()}}
    return patch


def _render_doc(doc: dict[str, Any], directory: Path, stem: str) -> Rendered:
    path = directory / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return engine_calls(stem, render_file(path))


@pytest.fixture(scope="session")
def rendered_examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Every example, and the feature variants, as rendered by llmctl."""
    out = {path.stem: engine_calls(path.stem, render_file(path)) for path in EXAMPLES}
    tmp = tmp_path_factory.mktemp("variants")
    for stem, (example, patch) in FEATURE_VARIANTS.items():
        doc = yaml.safe_load((ROOT / "examples" / f"{example}.yaml").read_text())
        out[stem] = _render_doc({**doc, "spec": _merge(doc["spec"], patch)}, tmp, stem)
    return out


@pytest.fixture(scope="session")
def renamed_examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Each vLLM and TGI example renamed to the Service name that would break its engine."""
    out = {}
    tmp = tmp_path_factory.mktemp("renamed")
    for path in EXAMPLES:
        doc = yaml.safe_load(path.read_text())
        name = BREAKING_NAMES.get(doc["spec"].get("engine"))
        if name is not None:
            stem = f"{path.stem}@{name}"
            out[stem] = _render_doc({**doc, "metadata": {"name": name}}, tmp, stem)
    return out


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The contract env's python; built by vllm_env.sh when missing (minutes, once)."""
    proc = subprocess.run(["bash", str(VLLM_ENV_SH)], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        pytest.fail(f"e2e/contracts/vllm_env.sh failed:\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def vllm_results(
    vllm_python: str,
    rendered_examples: dict[str, Rendered],
    renamed_examples: dict[str, Rendered],
) -> dict[str, dict[str, Any]]:
    """Every vLLM case of this module, answered by one checker process."""
    cases = _pinned_vllm_cases()
    for rendered in (*rendered_examples.values(), *renamed_examples.values()):
        cases += [vllm_case(c) for c in rendered.calls if c.engine == "vllm"]
    proc = subprocess.run(
        [vllm_python, str(VLLM_CHECK)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"vllm_check.py failed:\n{proc.stderr[-4000:]}"
    return {r["id"]: r for r in json.loads(proc.stdout)}


def _check_calls(rendered: Rendered, vllm_results: dict[str, dict[str, Any]]) -> Iterator[str]:
    """A line per refused engine call."""
    for call in rendered.calls:
        if call.engine == "vllm":
            assert call.argv and call.argv[0] in model_configs(), (
                f"{call.id}: no config.json for model {call.argv[:1]} in e2e/contracts/configs/"
            )
            result = vllm_results[call.id]
        elif call.engine == "llamacpp":
            result = llamacpp(call.argv, call.env)
        else:
            result = tgi_check.check(call.argv, call.env)
        if not result["ok"]:
            yield f"{call.id} ({call.engine}, stage {result['stage']}): {result['error']}"


def _example_params() -> list[Any]:
    return [
        pytest.param(
            stem,
            id=stem,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BROKEN[stem])]
            if stem in KNOWN_BROKEN
            else [],
        )
        for stem in [*(path.stem for path in EXAMPLES), *FEATURE_VARIANTS]
    ]


# ---------------------------------------------------------------- the examples
@pytest.mark.parametrize("example", _example_params())
def test_example_engine_invocation_is_accepted(
    example: str, rendered_examples: dict[str, Rendered], request: pytest.FixtureRequest
) -> None:
    rendered = rendered_examples[example]
    if not rendered.calls:
        pytest.skip(f"no contract checker for {rendered.unchecked}")
    needs_vllm = any(c.engine == "vllm" for c in rendered.calls)
    results = request.getfixturevalue("vllm_results") if needs_vllm else {}
    refused = list(_check_calls(rendered, results))
    assert not refused, "\n".join(refused)


def test_service_links_cannot_reach_the_engine(
    renamed_examples: dict[str, Rendered], vllm_results: dict[str, dict[str, Any]]
) -> None:
    """An LLMDeployment named `vllm` (or `prometheus` for TGI) gets a Service of that name;
    its link variables (VLLM_PORT, PROMETHEUS_PORT = tcp://...) would stop the engine."""
    assert renamed_examples, "no vLLM or TGI example to rename"
    refused = [line for r in renamed_examples.values() for line in _check_calls(r, vllm_results)]
    assert not refused, "\n".join(refused)


def test_every_engine_example_has_a_contract(rendered_examples: dict[str, Rendered]) -> None:
    engines = {c.engine for r in rendered_examples.values() for c in r.calls}
    assert engines == {"vllm", "tgi", "llamacpp"}, engines


# ---------------------------------------------------------------- the vLLM checker itself
@pytest.mark.parametrize("name", sorted(VLLM_MUST_REFUSE))
def test_vllm_checker_refuses(name: str, vllm_results: dict[str, dict[str, Any]]) -> None:
    _, stage, message = VLLM_MUST_REFUSE[name]
    result = vllm_results[f"refuse:{name}"]
    assert not result["ok"], result
    assert result["stage"] == stage, result
    assert message in result["error"], result


@pytest.mark.parametrize("name", sorted(VLLM_MUST_ACCEPT))
def test_vllm_checker_accepts(name: str, vllm_results: dict[str, dict[str, Any]]) -> None:
    result = vllm_results[f"accept:{name}"]
    assert result == {"id": f"accept:{name}", "ok": True, "stage": "done", "error": None}


# ---------------------------------------------------------------- the TGI checker itself
TGI_GOOD = ["--model-id", "org/model", "--port", "8000", "--max-input-tokens", "4095"]
TGI_GOOD += ["--max-total-tokens", "4096", "--num-shard", "2"]

# id -> (argv, env, stage, a piece of the message)
TGI_MUST_REFUSE: dict[str, tuple[list[str], dict[str, str], str, str]] = {
    "unknown-flag": ([*TGI_GOOD, "--max-batch-prefill"], {}, "clap", "unexpected argument"),
    "underscore-spelling": (["--model_id", "x"], {}, "clap", "unexpected argument '--model_id'"),
    "stray-positional": (["org/model"], {}, "clap", "unexpected argument 'org/model'"),
    "missing-value": (["--model-id"], {}, "clap", "a value is required for '--model-id"),
    "flag-as-value": (["--model-id", "--port", "80"], {}, "clap", "a value is required"),
    "not-a-usize": (["--num-shard", "two"], {}, "clap", "invalid digit found in string"),
    "negative-usize": (["--num-shard=-1"], {}, "clap", "invalid value '-1'"),
    "port-out-of-range": (["--port", "70000"], {}, "clap", "70000 is not in 0..=65535"),
    "not-an-f32": (["--cuda-memory-fraction", "0,9"], {}, "clap", "invalid float literal"),
    "quantize-not-in-enum": (["--quantize", "awq_marlin"], {}, "clap", "possible values"),
    "quantize-enum-is-case-sensitive": (["--quantize", "AWQ"], {}, "clap", "invalid value 'AWQ'"),
    "kv-cache-dtype-not-in-enum": (["--kv-cache-dtype", "fp8"], {}, "clap", "fp8_e4m3fn"),
    "dtype-not-in-enum": (["--dtype", "float32"], {}, "clap", "invalid value 'float32'"),
    "sharded-needs-a-bool": (["--sharded"], {}, "clap", "a value is required for '--sharded"),
    "switch-takes-no-value": (["--trust-remote-code=true"], {}, "clap", "unexpected value 'true'"),
    "given-twice": (["--port", "80", "--port", "81"], {}, "clap", "cannot be used multiple times"),
    "switch-given-twice": (["--json-output", "--json-output"], {}, "clap", "multiple times"),
    "port-env-is-a-service-link": (
        [],
        {"PORT": "tcp://10.0.0.1:8000"},
        "clap",
        "(from env PORT='tcp://10.0.0.1:8000')",
    ),
    "prometheus-port-env-is-a-service-link": (
        [],
        {"PROMETHEUS_PORT": "tcp://10.0.0.2:9090"},
        "clap",
        "--prometheus-port",
    ),
    "master-port-env-is-a-service-link": (
        [],
        {"MASTER_PORT": "tcp://10.0.0.3:29500"},
        "clap",
        "--master-port",
    ),
    "switch-env-must-be-true-or-false": (
        [],
        {"JSON_OUTPUT": "1"},
        "clap",
        "invalid value '1' for '--json-output'",
    ),
    "input-not-below-total": (
        ["--max-input-tokens", "4096", "--max-total-tokens", "4096"],
        {},
        "launcher",
        "`max_input_tokens`(4096) must be < `max_total_tokens`(4096)",
    ),
    "input-tokens-and-legacy-length": (
        ["--max-input-tokens", "10", "--max-input-length", "10"],
        {},
        "launcher",
        "Both",
    ),
    "total-above-batch-total": (
        ["--max-total-tokens", "8192", "--max-batch-total-tokens", "4096"],
        {},
        "launcher",
        "`max_total_tokens` must be <= `max_batch_total_tokens`",
    ),
    "sharded-with-one-shard": (
        ["--sharded", "true", "--num-shard", "1"],
        {},
        "launcher",
        "`num_shard` <= 1",
    ),
    "zero-shards": (["--num-shard", "0"], {}, "launcher", "`num_shard` cannot be < 1"),
    "exl2-sharded": (
        ["--quantize", "exl2", "--num-shard", "2"],
        {},
        "launcher",
        "not supported with `exl2`",
    ),
    "zero-validation-workers": (["--validation-workers", "0"], {}, "launcher", "must be > 0"),
    "ngrok-without-token": (["--ngrok"], {}, "launcher", "`ngrok-authtoken` must be set"),
    "lora-adapter-two-revisions": (
        ["--lora-adapters", "org/a@v1@v2"],
        {},
        "launcher",
        "Invalid LoRA adapter format",
    ),
    "lora-adapter-two-paths": (
        ["--lora-adapters", "a=/x=/y"],
        {},
        "shard",
        "Invalid LoRA adapter format",
    ),
    "zero-batch-size": (["--max-batch-size", "0"], {}, "router", "must be > 0"),
    "value-with-a-space-is-split-by-the-entrypoint": (
        ["--api-key", "two words"],
        {},
        "clap",
        "unexpected argument 'words' found",
    ),
    "empty-value-vanishes-in-the-entrypoint": (
        ["--revision", "", "--port", "80"],
        {},
        "clap",
        "a value is required for '--revision",
    ),
}

TGI_MUST_ACCEPT: dict[str, tuple[list[str], dict[str, str]]] = {
    "rendered-shape": (
        [*TGI_GOOD, "--dtype", "bfloat16", "--max-concurrent-requests", "128"],
        {"PORT": "8000"},
    ),
    "equals-form-and-short-port": (["--model-id=org/m", "-p", "8000"], {}),
    "every-quantize-value": (["--quantize", "bitsandbytes-nf4"], {}),
    "kv-cache-fp8": (["--kv-cache-dtype", "fp8_e4m3fn"], {}),
    "cuda-graphs-list-and-repeat": (["--cuda-graphs", "1,2,4", "--cuda-graphs", "8"], {}),
    "cli-wins-over-a-bad-env": (["--port", "8000"], {"PORT": "tcp://10.0.0.1:8000"}),
    "switch-env-true": ([], {"TRUST_REMOTE_CODE": "true"}),
    "lora-name-equals-path": (["--lora-adapters", "sql=/adapters/sql,org/chat@main"], {}),
    "float-forms": (["--waiting-served-ratio", "1e-1", "--rope-factor", "2"], {}),
    "integer-with-plus": (["--max-batch-prefill-tokens", "+4096"], {}),
}


@pytest.mark.parametrize("name", sorted(TGI_MUST_REFUSE))
def test_tgi_checker_refuses(name: str) -> None:
    argv, env, stage, message = TGI_MUST_REFUSE[name]
    result = tgi_check.check(argv, env)
    assert not result["ok"], result
    assert result["stage"] == stage, result
    assert message in result["error"], result


@pytest.mark.parametrize("name", sorted(TGI_MUST_ACCEPT))
def test_tgi_checker_accepts(name: str) -> None:
    argv, env = TGI_MUST_ACCEPT[name]
    assert tgi_check.check(argv, env) == {"ok": True, "stage": "done", "error": None}


def test_tgi_checker_takes_every_quantize_value() -> None:
    spec = tgi_check.load_spec()
    for value in spec.enums["Quantization"]:
        assert tgi_check.check(["--quantize", value])["ok"], value


def test_tgi_flag_table_is_whole() -> None:
    """Every flag has a unique long name and env var; enums resolve; lines are in order."""
    raw = json.loads((CONTRACTS / "tgi-3.3.6-launcher.json").read_text())
    flags = raw["flags"]
    assert raw["source"]["tag"] == "v3.3.6"
    assert len(flags) == 54
    longs = [f["long"] for f in flags]
    envs = [f["env"] for f in flags if f["env"]]
    assert len(set(longs)) == len(longs) and len(set(envs)) == len(envs)
    assert all(f["enum"] in raw["value_enums"] for f in flags if f["type"] == "enum")
    lines = [f["line"] for f in flags]
    assert lines == sorted(lines) and lines[0] > 579 and lines[-1] < 914


# ---------------------------------------------------------------- the llama.cpp checker itself
LLAMACPP_GOOD = ["--host", "0.0.0.0", "--port", "8000", "--ctx-size", "4096", "--parallel", "4"]

# id -> (argv, env, a piece of llama-server's message)
LLAMACPP_MUST_REFUSE: dict[str, tuple[list[str], dict[str, str], str]] = {
    "unknown-flag": ([*LLAMACPP_GOOD, "--max-num-seqs", "4"], {}, "invalid argument"),
    "cache-type-not-offered": (["--cache-type-k", "fp8"], {}, "Unsupported cache type: fp8"),
    "not-a-number": (["--ctx-size", "abc"], {}, "--ctx-size"),
    "bad-env-value": ([], {"LLAMA_ARG_CACHE_TYPE_K": "fp8"}, "Unsupported cache type"),
}


@pytest.mark.parametrize("name", sorted(LLAMACPP_MUST_REFUSE))
def test_llamacpp_checker_refuses(name: str) -> None:
    argv, env, message = LLAMACPP_MUST_REFUSE[name]
    result = llamacpp(argv, env)
    assert not result["ok"] and message in result["error"], result


def test_llamacpp_checker_accepts() -> None:
    assert llamacpp(LLAMACPP_GOOD, {}) == {"ok": True, "stage": "parse", "error": ""}
    assert llamacpp(["--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--kv-unified"], {})["ok"]
