"""Status that never lies and events that never spam: the running operator, probed.

Each test is the regression test of one finding of the probe in issue 15: what the status
says after an infeasible change, a budget below one replica, a GPU type the cluster lacks,
more load than one replica holds, a missing token Secret, a deletion mid-reconcile, and a
workload replaced by one of another kind (make before break).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from kubernetes import client
from test_operator import create, events_for, get, wait_ready

from helpers import GROUP, PLURAL, VERSION, condition, eventually
from helpers import llmd_body as llmd
from operator_proc import OperatorProcess

LLMD_LABEL = "serving.llm-operator.io/llmdeployment"


def _patch(custom: client.CustomObjectsApi, namespace: str, name: str, spec: Any) -> None:
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})


def _poke(apps: client.AppsV1Api, namespace: str, name: str) -> None:
    """An edit of the Deployment's metadata: a child event, so the owner is reconciled now
    (as the 30 s safety pass would, later)."""
    apps.patch_namespaced_deployment(
        name, namespace, {"metadata": {"annotations": {"e2e/poke": str(time.time())}}}
    )


def _reasons(core: client.CoreV1Api, namespace: str, name: str, reason: str) -> int:
    return sum((e.count or 1) for e in events_for(core, namespace, name) if e.reason == reason)


def test_infeasible_change_stays_unplanned_while_the_old_workload_serves(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    namespace: str,
) -> None:
    name = create(custom, namespace, llmd("infeasible"))
    wait_ready(custom, namespace, name)
    _patch(custom, namespace, name, {"context": {"maxModelLen": 10_000_000}})

    def refused() -> dict[str, Any]:
        obj = get(custom, namespace, name)
        planned, ready = condition(obj, "Planned"), condition(obj, "Ready")
        assert (planned["status"], planned["reason"]) == ("False", "NoFeasiblePlan"), planned
        assert (ready["status"], ready["reason"]) == ("False", "NoFeasiblePlan"), ready
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        return obj

    eventually(refused, timeout=30, interval=1, description="NoFeasiblePlan")
    # Later passes (child events, the drift timer, the autoscaler) must not flip it back.
    _poke(apps, namespace, name)
    time.sleep(8)
    obj = refused()
    assert "previous plan keeps running" in condition(obj, "Ready")["message"]
    # The old workload is left serving.
    assert apps.read_namespaced_deployment(name, namespace).status.ready_replicas == 1


def test_budget_below_one_replica_is_a_planning_refusal_reported_once(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    name = create(custom, namespace, llmd("poor"))
    wait_ready(custom, namespace, name)
    _patch(custom, namespace, name, {"budget": {"maxCostPerHour": 1}})
    eventually(
        lambda: condition(get(custom, namespace, name), "Planned")["reason"] == "NoFeasiblePlan",
        timeout=30,
        description="NoFeasiblePlan for the budget",
    )
    message = condition(get(custom, namespace, name), "Planned")["message"]
    assert "budget $1.00/h" in message, message
    time.sleep(5)  # let Kopf record the handled spec (its own annotations)
    version = get(custom, namespace, name)["metadata"]["resourceVersion"]
    time.sleep(20)  # several autoscaler ticks
    assert _reasons(core, namespace, name, "NoFeasiblePlan") == 1
    assert _reasons(core, namespace, name, "Scaled") == 0
    # No status or annotation write while nothing changes.
    assert get(custom, namespace, name)["metadata"]["resourceVersion"] == version


def test_gpu_type_absent_from_the_cluster_names_what_there_is_and_the_fix(
    operator: OperatorProcess, custom: client.CustomObjectsApi, namespace: str
) -> None:
    name = create(custom, namespace, llmd("absent", hardware={"gpuTypes": ["H200"]}))

    def refused() -> str:
        planned = condition(get(custom, namespace, name), "Planned")
        assert planned["reason"] == "NoFeasiblePlan", planned
        return str(planned["message"])

    message = eventually(refused, timeout=30, description="NoFeasiblePlan")
    assert "asks for H200" in message and "H100-SXM-80GB" in message, message
    assert "provisionableGpuTypes" in message, message


def test_more_load_than_the_bounds_allow_is_said_plainly(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    name = create(custom, namespace, llmd("crowd", workload={"concurrency": 1_000_000}))
    obj = wait_ready(custom, namespace, name)
    assert obj["status"]["desiredReplicas"] == 2  # maxReplicas
    message = condition(obj, "Planned")["message"]
    assert "1000000 concurrent requests" in message and "maxReplicas 2" in message, message
    eventually(
        lambda: _reasons(core, namespace, name, "CapacityLimited") == 1,
        timeout=30,
        description="one CapacityLimited event",
    )


def test_missing_token_secret_is_not_ready(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    model = {"name": "meta-llama/Llama-3.1-8B-Instruct", "hfTokenSecret": {"name": "hf"}}
    body = llmd("no-token", model=model)
    name = create(custom, namespace, body)

    def missing() -> str:
        ready = condition(get(custom, namespace, name), "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "SecretMissing"), ready
        return str(ready["message"])

    message = eventually(missing, timeout=30, description="SecretMissing")
    assert f"Secret {namespace}/hf does not exist" in message, message
    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="hf"), string_data={"x": "1"})
    )

    def named(words: str) -> bool:
        # A child event makes the owner reconcile; the operator caches what it read of a
        # Secret (LLM_OPERATOR_SECRET_CACHE_TTL, 5 s for the e2e operator).
        _poke(apps, namespace, name)
        return words in missing()

    eventually(
        lambda: named("has no key 'token' (it has x)"),
        timeout=70,
        interval=3,
        description="the wrong key is named",
    )
    core.patch_namespaced_secret("hf", namespace, {"stringData": {"token": "hf_e2e"}})

    def ready() -> bool:
        _poke(apps, namespace, name)
        return bool(condition(get(custom, namespace, name), "Ready")["status"] == "True")

    eventually(ready, timeout=70, interval=3, description="Ready once the key exists")


def test_deleting_mid_reconcile_logs_no_traceback(
    operator: OperatorProcess, custom: client.CustomObjectsApi, core: client.CoreV1Api
) -> None:
    doomed = f"e2e-doomed-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=doomed)))
    mark = operator.log_size()
    for i in range(5):
        create(custom, doomed, llmd(f"gone-{i}"))
    core.delete_namespace(doomed, propagation_policy="Background")
    eventually(
        lambda: doomed not in [n.metadata.name for n in core.list_namespace().items],
        timeout=120,
        description=f"namespace {doomed} deleted",
    )
    log = operator.log_since(mark)
    assert "Traceback" not in log, log[-3000:]
    assert "failed with an exception" not in log, log[-3000:]


def test_a_workload_of_another_kind_takes_over_before_the_old_one_goes(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    body = llmd(
        "handover",
        quantization="bf16",
        hardware={"gpuTypes": ["A10G"], "gpusPerNode": 1},
        scaling={"minReplicas": 1, "maxReplicas": 1},
    )
    name = create(custom, namespace, body)
    wait_ready(custom, namespace, name)
    _patch(custom, namespace, name, {"quantization": "fp32"})  # needs several A10G nodes

    # Make before break: the operator says it keeps the Deployment until the LWS is ready
    # (on kwok the group is ready within seconds, so the event is the evidence).
    eventually(
        lambda: _reasons(core, namespace, name, "HandingOver") >= 1,
        timeout=60,
        description="a HandingOver event",
    )
    obj = wait_ready(custom, namespace, name, timeout=180)
    assert obj["status"]["plan"]["nodesPerReplica"] > 1
    eventually(
        lambda: (
            not apps.list_namespaced_deployment(
                namespace, label_selector=f"{LLMD_LABEL}={name}"
            ).items
        ),
        timeout=60,
        description="the old Deployment pruned",
    )
    assert _reasons(core, namespace, name, "Pruned") == 1
    assert "handover" not in obj["status"]
