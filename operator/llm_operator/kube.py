"""The only module that talks to the Kubernetes API (official client, dynamic client).

Reads nodes, children and pods; applies children with server-side apply under one field
manager; deletes pruned children. API errors are translated into the operator's error
classes here so the callers never see client exceptions. Called by `reconcile.apply`,
the handlers and the autoscaler loop.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import (
    ConflictError,
    DynamicApiError,
    NotFoundError,
    ResourceNotFoundError,
)

from llm_operator.errors import GoneError, InvalidSpecError, TransientError
from llm_operator.settings import FIELD_MANAGER

log = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

# Kinds the renderer may produce, in apply order (a Service before its pods is harmless,
# the shared model cache's claim and download Job before the workload that mounts it,
# PDBs and monitors after the workload).
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("batch/v1", "Job"),
    ("apps/v1", "Deployment"),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
    ("policy/v1", "PodDisruptionBudget"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
)


@dataclass(frozen=True)
class NodeInventory:
    """What the cluster's nodes offer.

    Attributes:
        gpus_per_node: nvidia.com/gpu.product value -> the most GPUs allocatable on one
            schedulable node with that product.
        cpu_nodes: number of schedulable nodes without GPUs.
    """

    gpus_per_node: dict[str, int]
    cpu_nodes: int


def load_config(kubeconfig: str | None = None) -> None:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]


def _translate(err: Exception, what: str) -> Exception:
    """Map client errors onto the operator's classification."""
    if isinstance(err, ConflictError | ApiException) and getattr(err, "status", 0) == 409:
        return TransientError(f"{what}: conflict, retrying", delay=2)
    status = getattr(err, "status", 0) or 0
    if status == 404:
        return GoneError(f"{what}: gone")
    if status == 403 and "being terminated" in str(err):
        return GoneError(f"{what}: the namespace is being terminated")
    if status == 422:
        # The apiserver rejected what we rendered: only overrides can make it invalid.
        return InvalidSpecError("spec.overrides", f"{what} was rejected: {err}")
    return TransientError(f"{what}: {err}", delay=10)


class Kube:
    """A thin facade over the Kubernetes API for the operator's needs."""

    def __init__(
        self, api_client: client.ApiClient | None = None, inventory_ttl_s: float = 10.0
    ) -> None:
        self.api = api_client or client.ApiClient()
        # NOTE: every reconcile pass asks what the nodes offer; nodes change on the scale of
        # minutes (autoscaling groups), so one list per `inventory_ttl_s` serves them all.
        self.inventory_ttl_s = inventory_ttl_s
        self._inventory: tuple[float, NodeInventory] | None = None
        self._inventory_lock = threading.Lock()
        self._resources: dict[tuple[str, str], Any] = {}
        self._discovery_lock = threading.Lock()

    @cached_property
    def dynamic(self) -> DynamicClient:
        """The dynamic client (discovery runs once, on first use)."""
        return DynamicClient(self.api)  # type: ignore[no-untyped-call]

    def _resource(self, api_version: str, kind: str) -> Any:
        """The API resource of a kind, resolved through discovery once.

        NOTE: Kopf runs sync handlers on a thread pool, and the dynamic client's discovery
        cache is not thread-safe: concurrent look-ups corrupt it (KeyError: 'resources'
        from kubernetes.dynamic.discovery, seen at 500 objects). Look-ups are serialised
        and resolved resources kept; an unserved kind is looked up again next time, so a
        CRD installed later is found.
        """
        key = (api_version, kind)
        with self._discovery_lock:
            found = self._resources.get(key)
            if found is None:
                found = self.dynamic.resources.get(api_version=api_version, kind=kind)
                self._resources[key] = found
            return found

    def has_kind(self, api_version: str, kind: str) -> bool:
        """Whether the API server serves this kind (e.g. the LWS CRD is installed)."""
        try:
            self._resource(api_version, kind)
        except ResourceNotFoundError:
            return False
        return True

    def node_inventory(self) -> NodeInventory:
        """GPUs per node by product, and CPU-only nodes, among the schedulable nodes.

        Listed at most once per `inventory_ttl_s`; passes in between share the result.
        """
        with self._inventory_lock:
            now = time.monotonic()
            if self._inventory is not None and now - self._inventory[0] < self.inventory_ttl_s:
                return self._inventory[1]
            inventory = self._list_inventory()
            self._inventory = (now, inventory)
            return inventory

    def _list_inventory(self) -> NodeInventory:
        try:
            nodes = client.CoreV1Api(self.api).list_node().items
        except ApiException as err:
            raise _translate(err, "listing nodes") from err
        per_node: dict[str, int] = {}
        cpu_nodes = 0
        for node in nodes:
            if node.spec and node.spec.unschedulable:
                continue
            allocatable = (node.status and node.status.allocatable) or {}
            labels = (node.metadata and node.metadata.labels) or {}
            gpus = int(str(allocatable.get(GPU_RESOURCE) or "0"))
            if gpus == 0:
                cpu_nodes += 1
            elif GPU_PRODUCT_LABEL in labels:
                product = labels[GPU_PRODUCT_LABEL]
                per_node[product] = max(per_node.get(product, 0), gpus)
        return NodeInventory(per_node, cpu_nodes)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply one object under the operator's field manager.

        Conflicts are forced: the operator owns every field it renders.
        """
        meta = obj["metadata"]
        what = f"{obj['kind']} {meta.get('namespace', '')}/{meta['name']}"
        try:
            resource = self._resource(obj["apiVersion"], obj["kind"])
            result = resource.server_side_apply(
                body=obj,
                name=meta["name"],
                namespace=meta.get("namespace"),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
        except ResourceNotFoundError as err:
            raise TransientError(f"{what}: kind not served (is its CRD installed?)", 60) from err
        except (DynamicApiError, ApiException) as err:
            raise _translate(err, f"applying {what}") from err
        return dict(result.to_dict())

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, or None when absent (or its kind is not served)."""
        try:
            found = self._resource(api_version, kind).get(name=name, namespace=namespace)
        except (NotFoundError, ResourceNotFoundError):
            return None
        except (DynamicApiError, ApiException) as err:
            raise _translate(err, f"reading {kind} {namespace}/{name}") from err
        return dict(found.to_dict())

    def list_labelled(
        self, kinds: Iterable[tuple[str, str]], namespace: str, selector: str
    ) -> list[dict[str, Any]]:
        """Objects of the given kinds matching a label selector (kinds not served skipped)."""
        out: list[dict[str, Any]] = []
        for api_version, kind in kinds:
            try:
                items = self._resource(api_version, kind).get(
                    namespace=namespace, label_selector=selector
                )
            except ResourceNotFoundError:
                continue
            except (DynamicApiError, ApiException) as err:
                raise _translate(err, f"listing {kind} in {namespace}") from err
            for item in items.items:
                obj = dict(item.to_dict())
                obj.setdefault("apiVersion", api_version)
                obj.setdefault("kind", kind)
                out.append(obj)
        return out

    def delete(self, obj: dict[str, Any]) -> None:
        """Delete one object (foreground: dependents first); absent is fine."""
        meta = obj["metadata"]
        try:
            self._resource(obj["apiVersion"], obj["kind"]).delete(
                name=meta["name"],
                namespace=meta.get("namespace"),
                body={"propagationPolicy": "Foreground"},
            )
        except (NotFoundError, ResourceNotFoundError):
            return
        except (DynamicApiError, ApiException) as err:
            raise _translate(err, f"deleting {obj['kind']} {meta['name']}") from err

    def patch_status(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        """Merge-patch the status subresource of a custom object (None values remove keys)."""
        meta = obj["metadata"]
        what = f"{obj['kind']} {meta.get('namespace', '')}/{meta['name']} status"
        try:
            self._resource(obj["apiVersion"], obj["kind"]).status.patch(
                body={"status": status},
                name=meta["name"],
                namespace=meta.get("namespace"),
                content_type="application/merge-patch+json",
            )
        except (DynamicApiError, ApiException) as err:
            raise _translate(err, f"patching {what}") from err

    def annotate(self, obj: dict[str, Any], annotations: dict[str, str]) -> None:
        """Merge-patch annotations onto an object."""
        meta = obj["metadata"]
        try:
            self._resource(obj["apiVersion"], obj["kind"]).patch(
                body={"metadata": {"annotations": annotations}},
                name=meta["name"],
                namespace=meta.get("namespace"),
                content_type="application/merge-patch+json",
            )
        except (DynamicApiError, ApiException) as err:
            raise _translate(err, f"annotating {obj['kind']} {meta['name']}") from err

    def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        """The key names of a Secret (never its values); None when it does not exist."""
        try:
            secret = client.CoreV1Api(self.api).read_namespaced_secret(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise _translate(err, f"reading Secret {namespace}/{name}") from err
        return frozenset((secret.data or {}).keys()) | frozenset((secret.string_data or {}).keys())

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key's value of a Secret (the Hugging Face token the operator reads gated
        models' config.json with); None when the Secret or the key does not exist.

        NOTE: the value is returned to the caller only: never logged, never put in an error
        message, an event or the status.
        """
        try:
            secret = client.CoreV1Api(self.api).read_namespaced_secret(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise _translate(err, f"reading Secret {namespace}/{name}") from err
        encoded = (secret.data or {}).get(key)
        if encoded is None:
            plain = (secret.string_data or {}).get(key)
            return None if plain is None else str(plain).strip()
        try:
            return base64.b64decode(encoded).decode().strip()
        except (ValueError, UnicodeDecodeError):
            # NOTE: `from None`: the decoding error would quote bytes of the value.
            raise InvalidSpecError(
                "spec.model.hfTokenSecret", f"Secret {namespace}/{name} key {key!r} is not text"
            ) from None

    def pod_unschedulable(self, namespace: str, selector: str) -> str | None:
        """The scheduler's message for one pending, unschedulable pod of the selector."""
        try:
            pods = (
                client.CoreV1Api(self.api)
                .list_namespaced_pod(namespace, label_selector=selector)
                .items
            )
        except ApiException as err:
            raise _translate(err, f"listing pods in {namespace}") from err
        for pod in pods:
            for c in (pod.status and pod.status.conditions) or []:
                if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                    name = pod.metadata.name if pod.metadata else "?"
                    return f"pod {name}: {c.message}"
        return None
