#!/usr/bin/env bash
# The demo: a private containerd 2.4.2 runs a busybox container through
# containerd-shim-usernsrs-v2 in a user namespace. The image is never chowned or copied: the
# shim idmaps the overlay's lower layers, so root inside is host uid 100000 outside.
set -euo pipefail
cd "$(dirname "$0")/.."
SHIM=${USERNSRS_SHIM:-$PWD/target/release/containerd-shim-usernsrs-v2}
[ -x "$SHIM" ] || { echo "no shim at $SHIM: run 'make build' first" >&2; exit 1; }
export USERNSRS_SHIM=$SHIM

dir=$(mktemp -d /tmp/usernsrs-demo-XXXXXX)
chmod 711 "$dir"
. hack/lib.sh
# A failed stop may leave a mount under $dir: remove_unmounted keeps the directory then.
stop() { bash hack/private-containerd.sh stop "$dir" >/dev/null || true; remove_unmounted "$dir"; }
trap stop EXIT
ctr() { bash hack/private-containerd.sh ctr "$dir" "$@" 2> >(grep -v 'deprecat' >&2); }

bash hack/private-containerd.sh start "$dir" 2 >/dev/null
ctr images import "$(bash hack/build-images.sh)" >/dev/null
image=docker.io/library/busybox:usernsrs
run=(run --runtime io.containerd.usernsrs.v2 --fifo-dir "$dir/fifo"
     --uidmap 0:100000:65536 --gidmap 0:100000:65536 --remap-labels)

echo "== inside the container (ctr run --uidmap 0:100000:65536 --remap-labels)"
ctr "${run[@]}" --rm "$image" demo-1 /bin/sh -c \
  'echo "uid_map: $(cat /proc/self/uid_map)"; echo "id: $(id)"; ls -ln /data; mount | grep " / "'

echo "== from the host, while a container runs"
ctr "${run[@]}" -d "$image" demo-2 /bin/sleep 60 >/dev/null
pid=$(ctr task ls | awk '$1 == "demo-2" {print $2}')
echo "container pid $pid: $(grep '^Uid:' /proc/"$pid"/status)"
layer=$(ls -d "$dir"/root/io.containerd.snapshotter.v1.overlayfs/snapshots/*/fs/data | head -1)
echo "image layer on disk, never chowned: $(stat -c '%n %u:%g' "$layer"/root-file)"
ctr task kill -s KILL demo-2 >/dev/null
sleep 0.3
ctr task delete demo-2 >/dev/null
ctr containers delete demo-2 >/dev/null
echo "== done: containers deleted, nothing left mounted under $dir"
