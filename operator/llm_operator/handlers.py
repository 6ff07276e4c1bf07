"""Kopf handlers: the ONLY module with @kopf decorators. Kwargs in, one call out.

One idempotent reconcile is registered for create, update and resume (explicit id so a
rename never orphans Kopf's progress), plus a timer that re-runs it to revert drift. Domain
errors are mapped here: InvalidSpecError -> kopf.PermanentError (and a condition naming
the field), TransientError -> kopf.TemporaryError with its delay. Kopf's bookkeeping lives
in annotations with the project's prefix, never in `status`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import kopf
from prometheus_client import start_http_server

from llm_operator.api import conditions as cond
from llm_operator.api.v1alpha1 import GROUP, PLURAL, VERSION, Condition
from llm_operator.catalog import load_catalog
from llm_operator.errors import InvalidSpecError, TransientError
from llm_operator.kube import Kube, load_config
from llm_operator.metrics import API_WRITES, PLANNED_COST, RECONCILE_SECONDS, RECONCILES, REPLICAS
from llm_operator.reconcile.run import reconcile_once
from llm_operator.settings import ANNOTATION_PREFIX, Settings

SETTINGS = Settings.from_env()
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(uid: str) -> threading.Lock:
    """One lock per object: the timer and change handlers never reconcile it at once."""
    with _locks_guard:
        return _locks.setdefault(uid, threading.Lock())


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Kopf settings, clients and the metrics server."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/kopf-finalizer"
    settings.posting.level = logging.INFO
    settings.networking.request_timeout = 30
    settings.watching.server_timeout = 300
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
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
    memo.kube = Kube()
    memo.catalog = load_catalog(SETTINGS.model_catalog, SETTINGS.gpu_catalog)
    start_http_server(SETTINGS.metrics_port)


def _patch_status(body: kopf.Body, patch: kopf.Patch, new: dict[str, Any]) -> bool:
    """Write status only when it changed; removed keys are nulled (merge patch)."""
    old = dict(body.get("status") or {})
    if old == new:
        return False
    for k in old.keys() - new.keys():
        patch.status[k] = None
    for k, v in new.items():
        if old.get(k) != v:
            patch.status[k] = v
    return True


def _invalid_spec_status(body: kopf.Body, err: InvalidSpecError) -> dict[str, Any]:
    generation = body.get("metadata", {}).get("generation")
    current = [
        Condition.model_validate(c) for c in (body.get("status") or {}).get("conditions", [])
    ]
    conditions = current
    for type_ in (cond.READY, cond.PLANNED):
        conditions = cond.set_condition(
            conditions, type_, "False", "InvalidSpec", str(err), generation
        )
    return {
        **dict(body.get("status") or {}),
        "observedGeneration": generation,
        "conditions": [c.model_dump(by_alias=True, exclude_none=True) for c in conditions],
    }


def _reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any) -> None:
    meta = body["metadata"]
    started = time.monotonic()
    with _lock(meta["uid"]):
        try:
            outcome = reconcile_once(memo.kube, memo.catalog, dict(body), SETTINGS.monitoring)
        except InvalidSpecError as err:
            RECONCILES.labels("invalid").inc()
            if _patch_status(body, patch, _invalid_spec_status(body, err)):
                kopf.warn(body, reason="InvalidSpec", message=str(err))
            raise kopf.PermanentError(str(err)) from err
        except TransientError as err:
            RECONCILES.labels("retry").inc()
            raise kopf.TemporaryError(str(err), delay=err.delay) from err
        finally:
            RECONCILE_SECONDS.observe(time.monotonic() - started)
    RECONCILES.labels("ok").inc()
    for event in outcome.desired.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if outcome.report.applied:
        API_WRITES.labels("apply").inc(len(outcome.report.applied))
        kopf.info(body, reason="Applied", message=", ".join(outcome.report.applied))
    if outcome.report.pruned:
        API_WRITES.labels("delete").inc(len(outcome.report.pruned))
        kopf.info(body, reason="Pruned", message=", ".join(outcome.report.pruned))
    status = outcome.desired.status
    labels = (meta.get("namespace", ""), meta["name"])
    PLANNED_COST.labels(*labels).set(
        (status.plan.cost_per_hour if status.plan else 0) * (status.desired_replicas or 0)
    )
    REPLICAS.labels(*labels, "desired").set(status.desired_replicas or 0)
    REPLICAS.labels(*labels, "ready").set(status.ready_replicas or 0)
    if _patch_status(body, patch, outcome.status):
        API_WRITES.labels("status").inc()
    logger.debug("reconciled: applied=%s pruned=%s", outcome.report.applied, outcome.report.pruned)


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile", timeout=600, retries=None, backoff=5)
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile", timeout=600, retries=None, backoff=5)
@kopf.on.update(
    GROUP, VERSION, PLURAL, id="reconcile", field="spec", timeout=600, retries=None, backoff=5
)
def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Create, update and resume: one idempotent reconcile."""
    _reconcile(body, patch, memo, logger)


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    id="drift",
    interval=SETTINGS.reconcile_interval_s,
    initial_delay=SETTINGS.reconcile_interval_s,
    sharp=False,
)
def drift(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Periodically re-run the reconcile: reverts edits of owned fields, tracks readiness."""
    try:
        _reconcile(body, patch, memo, logger)
    except kopf.PermanentError:
        return  # already reported in status; nothing to retry until the spec changes
