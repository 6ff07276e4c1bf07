"""Kopf handlers: the ONLY module with @kopf decorators. Kwargs in, one call out.

One idempotent reconcile is registered for create, update and resume (explicit id so a
rename never orphans Kopf's progress), a timer re-runs it to revert drift, and another runs
the autoscaler. Every pass holds the object's lock, re-reads the object, decides, and
writes status before it lets go: Kopf's own `patch` is applied after a handler returns,
outside any lock, so a pass deciding from its (possibly stale) body could undo another's
replica decision. Domain errors are mapped here: InvalidSpecError -> kopf.PermanentError
(and a condition naming the field), TransientError -> kopf.TemporaryError with its delay.
Custom catalog files are re-read at the start of each pass (`refresh_catalog`): a bad one
keeps the last good catalog and is reported (log line, metrics, event on its ConfigMap).
Kopf's bookkeeping lives in annotations with the project's prefix, never in `status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import kopf
from prometheus_client import Gauge, start_http_server

from llm_operator.api import conditions as cond
from llm_operator.api.v1alpha1 import API_VERSION, GROUP, KIND, PLURAL, VERSION, Condition
from llm_operator.autoscaler import fidelity, fleet, loop, metrics
from llm_operator.catalog import Catalog, CatalogError
from llm_operator.catalog.reload import CatalogFiles, Change
from llm_operator.errors import GoneError, InvalidSpecError, TransientError
from llm_operator.hub import HubOptions
from llm_operator.kube import (
    BoundedApiClient,
    Kube,
    NodeInventory,
    PodProblems,
    inventory_of,
    load_config,
    node_capacity,
    pod_problems_of,
    trim,
)
from llm_operator.metrics import (
    API_WRITES,
    AUTOSCALER_TICKS,
    CATALOG_LAST_GOOD,
    CATALOG_LOAD_FAILURES,
    CATALOG_VALID,
    IN_FLIGHT,
    OBSERVED_TOKENS,
    PLANNED_COST,
    PREDICTION_ERROR,
    RECONCILE_SECONDS,
    RECONCILES,
    REPLICAS,
)
from llm_operator.reconcile.desired import LABEL_LLMD, Options, forget_rendered
from llm_operator.reconcile.run import Outcome, parse, reconcile_once, status_dict
from llm_operator.settings import ANNOTATION_PREFIX, Settings

SETTINGS = Settings.from_env()
OPTIONS = Options(
    monitoring=SETTINGS.monitoring,
    allow_privileged_overrides=SETTINGS.allow_privileged_overrides,
    images=SETTINGS.engine_images,
)
HUB = HubOptions(cache_dir=SETTINGS.hub_cache_dir, timeout_s=SETTINGS.hub_timeout_s)
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_persisted: dict[str, float] = {}  # uid -> when this process last wrote the scaler state
# uid -> the scaler state of this process's last tick; the annotation is written less often
_scaler_states: dict[str, str] = {}
log = logging.getLogger(__name__)


def _lock(uid: str) -> threading.Lock:
    """One lock per object: the timer and change handlers never reconcile it at once."""
    with _locks_guard:
        return _locks.setdefault(uid, threading.Lock())


@contextlib.contextmanager
def _locked(uid: str) -> Iterator[None]:
    """Hold the object's lock, counted in llm_operator_reconciles_in_flight (the queue)."""
    lock = _lock(uid)
    IN_FLIGHT.labels("waiting").inc()
    try:
        lock.acquire()
    finally:
        IN_FLIGHT.labels("waiting").dec()
    IN_FLIGHT.labels("running").inc()
    try:
        yield
    finally:
        IN_FLIGHT.labels("running").dec()
        lock.release()


ESSENCE_LIMIT = 64 * 1024  # bytes of Kopf's last-handled-configuration annotation
TIMER_EXIT_POLL_S = 2.0  # how often Kopf checks that a deleted object's timers have exited


class BoundedDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """Kopf's last-handled-configuration annotation, kept small.

    NOTE: Kopf stores the object's essence (spec, labels, annotations) in an annotation, as
    JSON with non-ASCII characters escaped (up to 6 bytes each). All annotations together
    hold 256 KiB, less than an LLMDeployment the apiserver admits (a long string in the
    spec is enough); past it every patch Kopf makes is refused, so the finalizer is never
    removed and the object, and its namespace, can never be deleted. An essence over
    ESSENCE_LIMIT is stored as a digest of each stanza: a change is still a change to
    the same stanza (the handlers read the object itself, never Kopf's diff).
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        essence = super().build(body=body, extra_fields=extra_fields)
        if len(json.dumps(essence, separators=(",", ":"))) <= ESSENCE_LIMIT:
            return essence
        digests = {
            key: {"sha256": hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()}
            for key, value in essence.items()
        }
        return cast(kopf.BodyEssence, digests)


# NOTE: Kopf's own API session allows any number of connections (aiohttp's
# TCPConnector(limit=0)): every request in flight opens one, and each TLS connection keeps
# asyncio's 128 KiB read buffer and OpenSSL's state while it idles in the pool. A burst of
# creates then holds one connection per object being handled. The same session, bounded:
# requests beyond the bound wait for a free connection. Kopf's watch streams hold one each
# for as long as they run (one per watched kind, about a dozen), so the bound is well
# above that.
API_CONNECTIONS = 32


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
    """Kopf's login through the kubernetes client (kubeconfig or in-cluster), with a
    bounded connection pool (`API_CONNECTIONS`)."""
    info = await asyncio.to_thread(kopf.login_via_client, **kwargs)
    if info is None:
        return None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=API_CONNECTIONS, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        aiohttp_session=session,
        server=info.server,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
        priority=info.priority,
    )


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Kopf settings, clients and the metrics server."""
    # NOTE: first, so that a bad custom catalog stops the operator before anything else.
    # Kopf gives each object a shallow copy of this memo: the catalog is read from the one
    # shared CatalogFiles (`_catalog`), never copied into an attribute of its own.
    memo.catalogs = load_catalogs()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = BoundedDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/kopf-finalizer"
    settings.posting.level = logging.INFO
    settings.networking.request_timeout = SETTINGS.api_timeout_s
    settings.networking.connect_timeout = min(10.0, SETTINGS.api_timeout_s)  # Kopf's: none
    settings.watching.server_timeout = 300
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
    # NOTE: an LLMDeployment deleted while one of its timers runs a pass keeps its finalizer
    # until Kopf sees the timer has exited, which it checks every `cancellation_polling`
    # seconds: Kopf's 60 kept such an object (and its namespace) a minute longer than the
    # pass, which takes seconds.
    settings.background.cancellation_polling = TIMER_EXIT_POLL_S
    if SETTINGS.peering:
        settings.peering.name = SETTINGS.peering
        settings.peering.standalone = False
        settings.peering.clusterwide = not SETTINGS.namespace
        settings.peering.mandatory = True
        # NOTE: Kopf pauses every operator that sees a peer of the same priority, and all
        # pods of one Deployment share their environment: a random priority per process
        # makes exactly one of them (the highest) active, the others standby until its
        # keep-alive lapses.
        settings.peering.priority = random.SystemRandom().randint(1, 2**31 - 1)
    else:
        settings.peering.standalone = True
    # NOTE: Kopf authenticates its own watches; the kubernetes client the reconcile uses
    # needs the same credentials (in-cluster ServiceAccount, else KUBECONFIG) loaded here.
    load_config()
    connect = min(10.0, SETTINGS.api_timeout_s)
    memo.kube = Kube(
        BoundedApiClient(timeout_s=(connect, SETTINGS.api_timeout_s)),
        secret_ttl_s=SETTINGS.secret_cache_ttl_s,
    )
    memo.prometheus = (
        metrics.make_client(SETTINGS.prometheus_url, SETTINGS.query_timeout_s)
        if SETTINGS.prometheus_url
        else None
    )
    # NOTE: one query per metric and engine per interval for every LLMDeployment, not per
    # object: the ticks of one interval share the table.
    memo.observer = (
        metrics.GroupedObserver(
            memo.prometheus, SETTINGS.query_timeout_s, 0.8 * SETTINGS.autoscale_interval_s
        )
        if memo.prometheus is not None
        else None
    )
    start_http_server(SETTINGS.metrics_port)


def load_catalogs() -> CatalogFiles:
    """The catalogs at start: built-in, or the custom files of the settings.

    A custom file that is bad at start stops the operator (Kopf exits non-zero) instead of
    falling back to the built-in catalog. NOTE: a custom catalog holds the prices and GPU
    types (memory, node sizes) the running workloads were planned with, and every pass
    re-plans: starting on another catalog would silently re-plan every existing
    LLMDeployment (another GPU type or replica count, a budget judged on other prices) and
    roll its pods. With no last good catalog in this process, reconciling nothing is the
    safe choice: the workloads keep running as they are, the log names the file, the
    field and the fix, and the pod restarts (CrashLoopBackOff) until the file is fixed.
    A running operator never gets here; it keeps its last good catalog (`refresh_catalog`).

    Raises:
        kopf.PermanentError: a custom catalog file that cannot be read or parsed.
    """
    try:
        catalogs = CatalogFiles(
            SETTINGS.model_catalog,
            SETTINGS.gpu_catalog,
            SETTINGS.catalog_check_interval_s,
            calibration_path=SETTINGS.calibration,
        )
    except CatalogError as err:
        raise kopf.PermanentError(
            f"{err}. Not starting: there is no last good catalog to plan with, and the "
            "built-in one would re-plan the existing LLMDeployments. Fix the file (or its "
            "ConfigMap) or unset LLM_OPERATOR_GPU_CATALOG / LLM_OPERATOR_MODEL_CATALOG / "
            "LLM_OPERATOR_CALIBRATION"
        ) from None  # NOTE: the message names every bad field; pydantic's chain adds noise
    for kind in ("gpu", "model", "calibration"):
        CATALOG_VALID.labels(kind).set(1)
        CATALOG_LAST_GOOD.labels(kind).set_to_current_time()
    return catalogs


def _catalog_configmap(change: Change) -> tuple[str, str] | None:
    if change.catalog == "gpu":
        return SETTINGS.gpu_catalog_configmap
    if change.catalog == "calibration":
        return SETTINGS.calibration_configmap
    return SETTINGS.model_catalog_configmap


def _report_catalog(change: Change) -> None:
    """One log line, the metrics and, when the ConfigMap is known, an event on it."""
    ref = _catalog_configmap(change)
    message = change.message(f"{ref[0]}/{ref[1]}" if ref else None)
    # NOTE: no uid: reading the ConfigMap would need RBAC the operator has no other use
    # for. `kubectl events --for configmap/NAME` finds the event by kind and name.
    configmap = None
    if ref is not None:
        meta = {"namespace": ref[0], "name": ref[1]}
        configmap = _body({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})
    if change.ok:
        CATALOG_VALID.labels(change.catalog).set(1)
        CATALOG_LAST_GOOD.labels(change.catalog).set_to_current_time()
        log.info("%s", message)
        if configmap is not None:
            kopf.info(configmap, reason="CatalogReloaded", message=message)
    else:
        CATALOG_VALID.labels(change.catalog).set(0)
        CATALOG_LOAD_FAILURES.labels(change.catalog).inc()
        log.error("%s", message)
        if configmap is not None:
            kopf.warn(configmap, reason="CatalogInvalid", message=message)


def refresh_catalog(memo: kopf.Memo) -> None:
    """Re-read custom catalog files that changed and report each change.

    Called at the start of every reconcile pass (create, update, resume, a child's change,
    the drift timer) and by every autoscale tick: the files are read at most every
    LLM_OPERATOR_CATALOG_CHECK_INTERVAL seconds, a valid new catalog is used by the pass
    that found it and by the next pass of every other LLMDeployment (a child's change,
    else within LLM_OPERATOR_RECONCILE_INTERVAL), and nothing else is triggered (no
    re-plan of every object at once). A bad file keeps
    the last good catalog and is reported once per change of its content.
    """
    catalogs: CatalogFiles = memo.catalogs
    for change in catalogs.refresh():
        _report_catalog(change)


_self_calibration = threading.Lock()
_next_self_calibration = [0.0]  # monotonic seconds


def self_calibrate(memo: kopf.Memo) -> None:
    """The opt-in self-calibration (LLM_OPERATOR_SELF_CALIBRATE_INTERVAL > 0): at most once
    per interval, from whichever autoscale tick comes first (only the active operator of
    an HA pair ticks), fit the fleet calibration as `llmctl calibrate` would and, when it
    moved materially (`fleet.MATERIAL_CHANGE`), use it at once and write it to the
    calibration ConfigMap, so that a restart and `llmctl` see it too. Every deployment on
    a recalibrated engine and GPU type is re-predicted on its next pass, and moves only
    for a 10% gain (`search.replan`)."""
    if SETTINGS.self_calibrate_interval_s <= 0 or memo.prometheus is None:
        return
    if not _self_calibration.acquire(blocking=False):
        return  # another tick is fitting
    try:
        now = time.monotonic()
        if now < _next_self_calibration[0]:
            return
        _next_self_calibration[0] = now + SETTINGS.self_calibrate_interval_s
        _fit_fleet(memo)
    finally:
        _self_calibration.release()


def _fit_fleet(memo: kopf.Memo) -> None:
    catalogs: CatalogFiles = memo.catalogs
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    window = SETTINGS.self_calibrate_window
    try:
        items = memo.kube.list_all(API_VERSION, KIND, SETTINGS.namespace)
        fit = fleet.calibrate(
            memo.prometheus, items, catalogs.catalog, window=window,
            timeout_s=SETTINGS.query_timeout_s, fitted=stamp,
        )  # fmt: skip
    except (TransientError, InvalidSpecError, metrics.MetricsError) as err:
        log.warning("self-calibration skipped: %s", err)
        return
    if not fit.samples or not fit.material:
        log.debug("self-calibration: nothing moved by %.0f%%", 100 * fleet.MATERIAL_CHANGE)
        return
    text = fit.to_yaml(
        f"# Fleet calibration fitted by the operator over {window} at {stamp} "
        f"(LLM_OPERATOR_SELF_CALIBRATE_INTERVAL) from {fit.samples} deployments.\n"
    )
    catalogs.use_calibrations(fit.calibrations, text)
    CATALOG_VALID.labels("calibration").set(1)
    CATALOG_LAST_GOOD.labels("calibration").set_to_current_time()
    summary = "; ".join(line for line in fit.lines if " on " in line)
    log.info("self-calibration in use: %s", summary)
    ref = SETTINGS.calibration_configmap
    if ref is None:
        log.warning(
            "self-calibration is not persisted: set LLM_OPERATOR_CALIBRATION_CONFIGMAP "
            "(the chart's calibration.existingConfigMap) to keep it across restarts"
        )
        return
    try:
        memo.kube.set_configmap_key(ref[0], ref[1], "calibration.yaml", text)
    except (TransientError, InvalidSpecError) as err:
        log.warning("self-calibration in use but not written to ConfigMap %s/%s: %s", *ref, err)
        return
    API_WRITES.labels("calibration").inc()
    meta = {"namespace": ref[0], "name": ref[1]}
    configmap = _body({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})
    kopf.info(configmap, reason="CalibrationFitted", message=f"{summary} (window {window})")


def _catalog(memo: kopf.Memo) -> Catalog:
    """The catalog in use (every object's memo copy shares the one CatalogFiles)."""
    catalogs: CatalogFiles = memo.catalogs
    return catalogs.catalog


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch turning status `old` into `new` (removed keys nulled); None if equal."""
    if old == new:
        return None
    patch: dict[str, Any] = {k: None for k in old.keys() - new.keys()}
    patch.update({k: v for k, v in new.items() if old.get(k) != v})
    return patch


def _invalid_spec_status(live: dict[str, Any], err: InvalidSpecError) -> dict[str, Any]:
    generation = live.get("metadata", {}).get("generation")
    current = [
        Condition.model_validate(c) for c in (live.get("status") or {}).get("conditions", [])
    ]
    conditions = current
    for type_ in (cond.READY, cond.PLANNED):
        conditions = cond.set_condition(
            conditions, type_, "False", "InvalidSpec", str(err), generation
        )
    return {
        **dict(live.get("status") or {}),
        "observedGeneration": generation,
        "conditions": [c.model_dump(by_alias=True, exclude_none=True) for c in conditions],
    }


def _write_status(kube: Kube, live: dict[str, Any], new: dict[str, Any]) -> bool:
    """Write status only when it changed."""
    patch = status_patch(dict(live.get("status") or {}), new)
    if patch is None:
        return False
    kube.patch_status(live, patch)
    API_WRITES.labels("status").inc()
    return True


def _read(kube: Kube, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The object as the API server has it now; None when it is gone (or was replaced)."""
    meta = body["metadata"]
    live = kube.get(API_VERSION, KIND, meta["namespace"], meta["name"])
    if live is None or meta.get("uid") not in (None, live["metadata"].get("uid")):
        return None
    return live


def _body(obj: dict[str, Any]) -> kopf.Body:
    """A Kopf body of an object read through the API (to post events on it)."""
    return kopf.Body(cast(kopf.RawBody, obj))


def _report(body: kopf.Body, outcome: Outcome) -> None:
    """Events and gauges after a pass (outside the lock)."""
    for event in outcome.desired.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if outcome.report.applied:
        API_WRITES.labels("apply").inc(len(outcome.report.applied))
        kopf.info(body, reason="Applied", message=", ".join(outcome.report.applied))
    if outcome.report.pruned:
        API_WRITES.labels("delete").inc(len(outcome.report.pruned))
        kopf.info(body, reason="Pruned", message=", ".join(outcome.report.pruned))
    status = outcome.desired.status
    meta = body["metadata"]
    labels = (meta.get("namespace", ""), meta["name"])
    PLANNED_COST.labels(*labels).set(
        (status.plan.cost_per_hour if status.plan else 0) * (status.desired_replicas or 0)
    )
    REPLICAS.labels(*labels, "desired").set(status.desired_replicas or 0)
    REPLICAS.labels(*labels, "ready").set(status.ready_replicas or 0)


def _forget(meta: Mapping[str, Any]) -> None:
    uid = str(meta.get("uid", ""))
    labels = (str(meta.get("namespace", "")), str(meta.get("name", "")))
    # NOTE: under the object's lock, so that a pass still running for it cannot set a
    # series again after it is removed.
    with _locked(uid):
        series: list[tuple[Gauge, tuple[str, ...]]] = [
            (PLANNED_COST, labels),
            (OBSERVED_TOKENS, labels),
        ]
        series += [(REPLICAS, (*labels, state)) for state in ("desired", "ready")]
        series += [(PREDICTION_ERROR, (*labels, m)) for m in ("ttft", "tpot", "tokens_per_second")]
        for gauge, values in series:
            with contextlib.suppress(KeyError):
                gauge.remove(*values)
        _persisted.pop(uid, None)
        _scaler_states.pop(uid, None)
        forget_rendered(uid)
    with _locks_guard:
        _locks.pop(uid, None)


def _reconcile(body: Mapping[str, Any], memo: kopf.Memo, logger: Any, view: IndexedView) -> None:
    """One reconcile pass under the object's lock, from a fresh read."""
    refresh_catalog(memo)
    try:
        outcome, live = _reconcile_locked(body, memo, view)
    except GoneError as err:
        # Deleted (or its namespace is terminating) while the pass ran: expected, quiet.
        RECONCILES.labels("gone").inc()
        logger.debug("the object went away during the pass: %s", err)
        return
    if outcome is None or live is None:
        return
    _report(_body(live), outcome)
    logger.debug("reconciled: applied=%s pruned=%s", outcome.report.applied, outcome.report.pruned)


def _reconcile_locked(
    body: Mapping[str, Any], memo: kopf.Memo, view: IndexedView
) -> tuple[Outcome | None, dict[str, Any] | None]:
    started = time.monotonic()
    with _locked(body["metadata"]["uid"] or body["metadata"]["name"]):
        live = _read(memo.kube, body)
        if live is None:
            return None, None
        try:
            outcome = reconcile_once(memo.kube, _catalog(memo), live, OPTIONS, HUB, view)
        except InvalidSpecError as err:
            RECONCILES.labels("invalid").inc()
            if _write_status(memo.kube, live, _invalid_spec_status(live, err)):
                kopf.warn(_body(live), reason="InvalidSpec", message=str(err))
            raise kopf.PermanentError(str(err)) from err
        except TransientError as err:
            RECONCILES.labels("retry").inc()
            raise kopf.TemporaryError(str(err), delay=err.delay) from err
        finally:
            RECONCILE_SECONDS.observe(time.monotonic() - started)
        RECONCILES.labels("ok").inc()
        _write_status(memo.kube, live, outcome.status)
    return outcome, live


def controller_of(child: Mapping[str, Any]) -> dict[str, Any] | None:
    """The LLMDeployment a child belongs to, as a minimal body (None: not ours).

    Workload children carry a controller owner reference; engine pods belong to a
    ReplicaSet or StatefulSet, so for them the LLMDeployment label names the owner.
    """
    meta = child.get("metadata") or {}
    namespace = meta.get("namespace")
    for ref in meta.get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == KIND
            and ref.get("apiVersion") == API_VERSION
        ):
            return {"metadata": {"namespace": namespace, "name": ref["name"], "uid": ref["uid"]}}
    name = (meta.get("labels") or {}).get(LABEL_LLMD)
    if name and child.get("kind") == "Pod":
        return {"metadata": {"namespace": namespace, "name": name, "uid": None}}
    return None


def _child_changed(
    type_: str | None, body: kopf.Body, memo: kopf.Memo, logger: Any, view: IndexedView
) -> None:
    """A child changed (an edit, a status update, a deletion): reconcile its owner now."""
    if type_ is None:
        return  # the listing at start-up; the resume handlers reconcile every owner
    owner = controller_of(body)
    if owner is None:
        return
    try:
        _reconcile(owner, memo, logger, view)
    except (kopf.PermanentError, kopf.TemporaryError) as err:
        # Reported on the owner (status, events); its own handlers and timer retry.
        logger.debug("owner reconcile after a child event: %s", err)


def _pod_troubled(body: kopf.Body, **_: Any) -> bool:
    """Whether the scheduler refused this pod or one of its containers stopped or cannot
    start (`kube.pod_problems_of`)."""
    problems = pod_problems_of([body])
    return problems.unschedulable is not None or problems.failing is not None


def _autoscale(body: kopf.Body, memo: kopf.Memo, logger: Any, view: IndexedView) -> None:
    """One autoscaler tick; an object that went away meanwhile ends it quietly."""
    try:
        _autoscale_locked(body, memo, logger, view)
    except GoneError as err:
        logger.debug("the object went away during the autoscaler tick: %s", err)


def _autoscale_locked(body: kopf.Body, memo: kopf.Memo, logger: Any, view: IndexedView) -> None:
    """One autoscaler tick under the object's lock; a new replica count is applied at once."""
    uid = body["metadata"]["uid"]
    outcome: Outcome | None = None
    with _locked(uid):
        live = _read(memo.kube, body)
        if live is None:
            return
        try:
            llmd = parse(live)
        except InvalidSpecError:
            return  # the reconcile reports it
        if not loop.active(llmd):
            return
        now = time.time()
        tick = loop.tick(
            memo.prometheus,
            llmd,
            now=now,
            timeout_s=SETTINGS.query_timeout_s,
            last_persisted=_persisted.get(uid),
            observer=memo.observer,
            tolerance=SETTINGS.prediction_tolerance,
            remembered=_scaler_states.get(uid),
        )
        _scaler_states[uid] = tick.decision.state.to_json()
        new_status = tick.status.model_dump(by_alias=True, exclude_none=True, mode="json")
        if tick.scaled:
            try:
                outcome = reconcile_once(
                    memo.kube, _catalog(memo), {**live, "status": new_status}, OPTIONS, HUB, view
                )
            except TransientError as err:
                raise kopf.TemporaryError(str(err), delay=err.delay) from err
            new_status = status_dict(outcome.desired)
        _write_status(memo.kube, live, new_status)
        if tick.persist_state is not None:
            memo.kube.annotate(live, {loop.STATE_ANNOTATION: tick.persist_state})
            API_WRITES.labels("annotate").inc()
            _persisted[uid] = now
    meta = body["metadata"]
    decision = tick.decision
    AUTOSCALER_TICKS.labels(decision.reason).inc()
    OBSERVED_TOKENS.labels(meta.get("namespace", ""), meta["name"]).set(
        tick.status.observed_tokens_per_second or 0
    )
    if tick.scaled:
        kopf.info(
            body, reason="Scaled", message=f"{decision.replicas} replicas: {decision.message}"
        )
    _report_prediction_errors(meta.get("namespace", ""), meta["name"], tick)
    if tick.diverged is not None:
        kopf.warn(body, reason="PredictionDiverged", message=tick.diverged)
    if tick.budget_newly_limited:
        kopf.warn(body, reason="BudgetLimited", message=decision.message)
    if tick.metrics_flipped:
        if decision.metrics_available:
            logger.info("engine metrics are back: %s", decision.message)
            kopf.info(body, reason="MetricsAvailable", message=decision.message)
        else:
            logger.warning("engine metrics unavailable: %s", decision.message)
            kopf.warn(body, reason="MetricsUnavailable", message=decision.message)
    if outcome is not None:
        _report(body, outcome)
    logger.debug("autoscaler: %s %s", decision.reason, decision.message)


def _report_prediction_errors(namespace: str, name: str, tick: loop.Tick) -> None:
    """One gauge per metric compared; a metric not measured on this tick has no series
    (a stale error would look current)."""
    found = fidelity.errors(tick.status.performance)
    for metric in ("ttft", "tpot", "tokens_per_second"):
        if metric in found:
            PREDICTION_ERROR.labels(namespace, name, metric).set(found[metric])
        else:
            with contextlib.suppress(KeyError):
                PREDICTION_ERROR.remove(namespace, name, metric)


# --- watch-fed indexes: what a reconcile pass reads, without a LIST -----------------------
# Kopf keeps each index up to date from its watch and starts no handler before every
# index has its initial listing, so a pass reads children, troubled pods and nodes from
# memory; values are trimmed (no managedFields, no last-applied copy).
CHILD_INDEXES = (
    "children_services",
    "children_claims",
    "children_jobs",
    "children_deployments",
    "children_leaderworkersets",
    "children_pdbs",
    "children_podmonitors",
)
OWNED = {LABEL_LLMD: kopf.PRESENT}


@kopf.index("", "v1", "services", id="children_services", labels=OWNED)
@kopf.index("", "v1", "persistentvolumeclaims", id="children_claims", labels=OWNED)
@kopf.index("batch", "v1", "jobs", id="children_jobs", labels=OWNED)
@kopf.index("apps", "v1", "deployments", id="children_deployments", labels=OWNED)
@kopf.index(
    "leaderworkerset.x-k8s.io", "v1", "leaderworkersets", id="children_leaderworkersets",
    labels=OWNED,
)  # fmt: skip
@kopf.index("policy", "v1", "poddisruptionbudgets", id="children_pdbs", labels=OWNED)
@kopf.index("monitoring.coreos.com", "v1", "podmonitors", id="children_podmonitors", labels=OWNED)
def index_child(body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any) -> Any:
    """A child, trimmed, under (namespace, its LLMDeployment)."""
    return {(namespace, labels[LABEL_LLMD]): trim(body)}


@kopf.index("", "v1", "pods", id="troubled_pods", labels=OWNED, when=_pod_troubled)
def index_troubled_pod(body: kopf.Body, namespace: str | None, **_: Any) -> Any:
    """What keeps an engine pod from serving, under (namespace, LLMDeployment); a pod
    leaves the index when it no longer matches (scheduled, or its containers ready)."""
    return {(namespace, body["metadata"]["labels"][LABEL_LLMD]): pod_problems_of([body])}


@kopf.index("", "v1", "nodes", id="nodes")
def index_node(body: kopf.Body, **_: Any) -> Any:
    """Every node's GPU product, GPU count and schedulability."""
    return {None: node_capacity(body)}


def _values(store: Any) -> list[Any]:
    """A copy of an index store's values, read from a handler thread while Kopf's event loop
    may update it (a concurrent change is retried)."""
    for _attempt in range(5):
        try:
            return list(store)
        except RuntimeError:  # changed size during iteration
            continue
    return list(store)


class IndexedView:
    """`kube.ClusterView` served from the Kopf indexes a handler receives."""

    def __init__(self, kwargs: Mapping[str, Any]) -> None:
        self.indexes = kwargs

    def children(self, namespace: str, owner: str) -> list[dict[str, Any]]:
        """Every child kind of the owner, from memory."""
        out: list[dict[str, Any]] = []
        for index_id in CHILD_INDEXES:
            index = self.indexes.get(index_id)
            if index is not None and (namespace, owner) in index:
                out += _values(index[(namespace, owner)])
        return out

    def pod_problems(self, namespace: str, owner: str) -> PodProblems:
        """The first refused pod and the first failing container, from memory."""
        index = self.indexes.get("troubled_pods")
        if index is None or (namespace, owner) not in index:
            return PodProblems()
        found: list[PodProblems] = _values(index[(namespace, owner)])
        return PodProblems(
            unschedulable=next((p.unschedulable for p in found if p.unschedulable), None),
            failing=next((p.failing for p in found if p.failing), None),
        )

    def node_inventory(self) -> NodeInventory:
        """The nodes, from memory."""
        index = self.indexes.get("nodes")
        nodes = _values(index[None]) if index is not None and None in index else []
        return inventory_of(nodes)


# Children the operator owns: a change (a manual edit, the controller updating status, a
# deletion) reconciles the owner at once, so drift is reverted and readiness tracked
# without polling; the `drift` timer is only a safety net.
@kopf.on.event(
    "apps", "v1", "deployments", id="child-deployments", labels={LABEL_LLMD: kopf.PRESENT}
)
@kopf.on.event("", "v1", "services", id="child-services", labels={LABEL_LLMD: kopf.PRESENT})
@kopf.on.event("batch", "v1", "jobs", id="child-jobs", labels={LABEL_LLMD: kopf.PRESENT})
@kopf.on.event(
    "policy", "v1", "poddisruptionbudgets", id="child-pdbs", labels={LABEL_LLMD: kopf.PRESENT}
)
@kopf.on.event(
    "leaderworkerset.x-k8s.io",
    "v1",
    "leaderworkersets",
    id="child-leaderworkersets",
    labels={LABEL_LLMD: kopf.PRESENT},
)
@kopf.on.event(
    "", "v1", "pods", id="troubled-pods", labels={LABEL_LLMD: kopf.PRESENT}, when=_pod_troubled
)
def child_changed(
    type: str | None, body: kopf.Body, memo: kopf.Memo, logger: Any, **kwargs: Any
) -> None:
    """A child of an LLMDeployment changed: reconcile the LLMDeployment."""
    _child_changed(type, body, memo, logger, IndexedView(kwargs))


@kopf.on.event(GROUP, VERSION, PLURAL, id="forget")
def forget(type: str | None, body: kopf.Body, **_: Any) -> None:
    """An LLMDeployment is gone: drop its metric series and what this process kept for it
    (a platform that churns through thousands of objects would otherwise keep a series
    and a lock per object it ever saw)."""
    if type == "DELETED":
        _forget(body["metadata"])


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile", timeout=600, retries=None, backoff=5)
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile", timeout=600, retries=None, backoff=5)
@kopf.on.update(
    GROUP, VERSION, PLURAL, id="reconcile", field="spec", timeout=600, retries=None, backoff=5
)
def reconcile(body: kopf.Body, memo: kopf.Memo, logger: Any, **kwargs: Any) -> None:
    """Create, update and resume: one idempotent reconcile."""
    _reconcile(body, memo, logger, IndexedView(kwargs))


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    id="drift",
    interval=SETTINGS.reconcile_interval_s,
    initial_delay=SETTINGS.reconcile_interval_s,
    sharp=False,
)
def drift(body: kopf.Body, memo: kopf.Memo, logger: Any, **kwargs: Any) -> None:
    """The safety net: a full pass every LLM_OPERATOR_RECONCILE_INTERVAL (child changes are
    handled as they happen by `child_changed`)."""
    try:
        _reconcile(body, memo, logger, IndexedView(kwargs))
    except kopf.PermanentError:
        return  # already reported in status; nothing to retry until the spec changes


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    id="autoscale",
    interval=SETTINGS.autoscale_interval_s,
    initial_delay=SETTINGS.autoscale_interval_s,
    sharp=False,
    timeout=max(30.0, 6 * SETTINGS.query_timeout_s),
)
def autoscale(body: kopf.Body, memo: kopf.Memo, logger: Any, **kwargs: Any) -> None:
    """Replicas from observed tokens/s (only with LLM_OPERATOR_PROMETHEUS_URL set).

    Also the catalog files' heartbeat: this timer runs every few seconds whatever happens,
    so a changed file is found (and a bad one reported) within
    max(LLM_OPERATOR_CATALOG_CHECK_INTERVAL, LLM_OPERATOR_AUTOSCALE_INTERVAL) while any
    LLMDeployment exists, even when no reconcile pass runs (with none, nothing uses it).
    """
    refresh_catalog(memo)
    if memo.prometheus is None:
        return
    self_calibrate(memo)
    _autoscale(body, memo, logger, IndexedView(kwargs))
