#!/usr/bin/env python3
"""Benchmarks of containerd-shim-usernsrs-v2 side by side with containerd-shim-runc-v2 + runc
and crun, on private containerd 1.6 and 2.4.2 instances (hack/private-containerd.sh).

Not a test: nothing here asserts a timing. Every part runs its variants interleaved
(A B C A B C ...), so a slow minute of the machine hits every variant alike. Results go to
$BENCH_OUT/results.json (default docs/bench/); hack/bench/report.py turns them into PNG plots
and docs/bench/README.md. Run through `make bench` (hack/bench/run.sh), which builds the shim
and the images first and sets USERNSRS_SHIM.

Parts (BENCH_PARTS, comma-separated, default all):
  start        start-to-exit latency of `ctr run --rm IMAGE ID /bin/true`, with and without a
               user namespace, on containerd 1.6 and 2.4.2, usernsrs vs runc vs crun;
  prep         rootfs preparation against image size (files x layers): time from `ctr run` (or
               `ctr c create`) to the container's first line, and bytes and inodes added to
               the snapshotter (and the root.path directory) per container, idmapped rootfs vs
               the chown paths; plus an strace of the shim's idmap syscalls;
  memory       PSS/RSS of the shim servers with 1, 10, 50 running containers, one shim per
               container and grouped by io.kubernetes.cri.sandbox-id;
  concurrency  starts at parallelism 1, 2, 4, 8: containers per second, p99, failures.

Knobs (environment): BENCH_RUNS (start, default 100), BENCH_START_FLAVORS ("2,1.6"),
BENCH_START_USERNS ("yes,no"), BENCH_START_RUNTIMES ("usernsrs,runc,crun"), BENCH_PREP_REPS (3),
BENCH_PREP_REPS_LARGE (2, images of 50k files or more), BENCH_IMAGES ("1000x10,10000x10,
100000x10,10000x1,10000x50": FILESxLAYERS), BENCH_MEMORY_COUNTS ("1,10,50"),
BENCH_CONC_STARTS (200), BENCH_PARALLELISM ("1,2,4,8"), BENCH_OUT (docs/bench),
BENCH_STRACE_REPS (5; 0 skips the strace of the idmap syscalls).
"""
import datetime
import glob
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(REPO, "hack", "bench")
PRIVATE = os.path.join(REPO, "hack", "private-containerd.sh")
CACHE = os.environ.get("USERNSRS_CACHE", "/var/cache/usernsrs")
NS = "usernsrs-bench"
RT_USERNSRS = "io.containerd.usernsrs.v2"
RT_RUNC = "io.containerd.runc.v2"
SANDBOX_ANNOTATION = "io.kubernetes.cri.sandbox-id"
START_IMAGE = "docker.io/library/busybox:usernsrs"
START_MAPPING = (100000, 65536)  # the brief's 0:100000:65536
MiB = 1024 * 1024


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def env_int(name, default):
    return int(os.environ.get(name, default))


def env_list(name, default):
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


def run(argv, timeout=120, check=True, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {clean_err(p.stderr)}")
    return p


def clean_err(text):
    """stderr without containerd 2.x's cgroup v1 deprecation warnings."""
    lines = [l for l in (text or "").splitlines() if "DEPRECATION" not in l and l.strip()]
    return "\n".join(lines).strip()


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    v = sorted(values)
    k = max(1, min(len(v), int(round(q / 100.0 * len(v) + 0.4999))))
    return v[k - 1]


def summary(ms):
    if not ms:
        return None
    return {"n": len(ms), "p50": round(percentile(ms, 50), 2), "p95": round(percentile(ms, 95), 2),
            "p99": round(percentile(ms, 99), 2), "mean": round(statistics.fmean(ms), 2),
            "min": round(min(ms), 2), "max": round(max(ms), 2)}


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def mapping_args(host, size, remap_labels):
    m = f"0:{host}:{size}"
    args = ["--uidmap", m, "--gidmap", m]
    if remap_labels:
        args.append("--remap-labels")
    return args


# ---------------------------------------------------------------------------------------------
# Private containerd instances


class Containerd:
    """One private containerd (hack/private-containerd.sh) in its own temp directory."""

    def __init__(self, flavor, name, slow_chown=False):
        self.flavor, self.name = flavor, name
        # Short: containerd 2.x puts shim sockets in DIR/s only if DIR is <= 40 bytes.
        self.dir = tempfile.mkdtemp(prefix="ub-", dir="/tmp")
        os.chmod(self.dir, 0o711)
        log(f"starting containerd {flavor} ({name}) in {self.dir}")
        out = run(["bash", PRIVATE, "start", self.dir, flavor], timeout=60).stdout
        kv = dict(l.split("=", 1) for l in out.splitlines() if "=" in l)
        self.ctr_bin = kv["CTR"]
        self.address = kv["CONTAINERD_ADDRESS"]
        self.bin_dir = os.path.dirname(self.ctr_bin)
        self.fifo = os.path.join(self.dir, "fifo")
        self.snapshots = os.path.join(self.dir, "root", "io.containerd.snapshotter.v1.overlayfs")
        self.slow_chown = False
        if slow_chown:
            self._restart_with_slow_chown()
        self.version = run([os.path.join(self.bin_dir, "containerd"), "--version"]).stdout.split()[2]
        caps = self.ctr("plugins", "ls", "-d", "id==overlayfs", check=False).stdout
        m = re.search(r"Capabilities:\s*(\S*)", caps)
        self.overlay_caps = m.group(1) if m else ""
        self.imported = set()

    def _restart_with_slow_chown(self):
        """Restarts this containerd with `slow_chown = true` for the overlayfs snapshotter.

        hack/private-containerd.sh has no knob for it: stop our containerd, add the line to
        the config it wrote, and start containerd again exactly as the script does (same
        command line, so its `stop` recognises the process; same PATH; detached from us)."""
        cfg = os.path.join(self.dir, "config.toml")
        text = open(cfg).read()
        header = '[plugins."io.containerd.snapshotter.v1.overlayfs"]\n'
        if header not in text:
            raise RuntimeError(f"{cfg} has no overlayfs section to add slow_chown to")
        with open(cfg, "w") as f:
            f.write(text.replace(header, header + "    slow_chown = true\n", 1))
        pid = int(open(os.path.join(self.dir, "containerd.pid")).read())
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"containerd {pid} did not stop for the slow_chown restart")
        env = dict(os.environ, PATH=f"{self.dir}/bin:{self.bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
        # sh backgrounds containerd and exits, so containerd is not our child (no zombie).
        out = run(["sh", "-c", '"$1" --config "$2" </dev/null >>"$3" 2>&1 & echo $!', "sh",
                   os.path.join(self.bin_dir, "containerd"), cfg,
                   os.path.join(self.dir, "containerd.log")], env=env).stdout
        with open(os.path.join(self.dir, "containerd.pid"), "w") as f:
            f.write(out.strip() + "\n")
        for _ in range(200):
            if self.ctr("version", check=False, namespace=False).returncode == 0:
                self.slow_chown = True
                return
            time.sleep(0.1)
        raise RuntimeError("containerd did not come back after adding slow_chown")

    def argv(self, *args, namespace=True):
        base = [self.ctr_bin, "--address", self.address]
        if namespace:
            base += ["-n", NS]
        return base + list(args)

    def ctr(self, *args, timeout=120, check=True, namespace=True):
        return run(self.argv(*args, namespace=namespace), timeout=timeout, check=check)

    def import_image(self, archive, name):
        if name in self.imported:
            return 0.0
        t0 = time.monotonic()
        self.ctr("images", "import", archive, timeout=900)
        self.imported.add(name)
        return time.monotonic() - t0

    def remove_image(self, name):
        if name in self.imported:
            self.ctr("images", "rm", "--sync", name, check=False, timeout=600)
            self.imported.discard(name)

    def stop(self):
        log(f"stopping containerd {self.flavor} ({self.name})")
        p = run(["bash", PRIVATE, "stop", self.dir], timeout=300, check=False)
        if p.returncode != 0:
            log(f"{self.dir} not removed: private-containerd.sh stop said: {p.stderr.strip()}")
            return
        rm_tree(self.dir)


def mounts_under(path):
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == path or mp.startswith(path + "/"):
                out.append(mp)
    return out


def rm_tree(path):
    """rm -rf of a directory we made, only when nothing is mounted below it."""
    if mounts_under(path):
        log(f"not removing {path}: mounts remain below it: {mounts_under(path)}")
        return
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)


class Instances:
    """The private containerds, started on first use, all stopped at the end."""

    def __init__(self):
        self.live = {}

    def get(self, key):
        if key not in self.live:
            flavor, name, slow = {"c16": ("1.6", "containerd 1.6", False),
                                  "c2": ("2", "containerd 2.4.2", False),
                                  "c2sc": ("2", "containerd 2.4.2 slow_chown", True)}[key]
            self.live[key] = Containerd(flavor, name, slow_chown=slow)
        return self.live[key]

    def stop_all(self):
        for c in self.live.values():
            try:
                c.stop()
            except Exception as e:  # keep stopping the others
                log(f"stopping {c.name}: {e}")
        self.live.clear()
        # The namespace's cgroup parents (cgroupsPath /NS/ID): rmdir only, never recursive.
        for d in glob.glob(f"/sys/fs/cgroup/*/{NS}") + glob.glob(f"/sys/fs/cgroup/{NS}"):
            try:
                os.rmdir(d)
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# Runtimes


RUNTIMES = {
    "usernsrs": {"label": "containerd-shim-usernsrs-v2", "args": ["--runtime", RT_USERNSRS]},
    "runc": {"label": "containerd-shim-runc-v2 + runc", "args": ["--runtime", RT_RUNC]},
    "crun": {"label": "containerd-shim-runc-v2 + crun",
             "args": ["--runtime", RT_RUNC, "--runc-binary", shutil.which("crun") or "crun"]},
}


def start_once(c, runtime, userns, cid, cmd=("/bin/true",), timeout=120):
    """`ctr run --rm` to exit; returns (ms, error or None)."""
    argv = c.argv("run", "--rm", *RUNTIMES[runtime]["args"], "--fifo-dir", c.fifo)
    if userns:
        argv += mapping_args(START_MAPPING[0], START_MAPPING[1], c.flavor != "1.6")
    argv += [START_IMAGE, cid, *cmd]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return (time.perf_counter() - t0) * 1000, f"timeout after {timeout}s"
    ms = (time.perf_counter() - t0) * 1000
    if p.returncode != 0:
        return ms, clean_err(p.stderr) or f"exit status {p.returncode}"
    return ms, None


class Ids:
    """Unique container ids (the concurrency part asks from several threads)."""

    def __init__(self):
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, prefix):
        with self.lock:
            self.n += 1
            return f"{prefix}-{self.n}"


IDS = Ids()


# ---------------------------------------------------------------------------------------------
# Part 1: start-to-exit latency


def part_start(inst):
    runs = env_int("BENCH_RUNS", 100)
    warmups = 2
    variants = []
    flavors = {"2": "c2", "1.6": "c16"}
    for flavor in env_list("BENCH_START_FLAVORS", "2,1.6"):
        c = inst.get(flavors[flavor])
        c.import_image(build_busybox(), START_IMAGE)
        for userns in [u == "yes" for u in env_list("BENCH_START_USERNS", "yes,no")]:
            for rt in env_list("BENCH_START_RUNTIMES", "usernsrs,runc,crun"):
                variants.append({"containerd": c.version, "flavor": c.flavor, "runtime": rt,
                                 "runtime_label": RUNTIMES[rt]["label"], "userns": userns,
                                 "_c": c, "samples_ms": [], "failures": [], "warmup_ms": []})
    # containerd 1.6's `ctr run --uidmap` chowns a copy of the image once per mapping and
    # keeps it only while a container uses it: the GC drops it after a `--rm`, and whichever
    # variant ran first after a GC would pay the chown again (an artefact of the order, not
    # of the runtime). One idle container holds the copy for the whole part; the chown
    # itself is what the prep part measures.
    pins = []
    for c in {id(v["_c"]): v["_c"] for v in variants if v["flavor"] == "1.6" and v["userns"]}.values():
        cid = IDS("pin")
        c.ctr("run", "-d", *RUNTIMES["runc"]["args"], "--fifo-dir", c.fifo,
              *mapping_args(START_MAPPING[0], START_MAPPING[1], False), START_IMAGE, cid,
              "sleep", "1000000", timeout=300)
        pins.append((c, cid))
    # Warm-up (not counted).
    for v in variants:
        errors = []
        for _ in range(warmups + 1):
            ms, err = start_once(v["_c"], v["runtime"], v["userns"], IDS("w"))
            if err:
                errors.append(err)
            else:
                v["warmup_ms"].append(round(ms, 2))
        v["runnable"] = len(v["warmup_ms"]) > 0
        if not v["runnable"]:
            v["error"] = errors[-1]
            log(f"not runnable: {v['runtime']} on containerd {v['containerd']} "
                f"userns={v['userns']}: {v['error']}")
    live = [v for v in variants if v["runnable"]]
    log(f"start latency: {runs} runs x {len(live)} runnable variants, interleaved")
    for i in range(runs):
        for v in live:
            ms, err = start_once(v["_c"], v["runtime"], v["userns"], IDS("s"))
            if err:
                v["failures"].append(err)
            else:
                v["samples_ms"].append(round(ms, 2))
        if (i + 1) % 20 == 0:
            log(f"  round {i + 1}/{runs}")
    for c, cid in pins:
        c.ctr("tasks", "delete", "--force", cid, check=False, timeout=60)
        c.ctr("containers", "rm", cid, check=False, timeout=60)
    for v in variants:
        v["stats"] = summary(v["samples_ms"])
    # Ratios to runc in the same containerd and user-namespace setting.
    for v in variants:
        ref = next((r for r in variants if r["runtime"] == "runc" and r["flavor"] == v["flavor"]
                    and r["userns"] == v["userns"]), None)
        if v["stats"] and ref and ref["stats"]:
            v["ratio_to_runc"] = {q: round(v["stats"][q] / ref["stats"][q], 3)
                                  for q in ("p50", "p95", "p99")}
    for v in variants:
        del v["_c"]
    return {"runs": runs, "warmups": warmups, "image": START_IMAGE,
            "command": "ctr run --rm --runtime R --fifo-dir D [userns] IMAGE ID /bin/true",
            "userns_args": {"2": "--uidmap 0:100000:65536 --gidmap 0:100000:65536 --remap-labels",
                            "1.6": "--uidmap 0:100000:65536 --gidmap 0:100000:65536"},
            "pinned_1.6_chowned_copy": bool(pins), "variants": variants}


def build_busybox():
    return run(["bash", os.path.join(REPO, "hack", "build-images.sh")]).stdout.strip()


# ---------------------------------------------------------------------------------------------
# Part 2: rootfs preparation against image size


def usage(paths):
    """What lies under PATHS (one filesystem, hard links once): inodes, apparent and
    allocated bytes of the data (directories, files), and apart from it the allocated bytes of
    the snapshotter's bolt database (metadata.db: containerd's records, e.g. the snapshot
    labels, not rootfs content)."""
    seen = set()
    out = {"inodes": 0, "apparent_bytes": 0, "allocated_bytes": 0, "metadata_allocated_bytes": 0}
    for path in paths:
        p = subprocess.run(["find", path, "-xdev", "-printf", "%D:%i %s %b %P\\n"],
                           capture_output=True, text=True, check=False)
        for line in p.stdout.splitlines():
            ino, size, blocks, rel = (line.split(" ", 3) + [""])[:4]
            if ino in seen:
                continue
            seen.add(ino)
            if rel == "metadata.db":
                out["metadata_allocated_bytes"] += int(blocks) * 512
                continue
            out["inodes"] += 1
            out["apparent_bytes"] += int(size)
            out["allocated_bytes"] += int(blocks) * 512
    return out


def read_first_line(proc, timeout):
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace")


class HostIds:
    """A fresh host range per container, as the kubelet gives each pod its own: the chown
    paths cache a chowned copy per (image, mapping), so reusing one mapping would hide
    their cost after the first container."""

    def __init__(self):
        self.next = 1 << 20

    def __call__(self):
        h = self.next
        self.next += 65536
        return h


HOST_IDS = HostIds()
PREP_SCRIPT = "echo ready; exec sleep 3600"

PREP_VARIANTS = [
    # key, instance, runtime, how, label
    ("usernsrs-idmap-overlay", "c2", "usernsrs", "remap-labels",
     "usernsrs, 2.4.2 --remap-labels (idmapped overlay lowers)"),
    ("usernsrs-idmap-rootpath", "c2", "usernsrs", "root.path",
     "usernsrs, 2.4.2 ctr c create --config root.path (idmapped bind)"),
    ("runc-idmap-shim-slowchown", "c2sc", "runc", "remap-labels",
     "runc shim, 2.4.2 slow_chown=true --remap-labels"),
    ("runc-chown-c2", "c2", "runc", "uidmap",
     "runc, 2.4.2 ctr run --uidmap (client chown copy)"),
    ("runc-chown-c16", "c16", "runc", "uidmap",
     "runc, 1.6 ctr run --uidmap (client chown copy)"),
    ("runc-nouserns", "c2", "runc", "none", "runc, 2.4.2, no user namespace (reference)"),
]


def parse_images():
    out = []
    for item in env_list("BENCH_IMAGES", "1000x10,10000x10,100000x10,10000x1,10000x50"):
        files, layers = item.lower().split("x")
        out.append((int(files), int(layers)))
    return out


def extract_rootfs(archive, dest):
    """Unpacks the image's layers in order into DEST (the root.path of the config flow)."""
    tmp = tempfile.mkdtemp(prefix="oci-", dir=os.path.dirname(dest))
    try:
        run(["tar", "-xf", archive, "-C", tmp])
        index = json.load(open(os.path.join(tmp, "index.json")))
        mdigest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.load(open(os.path.join(tmp, "blobs", "sha256", mdigest)))
        os.makedirs(dest)
        for layer in manifest["layers"]:
            blob = os.path.join(tmp, "blobs", "sha256", layer["digest"].split(":")[1])
            run(["tar", "--numeric-owner", "-xzf", blob, "-C", dest], timeout=600)
    finally:
        rm_tree(tmp)


def rootpath_spec(c, cid, rootfs, host):
    spec = json.loads(c.ctr("oci", "spec").stdout)
    spec["root"] = {"path": rootfs}
    spec["process"]["args"] = ["/bin/sh", "-c", PREP_SCRIPT]
    spec["process"]["terminal"] = False
    spec["process"]["env"] = ["PATH=/bin"]
    linux = spec["linux"]
    linux.pop("seccomp", None)  # the shim refuses seccomp profiles for now; ctr run sets none
    linux["cgroupsPath"] = f"/{NS}/{cid}"
    linux["namespaces"].append({"type": "user"})
    linux["uidMappings"] = [{"containerID": 0, "hostID": host, "size": 65536}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": host, "size": 65536}]
    spec.setdefault("annotations", {})["usernsrs.io/rootfs-idmap"] = "true"
    return spec


class Live:
    """A container started for the prep part, kept running until teardown."""

    def __init__(self, c, cid, proc, how):
        self.c, self.cid, self.proc, self.how = c, cid, proc, how


def prep_start(c, runtime, how, image, rootfs, timeout):
    """Starts one container; returns (ms to its first line, Live or None, error or None)."""
    cid = IDS("p")
    host = HOST_IDS()
    t0 = time.perf_counter()
    if how == "root.path":
        spec_file = os.path.join(c.dir, f"config-{cid}.json")
        with open(spec_file, "w") as f:
            json.dump(rootpath_spec(c, cid, rootfs, host), f)
        t0 = time.perf_counter()  # the spec is written by hand in this flow: not counted
        p = subprocess.run(c.argv("containers", "create", *RUNTIMES[runtime]["args"], "--config",
                                  spec_file, cid), capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            return None, None, clean_err(p.stderr)
        argv = c.argv("tasks", "start", "--fifo-dir", c.fifo, cid)
    else:
        argv = c.argv("run", "--rm", *RUNTIMES[runtime]["args"], "--fifo-dir", c.fifo)
        if how != "none":
            argv += mapping_args(host, 65536, how == "remap-labels")
        argv += [image, cid, "sh", "-c", PREP_SCRIPT]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    line = read_first_line(proc, timeout)
    ms = (time.perf_counter() - t0) * 1000
    live = Live(c, cid, proc, how)
    if line != "ready":
        return None, live, f"no 'ready' line within {timeout}s (got {line!r})"
    return ms, live, None


def teardown(lives):
    for lv in lives:
        lv.c.ctr("tasks", "kill", "-s", "SIGKILL", lv.cid, check=False, timeout=30)
    for lv in lives:
        try:
            lv.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            lv.proc.kill()
            lv.proc.communicate()
        lv.c.ctr("tasks", "delete", lv.cid, check=False, timeout=30)
        lv.c.ctr("containers", "rm", lv.cid, check=False, timeout=60)


def strace_prep(c, image, rootfs, reps):
    """The shim's idmap syscalls under strace (seccomp-bpf: only these stop): per container,
    the span from the first open_tree to the end of the mount that completes the rootfs."""
    shim = os.environ["USERNSRS_SHIM"]
    link = os.path.join(c.dir, "bin", "containerd-shim-usernsrs-v2")
    tdir = os.path.join(c.dir, "strace")
    os.makedirs(tdir, exist_ok=True)
    wrapper = os.path.join(c.dir, "shim-under-strace")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\n"
                f'exec strace -DDD -f --seccomp-bpf -qq -ttt -T -e trace=open_tree,mount_setattr,'
                f'move_mount,mount -o "{tdir}/trace.$$" "{shim}" "$@" 2>>"{tdir}/stderr"\n')
    os.chmod(wrapper, 0o755)
    os.replace(link, link + ".real")
    os.symlink(wrapper, link)
    out = {}
    try:
        for how in ("remap-labels", "root.path"):
            spans, calls = [], {}
            for _ in range(reps):
                for f in glob.glob(f"{tdir}/trace.*"):
                    os.unlink(f)
                ms, lv, err = prep_start(c, "usernsrs", how, image, rootfs, 120)
                if lv:
                    teardown([lv])
                if err:
                    out[how] = {"error": err}
                    break
                span, percall = parse_strace(glob.glob(f"{tdir}/trace.*"))
                if span is not None:
                    spans.append(span)
                for k, v in percall.items():
                    calls.setdefault(k, []).extend(v)
            else:
                out[how] = {"span_ms": [round(s, 3) for s in spans],
                            "span_ms_median": round(statistics.median(spans), 3) if spans else None,
                            "syscall_ms_median": {k: round(statistics.median(v), 3)
                                                  for k, v in calls.items()}}
    finally:
        os.unlink(link)
        os.replace(link + ".real", link)
    return out


STRACE_DONE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+).*<(\d+\.\d+)>$")
STRACE_UNFINISHED = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(\w+)\((.*)\s+<unfinished \.\.\.>$")
STRACE_RESUMED = re.compile(r"^(\d+)\s+\d+\.\d+\s+<\.\.\. (\w+) resumed>(.*)\)\s+=\s+(-?\d+).*<(\d+\.\d+)>$")


def parse_strace(files):
    """(span ms, {syscall: [ms]}) of the rootfs preparation in the helper's trace."""
    events = []
    for path in files:
        pending = {}
        for line in open(path, errors="replace"):
            line = line.strip()
            if m := STRACE_DONE.match(line):
                pid, ts, name, args, ret, dur = m.groups()
                events.append((float(ts), int(pid), name, args, int(ret), float(dur)))
            elif m := STRACE_UNFINISHED.match(line):
                pid, ts, name, args = m.groups()
                pending[(pid, name)] = (float(ts), args)
            elif m := STRACE_RESUMED.match(line):
                pid, name, rest, ret, dur = m.groups()
                if (pid, name) in pending:
                    ts, args = pending.pop((pid, name))
                    events.append((ts, int(pid), name, args + rest, int(ret), float(dur)))
    events.sort()
    # The rootfs is complete at the overlay mount over idmapped lowers, or at the move_mount of
    # an idmapped bind, onto the bundle's rootfs; it starts at the last open_tree before that
    # in the same process (containerd's `-info` call makes a probe open_tree elsewhere).
    end = next((e for e in events if (e[2] == "mount" and '"overlay"' in e[3] or
                                      e[2] == "move_mount") and '/rootfs"' in e[3]), None)
    if not end:
        return None, {}
    start = None
    for e in events:
        if e[1] == end[1] and e[2] == "open_tree" and e[0] <= end[0]:
            start = e
    if not start:
        return None, {}
    percall = {}
    for e in events:
        if e[1] == end[1] and start[0] <= e[0] <= end[0]:
            key = e[2] + (" overlay" if e[2] == "mount" and '"overlay"' in e[3] else "")
            percall.setdefault(key, []).append(e[5] * 1000)
    return (end[0] + end[5] - start[0]) * 1000, percall


def part_prep(inst):
    reps_small = env_int("BENCH_PREP_REPS", 3)
    reps_large = env_int("BENCH_PREP_REPS_LARGE", 2)
    strace_reps = env_int("BENCH_STRACE_REPS", 5)
    work = tempfile.mkdtemp(prefix="ub-rootfs-", dir="/tmp")
    os.chmod(work, 0o711)
    results = {"variants": [{"key": k, "instance": i, "runtime": r, "how": h, "label": l}
                            for k, i, r, h, l in PREP_VARIANTS],
               "script": PREP_SCRIPT, "images": []}
    try:
        for files, layers in parse_images():
            archive = run([sys.executable, os.path.join(HERE, "images.py"), str(files),
                           str(layers)], timeout=600).stdout.strip()
            name = f"docker.io/library/usernsrs-bench:f{files}-l{layers}"
            reps = reps_large if files >= 50000 else reps_small
            log(f"prep: image {files} files x {layers} layers, {reps} containers per variant")
            img = {"files": files, "layers": layers, "archive_bytes": os.path.getsize(archive),
                   "import_s": {}, "variants": {}}
            for key in sorted({i for _, i, _, _, _ in PREP_VARIANTS}):
                img["import_s"][key] = round(inst.get(key).import_image(archive, name), 2)
            rootfs = os.path.join(work, f"f{files}-l{layers}")
            extract_rootfs(archive, rootfs)
            img["image_usage"] = usage([rootfs])
            timeout = 120 + files // 1000 * 3

            def measured_paths(c, how):
                return [c.snapshots] + ([rootfs] if how == "root.path" else [])

            lives = []
            for k, i, r, h, l in PREP_VARIANTS:
                img["variants"][k] = {"ttfl_ms": [], "added": [], "failures": []}
            for rep in range(reps):
                for k, ikey, rt, how, _ in PREP_VARIANTS:
                    c = inst.get(ikey)
                    paths = measured_paths(c, how)
                    # Measured right before and after each container: the snapshotter
                    # removes snapshots asynchronously, so no older figure is trusted.
                    before = usage(paths)
                    ms, lv, err = prep_start(c, rt, how, name, rootfs, timeout)
                    if lv:
                        lives.append(lv)
                    v = img["variants"][k]
                    if err:
                        v["failures"].append(err)
                        log(f"  {k}: {err}")
                        continue
                    after = usage(paths)
                    v["ttfl_ms"].append(round(ms, 2))
                    v["added"].append({q: after[q] - before[q] for q in after})
                log(f"  rep {rep + 1}/{reps}: " + ", ".join(
                    f"{k}={img['variants'][k]['ttfl_ms'][-1]:.0f}ms"
                    for k, *_ in PREP_VARIANTS if img["variants"][k]["ttfl_ms"]))
            teardown(lives)
            for k, v in img["variants"].items():
                v["stats"] = summary(v["ttfl_ms"])
                if v["added"]:
                    v["added_median"] = {q: statistics.median(a[q] for a in v["added"])
                                         for q in v["added"][0]}
            if strace_reps > 0:
                img["strace"] = strace_prep(inst.get("c2"), name, rootfs, strace_reps)
            for key in {i for _, i, _, _, _ in PREP_VARIANTS}:
                inst.get(key).remove_image(name)
            rm_tree(rootfs)
            results["images"].append(img)
    finally:
        rm_tree(work)
    results["instances"] = {k: {"containerd": inst.get(k).version,
                                "overlayfs_capabilities": inst.get(k).overlay_caps,
                                "slow_chown": inst.get(k).slow_chown}
                            for k in ("c16", "c2", "c2sc")}
    return results


# ---------------------------------------------------------------------------------------------
# Part 3: memory of the shim servers


def smaps_rollup(pid):
    vals = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "kB":
                    vals[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        return None
    return {"rss_kib": vals.get("Rss", 0), "pss_kib": vals.get("Pss", 0),
            "uss_kib": vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0),
            "private_dirty_kib": vals.get("Private_Dirty", 0),
            "pss_anon_kib": vals.get("Pss_Anon", 0), "pss_file_kib": vals.get("Pss_File", 0)}


def smaps_breakdown(pid):
    """PSS/RSS of one process grouped by what is mapped: the binary, each library, [heap],
    thread stacks and other anonymous memory; plus its thread count."""
    groups = {}
    name = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split()
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    path = head[5] if len(head) > 5 else ""
                    if path.startswith("/"):
                        name = os.path.basename(path)
                    elif path:
                        name = path  # [heap], [stack], [vdso], ...
                    else:
                        name = "[anon]"  # includes the stacks of threads other than the main one
                    groups.setdefault(name, {"pss_kib": 0, "rss_kib": 0})
                elif head and head[0] in ("Pss:", "Rss:") and name:
                    groups[name][head[0][:-1].lower() + "_kib"] += int(head[1])
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None
    top = sorted(groups.items(), key=lambda kv: -kv[1]["pss_kib"])
    return {"threads": threads,
            "by_mapping": {k: v for k, v in top if v["rss_kib"] or v["pss_kib"]}}


def shim_servers(c):
    """pid -> runtime of the long-lived shim processes serving containerd C."""
    real_usernsrs = os.path.realpath(os.environ["USERNSRS_SHIM"])
    out = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            cmd = open(f"{d}/cmdline", "rb").read().split(b"\0")
            exe = os.path.realpath(f"{d}/exe")
        except OSError:
            continue
        if c.address.encode() not in cmd:
            continue
        pid = int(d[6:])
        if exe == real_usernsrs:
            out[pid] = "usernsrs"
        elif os.path.basename(exe) == "containerd-shim-runc-v2":
            out[pid] = "runc"
    return out


def part_memory(inst):
    c = inst.get("c2")
    c.import_image(build_busybox(), START_IMAGE)
    counts = sorted(int(x) for x in env_list("BENCH_MEMORY_COUNTS", "1,10,50"))
    out = {"containerd": c.version, "counts": counts, "modes": {}}
    for mode in ("per-container", "grouped"):
        log(f"memory: {mode}, up to {counts[-1]} sleep containers per runtime")
        ids = {"usernsrs": [], "runc": []}
        points = []
        # Shims still serving this containerd before the first container: left over from an
        # earlier part (they would be counted below, so they are recorded here).
        leftover = {rt: sum(1 for r in shim_servers(c).values() if r == rt)
                    for rt in ("usernsrs", "runc")}
        failures = {"usernsrs": [], "runc": []}
        try:
            for n in range(1, counts[-1] + 1):
                for rt in ("usernsrs", "runc"):
                    cid = IDS(f"m-{rt}")
                    argv = ["run", "-d", *RUNTIMES[rt]["args"], "--fifo-dir", c.fifo,
                            *mapping_args(START_MAPPING[0], START_MAPPING[1], True)]
                    if mode == "grouped":
                        argv += ["--annotation", f"{SANDBOX_ANNOTATION}=bench-pod-{rt}"]
                    p = c.ctr(*argv, START_IMAGE, cid, "sleep", "3600", check=False, timeout=60)
                    if p.returncode != 0:
                        failures[rt].append(clean_err(p.stderr))
                    else:
                        ids[rt].append(cid)
                if n in counts:
                    time.sleep(1.0)
                    point = {"containers": n, "running": {k: len(v) for k, v in ids.items()}}
                    servers = shim_servers(c)
                    for rt in ("usernsrs", "runc"):
                        per = [dict(pid=pid, **m) for pid, r in sorted(servers.items())
                               if r == rt and (m := smaps_rollup(pid))]
                        point[rt] = {
                            "shims": len(per), "per_shim": per,
                            "breakdown_first_shim": smaps_breakdown(per[0]["pid"]) if per else None,
                            "total_pss_kib": sum(x["pss_kib"] for x in per),
                            "total_rss_kib": sum(x["rss_kib"] for x in per),
                            "total_uss_kib": sum(x["uss_kib"] for x in per),
                            "mean_private_dirty_kib": round(statistics.fmean(
                                x["private_dirty_kib"] for x in per), 1) if per else None,
                            "mean_pss_kib": round(statistics.fmean(x["pss_kib"] for x in per), 1)
                            if per else None,
                            "mean_rss_kib": round(statistics.fmean(x["rss_kib"] for x in per), 1)
                            if per else None,
                        }
                    points.append(point)
                    log(f"  {n} containers: " + ", ".join(
                        f"{rt} {point[rt]['shims']} shims PSS {point[rt]['total_pss_kib'] / 1024:.1f} MiB"
                        for rt in ("usernsrs", "runc")))
        finally:
            for rt, lst in ids.items():
                for cid in lst:
                    # --force: SIGKILL, wait for the exit, delete.
                    c.ctr("tasks", "delete", "--force", cid, check=False, timeout=60)
                    c.ctr("containers", "rm", cid, check=False, timeout=30)
        out["modes"][mode] = {"points": points, "failures": failures,
                              "shims_before": leftover}
    return out


# ---------------------------------------------------------------------------------------------
# Part 4: concurrency


def part_concurrency(inst):
    c = inst.get("c2")
    c.import_image(build_busybox(), START_IMAGE)
    starts = env_int("BENCH_CONC_STARTS", 200)
    block = 50 if starts >= 100 else max(1, starts // 2)
    levels = [int(x) for x in env_list("BENCH_PARALLELISM", "1,2,4,8")]
    out = {"containerd": c.version, "starts": starts, "block": block,
           "command": "ctr run --rm --runtime R --uidmap 0:100000:65536 --gidmap 0:100000:65536 "
                      "--remap-labels IMAGE ID /bin/true", "levels": []}
    for par in levels:
        log(f"concurrency: {starts} starts per runtime at parallelism {par}")
        res = {rt: {"latency_ms": [], "failures": [], "wall_s": 0.0} for rt in ("usernsrs", "runc")}
        done = {"usernsrs": 0, "runc": 0}
        while done["runc"] < starts:
            for rt in ("usernsrs", "runc"):
                n = min(block, starts - done[rt])
                t0 = time.perf_counter()
                with ThreadPoolExecutor(max_workers=par) as pool:
                    outs = list(pool.map(lambda _: start_once(c, rt, True, IDS(f"c-{rt}")),
                                         range(n)))
                res[rt]["wall_s"] += time.perf_counter() - t0
                done[rt] += n
                for ms, err in outs:
                    if err:
                        res[rt]["failures"].append(err)
                    else:
                        res[rt]["latency_ms"].append(round(ms, 2))
        level = {"parallelism": par}
        for rt in ("usernsrs", "runc"):
            r = res[rt]
            level[rt] = {"starts": starts, "ok": len(r["latency_ms"]),
                         "failures": len(r["failures"]),
                         "failure_messages": sorted(set(r["failures"]))[:5],
                         "wall_s": round(r["wall_s"], 2),
                         "containers_per_s": round(len(r["latency_ms"]) / r["wall_s"], 2),
                         "stats": summary(r["latency_ms"]), "latency_ms": r["latency_ms"]}
        log("  " + ", ".join(f"{rt} {level[rt]['containers_per_s']}/s p99 "
                             f"{level[rt]['stats']['p99'] if level[rt]['stats'] else '-'} ms "
                             f"failures {level[rt]['failures']}" for rt in ("usernsrs", "runc")))
        out["levels"].append(level)
    return out


# ---------------------------------------------------------------------------------------------
# Machine and versions


def machine():
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1])
    cg = "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else (
        "hybrid" if os.path.exists("/sys/fs/cgroup/unified") or
        any("cgroup2" in l for l in open("/proc/self/mounts")) else "v1")
    return {"nproc": os.cpu_count(), "mem_total_kib": mem, "cpu_model": cpu,
            "kernel": platform.release(), "arch": platform.machine(), "cgroups": cg}


def first_line(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
    except Exception as e:  # a missing peer is recorded, not fatal here
        return f"unavailable: {e}"


def versions():
    c2 = os.path.join(CACHE, f"containerd-{os.environ.get('CONTAINERD2_VERSION', 'v2.4.2')}", "bin")
    shim = os.environ.get("USERNSRS_SHIM", "")
    return {"containerd_1.6": first_line(["/usr/bin/containerd", "--version"]),
            "containerd_2": first_line([os.path.join(c2, "containerd"), "--version"]),
            "runc": first_line(["runc", "--version"]),
            "crun": first_line(["crun", "--version"]),
            "strace": first_line(["strace", "--version"]),
            "usernsrs_shim": {"path": shim, "source": os.environ.get("BENCH_SHIM_SOURCE", ""),
                              "build": "release"}}


def main():
    if os.geteuid() != 0:
        sys.exit("bench.py: needs root (containerd, mounts, user namespaces)")
    if not os.environ.get("USERNSRS_SHIM"):
        sys.exit("bench.py: set USERNSRS_SHIM to the release shim (make bench does)")
    out_dir = os.environ.get("BENCH_OUT", os.path.join(REPO, "docs", "bench"))
    parts = env_list("BENCH_PARTS", "start,prep,memory,concurrency")
    t_start = time.monotonic()
    results = {"schema": 1,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), "versions": versions(), "parts_run": parts,
               "loadavg": {"start": loadavg()},
               "note": "Other work may share this 2-core machine; loadavg is recorded per part."}
    inst = Instances()
    fns = {"start": part_start, "prep": part_prep, "memory": part_memory,
           "concurrency": part_concurrency}

    def stop_on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop_on_signal)
    try:
        for part in parts:
            t0 = time.monotonic()
            results[part] = fns[part](inst)
            results[part]["duration_s"] = round(time.monotonic() - t0, 1)
            results["loadavg"][f"after_{part}"] = loadavg()
            log(f"part {part} done in {results[part]['duration_s']} s")
    finally:
        inst.stop_all()
    results["duration_s"] = round(time.monotonic() - t_start, 1)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)
    log(f"results in {path} ({results['duration_s']} s)")


if __name__ == "__main__":
    main()
