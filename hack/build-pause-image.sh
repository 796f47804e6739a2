#!/usr/bin/env bash
# Builds the pod sandbox image `registry.k8s.io/pause:3.10.2` (the name containerd 2.4's CRI
# pins) as an OCI archive: one layer holding /pause, compiled static from hack/pause/pause.c.
# No registry is reachable here. Deterministic; cached at
# ${USERNSRS_CACHE:-/var/cache/usernsrs}/images/pause-usernsrs.tar and rebuilt only when its
# inputs change. Prints the archive path.
set -euo pipefail

CACHE=${USERNSRS_CACHE:-/var/cache/usernsrs}
OUT_DIR="$CACHE/images"
ARCHIVE="$OUT_DIR/pause-usernsrs.tar"
STAMP="$ARCHIVE.inputs"
IMAGE_NAME=registry.k8s.io/pause:3.10.2
SRC="$(dirname "$0")/pause/pause.c"
EPOCH=1704067200

sha256() { sha256sum "$1" | cut -d' ' -f1; }
mkdir -p "$OUT_DIR"
exec 9>"$OUT_DIR/.build-pause.lock"
flock 9
inputs="script $(sha256 "${BASH_SOURCE[0]}") source $(sha256 "$SRC") cc $(gcc -dumpfullversion)"
if [ -f "$ARCHIVE" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$inputs" ]; then
  printf '%s\n' "$ARCHIVE"
  exit 0
fi

work=$(mktemp -d "$OUT_DIR/.pause.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root" "$work/oci/blobs/sha256"
gcc -static -Os -s -o "$work/root/pause" "$SRC"
tar -C "$work/root" --format=gnu --numeric-owner --owner=0 --group=0 "--mtime=@$EPOCH" -cf "$work/layer.tar" pause
diff_id=$(sha256 "$work/layer.tar")
gzip -n -9 "$work/layer.tar"
put() { local d; d=$(sha256 "$1"); mv "$1" "$work/oci/blobs/sha256/$d"; printf '%s %s' "$d" "$(stat -c %s "$work/oci/blobs/sha256/$d")"; }
read -r layer layer_size < <(put "$work/layer.tar.gz"; echo)
printf '{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z","config":{"Entrypoint":["/pause"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$diff_id" > "$work/config.json"
read -r config config_size < <(put "$work/config.json"; echo)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$config" "$config_size" "$layer" "$layer_size" > "$work/manifest.json"
read -r manifest manifest_size < <(put "$work/manifest.json"; echo)
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"3.10.2"}}]}' \
  "$manifest" "$manifest_size" "$IMAGE_NAME" > "$work/oci/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"
tar -C "$work/oci" --format=gnu --numeric-owner --owner=0 --group=0 "--mtime=@$EPOCH" -cf "$work/out.tar" oci-layout index.json blobs
mv "$work/out.tar" "$ARCHIVE"
printf '%s\n' "$inputs" > "$STAMP"
printf '%s\n' "$ARCHIVE"
