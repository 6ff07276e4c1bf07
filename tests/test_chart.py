"""The install paths: Helm chart, generated manifests, Grafana dashboard, operator image.

`helm lint` and `helm template` run over a matrix of values; every rendered object is
validated against the Kubernetes 1.34 OpenAPI schema (kinds backed by other projects' CRDs
are checked field by field instead); RBAC is pinned rule by rule. Derived files
(manifests/, the chart's CRD copy) fail here when they drift: `make manifests` fixes them.
The Dockerfile's build stage is replayed in a fresh virtual environment and the image's
entrypoint is run. Needs the pinned helm (`make tools`); it is never skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from charts import render_manifests as rm
from llm_operator import metrics as operator_metrics
from llm_operator.catalog import parse_calibrations, parse_catalog
from tests.conftest import ROOT

K8S_VERSION = "1.34"
CHART = rm.CHART
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DASHBOARD = CHART / "files" / "dashboards" / "llm-operator.json"
BUILTIN_GPUS = ROOT / "operator" / "llm_operator" / "catalog" / "data" / "gpus.yaml"
BUILTIN_MODELS = BUILTIN_GPUS.with_name("models.yaml")
DOCKERFILE = ROOT / "Dockerfile"

# Kinds defined by CRDs of other projects (or by the chart's own peering CRD): not in the
# Kubernetes OpenAPI schema, so their tests check the fields the chart relies on.
CRD_BACKED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("kopf.dev/v1", "ClusterKopfPeering"),
    ("kopf.dev/v1", "KopfPeering"),
}
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)

# The permissions the operator uses, pinned: a change here must come with a change in
# llm_operator/kube.py or in what Kopf needs (see the comments in templates/rbac.yaml).
CHILD_VERBS = frozenset({"get", "list", "create", "patch", "delete"})
WATCHED_CHILD_VERBS = CHILD_VERBS | {"watch"}
CLUSTER_RULES: dict[tuple[str, str], frozenset[str]] = {
    ("", "nodes"): frozenset({"list", "watch"}),
    ("apiextensions.k8s.io", "customresourcedefinitions"): frozenset({"list", "watch"}),
}
NAMESPACED_RULES: dict[tuple[str, str], frozenset[str]] = {
    ("serving.llm-operator.io", "llmdeployments"): frozenset({"get", "list", "watch", "patch"}),
    ("serving.llm-operator.io", "llmdeployments/status"): frozenset({"patch"}),
    ("serving.llm-operator.io", "llmdeployments/finalizers"): frozenset({"update"}),
    ("", "events"): frozenset({"create"}),
    ("", "pods"): frozenset({"list", "watch"}),
    ("", "secrets"): frozenset({"get"}),
    ("", "services"): WATCHED_CHILD_VERBS,
    ("apps", "deployments"): WATCHED_CHILD_VERBS,
    ("leaderworkerset.x-k8s.io", "leaderworkersets"): WATCHED_CHILD_VERBS,
    ("policy", "poddisruptionbudgets"): WATCHED_CHILD_VERBS,
    ("", "persistentvolumeclaims"): WATCHED_CHILD_VERBS,
    ("batch", "jobs"): WATCHED_CHILD_VERBS,
    ("monitoring.coreos.com", "podmonitors"): WATCHED_CHILD_VERBS,
}
PEERING_VERBS = frozenset({"list", "watch", "patch"})


def _custom_catalog() -> str:
    """The built-in GPU catalog with a negotiated H100 price, as a user would pass it."""
    text = BUILTIN_GPUS.read_text()
    changed = re.sub(r"pricePerHour: 3\.78\b", "pricePerHour: 2.10", text, count=1)
    assert changed != text, "the built-in H100 price moved: update this test's edit"
    return changed


CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "rbac-off": {"rbac": {"create": False}},
    "crds-off": {"crds": {"enabled": False}},
    "crds-no-keep": {"crds": {"keep": False}},
    "service-monitor": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}
    },
    "network-policy": {
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ],
        }
    },
    "peering": {
        "replicas": 2,
        "peering": {"enabled": True},
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {
                    "matchLabels": {"app.kubernetes.io/component": "operator"},
                },
            }
        ],
    },
    "peering-one-namespace": {
        "replicas": 2,
        "peering": {"enabled": True},
        "watchNamespace": "llm-serving",
    },
    "gpu-catalog": {"gpuCatalog": {"content": _custom_catalog()}},
    "privileged-overrides": {"security": {"allowPrivilegedOverrides": True}},
    "engine-images": {
        "engineImages": {
            "vllm-nvidia": "registry.example.com/vllm/vllm-openai:v0.12.0",
            "llamacpp-cpu": "registry.example.com/llama.cpp:server-b10380",
        }
    },
    "existing-gpu-catalog": {"gpuCatalog": {"existingConfigMap": "my-gpu-prices"}},
    "calibration": {"calibration": {"content": "calibrations: []\n"}},
    "self-calibration": {
        "prometheus": {"url": "http://prometheus-operated.monitoring:9090"},
        "calibration": {
            "existingConfigMap": "fleet-calibration",
            "selfCalibrate": {"enabled": True, "interval": 1800, "window": "2h"},
        },
    },
    "everything": {
        "image": {"digest": "sha256:" + "0" * 64, "pullPolicy": "Always"},
        "imagePullSecrets": ["registry-credentials"],
        "serviceAccount": {"create": False, "name": "platform-operator"},
        "prometheus": {"url": "http://prometheus-operated.monitoring:9090", "queryTimeout": 3},
        "podMonitors": {"enabled": True},
        "verbose": True,
        "logFormat": "plain",
        "commonLabels": {"team": "ml-platform"},
        "podAnnotations": {"example.com/owner": "ml-platform"},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"}
                            ]
                        }
                    ]
                }
            }
        },
        "serviceMonitor": {"enabled": True},
        "networkPolicy": {"enabled": True},
        "dashboard": {"namespace": "grafana", "annotations": {"grafana_folder": "LLM"}},
    },
}


@pytest.fixture(scope="session")
def helm() -> str:
    try:
        return rm.find_helm()
    except rm.HelmNotFoundError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def values_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("values")
    for name, values in CASES.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(values))
    return folder


@cache
def _render(helm: str, values_file: Path) -> tuple[dict[str, Any], ...]:
    text = rm.helm_template(helm, values_file)
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objects(helm: str, values_dir: Path, case: str) -> tuple[dict[str, Any], ...]:
    return _render(helm, values_dir / f"{case}.yaml")


def render(helm: str, values_dir: Path, case: str) -> tuple[dict[str, Any], ...]:
    return _render(helm, values_dir / f"{case}.yaml")


def of_kind(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], frozenset[str]]:
    out: dict[tuple[str, str], frozenset[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                out[key] = out.get(key, frozenset()) | frozenset(rule["verbs"])
    return out


def container(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (operator,) = pod["containers"]
    return dict(operator)


def env_of(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objects)["env"]}


# --------------------------------------------------------------------------- whole matrix


def test_helm_lint(helm: str, values_dir: Path, case: str) -> None:
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--values", str(values_dir / f"{case}.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_objects_validate_against_kubernetes_schema(objects: tuple[dict[str, Any], ...]) -> None:
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_BACKED:
            assert obj["metadata"]["name"]
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_objects_carry_the_standard_labels(objects: tuple[dict[str, Any], ...]) -> None:
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        what = f"{obj['kind']}/{obj['metadata']['name']}"
        assert [k for k in STANDARD_LABELS if k not in labels] == [], what
        assert labels["app.kubernetes.io/name"] == "llm-operator", what
        assert labels["app.kubernetes.io/instance"] == rm.RELEASE, what
        assert labels["app.kubernetes.io/version"] == CHART_META["appVersion"], what
        assert labels["app.kubernetes.io/part-of"] == "llm-operator", what
        assert labels["app.kubernetes.io/managed-by"] == "Helm", what


def test_names_are_fixed_and_namespaced_objects_in_the_release_namespace(
    objects: tuple[dict[str, Any], ...], case: str
) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    for obj in objects:
        meta = obj["metadata"]
        assert "generateName" not in meta
        assert meta["name"].startswith(rm.RELEASE) or obj["kind"] in {
            "CustomResourceDefinition",
            "ClusterKopfPeering",
            "KopfPeering",
            "ServiceAccount",
        }
        if obj["kind"] in cluster_scoped | {"ClusterKopfPeering"}:
            assert "namespace" not in meta
        else:
            expected = {
                rm.NAMESPACE,
                CASES[case].get("watchNamespace"),
                CASES[case].get("dashboard", {}).get("namespace"),
            }
            assert meta["namespace"] in expected, f"{obj['kind']}/{meta['name']}"


def test_rbac_has_no_wildcards(objects: tuple[dict[str, Any], ...]) -> None:
    for role in of_kind(objects, "ClusterRole") + of_kind(objects, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert all("*" not in item for item in rule.get(field, [])), rule
            assert "nonResourceURLs" not in rule


def test_operator_pod_is_restricted(objects: tuple[dict[str, Any], ...]) -> None:
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    ctr = container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = ctr["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert {"cpu", "memory"} <= set(ctr["resources"]["requests"])
    assert not any(v.get("hostPath") for v in pod.get("volumes", []))


def test_probes_and_ports_match_the_operator_settings(
    objects: tuple[dict[str, Any], ...],
) -> None:
    ctr = container(objects)
    env = env_of(objects)
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports["health"] == int(env["LLM_OPERATOR_HEALTH_PORT"])
    assert ports["metrics"] == int(env["LLM_OPERATOR_METRICS_PORT"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert ctr[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe


def test_env_names_are_the_ones_settings_reads(objects: tuple[dict[str, Any], ...]) -> None:
    source = (ROOT / "operator" / "llm_operator" / "settings.py").read_text()
    known = set(re.findall(r"LLM_OPERATOR_[A-Z_]+", source)) | {"POD_ID"}
    assert set(env_of(objects)) - known == set()


def test_cluster_role_binding_targets_the_pods_service_account(
    objects: tuple[dict[str, Any], ...],
) -> None:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    for binding in of_kind(objects, "ClusterRoleBinding") + of_kind(objects, "RoleBinding"):
        (subject,) = binding["subjects"]
        assert subject["name"] == pod["serviceAccountName"]
        assert subject["namespace"] == rm.NAMESPACE


# --------------------------------------------------------------------------- single values


def test_default_rbac_is_exactly_what_the_operator_uses(helm: str, values_dir: Path) -> None:
    objects = render(helm, values_dir, "defaults")
    assert rules_of(one(objects, "ClusterRole")) == CLUSTER_RULES | NAMESPACED_RULES
    assert of_kind(objects, "Role") == []


def test_rbac_off_renders_no_roles(helm: str, values_dir: Path) -> None:
    objects = render(helm, values_dir, "rbac-off")
    kinds = {o["kind"] for o in objects}
    assert kinds.isdisjoint({"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"})
    assert "ServiceAccount" in kinds and "Deployment" in kinds


def test_own_service_account(helm: str, values_dir: Path) -> None:
    objects = render(helm, values_dir, "everything")
    assert of_kind(objects, "ServiceAccount") == []
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-operator"


def test_crds_off_renders_no_crds(helm: str, values_dir: Path) -> None:
    assert of_kind(render(helm, values_dir, "crds-off"), "CustomResourceDefinition") == []


@pytest.mark.parametrize(("name", "keep"), [("defaults", True), ("crds-no-keep", False)])
def test_crds_keep_adds_the_resource_policy(
    helm: str, values_dir: Path, name: str, keep: bool
) -> None:
    crds = of_kind(render(helm, values_dir, name), "CustomResourceDefinition")
    assert crds
    for crd in crds:
        annotations = crd["metadata"].get("annotations") or {}
        assert (annotations.get("helm.sh/resource-policy") == "keep") is keep


def test_rendered_crd_is_the_generated_one(helm: str, values_dir: Path) -> None:
    assert rm.CRD_COPY.read_bytes() == rm.CRD_SOURCE.read_bytes(), (
        f"{rm.CRD_COPY.relative_to(ROOT)} drifted from crds/: run `make manifests`"
    )
    (rendered,) = of_kind(render(helm, values_dir, "defaults"), "CustomResourceDefinition")
    source = yaml.safe_load(rm.CRD_SOURCE.read_text())
    assert rendered["spec"] == source["spec"]
    assert rendered["metadata"]["name"] == source["metadata"]["name"]
    assert source["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()


def test_service_monitor_scrapes_the_metrics_service(helm: str, values_dir: Path) -> None:
    objects = render(helm, values_dir, "service-monitor")
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [rm.NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    # The per-LLMDeployment series carry a `namespace` label of their own.
    assert endpoint["honorLabels"] is True
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert of_kind(render(helm, values_dir, "defaults"), "ServiceMonitor") == []


def test_network_policy_admits_scrapes_and_the_api_server(helm: str, values_dir: Path) -> None:
    objects = render(helm, values_dir, "network-policy")
    policy = one(objects, "NetworkPolicy")["spec"]
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    metrics_rule = policy["ingress"][0]
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert metrics_rule["from"] == CASES["network-policy"]["networkPolicy"]["metricsFrom"]
    egress = {(p["port"], p["protocol"]) for p in policy["egress"][0]["ports"]}
    assert {(53, "UDP"), (443, "TCP"), (6443, "TCP")} <= egress
    assert of_kind(render(helm, values_dir, "defaults"), "NetworkPolicy") == []


def test_peering_runs_two_replicas_under_one_peering_object(helm: str, values_dir: Path) -> None:
    objects = render(helm, values_dir, "peering")
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    env = env_of(objects)
    peering = one(objects, "ClusterKopfPeering")
    assert env["LLM_OPERATOR_PEERING"] == peering["metadata"]["name"] == "llm-operator"
    assert env["LLM_OPERATOR_NAMESPACE"] == ""
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # A hook: created after the peering CRD of the same release exists.
    assert "post-install" in peering["metadata"]["annotations"]["helm.sh/hook"]
    crd = next(
        c for c in of_kind(objects, "CustomResourceDefinition") if c["spec"]["group"] == "kopf.dev"
    )
    assert crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"]["kind"] == "ClusterKopfPeering"
    rules = rules_of(one(objects, "ClusterRole"))
    assert rules == CLUSTER_RULES | NAMESPACED_RULES | {
        ("kopf.dev", "clusterkopfpeerings"): PEERING_VERBS
    }
    defaults = render(helm, values_dir, "defaults")
    assert env_of(defaults)["LLM_OPERATOR_PEERING"] == ""
    assert one(defaults, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}


def test_peering_in_one_namespace_uses_a_role_there(helm: str, values_dir: Path) -> None:
    objects = render(helm, values_dir, "peering-one-namespace")
    assert env_of(objects)["LLM_OPERATOR_NAMESPACE"] == "llm-serving"
    peering = one(objects, "KopfPeering")
    assert peering["metadata"]["namespace"] == "llm-serving"
    assert rules_of(one(objects, "ClusterRole")) == CLUSTER_RULES | {
        ("", "namespaces"): frozenset({"list", "watch"})
    }
    role = one(objects, "Role")
    assert role["metadata"]["namespace"] == "llm-serving"
    assert rules_of(role) == NAMESPACED_RULES | {("kopf.dev", "kopfpeerings"): PEERING_VERBS}
    binding = one(objects, "RoleBinding")
    assert binding["metadata"]["namespace"] == "llm-serving"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_replicas_without_peering_is_refused(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"replicas": 2}))
    with pytest.raises(subprocess.CalledProcessError) as err:
        rm.helm_template(helm, values)
    assert "peering.enabled" in err.value.stderr


def test_gpu_catalog_is_mounted_where_the_operator_reads_it(helm: str, values_dir: Path) -> None:
    objects = render(helm, values_dir, "gpu-catalog")
    configmap = next(c for c in of_kind(objects, "ConfigMap") if "gpus.yaml" in c["data"])
    catalog = parse_catalog(BUILTIN_MODELS.read_text(), configmap["data"]["gpus.yaml"])
    assert catalog.gpu("H100").price_per_hour == pytest.approx(2.10)
    path = Path(env_of(objects)["LLM_OPERATOR_GPU_CATALOG"])
    pod = one(objects, "Deployment")["spec"]["template"]
    (mount,) = [m for m in container(objects)["volumeMounts"] if m["name"] == "gpu-catalog"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "gpu-catalog"]
    assert path.parent == Path(mount["mountPath"])
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert volume["configMap"]["items"] == [{"key": "gpus.yaml", "path": path.name}]
    assert pod["metadata"]["annotations"]["checksum/gpu-catalog"]

    existing = render(helm, values_dir, "existing-gpu-catalog")
    assert not [c for c in of_kind(existing, "ConfigMap") if "gpus.yaml" in c["data"]]
    pod = one(existing, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "gpu-catalog"]
    assert volume["configMap"]["name"] == "my-gpu-prices"
    assert "LLM_OPERATOR_GPU_CATALOG" not in env_of(render(helm, values_dir, "defaults"))


def test_calibration_is_mounted_where_the_operator_reads_it(helm: str, values_dir: Path) -> None:
    objects = render(helm, values_dir, "calibration")
    configmap = next(c for c in of_kind(objects, "ConfigMap") if "calibration.yaml" in c["data"])
    assert parse_calibrations(configmap["data"]["calibration.yaml"]) == ()
    env = env_of(objects)
    path = Path(env["LLM_OPERATOR_CALIBRATION"])
    (mount,) = [m for m in container(objects)["volumeMounts"] if m["name"] == "calibration"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "calibration"]
    assert path.parent == Path(mount["mountPath"])
    assert volume["configMap"]["items"] == [{"key": "calibration.yaml", "path": path.name}]
    assert env["LLM_OPERATOR_CALIBRATION_CONFIGMAP"].endswith("/" + volume["configMap"]["name"])
    assert "LLM_OPERATOR_SELF_CALIBRATE_INTERVAL" not in env
    roles = of_kind(objects, "Role")
    assert not [r for r in roles if r["metadata"]["name"].endswith("calibration")]


def test_self_calibration_may_write_its_configmap_and_nothing_else(
    helm: str, values_dir: Path
) -> None:
    objects = render(helm, values_dir, "self-calibration")
    env = env_of(objects)
    assert env["LLM_OPERATOR_SELF_CALIBRATE_INTERVAL"] == "1800"
    assert env["LLM_OPERATOR_SELF_CALIBRATE_WINDOW"] == "2h"
    assert env["LLM_OPERATOR_CALIBRATION_CONFIGMAP"].endswith("/fleet-calibration")
    (role,) = [r for r in of_kind(objects, "Role") if r["metadata"]["name"].endswith("calibration")]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["fleet-calibration"],
            "verbs": ["get", "patch"],
        }
    ]
    bindings = of_kind(objects, "RoleBinding")
    (binding,) = [b for b in bindings if b["roleRef"]["name"] == role["metadata"]["name"]]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert [s["name"] for s in binding["subjects"]] == [pod["serviceAccountName"]]


def test_everything_reaches_the_pod(helm: str, values_dir: Path) -> None:
    objects = render(helm, values_dir, "everything")
    ctr = container(objects)
    env = env_of(objects)
    assert ctr["image"] == "ghcr.io/llm-operator/llm-operator@sha256:" + "0" * 64
    assert ctr["args"] == ["run", "--log-format=plain", "--verbose"]
    assert env["LLM_OPERATOR_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring:9090"
    assert env["LLM_OPERATOR_QUERY_TIMEOUT"] == "3"
    assert env["LLM_OPERATOR_MONITORING"] == "true"
    dashboard = next(c for c in of_kind(objects, "ConfigMap") if "llm-operator.json" in c["data"])
    assert dashboard["metadata"]["namespace"] == "grafana"
    assert all(o["metadata"]["labels"]["team"] == "ml-platform" for o in objects)


def _override_rules(objects: tuple[dict[str, Any], ...]) -> list[str]:
    (crd,) = of_kind(objects, "CustomResourceDefinition")[-1:]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    overrides = schema["properties"]["spec"]["properties"]["overrides"]
    return [r["message"] for r in overrides.get("x-kubernetes-validations", [])]


def test_privileged_overrides_are_refused_unless_the_install_opts_in(
    helm: str, values_dir: Path
) -> None:
    default = render(helm, values_dir, "defaults")
    guarded = _override_rules(default)
    assert any("may not set hostNetwork" in m for m in guarded)
    assert any("may not add hostPath" in m for m in guarded)
    assert env_of(default)["LLM_OPERATOR_ALLOW_PRIVILEGED_OVERRIDES"] == "false"
    opted_in = render(helm, values_dir, "privileged-overrides")
    assert not any("podTemplatePatch may not" in m for m in _override_rules(opted_in))
    assert env_of(opted_in)["LLM_OPERATOR_ALLOW_PRIVILEGED_OVERRIDES"] == "true"


def test_engine_images_reach_the_operator(helm: str, values_dir: Path) -> None:
    from llm_operator.settings import parse_images

    env = env_of(render(helm, values_dir, "engine-images"))
    assert parse_images(env["LLM_OPERATOR_ENGINE_IMAGES"]) == {
        "llamacpp-cpu": "registry.example.com/llama.cpp:server-b10380",
        "vllm-nvidia": "registry.example.com/vllm/vllm-openai:v0.12.0",
    }
    assert "LLM_OPERATOR_ENGINE_IMAGES" not in env_of(render(helm, values_dir, "defaults"))


# --------------------------------------------------------------------------- values schema


@pytest.mark.parametrize(
    "setting", ["image.repostory=example/op", "replica=2", "serviceMonitor.intervall=1m"]
)
def test_schema_rejects_a_misspelled_key(helm: str, setting: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as err:
        rm.helm_template(helm, extra=["--set", setting])
    key = setting.split("=")[0].split(".")[-1]
    assert key in err.value.stderr
    assert "not allowed" in err.value.stderr or "additional" in err.value.stderr


@pytest.mark.parametrize(
    "setting", ["logFormat=xml", "metrics.port=0", "prometheus.url=prometheus:9090"]
)
def test_schema_rejects_a_bad_value(helm: str, setting: str) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        rm.helm_template(helm, extra=["--set", setting])


def _schema_objects(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if node.get("type") == "object" or "properties" in node:
        yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _schema_objects(child, f"{path}.{name}".lstrip("."))
    if isinstance(node.get("items"), dict):
        yield from _schema_objects(node["items"], f"{path}[]")


def test_schema_closes_every_object() -> None:
    for path, node in _schema_objects(SCHEMA, ""):
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
        else:
            # A map (typed values) or a Kubernetes type passed through to the API server.
            assert isinstance(node.get("additionalProperties"), dict) or node.get("$comment"), path


def _declared(path: list[str]) -> bool:
    node: dict[str, Any] = SCHEMA
    for key in path:
        props = node.get("properties")
        if props is None or key not in props:
            return False
        node = props[key]
    return True


def test_every_value_is_documented_and_declared() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    seen: set[str] = set()
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9_]*):", line)
        if not match:
            continue
        indent, key = len(match[1]), match[2]
        stack = [(d, k) for d, k in stack if d < indent]
        stack.append((indent, key))
        path = [k for _, k in stack]
        if not _declared(path):
            continue  # a key inside a free-form map (labels, resources.requests.cpu, ...)
        dotted = ".".join(path)
        seen.add(dotted)
        block = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            block.insert(0, lines[j].strip())
            j -= 1
        if not block or not block[0].startswith(f"# {dotted} --"):
            undocumented.append(dotted)
    assert undocumented == []
    declared = {
        f"{p}.{k}".lstrip(".")
        for p, node in _schema_objects(SCHEMA, "")
        for k in node.get("properties", {})
        if "[]" not in p
    }
    assert declared - {"global"} - seen == set(), "declared in the schema, absent from values"


# --------------------------------------------------------------------------- derived files


def test_install_yaml_is_current(helm: str) -> None:
    assert rm.INSTALL.read_text() == rm.render_install(helm), (
        "manifests/install.yaml drifted from the chart: run `make manifests`"
    )


def test_install_yaml_applies_as_is(helm: str) -> None:
    docs = [d for d in yaml.safe_load_all(rm.INSTALL.read_text()) if d]
    assert docs[0]["kind"] == "Namespace" and docs[0]["metadata"]["name"] == rm.NAMESPACE
    assert docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        assert "helm.sh/hook" not in (doc["metadata"].get("annotations") or {})
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kustomization = yaml.safe_load((rm.MANIFESTS / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["install.yaml"]


def test_manifest_examples_are_copies_of_examples() -> None:
    sources = {p.name: p.read_bytes() for p in rm.EXAMPLES.glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in rm.MANIFEST_EXAMPLES.glob("*")}
    assert sources, "no examples/"
    assert copies == sources, "manifests/examples/ drifted from examples/: run `make manifests`"


# --------------------------------------------------------------------------- dashboard


def _exported_metric_names() -> set[str]:
    names: set[str] = set()
    for value in vars(operator_metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            suffixes = {
                "counter": ["_total"],
                "histogram": ["_bucket", "_sum", "_count"],
            }.get(family.type, [""])
            names |= {family.name + s for s in suffixes}
    return names


def test_dashboard_queries_only_metrics_the_operator_exports(helm: str, values_dir: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bllm_operator_[a-z_]+", e)}
    assert used, "the dashboard queries nothing"
    assert used - _exported_metric_names() == set()
    titles = " ".join(p["title"] for p in panels)
    for needed in ("tokens/s", "Replicas", "$/hour", "1M output tokens"):
        assert needed in titles
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "llmdeployment"} <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))

    configmap = next(
        c
        for c in of_kind(render(helm, values_dir, "defaults"), "ConfigMap")
        if "llm-operator.json" in c["data"]
    )
    assert json.loads(configmap["data"]["llm-operator.json"]) == dashboard
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"


# --------------------------------------------------------------------------- image


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions(text):
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, args))
    return stages


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m[1], ""), value)


def test_dockerfile_pins_a_slim_python_and_runs_as_a_numeric_user() -> None:
    stages = _stages(DOCKERFILE.read_text())
    bases = [args.split()[0] for stage in stages for kw, args in stage if kw == "FROM"]
    for base in bases:
        match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim(-[a-z]+)?", base)
        assert match, f"{base}: pin a python:X.Y.Z-slim tag"
        assert (int(match[1]), int(match[2])) == sys.version_info[:2] == (3, 11)
    runtime = dict(stages[-1])
    user = runtime["USER"].split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user), runtime["USER"]
    chart_uid = 65532  # templates/deployment.yaml runAsUser
    assert int(user[0]) == chart_uid
    assert json.loads(runtime["ENTRYPOINT"]) == ["llm-operator"]
    assert json.loads(runtime["CMD"]) == ["run"]
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for kw, args in stages[0]:
        if kw == "COPY":
            for src in shlex.split(args)[:-1]:
                assert f"!{src.rstrip('/')}" in ignore or f"!{src.rstrip('/')}/" in ignore, src


def test_image_build_recipe_installs_a_working_operator(tmp_path: Path) -> None:
    """Replay the Dockerfile's build stage here, then run the image's entrypoint.

    ARGs are overridden the way `docker build --build-arg` would, to keep everything
    inside tmp_path; `python` is this (3.11) interpreter, as in the python:3.11 base.
    """
    stages = _stages(DOCKERFILE.read_text())
    build, runtime = stages[0], stages[-1]
    overrides = {"VENV": str(tmp_path / "venv"), "SRC": str(tmp_path / "src")}
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    workdir = tmp_path
    for keyword, args in build[1:]:
        if keyword == "ARG":
            name, _, default = args.partition("=")
            env[name] = overrides.get(name, _expand(default, env))
        elif keyword == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                env[name] = _expand(value, env)
        elif keyword == "WORKDIR":
            workdir = Path(_expand(args, env))
            assert tmp_path in workdir.parents, f"WORKDIR {workdir} escapes the sandbox"
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, dest = shlex.split(_expand(args, env))
            target = workdir / dest
            for src in sources:
                origin = ROOT / src
                if origin.is_dir():
                    shutil.copytree(
                        origin,
                        target if len(sources) == 1 and not dest.endswith("/") else target / src,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif keyword == "RUN":
            result = subprocess.run(
                ["sh", "-c", args], cwd=workdir, env=env, capture_output=True, text=True
            )
            assert result.returncode == 0, f"RUN {args}\n{result.stdout}\n{result.stderr}"
        else:
            pytest.fail(f"the build stage uses {keyword}, which this test cannot replay")

    venv = Path(overrides["VENV"])
    copied = [args for kw, args in runtime if kw == "COPY" and "--from=build" in args]
    assert copied and _expand(copied[0], {"VENV": str(venv)}).split()[1:] == [str(venv)] * 2
    entrypoint = json.loads(dict(runtime)["ENTRYPOINT"])
    clean_env = {"PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path)}
    for argv in (["--help"], ["run", "--help"]):
        result = subprocess.run(
            [str(venv / "bin" / entrypoint[0]), *argv],
            env=clean_env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert "usage: llm-operator" in result.stdout
    # What `run` imports at start: kopf, the kubernetes client, Prometheus clients.
    for check in (
        ["-c", "import llm_operator.handlers"],
        ["-m", "pip", "check"],
    ):
        result = subprocess.run(
            [str(venv / "bin" / "python"), *check],
            env=clean_env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout + result.stderr
