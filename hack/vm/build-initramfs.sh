#!/usr/bin/env bash
# Packs the VM test bed's initramfs for one fetched kernel (see hack/vm/fetch-kernels.sh):
# Debian's static busybox, hack/vm/initramfs-init as /init, and the kernel's modules that the
# guest root needs (virtio_pci, virtio_blk, 9p, 9pnet_virtio, overlay, ext4, and whatever
# `modprobe --show-depends` says they need), decompressed because busybox's insmod reads only
# plain .ko files. cpio (newc) + gzip, as every kernel since 2.6 unpacks.
#
#   build-initramfs.sh KEY        KEY: 6.1 6.12 backports
#
# Prints the path of the archive ($CACHE/vm/initramfs/<release>.cpio.gz) on stdout. Cached:
# rebuilt only when this script, the /init script, busybox or the kernel changed.
set -euo pipefail

CACHE=${USERNSRS_CACHE:-/var/cache/usernsrs}
VM_CACHE="$CACHE/vm"
HERE=$(cd "$(dirname "$0")" && pwd)
BUSYBOX=/bin/busybox
MODULES_NEEDED=(virtio_pci virtio_blk 9pnet_virtio 9p overlay ext4)

log() { printf '[vm-initramfs] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ $# -eq 1 ] || die "usage: $0 KEY"
env_file="$VM_CACHE/kernels/$1.env"
[ -f "$env_file" ] || die "$env_file is missing: run hack/vm/fetch-kernels.sh $1"
RELEASE='' MODULES='' VMLINUZ=''
# shellcheck source=/dev/null
. "$env_file"
file "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' ||
  [ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ] ||
  die "$BUSYBOX is not Debian's static busybox: apt-get install busybox-static"
command -v cpio >/dev/null || die "cpio is missing: apt-get install cpio"

out_dir="$VM_CACHE/initramfs"
out="$out_dir/$RELEASE.cpio.gz"
inputs=$(cat "$0" "$HERE/initramfs-init" "$BUSYBOX" "$VMLINUZ" | sha256sum | cut -d' ' -f1)
if [ -f "$out" ] && [ "$(cat "$out.inputs" 2>/dev/null)" = "$inputs" ]; then
  echo "$out"
  exit 0
fi

base=${MODULES%/lib/modules/"$RELEASE"}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,modules,lower,rw,newroot}
cp "$BUSYBOX" "$stage/bin/busybox"
install -m 0755 "$HERE/initramfs-init" "$stage/init"

# Dependencies first, each module once, in the order modprobe would insmod them.
declare -A seen=()
n=0
for mod in "${MODULES_NEEDED[@]}"; do
  while read -r verb path _; do
    [ "$verb" = insmod ] || continue   # "builtin NAME": nothing to load
    [ -z "${seen[$path]:-}" ] || continue
    seen[$path]=1
    name=$(printf '%02d-%s' "$n" "$(basename "$path")")
    name=${name%.xz}; name=${name%.zst}; name=${name%.gz}
    case $path in
      *.ko.xz) xz -dc "$path" > "$stage/modules/$name" ;;
      *.ko.zst) zstd -qdc "$path" > "$stage/modules/$name" ;;
      *.ko.gz) gzip -dc "$path" > "$stage/modules/$name" ;;
      *.ko) cp "$path" "$stage/modules/$name" ;;
      *) die "unexpected module file $path" ;;
    esac
    echo "$name" >> "$stage/modules/order"
    n=$((n + 1))
  done < <(modprobe -d "$base" -S "$RELEASE" --show-depends "$mod" ||
    die "modprobe --show-depends $mod failed for $RELEASE")
done
touch "$stage/modules/order"

mkdir -p "$out_dir"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z |
  cpio --null -o -H newc --owner=0:0 --quiet) | gzip -9n > "$out.tmp"
mv "$out.tmp" "$out"
echo "$inputs" > "$out.inputs"
log "$RELEASE: $out ($(du -h "$out" | cut -f1); modules: $(tr '\n' ' ' < "$stage/modules/order"))"
echo "$out"
