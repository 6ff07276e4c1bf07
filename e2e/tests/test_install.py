"""The install paths on the real control plane: `helm install`, `kubectl apply -f manifests/`.

`helm install` is followed by the operator running with exactly what the chart gives it:
its ServiceAccount's token, the env of its Deployment and its GPU catalog ConfigMap; an
example then reaches Ready, which proves the RBAC is enough, and verbs the operator never
uses are refused, which proves it is no more than that.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from charts import render_manifests
from helpers import GROUP, PLURAL, VERSION, Cluster, eventually, kubectl
from operator_proc import OperatorProcess, token_kubeconfig

REPO = Path(__file__).resolve().parents[2]
RELEASE = "e2e-helm"
HELM_NS = "llm-operator-e2e-helm"
FULLNAME = f"{RELEASE}-llm-operator"
CRD = f"{PLURAL}.{GROUP}"
A10G_PRICE = 0.777  # USD/h in the test's catalog (the built-in one says 1.006)


def helm(cluster: Cluster, *args: str) -> str:
    cmd = [render_manifests.find_helm(), "--kubeconfig", cluster.kubeconfig, *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def custom_catalog(tmp_path: Path) -> Path:
    """The built-in GPU catalog with one price changed."""
    path = REPO / "operator" / "llm_operator" / "catalog" / "data" / "gpus.yaml"
    doc = yaml.safe_load(path.read_text())
    entries = doc["gpus"] if isinstance(doc, dict) else doc
    a10g = next(e for e in entries if e["name"] == "A10G-24GB")
    a10g["pricePerHour"] = A10G_PRICE
    out = tmp_path / "gpus.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def adopt_crd(ext: client.ApiextensionsV1Api) -> None:
    """Let the release take over the CRD the session installed (Helm's adoption rules)."""
    ext.patch_custom_resource_definition(
        CRD,
        {
            "metadata": {
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {
                    "meta.helm.sh/release-name": RELEASE,
                    "meta.helm.sh/release-namespace": HELM_NS,
                },
            }
        },
    )


def forbidden(call: Any) -> bool:
    try:
        call()
    except ApiException as exc:
        return exc.status == 403
    return False


def test_helm_install_gives_the_operator_all_it_needs_and_no_more(
    cluster: Cluster,
    crds: list[str],
    operator_process: OperatorProcess,
    custom: client.CustomObjectsApi,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
    tmp_path: Path,
) -> None:
    ext = client.ApiextensionsV1Api(cluster.api)
    adopt_crd(ext)
    helm(
        cluster, "upgrade", "--install", RELEASE, str(REPO / "charts" / "llm-operator"),
        "--namespace", HELM_NS, "--create-namespace",
        "--set-file", f"gpuCatalog.content={custom_catalog(tmp_path)}",
    )  # fmt: skip
    operator_process.stop()  # one operator at a time
    op: OperatorProcess | None = None
    try:
        # What the chart's Deployment would run with: its env, its mounted catalog.
        deployment = apps.read_namespaced_deployment(FULLNAME, HELM_NS)
        container = deployment.spec.template.spec.containers[0]
        env = {e.name: e.value for e in container.env or [] if e.value is not None}
        catalog_cm = core.read_namespaced_config_map(f"{FULLNAME}-gpu-catalog", HELM_NS)
        local_catalog = tmp_path / "mounted-gpus.yaml"
        local_catalog.write_text(catalog_cm.data["gpus.yaml"])
        assert env["LLM_OPERATOR_GPU_CATALOG"].endswith("gpus.yaml"), env
        env["LLM_OPERATOR_GPU_CATALOG"] = str(local_catalog)
        env.pop("LLM_OPERATOR_HEALTH_PORT", None)  # free ports are picked locally
        env.pop("LLM_OPERATOR_METRICS_PORT", None)
        kubeconfig = token_kubeconfig(
            cluster.kubeconfig, cluster.api, tmp_path / "kubeconfig", (HELM_NS, FULLNAME)
        )
        op = OperatorProcess(kubeconfig, tmp_path / "operator.log", extra_env=env)
        op.start()

        doc = yaml.safe_load((REPO / "examples" / "llama-3.1-8b-a10g-vllm.yaml").read_text())
        doc["metadata"]["namespace"] = namespace
        # The example names its token Secret; the operator checks it exists (with `get`).
        secret = doc["spec"]["model"]["hfTokenSecret"]["name"]
        core.create_namespaced_secret(
            namespace,
            client.V1Secret(metadata=client.V1ObjectMeta(name=secret), string_data={"token": "x"}),
        )
        name = doc["metadata"]["name"]
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)

        def ready() -> dict[str, Any]:
            obj: dict[str, Any] = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
            conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
            assert conds.get("Ready", {}).get("status") == "True", obj.get("status")
            return obj

        obj = eventually(ready, timeout=90, interval=1, description="Ready with the chart's RBAC")
        assert obj["status"]["plan"]["costPerHour"] == pytest.approx(A10G_PRICE)

        sa = config.new_client_from_config(config_file=str(kubeconfig))
        sa_core, sa_rbac = client.CoreV1Api(sa), client.RbacAuthorizationV1Api(sa)
        assert sa_core.list_node().items  # what it needs ...
        assert forbidden(lambda: sa_core.list_secret_for_all_namespaces())  # ... and no more
        assert forbidden(lambda: sa_core.delete_node("cpu-0"))
        assert forbidden(lambda: sa_core.create_namespace({"metadata": {"name": "nope"}}))
        assert forbidden(
            lambda: sa_rbac.create_cluster_role_binding(
                {
                    "metadata": {"name": "escalate"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "cluster-admin",
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": HELM_NS}
                    ],
                }
            )
        )
    finally:
        if op is not None:
            op.stop()
        helm(cluster, "uninstall", RELEASE, "--namespace", HELM_NS)

    # helm uninstall removes the release, but keeps the CRD (crds.keep) and so every
    # LLMDeployment in the cluster.
    ext.read_custom_resource_definition(CRD)
    custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    selector = f"app.kubernetes.io/instance={RELEASE}"

    def release_gone() -> bool:
        rbac = client.RbacAuthorizationV1Api(cluster.api)
        assert not rbac.list_cluster_role(label_selector=selector).items
        assert not rbac.list_cluster_role_binding(label_selector=selector).items
        assert not apps.list_namespaced_deployment(HELM_NS, label_selector=selector).items
        assert not core.list_namespaced_config_map(HELM_NS, label_selector=selector).items
        assert not core.list_namespaced_service_account(HELM_NS, label_selector=selector).items
        return True

    eventually(release_gone, timeout=30, description="the release's objects are gone")


def test_reapplying_install_yaml_changes_nothing(cluster: Cluster, crds: list[str]) -> None:
    install = str(REPO / "manifests" / "install.yaml")
    kubectl(cluster.kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", install)

    def versions() -> dict[str, str]:
        # An object with a generation (Deployment, CRD) gets status and controller writes
        # (the Deployment controller's, kubelet-driven rollout progress) that bump its
        # resourceVersion but not its generation: the generation says whether the apply
        # changed the spec; everything else has no status writer, so resourceVersion does.
        listed = json.loads(kubectl(cluster.kubeconfig, "get", "-f", install, "-o", "json"))
        return {
            f"{o['kind']}/{o['metadata']['name']}": str(
                o["metadata"].get("generation", o["metadata"]["resourceVersion"])
            )
            for o in listed["items"]
        }

    before = versions()
    assert len(before) == len([d for d in yaml.safe_load_all(Path(install).read_text()) if d])
    kubectl(cluster.kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", install)
    assert versions() == before
    # and a server-side diff shows nothing to change
    # (kubectl diff exits 1 when there are differences, and kubectl() raises on that)
    kubectl(cluster.kubeconfig, "diff", "--server-side", "--force-conflicts", "-f", install)
