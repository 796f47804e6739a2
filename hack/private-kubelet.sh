#!/usr/bin/env bash
# A standalone kubelet (no API server: static pods only) against a private CRI containerd
# (hack/private-cri.sh) whose default runtime is the usernsrs shim or, for comparison, runc.
# A standalone kubelet has no RuntimeClass manager and sends every pod with the default runtime
# handler, hence CRI's `default_runtime_name`.
#
#   private-kubelet.sh start DIR [usernsrs|runc]  containerd (private-cri.sh start DIR), then the
#                                     kubelet; prints private-cri's lines and KUBELET_PID,
#                                     KUBELET_ROOT, MANIFESTS, POD_LOGS (default usernsrs)
#   private-kubelet.sh kubelet-stop DIR    the kubelet only (pods keep running)
#   private-kubelet.sh kubelet-start DIR   the kubelet again, same root directory and pods
#   private-kubelet.sh pods DIR       the kubelet's /pods (JSON PodList, with the static pods'
#                                     status) from 127.0.0.1:10250 inside the network namespace
#   private-kubelet.sh stop DIR       manifests removed, pods gone, kubelet stopped, its mounts
#                                     unmounted, then private-cri.sh stop DIR
#
# Everything lives under DIR/kubelet: root (--root-dir), pki (--cert-dir), manifests
# (staticPodPath), pod-logs (podLogsDir), config.yaml, kubelet.log. The kubelet runs in the
# network namespace private-cri.sh made (its ports, and any iptables chain it makes, stay there)
# and in a mount namespace of its own, where
#   - the six sysctls it sets (vm.overcommit_memory, vm.panic_on_oom, kernel.panic,
#     kernel.panic_on_oops, kernel.keys.root_maxkeys, kernel.keys.root_maxbytes) are regular
#     files holding the host's values, bound over /proc/sys: its writes never reach the host;
#   - /var/log is DIR/kubelet/var-log: it creates /var/log/containers and links there.
# Its volume mounts (the tmpfs of downward API and memory-backed emptyDir volumes, under the
# root directory) must reach containerd, which runs in the host's mount namespace: the root
# directory is a bind mount made shared (its own peer group) before the kubelet's namespace is
# made with propagation unchanged, and the mounts the kubelet's bind mounts hang off are made
# private there first, so that only what it mounts under the root directory propagates out.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${USERNSRS_CACHE:-/var/cache/usernsrs}
KUBELET_VERSION=${KUBELET_VERSION:-v1.35.4}
KUBELET="$CACHE/kubelet-$KUBELET_VERSION/bin/kubelet"
# The node name, and with it the static pods' name suffix (`<name>-usernsrs-node`).
NODE_NAME=usernsrs-node
SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes)

log() { printf '[private-kubelet] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
usage() { die "usage: $0 start DIR [usernsrs|runc] | kubelet-stop DIR | kubelet-start DIR | pods DIR | stop DIR"; }

kdir() { printf '%s/kubelet' "$1"; }
in_netns() { local dir=$1; shift; nsenter --net="$dir/netns" "$@"; }
# under PATH DIR: true when PATH is DIR or lies below it.
under() { [ "$1" = "$2" ] || [ "${1#"$2"/}" != "$1" ]; }

# mounts_under DIR: mount points at or below DIR in this mount namespace, deepest first.
mounts_under() {
  local dir=$1 mp
  while read -r _ _ _ _ mp _; do
    mp=$(printf '%b' "$mp")
    if under "$mp" "$dir"; then printf '%s\t%s\n' "$(tr -cd / <<<"$mp" | wc -c)" "$mp"; fi
  done < /proc/self/mountinfo | sort -t$'\t' -k1,1nr -k2,2r | cut -f2-
}

write_config() {
  local dir=$1 k; k=$(kdir "$1")
  cat > "$k/config.yaml" <<YAML
# Written by hack/private-kubelet.sh: a standalone kubelet on a cgroup v1 (hybrid) host.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$dir/containerd.sock
imageServiceEndpoint: unix://$dir/containerd.sock
runtimeRequestTimeout: 2m
staticPodPath: $k/manifests
fileCheckFrequency: 5s
syncFrequency: 10s
podLogsDir: $k/pod-logs
volumePluginDir: $k/volume-plugins
# cgroupfs, no QoS or node-allocatable cgroups: pods go where CRI puts them; cgroup v1 allowed.
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
# It writes its sysctls into the copies bound over /proc/sys in its mount namespace.
protectKernelDefaults: false
makeIPTablesUtilChains: false
# On by default (beta) since 1.33; named so that a kubelet where it is off still runs the tests.
featureGates:
  UserNamespacesSupport: true
# No image garbage collection of the imported test images.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# No API server: nobody to authenticate against; the ports listen only on the network
# namespace's loopback.
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
YAML
}

# The kubelet's pid, if the one recorded for DIR still runs (guards against pid reuse).
kubelet_pid() {
  local k pid; k=$(kdir "$1")
  pid=$(cat "$k/kubelet.pid" 2>/dev/null) || return 1
  tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF -- "--config $k/config.yaml" || return 1
  printf '%s\n' "$pid"
}

healthy() { in_netns "$1" curl -sf --max-time 5 http://127.0.0.1:10248/healthz >/dev/null 2>&1; }

cmd_kubelet_start() {
  local dir=$1 k; k=$(kdir "$dir")
  [ -x "$KUBELET" ] || die "$KUBELET is missing: run hack/install-peers.sh"
  [ -f "$k/config.yaml" ] || die "$dir has no kubelet set up (no $k/config.yaml): use start"
  if kubelet_pid "$dir" >/dev/null; then die "a kubelet (pid $(kubelet_pid "$dir")) already runs for $dir"; fi
  # The kubelet's own mount namespace, in the CRI network namespace; exec all the way down so
  # that $! is the kubelet itself.
  (exec nsenter --net="$dir/netns" unshare --mount --propagation unchanged -- \
    bash "$HERE/private-kubelet.sh" _exec "$dir" </dev/null >>"$k/kubelet.log" 2>&1) &
  printf '%s\n' "$!" > "$k/kubelet.pid"
  local i
  for ((i = 0; i < 600; i++)); do
    if healthy "$dir"; then
      log "kubelet (pid $(cat "$k/kubelet.pid")) healthy, root $k/root"
      return 0
    fi
    kill -0 "$(cat "$k/kubelet.pid")" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 40 "$k/kubelet.log" >&2 || true
  die "the kubelet did not become healthy (log: $k/kubelet.log)"
}

# Inside the kubelet's new mount namespace (still root's): the copies over /proc/sys and
# /var/log, then the kubelet.
cmd_exec() {
  local dir=$1 k s; k=$(kdir "$dir")
  # Step 1: the mounts the bind mounts below hang off leave any peer group, so nothing of
  # them propagates to the host (where / may be shared). The root directory stays shared.
  mount --make-private "$(findmnt -n -o TARGET --target /proc/sys/kernel/panic)"
  mount --make-private "$(findmnt -n -o TARGET --target /var/log)"
  # Step 2: the sysctls the kubelet writes are copies of the host's values.
  for s in "${SYSCTLS[@]}"; do
    mount --bind "$k/sysctl/${s//\//.}" "/proc/sys/$s"
  done
  # Step 3: /var/log/containers, where it links the containers' logs, is its own.
  mount --bind "$k/var-log" /var/log
  exec "$KUBELET" --config "$k/config.yaml" --root-dir "$k/root" --cert-dir "$k/pki" \
    --hostname-override "$NODE_NAME" --v=2
}

cmd_start() {
  local dir runtime=${2:-usernsrs} k
  dir=$(realpath -e "$1")
  k=$(kdir "$dir")
  case $runtime in usernsrs | runc) ;; *) die "unknown runtime $runtime: usernsrs or runc" ;; esac
  [ -x "$KUBELET" ] || die "$KUBELET is missing: run hack/install-peers.sh"
  [ ! -e "$k" ] || die "$k exists: one kubelet per directory"
  # A start that fails half way leaves nothing running or mounted.
  trap 'log "start failed: stopping what it started"; cmd_stop "$dir" || true' EXIT
  USERNSRS_CRI_DEFAULT_RUNTIME=$runtime bash "$HERE/private-cri.sh" start "$dir" 2
  mkdir -p "$k"/{root,pki,manifests,pod-logs,volume-plugins,var-log,sysctl}
  local s
  for s in "${SYSCTLS[@]}"; do
    cat "/proc/sys/$s" > "$k/sysctl/${s//\//.}"
  done
  write_config "$dir"
  # The root directory: a bind mount in a peer group of its own, shared with the kubelet's
  # mount namespace and no other.
  mount --bind "$k/root" "$k/root"
  mount --make-private "$k/root"
  mount --make-shared "$k/root"
  cmd_kubelet_start "$dir"
  trap - EXIT
  printf 'KUBELET_PID=%s\nKUBELET_ROOT=%s\nMANIFESTS=%s\nPOD_LOGS=%s\n' \
    "$(cat "$k/kubelet.pid")" "$k/root" "$k/manifests" "$k/pod-logs"
}

cmd_kubelet_stop() {
  local dir=$1 pid i
  pid=$(kubelet_pid "$dir") || { log "no kubelet runs for $dir"; return 0; }
  kill -TERM "$pid"
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "kubelet $pid ignored SIGTERM for 20 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  die "kubelet $pid survived SIGKILL"
}

cmd_pods() {
  in_netns "$1" curl -sfk --max-time 10 https://127.0.0.1:10250/pods
}

# Ready or running sandboxes and running containers CRI still has.
cri_busy() {
  local out
  out=$(bash "$HERE/private-cri.sh" crictl "$1" pods --state ready -q 2>/dev/null)
  out+=$(bash "$HERE/private-cri.sh" crictl "$1" ps -q 2>/dev/null)
  [ -n "$out" ]
}

cmd_stop() {
  local dir k status=0
  dir=$(realpath -e "$1")
  k=$(kdir "$dir")
  if [ -d "$k" ]; then
    # Step 1: while the kubelet runs, let it stop its pods (and unmount their volumes).
    if kubelet_pid "$dir" >/dev/null; then
      rm -f "$k/manifests"/*
      local i
      for ((i = 0; i < 600; i++)); do
        cri_busy "$dir" || break
        sleep 0.1
      done
      cri_busy "$dir" && log "pods still run 60 s after their manifests went; forcing"
    fi
    # Step 2: the kubelet.
    cmd_kubelet_stop "$dir" || status=1
    # Step 3: what it left mounted under its root directory (the mounts propagated here),
    # then the root directory's own bind mount.
    local round mp left
    for ((round = 0; round < 5; round++)); do
      left=$(mounts_under "$k")
      [ -z "$left" ] && break
      while IFS= read -r mp; do
        umount -- "$mp" 2>/dev/null || umount -l -- "$mp" 2>/dev/null || true
      done <<<"$left"
    done
    left=$(mounts_under "$k")
    if [ -n "$left" ]; then log "mounts remain under $k:"; printf '  %s\n' "$left" >&2; status=1; fi
    rm -f "$k/kubelet.pid"
  fi
  # Step 4: containerd, the pods it still has, its mounts and the network namespace.
  bash "$HERE/private-cri.sh" stop "$dir" || status=$?
  return $status
}

[ $# -ge 2 ] || usage
case $1 in
  start) [ $# -le 3 ] || usage; cmd_start "$2" "${3:-usernsrs}" ;;
  kubelet-start) cmd_kubelet_start "$(realpath -e "$2")" ;;
  kubelet-stop) cmd_kubelet_stop "$(realpath -e "$2")" ;;
  pods) cmd_pods "$(realpath -e "$2")" ;;
  stop) cmd_stop "$2" ;;
  _exec) cmd_exec "$2" ;;
  *) usage ;;
esac
