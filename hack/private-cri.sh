#!/usr/bin/env bash
# A private containerd 2.x with its CRI plugin, for the Kubernetes tests: runtime handler
# `usernsrs` (runtime_type io.containerd.usernsrs.v2), the pause and busybox images imported
# into the k8s.io namespace, CNI bridge networking with host ports (portmap). containerd runs in
# a network namespace and an IPC namespace made for it, so the pods' bridge, veths, port
# mappings and host-IPC segments never touch the host's; crictl and critest are run inside them
# too (the streaming server listens on the namespace's 127.0.0.1).
#
#   private-cri.sh start DIR [2|1.7]  prints CONTAINERD_ADDRESS, NETNS, CRICTL (default 2:
#                                     containerd $CONTAINERD2_VERSION, v2.4.2 unless set;
#                                     1.7: Debian trixie's 1.7.24)
#   private-cri.sh crictl DIR ARGS... crictl against it, inside its network and IPC namespaces
#   private-cri.sh critest DIR ARGS.. critest against it, inside its network and IPC namespaces
#   private-cri.sh registry DIR       a registry on the namespace's 127.0.0.1:5000 serving the
#                                     stand-ins hack/build-cri-images.sh builds under the names
#                                     critest pulls (every pull goes there: certs.d/_default)
#   private-cri.sh stop DIR           containerd, pods, mounts and both namespaces gone
#
# $USERNSRS_SHIM is linked into DIR/bin as containerd-shim-usernsrs-v2.
# $USERNSRS_CRI_DEFAULT_RUNTIME (containerd 2.x) names CRI's default runtime, the one a pod
# without a runtime handler gets (a standalone kubelet sends none: hack/private-kubelet.sh):
#   usernsrs  the `usernsrs` handler
#   runc      the `runc` handler with runc $RUNC_VERSION (v1.5.3) from the cache, state in DIR/runc
#   unset     containerd's own default (`runc`, the runc on PATH)
# $USERNSRS_CRI_NRI=1 (containerd 2.x) enables NRI with its socket at DIR/nri.sock, for critest's
# NRI specs (--nri-socket); no plugin is started from the machine's directories.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${USERNSRS_CACHE:-/var/cache/usernsrs}
CONTAINERD2_VERSION=${CONTAINERD2_VERSION:-v2.4.2}
BIN2="$CACHE/containerd-$CONTAINERD2_VERSION/bin"
BIN17="$CACHE/containerd-1.7/usr/bin"
CRI_BIN="$CACHE/cri/bin"

log() { printf '[private-cri] %s\n' "$*" >&2; }

# How the `usernsrs` handler is declared to containerd $CONTAINERD2_VERSION's CRI. CRI reports a
# handler as supporting user namespaces only after running its `-info`, and before v2.2.7, v2.3.4
# and v2.4.0 it did that only for runtime_type io.containerd.runc.v2: on those lines the handler
# is declared with runc's type and runtime_path naming this shim (which then receives runc's
# options). Override with USERNSRS_CRI_HANDLER=type|runc-path.
handler_style() {
  if [ -n "${USERNSRS_CRI_HANDLER:-}" ]; then echo "$USERNSRS_CRI_HANDLER"; return; fi
  case $CONTAINERD2_VERSION in
    v2.0.* | v2.1.* | v2.2.[0-6] | v2.3.[0-3]) echo runc-path ;;
    *) echo type ;;
  esac
}

# The CNI section: v2.0 reads one `bin_dir`; v2.1 on take a list, `bin_dirs`.
cni_bin_key() {
  case $CONTAINERD2_VERSION in
    v2.0.*) printf 'bin_dir = "%s"' "$1" ;;
    *) printf 'bin_dirs = ["%s"]' "$1" ;;
  esac
}
die() { log "$*"; exit 1; }

# The default runtime section for $USERNSRS_CRI_DEFAULT_RUNTIME (containerd 2.x, version 3).
default_runtime_toml() {
  local dir=$1 section='[plugins."io.containerd.cri.v1.runtime".containerd]'
  case ${USERNSRS_CRI_DEFAULT_RUNTIME:-} in
    '') ;;
    usernsrs) printf '  %s\n    default_runtime_name = "usernsrs"\n' "$section" ;;
    runc)
      local runc="$CACHE/runc-${RUNC_VERSION:-v1.5.3}/bin/runc"
      [ -x "$runc" ] || die "$runc is missing: run hack/install-peers.sh"
      printf '  %s\n    default_runtime_name = "runc"\n' "$section"
      printf '  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]\n'
      printf '    runtime_type = "io.containerd.runc.v2"\n'
      printf '    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]\n'
      printf '      BinaryName = "%s"\n      Root = "%s"\n' "$runc" "$dir/runc"
      ;;
    *) die "USERNSRS_CRI_DEFAULT_RUNTIME=$USERNSRS_CRI_DEFAULT_RUNTIME: want usernsrs or runc" ;;
  esac
}
# The network namespace is pinned by a bind mount at DIR/netns, not named with `ip netns add`:
# that bind-mounts /run/netns onto itself the first time a machine names a namespace, a mount
# that stays for good and that no test of ours should leave behind.
# The IPC namespace is pinned the same way at DIR/ipcns: a hostIPC pod shares containerd's, and
# critest makes System V segments in it (ipcmk) that die with the namespace.
netns_of() { printf '%s/netns' "$1"; }
ipcns_of() { printf '%s/ipcns' "$1"; }
in_netns() {
  local dir=$1; shift
  nsenter --net="$(netns_of "$dir")" --ipc="$(ipcns_of "$dir")" "$@"
}

# The CRI section of containerd 1.7's version-2 config.
config_17() {
  local dir=$1
  cat <<TOML
# Written by hack/private-cri.sh (containerd 1.7).
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "$dir/containerd.sock"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.10.2"
    netns_mounts_under_state_dir = true
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$dir/cni/bin"
      conf_dir = "$dir/cni/conf"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "usernsrs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.usernsrs]
      runtime_type = "io.containerd.usernsrs.v2"
TOML
}

handler_toml() {
  if [ "$(handler_style)" = runc-path ]; then
    printf '    runtime_type = "io.containerd.runc.v2"\n    runtime_path = "%s"\n' \
      "$1/bin/containerd-shim-usernsrs-v2"
  else
    printf '    runtime_type = "io.containerd.usernsrs.v2"\n'
  fi
}

cmd_start() {
  local dir flavor=${2:-2} bin
  dir=$(realpath -m "$1")
  case $flavor in
    2) bin=$BIN2 ;;
    1.7) bin=$BIN17 ;;
    *) die "unknown flavor $flavor: 2 or 1.7" ;;
  esac
  [ -x "$bin/containerd" ] && [ -x "$CRI_BIN/crictl" ] ||
    die "containerd $flavor or the CRI tools are missing: run hack/install-peers.sh"
  [ -n "${USERNSRS_SHIM:-}" ] || die "USERNSRS_SHIM must name the shim binary"
  local default_runtime
  default_runtime=$(default_runtime_toml "$dir")
  [ "$flavor" = 2 ] || [ -z "$default_runtime" ] ||
    die "USERNSRS_CRI_DEFAULT_RUNTIME is for containerd 2.x (1.7's default is usernsrs)"
  mkdir -p "$dir"/{bin,root,state,tmp,s,cni/conf,cni/bin,cni/ipam,pod-logs,certs.d/_default}
  # Every pull goes to the namespace's own loopback registry (cmd_registry); the namespace has
  # no route out either, so nothing else is ever reached.
  cat > "$dir/certs.d/_default/hosts.toml" <<HOSTS
server = "http://127.0.0.1:5000"
[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
HOSTS
  chmod 0700 "$dir/s"
  ln -sfn "$(realpath -e "$USERNSRS_SHIM")" "$dir/bin/containerd-shim-usernsrs-v2"
  cp "$CRI_BIN"/{bridge,host-local,loopback,portmap} "$dir/cni/bin/" ||
    die "CNI plugins missing in $CRI_BIN: run hack/install-peers.sh"
  local ns ipcns; ns=$(netns_of "$dir") ipcns=$(ipcns_of "$dir")
  touch "$ns" "$ipcns"
  unshare --net="$ns" --ipc="$ipcns" true
  nsenter --net="$ns" ip link set lo up
  cat > "$dir/cni/conf/10-usernsrs.conflist" <<CNI
{"cniVersion": "1.0.0", "name": "usernsrs-pods", "plugins": [
  {"type": "bridge", "bridge": "usernsrs0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": "$dir/cni/ipam",
            "ranges": [[{"subnet": "10.244.77.0/24"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
CNI
  # restrict_oom_score_adj: this machine's root lacks CAP_SYS_RESOURCE, so the pause
  # container's -998 could not be written; containerd clamps it to what is allowed.
  local nri_disabled='"io.containerd.nri.v1.nri", ' nri_toml=''
  if [ "${USERNSRS_CRI_NRI:-}" = 1 ]; then
    [ "$flavor" = 2 ] || die "USERNSRS_CRI_NRI is for containerd 2.x"
    mkdir -p "$dir"/nri/{plugins,conf.d}
    nri_disabled=''
    nri_toml=$(printf '  [plugins."io.containerd.nri.v1.nri"]\n    disable = false\n    socket_path = "%s"\n    plugin_path = "%s"\n    plugin_config_path = "%s"' \
      "$dir/nri.sock" "$dir/nri/plugins" "$dir/nri/conf.d")
  fi
  if [ "$flavor" = 1.7 ]; then
    config_17 "$dir" > "$dir/config.toml"
  else
  cat > "$dir/config.toml" <<TOML
# Written by hack/private-cri.sh.
version = 3
root = "$dir/root"
state = "$dir/state"
temp = "$dir/tmp"
disabled_plugins = ["io.containerd.internal.v1.opt", $nri_disabled
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.differ.v1.erofs",
  "io.containerd.mount-handler.v1.erofs"]

[grpc]
  address = "$dir/containerd.sock"

[plugins]
  [plugins."io.containerd.shim.v1.manager"]
    socket_dir = "$dir/s"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:3.10.2"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$dir/certs.d"
  [plugins."io.containerd.cri.v1.runtime"]
    netns_mounts_under_state_dir = true
    restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    $(cni_bin_key "$dir/cni/bin")
    conf_dir = "$dir/cni/conf"
$default_runtime
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.usernsrs]
$(handler_toml "$dir")
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
$nri_toml
TOML
  fi
  printf '%s\n' "$flavor" > "$dir/flavor"
  [ -e /run/containerd ] || touch "$dir/created-run-containerd"
  # exec all the way down, so that $! is containerd itself (stop kills that pid).
  (PATH="$dir/bin:$bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    exec nsenter --net="$ns" --ipc="$ipcns" "$bin/containerd" --config "$dir/config.toml" \
    </dev/null >>"$dir/containerd.log" 2>&1) &
  printf '%s\n' "$!" > "$dir/containerd.pid"
  local i
  for ((i = 0; i < 200; i++)); do
    if "$bin/ctr" --address "$dir/containerd.sock" version >/dev/null 2>&1; then
      local ctr=("$bin/ctr" --address "$dir/containerd.sock" -n k8s.io)
      "${ctr[@]}" images import "$(bash "$HERE/build-pause-image.sh")" >/dev/null
      "${ctr[@]}" images import "$(bash "$HERE/build-images.sh")" >/dev/null
      printf 'CONTAINERD_ADDRESS=%s\nNETNS=%s\nCRICTL=%s\n' "$dir/containerd.sock" "$ns" "$CRI_BIN/crictl"
      log "containerd with CRI (pid $(cat "$dir/containerd.pid")) ready at $dir/containerd.sock"
      return 0
    fi
    sleep 0.1
  done
  tail -n 30 "$dir/containerd.log" >&2 || true
  die "containerd did not answer on $dir/containerd.sock"
}

cmd_crictl() {
  local dir; dir=$(realpath -m "$1"); shift
  in_netns "$dir" "$CRI_BIN/crictl" --config /dev/null \
    --runtime-endpoint "unix://$dir/containerd.sock" --image-endpoint "unix://$dir/containerd.sock" \
    --timeout 60s "$@"
}

cmd_critest() {
  local dir; dir=$(realpath -m "$1"); shift
  in_netns "$dir" "$CRI_BIN/critest" --runtime-endpoint "unix://$dir/containerd.sock" \
    --image-endpoint "unix://$dir/containerd.sock" "$@"
}

cmd_registry() {
  local dir; dir=$(realpath -m "$1")
  [ -x "$CRI_BIN/registry" ] || die "the registry is missing: run hack/install-peers.sh"
  local archive; archive=$(bash "$HERE/build-cri-images.sh")
  mkdir -p "$dir/registry"
  cat > "$dir/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/registry
http:
  addr: 127.0.0.1:5000
YML
  (exec nsenter --net="$(netns_of "$dir")" "$CRI_BIN/registry" serve "$dir/registry.yml" \
    </dev/null >>"$dir/registry.log" 2>&1) &
  printf '%s\n' "$!" > "$dir/registry.pid"
  local bin flavor; flavor=$(cat "$dir/flavor")
  bin=$BIN2; [ "$flavor" = 1.7 ] && bin=$BIN17
  local ctr=("$bin/ctr" --address "$dir/containerd.sock" -n k8s.io)
  local i image
  for ((i = 0; i < 100; i++)); do
    in_netns "$dir" bash -c 'exec 3<>/dev/tcp/127.0.0.1/5000' 2>/dev/null && break
    sleep 0.1
  done
  # Imported under critest's names, pushed under the registry-less path every pull resolves to
  # (certs.d/_default sends registry.k8s.io/x and gcr.io/x alike to 127.0.0.1:5000/x), then
  # both names removed: critest finds nothing it has not pulled.
  "${ctr[@]}" images import "$archive" >/dev/null
  local -a images; mapfile -t images < <(bash "$HERE/build-cri-images.sh" --names)
  for image in "${images[@]}"; do
    local local_ref=127.0.0.1:5000/${image#*/}
    "${ctr[@]}" images tag --force "$image" "$local_ref" >/dev/null
    in_netns "$dir" "${ctr[@]}" images push --plain-http "$local_ref" >/dev/null
    "${ctr[@]}" images rm "$local_ref" "$image" >/dev/null
  done
  log "registry on 127.0.0.1:5000 in $(netns_of "$dir") serves ${#images[@]} critest images"
}

cmd_stop() {
  local dir; dir=$(realpath -m "$1")
  # Pods first, while containerd answers: their network teardown runs the CNI plugins.
  if [ -S "$dir/containerd.sock" ]; then
    cmd_crictl "$dir" rmp --all --force >/dev/null 2>&1 || true
  fi
  local status=0
  if [ -f "$dir/registry.pid" ]; then
    kill "$(cat "$dir/registry.pid")" 2>/dev/null || true
    rm -f "$dir/registry.pid"
  fi
  bash "$HERE/private-containerd.sh" stop "$dir" || status=$?
  local ns
  for ns in "$(netns_of "$dir")" "$(ipcns_of "$dir")"; do
    if mountpoint -q "$ns"; then umount "$ns" || status=1; fi
    rm -f "$ns"
  done
  return $status
}

case "${1:-}" in
  start) [ $# -ge 2 ] || die "usage: $0 start DIR [2|1.7]"; cmd_start "$2" "${3:-2}" ;;
  crictl) shift; cmd_crictl "$@" ;;
  critest) shift; cmd_critest "$@" ;;
  registry) [ $# -eq 2 ] || die "usage: $0 registry DIR"; cmd_registry "$2" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; cmd_stop "$2" ;;
  *) die "usage: $0 start DIR | crictl DIR ARGS... | critest DIR ARGS... | stop DIR" ;;
esac
