#!/usr/bin/env bash
# Build (or reuse) the pinned binaries the local cluster runs on.
#
# Every binary comes from the Go module proxy through a wrapper module in
# e2e/cluster/go/<group>/ (go.mod + go.sum are committed; they pin the versions).
# Output goes to a cache OUTSIDE the checkout so a fresh clone on the same machine
# reuses it:   ${LLM_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-operator}/bin
# A stamp per binary records what it was built from; a binary whose stamp matches is
# skipped, so a warm run takes well under a second.
# CRDs shipped inside a pinned module (LeaderWorkerSet) are copied the same way, with
# the same stamps, to <cache>/crds; tests/test_render.py and cluster.sh read them there.
# The real e2e node's containerd is a group here too; its llama-server, pause program,
# images and model are e2e/node/build.sh's (group "node"), cached next to the binaries.
#
# Usage: e2e/cluster/tools.sh [--print-bin-dir|--print-crd-dir] [group...]
#        (groups: etcd kwok k8s helm lws lws-crds prometheus toxiproxy containerd node; default: all but
#        lws-crds, which lws includes, and without containerd and node when
#        E2E_REAL_NODE=0)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${LLM_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-operator}"
BIN_DIR="$CACHE/bin"
CRD_DIR="$CACHE/crds"
STAMP_DIR="$CACHE/stamps"

case "${1:-}" in
  --print-bin-dir) echo "$BIN_DIR"; exit 0 ;;
  --print-crd-dir) echo "$CRD_DIR"; exit 0 ;;
esac

# Pinned versions. They must agree with the wrapper go.mod files (checked below).
K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
# NOTE: v0.9.0 is the newest sigs.k8s.io/lws release the module proxy serves here.
LWS_VERSION=v0.9.0
# containerd 2.x (CRI v1, cgroup v1 still supported): the real e2e node's runtime.
CONTAINERD_VERSION=v2.4.2
# Prometheus 3.16.0 (its Go module versions are v0.<major><minor>.<patch>): Debian's
# package is built without the Kubernetes service discovery the e2e scrape uses.
PROMETHEUS_VERSION=v0.316.0
TOXIPROXY_VERSION=v2.5.0

command -v go >/dev/null || { echo "tools.sh: Go is required (go 1.26+)" >&2; exit 1; }
mkdir -p "$BIN_DIR" "$CRD_DIR" "$STAMP_DIR"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
# GOTOOLCHAIN=local: never download a different Go toolchain.
export GOTOOLCHAIN=local

log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

require_pin() { # module dir, module path, version
  grep -qE "^(require)?[[:space:]]*$2 $3( // indirect)?\$" "$HERE/go/$1/go.mod" || {
    echo "tools.sh: $HERE/go/$1/go.mod does not require $2 $3" >&2
    exit 1
  }
}

# The stamp is the pinned version, the wrapper go.sum, the ldflags (and build tags) and
# the Go version: any change to them rebuilds.
stamp_of() { # group version ldflags
  local sum
  sum="$(cat "$HERE/go/$1/go.mod" "$HERE/go/$1/go.sum" | sha256sum | cut -c1-16)"
  printf '%s %s go.sum:%s %s %s\n' "$1" "$2" "$sum" "$(go env GOVERSION)" \
    "$(printf '%s' "$3${TAGS:+ tags:$TAGS}" | sha256sum | cut -c1-16)"
}

# build GROUP VERSION LDFLAGS name=package...   (build tags: TAGS="a b" build ...)
build() {
  local group="$1" version="$2" ldflags="$3"
  shift 3
  local want todo=() names=() spec name
  want="$(stamp_of "$group" "$version" "$ldflags")"
  for spec in "$@"; do
    name="${spec%%=*}"
    if [[ -x "$BIN_DIR/$name" && -f "$STAMP_DIR/$name" && "$(cat "$STAMP_DIR/$name")" == "$want" ]]; then
      log "$name $version: up to date"
    else
      todo+=("${spec#*=}")
      names+=("$name")
    fi
  done
  [[ ${#todo[@]} -eq 0 ]] && return 0
  log "building ${names[*]} ($version) - a cold build takes several minutes"
  local start=$SECONDS tmp
  tmp="$(mktemp -d "$CACHE/build.XXXXXX")"
  (cd "$HERE/go/$group" && go build -trimpath ${TAGS:+-tags "$TAGS"} -ldflags "-s -w $ldflags" \
    -o "$tmp/" "${todo[@]}")
  for name in "${names[@]}"; do
    # go build names a binary after the last path element of its package.
    # (go.etcd.io/etcd/server/v3 builds as "server", the only file of its build).
    local src="$tmp/$name" f
    if [[ ! -f "$src" ]]; then
      for f in "$tmp"/*; do src="$f"; done
    fi
    mv -f "$src" "$BIN_DIR/$name"
    echo "$want" >"$STAMP_DIR/$name"
  done
  rm -rf "$tmp"
  log "built ${names[*]} in $((SECONDS - start))s"
}

build_etcd() {
  require_pin etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  # The package go.etcd.io/etcd/server/v3 is the etcd server's main package ("v3").
  build etcd "$ETCD_VERSION" \
    "" \
    "etcd=go.etcd.io/etcd/server/v3"
}

build_kwok() {
  require_pin kwok sigs.k8s.io/kwok "$KWOK_VERSION"
  build kwok "$KWOK_VERSION" \
    "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$K8S_VERSION" \
    "kwok=sigs.k8s.io/kwok/cmd/kwok" "kwokctl=sigs.k8s.io/kwok/cmd/kwokctl"
}

build_k8s() {
  require_pin k8s k8s.io/kubernetes "$K8S_VERSION"
  local major minor ld="" pkg
  major="${K8S_VERSION#v}"; major="${major%%.*}"
  minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  build k8s "$K8S_VERSION" "$ld" \
    "kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver" \
    "kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager" \
    "kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler" \
    "kubectl=k8s.io/kubernetes/cmd/kubectl" \
    "kubelet=k8s.io/kubernetes/cmd/kubelet" \
    "kube-proxy=k8s.io/kubernetes/cmd/kube-proxy"
}

build_helm() {
  require_pin helm helm.sh/helm/v3 "$HELM_VERSION"
  build helm "$HELM_VERSION" \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    "helm=helm.sh/helm/v3/cmd/helm"
}

# copy_crds GROUP MODULE VERSION file...: copy CRD manifests shipped inside a pinned
# module (paths relative to its root) from the Go module cache to $CRD_DIR.
copy_crds() {
  local group="$1" module="$2" version="$3"
  shift 3
  local want todo=() file dir
  want="$(stamp_of "$group" "$version" "")"
  for file in "$@"; do
    if [[ -f "$CRD_DIR/${file##*/}" && -f "$STAMP_DIR/crd-${file##*/}" &&
      "$(cat "$STAMP_DIR/crd-${file##*/}")" == "$want" ]]; then
      log "${file##*/} $version: up to date"
    else
      todo+=("$file")
    fi
  done
  [[ ${#todo[@]} -eq 0 ]] && return 0
  # `go mod download -json` prints the module's directory in the module cache ("Dir").
  dir="$(cd "$HERE/go/$group" && go mod download -json "$module" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
  [[ -n "$dir" && -d "$dir" ]] || {
    echo "tools.sh: go mod download $module did not give a module directory" >&2
    exit 1
  }
  for file in "${todo[@]}"; do
    # The module cache is read-only; the copy must be writable to be replaced later.
    install -m 0644 "$dir/$file" "$CRD_DIR/${file##*/}"
    echo "$want" >"$STAMP_DIR/crd-${file##*/}"
    log "copied ${file##*/} ($module $version)"
  done
}

build_lws_crds() {
  require_pin lws sigs.k8s.io/lws "$LWS_VERSION"
  # The controller also watches DisaggregatedSets, so the cluster needs both CRDs.
  copy_crds lws sigs.k8s.io/lws "$LWS_VERSION" \
    config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml \
    config/crd/bases/disaggregatedset.x-k8s.io_disaggregatedsets.yaml
}

build_lws() {
  build_lws_crds
  # Its main package is sigs.k8s.io/lws/cmd; the release images call it "manager".
  build lws "$LWS_VERSION" \
    "-X sigs.k8s.io/lws/pkg/version.GitVersion=$LWS_VERSION -X sigs.k8s.io/lws/pkg/version.BuildDate=1970-01-01T00:00:00Z" \
    "lws-controller-manager=sigs.k8s.io/lws/cmd"
}

build_containerd() {
  require_pin containerd github.com/containerd/containerd/v2 "$CONTAINERD_VERSION"
  # Tags and version ldflags as containerd's Makefile sets them (the shim also gets
  # no_grpc there); CGO off, so no btrfs/zfs snapshotters, which node.sh disables anyway.
  local ld="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
  ld+=" -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"
  TAGS="urfave_cli_no_docs" build containerd "$CONTAINERD_VERSION" "$ld" \
    "containerd=github.com/containerd/containerd/v2/cmd/containerd" \
    "ctr=github.com/containerd/containerd/v2/cmd/ctr"
  TAGS="urfave_cli_no_docs no_grpc" build containerd "$CONTAINERD_VERSION" "$ld" \
    "containerd-shim-runc-v2=github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
}

build_prometheus() {
  require_pin prometheus github.com/prometheus/prometheus "$PROMETHEUS_VERSION"
  # Only the service discoveries the e2e config uses (static and file are built in):
  # the build tags of prometheus/plugins/*.go. No web UI assets (the builtinassets tag
  # needs the compiled React app, which the module does not ship): the API and /-/ready,
  # which is all the tests and the operator use, are unaffected.
  local ld="-X github.com/prometheus/common/version.Version=3.16.0"
  ld+=" -X github.com/prometheus/common/version.Branch=HEAD"
  ld+=" -X github.com/prometheus/common/version.BuildDate=19700101-00:00:00"
  TAGS="remove_all_sd enable_kubernetes_sd netgo" build prometheus "$PROMETHEUS_VERSION" "$ld" \
    "prometheus=github.com/prometheus/prometheus/cmd/prometheus"
}

build_toxiproxy() {
  require_pin toxiproxy github.com/Shopify/toxiproxy/v2 "$TOXIPROXY_VERSION"
  build toxiproxy "$TOXIPROXY_VERSION" \
    "-X github.com/Shopify/toxiproxy/v2.Version=${TOXIPROXY_VERSION#v}" \
    "toxiproxy-server=github.com/Shopify/toxiproxy/v2/cmd/server"
}

build_node() {
  "$HERE/../node/build.sh"
}

groups=("$@")
if [[ ${#groups[@]} -eq 0 ]]; then
  groups=(etcd kwok k8s helm lws prometheus toxiproxy)
  [[ "${E2E_REAL_NODE:-1}" == 0 ]] || groups+=(containerd node)
fi
total=$SECONDS
for g in "${groups[@]}"; do
  case "$g" in
    etcd | kwok | k8s | helm | lws | prometheus | toxiproxy | containerd | node) "build_$g" ;;
    lws-crds) build_lws_crds ;;
    *) echo "tools.sh: unknown group $g (etcd kwok k8s helm lws lws-crds prometheus toxiproxy containerd node)" >&2; exit 2 ;;
  esac
done
log "binaries in $BIN_DIR, CRDs in $CRD_DIR ($((SECONDS - total))s)"
