#!/usr/bin/env bash
# Installs the real peers the tests and the demo run against, and nothing else:
#   - containerd 1.6 and runc 1.1 from Debian's packages (never started as a system service),
#   - containerd v2.4.2 and the newest release of each other 2.x line (2.0 to 2.3), each with its
#     ctr and containerd-shim-runc-v2, built from the Go module with the machine's Go into a
#     cache outside the repository,
#   - busybox-static, from which hack/build-images.sh makes the test images,
#   - for hack/build-cri-images.sh (critest's images): nginx, procps (pgrep), and Debian's
#     dynamic busybox unpacked into the cache (it conflicts with busybox-static); iptables for
#     the CNI portmap plugin in the test network namespace (critest's hostPort specs),
#   - runc v1.5.3 with seccomp (the reference runtime of the kubelet tests) and the kubelet of
#     Kubernetes v1.35.4, built from their Go modules into the same cache.
# Idempotent: a second run on a warm machine takes about a second.
set -euo pipefail

CACHE=${USERNSRS_CACHE:-/var/cache/usernsrs}
CONTAINERD2_VERSION=${CONTAINERD2_VERSION:-v2.4.2}
PEERS="$CACHE/containerd-$CONTAINERD2_VERSION/bin"

log() { printf '[install-peers] %s\n' "$*" >&2; }

need_apt=()
for pkg in containerd runc busybox-static nginx procps iptables; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt packages: ${need_apt[*]}"
  # Keep the package from starting a system-wide containerd: tests start private ones.
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [ -e "$policy" ] && had_policy=1
  if [ $had_policy = 0 ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  if [ $had_policy = 0 ]; then rm -f "$policy"; fi
fi

# build_containerd VERSION: containerd, ctr and containerd-shim-runc-v2 of one 2.x release into
# $CACHE/containerd-VERSION/bin. Built from a copy of the module's source (`go mod download`),
# not with `go install pkg@version`, which refuses modules whose go.mod has replace (v2.0.x) or
# exclude (v2.1.x) directives.
build_containerd() {
  local version=$1 bin="$CACHE/containerd-$1/bin"
  if [ -x "$bin/containerd" ] && [ -x "$bin/ctr" ] && [ -x "$bin/containerd-shim-runc-v2" ]; then
    return 0
  fi
  command -v go >/dev/null || { log "go is needed to build containerd $version"; exit 1; }
  log "building containerd $version with $(go version) (a minute or two, cached in $bin)"
  local module=github.com/containerd/containerd/v2 dir src
  dir=$(GOFLAGS=-mod=mod go mod download -json "$module@$version" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$dir" ] || { log "go mod download gave no source directory for $module@$version"; exit 1; }
  src=$(mktemp -d "$CACHE/containerd-src.XXXXXX")
  cp -r "$dir/." "$src"
  chmod -R u+w "$src"
  mkdir -p "$bin"
  (cd "$src" && GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=local \
    go build -tags no_btrfs -o "$bin/" ./cmd/containerd ./cmd/ctr ./cmd/containerd-shim-runc-v2)
  rm -rf "$src"
}

# The 2.x lines users run (2.0 and 2.3 are long-term releases): the newest patch release of each
# that the Go module proxy serves. The whole suite runs on $CONTAINERD2_VERSION; the ctr and CRI
# flows on every line (Makefile: containerd-lines).
CONTAINERD_LINES=${CONTAINERD_LINES:-v2.0.14 v2.1.9 v2.2.9 v2.3.7}
for version in $CONTAINERD2_VERSION $CONTAINERD_LINES; do
  build_containerd "$version"
done
# containerd 1.7 (Kubernetes 1.25/1.26 semantics), Debian trixie's package, unpacked into the
# cache: its binaries need only libc >= 2.34. apt works from a private state directory so the
# machine's own sources and package cache are left alone.
CONTAINERD17="$CACHE/containerd-1.7"
if [ ! -x "$CONTAINERD17/usr/bin/containerd" ]; then
  log "fetching containerd 1.7 from Debian trixie into $CONTAINERD17"
  apt_dir="$CACHE/apt-trixie"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$CONTAINERD17"
  echo "deb http://deb.debian.org/debian trixie main" > "$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Get::List-Cleanup=0)
  apt-get "${apt_opts[@]}" update -qq
  (cd "$apt_dir" && apt-get "${apt_opts[@]}" download containerd 2>/dev/null)
  dpkg -x "$(ls -t "$apt_dir"/containerd_1.7*.deb | head -1)" "$CONTAINERD17"
fi

# Debian's dynamic busybox for critest's busybox image: its sh runs /bin/<applet> from PATH as
# upstream busybox does (busybox-static's runs its own applets). Unpacked, not installed: the
# two packages conflict.
BUSYBOX_DEB="$CACHE/busybox-deb"
if [ ! -x "$BUSYBOX_DEB/bin/busybox" ]; then
  log "fetching Debian's busybox into $BUSYBOX_DEB"
  deb_dir=$(mktemp -d "$CACHE/busybox-deb.XXXXXX")
  (cd "$deb_dir" && apt-get download busybox 2>/dev/null)
  dpkg -x "$(ls "$deb_dir"/busybox_*.deb | head -1)" "$deb_dir/root"
  rm -rf "$BUSYBOX_DEB"
  mv "$deb_dir/root" "$BUSYBOX_DEB"
  rm -rf "$deb_dir"
fi

# build_runc VERSION: runc of one release, with seccomp, into $CACHE/runc-VERSION/bin: the
# reference runtime the kubelet tests compare the shim with (Debian's runc 1.1 predates idmapped
# mounts). Needs libseccomp's headers (cgo); its go.mod has no replace directive, so `go install`
# takes it straight from the module proxy.
build_runc() {
  local version=$1 bin="$CACHE/runc-$1/bin"
  [ -x "$bin/runc" ] && return 0
  local pkg missing=()
  for pkg in libseccomp-dev pkg-config; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  log "building runc $version with seccomp (a minute, cached in $bin)"
  mkdir -p "$bin"
  GOBIN="$bin" GOFLAGS=-mod=mod CGO_ENABLED=1 GOTOOLCHAIN=local \
    go install -trimpath -tags seccomp "github.com/opencontainers/runc@$version"
}

# build_kubelet VERSION: the kubelet of Kubernetes VERSION into $CACHE/kubelet-VERSION/bin, from
# the scratch module hack/kubelet-module.sh writes (about 4 minutes on 2 cores from cold
# module and build caches).
build_kubelet() {
  local version=$1 top="$CACHE/kubelet-$1"
  [ -x "$top/bin/kubelet" ] && return 0
  log "building the kubelet of Kubernetes $version (about 4 minutes, cached in $top/bin)"
  bash "$(dirname "$0")/kubelet-module.sh" "$version" "$top/mod"
  mkdir -p "$top/bin"
  local v=${version#v} ldflags=""
  ldflags="-X k8s.io/component-base/version.gitVersion=$version"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=${v%%.*}"
  v=${v#*.}; ldflags+=" -X k8s.io/component-base/version.gitMinor=${v%%.*}"
  (cd "$top/mod" && GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=local \
    go build -trimpath -ldflags "$ldflags" -o "$top/bin/kubelet.tmp" k8s.io/kubernetes/cmd/kubelet)
  mv "$top/bin/kubelet.tmp" "$top/bin/kubelet"
}

# The kubelet tests' peers: runc as the reference runtime, and a kubelet.
RUNC_VERSION=${RUNC_VERSION:-v1.5.3}
KUBELET_VERSION=${KUBELET_VERSION:-v1.35.4}
build_runc "$RUNC_VERSION"
build_kubelet "$KUBELET_VERSION"

log "peers ready: containerd $(containerd --version | awk '{print $3}') (Debian), $("$PEERS/containerd" --version | awk '{print $3}') in $PEERS, $("$CONTAINERD17/usr/bin/containerd" --version | awk '{print $3}') in $CONTAINERD17, runc $("$CACHE/runc-$RUNC_VERSION/bin/runc" --version | awk 'NR == 1 {print $3}'), kubelet $("$CACHE/kubelet-$KUBELET_VERSION/bin/kubelet" --version | awk '{print $2}')"

# The Kubernetes (CRI) tests' tools: crictl, critest, CNI plugins.
bash "$(dirname "$0")/install-cri.sh"
