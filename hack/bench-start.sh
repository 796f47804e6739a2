#!/usr/bin/env bash
# Start-to-exit latency of `ctr run --rm` of a user-namespaced /bin/true on containerd 2.4.2:
# containerd-shim-usernsrs-v2 vs containerd-shim-runc-v2 + runc, interleaved (A B A B ...) in
# one private containerd. Prints median and p95 in ms and the ratio. Not a test: no assertion.
#   hack/bench-start.sh [RUNS]   (default 30)
# A thin wrapper over the start part of hack/bench/bench.py; `make bench` runs all of it
# (containerd 1.6 too, crun, no user namespace, rootfs preparation, memory, concurrency).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
: "${USERNSRS_SHIM:=$PWD/target/release/containerd-shim-usernsrs-v2}"
. hack/lib.sh
out=$(mktemp -d /tmp/usernsrs-bench-start-XXXXXX)
trap 'remove_unmounted "$out"' EXIT
# The benchmark's own log goes to a file, shown when it fails: its errors are never hidden.
if ! USERNSRS_SHIM=$USERNSRS_SHIM BENCH_OUT=$out BENCH_PARTS=start BENCH_RUNS=$runs \
  BENCH_START_FLAVORS=2 BENCH_START_USERNS=yes BENCH_START_RUNTIMES=usernsrs,runc \
  python3 hack/bench/bench.py 2>"$out/bench.log"; then
  cat "$out/bench.log" >&2
  die bench-start "hack/bench/bench.py failed (its log is above)"
fi
python3 - "$out/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["start"]
by = {v["runtime"]: v for v in s["variants"]}
u, c = by["usernsrs"], by["runc"]
print(f"runs per runtime: {s['runs']} (interleaved), user namespace 0:100000:65536, "
      f"containerd {u['containerd']}, kernel {r['machine']['kernel']}")
for v, name in ((u, "containerd-shim-usernsrs-v2"),
                (c, "containerd-shim-runc-v2 + " + r["versions"]["runc"].split(" version ")[-1])):
    if v["stats"]:
        print(f"{name:<40} p50 {v['stats']['p50']:7.1f} ms  p95 {v['stats']['p95']:7.1f} ms"
              f"  failures {len(v['failures'])}")
    else:
        print(f"{name:<40} not runnable: {v.get('error')}")
if u["stats"] and c["stats"]:
    print(f"ratio usernsrs/runc (p50): {u['stats']['p50'] / c['stats']['p50']:.2f}")
PY
