#!/usr/bin/env bash
# Fetches Debian's own kernels for the VM test bed (hack/vm/run.sh) into the cache, never into
# the machine's /boot or /lib/modules:
#   6.1        bookworm's linux-image-amd64 -> linux-image-6.1.0-*-amd64
#   6.12       trixie's linux-image-amd64 -> linux-image-6.12*-amd64
#   backports  trixie-backports' linux-image-amd64 (the newest Debian builds for trixie)
# The real package is whatever the suite's linux-image-amd64 metapackage depends on, resolved
# in a private apt state directory per suite (like hack/install-peers.sh does for trixie), so
# the machine's own apt sources, lists and package cache are left alone.
#
#   fetch-kernels.sh [KEY...]      KEY: 6.1 6.12 backports (default: $USERNSRS_VM_KERNELS or all)
#
# Each kernel is unpacked with `dpkg -x` into $CACHE/vm/kernels/<release>/ (vmlinuz and
# lib/modules/<release>, depmod'ed there), and $CACHE/vm/kernels/<KEY>.env records RELEASE,
# PACKAGE, VERSION, VMLINUZ and MODULES for run.sh. Idempotent: a fetched key is not looked up
# again (no network) unless USERNSRS_VM_REFRESH=1, which re-resolves the newest package.
# Prints nothing on stdout; logs on stderr.
set -euo pipefail

CACHE=${USERNSRS_CACHE:-/var/cache/usernsrs}
VM_CACHE="$CACHE/vm"
KERNELS="$VM_CACHE/kernels"
MIRROR=${USERNSRS_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf '[vm-fetch-kernels] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# suite_of KEY: the apt suite whose linux-image-amd64 gives that kernel.
suite_of() {
  case $1 in
    6.1) echo bookworm ;;
    6.12) echo trixie ;;
    backports) echo trixie-backports ;;
    *) die "unknown kernel '$1' (want 6.1, 6.12 or backports)" ;;
  esac
}

# apt_private SUITE ARGS...: apt-get/apt-cache with a state directory of its own under the
# cache. The first word of ARGS is the tool (apt-get or apt-cache).
apt_private() {
  local suite=$1 tool=$2; shift 2
  local dir="$VM_CACHE/apt/$suite"
  "$tool" -o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=- \
    -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" \
    -o "Dir::State::status=$dir/status" -o APT::Get::List-Cleanup=0 \
    -o APT::Sandbox::User=root "$@"
}

apt_update() {
  local suite=$1 dir="$VM_CACHE/apt/$1"
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/debs"
  # An empty dpkg status: the machine's installed packages must not influence what is resolved.
  : > "$dir/status"
  echo "deb $MIRROR $suite main" > "$dir/sources.list"
  log "apt-get update ($suite, private state in $dir)"
  apt_private "$suite" apt-get update -qq
}

# resolve SUITE: the name of the real image package linux-image-amd64 depends on in SUITE.
resolve() {
  local suite=$1 dep
  # Depends: [linux-base-amd64 (= V), ]linux-image-6.12.57+deb13-amd64 (= V)[, ...]: the
  # linux-image-* among them is the package.
  dep=$(deps_of "$suite" linux-image-amd64 | grep -E '^linux-image-.*-amd64(-unsigned)?$' | head -n 1)
  [ -n "$dep" ] || die "linux-image-amd64 in $suite depends on no linux-image-*-amd64"
  echo "$dep"
}

# deps_of SUITE PKG: the package names in the Depends of PKG's newest version in SUITE (the
# first alternative of each).
deps_of() {
  apt_private "$1" apt-cache show "$2/$1" 2>/dev/null |
    awk '/^Version:/ { v = $2 } /^Depends:/ { sub(/^Depends: /, ""); print v "\t" $0 }' |
    sort -V | tail -n 1 | cut -f2 | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*//' -e 's/ //g'
}

# packages_of SUITE PKG: PKG and, since 7.x where linux-image-<release> became a metapackage,
# the linux-{base,binary,modules}-<release> it depends on (vmlinuz and modules live there).
packages_of() {
  local suite=$1 pkg=$2 release=${2#linux-image-} dep
  echo "$pkg"
  for dep in $(deps_of "$suite" "$pkg"); do
    case $dep in "linux-"*"-$release") echo "$dep" ;; esac
  done
}

fetch() {
  local key=$1 suite pkg version deb dir release tmp
  suite=$(suite_of "$key")
  if [ "${USERNSRS_VM_REFRESH:-0}" != 1 ] && [ -f "$KERNELS/$key.env" ]; then
    local RELEASE PACKAGE VERSION VMLINUZ MODULES
    # shellcheck source=/dev/null
    . "$KERNELS/$key.env"
    if [ -f "$VMLINUZ" ] && [ -f "$MODULES/modules.dep" ]; then
      log "$key: $PACKAGE $VERSION cached in $KERNELS/$RELEASE"
      return 0
    fi
  fi
  apt_update "$suite"
  pkg=$(resolve "$suite")
  version=$(apt_private "$suite" apt-cache show "$pkg/$suite" | awk '/^Version:/ { print $2 }' | sort -V | tail -n 1)
  log "$key: $suite's linux-image-amd64 -> $pkg $version"
  apt_private "$suite" apt-cache policy "$pkg" >&2
  dir="$VM_CACHE/apt/$suite/debs"
  local pkgs=() p debs=()
  mapfile -t pkgs < <(packages_of "$suite" "$pkg")
  log "$key: packages ${pkgs[*]}"
  for p in "${pkgs[@]}"; do
    (cd "$dir" && apt_private "$suite" apt-get download -q "$p=$version" >&2)
    debs+=("$(find "$dir" -maxdepth 1 -name "${p}_*.deb" -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-)")
  done

  # The release is the directory name under lib/modules (usr/lib/modules once packages moved
  # to /usr): unpack to a scratch dir first, then rename to it.
  tmp=$(mktemp -d "$KERNELS/.unpack.XXXXXX")
  for deb in "${debs[@]}"; do dpkg -x "$deb" "$tmp"; done
  local modroot
  for modroot in "$tmp/lib/modules" "$tmp/usr/lib/modules"; do
    [ -d "$modroot" ] && break
  done
  [ -d "$modroot" ] || die "${debs[*]} have no lib/modules"
  release=$(basename "$(find "$modroot" -mindepth 1 -maxdepth 1 -type d | head -n 1)")
  [ -n "$release" ] || die "${debs[*]} have no lib/modules/<release>"
  # depmod -b wants BASE/lib/modules/<release>: give it that layout whatever the package used.
  if [ "$modroot" = "$tmp/usr/lib/modules" ] && [ ! -e "$tmp/lib" ]; then
    ln -s usr/lib "$tmp/lib"
  fi
  depmod -b "$tmp" "$release"
  rm -rf "${KERNELS:?}/$release"
  mv "$tmp" "$KERNELS/$release"
  chmod 0755 "$KERNELS/$release"
  local vmlinuz
  # boot/vmlinuz-<release> up to 6.x; lib/modules/<release>/vmlinuz in the split 7.x packages.
  for vmlinuz in "$KERNELS/$release/boot/vmlinuz-$release" "$KERNELS/$release/lib/modules/$release/vmlinuz" ''; do
    [ -f "$vmlinuz" ] && break
  done
  [ -n "$vmlinuz" ] || die "${debs[*]} have no boot/vmlinuz-$release nor lib/modules/$release/vmlinuz"
  cat > "$KERNELS/$key.env" <<EOF
# Written by hack/vm/fetch-kernels.sh from ${pkgs[*]} $version.
KEY=$key
SUITE=$suite
RELEASE=$release
PACKAGE=$pkg
VERSION=$version
VMLINUZ=$vmlinuz
MODULES=$KERNELS/$release/lib/modules/$release
EOF
  log "$key: $pkg $version unpacked in $KERNELS/$release ($(du -sh "$KERNELS/$release" | cut -f1))"
  # The .debs are no longer needed: the unpacked tree is the cache.
  rm -f "${debs[@]}"
}

mkdir -p "$KERNELS"
keys=("$@")
if [ ${#keys[@]} -eq 0 ]; then read -r -a keys <<<"${USERNSRS_VM_KERNELS:-6.1 6.12 backports}"; fi
for key in "${keys[@]}"; do fetch "$key"; done
