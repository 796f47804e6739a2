#!/usr/bin/env bash
# `make bench`: benchmarks containerd-shim-usernsrs-v2 side by side with containerd-shim-runc-v2
# + runc and crun on private containerd 1.6 and 2.4.2 instances, then writes
# docs/bench/results.json, the PNG plots and docs/bench/README.md. Not part of the tests: it
# asserts nothing. Needs root; about 12 minutes on a 2-core VM with the defaults (see
# hack/bench/bench.py for the BENCH_* knobs, e.g. BENCH_RUNS=20 for a quicker run,
# BENCH_OUT=/tmp/x to keep docs/bench untouched).
#
# The shim is built in release mode into its own target dir (BENCH_TARGET_DIR, default
# /var/cache/usernsrs/bench-target) so that a benchmark never disturbs anyone's build. It is
# built from the work tree, or with BENCH_REV=<rev> from that committed revision, exported with
# `git archive` into /var/cache/usernsrs/bench-src/<commit> (nothing in .git changes).
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${USERNSRS_CACHE:-/var/cache/usernsrs}
TARGET=${BENCH_TARGET_DIR:-$CACHE/bench-target}

log() { printf '[bench] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root (containerd, mounts, user namespaces)"; exit 1; }

bash hack/install-peers.sh
bash hack/bench/install.sh

if [ -n "${BENCH_REV:-}" ]; then
  rev=$(git rev-parse --verify "${BENCH_REV}^{commit}")
  src=$CACHE/bench-src/$rev
  if [ ! -d "$src" ]; then
    rm -rf "$src.tmp"; mkdir -p "$src.tmp"
    git archive "$rev" | tar -x -C "$src.tmp"
    mv "$src.tmp" "$src"
  fi
  source_desc="commit $rev"
else
  src=$PWD
  source_desc="the work tree at $(git rev-parse --short HEAD)"
  if ! git diff --quiet HEAD -- . ':!docs/bench' ':!hack/bench'; then
    source_desc="$source_desc with uncommitted changes"
  fi
fi
log "building the shim (release) from $source_desc into $TARGET"
if ! (cd "$src" && CARGO_TARGET_DIR=$TARGET cargo build --release -p containerd-shim-usernsrs-v2); then
  log "the shim does not build from $source_desc; BENCH_REV=HEAD benchmarks the last commit"
  exit 1
fi

export USERNSRS_SHIM=$TARGET/release/containerd-shim-usernsrs-v2
export BENCH_SHIM_SOURCE=$source_desc
python3 hack/bench/bench.py
python3 hack/bench/report.py "${BENCH_OUT:-docs/bench}"
