#!/usr/bin/env bash
# The local e2e cluster: a real control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) run by `kwokctl --runtime binary` from the
# binaries e2e/cluster/tools.sh builds, kwok fake GPU nodes (e2e/cluster/nodes.yaml),
# the LeaderWorkerSet CRDs and controller manager (with its admission webhooks), the
# engine metrics simulator (e2e/sim/engine_sim.py), a Prometheus (pinned, tools.sh) that
# scrapes it and discovers the real node's engine pods through the apiserver, and one
# real worker node (e2e/cluster/node.sh: containerd, kubelet, kube-proxy running the
# llama.cpp server for real; E2E_REAL_NODE=0 leaves it out).
# Everything binds to 127.0.0.1 (the real node's pods: a private bridge) and nothing is
# downloaded at `up` time except, once, Debian's packages the real node needs (runc,
# containernetworking-plugins, iptables).
#
#   cluster.sh up        bring everything up (a no-op when it is already up)
#   cluster.sh down      stop everything, leaving no process behind
#   cluster.sh status    what runs (every process, one line each)
#   cluster.sh env       print the environment (KUBECONFIG, E2E_PROMETHEUS_URL, E2E_SIM_URL)
#   cluster.sh kill C    SIGKILL one control plane component (etcd, kube-apiserver,
#                        kube-controller-manager, kube-scheduler): the e2e fault tests
#   cluster.sh start-stopped   start again every control plane component that is not running
#   cluster.sh obs-up KUBECONFIG   only the simulator + Prometheus, for a cluster that
#   cluster.sh obs-down            is not local (kind, a real one)
#
# Environment: E2E_STATE_DIR (default e2e/.state), E2E_CLUSTER_NAME (llm-operator),
# E2E_PROMETHEUS_PORT (9090), E2E_SIM_PORT (9400), E2E_APISERVER_PORT (0 = any free
# port), E2E_PYTHON (.venv/bin/python), LLM_OPERATOR_CACHE (binary cache, see tools.sh),
# E2E_REAL_NODE (1), E2E_NODE_NAME, E2E_NODE_CIDR (see node.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${E2E_STATE_DIR:-$REPO/e2e/.state}"
CLUSTER_NAME="${E2E_CLUSTER_NAME:-llm-operator}"
PROM_PORT="${E2E_PROMETHEUS_PORT:-9090}"
SIM_PORT="${E2E_SIM_PORT:-9400}"
APISERVER_PORT="${E2E_APISERVER_PORT:-0}"
PYTHON="${E2E_PYTHON:-$REPO/.venv/bin/python}"
KUBECONFIG_OUT="$STATE/kubeconfig"
LOGS="$STATE/logs"

BIN_DIR="$("$HERE/tools.sh" --print-bin-dir)"
CRD_DIR="$("$HERE/tools.sh" --print-crd-dir)"
LWS_STATE="$STATE/lws"
export PATH="$BIN_DIR:$PATH"
export KWOK_WORKDIR="$STATE/kwok"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'cluster.sh: %s\n' "$*" >&2; exit 1; }

# `up` names the step it is in, so that a failure says where it happened (any failing
# command, not only die).
STEP=""
step() { STEP="$1"; }
on_exit() {
  local rc=$?
  if [[ $rc -ne 0 && -n "$STEP" ]]; then
    printf 'cluster.sh: FAILED at step "%s" (exit status %s; logs: %s)\n' "$STEP" "$rc" "$LOGS" >&2
  fi
}
trap on_exit EXIT

http_ok() { # url [timeout]
  "$PYTHON" - "$1" "${2:-2}" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}

port_busy() { # port
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
finally:
    s.close()
sys.exit(1)
EOF
}

free_port() { # a port that is free on 127.0.0.1 right now
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # description timeout_seconds command...
  local what="$1" timeout="$2" start=$SECONDS
  shift 2
  until "$@"; do
    ((SECONDS - start < timeout)) || die "timed out after ${timeout}s waiting for $what (logs: $LOGS)"
    sleep 0.5
  done
}

# --- background processes (pid files under $STATE, checked against their command line) --
pid_alive() { # name marker
  local pidfile="$STATE/$1.pid" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(cat "$pidfile")"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2"
}

start_bg() { # name command...
  local name="$1"
  shift
  mkdir -p "$LOGS"
  setsid nohup "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
}

stop_bg() { # name marker
  local name="$1" pid
  if pid_alive "$name" "$2"; then
    pid="$(cat "$STATE/$name.pid")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    kill -KILL "$pid" 2>/dev/null || true
    log "stopped $name (pid $pid)"
  fi
  rm -f "$STATE/$name.pid"
}

# --- Prometheus ------------------------------------------------------------------------
# The pinned build of tools.sh (group prometheus): Debian's package has no Kubernetes
# service discovery.
PROM_BIN="$BIN_DIR/prometheus"

# Prometheus discovers the real node's engine pods the way a user's Prometheus does:
# kubernetes_sd_configs (role pod) against the apiserver, as its own ServiceAccount with
# read access to pods and nodes, relabelled as the chart's PodMonitor relabels. The token
# (TokenRequest, PROM_TOKEN_HOURS) is renewed by every `up`; Prometheus reads the file on
# every request.
PROM_SD_NAMESPACE=llm-operator-e2e-monitoring
PROM_SD_ACCOUNT=prometheus
PROM_TOKEN_HOURS=48

prometheus_sd_credentials() { # kubeconfig: ServiceAccount + RBAC applied, token written
  kubectl --kubeconfig "$1" apply --server-side --force-conflicts \
    --field-manager=llm-operator-e2e -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $PROM_SD_NAMESPACE}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: $PROM_SD_ACCOUNT, namespace: $PROM_SD_NAMESPACE}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: llm-operator-e2e-prometheus}
rules:
  - apiGroups: [""]
    resources: [pods, nodes]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: llm-operator-e2e-prometheus}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: llm-operator-e2e-prometheus}
subjects:
  - {kind: ServiceAccount, name: $PROM_SD_ACCOUNT, namespace: $PROM_SD_NAMESPACE}
EOF
  local token
  token="$(kubectl --kubeconfig "$1" -n "$PROM_SD_NAMESPACE" create token "$PROM_SD_ACCOUNT" \
    --duration "${PROM_TOKEN_HOURS}h")"
  (umask 077 && printf '%s' "$token" >"$STATE/prometheus/token.new")
  mv "$STATE/prometheus/token.new" "$STATE/prometheus/token"
}

prometheus_config() { # [kubeconfig of the local cluster]: the configuration, on stdout
  cat <<EOF
# Generated by e2e/cluster/cluster.sh
global:
  scrape_interval: 2s
  scrape_timeout: 2s
  evaluation_interval: 2s
scrape_configs:
  - job_name: engine-sim
    # The simulator's namespace/llmdeployment/pod labels are the target labels a
    # PodMonitor would give the engines' series; keep them as they are.
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:$SIM_PORT"]
EOF
  [[ -n "${1:-}" ]] || return 0
  local server ca="$KWOK_WORKDIR/clusters/$CLUSTER_NAME/pki/ca.crt"
  server="$(kubectl --kubeconfig "$1" config view --minify \
    -o jsonpath='{.clusters[0].cluster.server}')"
  cat <<EOF
  # Engine pods that really run (on the real node), found through the apiserver and
  # relabelled like charts/llm-operator's PodMonitor (port http, path /metrics).
  - job_name: llm-engines
    metrics_path: /metrics
    # Prometheus 3 refuses a scrape without a valid Content-Type unless told what to assume.
    fallback_scrape_protocol: PrometheusText0.0.4
    kubernetes_sd_configs:
      - role: pod
        api_server: $server
        tls_config: {ca_file: $ca}
        authorization: {credentials_file: $STATE/prometheus/token}
        attach_metadata: {node: true}
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_label_serving_llm_operator_io_llmdeployment]
        regex: .+
        action: keep
      - source_labels: [__meta_kubernetes_pod_container_port_name]
        regex: http
        action: keep
      - source_labels: [__meta_kubernetes_pod_phase]
        regex: Running
        action: keep
      # kwok's nodes run no containers: the simulator (job engine-sim) speaks for their pods.
      - source_labels: [__meta_kubernetes_node_label_type]
        regex: kwok
        action: drop
      - source_labels: [__meta_kubernetes_pod_label_serving_llm_operator_io_llmdeployment]
        target_label: llmdeployment
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
# cluster CA sha256 $(sha256sum "$ca" | cut -c1-16): a recreated cluster reloads this file
EOF
}

prometheus_reload() {
  "$PYTHON" - "http://127.0.0.1:$PROM_PORT/-/reload" <<'EOF'
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="POST"), timeout=10)
EOF
}

prometheus_up() { # [kubeconfig of the local cluster: add its Kubernetes service discovery]
  mkdir -p "$STATE/prometheus/data"
  [[ -z "${1:-}" ]] || prometheus_sd_credentials "$1"
  prometheus_config "${1:-}" >"$STATE/prometheus/prometheus.yml.new"
  if pid_alive prometheus "$STATE/prometheus" &&
    [[ "$(readlink -f "/proc/$(cat "$STATE/prometheus.pid")/exe")" != "$(readlink -f "$PROM_BIN")" ]]; then
    log "replacing the running prometheus (another binary, e.g. Debian's) with $PROM_BIN"
    stop_bg prometheus "$STATE/prometheus"
  fi
  if pid_alive prometheus "$STATE/prometheus"; then
    if cmp -s "$STATE/prometheus/prometheus.yml.new" "$STATE/prometheus/prometheus.yml"; then
      rm -f "$STATE/prometheus/prometheus.yml.new"
      log "prometheus already running on 127.0.0.1:$PROM_PORT"
    else # another apiserver port or CA (a recreated cluster), or an older configuration
      mv "$STATE/prometheus/prometheus.yml.new" "$STATE/prometheus/prometheus.yml"
      prometheus_reload
      log "prometheus on 127.0.0.1:$PROM_PORT reloaded its configuration"
    fi
    return 0
  fi
  mv "$STATE/prometheus/prometheus.yml.new" "$STATE/prometheus/prometheus.yml"
  [[ -x "$PROM_BIN" ]] || die "$PROM_BIN is missing (run make tools)"
  port_busy "$PROM_PORT" && die "127.0.0.1:$PROM_PORT is taken; set E2E_PROMETHEUS_PORT"
  start_bg prometheus "$PROM_BIN" \
    --config.file="$STATE/prometheus/prometheus.yml" \
    --storage.tsdb.path="$STATE/prometheus/data" \
    --storage.tsdb.retention.time=1d \
    --web.listen-address="127.0.0.1:$PROM_PORT" \
    --web.enable-lifecycle
  wait_for "prometheus" 60 http_ok "http://127.0.0.1:$PROM_PORT/-/ready"
  log "prometheus on http://127.0.0.1:$PROM_PORT"
}

sim_up() { # kubeconfig
  local code
  code="$(sha256sum "$REPO/e2e/sim/engine_sim.py" | cut -c1-16)"
  if pid_alive engine-sim "engine_sim.py"; then
    if [[ "$(cat "$STATE/engine-sim.code" 2>/dev/null)" == "$code" ]]; then
      log "engine simulator already running on 127.0.0.1:$SIM_PORT"
      return 0
    fi
    log "engine simulator code changed: restarting it"
    stop_bg engine-sim "engine_sim.py"
  fi
  [[ -x "$PYTHON" ]] || die "$PYTHON is missing (run make venv)"
  port_busy "$SIM_PORT" && die "127.0.0.1:$SIM_PORT is taken; set E2E_SIM_PORT"
  start_bg engine-sim "$PYTHON" "$REPO/e2e/sim/engine_sim.py" \
    --kubeconfig "$1" --host 127.0.0.1 --port "$SIM_PORT"
  wait_for "engine simulator" 30 http_ok "http://127.0.0.1:$SIM_PORT/healthz"
  printf '%s\n' "$code" >"$STATE/engine-sim.code"
  log "engine simulator on http://127.0.0.1:$SIM_PORT"
}

obs_up() { # kubeconfig [local: Prometheus also discovers that cluster's real pods]
  mkdir -p "$STATE"
  sim_up "$1"
  if [[ "${2:-}" == local ]]; then
    prometheus_up "$1"
  else
    prometheus_up
  fi
}

obs_down() {
  stop_bg prometheus "$STATE/prometheus"
  stop_bg engine-sim "engine_sim.py"
}

# --- LeaderWorkerSet ---------------------------------------------------------------------
# The CRDs and the controller manager come from the pinned sigs.k8s.io/lws module (tools.sh
# lws) and the controller runs on the host like the control plane. Its admission webhooks
# are not optional (the pod webhook adds the group/worker index labels and the LWS_*
# variables that the controller and the workers rely on), so it serves them on 127.0.0.1
# with a self-signed certificate made here, and this script registers them by URL with
# that certificate as caBundle. Its own cert management (which needs a Service and a
# Secret in lws-system) is disabled.
LWS_CRDS=(leaderworkerset.x-k8s.io_leaderworkersets.yaml disaggregatedset.x-k8s.io_disaggregatedsets.yaml)

kubectl_() { kubectl --kubeconfig "$KUBECONFIG_OUT" "$@"; }

crds_established() { # crd-name...: every one has condition Established=True
  local crd
  for crd in "$@"; do
    [[ "$(kubectl_ get crd "$crd" \
      -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" == True ]] ||
      return 1
  done
}

# NOTE: not `kubectl wait --for=condition=Established`: on a CRD created a moment before,
# whose status.conditions is still nil, it fails at once (".status.conditions accessor
# error: <nil> is of the type <nil>") instead of waiting. Same for nodes (nodes_ready).
wait_crds() { # timeout crd-name...
  local timeout="$1"
  shift
  wait_for "CRDs $* Established" "$timeout" crds_established "$@"
}

lws_crds_up() {
  local f args=()
  for f in "${LWS_CRDS[@]}"; do
    [[ -f "$CRD_DIR/$f" ]] || die "$CRD_DIR/$f is missing (run make tools)"
    args+=(-f "$CRD_DIR/$f")
  done
  # Server-side: the CRDs are too large for kubectl's last-applied annotation.
  kubectl_ apply --server-side --force-conflicts --field-manager=llm-operator-e2e "${args[@]}" >/dev/null
  wait_crds 60 leaderworkersets.leaderworkerset.x-k8s.io \
    disaggregatedsets.disaggregatedset.x-k8s.io
}

lws_cert() { # self-signed serving certificate for 127.0.0.1, made once per state dir
  [[ -f "$LWS_STATE/certs/tls.crt" && -f "$LWS_STATE/certs/tls.key" ]] && return 0
  command -v openssl >/dev/null || die "openssl is required for the LWS webhook certificate"
  mkdir -p "$LWS_STATE/certs"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$LWS_STATE/certs/tls.key" -out "$LWS_STATE/certs/tls.crt" 2>/dev/null
}

lws_webhooks_up() { # webhook port
  local url="https://127.0.0.1:$1" ca
  ca="$(base64 -w0 <"$LWS_STATE/certs/tls.crt")"
  # Paths: the controller's kubebuilder webhook markers (config/webhook/manifests.yaml in
  # the module). Pods only when they carry the LWS name label, as upstream deploys it; the
  # no-op pod validation and the DisaggregatedSet validation are not registered.
  kubectl_ apply --server-side --force-conflicts --field-manager=llm-operator-e2e -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: lws-mutating-webhook-configuration
webhooks:
  - name: mleaderworkerset.kb.io
    clientConfig:
      url: $url/mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset
      caBundle: $ca
    rules:
      - apiGroups: [leaderworkerset.x-k8s.io]
        apiVersions: [v1]
        operations: [CREATE, UPDATE]
        resources: [leaderworkersets]
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Fail
    timeoutSeconds: 10
  - name: mpod.kb.io
    clientConfig:
      url: $url/mutate--v1-pod
      caBundle: $ca
    objectSelector:
      matchExpressions:
        - {key: leaderworkerset.sigs.k8s.io/name, operator: Exists}
    rules:
      - apiGroups: [""]
        apiVersions: [v1]
        operations: [CREATE]
        resources: [pods]
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Fail
    timeoutSeconds: 10
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: lws-validating-webhook-configuration
webhooks:
  - name: vleaderworkerset.kb.io
    clientConfig:
      url: $url/validate-leaderworkerset-x-k8s-io-v1-leaderworkerset
      caBundle: $ca
    rules:
      - apiGroups: [leaderworkerset.x-k8s.io]
        apiVersions: [v1]
        operations: [CREATE, UPDATE]
        resources: [leaderworkersets]
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Fail
    timeoutSeconds: 10
EOF
}

tls_ok() { # port: a TLS server answers on 127.0.0.1:port
  "$PYTHON" - "$1" <<'EOF' >/dev/null 2>&1
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
    ctx.wrap_socket(s).close()
EOF
}

lws_up() {
  if pid_alive lws-controller "$LWS_STATE/config.yaml"; then
    log "LWS controller already running (health http://127.0.0.1:$(cat "$LWS_STATE/health-port"))"
    return 0
  fi
  lws_crds_up
  [[ -x "$BIN_DIR/lws-controller-manager" ]] ||
    die "$BIN_DIR/lws-controller-manager is missing (run make tools)"
  lws_cert
  local webhook_port metrics_port health_port
  webhook_port="$(free_port)"
  metrics_port="$(free_port)"
  health_port="$(free_port)"
  # config.lws.x-k8s.io/v1alpha1 Configuration (api/config/v1alpha1 in the module):
  # everything on loopback, webhooks served with our certificate, no internal cert
  # management, no leader election (one process).
  cat >"$LWS_STATE/config.yaml" <<EOF
# Generated by e2e/cluster/cluster.sh
apiVersion: config.lws.x-k8s.io/v1alpha1
kind: Configuration
webhook:
  host: 127.0.0.1
  port: $webhook_port
  certDir: $LWS_STATE/certs
metrics:
  bindAddress: 127.0.0.1:$metrics_port
health:
  healthProbeBindAddress: 127.0.0.1:$health_port
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
EOF
  echo "$health_port" >"$LWS_STATE/health-port"
  start_bg lws-controller "$BIN_DIR/lws-controller-manager" \
    --config "$LWS_STATE/config.yaml" --kubeconfig "$KUBECONFIG_OUT" \
    --leader-elect=false --zap-devel=false
  wait_for "LWS controller" 60 http_ok "http://127.0.0.1:$health_port/readyz"
  wait_for "LWS webhook server" 30 tls_ok "$webhook_port"
  lws_webhooks_up "$webhook_port"
  log "LWS controller (health http://127.0.0.1:$health_port, webhooks https://127.0.0.1:$webhook_port)"
}

lws_down() {
  stop_bg lws-controller "$LWS_STATE/config.yaml"
}

# --- the real node ----------------------------------------------------------------------
# shellcheck source=e2e/cluster/node.sh
source "$HERE/node.sh"

# --- kwok cluster ----------------------------------------------------------------------
write_kwokctl_config() {
  cat >"$STATE/kwokctl.yaml" <<EOF
# Generated by e2e/cluster/cluster.sh: every component is a local binary from
# $BIN_DIR, everything binds to 127.0.0.1.
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeApiserverPort: $APISERVER_PORT
  kubeApiserverBinary: $BIN_DIR/kube-apiserver
  kubeControllerManagerBinary: $BIN_DIR/kube-controller-manager
  kubeSchedulerBinary: $BIN_DIR/kube-scheduler
  kubectlBinary: $BIN_DIR/kubectl
  etcdBinary: $BIN_DIR/etcd
  kwokControllerBinary: $BIN_DIR/kwok
  cacheDir: $STATE/kwok/cache
  quietPull: true
componentsPatches:
  # kube-apiserver's default service range is a /24 (254 Services); one LLMDeployment
  # needs a Service, and the benchmarks create hundreds. kubeadm's default range.
  - name: kube-apiserver
    extraArgs:
      - key: service-cluster-ip-range
        value: 10.96.0.0/16
      # kubectl logs/exec on the real node's pods: the apiserver authenticates to kubelet
      # with kwokctl's admin certificate (kubelet trusts the cluster CA).
      - key: kubelet-client-certificate
        value: $KWOK_WORKDIR/clusters/$CLUSTER_NAME/pki/admin.crt
      - key: kubelet-client-key
        value: $KWOK_WORKDIR/clusters/$CLUSTER_NAME/pki/admin.key
      # Node names do not resolve here; the real node's InternalIP is its bridge address.
      - key: kubelet-preferred-address-types
        value: InternalIP,Hostname
  # One instance each: no leader election, which would make them exit ("leaderelection
  # lost") when the apiserver stalls for longer than the renew deadline.
  - name: kube-controller-manager
    extraArgs:
      - key: leader-elect
        value: "false"
  - name: kube-scheduler
    extraArgs:
      - key: leader-elect
        value: "false"
  # kwokctl's binary runtime starts kwok with --manage-all-nodes=true: it would take over
  # the real node too. Only the fake nodes (nodes.py annotates them) are kwok's.
  - name: kwok-controller
    extraArgs:
      - key: manage-all-nodes
        value: "false"
      - key: manage-nodes-with-annotation-selector
        value: kwok.x-k8s.io/node=fake
EOF
}

# The control plane processes kwokctl started (binary runtime: one pid file each under
# <workdir>/clusters/<name>/pids).
kwok_pid_dir() { echo "$KWOK_WORKDIR/clusters/$CLUSTER_NAME/pids"; }

kwok_components() { # name per line
  local f
  for f in "$(kwok_pid_dir)"/*.pid; do
    [[ -f "$f" ]] && basename "$f" .pid
  done
  return 0
}

kwok_component_alive() { # name: its pid runs one of the cached binaries
  local pid
  pid="$(cat "$(kwok_pid_dir)/$1.pid" 2>/dev/null)" || return 1
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$BIN_DIR/"* ]]
}

kwok_dead_components() {
  local c
  for c in $(kwok_components); do
    kwok_component_alive "$c" || echo "$c"
  done
  return 0
}

cluster_exists() {
  kwokctl get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"
}

nodes_ready() { # every kwok node reports Ready=True
  local states
  states="$(kubectl --kubeconfig "$KUBECONFIG_OUT" get nodes -l type=kwok --no-headers \
    -o custom-columns=READY:.status.conditions[?\(@.type==\"Ready\"\)].status 2>/dev/null)" ||
    return 1
  [[ -n "$states" ]] && ! grep -qv '^True$' <<<"$states"
}

apiserver_ready() {
  kubectl --kubeconfig "$KUBECONFIG_OUT" get --raw /readyz >/dev/null 2>&1
}

cluster_up() {
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kwokctl; do
    [[ -x "$BIN_DIR/$b" ]] || die "$BIN_DIR/$b is missing (run make tools)"
  done
  write_kwokctl_config
  if cluster_exists; then
    local dead
    if [[ -f "$KUBECONFIG_OUT" ]] && apiserver_ready &&
      cmp -s "$STATE/kwokctl.yaml" "$STATE/kwokctl.yaml.applied"; then
      # etcd and kube-apiserver run; restart whatever else died (kwokctl starts only
      # the components whose pid file names no running process).
      dead="$(kwok_dead_components | tr '\n' ' ')"
      if [[ -n "${dead// /}" ]]; then
        log "restarting stopped control plane components: $dead"
        kwokctl -v WARN start cluster --name "$CLUSTER_NAME"
        dead="$(kwok_dead_components | tr '\n' ' ')"
        [[ -z "${dead// /}" ]] || die "could not restart $dead (logs: $KWOK_WORKDIR/clusters/$CLUSTER_NAME/logs)"
      fi
      log "kwok cluster $CLUSTER_NAME already running"
      return 0
    fi
    # A stopped cluster (reboot, killed processes) is recreated, not restarted: a
    # restarted kwok controller waits minutes for its old node leases to expire. So is
    # one made from another configuration.
    log "recreating the kwok cluster $CLUSTER_NAME (stopped, or its configuration changed)"
    kwokctl -v WARN delete cluster --name "$CLUSTER_NAME" || true
  fi
  lws_down # a controller left from an earlier cluster would talk to the wrong apiserver
  node_down # so would the real node, with credentials of the old cluster's CA
  log "creating kwok cluster $CLUSTER_NAME (runtime binary)"
  rm -f "$KUBECONFIG_OUT" "$STATE/kwokctl.yaml.applied"
  kwokctl -v WARN create cluster --name "$CLUSTER_NAME" --config "$STATE/kwokctl.yaml" \
    --kubeconfig "$KUBECONFIG_OUT" --wait 2m
  cp "$STATE/kwokctl.yaml" "$STATE/kwokctl.yaml.applied"
  wait_for "kube-apiserver" 60 apiserver_ready
  log "applying the node layout from e2e/cluster/nodes.yaml"
  "$PYTHON" "$HERE/nodes.py" "$HERE/nodes.yaml" | kubectl --kubeconfig "$KUBECONFIG_OUT" apply -f - >/dev/null
  # NOTE: not `kubectl wait --for=condition=Ready node --all`: it fails at once on a node
  # kwok has not given conditions yet, instead of waiting for it.
  wait_for "every kwok node Ready" 60 nodes_ready
  # Pods need the namespace's default ServiceAccount, which kube-controller-manager creates.
  wait_for "default ServiceAccount" 60 \
    kubectl --kubeconfig "$KUBECONFIG_OUT" -n default get serviceaccount default -o name \
    >/dev/null
}

write_env() { # kubeconfig
  cat >"$STATE/env" <<EOF
export KUBECONFIG=$1
export E2E_PROMETHEUS_URL=http://127.0.0.1:$PROM_PORT
export E2E_SIM_URL=http://127.0.0.1:$SIM_PORT
EOF
}

cmd_up() {
  local start=$SECONDS
  [[ -x "$PYTHON" ]] || die "$PYTHON is missing (run make venv, or set E2E_PYTHON)"
  mkdir -p "$STATE" "$LOGS" "$LWS_STATE"
  step "tools (build or reuse the pinned binaries)"
  if node_enabled; then
    "$HERE/tools.sh" etcd kwok k8s lws prometheus toxiproxy containerd node
  else
    "$HERE/tools.sh" etcd kwok k8s lws prometheus toxiproxy
  fi
  step "control plane (kwokctl cluster, kwok nodes)"
  cluster_up
  step "LeaderWorkerSet CRDs and controller"
  lws_up
  step "real node $NODE_NAME (containerd, kube-proxy, kubelet; E2E_REAL_NODE=0 to skip)"
  node_up
  step "engine simulator and Prometheus"
  obs_up "$KUBECONFIG_OUT" local
  write_env "$KUBECONFIG_OUT"
  step ""
  log "up in $((SECONDS - start))s"
  log "  KUBECONFIG=$KUBECONFIG_OUT"
  log "  prometheus http://127.0.0.1:$PROM_PORT   engine simulator http://127.0.0.1:$SIM_PORT"
  log "  (source $STATE/env)"
}

leftover_pids() { # cluster components (a cached binary, run for this cluster) still alive
  local p exe
  for p in /proc/[0-9]*; do
    exe="$(readlink -f "$p/exe" 2>/dev/null)" || continue
    [[ "$exe" == "$BIN_DIR/"* ]] || continue
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null |
      grep -qF -e "$KWOK_WORKDIR/clusters/$CLUSTER_NAME/" -e "$LWS_STATE/config.yaml" \
        -e "$NODE_STATE/"; then
      echo "${p#/proc/}"
    fi
  done
}

cmd_down() {
  obs_down
  lws_down
  # Before the control plane: kubelet stops its pods through the API.
  node_down
  if cluster_exists; then
    log "deleting kwok cluster $CLUSTER_NAME"
    kwokctl -v WARN delete cluster --name "$CLUSTER_NAME" || true
  fi
  local pid
  for pid in $(leftover_pids); do
    [[ "$pid" == "$$" ]] && continue
    log "killing leftover process $pid"
    kill -KILL "$pid" 2>/dev/null || true
  done
  # A node process that survived (killed above) may have left mounts or cgroups.
  [[ -d "$NODE_STATE" ]] && node_down
  rm -f "$KUBECONFIG_OUT" "$STATE/env" "$STATE/kwokctl.yaml.applied"
  log "down"
}

cmd_status() { # exit status 0 only when everything runs
  local rc=0
  if cluster_exists && [[ -f "$KUBECONFIG_OUT" ]] && apiserver_ready; then
    log "kwok cluster $CLUSTER_NAME: apiserver ready (KUBECONFIG=$KUBECONFIG_OUT)"
  else
    log "kwok cluster $CLUSTER_NAME: not running"
    rc=1
  fi
  # Every control plane process on its own: kube-controller-manager or kube-scheduler
  # can die while the apiserver answers.
  local c
  for c in $(kwok_components); do
    if kwok_component_alive "$c"; then
      log "  $c: running (pid $(cat "$(kwok_pid_dir)/$c.pid"))"
    else
      log "  $c: stopped"
      rc=1
    fi
  done
  if pid_alive lws-controller "$LWS_STATE/config.yaml"; then
    log "LWS controller: running (health http://127.0.0.1:$(cat "$LWS_STATE/health-port"))"
  else
    log "LWS controller: stopped"
    rc=1
  fi
  if pid_alive engine-sim engine_sim.py; then
    log "engine simulator: running on http://127.0.0.1:$SIM_PORT"
  else
    log "engine simulator: stopped"
    rc=1
  fi
  if pid_alive prometheus "$STATE/prometheus"; then
    log "prometheus: running on http://127.0.0.1:$PROM_PORT"
  else
    log "prometheus: stopped"
    rc=1
  fi
  node_status || rc=1
  return $rc
}

cmd_kill() { # component: SIGKILL (no graceful shutdown: kube-apiserver's takes a minute)
  local pidfile
  pidfile="$(kwok_pid_dir)/$1.pid"
  [[ -f "$pidfile" ]] || die "no control plane component $1 (one of: $(kwok_components | tr '\n' ' '))"
  [[ "$1" != kwok-controller ]] || die "kwok-controller is not restartable: its node leases would take minutes to expire"
  if kwok_component_alive "$1"; then
    kill -KILL "$(cat "$pidfile")"
    wait_for "$1 to exit" 10 bash -c "! kill -0 $(cat "$pidfile") 2>/dev/null"
  fi
  log "killed $1"
}

cmd_start_stopped() { # kwokctl starts only the components whose pid file names no live process
  cluster_exists || die "the kwok cluster $CLUSTER_NAME does not exist (cluster.sh up)"
  kwokctl -v WARN start cluster --name "$CLUSTER_NAME"
  wait_for "kube-apiserver" 60 apiserver_ready
  local dead
  dead="$(kwok_dead_components | tr '\n' ' ')"
  [[ -z "${dead// /}" ]] || die "could not start $dead (logs: $KWOK_WORKDIR/clusters/$CLUSTER_NAME/logs)"
  log "every control plane component runs"
}

case "${1:-}" in
  up) cmd_up ;;
  kill)
    [[ -n "${2:-}" ]] || die "usage: cluster.sh kill COMPONENT"
    cmd_kill "$2"
    ;;
  start-stopped) cmd_start_stopped ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cat "$STATE/env" 2>/dev/null || die "not up" ;;
  obs-up)
    [[ -n "${2:-}" ]] || die "usage: cluster.sh obs-up KUBECONFIG"
    "$HERE/tools.sh" prometheus
    obs_up "$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
    write_env "$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
    ;;
  obs-down) obs_down ;;
  *) die "usage: cluster.sh up|down|status|env|kill COMPONENT|start-stopped|obs-up KUBECONFIG|obs-down" ;;
esac
