"""One reconcile pass for one LLMDeployment: read, decide (pure), apply, report.

Glue between `kube` (reads and writes), `hub` (a model the catalog does not know is read
from its own config.json on the Hugging Face Hub) and `desired` (the decision). Called by
the handlers for create/update/resume and by the periodic drift timer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from llm_operator import hub
from llm_operator.api.v1alpha1 import Architecture, LLMDeployment
from llm_operator.catalog import Catalog, UnknownNameError
from llm_operator.catalog.resolve import (
    ConfigError,
    DraftHead,
    ResolvedModel,
    draft_head_from_config,
)
from llm_operator.errors import InvalidSpecError, TransientError
from llm_operator.kube import ClusterView, Kube, ListingView, NodeInventory
from llm_operator.planner.search import PlanInputError, resolve_architecture
from llm_operator.reconcile import apply
from llm_operator.reconcile.desired import LABEL_LLMD, Desired, Options, desired_state


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


Resolver = Callable[..., ResolvedModel]
"""What `resolve_model` reads a model with: `hub.resolve`'s signature (tests pass a fake)."""

HUB_RETRY_DELAY_S = 30.0  # a Hub that did not answer is asked again after this long


def resolve_model(
    kube: Kube,
    llmd: LLMDeployment,
    catalog: Catalog,
    hub_options: hub.HubOptions | None = None,
    resolver: Resolver = hub.resolve,
) -> Architecture | None:
    """The shape of a model the catalog does not know, from its config.json on the Hub.

    None when nothing needs reading: spec.model.architecture describes the model, or the
    catalog knows its name (a catalog hit needs no network). The token of
    spec.model.hfTokenSecret is read only here, only when the Hub has to be asked, and goes
    nowhere but the request.

    Raises:
        InvalidSpecError: the model does not exist on the Hub, is gated without a usable
            token, has a config.json the planner cannot size, or is a GGUF file the
            operator cannot read; the message names what to set.
        TransientError: the Hub did not answer.
    """
    model = llmd.spec.model
    if model.architecture is not None:
        return None
    try:
        catalog.model(model.name)
        return None
    except UnknownNameError:
        pass
    uri = (model.uri or "").split("?")[0].lower()
    if model.source != "hf" and uri.endswith(".gguf"):
        # NOTE: reading the header would need the file: the operator mounts no model volume
        # and downloads no weights (a resolver that could would run a Job on the PVC, or
        # read the first megabytes of the URL with an HTTP range request).
        raise InvalidSpecError(
            "spec.model.architecture",
            f"{model.uri} is a GGUF file on {model.source}, whose header the operator cannot "
            "read: set spec.model.architecture and spec.quantization to the file's type "
            "(`llmctl resolve FILE.gguf` prints both from a local copy)",
        )
    token = _token(kube, llmd)
    where = (
        ""
        if model.source == "hf"
        else f" (the weights are on {model.source}; their shape is read from the Hub by "
        "spec.model.name)"
    )
    with _hub_failures(
        llmd,
        token,
        "spec.model.name",
        f"{where}: name a model on the Hub or in the catalog, or set spec.model.architecture",
        ", or set spec.model.architecture",
        "spec.model.architecture",
    ):
        resolved = resolver(model.name, revision=model.revision, token=token, options=hub_options)
    return resolved.architecture


def resolve_draft(
    kube: Kube,
    llmd: LLMDeployment,
    catalog: Catalog,
    resolved: Architecture | None = None,
    hub_options: hub.HubOptions | None = None,
    fetch: Callable[..., dict[str, Any]] = hub.fetch_config,
) -> DraftHead | None:
    """The speculative draft head of spec.features.speculativeDecoding.model, read from its
    config.json on the Hub (with the model's token) and checked against the model.

    None when the method takes no draft model. `resolved` is the model's shape as
    `resolve_model` read it (None: the spec's or the catalog's).

    Raises:
        InvalidSpecError: the head does not exist, is gated without a usable token, or was
            trained for another model (hidden size, vocabulary); the message says what to
            name instead.
        TransientError: the Hub did not answer.
    """
    spec = llmd.spec.features.speculative_decoding
    if spec is None or spec.model is None:
        return None
    try:
        target = resolve_architecture(llmd.spec, catalog, resolved)
    except PlanInputError:
        return None  # the plan names the unknown model
    token = _token(kube, llmd)
    field = "spec.features.speculativeDecoding.model"
    fix = f": name a draft head ({spec.method}) on the Hub trained for {llmd.spec.model.name}"
    with _hub_failures(llmd, token, field, fix, "", field):
        config = fetch(spec.model, token=token, options=hub_options)
        return draft_head_from_config(
            config, spec.method, target, llmd.spec.model.name, f"config.json of {spec.model}"
        )


def _token(kube: Kube, llmd: LLMDeployment) -> str | bool:
    """The token of spec.model.hfTokenSecret (False: none, or not found). Read only when
    the Hub has to be asked, and it goes nowhere but the request."""
    secret = llmd.spec.model.hf_token_secret
    if secret is None:
        return False
    namespace = str(llmd.metadata.get("namespace") or "")
    return kube.secret_value(namespace, secret.name, secret.key) or False


@contextlib.contextmanager
def _hub_failures(
    llmd: LLMDeployment,
    token: str | bool,
    field: str,
    not_found: str,
    gated_or: str,
    config_field: str,
) -> Iterator[None]:
    """Turn what the Hub (and the file it gave) said into a field-named error.

    A missing repository names `field`, followed by `not_found`; a gated one names the
    token Secret, followed by `gated_or`; a config.json that cannot be used names
    `config_field`.
    """
    secret = llmd.spec.model.hf_token_secret
    namespace = str(llmd.metadata.get("namespace") or "")
    try:
        yield
    except hub.ModelNotFound as err:
        raise InvalidSpecError(field, f"{err}{not_found}") from err
    except hub.ModelGated as err:
        if secret is None:
            hint = "set spec.model.hfTokenSecret to a Secret holding a token with access"
        elif token is False:
            hint = (
                f"Secret {namespace}/{secret.name} with key {secret.key!r} was not found; "
                "create it with a token that has access"
            )
        else:
            hint = (
                f"the token in Secret {namespace}/{secret.name} (key {secret.key!r}) has no "
                "access to it"
            )
        raise InvalidSpecError("spec.model.hfTokenSecret", f"{err}; {hint}{gated_or}") from err
    except hub.HubUnavailable as err:
        raise TransientError(
            f"{field}: reading config.json: {err}", delay=HUB_RETRY_DELAY_S
        ) from err
    except ConfigError as err:
        raise InvalidSpecError(config_field, str(err)) from err


def reconcile_once(
    kube: Kube,
    catalog: Catalog,
    body: dict[str, Any],
    options: Options | None = None,
    hub_options: hub.HubOptions | None = None,
    view: ClusterView | None = None,
) -> Outcome:
    """Plan, render, apply and prune one LLMDeployment; return the status to write.

    `view` serves the children, troubled pods and nodes (the operator passes its watch-fed
    indexes, so a pass at rest reads nothing from the API); without it they are listed.

    Raises:
        InvalidSpecError: the spec cannot be served as written.
        TransientError: the API (or the Hugging Face Hub) failed in a way worth retrying.
    """
    llmd = parse(body)
    resolved = resolve_model(kube, llmd, catalog, hub_options)
    draft = resolve_draft(kube, llmd, catalog, resolved, hub_options)
    view = view or ListingView(kube, LABEL_LLMD)
    inventory = view.node_inventory()
    live = apply.live_children(view, body)
    children = apply.child_state(kube, view, live, body)
    desired = desired_state(
        llmd,
        catalog,
        available_gpus(inventory, catalog),
        children,
        options=options,
        resolved=resolved,
        draft=draft,
    )
    report = apply.execute(kube, body, desired.objects, desired.prune, live, desired.keep)
    return Outcome(desired=desired, report=report, status=status_dict(desired))
