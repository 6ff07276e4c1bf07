"""A GPU catalog ConfigMap edited under the running operator, on the real control plane.

The operator runs as in the other e2e tests (a local `llm-operator run` with the chart's
ServiceAccount token), here with a custom GPU catalog laid out as kubelet mounts a
ConfigMap (`gpus.yaml -> ..data/gpus.yaml`, `..data -> ..<timestamp>`) and named by
LLM_OPERATOR_GPU_CATALOG_CONFIGMAP. The test edits the file as kubelet applies a ConfigMap
edit (a new directory, `..data` swapped in one rename) and proves: a malformed catalog
leaves the operator alive and planning with the last good one, and is reported by the
metrics and a Warning event on the ConfigMap; a valid one is used by the next pass.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from helpers import GROUP, PLURAL, VERSION, eventually, llmd_body
from operator_proc import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
BUILTIN_GPUS = REPO / "operator" / "llm_operator" / "catalog" / "data" / "gpus.yaml"
H100 = "H100-SXM-80GB"  # what llmd_body's gpuTypes [H100] resolves to
CONFIGMAP = "gpu-catalog"
GOOD, NEWER = 1.234, 2.345  # USD per H100-hour in the test's catalogs


def gpus_yaml(**h100: Any) -> str:
    """The built-in GPU catalog with fields of the H100 entry replaced."""
    doc = yaml.safe_load(BUILTIN_GPUS.read_text())
    next(g for g in doc["gpus"] if g["name"] == H100).update(h100)
    return yaml.safe_dump(doc, sort_keys=False)


def kubelet_write(volume: Path, text: str, version: str) -> None:
    """Update `volume/gpus.yaml` as kubelet's AtomicWriter does after a ConfigMap edit."""
    (volume / version).mkdir()
    (volume / version / "gpus.yaml").write_text(text)
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    (volume / "..data_tmp").symlink_to(version)
    os.rename(volume / "..data_tmp", volume / "..data")
    if old is None:
        (volume / "gpus.yaml").symlink_to(Path("..data") / "gpus.yaml")
    else:
        shutil.rmtree(volume / old)


def metric(op: OperatorProcess, name: str) -> float | None:
    """A sample of the operator's own metrics with label catalog="gpu"."""
    for family in text_string_to_metric_families(op.metrics()):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("catalog") == "gpu":
                return float(sample.value)
    return None


def planned_price(custom: client.CustomObjectsApi, namespace: str, name: str) -> float:
    """USD per H100-hour the object's plan was made with (AssertionError until planned)."""
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    plan = (obj.get("status") or {}).get("plan")
    assert plan, f"{name} not planned yet: {obj.get('status')}"
    assert plan["gpu"] == H100, plan
    return round(plan["costPerHour"] / plan["gpusPerReplica"], 3)


def catalog_events(core: client.CoreV1Api, namespace: str, reason: str) -> list[Any]:
    selector = f"involvedObject.kind=ConfigMap,involvedObject.name={CONFIGMAP}"
    events = core.list_namespaced_event(namespace, field_selector=selector).items
    return [e for e in events if e.reason == reason]


def test_malformed_gpu_catalog_keeps_the_last_good_one_and_is_reported(
    own_operator: Callable[..., OperatorProcess],
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    tmp_path: Path,
) -> None:
    # The ConfigMap the events are about (the operator reads the file, as from its mount).
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=CONFIGMAP),
            data={"gpus.yaml": gpus_yaml(pricePerHour=GOOD)},
        ),
    )
    volume = tmp_path / "catalog"
    volume.mkdir()
    kubelet_write(volume, gpus_yaml(pricePerHour=GOOD), "..2026_01_01_00_00_00.1")

    op = own_operator(
        {
            "LLM_OPERATOR_GPU_CATALOG": str(volume / "gpus.yaml"),
            "LLM_OPERATOR_GPU_CATALOG_CONFIGMAP": f"{namespace}/{CONFIGMAP}",
            "LLM_OPERATOR_CATALOG_CHECK_INTERVAL": "1",
            "LLM_OPERATOR_RECONCILE_INTERVAL": "30",
            # The autoscale tick checks the files too (no Prometheus: it scales nothing).
            "LLM_OPERATOR_AUTOSCALE_INTERVAL": "2",
        },
        log_format="json",  # with levels: the refusal is an ERROR line
    )

    def create_planned_at(name: str, price: float) -> None:
        """Create an LLMDeployment; wait until it is planned at `price` per H100-hour.

        NOTE: a pass within LLM_OPERATOR_CATALOG_CHECK_INTERVAL of the last check uses
        the catalog in use; its children's first events start the next passes.
        """
        body = llmd_body(name)
        body["metadata"]["namespace"] = namespace
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        eventually(
            lambda: planned_price(custom, namespace, name) == pytest.approx(price),
            timeout=20,
            description=f"{name} planned at {price} USD per H100-hour",
        )

    create_planned_at("before", GOOD)
    assert metric(op, "llm_operator_catalog_valid") == 1

    # Malformed: found by the running operator with nothing else happening (the
    # autoscale tick of "before"), reported once; the last good catalog plans on.
    mark = op.log_size()
    kubelet_write(volume, gpus_yaml(pricePerHour=GOOD, memoryGB=-80), "..2026_01_01_00_01_00.2")

    def refused() -> bool:
        assert metric(op, "llm_operator_catalog_valid") == 0
        assert metric(op, "llm_operator_catalog_load_failures_total") == 1
        (event,) = catalog_events(core, namespace, "CatalogInvalid")
        assert event.type == "Warning"
        assert f"gpus[0] ({H100}).memoryGB" in event.message, event.message
        return True

    eventually(refused, timeout=20, description="the malformed catalog reported")
    create_planned_at("after-bad", GOOD)
    lines = [json.loads(x) for x in op.log_since(mark).splitlines() if x.startswith("{")]
    errors = [r for r in lines if "GPU catalog" in r["message"] and "refused" in r["message"]]
    assert [r["severity"] for r in errors] == ["error"], errors
    assert f"ConfigMap {namespace}/{CONFIGMAP}" in errors[0]["message"]
    assert op.proc is not None and op.proc.poll() is None, op.tail()

    # Valid again, with another price: found the same way, reported as a reload, and
    # used by the next pass.
    kubelet_write(volume, gpus_yaml(pricePerHour=NEWER), "..2026_01_01_00_02_00.3")
    eventually(
        lambda: (
            metric(op, "llm_operator_catalog_valid") == 1
            and catalog_events(core, namespace, "CatalogReloaded")
        ),
        timeout=20,
        description="the new catalog reported",
    )
    create_planned_at("after-fix", NEWER)
    assert metric(op, "llm_operator_catalog_load_failures_total") == 1
    assert len(catalog_events(core, namespace, "CatalogInvalid")) == 1
