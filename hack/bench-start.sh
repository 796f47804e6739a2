#!/usr/bin/env bash
# Start-to-exit latency of `ctr run --rm` of a user-namespaced /bin/true on containerd 2.4.2:
# containerd-shim-usernsrs-v2 vs containerd-shim-runc-v2 + runc, interleaved (A B A B ...) in
# one private containerd. Prints median and p95 in ms and the ratio. Not a test: no assertion.
#   hack/bench-start.sh [RUNS]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
: "${USERNSRS_SHIM:=$PWD/target/release/containerd-shim-usernsrs-v2}"
export USERNSRS_SHIM
dir=$(mktemp -d /tmp/usernsrs-bench-XXXXXX)
chmod 711 "$dir"
trap 'bash hack/private-containerd.sh stop "$dir" >/dev/null || true; rm -rf "$dir"' EXIT
ctr() { bash hack/private-containerd.sh ctr "$dir" "$@" 2>/dev/null; }
bash hack/private-containerd.sh start "$dir" 2 >/dev/null
ctr images import "$(bash hack/build-images.sh)" >/dev/null
image=docker.io/library/busybox:usernsrs
userns=(--uidmap 0:100000:65536 --gidmap 0:100000:65536 --remap-labels)

declare -A samples
for i in $(seq 1 "$runs"); do
  for rt in io.containerd.usernsrs.v2 io.containerd.runc.v2; do
    t0=$(date +%s%N)
    ctr run --rm --runtime "$rt" --fifo-dir "$dir/fifo" "${userns[@]}" "$image" "b-$i-${rt//./-}" /bin/true
    t1=$(date +%s%N)
    samples[$rt]+="$(( (t1 - t0) / 1000 )) "
  done
done
stats() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {printf "%.1f %.1f\n", a[int((NR+1)/2)]/1000, a[int(NR*0.95+0.5)]/1000}'; }
read -r u50 u95 < <(echo "${samples[io.containerd.usernsrs.v2]}" | stats)
read -r r50 r95 < <(echo "${samples[io.containerd.runc.v2]}" | stats)
printf 'runs per runtime: %s (interleaved), user namespace 0:100000:65536, containerd v2.4.2, kernel %s\n' "$runs" "$(uname -r)"
printf '%-40s p50 %7.1f ms  p95 %7.1f ms\n' "containerd-shim-usernsrs-v2" "$u50" "$u95"
printf '%-40s p50 %7.1f ms  p95 %7.1f ms\n' "containerd-shim-runc-v2 + runc $(runc --version | awk 'NR==1{print $3}')" "$r50" "$r95"
awk -v u="$u50" -v r="$r50" 'BEGIN {printf "ratio usernsrs/runc (p50): %.2f\n", u/r}'
