#!/usr/bin/env bash
# Builds local stand-ins for the images critest (cri-tools v1.37.0) pulls, under the names and
# tags it pulls, as one OCI image archive; hack/private-cri.sh `registry` serves them. No
# registry is reachable here, so each image is made from this machine's Debian packages after
# the intent of its upstream Dockerfile (cri-tools' images/ and Kubernetes' e2e test images):
#
#   registry.k8s.io/e2e-test-images/busybox:1.29-2   Debian's busybox (the dynamic build: its
#       sh runs /bin/<applet> from PATH as the upstream busybox does, where busybox-static's sh
#       runs its own applet, so MaskedPaths on /bin/ls could not show), with ipcs (util-linux)
#       and pgrep (procps), the applets Debian's busybox lacks, and the libraries they need.
#   registry.k8s.io/e2e-test-images/nginx:1.14-2      Debian's nginx on port 80, master and
#       worker processes, pid in /var/run/nginx.pid, logs to stdout/stderr.
#   gcr.io/k8s-staging-cri-tools/hostnet-nginx-ARCH   the same nginx on port 12003.
#   registry.k8s.io/e2e-test-images/httpd:2.4.39-4    busybox's httpd on port 80 (Apache is not
#       needed by the spec: a second web server in the pod, whose log names httpd).
#   registry.k8s.io/e2e-test-images/nonewprivs:1.3    a setuid-root program that prints its
#       effective uid (hack/cri-images/nnp.c).
#   gcr.io/k8s-staging-cri-tools/test-image-predefined-group   user default-user (1000) in the
#       image's group group-defined-in-image (50000), USER 1000.
#   gcr.io/k8s-staging-cri-tools/test-image-user-*    USER 1002, www-data, 1003:1004,
#       www-data:1004.
#   gcr.io/k8s-staging-cri-tools/test-image-{1,2,3,latest}, test-image-tag:{test,all},
#       test-image-tags:{1,2,3}   busybox with a file named after the image (one image for the
#       three test-image-tags tags, as upstream).
#   registry.k8s.io/pause:3.9 (and k8s.gcr.io/pause:3.9, the same local name)   /pause, built
#       from hack/pause/pause.c: critest starts its default entrypoint and removes the container
#       while it runs, as upstream's pause does. A config of its own, so its image id is not
#       that of the pinned sandbox image (critest removes it by id).
# Not built: test-image-digest@sha256:9700f9a2..., whose name is the digest of upstream's
# manifest, which no local build can have.
#
# Every layer is a gzip'd tar (gzip -n, fixed mtime, sorted names, numeric owners); the archive
# is deterministic and cached at ${USERNSRS_CACHE:-/var/cache/usernsrs}/images/critest-images.tar,
# rebuilt only when this script or one of the files it copies changed. Prints the archive path
# on stdout, logs on stderr. `build-cri-images.sh --names` prints the image names instead.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${USERNSRS_CACHE:-/var/cache/usernsrs}
OUT_DIR="$CACHE/images"
ARCHIVE="$OUT_DIR/critest-images.tar"
STAMP="$ARCHIVE.inputs"
# Debian's dynamic busybox, unpacked by hack/install-peers.sh (it conflicts with busybox-static,
# so it is not installed).
BUSYBOX=${CRITEST_BUSYBOX:-$CACHE/busybox-deb/bin/busybox}
NGINX=/usr/sbin/nginx
NNP_SRC="$HERE/cri-images/nnp.c"
PAUSE_SRC="$HERE/pause/pause.c"
ARCH=$(dpkg --print-architecture)   # amd64 / arm64: the names OCI and Go use
E2E=registry.k8s.io/e2e-test-images
CRI_TOOLS=gcr.io/k8s-staging-cri-tools
EPOCH=1704067200   # 2024-01-01T00:00:00Z: every file, layer and config carries this time
CREATED=2024-01-01T00:00:00Z

log() { printf '[build-cri-images] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }

# The images: "name:tag layers... | config" (config: the body of the image config's "config").
PATH_ENV='"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'
IMAGES=(
  "$E2E/busybox:1.29-2 base|$PATH_ENV,\"Cmd\":[\"sh\"]"
  "$E2E/nginx:1.14-2 base nginx|$PATH_ENV,\"Cmd\":[\"nginx\",\"-g\",\"daemon off;\"],\"ExposedPorts\":{\"80/tcp\":{}}"
  "$CRI_TOOLS/hostnet-nginx-$ARCH:latest base nginx hostnet|$PATH_ENV,\"Cmd\":[\"nginx\",\"-g\",\"daemon off;\"],\"ExposedPorts\":{\"12003/tcp\":{}}"
  "$E2E/httpd:2.4.39-4 base httpd|$PATH_ENV,\"Cmd\":[\"httpd-foreground\"],\"ExposedPorts\":{\"80/tcp\":{}}"
  "$E2E/nonewprivs:1.3 base nnp|$PATH_ENV,\"Entrypoint\":[\"/usr/local/bin/nnp\"]"
  "$CRI_TOOLS/test-image-predefined-group:latest base groups|$PATH_ENV,\"Cmd\":[\"sh\"],\"User\":\"1000\""
  "$CRI_TOOLS/test-image-user-uid:latest base|$PATH_ENV,\"Cmd\":[\"sh\"],\"User\":\"1002\""
  "$CRI_TOOLS/test-image-user-username:latest base|$PATH_ENV,\"Cmd\":[\"sh\"],\"User\":\"www-data\""
  "$CRI_TOOLS/test-image-user-uid-group:latest base|$PATH_ENV,\"Cmd\":[\"sh\"],\"User\":\"1003:1004\""
  "$CRI_TOOLS/test-image-user-username-group:latest base|$PATH_ENV,\"Cmd\":[\"sh\"],\"User\":\"www-data:1004\""
  "$CRI_TOOLS/test-image-1:latest base mark:test-image-1|$PATH_ENV,\"Cmd\":[\"sh\"]"
  "$CRI_TOOLS/test-image-2:latest base mark:test-image-2|$PATH_ENV,\"Cmd\":[\"sh\"]"
  "$CRI_TOOLS/test-image-3:latest base mark:test-image-3|$PATH_ENV,\"Cmd\":[\"sh\"]"
  "$CRI_TOOLS/test-image-latest:latest base mark:test-image-latest|$PATH_ENV,\"Cmd\":[\"sh\"]"
  "$CRI_TOOLS/test-image-tag:test base mark:test|$PATH_ENV,\"Cmd\":[\"sh\"]"
  "$CRI_TOOLS/test-image-tag:all base mark:all|$PATH_ENV,\"Cmd\":[\"sh\"]"
  "$CRI_TOOLS/test-image-tags:1 base mark:same-image|$PATH_ENV,\"Cmd\":[\"sh\"]"
  "$CRI_TOOLS/test-image-tags:2 base mark:same-image|$PATH_ENV,\"Cmd\":[\"sh\"]"
  "$CRI_TOOLS/test-image-tags:3 base mark:same-image|$PATH_ENV,\"Cmd\":[\"sh\"]"
  "registry.k8s.io/pause:3.9 pause|\"Entrypoint\":[\"/pause\"],\"User\":\"65535:65535\",\"Labels\":{\"usernsrs.stand-in\":\"registry.k8s.io/pause:3.9\"}"
)

if [ "${1:-}" = --names ]; then
  for spec in "${IMAGES[@]}"; do printf '%s\n' "${spec%% *}"; done
  exit 0
fi

[ -x "$BUSYBOX" ] || die "$BUSYBOX is missing: run hack/install-peers.sh (Debian's busybox, unpacked)"
[ -x "$NGINX" ] || die "$NGINX is missing: run hack/install-peers.sh (nginx)"
IPCS=$(command -v ipcs) || die "ipcs is missing: install util-linux"
PGREP=$(command -v pgrep) || die "pgrep is missing: install procps"
command -v gcc >/dev/null || die "gcc is needed to build the nonewprivs and pause stand-ins"

# The shared libraries an ELF binary loads, as the paths the dynamic loader looks up.
libs_of() {
  local out; out=$(ldd "$1") || die "ldd $1 failed"
  if grep -q 'not found' <<<"$out"; then die "$1 needs libraries this machine lacks: $out"; fi
  awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out" | LC_ALL=C sort -u
}

mkdir -p "$OUT_DIR"
# One builder at a time: concurrent test processes share the cache.
exec 9>"$OUT_DIR/.build-cri-images.lock"
flock 9

copied=("$BUSYBOX" "$NGINX" "$IPCS" "$PGREP")
mapfile -t all_libs < <(for bin in "$BUSYBOX" "$NGINX" "$IPCS" "$PGREP"; do libs_of "$bin"; done | LC_ALL=C sort -u)
inputs="script $(sha256 "${BASH_SOURCE[0]}") nnp $(sha256 "$NNP_SRC") pause $(sha256 "$PAUSE_SRC") cc $(gcc -dumpfullversion)"
for f in "${copied[@]}" "${all_libs[@]}"; do inputs+=" $f $(sha256 "$f")"; done
if [ -f "$ARCHIVE" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$inputs" ]; then
  printf '%s\n' "$ARCHIVE"
  exit 0
fi

work=$(mktemp -d "$OUT_DIR/.cri-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
umask 022

# add_elf STAGE SRC DEST: SRC at STAGE/DEST, and each library it loads at the path the loader
# looks for it, unless the base layer has it already.
declare -A BASE_LIBS=()
add_elf() {
  local stage=$1 src=$2 dest=$3 lib
  install -D -m 0755 "$src" "$stage$dest"
  for lib in $(libs_of "$src"); do
    [ -n "${BASE_LIBS[$lib]:-}" ] && continue
    install -D -m 0755 "$(realpath -e "$lib")" "$stage$lib"
  done
}

# Step 1: the staging trees, one per layer.
stage=$work/stage
# The base: busybox with every applet as a hard link (masking one applet must not mask busybox
# itself), ipcs and pgrep, the libraries, the directories a root file system has.
base=$stage/base
mkdir -p "$base"/{bin,proc,sys,dev,tmp,etc,root,home,var/run,var/log,usr/bin}
chmod 1777 "$base/tmp"; chmod 0700 "$base/root"
add_elf "$base" "$BUSYBOX" /bin/busybox
mapfile -t applets < <("$BUSYBOX" --list | grep -vx busybox | LC_ALL=C sort -u)
for applet in "${applets[@]}"; do ln "$base/bin/busybox" "$base/bin/$applet"; done
add_elf "$base" "$IPCS" /usr/bin/ipcs
add_elf "$base" "$PGREP" /usr/bin/pgrep
while IFS= read -r -d '' lib; do BASE_LIBS[/${lib#"$base"/}]=1; done < <(find "$base" -name '*.so*' -print0)
passwd='root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false'
group='root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
www-data:x:33:
nogroup:x:65534:'
printf '%s\n' "$passwd" > "$base/etc/passwd"
printf '%s\n' "$group" > "$base/etc/group"

# nginx: Debian's, configured as the e2e image is (port 80, pid file in /var/run, logs to the
# container's stdout and stderr), with the temporary directories Debian's build names.
nginx=$stage/nginx
add_elf "$nginx" "$NGINX" /usr/sbin/nginx
mkdir -p "$nginx"/{etc/nginx,usr/share/nginx/html,var/log/nginx,var/lib/nginx,var/cache/nginx}
ln -s /dev/stdout "$nginx/var/log/nginx/access.log"
ln -s /dev/stderr "$nginx/var/log/nginx/error.log"
nginx_conf() {
  cat <<CONF
# hack/build-cri-images.sh: nginx for critest, on port $1.
user www-data;
worker_processes 1;
pid /var/run/nginx.pid;
error_log /dev/stderr notice;
events { worker_connections 64; }
http {
    types { text/html html; }
    default_type application/octet-stream;
    access_log /dev/stdout;
    server {
        listen $1;
        root /usr/share/nginx/html;
        index index.html;
    }
}
CONF
}
nginx_conf 80 > "$nginx/etc/nginx/nginx.conf"
printf '<html><body><h1>Welcome to nginx!</h1></body></html>\n' > "$nginx/usr/share/nginx/html/index.html"
hostnet=$stage/hostnet
mkdir -p "$hostnet/etc/nginx"
nginx_conf 12003 > "$hostnet/etc/nginx/nginx.conf"

# httpd: busybox's, in the foreground, on port 80; the log line names it, as Apache's does.
httpd=$stage/httpd
mkdir -p "$httpd/usr/local/apache2/htdocs" "$httpd/usr/local/bin"
printf '<html><body><h1>It works!</h1></body></html>\n' > "$httpd/usr/local/apache2/htdocs/index.html"
cat > "$httpd/usr/local/bin/httpd-foreground" <<'SH'
#!/bin/sh
# hack/build-cri-images.sh: the httpd stand-in, busybox's httpd in the foreground.
echo "httpd (busybox) serving /usr/local/apache2/htdocs on port 80"
exec httpd -f -v -p 80 -h /usr/local/apache2/htdocs
SH
chmod 0755 "$httpd/usr/local/bin/httpd-foreground"

# nonewprivs: setuid root, static (the base's libc would do too; static keeps it one file).
nnp=$stage/nnp
mkdir -p "$nnp/usr/local/bin"
gcc -static -O2 -s -o "$nnp/usr/local/bin/nnp" "$NNP_SRC"
chmod 4755 "$nnp/usr/local/bin/nnp"

# pause: the sandbox's process, static.
mkdir -p "$stage/pause"
gcc -static -Os -s -o "$stage/pause/pause" "$PAUSE_SRC"

# The predefined-group image: what its Dockerfile's adduser and addgroup leave.
groups=$stage/groups
mkdir -p "$groups/etc" "$groups/home/default-user"
printf '%s\n' "$passwd" 'default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh' > "$groups/etc/passwd"
printf '%s\n' "$group" 'default-user:x:1000:' 'group-defined-in-image:x:50000:default-user' > "$groups/etc/group"
chmod 0644 "$groups/etc/passwd" "$groups/etc/group"

# Step 2: the layer tars (the diff_ids are digests of these uncompressed tars) and their blobs.
layout=$work/layout
blobs=$layout/blobs/sha256
mkdir -p "$blobs"
# put_blob FILE: moves FILE into blobs/ and sets $digest and $bsize.
put_blob() { digest=$(sha256 "$1"); bsize=$(stat -c %s "$1"); mv "$1" "$blobs/$digest"; }
TAR_OPTS=(--format=gnu --numeric-owner "--mtime=@$EPOCH" --no-recursion)
declare -A DIFF_ID=() LAYER_DESC=()
# layer NAME STAGE [OWNED_PATH UID:GID]...: the tar of every entry of STAGE, owned 0:0 but for
# the paths named (tar's --owner applies to a whole invocation: those are appended).
layer() {
  local name=$1 dir=$2; shift 2
  local -a special=()
  while [ $# -ge 2 ]; do special+=("$1"); shift 2; done
  (cd "$dir" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) |
    grep -vxF -f <(printf '%s\n' "${special[@]}" '') > "$work/list" || true
  tar -C "$dir" "${TAR_OPTS[@]}" --owner=0 --group=0 -cf "$work/$name.tar" -T "$work/list"
}
append_owned() {
  local name=$1 dir=$2 path=$3 owner=$4
  tar -C "$dir" "${TAR_OPTS[@]}" --owner="${owner%:*}" --group="${owner#*:}" -rf "$work/$name.tar" "$path"
}
seal_layer() {
  local name=$1
  DIFF_ID[$name]="sha256:$(sha256 "$work/$name.tar")"
  gzip -n -9 < "$work/$name.tar" > "$work/$name.tar.gz"
  rm "$work/$name.tar"
  put_blob "$work/$name.tar.gz"
  LAYER_DESC[$name]="{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$bsize}"
}
find "$stage" -exec touch -h -d "@$EPOCH" {} +
for name in base nginx hostnet httpd nnp pause; do layer "$name" "$stage/$name"; seal_layer "$name"; done
layer groups "$groups" home/default-user 1000:1000
append_owned groups "$groups" home/default-user 1000:1000
seal_layer groups

# Step 3: one manifest per image, all in one index; the marker layers made as named.
join() { local IFS=,; printf '%s' "$*"; }
entries=()
for spec in "${IMAGES[@]}"; do
  ref=${spec%% *} rest=${spec#* }
  layers=${rest%%|*} body=${rest#*|}
  diff_ids=() descs=() history=()
  for l in $layers; do
    if [[ $l == mark:* ]]; then
      if [ -z "${DIFF_ID[$l]:-}" ]; then
        mark=$stage/$l; mkdir -p "$mark"; : > "$mark/${l#mark:}"; touch -d "@$EPOCH" "$mark/${l#mark:}"
        layer "$l" "$mark"; seal_layer "$l"
      fi
    fi
    diff_ids+=("\"${DIFF_ID[$l]}\"")
    descs+=("${LAYER_DESC[$l]}")
    history+=("{\"created\":\"$CREATED\",\"created_by\":\"hack/build-cri-images.sh: $l\"}")
  done
  printf '{"created":"%s","architecture":"%s","os":"linux","config":{%s},"rootfs":{"type":"layers","diff_ids":[%s]},"history":[%s]}' \
    "$CREATED" "$ARCH" "$body" "$(join "${diff_ids[@]}")" "$(join "${history[@]}")" > "$work/config.json"
  put_blob "$work/config.json"
  config_desc="{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$digest\",\"size\":$bsize}"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
    "$config_desc" "$(join "${descs[@]}")" > "$work/manifest.json"
  put_blob "$work/manifest.json"
  entries+=("{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$digest\",\"size\":$bsize,\"platform\":{\"architecture\":\"$ARCH\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$ref\",\"org.opencontainers.image.ref.name\":\"${ref##*:}\"}}")
done
printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' \
  "$(join "${entries[@]}")" > "$layout/index.json"

# Step 4: the archive, itself deterministic, moved into place atomically.
find "$layout" -exec touch -h -d "@$EPOCH" {} +
(cd "$layout" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) > "$work/list"
tar -C "$layout" "${TAR_OPTS[@]}" --owner=0 --group=0 -cf "$work/archive.tar" -T "$work/list"
mv "$work/archive.tar" "$ARCHIVE"
printf '%s\n' "$inputs" > "$STAMP"
log "built ${#IMAGES[@]} critest images: $ARCHIVE"
printf '%s\n' "$ARCHIVE"
