"""The local cluster's real node, as the e2e tests, `make demo` and bench/real_node.py use it.

e2e/cluster/node.sh joins one node (kubelet + containerd + kube-proxy on this machine) to
the local control plane, with llama-server imported under the image reference the
operator renders and the SmolLM2-135M GGUF on a read-only local PersistentVolume. This
module knows its names, binds that volume with a claim (one claim at a time) and frees it
again, builds the LLMDeployment that serves the model through the operator, planned from
the GGUF header (`llmctl resolve`), and talks to the OpenAI endpoints. Nothing here is
product logic.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from helpers import eventually

REPO = Path(__file__).resolve().parent.parent
BUILD_SH = REPO / "e2e" / "node" / "build.sh"

# Names and labels set by e2e/cluster/node.sh.
NODE_NAME = "real-cpu-0"
POOL_LABEL, POOL = "llm-operator.io/node-pool", "real-cpu"
TAINT_KEY = "llm-operator.io/real-node"
MODEL_PV, MODEL_STORAGE_CLASS = "llm-operator-e2e-smollm2", "llm-operator-e2e-model"
ENGINE_UID = 65532
# The catalog's class of this machine (operator/llm_operator/catalog/data/gpus.yaml).
CPU_CLASS = "CPU-2C-24GiB"
MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
LLMD_LABEL = "serving.llm-operator.io/llmdeployment"


@dataclass(frozen=True)
class Pins:
    """What e2e/node/build.sh pins and where it put the model."""

    image: str
    model_file: str
    model_dir: Path

    @property
    def model_path(self) -> Path:
        return self.model_dir / self.model_file


def pins() -> Pins:
    """The pins of e2e/node/build.sh (`--print-vars`, which builds nothing)."""
    out = subprocess.run(
        [str(BUILD_SH), "--print-vars"], capture_output=True, text=True, check=True
    ).stdout
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return Pins(found["ENGINE_IMAGE"], found["MODEL_FILE"], Path(found["MODEL_DIR"]))


def resolve_gguf(path: Path) -> tuple[dict[str, Any], str]:
    """`llmctl resolve <file.gguf>`: the spec.model.architecture and quantization it read
    from the GGUF header (the `gguf` package), as a user would paste them."""
    llmctl = Path(sys.executable).with_name("llmctl")
    out = subprocess.run(
        [str(llmctl), "resolve", str(path)], capture_output=True, text=True, check=True
    ).stdout
    doc = yaml.safe_load(out)
    return dict(doc["model"]["architecture"]), str(doc["quantization"])


def smollm2(
    name: str,
    claim: str,
    architecture: dict[str, Any],
    quantization: str,
    *,
    scaling: dict[str, Any] | None = None,
    max_model_len: int = 2048,
) -> dict[str, Any]:
    """The LLMDeployment of SmolLM2 on the real node: the GGUF file on the claim, the
    shape from its header, llama.cpp on this machine's CPU class, pinned to the node."""
    pin = pins()
    return {
        "apiVersion": "serving.llm-operator.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": MODEL_NAME,
                "source": "pvc",
                "uri": f"{claim}/{pin.model_file}",
                "architecture": architecture,
            },
            "quantization": quantization,
            "engine": "llamacpp",
            "context": {"maxModelLen": max_model_len},
            "workload": {"inputTokens": 128, "outputTokens": 64},
            "hardware": {
                "gpuTypes": [CPU_CLASS],
                "allowCpu": True,
                "nodeSelector": {POOL_LABEL: POOL},
                "tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            },
            "scaling": {"minReplicas": 1, "maxReplicas": 1, **(scaling or {})},
        },
    }


# --- the model volume ----------------------------------------------------------------------


def create_model_claim(core: client.CoreV1Api, namespace: str, name: str = "model") -> str:
    """A claim in `namespace` bound to the model PV (read-only, the PV's class)."""
    free_model_pv(core)
    core.create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadOnlyMany"],
                storage_class_name=MODEL_STORAGE_CLASS,
                volume_name=MODEL_PV,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )
    return name


def release_model_claim(
    core: client.CoreV1Api, namespace: str, claim: str, timeout: float = 180
) -> None:
    """Delete the claim, wait until it is gone (kubernetes.io/pvc-protection holds it while
    a pod uses it) and make the PV Available again (Retain would keep it Released)."""
    try:
        core.delete_namespaced_persistent_volume_claim(claim, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise

    def gone() -> bool:
        try:
            core.read_namespaced_persistent_volume_claim(claim, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    eventually(gone, timeout=timeout, description=f"PVC {namespace}/{claim} deleted")
    free_model_pv(core)


def free_model_pv(core: client.CoreV1Api) -> bool:
    """Drop the PV's claimRef when the claim it names is gone; True when it is free."""
    try:
        pv = core.read_persistent_volume(MODEL_PV)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    ref = pv.spec.claim_ref
    if ref is None:
        return True
    try:
        found = core.read_namespaced_persistent_volume_claim(ref.name, ref.namespace)
        if ref.uid is None or found.metadata.uid == ref.uid:
            return False  # held by a live claim
    except ApiException as exc:
        if exc.status != 404:
            raise
    core.patch_persistent_volume(MODEL_PV, [{"op": "remove", "path": "/spec/claimRef"}])
    return True


# --- OpenAI endpoints ------------------------------------------------------------------------


def post(url: str, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """POST JSON, return the JSON answer (HTTPError/URLError on failure)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def get_text(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def chat(base: str, prompt: str = "Name three colours.", max_tokens: int = 24) -> dict[str, Any]:
    """One deterministic OpenAI chat completion (POST /v1/chat/completions)."""
    return post(
        f"{base}/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    )


def complete(base: str, prompt: str = "The capital of France is", max_tokens: int = 16) -> Any:
    """One deterministic OpenAI text completion (POST /v1/completions)."""
    return post(
        f"{base}/v1/completions",
        {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
    )


def service_url(core: client.CoreV1Api, namespace: str, name: str) -> str:
    """http://<ClusterIP>:<port> of the rendered Service (kube-proxy routes it here)."""
    svc = core.read_namespaced_service(name, namespace)
    port = next(p.port for p in svc.spec.ports if p.name == "http")
    return f"http://{svc.spec.cluster_ip}:{port}"


def wait_answering(base: str, timeout: float = 60) -> dict[str, Any]:
    """The first chat answer from `base` (the Service needs its endpoints first)."""
    return eventually(
        lambda: chat(base),
        timeout=timeout,
        interval=1,
        retry_on=(AssertionError, OSError),
        description=f"a chat completion from {base}",
    )


def metric_values(text: str, prefix: str = "llamacpp:") -> dict[str, float]:
    """Unlabelled samples of the exposition text whose names start with `prefix`."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, _, value = line.partition(" ")
            try:
                out[name] = float(value.split()[0])
            except (ValueError, IndexError):
                continue
    return out


def timed_stream(base: str, prompt: str, max_tokens: int, timeout: float = 300) -> dict[str, float]:
    """One streamed chat completion: TTFT (first content chunk), the time between output
    tokens after it, and the token count the server reports (usage)."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        # Exactly max_tokens tokens: the reply must not stop early at an end token.
        "ignore_eos": True,
    }
    req = urllib.request.Request(
        f"{base}/v1/chat/completions", data=json.dumps(body).encode(), method="POST"
    )
    req.add_header("Content-Type", "application/json")
    start = time.perf_counter()
    first = last = None
    chunks = 0
    tokens = 0.0
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = float(event["usage"].get("completion_tokens") or 0)
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    first = first if first is not None else now
                    last = now
                    chunks += 1
    end = time.perf_counter()
    if first is None or last is None:
        raise AssertionError("the stream carried no content")
    tokens = tokens or chunks
    return {
        "ttft_s": first - start,
        "tpot_s": (last - first) / max(1, chunks - 1),
        "tokens": tokens,
        "latency_s": end - start,
    }
