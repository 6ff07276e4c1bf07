"""A Hugging Face token goes to the Hub and into the engine pod's environment by reference,
and nowhere else: not into status, events, the operator's log or its metrics, nor literally
into any object the operator writes.

The operator runs with HF_ENDPOINT pointed at a local Hub (tests/hub_server.py, the real
huggingface_hub code path) that serves a gated model only to one token. Three
LLMDeployments use it: with the right token (planned from the gated config.json), with a
wrong one and with a Secret that lacks the key (both refused, naming the field). Then
everything the e2e run can see is searched for both token values.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from test_operator import create, get

from helpers import GROUP, PLURAL, VERSION, Cluster, condition, eventually
from helpers import llmd_body as llmd
from operator_proc import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
MODEL = "acme/gated-llama"  # served from Llama-3.1-8B-Instruct's config.json


def local_hub_module() -> Any:
    """tests/hub_server.py (the unit tests' Hub stand-in), loaded by path."""
    spec = importlib.util.spec_from_file_location("hub_server", REPO / "tests" / "hub_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["hub_server"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def secret(core: client.CoreV1Api, namespace: str, name: str, data: dict[str, str]) -> None:
    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data)
    )


def gated(name: str, secret_name: str) -> dict[str, Any]:
    return llmd(name, model={"name": MODEL, "hfTokenSecret": {"name": secret_name}})


def test_the_hf_token_appears_nowhere_but_the_request(
    cluster: Cluster,
    own_operator: Callable[..., OperatorProcess],
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
    tmp_path: Path,
) -> None:
    right, wrong = f"hf_{uuid.uuid4().hex}", f"hf_{uuid.uuid4().hex}"
    hub_server = local_hub_module()
    with hub_server.LocalHub() as hub:
        config = hub_server.fixture_config("meta-llama/Llama-3.1-8B-Instruct")
        hub.add(MODEL, config, token=right)
        op = own_operator(
            {
                "HF_ENDPOINT": hub.endpoint,
                "HF_HUB_OFFLINE": "0",
                "LLM_OPERATOR_HUB_CACHE": str(tmp_path / "hub-cache"),
                "LLM_OPERATOR_PROMETHEUS_URL": cluster.prometheus_url,
                "LLM_OPERATOR_AUTOSCALE_INTERVAL": "2",
            },
            log_format="json",
        )
        secret(core, namespace, "right", {"token": right})
        secret(core, namespace, "wrong", {"token": wrong})
        secret(core, namespace, "keyless", {"other": wrong})
        names = [
            create(custom, namespace, gated("with-right", "right")),
            create(custom, namespace, gated("with-wrong", "wrong")),
            create(custom, namespace, gated("keyless", "keyless")),
        ]

        def planned() -> bool:
            ready = condition(get(custom, namespace, names[0]), "Ready")
            assert ready["status"] == "True", ready
            return True

        eventually(planned, timeout=90, interval=1, description="the gated model served")

        def refused(name: str) -> str:
            obj = get(custom, namespace, name)
            ready = condition(obj, "Ready")
            assert ready["status"] == "False" and ready["reason"] == "InvalidSpec", ready
            assert "spec.model.hfTokenSecret" in ready["message"], ready
            return str(ready["message"])

        eventually(lambda: refused(names[1]), timeout=60, description="wrong token refused")
        eventually(lambda: refused(names[2]), timeout=60, description="keyless refused")
        # The right token did reach the Hub (so the search below can find something).
        assert any(r.authorization == f"Bearer {right}" for r in hub.requests)
        assert any(r.authorization == f"Bearer {wrong}" for r in hub.requests)
        # The engine gets the token by reference only.
        env = {
            e.name: e
            for c in apps.read_namespaced_deployment(
                names[0], namespace
            ).spec.template.spec.containers
            for e in c.env or []
        }
        token_env = [e for e in env.values() if e.value_from and e.value_from.secret_key_ref]
        assert [e.value_from.secret_key_ref.name for e in token_env] == ["right"], env
        # Two autoscaler ticks and their writes, then everything is searched.
        eventually(
            lambda: condition(get(custom, namespace, names[0]), "MetricsAvailable"),
            timeout=30,
            description="an autoscaler tick",
        )
        seen = everything_seen(op, custom, apps, core, namespace)
    seen["operator log"] = op.log_path.read_text(errors="replace")
    for what, text in seen.items():
        for value in (right, wrong):
            assert value not in text, f"the token appears in {what}"


def everything_seen(
    op: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> dict[str, str]:
    """What a user or a log pipeline sees, as text: the LLMDeployments (status, annotations,
    managed fields), every event, the operator's objects and its metrics."""
    api = client.ApiClient()

    def text(obj: Any) -> str:
        return json.dumps(api.sanitize_for_serialization(obj), default=str)

    return {
        "LLMDeployments": text(
            custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        ),
        "events": text(core.list_namespaced_event(namespace)),
        "Deployments": text(apps.list_namespaced_deployment(namespace)),
        "Services": text(core.list_namespaced_service(namespace)),
        "ConfigMaps": text(core.list_namespaced_config_map(namespace)),
        "Pods": text(core.list_namespaced_pod(namespace)),
        "operator metrics": op.metrics(),
    }
