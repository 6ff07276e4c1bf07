"""Learning from the fleet, end to end: engines slower than predicted -> the operator says so
-> `llmctl calibrate` fits it from Prometheus -> the operator plans with it.

The engine simulator's requests take `latencyFactor` x what the plan predicts at the load
they ran at (vLLM's own TTFT and per-request TPOT histograms, scraped by the local
Prometheus); the operator (its own, with a calibration file it re-reads) compares them with
the plan's load curve in status.performance. `llmctl calibrate` reads the LLMDeployments
through the kubeconfig and the engines' metrics from Prometheus, and writes the file; the
operator re-reads it and re-predicts without moving the workload.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from helpers import GROUP, PLURAL, VERSION, Cluster, clear_load, eventually, llmd_body, set_load
from operator_proc import OperatorProcess, apply_all, chart_objects, install_identity

FACTOR = 1.5  # the simulated engines take 1.5x the planner's times
H100 = "H100-SXM-80GB"


def replace_file(path: Path, text: str) -> None:
    """Write as a ConfigMap update lands: the new content appears at once, whole."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prediction_error(op: OperatorProcess, name: str, metric: str) -> float | None:
    for family in text_string_to_metric_families(op.metrics()):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "llm_operator_prediction_error_ratio"
                and labels.get("name") == name
                and labels.get("metric") == metric
            ):
                return float(sample.value)
    return None


def events(core: client.CoreV1Api, namespace: str, name: str, reason: str) -> list[Any]:
    selector = f"involvedObject.name={name},reason={reason}"
    return list(core.list_namespaced_event(namespace, field_selector=selector).items)


def create_serving(
    custom: client.CustomObjectsApi, namespace: str, name: str
) -> Callable[[], dict[str, Any]]:
    """Create a one-replica LLMDeployment, wait until it serves with a load curve; return
    a function that reads it."""
    body = llmd_body(name, scaling={"minReplicas": 1, "maxReplicas": 1})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def get() -> dict[str, Any]:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
        return obj

    def serving() -> bool:
        status = get().get("status") or {}
        assert status.get("readyReplicas") == 1, status
        assert status["plan"].get("loadCurve"), status["plan"]
        return True

    eventually(serving, timeout=90, interval=1, description=f"{name} serving")
    return get


def operator_env(cluster: Cluster, calibration: Path) -> dict[str, str]:
    return {
        "LLM_OPERATOR_PROMETHEUS_URL": cluster.prometheus_url,
        "LLM_OPERATOR_AUTOSCALE_INTERVAL": "2",
        "LLM_OPERATOR_QUERY_TIMEOUT": "2",
        "LLM_OPERATOR_RECONCILE_INTERVAL": "10",
        "LLM_OPERATOR_CATALOG_CHECK_INTERVAL": "1",
        "LLM_OPERATOR_CALIBRATION": str(calibration),
    }


def test_slow_engines_are_reported_fitted_and_planned_with(
    own_operator: Callable[..., OperatorProcess],
    cluster: Cluster,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    tmp_path: Path,
) -> None:
    calibration = tmp_path / "calibration.yaml"
    calibration.write_text("calibrations: []\n")
    op = own_operator(operator_env(cluster, calibration))
    name = "fleet"
    get = create_serving(custom, namespace, name)
    plan = get()["status"]["plan"]
    assert plan["gpu"] == H100 and "calibration" not in plan
    pods_before = {
        p.metadata.name
        for p in core.list_namespaced_pod(
            namespace, label_selector=f"serving.llm-operator.io/llmdeployment={name}"
        ).items
    }
    try:
        set_load(
            cluster.sim_url,
            namespace,
            name,
            0.5 * plan["outputTokensPerSecond"],
            latency_factor=FACTOR,
        )

        # 1. The operator measures the engines against the plan at the load they run.
        def measured() -> dict[str, Any]:
            perf = (get().get("status") or {}).get("performance")
            assert perf and perf.get("tpotMs") and perf.get("ttftMs"), perf
            assert perf["tpotMs"]["error"] == pytest.approx(FACTOR - 1, abs=0.05), perf
            assert perf["ttftMs"]["error"] == pytest.approx(FACTOR - 1, abs=0.05), perf
            assert perf["outputTokensPerSecond"]["observed"] > 0, perf
            return dict(perf)

        perf = eventually(measured, timeout=120, interval=2, description="status.performance")
        assert perf["concurrencyPerReplica"] > 0
        error = prediction_error(op, name, "tpot")
        assert error == pytest.approx(FACTOR - 1, abs=0.1), error
        (diverged,) = eventually(
            lambda: events(core, namespace, name, "PredictionDiverged") or None,
            timeout=20,
            description="a PredictionDiverged event",
        )
        assert diverged.type == "Warning" and "TPOT" in diverged.message, diverged.message
        assert "llmctl calibrate" in diverged.message

        # 2. `llmctl calibrate` fits the factor from Prometheus and the LLMDeployments.
        fitted = tmp_path / "fitted.yaml"
        llmctl = Path(sys.executable).with_name("llmctl")
        run = subprocess.run(
            [
                str(llmctl), "calibrate", "--prometheus", cluster.prometheus_url,
                "--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace,
                "--window", "1m", "-o", str(fitted),
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert f"vllm on {H100}" in run.stderr, run.stderr
        (entry,) = yaml.safe_load(fitted.read_text())["calibrations"]
        assert (entry["engine"], entry["gpu"], entry["deployments"]) == ("vllm", H100, 1)
        assert entry["decode"] == pytest.approx(FACTOR, abs=0.1), entry
        assert entry["prefill"] == pytest.approx(FACTOR, abs=0.1), entry

        # 3. The operator re-reads the file and re-predicts; the workload stays as it is.
        replace_file(calibration, fitted.read_text())

        def recalibrated() -> dict[str, Any]:
            obj = get()
            status = obj.get("status") or {}
            assert status["plan"].get("calibration", {}).get("decode") == entry["decode"]
            perf = status.get("performance") or {}
            assert perf.get("tpotMs") and perf.get("ttftMs"), perf
            # Predictions now include the fleet's factor: within 10% of what is measured.
            assert abs(perf["tpotMs"]["error"]) < 0.1, perf
            assert abs(perf["ttftMs"]["error"]) < 0.15, perf
            return dict(status["plan"])

        new_plan = eventually(recalibrated, timeout=90, interval=2, description="re-predicted")
        assert new_plan["tpotMs"] > plan["tpotMs"] and new_plan["gpu"] == plan["gpu"]
        (event,) = events(core, namespace, name, "Recalibrated")
        assert "the layout stays" in event.message, event.message
        pods_after = {
            p.metadata.name
            for p in core.list_namespaced_pod(
                namespace, label_selector=f"serving.llm-operator.io/llmdeployment={name}"
            ).items
        }
        assert pods_after == pods_before  # new predictions roll nothing
    finally:
        clear_load(cluster.sim_url, namespace, name)


def test_the_operator_calibrates_itself_and_keeps_it_in_its_configmap(
    own_operator: Callable[..., OperatorProcess],
    cluster: Cluster,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    tmp_path: Path,
) -> None:
    """The opt-in mode: the operator fits the calibration itself and writes it into its
    ConfigMap with exactly the RBAC the chart renders for it (applied to the apiserver)."""
    install_ns, _ = install_identity(cluster.api)
    configmap = f"fleet-{namespace}"  # in the operator's namespace, as the chart mounts it
    chart = chart_objects(
        "--set", f"calibration.existingConfigMap={configmap}",
        "--set", "calibration.selfCalibrate.enabled=true",
    )  # fmt: skip
    rbac = [
        o
        for o in chart
        if o["kind"] in ("Role", "RoleBinding") and o["metadata"]["name"].endswith("-calibration")
    ]
    assert len(rbac) == 2 and all(o["metadata"]["namespace"] == install_ns for o in rbac)
    apply_all(cluster.api, rbac)
    core.create_namespaced_config_map(
        install_ns,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=configmap),
            data={"calibration.yaml": "calibrations: []\n"},
        ),
    )
    calibration = tmp_path / "calibration.yaml"
    calibration.write_text("calibrations: []\n")
    name = "self"
    try:
        own_operator(
            {
                **operator_env(cluster, calibration),
                "LLM_OPERATOR_CALIBRATION_CONFIGMAP": f"{install_ns}/{configmap}",
                "LLM_OPERATOR_SELF_CALIBRATE_INTERVAL": "5",
                # NOTE: a short window, so that the load before the test's is soon out of
                # the averages (the gauges' mean would mix it in for a minute).
                "LLM_OPERATOR_SELF_CALIBRATE_WINDOW": "20s",
            }
        )
        get = create_serving(custom, namespace, name)
        plan = get()["status"]["plan"]
        set_load(
            cluster.sim_url, namespace, name, 0.5 * plan["outputTokensPerSecond"],
            latency_factor=2.0,
        )  # fmt: skip

        def written() -> dict[str, Any]:
            data = core.read_namespaced_config_map(configmap, install_ns).data or {}
            entries = yaml.safe_load(data.get("calibration.yaml", "")) or {}
            (entry,) = entries.get("calibrations") or [None]
            assert entry is not None and entry["decode"] == pytest.approx(2.0, abs=0.1), entry
            return dict(entry)

        entry = eventually(written, timeout=120, interval=2, description="ConfigMap written")
        assert (entry["engine"], entry["gpu"]) == ("vllm", H100)

        def replanned() -> dict[str, Any]:
            status = get().get("status") or {}
            assert status["plan"].get("calibration", {}).get("decode") == entry["decode"]
            perf = status.get("performance") or {}
            assert perf.get("tpotMs") and abs(perf["tpotMs"]["error"]) < 0.1, perf
            return dict(status)

        eventually(replanned, timeout=90, interval=2, description="re-predicted")
        assert events(core, namespace, name, "Recalibrated")
        fitted = events(core, install_ns, configmap, "CalibrationFitted")
        assert fitted and f"vllm on {H100}" in fitted[0].message, fitted
    finally:
        clear_load(cluster.sim_url, namespace, name)
        core.delete_namespaced_config_map(configmap, install_ns)
        rbac_api = client.RbacAuthorizationV1Api(cluster.api)
        for obj in rbac:
            delete = (
                rbac_api.delete_namespaced_role
                if obj["kind"] == "Role"
                else rbac_api.delete_namespaced_role_binding
            )
            delete(obj["metadata"]["name"], install_ns)
