#!/usr/bin/env bash
# What sealing the shim's binary for its helper costs at start (CVE-2019-5736, see
# shim/src/helper_exe.rs): start-to-exit of `ctr run --rm IMAGE ID /bin/true`, without a user
# namespace, on one private containerd 2.4.2, interleaved (A B C A B C ...) among:
#   unsealed  a shim built without the seal ($USERNSRS_SHIM_UNSEALED, e.g. the commit before it)
#   overlay   $USERNSRS_SHIM as it is (read-only overlayfs view of its binary, the default)
#   memfd     $USERNSRS_SHIM with USERNSRS_EXE_SEAL=memfd (a sealed memfd copy of its binary)
# Each variant runs through the same two-line wrapper script (the runtime is its absolute path),
# so the three differ only in the binary and that variable. Prints per variant the median and
# p90 in ms, the ratio of medians to unsealed, and the median time the shim spent sealing (from
# its log). Every `ctr run` starts a new shim, so every run pays for one seal. Not a test: no
# assertion.
#   USERNSRS_SHIM_UNSEALED=/path/to/old/shim hack/bench-exeseal.sh [RUNS]   (default 30)
# One way to get the unsealed shim: `git archive <commit before the seal> | tar -x -C DIR`, then
# `cargo build --release -p containerd-shim-usernsrs-v2` there with a CARGO_TARGET_DIR of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
: "${USERNSRS_SHIM:=$PWD/target/release/containerd-shim-usernsrs-v2}"
: "${USERNSRS_SHIM_UNSEALED:?set USERNSRS_SHIM_UNSEALED to a shim binary built without the seal}"
for bin in "$USERNSRS_SHIM" "$USERNSRS_SHIM_UNSEALED"; do
  [ -x "$bin" ] || { echo "bench-exeseal: $bin is not an executable" >&2; exit 1; }
done
archive=$(hack/build-images.sh)
dir=$(mktemp -d /tmp/usernsrs-bench-seal-XXXXXX)
chmod 0711 "$dir"
ns=exeseal-bench
cleanup() {
  # Only an unmounted directory is removed: private-containerd.sh stop fails if a mount is left.
  if hack/private-containerd.sh stop "$dir" >/dev/null; then rm -rf "$dir"; fi
  for cg in /sys/fs/cgroup/$ns /sys/fs/cgroup/*/$ns; do [ -d "$cg" ] && rmdir "$cg" 2>/dev/null; done
  true
}
trap cleanup EXIT
USERNSRS_SHIM=$USERNSRS_SHIM hack/private-containerd.sh start "$dir" 2 >/dev/null
hack/private-containerd.sh ctr "$dir" -n "$ns" images import "$archive" >/dev/null
mkdir -p "$dir/wrappers" "$dir/fifo"
wrap() { printf '#!/bin/sh\nexport USERNSRS_EXE_SEAL=%s\nexec %s "$@"\n' "$2" "$3" > "$dir/wrappers/$1"; chmod 0755 "$dir/wrappers/$1"; }
wrap unsealed auto "$USERNSRS_SHIM_UNSEALED"
wrap overlay auto "$USERNSRS_SHIM"
wrap memfd memfd "$USERNSRS_SHIM"
DIR=$dir NS=$ns RUNS=$runs python3 - <<'PY'
import os, re, statistics, subprocess, time
d, ns, runs = os.environ["DIR"], os.environ["NS"], int(os.environ["RUNS"])
image = "docker.io/library/busybox:usernsrs"
variants = ["unsealed", "overlay", "memfd"]
def run(variant, n):
    cmd = ["hack/private-containerd.sh", "ctr", d, "-n", ns, "run", "--rm", "--runtime",
           f"{d}/wrappers/{variant}", "--fifo-dir", f"{d}/fifo", image, f"{variant}-{n}", "/bin/true"]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    elapsed = (time.perf_counter() - t) * 1000
    if p.returncode != 0:
        raise SystemExit(f"{variant} run {n} failed: {p.stderr.strip()}")
    return elapsed
for v in variants:  # warm the page cache and containerd
    run(v, "warm")
times = {v: [] for v in variants}
for i in range(runs):
    for v in variants:
        times[v].append(run(v, i))
def seal_times(kind):
    out = []
    with open(f"{d}/containerd.log", errors="replace") as f:
        for line in f:
            m = re.search(r"helper binary: " + kind + r".*?sealed in ([0-9.]+)(ns|µs|ms|s)\b", line)
            if m:
                out.append(float(m.group(1)) * {"ns": 1e-6, "µs": 1e-3, "ms": 1, "s": 1000}[m.group(2)])
    return out
kernel = os.uname().release
print(f"{runs} runs per variant (interleaved), no user namespace, containerd 2.4.2, kernel {kernel}")
base = statistics.median(times["unsealed"])
for v in variants:
    t = sorted(times[v])
    p50, p90 = statistics.median(t), t[min(len(t) - 1, int(0.9 * len(t)))]
    seal = {"overlay": seal_times("read-only overlayfs"), "memfd": seal_times("sealed memfd")}.get(v)
    seal_text = f"  seal p50 {statistics.median(seal):6.2f} ms ({len(seal)} seals)" if seal else ""
    print(f"{v:<9} p50 {p50:6.1f} ms  p90 {p90:6.1f} ms  x{p50 / base:.2f} of unsealed{seal_text}")
PY
