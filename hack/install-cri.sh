#!/usr/bin/env bash
# Installs what the Kubernetes (CRI) tests need, built with the machine's Go from their
# modules, cached outside the repository:
#   - crictl and critest from sigs.k8s.io/cri-tools (critest has only test files: it is
#     built with `go test -c` from a scratch module that requires cri-tools);
#   - the CNI plugins bridge, host-local, loopback and portmap (critest's hostPort specs) from
#     containernetworking/plugins (the pods' network lives in a network namespace the tests
#     create, never the host's);
#   - distribution's registry, which serves the local test images to critest on the test
#     network namespace's 127.0.0.1.
# Idempotent. Called by hack/install-peers.sh.
set -euo pipefail

CACHE=${USERNSRS_CACHE:-/var/cache/usernsrs}
CRI_TOOLS_VERSION=${CRI_TOOLS_VERSION:-v1.37.0}
CNI_PLUGINS_VERSION=${CNI_PLUGINS_VERSION:-v1.9.1}
REGISTRY_VERSION=${REGISTRY_VERSION:-v3.0.0}
BIN="$CACHE/cri/bin"
log() { printf '[install-cri] %s\n' "$*" >&2; }

mkdir -p "$BIN"
export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=local
if [ ! -x "$BIN/crictl" ]; then
  log "building crictl $CRI_TOOLS_VERSION"
  GOBIN="$BIN" go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"
fi
for plugin in main/bridge ipam/host-local main/loopback meta/portmap; do
  if [ ! -x "$BIN/${plugin#*/}" ]; then
    log "building CNI plugin ${plugin#*/} $CNI_PLUGINS_VERSION"
    GOBIN="$BIN" go install "github.com/containernetworking/plugins/plugins/$plugin@$CNI_PLUGINS_VERSION"
  fi
done
if [ ! -x "$BIN/registry" ]; then
  log "building the registry $REGISTRY_VERSION"
  GOBIN="$BIN" go install "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION"
fi
if [ ! -x "$BIN/critest" ]; then
  log "building critest $CRI_TOOLS_VERSION (go test -c, a few minutes)"
  mod="$CACHE/cri/critest-mod"
  mkdir -p "$mod"
  printf 'module usernsrs.invalid/critest\n\ngo 1.24\n\nrequire sigs.k8s.io/cri-tools %s\n' \
    "$CRI_TOOLS_VERSION" > "$mod/go.mod"
  (cd "$mod" && go get "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" && go test -c -o "$BIN/critest" sigs.k8s.io/cri-tools/cmd/critest)
fi
log "CRI tools ready in $BIN"
