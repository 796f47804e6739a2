#!/usr/bin/env bash
# The VM test bed, host side (`make vm-test`): boots Debian's own kernels under QEMU with PURE
# cgroup v2 (cgroup_no_v1=all) and runs the integration tests listed in integration/vm-tests.txt
# inside each guest, then prints a per-kernel summary. The machine's own kernel (hybrid cgroups)
# is one data point; users run Debian's 6.1, 6.12 and backports kernels, with systemd's v2-only
# layout, and idmapped-mount support differs between them.
#
# How a guest is put together (every piece made here or by the scripts next to this one):
#   - kernel: hack/vm/fetch-kernels.sh unpacks Debian's package into $CACHE/vm/kernels/;
#   - initramfs: hack/vm/build-initramfs.sh (busybox + hack/vm/initramfs-init + 9p/overlay/ext4);
#   - root: the host's / as a read-only 9p share under a tmpfs overlay, so the guest sees the
#     same paths as the host: the checkout, the cargo target dir with the test binaries built
#     here, and $CACHE with containerd v2.4.2;
#   - /tmp and /var/lib/containerd: a fresh sparse ext4 image per VM (virtio disk);
#   - results: a read-write 9p share, $RESULTS/<kernel>/, mounted in the guest at that path;
#   - pid 1 after switch_root: hack/vm/guest-init.sh.
#
# Environment:
#   USERNSRS_VM_KERNELS   which kernels, default "6.1 6.12 backports"
#   USERNSRS_VM_TESTS     the test list, default integration/vm-tests.txt
#   USERNSRS_VM_RESULTS   default $CACHE/vm/results (summary.txt there, one dir per kernel)
#   USERNSRS_VM_TIMEOUT   hard limit per VM in seconds, default 1200
#   USERNSRS_VM_TEST_TIMEOUT  limit per test inside the guest, default 600
#   USERNSRS_VM_MEMORY    guest memory, default 4G
#   USERNSRS_VM_JOBS      VMs side by side, default the number of cores
#   USERNSRS_SHIM         the shim under test, default the debug build
# Exits non-zero if a test FAILED on any kernel or a VM did not finish (the serial log's tail
# is shown). A test printing `usernsrs-not-applicable: <reason>` is reported, not counted.
set -euo pipefail

CACHE=${USERNSRS_CACHE:-/var/cache/usernsrs}
VM_CACHE="$CACHE/vm"
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CONTAINERD2_VERSION=${CONTAINERD2_VERSION:-v2.4.2}
PEERS="$CACHE/containerd-$CONTAINERD2_VERSION/bin"
read -r -a KEYS <<<"${USERNSRS_VM_KERNELS:-6.1 6.12 backports}"
TEST_LIST=${USERNSRS_VM_TESTS:-$REPO/integration/vm-tests.txt}
RESULTS=${USERNSRS_VM_RESULTS:-$VM_CACHE/results}
VM_TIMEOUT=${USERNSRS_VM_TIMEOUT:-1200}
MEMORY=${USERNSRS_VM_MEMORY:-4G}
DISK_SIZE=8G

log() { printf '[vm-test] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# under PATH DIR: true when PATH is DIR or lies below it.
under() { [ "$1" = "$2" ] || [ "${1#"$2"/}" != "$1" ]; }

# The guest mounts its own /run, /dev, /proc and /sys: a path the guest must see as the host
# does cannot live there. /tmp is the guest's disk, but paths under it (a checkout in /tmp) are
# bound back over it by the guest: they are collected in KEEP.
KEEP=()
check_visible() {
  local what=$1 path=$2 d
  for d in /run /dev /proc /sys; do
    under "$path" "$d" && die "$what ($path) is under $d, which the guest mounts over: move it"
  done
  if under "$path" /tmp; then
    [[ "$path" != *' '* ]] || die "$what ($path) is under /tmp and has a space in its path"
    KEEP+=("$path")
  fi
  return 0
}

# Step 1: the host tools, from Debian.
need_apt=()
for pair in qemu-system-x86_64:qemu-system-x86 cpio:cpio modprobe:kmod depmod:kmod \
  mkfs.ext4:e2fsprogs jq:jq; do
  command -v "${pair%%:*}" >/dev/null || need_apt+=("${pair#*:}")
done
[ -x /bin/busybox ] || need_apt+=(busybox-static)
if [ ${#need_apt[@]} -gt 0 ]; then
  mapfile -t need_apt < <(printf '%s\n' "${need_apt[@]}" | sort -u)
  log "apt packages: ${need_apt[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
[ "$(id -u)" = 0 ] || die "the VM tests need root (the guests run the privileged integration tests; QEMU exports /)"

# Step 2: kernels and their initramfs.
bash "$HERE/fetch-kernels.sh" "${KEYS[@]}"
declare -A INITRD=()
for key in "${KEYS[@]}"; do INITRD[$key]=$(bash "$HERE/build-initramfs.sh" "$key"); done

# Step 3: the test binaries, built here and run in the guests straight from the target dir.
cd "$REPO"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
SHIM=${USERNSRS_SHIM:-$TARGET_DIR/debug/containerd-shim-usernsrs-v2}
[ -x "$SHIM" ] || die "the shim $SHIM is missing: run make build-debug (or set USERNSRS_SHIM)"
SHIM=$(realpath -e "$SHIM")
mkdir -p "$RESULTS"
RESULTS=$(realpath -e "$RESULTS")
for pair in "the checkout:$REPO" "the cargo target dir:$TARGET_DIR" "the shim:$SHIM" \
  "the cache:$CACHE" "the results dir:$RESULTS"; do
  check_visible "${pair%%:*}" "${pair#*:}"
done
log "building the integration test binaries"
declare -A EXE=()
while IFS=$'\t' read -r name exe; do EXE[$name]=$exe; done < <(
  cargo test -q -p usernsrs-integration --no-run --message-format=json |
    jq -r 'select(.reason == "compiler-artifact" and .executable != null and .profile.test)
           | [.target.name, .executable] | @tsv')
[ ${#EXE[@]} -gt 0 ] || die "cargo built no integration test binary"

# Step 4: the resolved list: target, executable, name.
[ -f "$TEST_LIST" ] || die "$TEST_LIST is missing"
resolved=$(mktemp)
trap 'rm -f "$resolved"' EXIT
n_tests=0
while read -r target name extra; do
  case $target in '' | '#'*) continue ;; esac
  if [ -z "$name" ] || [ -n "$extra" ]; then die "$TEST_LIST: want '<target> <test name>', got '$target $name $extra'"; fi
  [ -n "${EXE[$target]:-}" ] || die "$TEST_LIST: no test target '$target' (have: ${!EXE[*]})"
  printf '%s %s %s\n' "$target" "${EXE[$target]}" "$name" >> "$resolved"
  n_tests=$((n_tests + 1))
done < "$TEST_LIST"
[ $n_tests -gt 0 ] || die "$TEST_LIST lists no test"

# Step 5: the peers and the test image the guests use from the cache. containerd v2.4.2 is built
# by hack/install-peers.sh (make peers), maybe right now by another process: wait, never build.
for ((i = 0; i < ${USERNSRS_VM_PEERS_WAIT:-600}; i += 5)); do
  [ -x "$PEERS/containerd" ] && [ -x "$PEERS/ctr" ] && [ -x "$PEERS/containerd-shim-runc-v2" ] && break
  ((i % 60 == 0)) && log "waiting for containerd $CONTAINERD2_VERSION in $PEERS (make peers)"
  sleep 5
done
[ -x "$PEERS/containerd" ] || die "containerd $CONTAINERD2_VERSION is missing in $PEERS: run make peers"
# Built here so that the guests find it cached instead of each building it in its overlay.
bash "$REPO/hack/build-images.sh" >/dev/null

# Step 6: one VM per kernel.
# shellcheck disable=SC2054  # QEMU's option values contain commas
accel=(-accel tcg,thread=single -cpu max)
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ]; then accel=(-accel kvm -cpu host); fi
log "accelerator: ${accel[*]}"

# shellcheck disable=SC2317  # called by the trap
cleanup() {
  local key pid
  for key in "${KEYS[@]}"; do
    # Only the QEMU this script started, by its pid, checked against its command line.
    pid=$(cat "$VM_CACHE/qemu-$key.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-name usernsrs-vm-$key"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$VM_CACHE/qemu-$key.pid" "$VM_CACHE/disk-$key.img"
  done
  rm -f "$resolved"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# boot_vm KEY: one VM for one kernel; its wall time and outcome land in its results directory.
boot_vm() {
  local key=$1 RELEASE='' PACKAGE='' VERSION='' VMLINUZ='' MODULES=''
  # shellcheck source=/dev/null
  . "$VM_CACHE/kernels/$key.env"
  local res="$RESULTS/$key"
  rm -rf "${res:?}"
  mkdir -p "$res"
  cp "$resolved" "$res/tests.list"
  printf 'package=%s\nversion=%s\n' "$PACKAGE" "$VERSION" > "$res/kernel.txt"
  {
    echo "# Written by hack/vm/run.sh: the environment of the tests in the guest."
    printf 'export %s=%q\n' \
      USERNSRS_SHIM "$SHIM" USERNSRS_CACHE "$CACHE" CARGO_TARGET_DIR "$TARGET_DIR" \
      CARGO_MANIFEST_DIR "$REPO/integration" USERNSRS_REPO "$REPO" PATH "$PATH" \
      RUST_BACKTRACE 1 HOME /root USERNSRS_KERNEL_UNDER_TEST "$RELEASE" USERNSRS_VM_KEY "$key" \
      USERNSRS_VM_MODULES "$MODULES" USERNSRS_VM_TEST_TIMEOUT "${USERNSRS_VM_TEST_TIMEOUT:-600}" \
      USERNSRS_VM_KEEP "${KEEP[*]}"
  } > "$res/env.sh"

  # A fresh disk per VM: nothing a previous run left can change this one's outcome.
  local disk="$VM_CACHE/disk-$key.img" qemu_pid="$VM_CACHE/qemu-$key.pid"
  rm -f "$disk" "$qemu_pid"
  truncate -s "$DISK_SIZE" "$disk"
  mkfs.ext4 -q -F -L usernsrs-vm "$disk"

  log "$key: booting $PACKAGE $VERSION ($RELEASE), serial log $res/serial.log"
  local t0 rc=0 outcome
  t0=$(date +%s)
  timeout --kill-after=10 "$VM_TIMEOUT" qemu-system-x86_64 \
    -name "usernsrs-vm-$key" -pidfile "$qemu_pid" \
    "${accel[@]}" -m "$MEMORY" -smp 1 \
    -nographic -no-reboot -monitor none -serial "file:$res/serial.log" -nic none \
    -kernel "$VMLINUZ" -initrd "${INITRD[$key]}" \
    -append "console=ttyS0 cgroup_no_v1=all panic=-1 usernsrs.init=$HERE/guest-init.sh usernsrs.results=$res" \
    -fsdev local,id=root,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=root,mount_tag=hostroot \
    -fsdev "local,id=results,path=$res,security_model=none" \
    -device virtio-9p-pci,fsdev=results,mount_tag=results \
    -drive "file=$disk,if=virtio,format=raw" \
    < /dev/null > "$res/qemu.out" 2>&1 || rc=$?
  echo $(( $(date +%s) - t0 )) > "$res/wall"
  rm -f "$disk" "$qemu_pid"
  if [ -f "$res/guest.rc" ]; then
    outcome=ok
  elif [ $rc = 124 ] || [ $rc = 137 ]; then
    outcome="timed out after ${VM_TIMEOUT}s"
  else
    outcome="did not finish (qemu exit $rc)"
  fi
  echo "$outcome" > "$res/outcome"
  log "$key: $outcome, wall $(cat "$res/wall")s"
}

# The VMs run side by side, one per core (each TCG guest is single-threaded): on two cores the
# three kernels take two VM lengths instead of three. USERNSRS_VM_JOBS overrides.
JOBS=${USERNSRS_VM_JOBS:-$(nproc)}
t_all=$(date +%s)
for key in "${KEYS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  boot_vm "$key" &
done
wait
log "all VMs done in $(( $(date +%s) - t_all ))s ($JOBS at a time)"
declare -A WALL=() VM_OK=()
for key in "${KEYS[@]}"; do
  WALL[$key]=$(cat "$RESULTS/$key/wall" 2>/dev/null || echo '?')
  VM_OK[$key]=$(cat "$RESULTS/$key/outcome" 2>/dev/null || echo 'did not start')
done

# Step 7: the summary.
# fact KEY DIR: a value from the guest's facts.txt, "?" when the guest did not get that far.
fact() {
  local v
  v=$(sed -n "s/^$1=//p" "$2/facts.txt" 2>/dev/null | head -n 1)
  echo "${v:-?}"
}
failed=0
{
  echo "VM test bed: $n_tests test(s) from ${TEST_LIST#"$REPO"/}, accelerator ${accel[*]}"
  for key in "${KEYS[@]}"; do
    res="$RESULTS/$key"
    # shellcheck source=/dev/null
    . "$VM_CACHE/kernels/$key.env"
    echo
    echo "== $key: $PACKAGE $VERSION ($RELEASE)"
    echo "   boot $(fact boot_s "$res")s to guest init, containerd $(fact containerd_version "$res") ready in $(fact containerd_start_s "$res")s, wall ${WALL[$key]}s"
    echo "   cgroup2 on $(fact cgroup2_mounts "$res")(v1 mounts: $(fact cgroup_v1_mounts "$res")); controllers: $(fact controllers "$res")"
    while IFS=$'\t' read -r target name status secs reason; do
      case $status in
        passed) printf '   %-15s %s %s (%ss)\n' passed "$target" "$name" "$secs" ;;
        na) printf '   %-15s %s %s (%ss): not applicable on %s: %s\n' "not applicable" "$target" "$name" "$secs" "$RELEASE" "$reason" ;;
        *) failed=1; printf '   %-15s %s %s (%ss): %s\n' FAILED "$target" "$name" "$secs" "$reason"
          # The daemon's own words, then the kernel's, else the test's first error line.
          { grep -m2 -E '^ctr: |panicked at' "$res/tests/$target.$name.log" ||
              grep -m1 -E 'Error:' "$res/tests/$target.$name.log"
            grep -m2 -E 'overlayfs|idmap|cgroup' "$res/tests/$target.$name.log.kmsg"
          } 2>/dev/null | cut -c1-400 | sed 's/^/                     | /' || true ;;
      esac
    done < <(cat "$res/results.tsv" 2>/dev/null)
    ran=0
    [ ! -f "$res/results.tsv" ] || ran=$(wc -l < "$res/results.tsv")
    if [ "${VM_OK[$key]}" != ok ] || [ "$ran" -ne "$n_tests" ]; then
      failed=1
      echo "   VM ${VM_OK[$key]}: $ran of $n_tests test(s) reported; serial log tail ($res/serial.log):"
      tail -n 25 "$res/serial.log" 2>/dev/null | sed 's/^/     | /'
    fi
  done
  echo
  if [ $failed = 0 ]; then echo "VM tests: OK"; else echo "VM tests: FAILED"; fi
} > "$RESULTS/summary.txt"
cat "$RESULTS/summary.txt"
exit "$failed"
