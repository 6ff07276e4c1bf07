"""Fuzz LLMDeployment specs on the local cluster with the real operator (many specs).

    python bench/fuzz_specs.py [--specs 1000] [--seed N] [--batch 250] [--quiet-seconds 10]

The generator and the checks are e2e/fuzz.py's, as in e2e/tests/test_fuzz_specs.py, with
as many specs as asked and a seed (printed; `--seed` repeats a run). The cluster is the
one of $E2E_STATE_DIR (default e2e/.state: `make cluster-up`), else $KUBECONFIG; the CRD is
installed from crds/ and `llm-operator run` runs here as the chart's ServiceAccount (safety
pass every `--reconcile-interval` s; the autoscaler reads $E2E_PROMETHEUS_URL when set).
Each batch gets its own namespace, deleted (and waited for) before the next, so the kwok
nodes are free again. Do not run it while e2e tests run on the same cluster: two operators
would reconcile the same objects.

Prints the outcome classes, the fields refusals named, the violations (0 when every
property held; exit status 1 otherwise) and the elapsed time.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "e2e"), str(REPO)]

import fuzz  # noqa: E402
from helpers import GROUP, PLURAL, eventually  # noqa: E402
from operator_proc import OperatorProcess, apply_all, token_kubeconfig  # noqa: E402


def kubeconfig_path() -> str:
    state = os.environ.get("E2E_STATE_DIR")
    if state or not os.environ.get("KUBECONFIG"):
        return str(Path(state or REPO / "e2e" / ".state") / "kubeconfig")
    return os.environ["KUBECONFIG"]


def install_crds(api: client.ApiClient) -> None:
    docs = [
        d for p in sorted((REPO / "crds").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
    ]
    apply_all(api, [d for d in docs if d and d.get("kind") == "CustomResourceDefinition"])
    ext = client.ApiextensionsV1Api(api)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        conditions = (crd.status.conditions if crd.status else None) or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    eventually(established, timeout=30, description="CRD established")


def new_namespace(core: client.CoreV1Api) -> str:
    """A fresh namespace for one batch, with its default ServiceAccount."""
    name = f"fz-{uuid.uuid4().hex[:8]}"
    meta = client.V1ObjectMeta(name=name, labels={"llm-operator.io/e2e": "true"})
    core.create_namespace(client.V1Namespace(metadata=meta))
    eventually(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        description=f"default ServiceAccount in {name}",
    )
    return name


def delete_namespace(core: client.CoreV1Api, name: str) -> None:
    """Delete, and wait until it is gone (the operator removes its finalizers)."""
    core.delete_namespace(name, propagation_policy="Background")

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    try:
        eventually(gone, timeout=300, interval=2, description=f"namespace {name} deleted")
    except AssertionError as err:
        print(f"warning: {err}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--specs", type=int, default=1000, help="how many specs to try")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--batch", type=int, default=250, help="specs per namespace")
    parser.add_argument("--quiet-seconds", type=float, default=10.0)
    parser.add_argument("--judge-timeout", type=float, default=180.0)
    parser.add_argument("--reconcile-interval", type=float, default=60.0)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"seed {seed} (python bench/fuzz_specs.py --specs {args.specs} --seed {seed})")

    started = time.monotonic()
    cases = fuzz.draw_cases(args.specs, seed)
    print(f"drew {len(cases)} specs in {time.monotonic() - started:.1f} s", file=sys.stderr)
    kubeconfig = kubeconfig_path()
    api = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api)
    install_crds(api)
    work = Path(tempfile.mkdtemp(prefix="fuzz-specs-"))
    env = {
        "LLM_OPERATOR_RECONCILE_INTERVAL": f"{args.reconcile_interval:g}",
        "LLM_OPERATOR_AUTOSCALE_INTERVAL": "5",
        "LLM_OPERATOR_QUERY_TIMEOUT": "2",
    }
    if os.environ.get("E2E_PROMETHEUS_URL"):
        env["LLM_OPERATOR_PROMETHEUS_URL"] = os.environ["E2E_PROMETHEUS_URL"]
    op = OperatorProcess(
        token_kubeconfig(kubeconfig, api, work / "kubeconfig"), work / "operator.log", extra_env=env
    )
    op.start()
    print(f"operator log: {op.log_path}", file=sys.stderr)
    reports: list[fuzz.Report] = []
    try:
        with fuzz.pod_security_namespaces(core) as levels:
            for first in range(0, len(cases), args.batch):
                namespace = new_namespace(core)
                try:
                    reports.append(
                        fuzz.run_batch(
                            api,
                            namespace,
                            levels,
                            cases[first : first + args.batch],
                            judge_timeout=args.judge_timeout,
                            quiet_s=args.quiet_seconds,
                            op=op,
                            reconcile_interval_s=args.reconcile_interval,
                            start_index=first,
                            progress=lambda line, f=first: print(f"[{f}] {line}", file=sys.stderr),
                        )
                    )
                finally:
                    delete_namespace(core, namespace)
        operator = fuzz.operator_violations(op, 0)
    finally:
        op.stop()

    total = fuzz.Report(
        [r for rep in reports for r in rep.results],
        elapsed_s=time.monotonic() - started,
        operator=[*operator, *(v for rep in reports for v in rep.operator)],
        quiet={f"batch {i}": rep.quiet for i, rep in enumerate(reports)},
    )
    print(f"\n## Fuzzed specs (seed {seed})\n")
    print(total.table())
    for violation in total.violations:
        print(f"\n{violation}")
    print(f"\nelapsed {total.elapsed_s:.0f} s; operator log {op.log_path}")
    return 1 if total.violations else 0


if __name__ == "__main__":
    sys.exit(main())
