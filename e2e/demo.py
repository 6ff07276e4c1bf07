"""`make demo`: the operator on the embedded local cluster, end to end, in a few minutes.

Brings nothing up itself (the Makefile runs `cluster.sh up` first); installs the CRDs and
the operator's identity from manifests/install.yaml, runs `llm-operator run` as that
ServiceAccount with the e2e Prometheus, applies every example into the namespace `demo`,
shows the plans and where the real scheduler put the pods, then serves a real model on
the real node (SmolLM2 planned from its GGUF header; one request answered, measured vs
predicted latency printed), then offers load through the engine simulator and shows the
autoscaler scale up within the budget. The cluster stays up afterwards for exploring
(`make cluster-down` stops it; `make test` deletes the namespace `demo` first).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

# The e2e helpers and the chart renderer are plain modules of this checkout.
sys.path[:0] = [
    str(Path(__file__).resolve().parent),
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "bench"),
]

from helpers import GROUP, PLURAL, VERSION, kubectl, set_load  # noqa: E402
from operator_proc import OperatorProcess, apply_all, token_kubeconfig  # noqa: E402
from realnode import (  # noqa: E402
    MODEL_PV,
    MODEL_STORAGE_CLASS,
    NODE_NAME,
    chat,
    free_model_pv,
    pins,
    resolve_gguf,
    service_url,
    smollm2,
)

REPO = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("E2E_STATE_DIR", REPO / "e2e" / ".state"))
NAMESPACE = "demo"
SCALED = "llama-3-1-8b"  # the example the load goes to
REAL = "smollm2"  # the LLMDeployment on the real node


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(kubeconfig: str, *args: str) -> None:
    print(kubectl(kubeconfig, *args), end="", flush=True)


def env_of(state: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (state / "env").read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value
    return out


def settle(custom: client.CustomObjectsApi, names: list[str], timeout: float) -> None:
    """Wait until every LLMDeployment is Ready or says why it cannot be."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = []
        for name in names:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
            ready = next(
                (c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"),
                None,
            )
            if ready is None or (ready["status"] != "True" and ready["reason"] == "Pending"):
                pending.append(name)
        if not pending:
            return
        time.sleep(2)
    print(f"(still settling after {timeout:g}s: {', '.join(pending)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--load-seconds", type=float, default=90, help="how long to offer load")
    args = parser.parse_args()
    env = env_of(STATE)
    kubeconfig = env["KUBECONFIG"]
    api = config.new_client_from_config(config_file=kubeconfig)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)

    say("The cluster: real kube-apiserver, scheduler and controller-manager; kwok GPU nodes")
    show(kubeconfig, "get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.count")

    say("Install: the CRD and the operator's ServiceAccount + least-privilege RBAC")
    install = [d for d in yaml.safe_load_all((REPO / "manifests" / "install.yaml").read_text())]
    apply_all(api, [d for d in install if d and d["kind"] == "CustomResourceDefinition"])
    time.sleep(2)  # the CRD becomes Established
    work = STATE / "demo"
    work.mkdir(parents=True, exist_ok=True)
    op = OperatorProcess(
        token_kubeconfig(kubeconfig, api, work / "operator.kubeconfig"),
        work / "operator.log",
        extra_env={
            "LLM_OPERATOR_PROMETHEUS_URL": env["E2E_PROMETHEUS_URL"],
            "LLM_OPERATOR_AUTOSCALE_INTERVAL": "5",
            "LLM_OPERATOR_RECONCILE_INTERVAL": "5",
        },
    )
    op.start()
    print(f"operator running as its ServiceAccount (log: {op.log_path})")
    try:
        return run(api, core, custom, kubeconfig, env, args.load_seconds)
    finally:
        op.stop()
        say("Done. The cluster is still up for exploring:")
        print(f"  export KUBECONFIG={kubeconfig}; kubectl get llmd -A   (make cluster-down stops)")


def run(
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    kubeconfig: str,
    env: dict[str, str],
    load_seconds: float,
) -> int:
    say(f"Apply every example into namespace {NAMESPACE}")
    apply_all(
        api,
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "hf-token", "namespace": NAMESPACE},
                "stringData": {"token": "hf_demo_not_a_real_token"},
            },
        ],
    )
    names: list[str] = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        doc: dict[str, Any] = yaml.safe_load(path.read_text())
        doc["metadata"]["namespace"] = NAMESPACE
        apply_all(api, [doc])
        names.append(doc["metadata"]["name"])
        print(f"  {path.name} -> llmd/{doc['metadata']['name']}")
    settle(custom, names, timeout=120)

    say("Plans, replicas and cost (printer columns)")
    show(kubeconfig, "-n", NAMESPACE, "get", "llmd")
    say("Where the real kube-scheduler placed the engine pods")
    show(kubeconfig, "-n", NAMESPACE, "get", "pods", "-o", "wide")
    say(f"Why llmd/{SCALED} looks the way it does (status)")
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, SCALED)
    print(yaml.safe_dump({"status": obj.get("status")}, sort_keys=False))

    real_model(api, core, custom, kubeconfig)

    per_replica = float(obj["status"]["plan"]["outputTokensPerSecond"])
    budget = obj["spec"].get("budget", {}).get("maxCostPerHour")
    offered = per_replica * 6
    say(
        f"Offer {offered:.0f} output tokens/s to llmd/{SCALED} (6 replicas' worth; "
        f"budget ${budget}/h) and watch the autoscaler"
    )
    set_load(env["E2E_SIM_URL"], NAMESPACE, SCALED, offered)
    start = time.monotonic()
    last = None
    while time.monotonic() - start < load_seconds:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, SCALED)
        st = obj.get("status", {})
        now = (st.get("desiredReplicas"), st.get("readyReplicas"), st.get("lastScalingReason"))
        if now != last:
            print(
                f"  t={time.monotonic() - start:5.0f}s desired={now[0]} ready={now[1]} "
                f"observed={st.get('observedTokensPerSecond')} tok/s "
                f"${st.get('costPerHour')}/h  {now[2]}"
            )
            last = now
        time.sleep(3)
    say("Conditions after the load step")
    for c in obj.get("status", {}).get("conditions", []):
        print(f"  {c['type']:17} {c['status']:6} {c['reason']}: {c.get('message', '')}")
    return 0


def real_model(
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    kubeconfig: str,
) -> None:
    """SmolLM2 on the real node: planned from its GGUF header, one request, measured vs
    predicted. One replica at most, so the demo never holds more than one of the node's
    cores (the tests need the other)."""
    try:
        core.read_node(NODE_NAME)
    except ApiException:
        say(f"No real node ({NODE_NAME}) in this cluster: skipping the real model")
        return
    path = pins().model_path
    say(f"A real model on the real node {NODE_NAME}: llmctl resolve {path.name}")
    architecture, quantization = resolve_gguf(path)
    a = architecture
    print(
        f"  GGUF header: {a['modelType']}, {a['params']:,} parameters, {a['layers']} layers, "
        f"{a['kvHeads']} KV heads; {quantization}"
    )
    free_model_pv(core)
    pv = core.read_persistent_volume(MODEL_PV)
    ref = pv.spec.claim_ref
    if ref is not None and ref.namespace != NAMESPACE:
        print(f"  (the model volume is bound to {ref.namespace}/{ref.name}: skipping)")
        return
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "model", "namespace": NAMESPACE},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": MODEL_STORAGE_CLASS,
            "volumeName": MODEL_PV,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    doc = smollm2(REAL, "model", architecture, quantization)
    doc["metadata"]["namespace"] = NAMESPACE
    apply_all(api, [claim, doc])
    hardware = doc["spec"]["hardware"]
    print(
        f"  applied pvc/model and llmd/{REAL}: gpuTypes {hardware['gpuTypes']}, "
        f"nodeSelector {hardware['nodeSelector']}"
    )
    obj = wait_ready(custom, REAL, timeout=240)
    if obj is None:
        print(f"  llmd/{REAL} is not Ready after 240s: kubectl -n {NAMESPACE} describe llmd/{REAL}")
        return
    show(kubeconfig, "-n", NAMESPACE, "get", "llmd", REAL)
    show(kubeconfig, "-n", NAMESPACE, "get", "pods", "-o", "wide", "-l",
         f"serving.llm-operator.io/llmdeployment={REAL}")  # fmt: skip
    base = service_url(core, NAMESPACE, REAL)
    question = "What is the capital of France? Answer in one sentence."
    answer = chat(base, question, max_tokens=32)
    print(f"\n  POST {base}/v1/chat/completions  (the Service's ClusterIP, via kube-proxy)")
    print(f"  > {question}")
    print(f"  < {answer['choices'][0]['message']['content'].strip()}")
    print(f"    ({answer['usage']['completion_tokens']} tokens generated by llama-server)")

    from real_node import calibrated_units, measure, one_line, predict  # bench/real_node.py

    workload = obj["spec"]["workload"]
    units, prompt = calibrated_units(base, workload["inputTokens"])
    measured = measure(base, 1, 3, units, workload["outputTokens"])
    predicted, _ = predict(obj["status"]["plan"], prompt, workload["outputTokens"], 1)
    say("Measured vs predicted on this machine (bench/real_node.py; docs/benchmarks.md)")
    print(f"  {one_line(measured, predicted)}")


def wait_ready(custom: client.CustomObjectsApi, name: str, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        ready = next(
            (c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"),
            None,
        )
        if ready is not None and ready["status"] == "True":
            result: dict[str, Any] = obj
            return result
        time.sleep(2)
    return None


if __name__ == "__main__":
    sys.exit(main())
