"""What the spec fuzzer (e2e/fuzz.py, bench/fuzz_specs.py) found, pinned without a cluster.

Each test is one finding: an input the apiserver admits that the operator mishandled (a
refusal retried forever, a crash, an object that could never be deleted, a refusal that
named no field) and the behaviour now.
"""

from __future__ import annotations

import json
from typing import Any

import kopf
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import api_exception
from pydantic import ValidationError

from llm_operator import engines, handlers, hub
from llm_operator.api.v1alpha1 import LLMDeployment
from llm_operator.catalog import Catalog
from llm_operator.errors import InvalidSpecError, TransientError
from llm_operator.handlers import ESSENCE_LIMIT, BoundedDiffBaseStorage
from llm_operator.kube import Kube, apply_body
from llm_operator.planner.search import PlanResult, plan
from llm_operator.reconcile import apply
from llm_operator.reconcile.desired import _rejections
from tests.conftest import make_spec

# --- the apiserver refuses a rendered child for good -----------------------------------------


def _error(status: int, message: str) -> Exception:
    """The dynamic client's exception for an apiserver answer, headers included."""
    raw = ApiException(status=status, reason="Refused")
    raw.body = json.dumps({"kind": "Status", "message": message, "code": status})
    raw.headers = {"Content-Type": "application/json", "Audit-Id": "abc"}
    try:
        raise raw
    except ApiException as err:
        return api_exception(err)  # type: ignore[no-any-return,no-untyped-call]


class _Resource:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def server_side_apply(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return type("Result", (), {"to_dict": lambda _self: json.loads(kwargs["body"])})()


def _kube(resource: _Resource) -> Kube:
    kube = Kube(client.ApiClient())
    kube._resource = lambda _api_version, _kind: resource  # type: ignore[method-assign,assignment]
    return kube


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "m", "namespace": "team"},
    "spec": {},
}


@pytest.mark.parametrize(
    ("status", "message", "field"),
    [
        # server-side apply: the object does not fit the kind's schema (was: retried forever)
        (
            500,
            "failed to create typed patch object (team/m; apps/v1, Kind=Deployment): "
            ".spec.template.spec.deep: field not declared in schema",
            "spec.overrides",
        ),
        # undecodable (was: retried forever)
        (400, "error decoding YAML: error converting YAML to JSON", "spec.overrides"),
        # an admission webhook said no (was: retried forever)
        (403, 'admission webhook "vleaderworkerset.kb.io" denied the request: x', "spec.overrides"),
        # invalid: named by where the rendered field comes from (was: always spec.overrides)
        (
            422,
            'Deployment.apps "m" is invalid: spec.template.spec.tolerations[1].key: Invalid value',
            "spec.hardware.tolerations",
        ),
        (
            422,
            'Job.batch "m" is invalid: spec.template.spec.containers[0].env[0].valueFrom.'
            "secretKeyRef.name: Invalid value",
            "spec.model.hfTokenSecret",
        ),
    ],
)
def test_a_refused_child_is_an_invalid_spec_in_the_apiservers_words(
    status: int, message: str, field: str
) -> None:
    with pytest.raises(InvalidSpecError) as info:
        _kube(_Resource(_error(status, message))).apply(DEPLOYMENT)
    assert info.value.field == field
    text = str(info.value)
    assert message in text and "change the field" in text
    # was: the client's dump of HTTP headers and a Python traceback, in the status condition
    assert "Audit-Id" not in text and "traceback" not in text.lower()


@pytest.mark.parametrize(
    ("status", "message"),
    [(500, "etcdserver: request timed out"), (403, "forbidden: User cannot patch"), (429, "")],
)
def test_other_failures_stay_transient(status: int, message: str) -> None:
    with pytest.raises(TransientError) as info:
        _kube(_Resource(_error(status, message))).apply(DEPLOYMENT)
    assert "Audit-Id" not in str(info.value)


def test_characters_beyond_the_bmp_reach_the_apiserver_as_utf8() -> None:
    """An emoji in an env value made every apply a 400 ("found invalid Unicode character
    escape code": the client's surrogate-pair escapes are no YAML); the body is UTF-8 JSON
    now, escaping only what YAML cannot read raw."""
    value = "emoji 😀 rtl \u202e c1 \x85 del \x7f ls \u2028 bom \ufeff nul \x00 é 中"
    obj = {**DEPLOYMENT, "data": {"k": value}}
    body = apply_body(obj)
    assert json.loads(body) == obj
    text = body.decode()
    assert "😀" in text and "\\ud83d" not in text.lower()
    for raw in ("\x85", "\x7f", "\u2028", "\ufeff", "\x00"):
        assert raw not in text, repr(raw)
    assert yaml.safe_load(text) == obj  # the apiserver reads the body as YAML
    resource = _Resource(None)
    _kube(resource).apply(obj)
    assert resource.calls[0]["body"] == body


# --- LeaderWorkerSet pod templates are validated before anything is applied ------------------


class _RecordingKube:
    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.checked: list[str] = []
        self.applied: list[str] = []

    def check_pod_template(
        self, namespace: str, name: str, template: dict[str, Any], what: str
    ) -> None:
        self.checked.append(what)
        if self.refuse and self.refuse in json.dumps(template):
            raise InvalidSpecError("spec.hardware.tolerations", f"{what}: refused")

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(obj["kind"])
        return obj


def _lws(toleration_key: str) -> list[dict[str, Any]]:
    template = {"spec": {"tolerations": [{"key": toleration_key, "operator": "Exists"}]}}
    return [
        {
            "apiVersion": "leaderworkerset.x-k8s.io/v1",
            "kind": "LeaderWorkerSet",
            "metadata": {"name": "m-lws", "namespace": "team"},
            "spec": {
                "leaderWorkerTemplate": {"leaderTemplate": template, "workerTemplate": template}
            },
        },
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "m", "namespace": "team"}},
    ]


def test_leaderworkerset_templates_are_checked_before_anything_is_applied() -> None:
    owner = {
        "apiVersion": "x/v1",
        "kind": "LLMDeployment",
        "metadata": {"name": "m", "namespace": "team", "uid": "u"},
    }
    good = _RecordingKube(refuse="bad key!")
    apply.execute(good, owner, _lws("ok"), prune=False, live={})  # type: ignore[arg-type]
    assert good.checked == [
        "leaderTemplate of LeaderWorkerSet team/m-lws",
        "workerTemplate of LeaderWorkerSet team/m-lws",
    ]
    assert good.applied == ["LeaderWorkerSet", "Service"]
    bad = _RecordingKube(refuse="bad key!")
    with pytest.raises(InvalidSpecError):
        apply.execute(bad, owner, _lws("bad key!"), prune=False, live={})  # type: ignore[arg-type]
    assert bad.applied == []  # was: the LWS created, its pods refused later, silently


def test_a_pod_template_is_checked_as_a_dry_run_deployment() -> None:
    resource = _Resource(_error(422, "spec.template.spec.tolerations[0].key: Invalid value"))
    template = {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}}
    with pytest.raises(InvalidSpecError) as info:
        _kube(resource).check_pod_template("team", "m-lws", template, "leaderTemplate of x")
    assert info.value.field == "spec.hardware.tolerations"
    call = resource.calls[0]
    assert call["dry_run"] == "All"
    sent = json.loads(call["body"])
    assert sent["kind"] == "Deployment" and sent["spec"]["template"]["spec"] == template["spec"]
    selector = sent["spec"]["selector"]["matchLabels"]
    assert selector.items() <= sent["spec"]["template"]["metadata"]["labels"].items()


# --- a model name that is no path does not crash the pass -------------------------------------


@pytest.mark.parametrize("name", ["x" * 300, "~nobody-here/model", "a\x00b"])
def test_a_name_that_cannot_be_a_path_is_looked_up_as_a_hub_id(name: str) -> None:
    """ENAMETOOLONG and `~user` of no user escaped as OSError / RuntimeError: a traceback
    and a retry every few seconds, forever."""
    with pytest.raises(hub.ModelNotFound):
        hub.resolve(name)  # offline in tests: not found, whatever the name


# --- Kopf's bookkeeping stays within the annotation limit -------------------------------------


def _body(spec: dict[str, Any]) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "x/v1",
            "kind": "LLMDeployment",
            "metadata": {"name": "m", "labels": {"a": "b"}},
            "spec": spec,
        }
    )


def test_a_large_spec_is_remembered_by_digest() -> None:
    """Kopf copied the essence into an annotation (non-ASCII escaped: up to 6 bytes a
    character); over 256 KiB every Kopf patch was refused, the finalizer stayed, and the
    object and its namespace could never be deleted."""
    storage = BoundedDiffBaseStorage(prefix="serving.llm-operator.io")
    small = {"model": {"name": "m"}}
    assert storage.build(body=_body(small)) == kopf.AnnotationsDiffBaseStorage(
        prefix="serving.llm-operator.io"
    ).build(body=_body(small))
    huge = {"model": {"name": "é" * 100_000}}
    essence = storage.build(body=_body(huge))
    assert len(json.dumps(essence)) < 1024 < ESSENCE_LIMIT
    assert essence == storage.build(body=_body(json.loads(json.dumps(huge))))  # unchanged
    edited = storage.build(body=_body({"model": {"name": "é" * 100_001}}))
    assert edited["spec"] != essence["spec"] and edited["metadata"] == essence["metadata"]


# NOTE: configure() still writes Kopf's deprecated `settings.batching` alias.
@pytest.mark.filterwarnings("ignore:Batching settings:DeprecationWarning")
def test_a_deleted_object_waits_seconds_not_a_minute_for_its_timers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deleted while its drift or autoscale timer ran a pass, an LLMDeployment kept its
    finalizer for Kopf's default 60 s poll (the fuzzer's batch deletions took 62 s)."""
    monkeypatch.setattr(handlers, "load_config", lambda: None)
    monkeypatch.setattr(handlers, "start_http_server", lambda _port: None)
    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings, memo=kopf.Memo())
    assert settings.background.cancellation_polling == handlers.TIMER_EXIT_POLL_S <= 2
    assert isinstance(settings.persistence.diffbase_storage, BoundedDiffBaseStorage)


# --- every refusal names the spec field and what to do ----------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (
            {
                "model": {"name": "meta-llama/Llama-3.1-405B-Instruct"},
                "quantization": "fp16",
                "hardware": {"gpuTypes": ["A10G"]},
            },
            "spec.hardware.gpuTypes",
        ),
        ({"context": {"maxModelLen": 10_000_000}}, "spec.context.maxModelLen"),
        ({"budget": {"maxCostPerHour": 0.01}}, "spec.budget.maxCostPerHour"),
        (
            {"workload": {"inputTokens": 100_000}, "context": {"maxModelLen": 8192}},
            "spec.context.maxModelLen",
        ),
        ({"workload": {"slo": {"ttftMsP95": 0.001}}}, "spec.workload.slo"),
    ],
)
def test_no_feasible_plan_names_the_field_to_change(
    catalog: Catalog, overrides: dict[str, Any], field: str
) -> None:
    result = plan(make_spec(**overrides), catalog)
    assert result.chosen is None
    message = _rejections(result)
    assert field in message, message  # was: "no layout fits; closest: ..." and numbers only


def test_no_layout_at_all_names_the_gpu_types() -> None:
    assert _rejections(PlanResult(chosen=None)).startswith("spec.hardware.gpuTypes: ")


def test_an_engine_source_refusal_says_what_to_do() -> None:
    ask = engines.Ask(quantization="bf16", model_source="url")
    refusal = next(r for r in engines.get("vllm").refusals(ask) if r.field == "spec.model.source")
    assert "change spec.model.source or choose another engine" in refusal.message


# --- a name every child can carry -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("llama-3-1-8b", True),
        ("x" * 45, True),
        ("x" * 46, False),
        ("llama.v1", False),
        ("0-llama", False),
        ("Llama", False),
        ("llama-", False),
    ],
)
def test_the_name_must_fit_every_child(name: str, ok: bool) -> None:
    """A 46- to 253-character or dotted name was admitted, then refused child by child
    (a label value, the Service, <name>-lws, <name>-download-<hash>) with the error blamed
    on spec.overrides, or retried forever."""
    body = {"metadata": {"name": name}, "spec": make_spec().model_dump(by_alias=True)}
    if ok:
        LLMDeployment.model_validate(body)
    else:
        with pytest.raises(ValidationError, match=r"metadata\.name must be at most 45"):
            LLMDeployment.model_validate(body)
