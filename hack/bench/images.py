#!/usr/bin/env python3
"""Builds the benchmark images: OCI image archives with F tiny files spread over L layers.

    images.py FILES LAYERS   prints the archive path (cached) on stdout

Image `docker.io/library/usernsrs-bench:f<FILES>-l<LAYERS>`:
  layer 1       /bin/busybox (Debian's busybox-static) and its applet links, /etc/passwd,
                /etc/group, /proc /sys /dev /tmp /root, and its share of the files;
  layers 2..L   their share of the files.
The files are /data/l<layer>/d<dir>/f<n>, 64 bytes each, 100 to a directory, all 0:0. Total
entries are FILES plus the directories (about 1%) plus about 70 in the base.

Like hack/build-images.sh the archive is deterministic (fixed mtime, sorted entries, gzip
without a name or time) and works with `ctr images import` of containerd 1.6 and 2.x. It is
cached under ${USERNSRS_CACHE:-/var/cache/usernsrs}/bench-images and rebuilt only when this
script or /bin/busybox changed. Written with Python's tarfile and gzip: no staging tree on disk.
"""
import fcntl
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

CACHE = os.environ.get("USERNSRS_CACHE", "/var/cache/usernsrs")
OUT_DIR = os.path.join(CACHE, "bench-images")
BUSYBOX = "/bin/busybox"
EPOCH = 1704067200  # 2024-01-01T00:00:00Z
CREATED = "2024-01-01T00:00:00Z"
FILE_SIZE = 64
FILES_PER_DIR = 100
APPLETS = ["sh", "cat", "echo", "true", "false", "sleep", "id", "ls", "stat", "head", "env"]


def image_name(files, layers):
    return f"docker.io/library/usernsrs-bench:f{files}-l{layers}"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _info(name, kind, mode, size=0, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.linkname = linkname
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = EPOCH
    return ti


class Layer:
    """One layer tar written to a file, with its diff_id computed on the fly."""

    def __init__(self, path):
        self.path = path
        self.raw = open(path, "wb")
        self.tar = tarfile.open(fileobj=self.raw, mode="w", format=tarfile.GNU_FORMAT)
        self.dirs = set()

    def mkdir(self, name, mode=0o755):
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                self.tar.addfile(_info(d, tarfile.DIRTYPE, mode if d == name else 0o755))

    def file(self, name, data, mode=0o644):
        self.mkdir(os.path.dirname(name))
        self.tar.addfile(_info(name, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))

    def symlink(self, name, target):
        self.tar.addfile(_info(name, tarfile.SYMTYPE, 0o777, linkname=target))

    def close(self):
        self.tar.close()
        self.raw.close()


def build(files, layers, archive):
    work = tempfile.mkdtemp(dir=OUT_DIR, prefix=".build.")
    try:
        blobs = os.path.join(work, "layout", "blobs", "sha256")
        os.makedirs(blobs)

        def put_blob(path):
            digest = sha256_file(path)
            size = os.path.getsize(path)
            os.rename(path, os.path.join(blobs, digest))
            return digest, size

        per_layer = [files // layers + (1 if i < files % layers else 0) for i in range(layers)]
        with open(BUSYBOX, "rb") as f:
            busybox = f.read()
        diff_ids, descs = [], []
        for n in range(1, layers + 1):
            tar_path = os.path.join(work, f"layer{n}.tar")
            layer = Layer(tar_path)
            if n == 1:
                for d, mode in [("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o555),
                                ("root", 0o700), ("run", 0o755), ("sys", 0o555),
                                ("tmp", 0o1777)]:
                    layer.mkdir(d, mode)
                layer.file("bin/busybox", busybox, 0o755)
                for applet in APPLETS:
                    layer.symlink(f"bin/{applet}", "busybox")
                layer.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
                layer.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                           b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
            for i in range(per_layer[n - 1]):
                name = f"data/l{n:02d}/d{i // FILES_PER_DIR:04d}/f{i:06d}"
                layer.file(name, name.encode().ljust(FILE_SIZE - 1, b".") + b"\n")
            layer.close()
            diff_ids.append("sha256:" + sha256_file(tar_path))
            gz_path = tar_path + ".gz"
            with open(tar_path, "rb") as src, open(gz_path, "wb") as raw:
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1,
                                   mtime=0) as dst:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        dst.write(chunk)
            os.unlink(tar_path)
            digest, size = put_blob(gz_path)
            descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                          "digest": f"sha256:{digest}", "size": size})

        arch = subprocess.run(["dpkg", "--print-architecture"], check=True,
                              capture_output=True, text=True).stdout.strip()
        config = {"created": CREATED, "architecture": arch, "os": "linux",
                  "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids},
                  "history": [{"created": CREATED,
                               "created_by": f"hack/bench/images.py: layer {n}"}
                              for n in range(1, layers + 1)]}

        def put_json(obj):
            path = os.path.join(work, "blob.json")
            with open(path, "w") as f:
                json.dump(obj, f, separators=(",", ":"), sort_keys=True)
            return put_blob(path)

        cdigest, csize = put_json(config)
        manifest = {"schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": f"sha256:{cdigest}", "size": csize},
                    "layers": descs}
        mdigest, msize = put_json(manifest)
        layout = os.path.join(work, "layout")
        with open(os.path.join(layout, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        ref = f"f{files}-l{layers}"
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "digest": f"sha256:{mdigest}", "size": msize,
                                "platform": {"architecture": arch, "os": "linux"},
                                "annotations": {"io.containerd.image.name":
                                                image_name(files, layers),
                                                "org.opencontainers.image.ref.name": ref}}]}
        with open(os.path.join(layout, "index.json"), "w") as f:
            json.dump(index, f, separators=(",", ":"), sort_keys=True)

        tmp_archive = os.path.join(work, "archive.tar")
        with tarfile.open(tmp_archive, "w", format=tarfile.GNU_FORMAT) as out:
            entries = []
            for root, dirs, names in os.walk(layout):
                for n in dirs + names:
                    entries.append(os.path.relpath(os.path.join(root, n), layout))
            for rel in sorted(entries):
                full = os.path.join(layout, rel)
                if os.path.isdir(full):
                    out.addfile(_info(rel, tarfile.DIRTYPE, 0o755))
                else:
                    with open(full, "rb") as f:
                        out.addfile(_info(rel, tarfile.REGTYPE, 0o644, os.path.getsize(full)), f)
        os.rename(tmp_archive, archive)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", work], check=False)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: images.py FILES LAYERS")
    files, layers = int(sys.argv[1]), int(sys.argv[2])
    if layers < 1 or files < 0:
        sys.exit("images.py: LAYERS must be >= 1 and FILES >= 0")
    if not os.access(BUSYBOX, os.X_OK):
        sys.exit(f"images.py: {BUSYBOX} is missing: run hack/install-peers.sh (busybox-static)")
    os.makedirs(OUT_DIR, exist_ok=True)
    archive = os.path.join(OUT_DIR, f"bench-f{files}-l{layers}.tar")
    stamp = archive + ".inputs"
    inputs = f"script {sha256_file(__file__)} busybox {sha256_file(BUSYBOX)}"
    with open(os.path.join(OUT_DIR, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fresh = os.path.exists(archive) and os.path.exists(stamp)
        if not fresh or open(stamp).read() != inputs:
            print(f"[bench-images] building {image_name(files, layers)}", file=sys.stderr)
            build(files, layers, archive)
            with open(stamp, "w") as f:
                f.write(inputs)
    print(archive)


if __name__ == "__main__":
    main()
