#!/usr/bin/env bash
# Runs a private containerd whose every file lives under one directory, so tests and the demo
# never touch a system-wide containerd (/run/containerd/containerd.sock, /var/lib/containerd).
#
#   private-containerd.sh start DIR FLAVOR   FLAVOR: 1.6 (Debian's) or 2 (v2.4.2 from the cache)
#   private-containerd.sh ctr DIR ARGS...    the flavor's ctr with --address DIR/containerd.sock
#   private-containerd.sh stop DIR           containerd, its shims and containers gone, DIR unmounted
#
# `start` prints KEY=VALUE lines on stdout (CONTAINERD_ADDRESS, CTR, CONTAINERD_PID,
# CONTAINERD_FLAVOR) and leaves containerd running in the background, logging to
# DIR/containerd.log. If $USERNSRS_SHIM is set it is linked as DIR/bin/containerd-shim-usernsrs-v2,
# which is first on containerd's PATH, so `--runtime io.containerd.usernsrs.v2` finds it.
#
# Footprint outside DIR, and how `stop` cleans it:
#   - containerd 1.6's runc shim puts its socket in /run/containerd/s/<sha256> (hard-coded);
#     containerd 2.x takes `socket_dir` from the shim manager's config, set here to DIR/s when
#     that path is short enough (<= 42 bytes), else the same /run/containerd/s. `stop` removes
#     only the sockets of this instance's shims.
#   - runc keeps container state in /run/containerd/runc/<namespace>/<id>: `stop` deletes
#     leftovers whose bundle lies under DIR.
#   - ctr's FIFOs in /run/containerd/fifo unless `ctr run --fifo-dir DIR/fifo` is used.
#   - the containers' cgroups, removed with the containers.
#   If /run/containerd did not exist at `start`, `stop` removes these directories when empty.
# `stop` leaves DIR itself for the caller, and exits non-zero if a mount under DIR remains.
set -euo pipefail

CACHE=${USERNSRS_CACHE:-/var/cache/usernsrs}
CONTAINERD2_VERSION=${CONTAINERD2_VERSION:-v2.4.2}
SYSTEM_SOCKET_DIR=/run/containerd/s
MAX_SOCKET_DIR_LEN=42   # containerd 2.x core/runtime/v2/socket_linux.go

log() { printf '[private-containerd] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
usage() { die "usage: $0 start DIR 1.6|2 | ctr DIR ARGS... | stop DIR"; }

# flavor_bin FLAVOR: the directory holding that flavor's containerd, ctr and runc shim.
flavor_bin() {
  case $1 in
    1.6) echo /usr/bin ;;
    1.7) echo "$CACHE/containerd-1.7/usr/bin" ;;
    2) echo "$CACHE/containerd-$CONTAINERD2_VERSION/bin" ;;
    *) die "unknown flavor '$1' (want 1.6 or 2)" ;;
  esac
}

# canonical DIR: mountinfo and the shims' command lines use canonical paths.
canonical() { [ -d "$1" ] || die "$1 is not a directory"; realpath -e "$1"; }

# under PATH DIR: true when PATH is DIR or lies below it (not merely shares a prefix).
under() { [ "$1" = "$2" ] || [ "${1#"$2"/}" != "$1" ]; }

run_ctr() {
  local dir=$1; shift
  local flavor; flavor=$(cat "$dir/flavor") || die "$dir has no private containerd (no $dir/flavor)"
  exec "$(flavor_bin "$flavor")/ctr" --address "$dir/containerd.sock" "$@"
}

write_config() {
  local dir=$1 flavor=$2 socket_dir=$3
  # Plugins that would act outside DIR (CRI networking and its images, NRI's socket in
  # /var/run/nri, /opt/containerd, aufs' modprobe) or that only slow the start down.
  local common='"io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"'
  if [ "$flavor" = 1.6 ]; then
    cat > "$dir/config.toml" <<EOF
# Written by hack/private-containerd.sh for a private containerd 1.6.
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [$common,
  "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "$dir/containerd.sock"

[plugins]
  [plugins."io.containerd.snapshotter.v1.overlayfs"]
EOF
  else
    local shim_manager=''
    if [ -n "$socket_dir" ]; then
      shim_manager="[plugins.\"io.containerd.shim.v1.manager\"]
  socket_dir = \"$socket_dir\""
    fi
    cat > "$dir/config.toml" <<EOF
# Written by hack/private-containerd.sh for a private containerd 2.x (version 3 is migrated
# by 2.4, whose own default is version 4).
version = 3
root = "$dir/root"
state = "$dir/state"
temp = "$dir/tmp"
disabled_plugins = [$common,
  "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs",
  "io.containerd.differ.v1.erofs", "io.containerd.mount-handler.v1.erofs"]

[grpc]
  address = "$dir/containerd.sock"

[plugins]
  [plugins."io.containerd.snapshotter.v1.overlayfs"]
  $shim_manager
EOF
  fi
}

cmd_start() {
  [ $# -eq 2 ] || usage
  local dir flavor=$2 bin
  dir=$(canonical "$1")
  bin=$(flavor_bin "$flavor")
  [ -x "$bin/containerd" ] || die "$bin/containerd is missing: run hack/install-peers.sh"
  if [ -e "$dir/containerd.pid" ] && kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null; then
    die "a containerd (pid $(cat "$dir/containerd.pid")) already runs in $dir"
  fi

  mkdir -p "$dir/bin" "$dir/root" "$dir/state" "$dir/tmp"
  if [ -n "${USERNSRS_SHIM:-}" ]; then
    [ -x "$USERNSRS_SHIM" ] || die "USERNSRS_SHIM=$USERNSRS_SHIM is not an executable file"
    ln -sfn "$(realpath -e "$USERNSRS_SHIM")" "$dir/bin/containerd-shim-usernsrs-v2"
  fi

  local socket_dir=''
  if [ "$flavor" = 2 ]; then
    if [ ${#dir} -le $((MAX_SOCKET_DIR_LEN - 2)) ]; then
      socket_dir=$dir/s
      mkdir -p "$socket_dir"; chmod 0700 "$socket_dir"
    else
      log "$dir is too long for a private shim socket dir: shim sockets go to $SYSTEM_SOCKET_DIR"
    fi
  fi
  printf '%s\n' "$flavor" > "$dir/flavor"
  # Shims and ctr create /run/containerd/{s,fifo,runc}; if we are the first, `stop` removes
  # what is left empty of them.
  [ -e /run/containerd ] || touch "$dir/created-run-containerd"
  write_config "$dir" "$flavor" "$socket_dir"

  # DIR/bin first (our shim), then the flavor's own bin dir, so containerd 2.x runs its own
  # containerd-shim-runc-v2 and containerd 1.6 Debian's /usr/bin one. stdio goes to the log:
  # a caller reading our stdout must not wait for containerd to exit.
  PATH="$dir/bin:$bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    "$bin/containerd" --config "$dir/config.toml" \
    </dev/null >>"$dir/containerd.log" 2>&1 &
  local pid=$!
  printf '%s\n' "$pid" > "$dir/containerd.pid"

  local i
  for ((i = 0; i < 200; i++)); do
    if "$bin/ctr" --address "$dir/containerd.sock" version >/dev/null 2>&1; then
      printf 'CONTAINERD_ADDRESS=%s\nCTR=%s\nCONTAINERD_PID=%s\nCONTAINERD_FLAVOR=%s\n' \
        "$dir/containerd.sock" "$bin/ctr" "$pid" "$flavor"
      log "containerd $flavor (pid $pid) ready at $dir/containerd.sock"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  log "containerd $flavor (pid $pid) did not answer on $dir/containerd.sock; log tail:"
  tail -n 30 "$dir/containerd.log" >&2 || true
  kill -KILL "$pid" 2>/dev/null || true
  exit 1
}

# is_our_containerd PID DIR: true if PID is the containerd started for DIR (guards against pid reuse).
is_our_containerd() {
  tr '\0' ' ' 2>/dev/null < "/proc/$1/cmdline" | grep -qF -- "--config $2/config.toml"
}

# shim_pids DIR: shims serving this instance: they are started with `-address DIR/containerd.sock`
# and run in their bundle, DIR/state/io.containerd.runtime.v2.task/<ns>/<id>.
shim_pids() {
  local dir=$1 p pid cwd
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = $$ ] && continue
    if tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -qF -- "-address $dir/containerd.sock"; then
      echo "$pid"; continue
    fi
    cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
    under "$cwd" "$dir/state" && echo "$pid"
  done
  return 0
}

# descendants PID...: every process below the given ones (the containers under a shim).
descendants() {
  local -A parent_of=() seen=()
  local p pid ppid stat changed=1
  for p in /proc/[0-9]*/stat; do
    { stat=$(<"$p"); } 2>/dev/null || continue
    pid=${stat%% *}
    read -r _ ppid _ <<<"${stat##*) }"
    parent_of[$pid]=$ppid
  done
  for pid in "$@"; do seen[$pid]=1; done
  while [ $changed = 1 ]; do
    changed=0
    for pid in "${!parent_of[@]}"; do
      if [ -z "${seen[$pid]:-}" ] && [ -n "${seen[${parent_of[$pid]}]:-}" ]; then
        seen[$pid]=1; echo "$pid"; changed=1
      fi
    done
  done
}

# kill_and_wait SECONDS PID...: SIGTERM, up to SECONDS for them to go, then SIGKILL.
kill_and_wait() {
  local secs=$1; shift
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  local i pid alive
  for ((i = 0; i < secs * 10; i++)); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  log "processes still alive after SIGKILL: $*"
}

# Asks the running containerd to remove its tasks and containers: runc then deletes its state
# and the cgroups, and the shims remove their sockets themselves.
polite_cleanup() {
  local dir=$1 bin ns id
  bin=$(flavor_bin "$(cat "$dir/flavor")")
  local ctr=("timeout" "10" "$bin/ctr" "--address" "$dir/containerd.sock")
  for ns in $("${ctr[@]}" namespaces ls -q 2>/dev/null); do
    for id in $("${ctr[@]}" -n "$ns" tasks ls -q 2>/dev/null); do
      "${ctr[@]}" -n "$ns" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      "${ctr[@]}" -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
    done
    for id in $("${ctr[@]}" -n "$ns" containers ls -q 2>/dev/null); do
      "${ctr[@]}" -n "$ns" containers delete "$id" >/dev/null 2>&1 || true
    done
  done
}

# shim_socket_paths DIR SHIM_PID...: the socket files of this instance's shims: the `address`
# file each shim writes in its bundle, and for shims still running, the address they derive
# from -namespace/-id (sha256 of "<containerd address>/<ns>/<id>[/debug]").
shim_socket_paths() {
  local dir=$1; shift
  local f addr pid args ns id root i
  for f in "$dir"/state/io.containerd.runtime.v2.task/*/*/address; do
    [ -f "$f" ] || continue
    addr=$(cat "$f"); echo "${addr#unix://}"
  done
  for pid in "$@"; do
    mapfile -d '' -t args 2>/dev/null < "/proc/$pid/cmdline" || continue
    ns='' id=''
    for ((i = 0; i < ${#args[@]} - 1; i++)); do
      case ${args[i]} in
        -namespace) ns=${args[i + 1]} ;;
        -id) id=${args[i + 1]} ;;
      esac
    done
    if [ -z "$ns" ] || [ -z "$id" ]; then continue; fi
    for root in "$SYSTEM_SOCKET_DIR" "$dir/s"; do
      echo "$root/$(printf '%s' "$dir/containerd.sock/$ns/$id" | sha256sum | cut -d' ' -f1)"
      echo "$root/$(printf '%s' "$dir/containerd.sock/$ns/$id/debug" | sha256sum | cut -d' ' -f1)"
    done
  done
  return 0
}

# Leftover runc state of containers whose bundle is under DIR (after a shim was killed), in
# runc's default root for containerd or in DIR/runc (`ctr run --runc-root DIR/runc`).
delete_runc_leftovers() {
  local dir=$1 bundle ns id root
  for bundle in "$dir"/state/io.containerd.runtime.v2.task/*/*; do
    [ -d "$bundle" ] || continue
    id=${bundle##*/}; ns=${bundle%/*}; ns=${ns##*/}
    for root in "/run/containerd/runc/$ns" "$dir/runc/$ns"; do
      if [ -f "$root/$id/state.json" ] && grep -qF "\"bundle=$bundle\"" "$root/$id/state.json"; then
        log "deleting leftover runc container $ns/$id in $root"
        runc --root "$root" delete --force "$id" >/dev/null 2>&1 || true
      fi
    done
  done
}

# mounts_under DIR: mount points at or below DIR, deepest first (mountinfo field 5, unescaped).
mounts_under() {
  local dir=$1 mp
  while read -r _ _ _ _ mp _; do
    mp=$(printf '%b' "$mp")
    if under "$mp" "$dir"; then printf '%s\t%s\n' "$(tr -cd / <<<"$mp" | wc -c)" "$mp"; fi
  done < /proc/self/mountinfo | sort -t$'\t' -k1,1nr | cut -f2-
}

cmd_stop() {
  [ $# -eq 1 ] || usage
  local dir pid
  dir=$(canonical "$1")
  if [ ! -f "$dir/flavor" ]; then
    log "no containerd was started in $dir: nothing to stop"
    return 0
  fi

  # Step 1: while containerd still answers, let it tear its containers down properly.
  pid=$(cat "$dir/containerd.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && is_our_containerd "$pid" "$dir"; then
    polite_cleanup "$dir"
  fi

  # Step 2: note the shims and their sockets before anything dies.
  local shims=() sockets=() children=()
  mapfile -t shims < <(shim_pids "$dir")
  mapfile -t sockets < <(shim_socket_paths "$dir" "${shims[@]}" | sort -u)

  # Step 3: containerd itself.
  if [ -n "$pid" ] && is_our_containerd "$pid" "$dir"; then
    kill_and_wait 10 "$pid"
  fi

  # Step 4: shims left behind and the containers below them; SIGKILL the containers first so
  # a shim's cleanup does not race with them.
  if [ ${#shims[@]} -gt 0 ]; then
    mapfile -t children < <(descendants "${shims[@]}")
    if [ ${#children[@]} -gt 0 ]; then
      log "killing leftover container processes: ${children[*]}"
      kill -KILL "${children[@]}" 2>/dev/null || true
    fi
    log "stopping leftover shims: ${shims[*]}"
    kill_and_wait 5 "${shims[@]}"
  fi
  delete_runc_leftovers "$dir"

  # Step 5: stale shim sockets of this instance, and only those.
  local s
  for s in "${sockets[@]}"; do
    if [ -S "$s" ] && { under "$s" "$SYSTEM_SOCKET_DIR" || under "$s" "$dir"; }; then
      rm -f -- "$s"
    fi
  done

  # Step 6: unmount everything below DIR, deepest first; stacked mounts need several rounds.
  local round mp left
  for ((round = 0; round < 5; round++)); do
    left=$(mounts_under "$dir")
    [ -z "$left" ] && break
    while IFS= read -r mp; do
      umount -- "$mp" 2>/dev/null || umount -l -- "$mp" 2>/dev/null || true
    done <<<"$left"
  done
  # Step 7: the directories under /run/containerd that this instance brought into being, if
  # they are empty (another private instance may be using them).
  if [ -e "$dir/created-run-containerd" ]; then
    local ns_dir
    for ns_dir in "$dir"/state/io.containerd.runtime.v2.task/*/; do
      rmdir "/run/containerd/runc/$(basename "$ns_dir")" 2>/dev/null || true
    done
    rmdir /run/containerd/s /run/containerd/fifo /run/containerd/runc 2>/dev/null || true
    rmdir /run/containerd 2>/dev/null || true
  fi

  left=$(mounts_under "$dir")
  if [ -n "$left" ]; then
    log "mounts remain under $dir:"; printf '  %s\n' "$left" >&2
    exit 1
  fi
  rm -f "$dir/containerd.pid"
}

[ $# -ge 1 ] || usage
cmd=$1; shift
case $cmd in
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  ctr) [ $# -ge 1 ] || usage; run_ctr "$@" ;;
  *) usage ;;
esac
