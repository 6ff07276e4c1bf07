"""Check a llama-server invocation with llama-server's own argument parser.

The binary is the one e2e/node/build.sh builds from the pinned llama.cpp release (the
real node runs it in the engine image). llama.cpp's common argument parser
(common/arg.cpp) reads the LLAMA_ARG_* environment and then every argument, refusing an
unknown flag ("error: invalid argument: ...") or a value its handler rejects ("error while
handling argument ...", e.g. an unsupported --cache-type-k); `--help`, appended last, makes
it print the usage and exit 0 once everything before it parsed, before any model is
opened or downloaded. So exit 0 means the engine accepts the invocation as written.

    python e2e/contracts/llamacpp_check.py ARG...   (prints a JSON result)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "e2e" / "node" / "build.sh"


def binary() -> Path:
    """Where e2e/node/build.sh puts the pinned llama-server (it may not be built yet)."""

    def ask(flag: str) -> str:
        return subprocess.run(
            [str(BUILD_SH), flag], capture_output=True, text=True, check=True
        ).stdout

    found = dict(line.split("=", 1) for line in ask("--print-vars").splitlines() if "=" in line)
    base = Path(ask("--print-dir").strip())
    return base / f"llama.cpp-b{found['LLAMACPP_BUILD']}" / "bin" / "llama-server"


def check(
    argv: Sequence[str], env: Mapping[str, str], server: Path | None = None
) -> dict[str, Any]:
    """{"ok": bool, "stage": "parse", "error": the parser's message} for one invocation,
    run with exactly `env` (the container's) in an empty working directory."""
    server = server or binary()
    with tempfile.TemporaryDirectory() as home:
        proc = subprocess.run(
            [str(server), *argv, "--help"],
            env={**env, "HOME": home},
            cwd=home,
            capture_output=True,
            text=True,
            timeout=60,
        )
    if proc.returncode == 0:
        return {"ok": True, "stage": "parse", "error": ""}
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    return {"ok": False, "stage": "parse", "error": lines[0] if lines else proc.stderr[-500:]}


if __name__ == "__main__":
    print(json.dumps(check(sys.argv[1:], {})))
