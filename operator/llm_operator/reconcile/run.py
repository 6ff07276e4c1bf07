"""One reconcile pass for one LLMDeployment: read, decide (pure), apply, report.

Glue between `kube` (reads and writes) and `desired` (the decision). Called by the
handlers for create/update/resume and by the periodic drift timer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from llm_operator.api.v1alpha1 import LLMDeployment
from llm_operator.catalog import Catalog, UnknownNameError
from llm_operator.errors import InvalidSpecError
from llm_operator.kube import Kube, NodeInventory
from llm_operator.reconcile import apply
from llm_operator.reconcile.desired import Desired, Options, desired_state


@dataclass(frozen=True)
class Outcome:
    """What one pass decided and did."""

    desired: Desired
    report: apply.ApplyReport
    status: dict[str, Any]


def parse(body: dict[str, Any]) -> LLMDeployment:
    """Validate the custom object; an invalid one is a permanent, field-named error."""
    try:
        return LLMDeployment.model_validate(
            {
                k: body.get(k)
                for k in ("apiVersion", "kind", "metadata", "spec", "status")
                if body.get(k) is not None
            }
        )
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidSpecError(field, first["msg"]) from err


def available_gpus(inventory: NodeInventory, catalog: Catalog) -> dict[str, int]:
    """Catalog GPU types the cluster's nodes offer, with the most GPUs one node has.

    CPU classes map to 0 (they are not sized by GPUs) when CPU-only nodes exist.
    """
    found: dict[str, int] = {}
    for product, gpus in inventory.gpus_per_node.items():
        try:
            name = catalog.gpu(product).name
        except UnknownNameError:
            continue  # a GPU the catalog does not know cannot be planned for
        found[name] = max(found.get(name, 0), gpus)
    if inventory.cpu_nodes:
        found.update({g.name: 0 for g in catalog.gpus if g.is_cpu})
    return found


def status_dict(desired: Desired) -> dict[str, Any]:
    """The status as JSON, as the CRD stores it."""
    return desired.status.model_dump(by_alias=True, exclude_none=True, mode="json")


def reconcile_once(
    kube: Kube, catalog: Catalog, body: dict[str, Any], options: Options | None = None
) -> Outcome:
    """Plan, render, apply and prune one LLMDeployment; return the status to write.

    Raises:
        InvalidSpecError: the spec cannot be served as written.
        TransientError: the API failed in a way worth retrying.
    """
    llmd = parse(body)
    inventory = kube.node_inventory()
    live = apply.live_children(kube, body)
    children = apply.child_state(kube, live, body)
    desired = desired_state(
        llmd, catalog, available_gpus(inventory, catalog), children, options=options
    )
    report = apply.execute(kube, body, desired.objects, desired.prune, live, desired.keep)
    return Outcome(desired=desired, report=report, status=status_dict(desired))
