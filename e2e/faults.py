"""Fault injection into the local e2e cluster and the invariant checked after each fault.

Used by e2e/tests/test_control_plane_faults.py, e2e/tests/test_soak.py and
bench/operator_soak.py. Faults are real: the control plane's processes are SIGKILLed and
started again through e2e/cluster/cluster.sh (kill / start-stopped).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from helpers import GROUP, PLURAL, VERSION

CLUSTER_SH = Path(__file__).resolve().parent / "cluster" / "cluster.sh"
LLMD_LABEL = "serving.llm-operator.io/llmdeployment"


def control_plane(*args: str) -> None:
    """`cluster.sh kill COMPONENT` / `cluster.sh start-stopped` on the local cluster."""
    done = subprocess.run(
        [str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=180, env=os.environ
    )
    if done.returncode != 0:
        raise RuntimeError(f"cluster.sh {' '.join(args)}:\n{done.stdout}{done.stderr}")


# kube-controller-manager's and kube-scheduler's leader election gives up after its renew
# deadline (10 s by default) without an apiserver; they exit and their supervisor starts
# them again. kwokctl runs them without leader election, so an outage longer than that
# restarts them here, as a production control plane would.
LEASE_RENEW_DEADLINE_S = 10.0
LEADER_ELECTED = ("kube-controller-manager", "kube-scheduler")


def outage(component: str, seconds: float = LEASE_RENEW_DEADLINE_S + 2) -> None:
    """`component` SIGKILLed and down for `seconds` (every watch and request of the
    operator fails meanwhile), then started again with what lost its lease."""
    control_plane("kill", component)
    time.sleep(seconds)
    if seconds > LEASE_RENEW_DEADLINE_S:
        for name in LEADER_ELECTED:
            control_plane("kill", name)
    control_plane("start-stopped")


def owned_by(obj: Any, uid: str) -> bool:
    return any(ref.uid == uid and ref.controller for ref in obj.metadata.owner_references or [])


def violations(
    custom: client.CustomObjectsApi, apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str
) -> list[str]:
    """What breaks the invariant in `namespace` now, one sentence each ([] when it holds).

    Every LLMDeployment Ready with settled metrics (MetricsAvailable=True), exactly one
    Deployment and one Service controlled by it, and as many live engine pods as its
    status.desiredReplicas; no Deployment or Service labelled for an LLMDeployment that
    does not control it (an orphan, or a duplicate of a deleted and recreated one).
    """
    found: list[str] = []
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    uids = {o["metadata"]["name"]: o["metadata"]["uid"] for o in items}
    deployments = apps.list_namespaced_deployment(namespace).items
    services = core.list_namespaced_service(namespace).items
    pods = core.list_namespaced_pod(namespace).items
    for kind, objs in (("Deployment", deployments), ("Service", services)):
        for o in objs:
            owner = (o.metadata.labels or {}).get(LLMD_LABEL)
            if owner is not None and not (owner in uids and owned_by(o, uids[owner])):
                found.append(f"orphaned {kind} {o.metadata.name} (labelled for {owner!r})")
    for obj in items:
        name, uid = obj["metadata"]["name"], obj["metadata"]["uid"]
        status = obj.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        for type_ in ("Ready", "MetricsAvailable"):
            if conditions.get(type_, {}).get("status") != "True":
                found.append(f"{name}: {type_} is {conditions.get(type_)}")
        mine = len([d for d in deployments if owned_by(d, uid)])
        if mine != 1:
            found.append(f"{name}: {mine} Deployments")
        if len([s for s in services if owned_by(s, uid)]) != 1:
            found.append(f"{name}: not one Service")
        live = [
            p.metadata.name
            for p in pods
            if (p.metadata.labels or {}).get(LLMD_LABEL) == name
            and p.metadata.deletion_timestamp is None
        ]
        if len(live) != status.get("desiredReplicas"):
            found.append(f"{name}: pods {live}, desiredReplicas {status.get('desiredReplicas')}")
    return found


def changes(before: Any, after: Any, path: str = "") -> dict[str, tuple[Any, Any]]:
    """The leaves that differ between two JSON documents, by path."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in before.keys() | after.keys():
            out.update(changes(before.get(key), after.get(key), f"{path}.{key}"))
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        out = {}
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            out.update(changes(b, a, f"{path}[{i}]"))
        return out
    return {} if before == after else {path: (before, after)}
