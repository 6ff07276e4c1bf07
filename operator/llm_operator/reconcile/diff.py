"""Which children need a write and which are stale (pure).

A child needs applying only when some field the operator renders differs from the live
object, so a steady state costs zero API writes. Called by `reconcile.apply`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Key = tuple[str, str, str]


def key(obj: dict[str, Any]) -> Key:
    """(apiVersion, kind, name): a child's identity within its namespace."""
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def _scalar_equal(want: Any, have: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return want is have
    if type(want) is not type(have) and isinstance(want, int | float | str):
        # The apiserver canonicalises quantities and int-or-strings ("1" vs 1).
        return str(want) == str(have)
    return bool(want == have)


def is_subset(want: Any, have: Any) -> bool:
    """Whether every field of `want` is present in `have` with the same value.

    Fields the apiserver defaults (present only in `have`) are ignored; lists must match
    element by element.
    """
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            k in have and is_subset(v, have[k]) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(is_subset(w, h) for w, h in zip(want, have, strict=True))
        )
    return _scalar_equal(want, have)


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """A controller owner reference to the LLMDeployment (garbage collection on delete)."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def with_owner(obj: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """A copy of `obj` owned by `owner`, in the owner's namespace."""
    meta = {
        **obj["metadata"],
        "namespace": owner["metadata"]["namespace"],
        "ownerReferences": [owner_reference(owner)],
    }
    return {**obj, "metadata": meta}


def to_apply(
    desired: Iterable[dict[str, Any]], live: dict[Key, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Desired children that are missing or differ from the live objects."""
    return [obj for obj in desired if not is_subset(obj, live.get(key(obj)))]


def to_prune(
    desired: Iterable[dict[str, Any]], live: dict[Key, dict[str, Any]], owner_uid: str
) -> list[dict[str, Any]]:
    """Live children controlled by the owner that are no longer rendered."""
    wanted = {key(obj) for obj in desired}
    return [
        obj
        for k, obj in live.items()
        if k not in wanted
        and any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or [])
    ]
