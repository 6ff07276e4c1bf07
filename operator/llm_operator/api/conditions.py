"""Status conditions with Kubernetes API-convention semantics.

`set_condition` replaces or adds one condition; `lastTransitionTime` changes only when the
status flips (cert-manager's `SetCertificateCondition`), so an unchanged reconcile leaves
the status byte-identical and causes no write. Called by the reconciler and autoscaler.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from llm_operator.api.v1alpha1 import Condition

READY = "Ready"
PLANNED = "Planned"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
BUDGET_LIMITED = "BudgetLimited"
METRICS_AVAILABLE = "MetricsAvailable"

Status = Literal["True", "False", "Unknown"]


def now_rfc3339() -> str:
    """The current time as RFC 3339 with second precision, as metav1.Time serialises."""
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: Status,
    reason: str,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> list[Condition]:
    """Return `conditions` with one condition set.

    Args:
        conditions: the current conditions.
        type_: condition type, e.g. Ready.
        status: "True", "False" or "Unknown".
        reason: CamelCase reason.
        message: human-readable explanation.
        generation: the spec generation this reflects.
        now: the transition time to use if the status flips (default: now).

    Returns:
        A new list, order preserved, the condition replaced in place or appended.
    """
    old = next((c for c in conditions if c.type == type_), None)
    changed = old is None or old.status != status
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=(now or now_rfc3339())
        if changed or old is None
        else old.last_transition_time,
        observed_generation=generation,
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def get_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of that type, if present."""
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: Sequence[Condition], type_: str) -> bool:
    """Whether condition `type_` is present with status True."""
    found = get_condition(conditions, type_)
    return found is not None and found.status == "True"
