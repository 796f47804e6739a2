#!/usr/bin/env bash
# Runs the tests listed in integration/line-tests.txt against every containerd 2.x line of the
# CI matrix ($CONTAINERD_LINES, built by hack/install-peers.sh), one line after another: the ctr
# flows (root.path, --uidmap --remap-labels, volumes, exec) and the CRI pod flows. The whole
# suite runs on containerd 1.6 and v2.4.2 (make integration); this covers the other lines.
#   hack/containerd-lines.sh            needs root, USERNSRS_SHIM and the peers installed
# Prints a line per (containerd line, test) and fails if any test failed on any line.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$HERE")
CARGO=${CARGO:-cargo}
LINES=${CONTAINERD_LINES:-v2.0.14 v2.1.9 v2.2.9 v2.3.7}
LIST="$TOP/integration/line-tests.txt"
log() { printf '[containerd-lines] %s\n' "$*" >&2; }
[ -n "${USERNSRS_SHIM:-}" ] || { log "USERNSRS_SHIM must name the shim binary"; exit 1; }

mapfile -t targets < <(awk '!/^[[:space:]]*(#|$)/ {print $1}' "$LIST" | sort -u)
summary=() failed=0
for version in $LINES; do
  for target in "${targets[@]}"; do
    mapfile -t names < <(awk -v t="$target" '!/^[[:space:]]*#/ && $1 == t {print $2}' "$LIST")
    log "containerd $version: $target: ${names[*]}"
    out=$(mktemp)
    if CONTAINERD2_VERSION=$version "$CARGO" test -p usernsrs-integration --test "$target" -- \
      --exact --test-threads=1 "${names[@]}" >"$out" 2>&1; then :; fi
    cat "$out"
    for name in "${names[@]}"; do
      if grep -qE "^test $name \.\.\. ok$" "$out"; then
        summary+=("$version $target::$name passed")
      else
        summary+=("$version $target::$name FAILED")
        failed=$((failed + 1))
      fi
    done
    rm -f "$out"
  done
done
printf '\n== containerd lines\n'
printf '%s\n' "${summary[@]}"
passed=$(printf '%s\n' "${summary[@]}" | grep -c ' passed$' || true)
printf 'containerd-lines: %s passed, %s failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
