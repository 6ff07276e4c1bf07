"""The operator on the real control plane: plan, apply, status, drift, re-plan, GC, restart.

The operator runs as a separate process with the chart's ServiceAccount token (see
e2e/operator_proc.py), so every test here also proves the shipped RBAC suffices.
"""

from __future__ import annotations

import copy
import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from helpers import GROUP, PLURAL, VERSION, Cluster, condition, eventually, kubectl
from helpers import llmd_body as llmd
from llm_operator.autoscaler.loop import STATE_ANNOTATION
from llm_operator.catalog import load_catalog
from operator_proc import (
    IDENTITY_KINDS,
    OperatorProcess,
    apply_all,
    chart_objects,
    identity_objects,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
LLMD_LABEL = "serving.llm-operator.io/llmdeployment"
SPEC_HASH = "serving.llm-operator.io/spec-hash"
CATALOG = load_catalog()

# Examples whose replica fits one node: a Deployment the local cluster runs end to end.
SINGLE_NODE_EXAMPLES = [
    "llama-3.1-8b-a10g-vllm",
    "llama-3.1-70b-awq",
    "mixtral-8x7b-tgi",
    "llama-2-7b-cpu-llamacpp",
]
CONTEXT_FLAG = {"vllm": "--max-model-len", "tgi": "--max-total-tokens"}
PARALLEL_FLAG = {"vllm": "--tensor-parallel-size", "tgi": "--num-shard"}


# --- helpers -------------------------------------------------------------------------------


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return doc


def create(custom: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> str:
    body = copy.deepcopy(body)
    body["metadata"]["namespace"] = namespace
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    return str(body["metadata"]["name"])


def get(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return obj


def wait_ready(
    custom: client.CustomObjectsApi, namespace: str, name: str, timeout: float = 90
) -> dict[str, Any]:
    """Wait until Ready=True with every desired replica ready and the rollout complete."""

    def ready() -> dict[str, Any]:
        obj = get(custom, namespace, name)
        status = obj.get("status") or {}
        assert condition(obj, "Ready")["status"] == "True", status.get("conditions")
        assert condition(obj, "Progressing")["reason"] == "Complete", status.get("conditions")
        assert status.get("observedGeneration") == obj["metadata"]["generation"]
        assert status.get("readyReplicas") == status.get("desiredReplicas") >= 1, status
        return obj

    return eventually(ready, timeout=timeout, interval=1, description=f"{namespace}/{name} Ready")


def hf_secret(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="hf-token"), string_data={"token": "hf_e2e"}
        ),
    )


def children(apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str, name: str) -> Any:
    selector = f"{LLMD_LABEL}={name}"
    return (
        apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        core.list_namespaced_service(namespace, label_selector=selector).items,
    )


def flags(args: list[str]) -> dict[str, str | None]:
    """`--flag value` / `--switch` pairs of an engine's argument list."""
    out: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        if arg.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?", arg):
            nxt = args[i + 1] if i + 1 < len(args) else None
            out[arg] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def engine_container(deployment: client.V1Deployment) -> client.V1Container:
    return next(c for c in deployment.spec.template.spec.containers if c.name == "engine")


def events_for(core: client.CoreV1Api, namespace: str, name: str) -> list[client.CoreV1Event]:
    return [
        e
        for e in core.list_namespaced_event(namespace).items
        if e.involved_object.kind == "LLMDeployment" and e.involved_object.name == name
    ]


# --- each example, end to end --------------------------------------------------------------


@pytest.mark.parametrize("name", SINGLE_NODE_EXAMPLES)
def test_example_reaches_ready_on_the_planned_node_pool(
    name: str,
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    hf_secret(core, namespace)
    obj_name = create(custom, namespace, example(name))
    obj = wait_ready(custom, namespace, obj_name)
    plan = obj["status"]["plan"]
    assert condition(obj, "Planned")["status"] == "True"
    assert condition(obj, "Degraded")["status"] == "False"
    status = obj["status"]
    # $/hr in cents; TOK/S is the observed rate, or the ready replicas' planned one.
    assert status["costPerHour"] == pytest.approx(
        plan["costPerHour"] * status["replicas"], abs=0.005
    )
    if status["tokensPerSecondSource"] == "planned":
        expected = plan["outputTokensPerSecond"] * status["readyReplicas"]
        assert status["tokensPerSecond"] == pytest.approx(expected, abs=0.1)
    else:
        assert status["tokensPerSecond"] == status["observedTokensPerSecond"]

    deployments, services = children(apps, core, namespace, obj_name)
    assert len(deployments) == 1 and len(services) == 1
    deployment = deployments[0]
    owner = deployment.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("LLMDeployment", obj_name, True)
    c = engine_container(deployment)
    args = flags(c.args)
    if plan["engine"] == "llamacpp":
        # One KV pool (--kv-unified) for every slot: slots x the longest request.
        slots = plan["maxConcurrentSequences"]
        assert args["--parallel"] == str(slots)
        assert args["--ctx-size"] == str(slots * plan["maxModelLen"])
    else:
        assert args[CONTEXT_FLAG[plan["engine"]]] == str(plan["maxModelLen"])
    if plan["engine"] in PARALLEL_FLAG:
        assert args[PARALLEL_FLAG[plan["engine"]]] == str(plan["tensorParallel"])

    gpu = CATALOG.gpu(plan["gpu"])
    pods = core.list_namespaced_pod(namespace, label_selector=f"{LLMD_LABEL}={obj_name}").items
    assert len(pods) == obj["status"]["desiredReplicas"]
    for pod in pods:
        assert pod.status.phase == "Running", pod.metadata.name
        node = core.read_node(pod.spec.node_name)
        labels = node.metadata.labels
        requests = pod.spec.containers[0].resources.requests or {}
        if gpu.is_cpu:
            assert "nvidia.com/gpu" not in requests
            assert "nvidia.com/gpu.product" not in labels, node.metadata.name
        else:
            assert labels["nvidia.com/gpu.product"] in gpu.product_labels, node.metadata.name
            assert requests["nvidia.com/gpu"] == str(plan["gpusPerReplica"])


def test_printer_columns_show_the_plan(
    operator: OperatorProcess, cluster: Cluster, custom: client.CustomObjectsApi, namespace: str
) -> None:
    name = create(custom, namespace, llmd("columns"))
    wait_ready(custom, namespace, name)
    header, row = (
        line.split()
        for line in kubectl(cluster.kubeconfig, "-n", namespace, "get", "llmd").splitlines()[:2]
    )
    assert header[:7] == ["NAME", "MODEL", "GPU", "TP", "PP", "REPLICAS", "READY"], header
    st = get(custom, namespace, name)["status"]
    plan = st["plan"]
    assert row[:7] == [
        name,
        "meta-llama/Llama-3.1-8B-Instruct",
        plan["gpu"],
        str(plan["tensorParallel"]),
        str(plan["pipelineParallel"]),
        str(st["replicas"]),
        str(st["readyReplicas"]),
    ], row


# --- what cannot be planned, and what the apiserver refuses ---------------------------------


def test_impossible_model_reports_no_feasible_plan_and_creates_nothing(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    body = llmd(
        "too-big",
        model={"name": "meta-llama/Llama-3.1-405B-Instruct"},
        quantization="fp16",
        hardware={"gpuTypes": ["A10G"]},
    )
    name = create(custom, namespace, body)

    def no_plan() -> dict[str, Any]:
        obj = get(custom, namespace, name)
        ready = condition(obj, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "NoFeasiblePlan"), ready
        return obj

    obj = eventually(no_plan, timeout=60, interval=1, description="NoFeasiblePlan")
    message = condition(obj, "Planned")["message"]
    assert "A10G-24GB" in message and "GiB usable per device" in message, message
    assert "plan" not in obj["status"]
    eventually(
        lambda: any(e.reason == "NoFeasiblePlan" for e in events_for(core, namespace, name)),
        timeout=30,
        description="a NoFeasiblePlan event",
    )
    assert children(apps, core, namespace, name) == ([], [])


def wait_invalid(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    """The Ready condition once it says False/InvalidSpec (a permanent error)."""

    def invalid() -> dict[str, Any]:
        ready = condition(get(custom, namespace, name), "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec"), ready
        return ready

    found: dict[str, Any] = eventually(invalid, timeout=60, interval=1, description="InvalidSpec")
    return found


def test_unknown_model_is_a_permanent_error_naming_the_field(
    operator: OperatorProcess, custom: client.CustomObjectsApi, namespace: str
) -> None:
    name = create(custom, namespace, llmd("unknown", model={"name": "acme/not-a-model"}))
    ready = wait_invalid(custom, namespace, name)
    assert "spec.model.name" in ready["message"], ready["message"]
    assert "spec.model.architecture" in ready["message"], ready["message"]


def test_an_unreadable_draft_head_is_refused_naming_the_field(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    """Issue 15.6: a speculative draft head the operator cannot read (it runs offline here,
    HF_HUB_OFFLINE) is not rendered as if it were fine: InvalidSpec names the field."""
    speculative = {"method": "eagle", "model": "acme/not-a-draft-head"}
    name = create(
        custom,
        namespace,
        llmd("draft", features={"speculativeDecoding": speculative}),
    )
    ready = wait_invalid(custom, namespace, name)
    message = ready["message"]
    assert "spec.features.speculativeDecoding.model" in message, message
    assert "acme/not-a-draft-head" in message and "draft head (eagle)" in message, message
    assert children(apps, core, namespace, name) == ([], [])


def test_prefix_hits_and_speculation_are_planned_and_bounded_by_the_schema(
    operator: OperatorProcess, custom: client.CustomObjectsApi, namespace: str
) -> None:
    """Issue 14: workload.prefixHitRate and draftAcceptanceRate change the planned figures
    the operator reports; the apiserver refuses rates out of range."""
    workload = {"inputTokens": 4096, "outputTokens": 256, "concurrency": 1}
    plain = create(custom, namespace, llmd("plain", workload=workload))
    warm = create(
        custom,
        namespace,
        llmd(
            "warm",
            workload={**workload, "prefixHitRate": 0.75, "draftAcceptanceRate": 0.8},
            features={"speculativeDecoding": {"method": "ngram", "numSpeculativeTokens": 3}},
        ),
    )
    before = wait_ready(custom, namespace, plain)["status"]["plan"]
    after = wait_ready(custom, namespace, warm)["status"]["plan"]
    assert after["ttftMs"] < before["ttftMs"] * 0.6, (before, after)
    assert after["tpotMs"] < before["tpotMs"] * 0.7, (before, after)
    assert after["costPerMillionOutputTokens"] < before["costPerMillionOutputTokens"]
    for field, value in (("prefixHitRate", 1.0), ("draftAcceptanceRate", 0)):
        with pytest.raises(ApiException) as info:
            create(custom, namespace, llmd(f"bad-{field.lower()}", workload={field: value}))
        assert info.value.status == 422
        assert f"spec.workload.{field}" in json.loads(info.value.body)["message"]


def test_apiserver_rejects_min_above_max_replicas_naming_the_field(
    crds: list[str], custom: client.CustomObjectsApi, namespace: str
) -> None:
    body = llmd("bad-scaling", scaling={"minReplicas": 3, "maxReplicas": 1})
    with pytest.raises(ApiException) as info:
        create(custom, namespace, body)
    assert info.value.status == 422
    message = json.loads(info.value.body)["message"]
    assert "spec.scaling" in message, message
    assert "minReplicas must be less than or equal to scaling.maxReplicas" in message, message


# --- change, drift, deletion, restart -------------------------------------------------------


def test_spec_change_replans_and_rolls_the_workload(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    name = create(custom, namespace, llmd("replan"))
    before = wait_ready(custom, namespace, name)
    assert before["status"]["plan"]["quantization"] == "bf16"
    old_hash = apps.read_namespaced_deployment(name, namespace).spec.template.metadata.annotations[
        SPEC_HASH
    ]

    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": {"quantization": "fp8"}}
    )

    def replanned() -> client.V1Deployment:
        obj = get(custom, namespace, name)
        assert obj["status"]["plan"]["quantization"] == "fp8", obj["status"]["plan"]
        deployment = apps.read_namespaced_deployment(name, namespace)
        assert flags(engine_container(deployment).args).get("--quantization") == "fp8"
        return deployment

    deployment = eventually(replanned, timeout=60, interval=1, description="re-planned to fp8")
    assert deployment.spec.template.metadata.annotations[SPEC_HASH] != old_hash
    wait_ready(custom, namespace, name)
    assert any(e.reason == "Replanned" for e in events_for(core, namespace, name))


def test_manual_edit_of_an_owned_field_is_reverted(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    namespace: str,
) -> None:
    name = create(custom, namespace, llmd("drift"))
    wait_ready(custom, namespace, name)
    image = engine_container(apps.read_namespaced_deployment(name, namespace)).image

    apps.patch_namespaced_deployment(
        name,
        namespace,
        {"spec": {"template": {"spec": {"containers": [{"name": "engine", "image": "evil:1"}]}}}},
    )
    assert engine_container(apps.read_namespaced_deployment(name, namespace)).image == "evil:1"
    # Reverted by the watch on the Deployment, well inside the 30 s safety-net interval.
    eventually(
        lambda: engine_container(apps.read_namespaced_deployment(name, namespace)).image == image,
        timeout=10,
        interval=0.5,
        description="the engine image is reverted",
    )


def test_unchanged_spec_causes_zero_writes(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    name = create(custom, namespace, llmd("steady"))
    wait_ready(custom, namespace, name)

    def versions() -> tuple[str, str, str]:
        return (
            get(custom, namespace, name)["metadata"]["resourceVersion"],
            apps.read_namespaced_deployment(name, namespace).metadata.resource_version,
            core.read_namespaced_service(name, namespace).metadata.resource_version,
        )

    # The autoscaler has had its first tick: its condition and its state annotation.
    def autoscaler_ticked() -> bool:
        obj = get(custom, namespace, name)
        assert condition(obj, "MetricsAvailable")["status"] == "True"
        assert STATE_ANNOTATION in obj["metadata"].get("annotations", {}), obj["metadata"]
        return True

    eventually(autoscaler_ticked, timeout=60, description="the autoscaler's first tick")
    # Settled: two reads in a row see the same versions (the last status write is done).
    settled = eventually(
        lambda: (v := versions()) == versions() and v, timeout=30, description="settled"
    )
    ticks = counter(operator, "llm_operator_autoscaler_ticks_total")
    # The autoscaler runs every 2 s: let it run at least three times.
    eventually(
        lambda: counter(operator, "llm_operator_autoscaler_ticks_total") >= ticks + 3,
        timeout=60,
        description="3 autoscaler ticks",
    )
    assert versions() == settled


def counter(op: OperatorProcess, name: str) -> float:
    """A counter of the operator's metrics, summed over its labels."""
    total = 0.0
    for line in op.metrics().splitlines():
        if line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def reconcile_passes(op: OperatorProcess) -> float:
    return counter(op, "llm_operator_reconcile_total")


def test_deleting_the_llmdeployment_removes_its_children(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    name = create(custom, namespace, llmd("gc"))
    wait_ready(custom, namespace, name)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    eventually(
        lambda: children(apps, core, namespace, name) == ([], []),
        timeout=60,
        interval=1,
        description="the garbage collector removed the Deployment and Service",
    )
    eventually(
        lambda: (
            not core.list_namespaced_pod(namespace, label_selector=f"{LLMD_LABEL}={name}").items
        ),
        timeout=60,
        interval=1,
        description="the engine pods are gone",
    )


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    names = [create(custom, namespace, llmd(f"restart-{i}")) for i in range(3)]
    # Killed (SIGKILL, no clean shutdown) as soon as it has started on the first one.
    eventually(
        lambda: children(apps, core, namespace, names[0])[0], timeout=60, description="started"
    )
    operator.stop(signal.SIGKILL)
    operator.start()
    for name in names:
        wait_ready(custom, namespace, name)
        deployments, services = children(apps, core, namespace, name)
        assert len(deployments) == 1 and len(services) == 1, name
        pods = core.list_namespaced_pod(namespace, label_selector=f"{LLMD_LABEL}={name}").items
        assert len(pods) == get(custom, namespace, name)["status"]["desiredReplicas"]


# --- high availability ----------------------------------------------------------------------


def test_two_peered_operators_do_not_both_act_and_fail_over(
    cluster: Cluster,
    operator_process: OperatorProcess,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
) -> None:
    """The chart's HA mode (Kopf peering): one active operator, the other takes over."""
    ha = chart_objects("--set", "peering.enabled=true", "--set", "replicas=2")
    peering = next(o for o in ha if o["kind"] == "ClusterKopfPeering")
    crd = next(o for o in ha if o["metadata"]["name"] == "clusterkopfpeerings.kopf.dev")
    apply_all(cluster.api, [crd])
    eventually(
        lambda: apply_all(cluster.api, [peering]) is None,
        timeout=30,
        retry_on=(Exception,),
        description="the peering CRD serves objects",
    )
    # Kopf resolves the peering resource through API discovery when it starts; one that
    # is not listed there yet is never watched, and the operator would not see its peer.
    eventually(
        lambda: (
            "clusterkopfpeerings.kopf.dev"
            in kubectl(cluster.kubeconfig, "api-resources", "--api-group=kopf.dev", "-o", "name")
        ),
        timeout=30,
        retry_on=(AssertionError, subprocess.CalledProcessError),
        description="discovery lists the peering resource",
    )
    apply_all(cluster.api, [o for o in ha if o["kind"] in IDENTITY_KINDS])
    env = {"LLM_OPERATOR_PEERING": peering["metadata"]["name"]}
    pair = [
        OperatorProcess(operator_process.kubeconfig, tmp_path / f"{i}.log", extra_env=env)
        for i in "ab"
    ]
    operator_process.stop()
    try:
        for op in pair:
            op.start()

        def settled() -> list[float]:
            before = [reconcile_passes(op) for op in pair]
            time.sleep(2)  # NOTE: "nothing changes for a while" needs a while
            after = [reconcile_passes(op) for op in pair]
            assert after == before, (before, after)
            return after

        # Kopf peering settles (each process sees the other's keep-alive); leftovers of
        # earlier tests may still be reconciled by whichever was active first.
        idle = eventually(settled, timeout=90, interval=0, description="both settled")
        first = create(custom, namespace, llmd("ha-1"))
        wait_ready(custom, namespace, first)
        worked = [reconcile_passes(op) - before for op, before in zip(pair, idle, strict=True)]
        assert sorted(w > 0 for w in worked) == [False, True], worked  # exactly one acted
        active, standby = (pair[0], pair[1]) if worked[0] > 0 else (pair[1], pair[0])
        idle_standby = reconcile_passes(standby)

        active.stop(signal.SIGKILL)  # no goodbye: the standby waits for the keep-alive to lapse
        second = create(custom, namespace, llmd("ha-2"))
        wait_ready(custom, namespace, second, timeout=180)
        assert reconcile_passes(standby) > idle_standby  # the standby took over
    finally:
        for op in pair:
            op.stop()
        apply_all(cluster.api, identity_objects())  # back to the default (no peering) RBAC


def test_an_external_autoscaler_drives_replicas_through_the_scale_subresource(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    """What an HPA or KEDA does: write /scale; the built-in autoscaler stands down."""
    with pytest.raises(ApiException) as info:  # the scale target needs a starting count
        create(custom, namespace, llmd("no-replicas", scaling={"mode": "external"}))
    assert "replicas is required when scaling.mode is external" in info.value.body
    name = create(
        custom, namespace, llmd("hpa", replicas=1, scaling={"mode": "external", "maxReplicas": 4})
    )
    wait_ready(custom, namespace, name)
    scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, name)
    assert scale["status"]["selector"] == f"{LLMD_LABEL}={name}"

    custom.patch_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": {"replicas": 3}}
    )

    def scaled() -> bool:
        assert apps.read_namespaced_deployment(name, namespace).spec.replicas == 3
        s = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, name)
        assert s["status"]["replicas"] == 3, s["status"]
        return True

    eventually(scaled, timeout=60, interval=1, description="3 replicas through /scale")
    obj = wait_ready(custom, namespace, name)
    assert obj["status"]["desiredReplicas"] == 3
    reasons = [e.reason for e in events_for(core, namespace, name)]
    assert "Replanned" not in reasons, reasons  # a replica count is not a new plan
