#!/usr/bin/env bash
# Runs a command and fails if it left behind a mount, a containerd-shim-usernsrs-v2 process, a
# test VM, or a private containerd, kubelet or registry of the tests that was not there before: the
# suite-level check that no test leaks (each test checks its own containerd as well).
#   hack/no-leaks.sh COMMAND [ARGS...]
set -uo pipefail
mounts() { awk '{print $5}' /proc/self/mountinfo | sort; }
shims() {
  pgrep -f 'containerd-shim-usernsrs-v2|usernsrs-shim|containerd --config /tmp/usernsrs|kubelet --config /tmp/usernsrs|registry serve /tmp/usernsrs|qemu-system.*usernsrs' |
    sort || true
}
before_mounts=$(mounts)
before_shims=$(shims)
"$@"
status=$?
sleep 1
new_mounts=$(comm -13 <(echo "$before_mounts") <(mounts))
new_shims=$(comm -13 <(echo "$before_shims") <(shims))
if [ -n "$new_mounts" ] || [ -n "$new_shims" ]; then
  echo "no-leaks: the run left behind:" >&2
  [ -n "$new_mounts" ] && printf '  mount %s\n' $new_mounts >&2
  [ -n "$new_shims" ] && for p in $new_shims; do echo "  process $p: $(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null)" >&2; done
  exit 1
fi
echo "no-leaks: no mount and no shim process left behind"
exit $status
