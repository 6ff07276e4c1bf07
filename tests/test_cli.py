"""The `llmctl` contract: plan, estimate, crd, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_operator.cli import ESTIMATE_KEYS, main
from tests.conftest import EXAMPLES, ROOT


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


ESTIMATE = [
    "estimate", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--quantization", "bf16",
    "--gpu", "H100", "--gpus", "1", "--tensor-parallel", "1", "--engine", "vllm",
    "--input-tokens", "1000", "--output-tokens", "1000", "--concurrency", "64",
    "--output", "json",
]  # fmt: skip


PLAN_KEYS = (
    "gpu",
    "gpusPerReplica",
    "tensorParallel",
    "pipelineParallel",
    "nodesPerReplica",
    "engine",
    "quantization",
    "maxModelLen",
    "maxConcurrentSequences",
    "ttftMs",
    "tpotMs",
    "outputTokensPerSecond",
    "costPerHour",
    "costPerMillionOutputTokens",
)


def test_estimate_prints_exactly_the_contract_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *ESTIMATE)
    body = json.loads(out)
    assert code == 0
    assert list(body) == list(ESTIMATE_KEYS)
    assert body["fits"] is True
    assert body["kvCacheBytesPerToken"] == 2 * 32 * 8 * 128 * 2
    assert body["maxConcurrentSequences"] >= 64
    assert body["outputTokensPerSecond"] > 0
    cost = body["costPerHour"] * 1e6 / (body["outputTokensPerSecond"] * 3600)
    assert body["costPerMillionOutputTokens"] == pytest.approx(cost, rel=1e-3)


def test_estimate_reports_when_it_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a if a != "meta-llama/Llama-3.1-8B-Instruct" else "llama-3.1-70b" for a in ESTIMATE]
    code, out, _ = run(capsys, *argv)
    body = json.loads(out)
    assert code == 0
    assert body["fits"] is False
    assert body["weightsGiBPerGpu"] > 100


@pytest.mark.parametrize(
    ("flag", "bad", "hint"),
    [
        ("--model", "meta-llama/Llama-3.1-8B-Instrukt", "meta-llama/Llama-3.1-8B-Instruct"),
        ("--gpu", "H10", "H100"),
        ("--quantization", "bf61", "bf16"),
    ],
)
def test_unknown_names_exit_2_with_closest(
    capsys: pytest.CaptureFixture[str], flag: str, bad: str, hint: str
) -> None:
    argv = list(ESTIMATE)
    argv[argv.index(flag) + 1] = bad
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert flag in err and hint in err


def test_plan_json_has_status_fields_alternatives_and_rejections(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(
        capsys, "plan", "--model", "llama-3.1-70b", "--quantization", "fp8",
        "--input-tokens", "1000", "--output-tokens", "200", "--concurrency", "32",
        "--output", "json",
    )  # fmt: skip
    body = json.loads(out)
    assert code == 0
    for key in PLAN_KEYS:
        assert key in body
    assert body["alternatives"]
    assert all({"candidate", "reason"} <= set(r) for r in body["rejected"])


def test_plan_with_nothing_feasible_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "plan", "--model", "llama-3.1-405b", "--quantization", "fp16", "--gpu", "A10G"
    )
    assert code == 1
    assert "no feasible plan" in out and "usable per device" in out


def test_plan_file_with_bad_field_names_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    source = next(p for p in EXAMPLES if "8b-a10g" in p.name).read_text()
    assert "maxReplicas: 4" in source
    bad.write_text(source.replace("maxReplicas: 4", "maxReplicas: 0"))
    code, _, err = run(capsys, "plan", "-f", str(bad))
    assert code == 2
    assert "spec.scaling" in err


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: Path(p).stem)
def test_plan_table_for_each_example(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    code, out, _ = run(capsys, "plan", "-f", str(path))
    assert code == 0
    assert "why:" in out or "*" in out


def test_console_script_and_crd_command() -> None:
    llmctl = Path(sys.executable).parent / "llmctl"
    proc = subprocess.run([llmctl, "crd"], capture_output=True, text=True, check=True)
    crd_file = ROOT / "crds" / "serving.llm-operator.io_llmdeployments.yaml"
    assert proc.stdout == crd_file.read_text()


def test_render_prints_applyable_documents(capsys: pytest.CaptureFixture[str]) -> None:
    path = next(p for p in EXAMPLES if "8b-a10g" in p.name)
    code, out, _ = run(capsys, "render", "-f", str(path))
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert code == 0
    assert [d["kind"] for d in docs][:2] == ["Deployment", "Service"]
    args = docs[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--max-model-len" in args


def test_a_reader_that_goes_away_is_not_a_crash() -> None:
    """`llmctl render ... | head -1`: the closed pipe ends llmctl quietly, no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_operator.cli", "render", "-f", str(EXAMPLES[0])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # before llmctl has written anything: its first write hits EPIPE
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141
    assert b"Traceback" not in err
