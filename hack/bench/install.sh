#!/usr/bin/env bash
# Installs what `make bench` needs beyond hack/install-peers.sh, from Debian's packages only:
#   - crun (the third peer: Debian bookworm ships 1.8.1),
#   - gnuplot-nox (the PNG plots; the PNG terminal of gnuplot-nox needs no X server).
# Idempotent; never starts a service (crun and gnuplot have none).
set -euo pipefail

log() { printf '[bench-install] %s\n' "$*" >&2; }

need_apt=()
for pkg in crun gnuplot-nox; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
command -v python3 >/dev/null || { log "python3 is needed"; exit 1; }
log "bench tools ready: $(crun --version | head -n1), $(gnuplot --version), $(python3 --version)"
