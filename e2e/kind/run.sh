#!/usr/bin/env bash
# Run the e2e suite on a kind cluster (for people with Docker; the local kwok cluster of
# e2e/cluster is the default and needs no Docker).
#
#   1. kind creates a cluster from e2e/kind/cluster.yaml,
#   2. kwok (pinned, same version as the local cluster) is installed in it with its
#      default "fast" pod/node stages, so pods on fake nodes become Running + Ready,
#   3. the real kind node gets a NoSchedule taint, so test pods only land on fake nodes,
#   4. the fake nodes of e2e/cluster/nodes.yaml are applied (same generator as locally),
#   5. pytest runs the suite with E2E_KUBECONFIG; the conftest then starts only the
#      engine simulator and Prometheus on the host (cluster.sh obs-up),
#   6. the kind cluster is deleted unless E2E_KEEP_CLUSTER=1.
#
# Needs docker, kind and kubectl on PATH (kubectl also from `make tools`).
# Environment: E2E_KIND_NAME (llm-operator-e2e), extra pytest args as arguments.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
NAME="${E2E_KIND_NAME:-llm-operator-e2e}"
STATE="${E2E_STATE_DIR:-$REPO/e2e/.state}"
KUBECONFIG_KIND="$STATE/kind-kubeconfig"
PYTHON="${E2E_PYTHON:-$REPO/.venv/bin/python}"
KWOK_VERSION=v0.8.0 # keep in step with e2e/cluster/tools.sh
KWOK_RELEASE="https://github.com/kubernetes-sigs/kwok/releases/download/$KWOK_VERSION"

BIN_DIR="$("$REPO/e2e/cluster/tools.sh" --print-bin-dir)"
export PATH="$PATH:$BIN_DIR" # a kubectl on PATH wins over the cached one

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is required" >&2; exit 1; }
done
mkdir -p "$STATE"
k() { kubectl --kubeconfig "$KUBECONFIG_KIND" "$@"; }

cleanup() {
  if [[ "${E2E_KEEP_CLUSTER:-}" != "1" ]]; then
    kind delete cluster --name "$NAME" --kubeconfig "$KUBECONFIG_KIND" || true
  else
    echo "e2e-kind: keeping kind cluster $NAME (KUBECONFIG=$KUBECONFIG_KIND)"
  fi
}

if ! kind get clusters 2>/dev/null | grep -qx "$NAME"; then
  kind create cluster --name "$NAME" --config "$HERE/cluster.yaml" \
    --kubeconfig "$KUBECONFIG_KIND" --wait 120s
else
  kind get kubeconfig --name "$NAME" >"$KUBECONFIG_KIND"
fi
trap cleanup EXIT

k apply -f "$KWOK_RELEASE/kwok.yaml"
k apply -f "$KWOK_RELEASE/stage-fast.yaml"
k -n kube-system rollout status deployment/kwok-controller --timeout=180s

# Only kwok's fake nodes take test pods.
for node in $(k get nodes -l '!type' -o name); do
  k taint "$node" llm-operator.io/real-node=true:NoSchedule --overwrite
done

"$PYTHON" "$REPO/e2e/cluster/nodes.py" "$REPO/e2e/cluster/nodes.yaml" | k apply -f -
k wait --for=condition=Ready node -l type=kwok --timeout=120s

E2E_KUBECONFIG="$KUBECONFIG_KIND" "$REPO/.venv/bin/pytest" "$REPO/e2e" "$@"
