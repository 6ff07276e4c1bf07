"""Run the real operator process against the e2e cluster, as its own ServiceAccount.

The e2e fixtures use this to prove what a user installs works: the RBAC objects come from
`manifests/install.yaml` (generated from the Helm chart), the operator authenticates with a
token the TokenRequest API issues for the chart's ServiceAccount, and `llm-operator run`
is the console script the image runs. Nothing here is product logic.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.dynamic import DynamicClient

from charts import render_manifests

REPO = Path(__file__).resolve().parent.parent
INSTALL_YAML = REPO / "manifests" / "install.yaml"
# What the operator's identity consists of; the Deployment itself is not applied (the
# process runs here, outside the cluster, with the same identity and settings).
IDENTITY_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                  "RoleBinding")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def identity_objects(path: Path = INSTALL_YAML) -> list[dict[str, Any]]:
    """The Namespace, ServiceAccount and RBAC objects of the install manifest."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make manifests`")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return [d for d in docs if d["kind"] in IDENTITY_KINDS]


def chart_objects(*helm_args: str) -> list[dict[str, Any]]:
    """The chart rendered with extra `helm template` arguments (e.g. --set a=b)."""
    rendered = render_manifests.helm_template(render_manifests.find_helm(), extra=list(helm_args))
    return [d for d in yaml.safe_load_all(rendered) if d]


def apply_all(api: client.ApiClient, objects: list[dict[str, Any]]) -> None:
    """Server-side apply under the field manager `e2e` (re-applying less removes the rest)."""
    dynamic = DynamicClient(api)
    for obj in objects:
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        meta = obj["metadata"]
        resource.server_side_apply(
            body=obj,
            name=meta["name"],
            namespace=meta.get("namespace") if resource.namespaced else None,
            field_manager="e2e",
            force_conflicts=True,
        )


def install_identity(api: client.ApiClient) -> tuple[str, str]:
    """Apply the operator's identity objects of install.yaml; return its ServiceAccount."""
    objects = identity_objects()
    apply_all(api, objects)
    sa = next(o for o in objects if o["kind"] == "ServiceAccount")
    return sa["metadata"]["namespace"], sa["metadata"]["name"]


def token_kubeconfig(
    admin_kubeconfig: str,
    api: client.ApiClient,
    out: Path,
    service_account: tuple[str, str] | None = None,
) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount (bearer token).

    Args:
        admin_kubeconfig: the cluster's admin kubeconfig (server and CA are copied).
        api: an admin client.
        out: where to write the kubeconfig.
        service_account: (namespace, name); default: install.yaml's, applied first.
    """
    namespace, name = service_account or install_identity(api)
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=6 * 3600)
    )
    token = (
        client.CoreV1Api(api)
        .create_namespaced_service_account_token(name, namespace, request)
        .status.token
    )
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    user = f"system:serviceaccount:{namespace}:{name}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": cluster["name"], "user": user}}],
        "current-context": user,
    }
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out


@dataclass
class OperatorProcess:
    """`llm-operator run` as a child process with its own log file."""

    kubeconfig: Path
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    health_port: int = 0
    metrics_port: int = 0
    log_format: str = "plain"  # Kopf's: plain (messages only) or json (with levels)
    # A cgroup directory (`MemoryCgroup.path`) the process starts in, e.g. to hold it to
    # the chart's memory limit; None: this process's own.
    cgroup: Path | None = None

    def _join_cgroup(self) -> None:
        """In the child, before exec: move itself into `cgroup` (its memory counts there)."""
        assert self.cgroup is not None
        (self.cgroup / "cgroup.procs").write_text(str(os.getpid()))

    def start(self, timeout: float = 60.0) -> None:
        """Start the operator and wait until its liveness endpoint answers."""
        self.health_port, self.metrics_port = free_port(), free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "LLM_OPERATOR_HEALTH_PORT": str(self.health_port),
            "LLM_OPERATOR_METRICS_PORT": str(self.metrics_port),
            # NOTE: no test reaches the Hugging Face Hub: a model the catalog does not know
            # is refused (InvalidSpec) rather than fetched.
            "HF_HUB_OFFLINE": "1",
            **self.extra_env,
        }
        exe = Path(sys.executable).with_name("llm-operator")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(exe), "run", "--log-format", self.log_format],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
            preexec_fn=None if self.cgroup is None else self._join_cgroup,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"llm-operator exited with {self.proc.returncode}:\n{self.tail()}"
                )
            try:
                url = f"http://127.0.0.1:{self.health_port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llm-operator not healthy after {timeout:g}s:\n{self.tail()}")
            time.sleep(0.5)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stop the operator (SIGKILL: a crash, mid-whatever it was doing)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def metrics(self) -> str:
        """The operator's own Prometheus exposition text."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def log_size(self) -> int:
        """A mark in the log: its size now (see `log_since`)."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, mark: int) -> str:
        """What the operator logged after `mark`."""
        with self.log_path.open("rb") as log:
            log.seek(mark)
            return log.read().decode(errors="replace")

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
