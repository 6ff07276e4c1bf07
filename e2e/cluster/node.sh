# shellcheck shell=bash
# The real worker node of the local e2e cluster, sourced by e2e/cluster/cluster.sh (it
# uses that script's log/die/wait_for/start_bg/stop_bg/pid_alive/kubectl_ and $STATE,
# $BIN_DIR, $KWOK_WORKDIR, $CLUSTER_NAME, $KUBECONFIG_OUT, $PYTHON).
#
# Next to the kwok fake nodes, one node runs real containers: containerd (pinned, from
# the Go module proxy) with Debian's runc and CNI plugins on a private bridge, kubelet and
# kube-proxy (iptables mode) from the control plane's Kubernetes module, the images of
# e2e/node/build.sh imported into containerd (the pause sandbox and llama.cpp's
# llama-server tagged as ghcr.io/ggml-org/llama.cpp:server-b<N>), and a read-only local
# PersistentVolume with the SmolLM2-135M GGUF model. docs/cluster.md#the-real-node.
#
# It needs root (cgroups, mounts, network devices, iptables). Everything it creates is
# named after this project and removed by node_down: processes, mounts under its state
# and run directories, the bridge and its veths, network namespaces, iptables chains,
# cgroups under $NODE_CGROUP, the kernel settings kubelet changes (restored).
#
# Environment: E2E_REAL_NODE (1; 0 = no real node), E2E_NODE_NAME (real-cpu-0),
# E2E_NODE_CIDR (10.88.0.0/24: the pods' subnet; the bridge takes .1).

REAL_NODE="${E2E_REAL_NODE:-1}"
NODE_NAME="${E2E_NODE_NAME:-real-cpu-0}"
NODE_CIDR="${E2E_NODE_CIDR:-10.88.0.0/24}"
NODE_IP="${NODE_CIDR%.*}.1"
NODE_BRIDGE=llmop0
NODE_CNI_NETWORK=llmop
NODE_CGROUP=llmop-e2e
NODE_POOL=real-cpu
# The taint keeps the kwok-simulated workloads (and the operator's CPU pods, unless they
# tolerate it) off the node that really runs containers; the label selects it.
NODE_TAINT_KEY=llm-operator.io/real-node
NODE_POOL_LABEL=llm-operator.io/node-pool
NODE_INSTANCE_TYPE=local-cpu
MODEL_PV=llm-operator-e2e-smollm2
MODEL_STORAGE_CLASS=llm-operator-e2e-model
SERVICE_CIDR=10.96.0.0/16
NODE_STATE="$STATE/node"
# containerd's sockets and its state (mounts of running containers) live under /run with
# a short name: unix socket paths are limited to 108 bytes.
NODE_RUN="/run/llmop-e2e-$(printf '%s' "$STATE" | sha256sum | cut -c1-8)"
CONTAINERD_SOCK="$NODE_RUN/containerd.sock"
CNI_BIN_DIR=/usr/lib/cni
RUNC_BIN=/usr/sbin/runc
# Kernel settings kubelet sets (pkg/kubelet/cm/container_manager_linux.go,
# setupKernelTunables) plus the bridge netfilter switch; saved by up, restored by down.
NODE_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes net/bridge/bridge-nf-call-iptables)

node_enabled() { [[ "$REAL_NODE" == 1 ]]; }

node_vars() { # the pins of e2e/node/build.sh: LLAMACPP_BUILD ENGINE_IMAGE PAUSE_IMAGE MODEL_*
  eval "$("$REPO/e2e/node/build.sh" --print-vars)"
}

node_ctr() { "$BIN_DIR/ctr" --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# --- prerequisites ---------------------------------------------------------------------
node_check_host() {
  [[ "$(id -u)" -eq 0 ]] || die "the real node needs root (or set E2E_REAL_NODE=0)"
  [[ -d /sys/fs/cgroup/memory && -d /sys/fs/cgroup/cpu ]] ||
    [[ -f /sys/fs/cgroup/cgroup.controllers ]] ||
    die "no cgroup controllers under /sys/fs/cgroup (or set E2E_REAL_NODE=0)"
  for b in containerd containerd-shim-runc-v2 ctr kubelet kube-proxy; do
    [[ -x "$BIN_DIR/$b" ]] || die "$BIN_DIR/$b is missing (run make tools)"
  done
}

# Debian's runc, CNI plugins and iptables, installed once like ensure_prometheus does.
ensure_node_packages() {
  local missing=()
  [[ -x "$RUNC_BIN" ]] || missing+=(runc)
  [[ -x "$CNI_BIN_DIR/bridge" && -x "$CNI_BIN_DIR/host-local" && -x "$CNI_BIN_DIR/loopback" &&
    -x "$CNI_BIN_DIR/portmap" ]] || missing+=(containernetworking-plugins)
  command -v iptables-restore >/dev/null || missing+=(iptables)
  command -v ip >/dev/null || missing+=(iproute2)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and there is no apt-get"
  log "installing Debian's ${missing[*]} (once)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" ||
    { apt-get update && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y --no-install-recommends "${missing[@]}"; } ||
    die "apt-get install ${missing[*]} failed"
}

# --- credentials: client certificates signed by the CA kwokctl generated ----------------
node_pki() {
  local pki="$KWOK_WORKDIR/clusters/$CLUSTER_NAME/pki" dir="$NODE_STATE/pki" ca_sum
  [[ -f "$pki/ca.crt" && -f "$pki/ca.key" ]] || die "$pki/ca.{crt,key} missing (kwokctl cluster?)"
  ca_sum="$(sha256sum "$pki/ca.crt" | cut -c1-16)"
  if [[ -f "$dir/ca.sum" && "$(cat "$dir/ca.sum")" == "$ca_sum" ]]; then
    return 0
  fi
  # A recreated cluster has a new CA: everything signed by the old one goes, and so do
  # the processes that use it.
  stop_bg kube-proxy "$NODE_STATE/kube-proxy/config.yaml"
  stop_bg kubelet "$NODE_STATE/kubelet/config.yaml"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$pki/ca.crt" "$dir/ca.crt"
  local who cn org
  for who in kubelet kube-proxy; do
    case "$who" in
      kubelet) cn="system:node:$NODE_NAME" org="/O=system:nodes" ;;
      kube-proxy) cn="system:kube-proxy" org="" ;; # bound to system:node-proxier by default
    esac
    openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$cn$org" \
      -keyout "$dir/$who.key" -out "$dir/$who.csr" 2>/dev/null
    openssl x509 -req -in "$dir/$who.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
      -CAcreateserial -days 3650 -sha256 -out "$dir/$who.crt" \
      -extfile <(printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n') \
      2>/dev/null
    rm -f "$dir/$who.csr"
    node_kubeconfig "$who" >"$dir/$who.kubeconfig"
  done
  chmod 0600 "$dir"/*.key "$dir"/*.kubeconfig
  echo "$ca_sum" >"$dir/ca.sum"
}

node_kubeconfig() { # who: a kubeconfig with that client certificate for the local apiserver
  local server
  server="$(kubectl_ config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: $CLUSTER_NAME
    cluster:
      server: $server
      certificate-authority: $NODE_STATE/pki/ca.crt
users:
  - name: $1
    user:
      client-certificate: $NODE_STATE/pki/$1.crt
      client-key: $NODE_STATE/pki/$1.key
contexts:
  - name: $1
    context: {cluster: $CLUSTER_NAME, user: $1}
current-context: $1
EOF
}

# --- host state: kernel settings, cgroups, bridge ---------------------------------------
node_sysctls_save() {
  [[ -f "$NODE_STATE/sysctls.saved" ]] && return 0 # saved by an earlier up: keep the originals
  local s
  for s in "${NODE_SYSCTLS[@]}"; do
    [[ -r "/proc/sys/$s" ]] && printf '%s %s\n' "$s" "$(cat "/proc/sys/$s")"
  done >"$NODE_STATE/sysctls.saved"
}

node_sysctls_restore() {
  [[ -f "$NODE_STATE/sysctls.saved" ]] || return 0
  local s v
  while read -r s v; do
    [[ "$(cat "/proc/sys/$s" 2>/dev/null)" == "$v" ]] || echo "$v" >"/proc/sys/$s" 2>/dev/null || true
  done <"$NODE_STATE/sysctls.saved"
  rm -f "$NODE_STATE/sysctls.saved"
}

node_cgroup_dirs() { # every cgroup hierarchy: v1 ones, and v2 (unified, or hybrid's)
  awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/self/mounts
}

node_cgroups_up() { # kubelet's cgroupRoot: it must exist in every v1 hierarchy
  local d parent
  for d in $(node_cgroup_dirs); do
    mkdir -p "$d/$NODE_CGROUP"
    if [[ -f "$d/cpuset.cpus" && -f "$d/$NODE_CGROUP/cpuset.cpus" ]]; then
      # A new v1 cpuset has no CPUs and no memory nodes: take the parent's.
      parent="$d"
      [[ -s "$d/$NODE_CGROUP/cpuset.cpus" ]] || cat "$parent/cpuset.cpus" >"$d/$NODE_CGROUP/cpuset.cpus"
      [[ -s "$d/$NODE_CGROUP/cpuset.mems" ]] || cat "$parent/cpuset.mems" >"$d/$NODE_CGROUP/cpuset.mems"
    fi
  done
}

node_cgroups_down() { # kill what is left in them, remove them deepest first
  local d p left=""
  for d in $(node_cgroup_dirs); do
    [[ -d "$d/$NODE_CGROUP" ]] || continue
    for p in $(find "$d/$NODE_CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u); do
      kill -KILL "$p" 2>/dev/null || true
    done
  done
  for d in $(node_cgroup_dirs); do
    [[ -d "$d/$NODE_CGROUP" ]] || continue
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      find "$d/$NODE_CGROUP" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [[ -d "$d/$NODE_CGROUP" ]] || break
      sleep 0.3
    done
    [[ -d "$d/$NODE_CGROUP" ]] && left+=" $d/$NODE_CGROUP"
  done
  [[ -z "$left" ]] || log "WARNING: cgroups left:$left"
}

node_bridge_up() { # the bridge exists before kubelet so that it can use its address
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/${NODE_CIDR#*/}" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
}

# --- containerd -------------------------------------------------------------------------
containerd_config() {
  mkdir -p "$NODE_STATE/containerd" "$NODE_STATE/cni/net.d" "$NODE_RUN"
  # containerd 2.4's configuration version 4 (`containerd config default` of the pinned
  # build lists every key). Nothing outside our directories: no /etc/containerd imports,
  # shim sockets under $NODE_RUN (default /run/containerd/s), no /opt/containerd.
  # Loopback-only: no TCP gRPC/metrics/debug listeners, CRI streaming on 127.0.0.1.
  cat >"$NODE_STATE/containerd/config.toml" <<EOF
# Generated by e2e/cluster/node.sh
version = 4
root = "$NODE_STATE/containerd/root"
state = "$NODE_RUN/containerd"
imports = []
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing", "io.containerd.nri.v1.nri",
  "io.containerd.image-verifier.v1.bindir"]

[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = "$CONTAINERD_SOCK"
  [plugins.'io.containerd.server.v1.ttrpc']
    address = "$NODE_RUN/containerd.sock.ttrpc"
  [plugins.'io.containerd.internal.v1.opt']
    path = "$NODE_STATE/containerd/opt"
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = "$NODE_RUN/s"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "$PAUSE_IMAGE"
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    netns_mounts_under_state_dir = true
    restrict_oom_score_adj = $(node_can_lower_oom_score && echo false || echo true)
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$RUNC_BIN"
          Root = "$NODE_RUN/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["$CNI_BIN_DIR"]
      conf_dir = "$NODE_STATE/cni/net.d"
      max_conf_num = 1
  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
EOF
  # One bridge network; host-local IPAM keeps its leases in our state dir. No IP
  # masquerade and no route but the service range: pod traffic stays on this machine
  # (the host does not forward, net.ipv4.ip_forward is left alone). The loopback plugin
  # is called by containerd itself.
  cat >"$NODE_STATE/cni/net.d/10-$NODE_CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$NODE_CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_STATE/cni/ipam",
        "ranges": [[{"subnet": "$NODE_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# NOTE: lowering a process's oom_score_adj needs CAP_SYS_RESOURCE. Some sandboxes (this
# project's development VMs among them) drop it from the bounding set; then runc fails
# every pod sandbox ("failed to update /proc/self/oom_score_adj: Permission denied",
# which containerd reports as "can't get final child's PID from pipe: EOF") and kubelet
# cannot set its own -999. There containerd keeps pods' scores at or above its own and
# kubelet leaves its own alone.
node_can_lower_oom_score() { # CAP_SYS_RESOURCE (bit 24) in our effective set
  local eff
  eff="$(awk '/^CapEff:/ {print $2}' /proc/self/status)"
  (((16#$eff >> 24) & 1))
}

containerd_ready() { "$BIN_DIR/ctr" --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; }

containerd_up() {
  if pid_alive containerd "$NODE_STATE/containerd/config.toml"; then
    return 0
  fi
  containerd_config
  start_bg containerd "$BIN_DIR/containerd" --config "$NODE_STATE/containerd/config.toml" \
    --log-level warn
  wait_for "containerd" 30 containerd_ready
  log "containerd $("$BIN_DIR/containerd" --version | awk '{print $3}') on $CONTAINERD_SOCK"
}

node_images_import() {
  local tar
  for tar in "$PAUSE_IMAGE_TAR" "$ENGINE_IMAGE_TAR"; do
    [[ -f "$tar" ]] || die "$tar is missing (run make tools)"
  done
  # Imported every time (a few seconds): an unchanged image is a no-op for containerd.
  # (ctr's stderr, its cgroup v1 deprecation warning each time, goes to the log.)
  {
    node_ctr images import --platform linux/amd64 "$PAUSE_IMAGE_TAR"
    node_ctr images import --platform linux/amd64 "$ENGINE_IMAGE_TAR"
    # The sandbox image must survive kubelet's image garbage collection.
    node_ctr images label "$PAUSE_IMAGE" io.cri-containerd.pinned=pinned
  } >/dev/null 2>>"$LOGS/ctr.log"
}

# --- kubelet ----------------------------------------------------------------------------
kubelet_config() {
  mkdir -p "$NODE_STATE/kubelet" "$NODE_STATE/pod-logs"
  local healthz
  healthz="$(free_port)"
  echo "$healthz" >"$NODE_STATE/kubelet-healthz-port"
  # The node's capacity is the machine's; a little is reserved for the system and the
  # control plane that share it. kubelet listens on the bridge address only.
  cat >"$NODE_STATE/kubelet/config.yaml" <<EOF
# Generated by e2e/cluster/node.sh
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $NODE_STATE/pki/ca.crt}
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
protectKernelDefaults: false
podLogsDir: $NODE_STATE/pod-logs
volumePluginDir: $NODE_STATE/kubelet/volume-plugins
resolvConf: /etc/resolv.conf
maxPods: 16
systemReserved: {cpu: 100m, memory: 1Gi}
kubeReserved: {cpu: 100m, memory: 512Mi}
evictionHard: {memory.available: 200Mi, nodefs.available: 5%, imagefs.available: 5%}
# The imported images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: true
registerNode: true
registerWithTaints:
  - {key: $NODE_TAINT_KEY, value: "true", effect: NoSchedule}
rotateCertificates: false
serverTLSBootstrap: false
shutdownGracePeriod: 0s
oomScoreAdj: $(node_can_lower_oom_score && echo -999 || echo 0)
EOF
}

kubelet_ready() { # /healthz answers and the Node says Ready
  http_ok "http://127.0.0.1:$(cat "$NODE_STATE/kubelet-healthz-port")/healthz" || return 1
  [[ "$(kubectl_ get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

kubelet_up() {
  if pid_alive kubelet "$NODE_STATE/kubelet/config.yaml"; then
    return 0
  fi
  kubelet_config
  local labels="$NODE_POOL_LABEL=$NODE_POOL,node.kubernetes.io/instance-type=$NODE_INSTANCE_TYPE"
  labels+=",topology.kubernetes.io/region=local,topology.kubernetes.io/zone=local-a"
  start_bg kubelet "$BIN_DIR/kubelet" --config "$NODE_STATE/kubelet/config.yaml" \
    --kubeconfig "$NODE_STATE/pki/kubelet.kubeconfig" --root-dir "$NODE_STATE/kubelet" \
    --cert-dir "$NODE_STATE/kubelet/pki" --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" --node-labels "$labels" --v 1
}

# --- kube-proxy -------------------------------------------------------------------------
kube_proxy_up() {
  if pid_alive kube-proxy "$NODE_STATE/kube-proxy/config.yaml"; then
    return 0
  fi
  mkdir -p "$NODE_STATE/kube-proxy"
  # iptables mode; NodePorts only on the bridge address; conntrack and route_localnet
  # settings left as they are.
  cat >"$NODE_STATE/kube-proxy/config.yaml" <<EOF
# Generated by e2e/cluster/node.sh
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $NODE_STATE/pki/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $NODE_CIDR
detectLocalMode: ClusterCIDR
nodePortAddresses: ["$NODE_IP/32"]
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
iptables:
  localhostNodePorts: false
  masqueradeAll: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  start_bg kube-proxy "$BIN_DIR/kube-proxy" --config "$NODE_STATE/kube-proxy/config.yaml" --v 1
}

# --- the model volume -------------------------------------------------------------------
node_model_pv() {
  # A read-only local volume on the real node (its node affinity also steers the pods
  # that mount it there). Tests bind it with a PVC naming it (volumeName) and this
  # storageClassName; a PV released by a deleted PVC is made Available again.
  kubectl_ apply --server-side --force-conflicts --field-manager=llm-operator-e2e -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $MODEL_PV
  labels: {llm-operator.io/e2e-model: smollm2}
  annotations:
    llm-operator.io/model-file: $MODEL_FILE
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: $MODEL_STORAGE_CLASS
  volumeMode: Filesystem
  local:
    path: $MODEL_DIR
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}
EOF
  if [[ "$(kubectl_ get pv "$MODEL_PV" -o jsonpath='{.status.phase}')" == Released ]]; then
    kubectl_ patch pv "$MODEL_PV" --type json -p '[{"op":"remove","path":"/spec/claimRef"}]' >/dev/null
  fi
}

# --- up / down / status -----------------------------------------------------------------
node_up() {
  node_enabled || return 0
  node_check_host
  node_vars
  ensure_node_packages
  mkdir -p "$NODE_STATE" "$NODE_RUN"
  if pid_alive kubelet "$NODE_STATE/kubelet/config.yaml" &&
    pid_alive containerd "$NODE_STATE/containerd/config.toml" &&
    pid_alive kube-proxy "$NODE_STATE/kube-proxy/config.yaml" && kubelet_ready; then
    log "real node $NODE_NAME already running"
    node_model_pv
    return 0
  fi
  node_pki
  node_sysctls_save
  node_cgroups_up
  node_bridge_up
  containerd_up
  node_images_import
  kube_proxy_up
  kubelet_up
  wait_for "real node $NODE_NAME Ready" 90 kubelet_ready
  node_model_pv
  log "real node $NODE_NAME Ready ($(kubectl_ get node "$NODE_NAME" \
    -o jsonpath='cpu {.status.allocatable.cpu}, memory {.status.allocatable.memory}') allocatable; engine image $ENGINE_IMAGE; PV $MODEL_PV)"
}

node_status() { # prints one line per process; exit status 0 when all run
  node_enabled || return 0
  local rc=0 name marker
  for name in containerd kubelet kube-proxy; do
    case "$name" in
      containerd) marker="$NODE_STATE/containerd/config.toml" ;;
      kubelet) marker="$NODE_STATE/kubelet/config.yaml" ;;
      kube-proxy) marker="$NODE_STATE/kube-proxy/config.yaml" ;;
    esac
    if pid_alive "$name" "$marker"; then
      log "real node $NODE_NAME: $name running (pid $(cat "$STATE/$name.pid"))"
    else
      log "real node $NODE_NAME: $name stopped"
      rc=1
    fi
  done
  return $rc
}

node_pods_gone() { # no container or pod sandbox runs (stopped sandboxes, whose network
  # kubelet has already torn down, are removed below)
  [[ -z "$(node_ctr tasks ls -q 2>/dev/null)" ]]
}

node_down() {
  node_enabled || [[ -d "$NODE_STATE" ]] || return 0
  # 1. Let kubelet stop the pods the proper way (CNI DEL, volume unmounts): nothing new
  # may land, every pod bound to the node is deleted at once.
  if pid_alive kubelet "$NODE_STATE/kubelet/config.yaml" && [[ -f "$KUBECONFIG_OUT" ]] &&
    apiserver_ready; then
    kubectl_ cordon "$NODE_NAME" >/dev/null 2>&1 || true
    kubectl_ delete pods --all-namespaces --field-selector "spec.nodeName=$NODE_NAME" \
      --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
    if containerd_ready; then
      local start=$SECONDS
      until node_pods_gone || ((SECONDS - start > 30)); do sleep 0.5; done
    fi
  fi
  # 2. kube-proxy's rules, then the node's processes.
  if pid_alive kube-proxy "$NODE_STATE/kube-proxy/config.yaml"; then
    stop_bg kube-proxy "$NODE_STATE/kube-proxy/config.yaml"
  fi
  if [[ -x "$BIN_DIR/kube-proxy" ]] && command -v iptables >/dev/null; then
    "$BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  stop_bg kubelet "$NODE_STATE/kubelet/config.yaml"
  # 3. Whatever kubelet left: containers killed through containerd, then containerd.
  if containerd_ready; then
    local c
    for c in $(node_ctr tasks ls -q 2>/dev/null); do
      node_ctr tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for c in $(node_ctr containers ls -q 2>/dev/null); do
      node_ctr tasks delete -f "$c" >/dev/null 2>&1 || true
      node_ctr containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  stop_bg containerd "$NODE_STATE/containerd/config.toml"
  node_kill_leftovers
  node_cgroups_down
  node_network_down
  node_unmount_all
  node_iptables_down
  node_host_files_down
  node_sysctls_restore
  rm -rf "$NODE_RUN"
}

node_kill_leftovers() { # shims and container processes of our containerd
  local p cmd
  for p in /proc/[0-9]*; do
    cmd="$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)" || continue
    if [[ "$cmd" == *containerd-shim-runc-v2* && "$cmd" == *"$CONTAINERD_SOCK"* ]]; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
}

node_unmount_all() { # every mount under our state/run dirs, deepest first
  local m left=0
  for _ in 1 2 3; do
    left=0
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
      left=1
    done < <(awk '{print $5}' /proc/self/mountinfo | grep -E "^($NODE_STATE|$NODE_RUN)(/|$)" |
      awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
    ((left)) || break
  done
  if awk '{print $5}' /proc/self/mountinfo | grep -qE "^($NODE_STATE|$NODE_RUN)(/|$)"; then
    log "WARNING: mounts left under $NODE_STATE or $NODE_RUN"
  fi
}

node_network_down() { # veths on the bridge (their netns are gone by now), the bridge
  local v
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    for v in $(ip -o link show master "$NODE_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link delete "$v" 2>/dev/null || true
    done
    ip link delete "$NODE_BRIDGE" 2>/dev/null || true
  fi
  rm -rf "$NODE_STATE/cni/ipam"
  # containerd's CNI library caches results under /var/lib/cni (not configurable):
  # <network>-<sandbox id>-<interface>, ours are our network's and our sandboxes'.
  local task
  rm -f /var/lib/cni/results/"$NODE_CNI_NETWORK"-* 2>/dev/null || true
  for task in "$NODE_RUN/containerd/io.containerd.runtime.v2.task/k8s.io"/*; do
    [[ -d "$task" ]] && rm -f /var/lib/cni/results/*-"${task##*/}"-* 2>/dev/null
  done
  rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
}

node_iptables_down() { # chains of kube-proxy, kubelet and the CNI plugins, and jumps to them
  local ipt table chain rule
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$ipt" -t "$table" -S >/dev/null 2>&1 || continue
      # Rules in any chain that jump to ours, then our chains.
      while read -r rule; do
        # iptables -S quotes arguments the way a shell does (comments with spaces).
        eval "\"\$ipt\" -t \"\$table\" ${rule/-A /-D }" 2>/dev/null || true
      done < <("$ipt" -t "$table" -S 2>/dev/null | grep -E '^-A ' |
        grep -E -- '-j (KUBE-|CNI-)' | grep -vE '^-A (KUBE-|CNI-)')
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" {print $2}' |
        grep -E '^(KUBE-|CNI-)'); do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" {print $2}' |
        grep -E '^(KUBE-|CNI-)'); do
        "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

node_host_files_down() { # what kubelet writes outside its root dir
  local l
  for l in /var/log/containers/*; do
    [[ -L "$l" && "$(readlink "$l")" == "$NODE_STATE/"* ]] && rm -f "$l"
  done
  rmdir /var/log/containers 2>/dev/null || true
  # The device plugin socket path is a constant (k8s.io/kubelet/pkg/apis/deviceplugin).
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || true
}
