#!/usr/bin/env bash
# Builds the test image `docker.io/library/busybox:usernsrs` as an OCI image archive that both
# `ctr images import` of containerd 1.6 and of containerd 2.x accept, from Debian's static
# busybox and shell tools only (tar, gzip, sha256sum, printf). No registry is reachable here.
#
# Layers (each a gzip'd tar, gzip -n, fixed mtime, sorted names, numeric owners):
#   1. /bin/busybox, a /bin/<applet> hard link for each applet, /proc /sys /dev /tmp /etc /root: 0:0.
#   2. /etc/passwd and /etc/group: root (0), app (1000), nobody (65534).
#   3. /data (0:0, 0755) with /data/root-file (0:0) and /data/app-file (1000:1000): the owners a
#      test reads back through the idmapped rootfs.
#
# The archive is deterministic (same busybox + same script = same bytes) and cached at
# ${USERNSRS_CACHE:-/var/cache/usernsrs}/images/busybox-usernsrs.tar; it is rebuilt only when
# this script or /bin/busybox changed. Prints the archive path on stdout, logs on stderr.
set -euo pipefail

CACHE=${USERNSRS_CACHE:-/var/cache/usernsrs}
OUT_DIR="$CACHE/images"
ARCHIVE="$OUT_DIR/busybox-usernsrs.tar"
STAMP="$ARCHIVE.inputs"
IMAGE_NAME=docker.io/library/busybox:usernsrs
REF_NAME=usernsrs
BUSYBOX=/bin/busybox
# 2024-01-01T00:00:00Z: every file, layer and config carries this time.
EPOCH=1704067200
CREATED=2024-01-01T00:00:00Z

# The applets linked in /bin: all of this busybox's (read at build time, see layer 1).

log() { printf '[build-images] %s\n' "$*" >&2; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

[ -x "$BUSYBOX" ] || { log "$BUSYBOX is missing: run hack/install-peers.sh (busybox-static)"; exit 1; }

mkdir -p "$OUT_DIR"
# One builder at a time: concurrent test processes share the cache.
exec 9>"$OUT_DIR/.build-images.lock"
flock 9

inputs="script $(sha256 "${BASH_SOURCE[0]}") busybox $(sha256 "$BUSYBOX")"
if [ -f "$ARCHIVE" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$inputs" ]; then
  printf '%s\n' "$ARCHIVE"
  exit 0
fi

work=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
umask 022

# tar_layer STAGE OUT.tar: every entry of the staging dir, sorted, owned 0:0.
TAR_OPTS=(--format=gnu --numeric-owner "--mtime=@$EPOCH" --no-recursion)
tar_layer() {
  (cd "$1" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) > "$work/list"
  tar -C "$1" "${TAR_OPTS[@]}" --owner=0 --group=0 -cf "$2" -T "$work/list"
}

# Step 1: the staging trees.
l1=$work/l1 l2=$work/l2 l3=$work/l3
mkdir -p "$l1/bin" "$l1/proc" "$l1/sys" "$l1/dev" "$l1/tmp" "$l1/etc" "$l1/root"
chmod 1777 "$l1/tmp"; chmod 0700 "$l1/root"
install -m 0755 "$BUSYBOX" "$l1/bin/busybox"
# Every applet this busybox has (critest's images run top, ipcs, brctl, ...).
mapfile -t APPLETS < <("$BUSYBOX" --list | grep -vx busybox | LC_ALL=C sort -u)
# Hard links, as the official busybox images have them (a symlink would make masking one
# applet mask busybox itself).
for applet in "${APPLETS[@]}"; do ln "$l1/bin/busybox" "$l1/bin/$applet"; done

mkdir -p "$l2/etc"
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'app:x:1000:1000:app:/home/app:/bin/sh' \
  'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' > "$l2/etc/passwd"
printf '%s\n' 'root:x:0:' 'app:x:1000:' 'nogroup:x:65534:' > "$l2/etc/group"
chmod 0644 "$l2/etc/passwd" "$l2/etc/group"

mkdir -p "$l3/data"; chmod 0755 "$l3/data"
printf 'owned by root\n' > "$l3/data/root-file"
printf 'owned by app\n' > "$l3/data/app-file"
chmod 0644 "$l3/data/root-file" "$l3/data/app-file"

# Step 2: the layer tars; the diff_ids are digests of these uncompressed tars.
tar_layer "$l1" "$work/layer1.tar"
tar_layer "$l2" "$work/layer2.tar"
# Layer 3 needs two owners: tar's --owner applies to a whole invocation, so append the app file.
tar -C "$l3" "${TAR_OPTS[@]}" --owner=0 --group=0 -cf "$work/layer3.tar" data data/root-file
tar -C "$l3" "${TAR_OPTS[@]}" --owner=1000 --group=1000 -rf "$work/layer3.tar" data/app-file

# Step 3: the OCI layout.
layout=$work/layout
blobs=$layout/blobs/sha256
mkdir -p "$blobs"
# put_blob FILE: moves FILE into blobs/ and sets $digest and $bsize.
put_blob() { digest=$(sha256 "$1"); bsize=$(size "$1"); mv "$1" "$blobs/$digest"; }

diff_ids=() layer_descs=()
for n in 1 2 3; do
  diff_ids+=("\"sha256:$(sha256 "$work/layer$n.tar")\"")
  gzip -n -9 < "$work/layer$n.tar" > "$work/layer$n.tar.gz"
  put_blob "$work/layer$n.tar.gz"
  layer_descs+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$bsize}")
done
join() { local IFS=,; printf '%s' "$*"; }

arch=$(dpkg --print-architecture)   # amd64 / arm64: the same names OCI uses
printf '{"created":"%s","architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]},"history":[{"created":"%s","created_by":"hack/build-images.sh: busybox"},{"created":"%s","created_by":"hack/build-images.sh: passwd, group"},{"created":"%s","created_by":"hack/build-images.sh: /data owners"}]}' \
  "$CREATED" "$arch" "$(join "${diff_ids[@]}")" "$CREATED" "$CREATED" "$CREATED" > "$work/config.json"
put_blob "$work/config.json"
config_desc="{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$digest\",\"size\":$bsize}"

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
  "$config_desc" "$(join "${layer_descs[@]}")" > "$work/manifest.json"
put_blob "$work/manifest.json"

printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$digest" "$bsize" "$arch" "$IMAGE_NAME" "$REF_NAME" > "$layout/index.json"

# Step 4: the archive, itself deterministic, moved into place atomically.
find "$layout" -exec touch -h -d @$EPOCH {} +
(cd "$layout" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) > "$work/list"
tar -C "$layout" "${TAR_OPTS[@]}" --owner=0 --group=0 -cf "$work/archive.tar" -T "$work/list"
mv "$work/archive.tar" "$ARCHIVE"
printf '%s\n' "$inputs" > "$STAMP"
log "built $IMAGE_NAME: $ARCHIVE (manifest sha256:$digest)"
printf '%s\n' "$ARCHIVE"
