#!/bin/bash
# pid 1 of a VM test bed guest (hack/vm/run.sh boots it; the initramfs switch_roots into the
# host's / over 9p with a tmpfs overlay and execs this file from the checkout under test).
# It makes the guest look like a host with PURE cgroup v2, runs the listed integration tests of
# the project one process per test, writes what happened into the read-write results share and
# powers off. No systemd: every mount the tests rely on is made here, explicitly.
#
# Kernel command line: usernsrs.results=DIR (the results share is mounted at DIR, the same
# path as on the host). In DIR the host put env.sh (the tests' environment) and tests.list
# (`<target> <executable> <test name>` per line); this writes:
#   facts.txt         kernel, cgroup mounts and controllers, boot and containerd start times
#   results.tsv       target, name, status (passed|FAILED|na), seconds, reason
#   tests/<target>.<name>.log   the test's whole output (.log.kmsg: kernel messages meanwhile)
#   guest.rc          0 if no test failed, 1 otherwise; its presence means the guest finished
# Any unexpected exit still powers off (panic=-1 and -no-reboot end QEMU otherwise).
set -uo pipefail

log() { printf '[vm-guest] %s\n' "$*" >&2; }
poweroff_now() {
  sync
  echo o > /proc/sysrq-trigger
  sleep 10
}
trap poweroff_now EXIT

# Step 1: the kernel's filesystems. Until the guest's own procfs is mounted, /proc is the
# host's (through the 9p root): mount before reading anything there. /dev is the initramfs'
# devtmpfs, moved here.
mount -t proc proc /proc
results=
read -r -a cmdline < /proc/cmdline
for arg in "${cmdline[@]}"; do
  case $arg in usernsrs.results=*) results=${arg#usernsrs.results=} ;; esac
done
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
ln -sf pts/ptmx /dev/ptmx 2>/dev/null || true
# What udev would add and bash's process substitution (/dev/fd/N) needs.
ln -sfn /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs -o mode=1777 shm /dev/shm
# The host's /run (its containerd sockets, its systemd state) must not show through the overlay.
mount -t tmpfs -o mode=0755 run /run

# Step 2: pure cgroup v2 (cgroup_no_v1=all is on the command line), every controller enabled
# in the root's subtree_control, as systemd would: runc enables them further down.
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
read -r -a controllers < /sys/fs/cgroup/cgroup.controllers
for c in "${controllers[@]}"; do
  echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || log "cannot enable controller $c"
done

# Step 3: the results share first, so that everything after can be reported.
[ -n "$results" ] || { log "no usernsrs.results= on the kernel command line"; exit 1; }
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results "$results" ||
  { log "cannot mount the results share on $results"; exit 1; }
exec > >(tee -a "$results/guest.log" >&2) 2>&1
# shellcheck source=/dev/null
. "$results/env.sh"
release=$(uname -r)
read -r boot_s _ < /proc/uptime
log "kernel $release up after ${boot_s}s"

# Step 4: the fetched kernel's modules over /lib/modules/<release> (the host's / has only the
# host's kernel's), so the kernel's own modprobe of overlay, bridge, veth, br_netfilter... works.
mkdir -p "/lib/modules/$release"
mount --bind "$USERNSRS_VM_MODULES" "/lib/modules/$release"
echo /sbin/modprobe > /proc/sys/kernel/modprobe

# Step 5: a real disk where containerd needs one: an overlayfs upper dir cannot be on 9p nor
# on an overlay. /tmp (the tests' containerd directories) and /var/lib/containerd live on it.
# Host paths the tests need that lie under /tmp (a checkout or cache there) are set aside first
# and bound back on top of the disk, so the guest sees them where the host does.
keep=()
read -r -a keep <<< "${USERNSRS_VM_KEEP:-}"
for i in "${!keep[@]}"; do
  mkdir -p "/run/usernsrs-keep/$i"
  # rbind: the results share may be mounted below a kept path (a results dir under /tmp).
  mount --rbind "${keep[$i]}" "/run/usernsrs-keep/$i"
done
mount -t ext4 /dev/vda /tmp || { log "cannot mount the ext4 disk on /tmp"; exit 1; }
chmod 1777 /tmp
for i in "${!keep[@]}"; do
  mkdir -p "${keep[$i]}"
  mount --rbind "/run/usernsrs-keep/$i" "${keep[$i]}"
done
mkdir -p /tmp/.vm/var-lib-containerd /var/lib/containerd
mount --bind /tmp/.vm/var-lib-containerd /var/lib/containerd

hostname "usernsrs-vm-${USERNSRS_VM_KEY:-guest}"
ip link set lo up

# Step 6: what the tests will see, for the summary.
v1=$(awk '$3 == "cgroup" { print $2 }' /proc/mounts | tr '\n' ' ')
{
  echo "release=$release"
  echo "boot_s=$boot_s"
  echo "controllers=$(cat /sys/fs/cgroup/cgroup.controllers)"
  echo "subtree_control=$(cat /sys/fs/cgroup/cgroup.subtree_control)"
  echo "cgroup2_mounts=$(awk '$3 == "cgroup2" { print $2 }' /proc/mounts | tr '\n' ' ')"
  echo "cgroup_v1_mounts=${v1:-none}"
} > "$results/facts.txt"
grep -E ' (cgroup2?|9p|overlay|ext4|tmpfs) ' /proc/mounts > "$results/mounts.txt"

# Step 7: does a private containerd 2.x start here, and how fast (the tests start their own).
smoke=/tmp/vm-smoke
mkdir -p "$smoke"
t0=$(date +%s.%N)
if "$USERNSRS_REPO/hack/private-containerd.sh" start "$smoke" 2 > "$smoke/start.out" 2> "$smoke/start.err"; then
  t1=$(date +%s.%N)
  ver=$("$USERNSRS_CACHE/containerd-v2.4.2/bin/ctr" --address "$smoke/containerd.sock" version 2>&1 |
    awk '/Server:/ { s = 1 } s && /Version:/ { print $2; exit }')
  took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  echo "containerd_start_s=$took" >> "$results/facts.txt"
  echo "containerd_version=${ver:-unknown}" >> "$results/facts.txt"
  log "containerd ${ver:-unknown} ready in ${took}s"
else
  echo "containerd_start_s=failed" >> "$results/facts.txt"
  log "private containerd did not start:"; cat "$smoke/start.err" >&2
fi
"$USERNSRS_REPO/hack/private-containerd.sh" stop "$smoke" 2> "$smoke/stop.err" ||
  { log "smoke containerd stop failed:"; cat "$smoke/stop.err" >&2; }
rm -rf "$smoke"

# Step 8: the tests, one process per test so that output (and a not-applicable marker) belongs
# to exactly one test. libtest with --exact and a name matching nothing runs 0 tests and exits
# 0: that is a failure here (a renamed test must not pass silently).
mkdir -p "$results/tests"
: > "$results/results.tsv"
failed=0
while read -r target exe name; do
  [ -n "$target" ] || continue
  logf="$results/tests/$target.$name.log"
  log "running $target $name"
  t0=$(date +%s)
  kmsg_before=$(dmesg | wc -l)
  (cd "$CARGO_MANIFEST_DIR" && timeout --kill-after=10 "${USERNSRS_VM_TEST_TIMEOUT:-600}" \
    "$exe" --exact --test-threads=1 --nocapture "$name") > "$logf" 2>&1 < /dev/null
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  # The kernel's side of a failure (e.g. "overlayfs: failed to clone lowerpath") is in dmesg.
  dmesg | tail -n +"$((kmsg_before + 1))" > "$logf.kmsg"
  reason=
  if [ $rc = 0 ] && grep -q '^test result: ok\. 1 passed' "$logf"; then
    status=passed
  elif [ $rc = 0 ]; then
    status=FAILED reason="no test ran (name not found or ignored)"
  elif marker=$(grep -m1 -o 'usernsrs-not-applicable: .*' "$logf"); then
    status=na reason=${marker#usernsrs-not-applicable: }
  else
    status=FAILED
    case $rc in
      124 | 137) reason="timed out after ${USERNSRS_VM_TEST_TIMEOUT:-600}s" ;;
      *) reason="exit $rc" ;;
    esac
  fi
  [ "$status" = FAILED ] && failed=1
  printf '%s\t%s\t%s\t%s\t%s\n' "$target" "$name" "$status" "$secs" "$reason" >> "$results/results.tsv"
  log "$status $target $name (${secs}s) $reason"
done < "$results/tests.list"

# Step 9: leftovers are a finding too: the harness must clean up after itself.
left=$(awk '$2 ~ "^/tmp/usernsrs-" { print $2 }' /proc/mounts)
[ -z "$left" ] || log "mounts left under /tmp by the tests: $left"

echo "$failed" > "$results/guest.rc"
sync
for ((i = ${#keep[@]} - 1; i >= 0; i--)); do umount "${keep[$i]}" 2>/dev/null; done
umount /var/lib/containerd /tmp "/lib/modules/$release" 2>/dev/null
exec > /dev/console 2>&1
sleep 0.5   # tee lets go of guest.log
umount "$results" 2>/dev/null
log "done (rc $failed), powering off"
