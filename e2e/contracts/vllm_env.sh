#!/usr/bin/env bash
# Build (or reuse) the virtualenv in which e2e/contracts/vllm_check.py runs vLLM v0.12.0's
# own argument parser and config classes (the pinned image is vllm/vllm-openai:v0.12.0).
#
# Where:  ${LLM_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-operator}/vllm-v0.12.0/
#         (outside the checkout, so a fresh clone on the same machine reuses it). A stamp
#         records the lock file, this script and the Python it was built from; a matching
#         stamp makes a warm run a no-op (well under a second).
# What:   the packages of vllm-0.12.0-requirements.txt, pinned with hashes, installed with
#         --no-deps by uv (from PyPI, pinned below): vllm 0.12.0, torch 2.9.0 and the CUDA
#         runtime wheels torch links against, and the Python packages vLLM imports up to
#         `create_engine_config`. The lock is vLLM 0.12.0's dependency tree resolved as PyPI
#         stood when vLLM 0.12.0 was published (2025-12-02, as the image was built), less
#         the GPU-kernel and media packages that nothing before the engine start imports
#         (EXCLUDED below; vllm_check.py gives the same answers with and without them).
#         ~7 GiB on disk; a full `pip install vllm==0.12.0` is ~9-10 GiB.
# Plus:   cuda-stub/libcuda.so.1, a stub of the CUDA driver functions that vLLM's compiled
#         extensions import (the driver is not a pip package and a GPU-less machine has
#         none; this is what the CUDA toolkit's stubs/libcuda.so is for). Built with cc from
#         the symbol list `nm` reads out of those extensions; every function returns
#         CUDA_ERROR_NO_DEVICE (100) and none is called by the checks.
# Check:  a smoke test (one case vLLM must accept, one it must refuse) runs before the
#         stamp is written, so a broken environment is never reused.
#
# Needs:  python3.11 (PYTHON), cc and nm (Debian: gcc, binutils), network access to PyPI.
# Usage:  e2e/contracts/vllm_env.sh                 build or reuse; prints the env's python
#         e2e/contracts/vllm_env.sh --print-python  the python path, building nothing
#         e2e/contracts/vllm_env.sh --lock          regenerate vllm-0.12.0-requirements.txt
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${LLM_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-operator}"
VLLM_VERSION=0.12.0
ENV_DIR="$CACHE/vllm-v$VLLM_VERSION"
STAMP="$ENV_DIR/.contract-stamp"
LOCK="$HERE/vllm-$VLLM_VERSION-requirements.txt"
PYTHON="${PYTHON:-python3.11}"
UV_VERSION=0.13.9
# PyPI as it stood when vllm 0.12.0 was uploaded (2025-12-02 UTC).
EXCLUDE_NEWER=2025-12-03
# Not installed (see the header). triton: vLLM disables it without a GPU driver anyway
# ("Triton is installed but 0 active driver(s) found"). The rest are GPU kernels and their
# CUDA bindings (flashinfer, cutlass DSL, cupy, cuda-python), the n-gram proposer's JIT
# (numba), media decoding (opencv, torchaudio, torchvision), scipy, ninja, and the CUDA
# libraries torch only loads on first use (cusolver, nvrtc, nvtx).
EXCLUDED=(
  triton flashinfer-python apache-tvm-ffi nvidia-cudnn-frontend nvidia-cutlass-dsl
  cupy-cuda12x fastrlock cuda-bindings cuda-pathfinder cuda-python numba llvmlite
  opencv-python-headless torchaudio torchvision scipy ninja
  nvidia-cusolver-cu12 nvidia-cuda-nvrtc-cu12 nvidia-nvtx-cu12
)

log() { printf '[vllm-env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

case "${1:-}" in
  --print-python) echo "$ENV_DIR/bin/python"; exit 0 ;;
  --lock)
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$PYTHON" -m venv "$tmp/uv"
    "$tmp/uv/bin/pip" install --quiet "uv==$UV_VERSION"
    args=()
    for pkg in "${EXCLUDED[@]}"; do args+=(--no-emit-package "$pkg"); done
    echo "vllm==$VLLM_VERSION" | "$tmp/uv/bin/uv" pip compile - --quiet \
      --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
      --exclude-newer "$EXCLUDE_NEWER" --generate-hashes "${args[@]}" \
      --custom-compile-command "e2e/contracts/vllm_env.sh --lock" -o "$LOCK"
    log "wrote $LOCK"
    exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-python|--lock]" >&2; exit 2 ;;
esac

want="$(cat "$LOCK" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16) $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "$ENV_DIR/bin/python"
  exit 0
fi

for tool in cc nm; do
  command -v "$tool" >/dev/null || {
    echo "vllm_env.sh: '$tool' is required (Debian: apt-get install gcc binutils)" >&2
    exit 1
  }
done

mkdir -p "$CACHE"
# One builder at a time; a second waits and then finds the stamp.
exec 9>"$CACHE/vllm-v$VLLM_VERSION.lock"
flock 9
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "$ENV_DIR/bin/python"
  exit 0
fi

start=$SECONDS
log "building $ENV_DIR (vllm $VLLM_VERSION; several GiB from PyPI, a few minutes cold)"
rm -rf "$ENV_DIR"
"$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
# NOTE: the uv cache sits next to the env so its files are hard-linked, not copied.
UV_CACHE_DIR="$CACHE/uv-cache" "$ENV_DIR/bin/uv" pip install --quiet \
  --python "$ENV_DIR/bin/python" --no-deps --require-hashes -r "$LOCK"
log "packages installed ($((SECONDS - start)) s)"

# The CUDA driver stub: every cu* function that an extension needing libcuda.so.1 imports.
stub="$ENV_DIR/cuda-stub"
mkdir -p "$stub"
site="$("$ENV_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
{
  echo "/* Generated by e2e/contracts/vllm_env.sh: CUDA driver stub, no GPU here. */"
  for so in "$site"/vllm/*.so; do
    readelf -d "$so" 2>/dev/null | grep -q 'libcuda\.so\.1' || continue
    nm -D --undefined-only "$so" | awk '$1 == "U" && $2 ~ /^cu[A-Z]/ {print $2}'
  done | sort -u | while read -r sym; do
    echo "int $sym(void) { return 100; /* CUDA_ERROR_NO_DEVICE */ }"
  done
} > "$stub/stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so.1" "$stub/stub.c"

log "smoke test"
smoke='[
 {"id": "accept", "argv": ["m", "--max-model-len", "4096"],
  "config_dir_files": {"config.json": {"architectures": ["LlamaForCausalLM"],
    "model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
    "max_position_embeddings": 4096, "vocab_size": 1024, "torch_dtype": "bfloat16"}}},
 {"id": "refuse", "argv": ["m", "--no-such-flag"]}
]'
answer="$(echo "$smoke" | "$ENV_DIR/bin/python" "$HERE/vllm_check.py")"
echo "$answer" | "$ENV_DIR/bin/python" -c '
import json, sys
got = {r["id"]: r for r in json.load(sys.stdin)}
assert got["accept"]["ok"], got["accept"]
assert not got["refuse"]["ok"] and got["refuse"]["stage"] == "parse", got["refuse"]
' || { echo "vllm_env.sh: smoke test failed: $answer" >&2; exit 1; }

echo "$want" > "$STAMP"
log "ready in $((SECONDS - start)) s: $(du -sh "$ENV_DIR" | cut -f1)"
echo "$ENV_DIR/bin/python"
