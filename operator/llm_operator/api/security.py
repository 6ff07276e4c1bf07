"""What `spec.overrides.podTemplatePatch` may not do, written once for CEL and for Python.

Creating an LLMDeployment must not be more powerful than creating a Deployment: the
operator's ServiceAccount can create pods' controllers cluster-wide, so a patch must not
reach the host (hostNetwork/PID/IPC, hostPath volumes, host ports), raise privileges
(privileged containers, added capabilities, privilege escalation) or borrow another
identity (serviceAccountName, a mounted API token). Each `Guard` is a CEL rule on the CRD,
so the apiserver refuses such an object, and the same check in Python, which `llmctl` and
the renderer run (the renderer again, so an object admitted before the rule existed is
still refused). A cluster that wants these opts in at install time (chart value
`security.allowPrivilegedOverrides`, operator setting
LLM_OPERATOR_ALLOW_PRIVILEGED_OVERRIDES); docs/security.md. Pure; called by
`api.v1alpha1` and `render`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
OPT_OUT_SETTING = "LLM_OPERATOR_ALLOW_PRIVILEGED_OVERRIDES"


@dataclass(frozen=True)
class Guard:
    """One thing a pod template patch may not do.

    Attributes:
        cel: the CEL rule, `P` standing for the patch's pod spec
            (`self.podTemplatePatch.spec`).
        message: what the user reads; names the field and the fix.
        violates: the same rule in Python, given the patch's pod spec.
    """

    cel: str
    message: str
    violates: Callable[[Mapping[str, Any]], bool]


def _truthy(value: Any) -> bool:
    return value is True


def _containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for key in CONTAINER_LISTS:
        items = spec.get(key)
        if isinstance(items, list):
            out += [c for c in items if isinstance(c, Mapping)]
    return out


def _security(container: Mapping[str, Any]) -> Mapping[str, Any]:
    sc = container.get("securityContext")
    return sc if isinstance(sc, Mapping) else {}


def _adds_capabilities(container: Mapping[str, Any]) -> bool:
    caps = _security(container).get("capabilities")
    return isinstance(caps, Mapping) and bool(caps.get("add"))


def _host_port(container: Mapping[str, Any]) -> bool:
    ports = container.get("ports")
    return isinstance(ports, list) and any(
        isinstance(p, Mapping) and p.get("hostPort") not in (None, 0) for p in ports
    )


def _all_containers(cel_item: str) -> str:
    """CEL: every container of every list satisfies `cel_item` (about `c`)."""
    return " && ".join(f"(!has(P.{key}) || P.{key}.all(c, {cel_item}))" for key in CONTAINER_LISTS)


GUARDS: tuple[Guard, ...] = (
    Guard(
        cel="!(has(P.hostNetwork) && P.hostNetwork == true) && "
        "!(has(P.hostPID) && P.hostPID == true) && !(has(P.hostIPC) && P.hostIPC == true)",
        message="overrides.podTemplatePatch may not set hostNetwork, hostPID or hostIPC "
        "(an operator-level opt-in allows it: security.allowPrivilegedOverrides)",
        violates=lambda s: any(_truthy(s.get(k)) for k in ("hostNetwork", "hostPID", "hostIPC")),
    ),
    Guard(
        cel="!has(P.serviceAccountName) && !has(P.serviceAccount) && "
        "!(has(P.automountServiceAccountToken) && P.automountServiceAccountToken == true)",
        message="overrides.podTemplatePatch may not set serviceAccountName, serviceAccount or "
        "automountServiceAccountToken: engine pods run without Kubernetes API credentials",
        violates=lambda s: (
            "serviceAccountName" in s
            or "serviceAccount" in s
            or _truthy(s.get("automountServiceAccountToken"))
        ),
    ),
    Guard(
        cel="!has(P.volumes) || P.volumes.all(v, !has(v.hostPath))",
        message="overrides.podTemplatePatch may not add hostPath volumes; use a "
        "PersistentVolumeClaim (model.source: pvc)",
        violates=lambda s: (
            isinstance(s.get("volumes"), list)
            and any(isinstance(v, Mapping) and "hostPath" in v for v in s["volumes"])
        ),
    ),
    Guard(
        cel=_all_containers(
            "!has(c.securityContext) || ("
            "!(has(c.securityContext.privileged) && c.securityContext.privileged == true) && "
            "!(has(c.securityContext.allowPrivilegeEscalation) && "
            "c.securityContext.allowPrivilegeEscalation == true) && "
            "!(has(c.securityContext.capabilities) && has(c.securityContext.capabilities.add) "
            "&& size(c.securityContext.capabilities.add) > 0))"
        ),
        message="overrides.podTemplatePatch may not make a container privileged, allow "
        "privilege escalation or add capabilities",
        violates=lambda s: any(
            _truthy(_security(c).get("privileged"))
            or _truthy(_security(c).get("allowPrivilegeEscalation"))
            or _adds_capabilities(c)
            for c in _containers(s)
        ),
    ),
    Guard(
        cel=_all_containers("!has(c.ports) || c.ports.all(p, !has(p.hostPort) || p.hostPort == 0)"),
        message="overrides.podTemplatePatch may not open host ports",
        violates=lambda s: any(_host_port(c) for c in _containers(s)),
    ),
)


def _object(properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object that keeps unknown fields, with the properties the guards read typed."""
    out: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if properties:
        out["properties"] = properties
    return out


def _list(item: dict[str, Any], most: int) -> dict[str, Any]:
    # NOTE: maxItems bounds the CEL cost estimate the apiserver computes for `.all()`.
    return {"type": "array", "maxItems": most, "items": item}


_CONTAINER = _object(
    {
        "securityContext": _object(
            {
                "privileged": {"type": "boolean"},
                "allowPrivilegeEscalation": {"type": "boolean"},
                "capabilities": _object({"add": _list({"type": "string"}, 64)}),
            }
        ),
        "ports": _list(_object({"hostPort": {"type": "integer"}}), 64),
    }
)

# The schema of podTemplatePatch: any pod template fields are kept, and the ones the guards
# read are typed so that the CRD's CEL rules can see them (CEL cannot look into an object
# that only preserves unknown fields).
PATCH_SCHEMA: dict[str, Any] = _object(
    {
        "metadata": _object(),
        "spec": _object(
            {
                "hostNetwork": {"type": "boolean"},
                "hostPID": {"type": "boolean"},
                "hostIPC": {"type": "boolean"},
                "serviceAccountName": {"type": "string"},
                "serviceAccount": {"type": "string"},
                "automountServiceAccountToken": {"type": "boolean"},
                "volumes": _list(_object({"hostPath": _object()}), 64),
                **{key: _list(_CONTAINER, 32) for key in CONTAINER_LISTS},
            }
        ),
    }
)


def _describe(schema: dict[str, Any], name: str) -> None:
    """Give every typed property a description (they reach `kubectl explain`)."""
    schema["description"] = (
        f"{name} as in the core/v1 pod template; typed here so the CRD's CEL guards can read "
        "it (docs/security.md)."
    )
    for key, child in (schema.get("properties") or {}).items():
        _describe(child, key)
    if "items" in schema:
        _describe(schema["items"], name)


_describe(PATCH_SCHEMA, "podTemplatePatch")
PATCH_SCHEMA["description"] = (
    "podTemplatePatch is a strategic-merge patch applied to the pod template. It may not "
    "reach the host, raise privileges or change the pod's identity (docs/security.md)."
)


def cel_rule(guard: Guard) -> str:
    """The guard as a CEL rule on OverridesSpec (`self` = spec.overrides)."""
    body = guard.cel.replace("P.", "self.podTemplatePatch.spec.").replace(
        "!has(P)", "!has(self.podTemplatePatch.spec)"
    )
    return f"!has(self.podTemplatePatch) || !has(self.podTemplatePatch.spec) || ({body})"


def violations(patch: Mapping[str, Any] | None) -> list[str]:
    """The messages of every guard a pod template patch breaks (empty: allowed)."""
    if not patch or not isinstance(patch.get("spec"), Mapping):
        return []
    spec = patch["spec"]
    return [g.message for g in GUARDS if g.violates(spec)]
