"""Fuzzed LLMDeployment specs on the real apiserver, with the operator running.

A fixed batch drawn by the hypothesis strategy of e2e/fuzz.py (valid to absurd: extreme
numbers, huge and unicode strings, every enum crossed, fields missing, unknown or of the
wrong type, deep nesting in overrides) is created in one namespace. Each refusal must
name the field and the fix, nothing may be created for a refused spec, every planned
spec's pods must pass Pod Security admission, and the operator must neither crash nor
loop (e2e/fuzz.py says how each is checked). bench/fuzz_specs.py runs the same with as
many specs as asked.
"""

from __future__ import annotations

import pytest
from kubernetes import client

import fuzz
from helpers import Cluster
from operator_proc import OperatorProcess

SEED = 20260601  # the batch is the same on every run (and hypothesis version)
SPECS = 100
RECONCILE_INTERVAL_S = 30.0  # conftest's operator_process: LLM_OPERATOR_RECONCILE_INTERVAL


def test_fuzzed_specs_are_refused_by_field_or_planned_safely(
    capsys: pytest.CaptureFixture[str],
    cluster: Cluster,
    operator: OperatorProcess,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    cases = fuzz.draw_cases(SPECS, SEED)
    mark = operator.log_size()
    stages: list[str] = []
    with fuzz.pod_security_namespaces(core) as levels:
        report = fuzz.run_batch(
            cluster.api,
            namespace,
            levels,
            cases,
            judge_timeout=45,
            quiet_s=10,
            op=operator,
            reconcile_interval_s=RECONCILE_INTERVAL_S,
            progress=stages.append,
        )
    report.operator += fuzz.operator_violations(operator, mark)
    with capsys.disabled():  # the outcome classes, on the terminal whatever happens
        print(f"\n{len(cases)} fuzzed specs (seed {SEED}): {'; '.join(stages)}")
        print(report.table())
    assert not report.violations, "\n\n".join(report.violations)
    outcomes = {r.outcome for r in report.results}
    # The batch reaches every outcome, so each property above was exercised.
    assert {fuzz.ADMISSION, fuzz.INVALID, fuzz.PLANNED} <= outcomes, report.table()
