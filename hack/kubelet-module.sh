#!/usr/bin/env bash
# Writes a scratch Go module that builds the kubelet of one Kubernetes release from the Go
# module proxy:
#   hack/kubelet-module.sh VERSION DIR     VERSION: v1.35.4 (k8s.io/kubernetes)
# DIR/go.mod requires k8s.io/kubernetes VERSION. Kubernetes' own go.mod requires its staging
# modules (k8s.io/api, k8s.io/client-go, ...) as v0.0.0 and points them at ./staging/src with
# replace directives, which count only in its own repository: a module that depends on it must
# say where each one comes from. Each is published as its own module, v0.MINOR.PATCH for
# Kubernetes v1.MINOR.PATCH, so every staging module gets `k8s.io/X => k8s.io/X v0.MINOR.PATCH`.
# Then `go build k8s.io/kubernetes/cmd/kubelet` in DIR builds it (install-peers.sh does).
set -euo pipefail

log() { printf '[kubelet-module] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ $# -eq 2 ] || die "usage: $0 VERSION DIR (e.g. v1.35.4 /var/cache/usernsrs/kubelet-v1.35.4/mod)"
version=$1 dir=$2
[[ $version =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "VERSION must be v1.MINOR.PATCH, not $version"
staging_version="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"

# Kubernetes' go.mod, as the module proxy serves it.
gomod=$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$version" |
  sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[ -f "$gomod" ] || die "go mod download gave no go.mod for k8s.io/kubernetes@$version"

# The staging modules: the replace directives of that go.mod that point into ./staging/src.
mapfile -t staging < <(sed -n 's|^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*|\1|p' "$gomod")
[ ${#staging[@]} -gt 0 ] || die "$gomod names no staging module (no replace into ./staging/src)"
# Every v0.0.0 require must be one of them, or the build could not resolve it.
while read -r module; do
  printf '%s\n' "${staging[@]}" | grep -qxF "$module" ||
    die "$gomod requires $module v0.0.0, which is not a staging module"
done < <(sed -n 's/^[[:space:]]*\([^[:space:]]*\) v0\.0\.0$/\1/p' "$gomod")
go_line=$(sed -n 's/^go \(.*\)$/\1/p' "$gomod")

mkdir -p "$dir"
{
  printf '// Written by hack/kubelet-module.sh: builds the kubelet of Kubernetes %s.\n' "$version"
  printf 'module usernsrs.invalid/kubelet\n\ngo %s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' \
    "$go_line" "$version"
  for module in "${staging[@]}"; do
    printf '\t%s => %s %s\n' "$module" "$module" "$staging_version"
  done
  printf ')\n'
} > "$dir/go.mod"
# A file of the main module, so that `go mod tidy` keeps the kubelet's dependencies.
printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kubelet"\n' > "$dir/tools.go"
log "wrote $dir/go.mod: k8s.io/kubernetes $version, ${#staging[@]} staging modules at $staging_version"
