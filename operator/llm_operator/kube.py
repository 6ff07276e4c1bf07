"""The only module that talks to the Kubernetes API (official client, dynamic client).

Reads nodes, children and pods; applies children with server-side apply under one field
manager; deletes pruned children. API errors are translated into the operator's error
classes here so the callers never see client exceptions. Called by `reconcile.apply`,
the handlers and the autoscaler loop.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import urllib3
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

SECRET_TTL_S = 30.0
# NOTE: the kubernetes client waits forever by default (no `_request_timeout`: urllib3 is
# given timeout=None), so one stalled connection to the apiserver (a partition, a proxy
# that stops forwarding) would hold a reconcile thread and its object's lock for good.
# Every request gets (connect, read) seconds unless the call sets its own; 30 s matches
# Kopf's settings.networking.request_timeout (handlers.configure).
REQUEST_TIMEOUT_S: tuple[float, float] = (10.0, 30.0)
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


class ClusterView(Protocol):
    """What a reconcile pass reads about the cluster besides the LLMDeployment itself.

    The operator serves it from watch-fed in-memory indexes (handlers.IndexedView: Kopf
    indexes, filled before any handler runs), so a pass costs no LIST call; `ListingView`
    reads the same through the API, for tools and tests.
    """

    def children(self, namespace: str, owner: str) -> list[dict[str, Any]]:
        """The LLMDeployment's children (every kind in CHILD_KINDS), as the API has them."""

    def pod_problems(self, namespace: str, owner: str) -> PodProblems:
        """What keeps its pods from serving: a pod the scheduler refused, an engine
        container that stopped or cannot start."""

    def node_inventory(self) -> NodeInventory:
        """What the cluster's schedulable nodes offer."""


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


_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def trim(obj: Any) -> dict[str, Any]:
    """What the operator keeps of a child in memory: identity, labels, annotations (but the
    last-applied copy), owners, deletion mark, spec and status; never managedFields."""
    meta = obj.get("metadata") or {}
    kept = {
        k: meta[k]
        for k in (
            "name",
            "namespace",
            "uid",
            "labels",
            "ownerReferences",
            "deletionTimestamp",
            "resourceVersion",
        )
        if k in meta
    }
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k not in _DROPPED_ANNOTATIONS
    }
    if annotations:
        kept["annotations"] = annotations
    out: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": kept,
    }
    for key in ("spec", "status"):
        if key in obj:
            out[key] = obj[key]
    return out


def node_capacity(node: Any) -> tuple[str | None, int, bool]:
    """(nvidia.com/gpu.product label, allocatable GPUs, schedulable) of a Node dict."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    product = (meta.get("labels") or {}).get(GPU_PRODUCT_LABEL)
    return product, int(str(allocatable.get(GPU_RESOURCE) or "0")), not spec.get("unschedulable")


def inventory_of(nodes: Iterable[tuple[str | None, int, bool]]) -> NodeInventory:
    """The inventory of nodes given as `node_capacity` tuples."""
    per_node: dict[str, int] = {}
    cpu_nodes = 0
    for product, gpus, schedulable in nodes:
        if not schedulable:
            continue
        if gpus == 0:
            cpu_nodes += 1
        elif product:
            per_node[product] = max(per_node.get(product, 0), gpus)
    return NodeInventory(per_node, cpu_nodes)


def load_config(kubeconfig: str | None = None) -> None:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]


def _status_message(err: Exception) -> str:
    """The apiserver's own words (its Status message), without the client's dump of HTTP
    headers and traceback."""
    body = getattr(err, "body", None)
    try:
        message = json.loads(body)["message"] if body else None
    except (TypeError, ValueError, KeyError):
        message = body if isinstance(body, str) else None
    status, reason = getattr(err, "status", 0), getattr(err, "reason", None)
    return str(message or f"{status} {reason or type(err).__name__}")


def _refused_for_good(err: Exception) -> bool:
    """Whether the apiserver refused an object in a way that retrying cannot change: it is
    invalid (422), cannot be decoded (400), an admission webhook denied it (403), or
    server-side apply found it does not fit the kind's schema (500 "failed to create typed
    patch object": an unknown field, a list where a map belongs)."""
    status = getattr(err, "status", 0) or 0
    message = _status_message(err)
    return (
        status in (400, 422)
        or (status == 403 and "denied the request" in message)
        or (status == 500 and "failed to create typed patch object" in message)
    )


# Where a rendered field the apiserver refused comes from in the LLMDeployment (the first
# one its message names); anything else comes from spec.overrides, which is applied last.
_SOURCES = (
    ("tolerations", "spec.hardware.tolerations"),
    ("nodeSelector", "spec.hardware.nodeSelector"),
    ("secretKeyRef", "spec.model.hfTokenSecret"),
    ("storageClassName", "spec.model.cache.storageClassName"),
    ("claimName", "spec.model"),
)


def _refusal(err: Exception, what: str) -> InvalidSpecError:
    """A refused rendered object as a spec error naming the field that most likely set it."""
    message = _status_message(err)
    field = next((f for key, f in _SOURCES if key in message), "spec.overrides")
    return InvalidSpecError(
        field,
        f"the apiserver refused the rendered {what}: {message}; change the field of this "
        "LLMDeployment that sets it (spec.overrides are applied last)",
    )


# Characters YAML does not take as themselves in a double-quoted scalar: DEL and the C1
# controls, the line and paragraph separators it would fold, the byte order mark,
# non-characters, and surrogates (never in text read from the apiserver). json.dumps
# already escapes the C0 controls.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")


def apply_body(obj: Mapping[str, Any]) -> bytes:
    """The body of a server-side apply request: JSON (which is YAML, the content type).

    NOTE: the kubernetes client would send `json.dumps(obj)`, which writes a character
    outside the Basic Multilingual Plane (an emoji in an env value or an argument) as a
    surrogate pair escape; the apiserver's YAML decoder refuses those ("found invalid Unicode
    character escape code", 400), so such an object could never be applied. Characters are
    sent as UTF-8 instead, and only those YAML cannot read raw are escaped.
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode()


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
        return InvalidSpecError("spec.overrides", f"{what} was rejected: {_status_message(err)}")
    return TransientError(f"{what}: {_status_message(err)}", delay=10)


class BoundedApiClient(client.ApiClient):
    """The kubernetes client's `ApiClient` whose every request ends.

    A request without its own `_request_timeout` gets `REQUEST_TIMEOUT_S`; a request that
    gets no answer (refused, reset, timed out) raises `ApiException` with status 0, which
    every call site already maps (`_translate`: a TransientError, retried with backoff)
    instead of urllib3's own exceptions escaping as unclassified errors.
    """

    def __init__(
        self,
        configuration: client.Configuration | None = None,
        timeout_s: tuple[float, float] | None = None,
    ) -> None:
        """Args: configuration: as `ApiClient`'s; timeout_s: (connect, read) seconds of a
        request that sets none (None: `REQUEST_TIMEOUT_S`)."""
        super().__init__(configuration)
        self.timeout_s = timeout_s

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        """`ApiClient.call_api` with a default timeout and network errors as ApiException."""
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = self.timeout_s or REQUEST_TIMEOUT_S
        try:
            return super().call_api(*args, **kwargs)
        except urllib3.exceptions.HTTPError as err:
            raise ApiException(
                status=0, reason=f"no answer from the API server ({type(err).__name__}: {err})"
            ) from err


class Kube:
    """A thin facade over the Kubernetes API for the operator's needs."""

    def __init__(
        self,
        api_client: client.ApiClient | None = None,
        inventory_ttl_s: float = 10.0,
        secret_ttl_s: float = SECRET_TTL_S,
    ) -> None:
        self.api = api_client or BoundedApiClient()
        self.secret_ttl_s = secret_ttl_s
        # NOTE: every reconcile pass asks what the nodes offer; nodes change on the scale of
        # minutes (autoscaling groups), so one list per `inventory_ttl_s` serves them all.
        self.inventory_ttl_s = inventory_ttl_s
        self._inventory: tuple[float, NodeInventory] | None = None
        self._inventory_lock = threading.Lock()
        self._resources: dict[tuple[str, str], Any] = {}
        self._discovery_lock = threading.Lock()
        self._secrets: dict[tuple[str, str], tuple[float, frozenset[str] | None]] = {}
        self._secrets_lock = threading.Lock()

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
        dicts = (self.api.sanitize_for_serialization(n) for n in nodes)  # type: ignore[no-untyped-call]
        return inventory_of(node_capacity(d) for d in dicts)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply one object under the operator's field manager.

        Conflicts are forced: the operator owns every field it renders.
        """
        meta = obj["metadata"]
        what = f"{obj['kind']} {meta.get('namespace', '')}/{meta['name']}"
        try:
            resource = self._resource(obj["apiVersion"], obj["kind"])
            result = resource.server_side_apply(
                body=apply_body(obj),
                name=meta["name"],
                namespace=meta.get("namespace"),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
        except ResourceNotFoundError as err:
            raise TransientError(f"{what}: kind not served (is its CRD installed?)", 60) from err
        except (DynamicApiError, ApiException) as err:
            if _refused_for_good(err):
                raise _refusal(err, what) from err
            raise _translate(err, f"applying {what}") from err
        return dict(result.to_dict())

    def check_pod_template(
        self, namespace: str, name: str, template: Mapping[str, Any], what: str
    ) -> None:
        """Have the apiserver validate a pod template now, as it will when pods are made.

        NOTE: a LeaderWorkerSet's CRD takes any pod template; the LWS controller creates the
        pods later, and a template Kubernetes refuses then (a toleration key that is no
        label key, say) would leave the LLMDeployment Planned with nothing ever running and
        nothing saying why. The template is applied as a Deployment with dryRun=All, which
        validates it fully and persists nothing.

        Raises:
            InvalidSpecError: the apiserver refused the template.
            TransientError: it could not be asked.
        """
        selector = {"serving.llm-operator.io/pod-template-check": "dry-run"}
        meta = dict(template.get("metadata") or {})
        meta["labels"] = {**(meta.get("labels") or {}), **selector}
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": selector},
                "template": {**template, "metadata": meta},
            },
        }
        try:
            self._resource("apps/v1", "Deployment").server_side_apply(
                body=apply_body(body),
                name=name,
                namespace=namespace,
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                dry_run="All",
            )
        except (DynamicApiError, ApiException) as err:
            if _refused_for_good(err):
                raise _refusal(err, what) from err
            raise _translate(err, f"checking {what}") from err

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

    def list_all(self, api_version: str, kind: str, namespace: str = "") -> list[dict[str, Any]]:
        """Every object of a kind, in one namespace or ("") in all."""
        try:
            found = self._resource(api_version, kind).get(namespace=namespace or None)
        except (DynamicApiError, ApiException) as err:
            raise _translate(err, f"listing {kind}") from err
        return [dict(item.to_dict()) for item in found.items]

    def set_configmap_key(self, namespace: str, name: str, key: str, text: str) -> None:
        """Replace one key of an existing ConfigMap (a merge patch of `data`)."""
        try:
            self._resource("v1", "ConfigMap").patch(
                name=name,
                namespace=namespace,
                body={"data": {key: text}},
                content_type="application/merge-patch+json",
            )
        except (DynamicApiError, ApiException) as err:
            raise _translate(err, f"updating ConfigMap {namespace}/{name}") from err

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
        """The key names of a Secret (never its values); None when it does not exist.

        NOTE: cached for `secret_ttl_s` (LLM_OPERATOR_SECRET_CACHE_TTL): every pass of an
        object with a token Secret asks, and a Secret created later is seen within that time
        (the safety pass, or any change of a child, reconciles again).
        """
        key = (namespace, name)
        now = time.monotonic()
        with self._secrets_lock:
            hit = self._secrets.get(key)
            if hit is not None and now - hit[0] < self.secret_ttl_s:
                return hit[1]
        keys = self._secret_keys(namespace, name)
        with self._secrets_lock:
            self._secrets[key] = (now, keys)
        return keys

    def _read_secret(self, namespace: str, name: str) -> Any:
        """A Secret, or None when it does not exist."""
        try:
            return client.CoreV1Api(self.api).read_namespaced_secret(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise _translate(err, f"reading Secret {namespace}/{name}") from err

    def _secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        secret = self._read_secret(namespace, name)
        if secret is None:
            return None
        return frozenset((secret.data or {}).keys()) | frozenset((secret.string_data or {}).keys())

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key's value of a Secret (the Hugging Face token the operator reads gated
        models' config.json with); None when the Secret or the key does not exist.

        NOTE: the value is returned to the caller only: never logged, never put in an error
        message, an event or the status.
        """
        secret = self._read_secret(namespace, name)
        if secret is None:
            return None
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

    def pod_problems(self, namespace: str, selector: str) -> PodProblems:
        """What keeps pods of the selector from serving (`pod_problems_of`), from one LIST
        read as plain JSON (no client models are built)."""
        try:
            # NOTE: _preload_content=False returns the raw HTTP response (the client's
            # stubs type it as the model list).
            response: Any = client.CoreV1Api(self.api).list_namespaced_pod(
                namespace, label_selector=selector, _preload_content=False
            )
            pods = json.loads(response.data).get("items") or []
        except ApiException as err:
            raise _translate(err, f"listing pods in {namespace}") from err
        return pod_problems_of(pods)


@dataclass(frozen=True)
class PodProblems:
    """What keeps an LLMDeployment's pods from serving (None: nothing of that kind)."""

    unschedulable: str | None = None
    failing: str | None = None


# Waiting reasons of a container that will not start without a change or a retry
# (kubelet's images and container-start errors, and its back-off after crashes).
FAILING_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def container_failure(pod: Mapping[str, Any]) -> str | None:
    """What happened to an unready container of the pod (API JSON) that exited or cannot
    start: a sentence naming the pod, the container, the kubelet's reason, the exit code
    and the restarts; None when every container is ready or merely starting."""
    name = (pod.get("metadata") or {}).get("name", "?")
    for c in (pod.get("status") or {}).get("containerStatuses") or []:
        if c.get("ready"):
            continue
        state, last = c.get("state") or {}, (c.get("lastState") or {}).get("terminated")
        waiting, now = state.get("waiting"), state.get("terminated")
        restarts = int(c.get("restartCount") or 0)
        if now:
            return (
                f"pod {name}: container {c.get('name')} stopped ({now.get('reason') or 'exited'}"
                f", exit code {now.get('exitCode')}) after {restarts} restart(s)"
            )
        if last and restarts > 0:
            why = f"{last.get('reason') or 'exited'}, exit code {last.get('exitCode')}"
            then = f"; now {waiting['reason']}" if waiting and waiting.get("reason") else ""
            return (
                f"pod {name}: container {c.get('name')} stopped ({why}) and was restarted "
                f"{restarts} time(s){then}; waiting for it to be ready again"
            )
        if waiting and waiting.get("reason") in FAILING_WAITING_REASONS:
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            return f"pod {name}: container {c.get('name')} {waiting['reason']}{detail}"
    return None


def unschedulable_message(pod: Mapping[str, Any]) -> str | None:
    """The scheduler's message for a pod it refused (PodScheduled=False, Unschedulable)."""
    name = (pod.get("metadata") or {}).get("name", "?")
    for c in (pod.get("status") or {}).get("conditions") or []:
        if (c.get("type"), c.get("status"), c.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            return f"pod {name}: {c.get('message', '')}"
    return None


def pod_problems_of(pods: Iterable[Mapping[str, Any]]) -> PodProblems:
    """The first refused pod's and the first failing container's messages (pods being
    deleted are skipped)."""
    unschedulable = failing = None
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        unschedulable = unschedulable or unschedulable_message(pod)
        failing = failing or container_failure(pod)
    return PodProblems(unschedulable=unschedulable, failing=failing)


class ListingView:
    """`ClusterView` through the API: one LIST per child kind and pass (tools and tests; the
    operator uses watch-fed indexes instead)."""

    def __init__(self, kube: Kube, selector_label: str) -> None:
        self.kube = kube
        self.label = selector_label

    def children(self, namespace: str, owner: str) -> list[dict[str, Any]]:
        """Every child kind, listed by the LLMDeployment label."""
        return [
            trim(o)
            for o in self.kube.list_labelled(CHILD_KINDS, namespace, f"{self.label}={owner}")
        ]

    def pod_problems(self, namespace: str, owner: str) -> PodProblems:
        """Listed (one LIST of the owner's pods)."""
        return self.kube.pod_problems(namespace, f"{self.label}={owner}")

    def node_inventory(self) -> NodeInventory:
        """Listed at most once per the Kube's inventory TTL."""
        return self.kube.node_inventory()
