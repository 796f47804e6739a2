//! End-to-end tests of fallbacks and faults (issue 7), against a private containerd 1.6 and 2.4
//! (see `hack/private-containerd.sh`), each checked on real host state: mountinfo of every
//! process, `/proc/PID/fd`, cgroup directories, bundle directories, owners and contents on disk.
//!
//! 1. The opt-in chown fallback: a `root.path` on a ramfs (which cannot be idmapped) is refused
//!    without options, naming the container, the path, `ramfs`, the kernel and `slow_chown`;
//!    with `slow_chown = true` (through `ctr run --runtime-config-path`) the container sees the
//!    image's owners, writes land in the upper layer under the bundle, the ramfs is not touched,
//!    and Delete removes the upper layer. The cost of the walk is measured and printed.
//! 2. containerd restarting while a container runs, one is paused and one exits: all three are
//!    found again with their state, the exit status kept, exec/metrics/resume/kill/delete work.
//! 3. The shim SIGKILLed under a user-namespaced container with an idmapped volume and a plain
//!    bind: `delete` detaches everything, removes the cgroup, and no file of a source is lost.
//! 4. Resource faults at Create or Start (missing or non-executable binary, a mount failing
//!    half way, a full state directory): a clear error, and everything rolled back.
//! 5. A soak of create/start/exec/kill/delete cycles, some failing on purpose: nothing leaks.
//! 6. Escapes: only stdio reaches the container, its `/proc/1/exe` is the image's binary, not the
//!    shim, its environment is the spec's, the device cgroup allows the default devices and not
//!    every device, and procfs/sysfs are not mounted through a symlink the image planted.
//!
//! Needs root, the shim (`$USERNSRS_SHIM`, or built) and the peers (`hack/install-peers.sh`).
//! Nothing here skips. Run with
//! `cargo test -p usernsrs-integration --test faults -- --test-threads=1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use usernsrs_integration::{
    count_fds, mounts_under, pids_of_cmd, pids_of_exe, process_alive, require_root, shim_binary,
    workspace_root, Flavor, CTR_TIMEOUT,
};

use common::{
    add_user_namespace, kernel_release, lines, owner, set_mapping, unique_id, unpack_busybox, Env,
    HostMount, RUNTIME, SETTLE, SHIM,
};

/// The containerd namespace of these tests (see [`common::NS`]).
const NS: &str = "fault-test";

/// The user namespace of the containers here: container 0.. at host 100000...
const HOST_BASE: u32 = 100000;
const RANGE: u32 = 65536;
const UID_MAP_LINE: &str = "0 100000 65536";

/// Soak cycles (raise it for a longer run); every `SOAK_FAIL_EVERY`th one fails on purpose.
const SOAK_CYCLES: usize = 1000;
const SOAK_FAIL_EVERY: usize = 10;

/// Small files added to the ramfs rootfs to measure what the chown fallback costs per entry.
const FALLBACK_EXTRA_FILES: usize = 10_000;
/// Runs per configuration when measuring the fallback (the median is printed).
const FALLBACK_RUNS: usize = 3;

/// How long a process may take to go away after containerd or a shim was killed.
const CLEANUP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// The `--uidmap` options of `ctr run` for a user namespace `0 100000 65536` with the busybox
/// image: containerd 2.x idmaps the snapshot (`--remap-labels`), 1.6's ctr chowns a copy.
fn userns_image_opts(flavor: Flavor) -> Vec<&'static str> {
    let mut opts = vec!["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];
    if flavor == Flavor::Containerd2 {
        opts.push("--remap-labels");
    }
    opts
}

/// A root.path spec running `script`, in a new user namespace `0 100000 65536`.
fn userns_spec(env: &Env, id: &str, rootfs: &Path, script: &str) -> Result<Value> {
    let mut spec = env.base_spec(id, rootfs, script)?;
    add_user_namespace(&mut spec)?;
    set_mapping(&mut spec, HOST_BASE, RANGE);
    Ok(spec)
}

/// A root.path spec running `script` in the user namespace at `userns` (joined by path), the
/// spec carrying no mappings of its own.
fn joined_spec(env: &Env, id: &str, rootfs: &Path, userns: &str, script: &str) -> Result<Value> {
    let mut spec = env.base_spec(id, rootfs, script)?;
    spec["linux"]["namespaces"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("spec has no linux.namespaces array"))?
        .push(json!({ "type": "user", "path": userns }));
    Ok(spec)
}

/// A spec mount `{type: bind}` of `source` at `destination`.
fn bind(destination: &str, source: &Path, options: &[&str]) -> Value {
    json!({
        "destination": destination,
        "type": "bind",
        "source": source.to_string_lossy(),
        "options": options,
    })
}

/// Appends `mounts` to the spec's mounts (after the defaults: /proc, /dev, ...).
fn add_mounts(spec: &mut Value, mounts: Vec<Value>) -> Result<()> {
    spec["mounts"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("spec has no mounts array"))?
        .extend(mounts);
    Ok(())
}

/// Writes `spec` to `DIR/config-ID.json`; returns the path.
fn write_spec(dir: &Path, id: &str, spec: &Value) -> Result<String> {
    let config = dir.join(format!("config-{id}.json"));
    fs::write(&config, serde_json::to_vec_pretty(spec)?)
        .with_context(|| format!("cannot write {}", config.display()))?;
    Ok(config.to_string_lossy().into_owned())
}

/// `ctr run --runtime R --fifo-dir D [opts] --config FILE ID`: a container from a spec file, as
/// `ctr run` makes it (with `--runtime-config-path`, unlike `ctr c create`).
fn run_config(env: &Env, id: &str, spec: &Value, opts: &[&str]) -> Result<Output> {
    let config = write_spec(env.dir(), id, spec)?;
    let fifo = env.fifo_dir();
    let mut args = env.run_args(&fifo, opts);
    args.extend(["--config", config.as_str(), id]);
    env.ctr(&args)
}

/// `ctr task exec --exec-id EXEC ID ARGS...`, which must succeed; its normalised lines.
fn exec_lines(env: &Env, id: &str, exec_id: &str, args: &[&str]) -> Result<Vec<String>> {
    let mut all = vec!["task", "exec", "--exec-id", exec_id, id];
    all.extend_from_slice(args);
    Ok(lines(&env.ctr_ok(&all)?))
}

/// Stderr and stdout of a `ctr` run, for messages.
fn render(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates directory `dir` (0755, owned by host root) holding one file per `(name, uid, gid)`,
/// each containing its name.
fn make_source(dir: &Path, files: &[(&str, u32, u32)]) -> Result<()> {
    fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for &(name, uid, gid) in files {
        let path = dir.join(name);
        fs::write(&path, format!("{name}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
        chown(&path, Some(uid), Some(gid))
            .with_context(|| format!("cannot chown {}", path.display()))?;
    }
    Ok(())
}

/// What is known of one entry on disk: owner, mode, and a regular file's contents.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    uid: u32,
    gid: u32,
    mode: u32,
    contents: Option<Vec<u8>>,
}

/// Every entry of the tree at `dir` (without following symlinks), by path relative to `dir`;
/// file contents only if `with_contents`.
fn tree(dir: &Path, with_contents: bool) -> Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let md = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let contents = if with_contents && md.is_file() {
            Some(fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?)
        } else {
            None
        };
        if md.is_dir() {
            for entry in
                fs::read_dir(&path).with_context(|| format!("cannot list {}", path.display()))?
            {
                pending.push(entry?.path());
            }
        }
        let rel = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
        out.insert(
            rel,
            Entry {
                uid: md.uid(),
                gid: md.gid(),
                mode: md.mode(),
                contents,
            },
        );
    }
    Ok(out)
}

/// Fails unless the tree at `dir` is exactly `before`, naming the first differences.
fn assert_tree_unchanged(what: &str, dir: &Path, before: &BTreeMap<PathBuf, Entry>) -> Result<()> {
    let with_contents = before.values().any(|e| e.contents.is_some());
    let after = tree(dir, with_contents)?;
    let mut diffs = Vec::new();
    for (path, was) in before {
        match after.get(path) {
            None => diffs.push(format!("{} is gone", dir.join(path).display())),
            Some(now) if now != was => diffs.push(format!(
                "{} changed: uid {} -> {}, gid {} -> {}, mode {:o} -> {:o}, contents {}",
                dir.join(path).display(),
                was.uid,
                now.uid,
                was.gid,
                now.gid,
                was.mode,
                now.mode,
                if was.contents == now.contents {
                    "same"
                } else {
                    "differ"
                }
            )),
            Some(_) => {}
        }
    }
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        diffs.push(format!("{} appeared", dir.join(path).display()));
    }
    ensure!(
        diffs.is_empty(),
        "{what}: {} of {} entries differ:\n{}",
        diffs.len(),
        before.len(),
        diffs
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// Removes the empty `/sys/fs/cgroup/*/NS` directories containers of namespace NS leave (a copy
/// of `common::NamespaceCgroups`, whose field is private to `common`), for the containerd this
/// file starts itself.
struct NamespaceCgroups(&'static str);

impl Drop for NamespaceCgroups {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let mut dirs = vec![Path::new("/sys/fs/cgroup").join(self.0)];
        dirs.extend(entries.flatten().map(|e| e.path().join(self.0)));
        for dir in dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The namespace directories `/sys/fs/cgroup/NS` and `/sys/fs/cgroup/*/NS` that exist.
fn namespace_cgroup_dirs(ns: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(ns)];
    if let Ok(entries) = fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(ns)));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// The cgroup directories of container `id` (cgroupsPath `/NS/ID`) that exist, any hierarchy.
fn cgroup_dirs(ns: &str, id: &str) -> Vec<PathBuf> {
    namespace_cgroup_dirs(ns)
        .into_iter()
        .map(|d| d.join(id))
        .filter(|d| d.exists())
        .collect()
}

/// Waits (up to [`SETTLE`]) until container `id` has no cgroup directory left.
fn assert_cgroup_gone(ns: &str, id: &str, after: &str) -> Result<()> {
    wait_for(
        &format!("the cgroup of {id} to go after {after}"),
        SETTLE,
        || Ok(cgroup_dirs(ns, id).is_empty()),
    )
    .with_context(|| format!("still there: {:?}", cgroup_dirs(ns, id)))
}

/// Processes of the usernsrs shim serving the private containerd in `dir`: started with its
/// address, or working in one of its bundles (see `Env::shim_pids`).
fn shim_pids_of(dir: &Path) -> Result<Vec<i32>> {
    let address = dir.join("containerd.sock").to_string_lossy().into_owned();
    let state = dir.join("state");
    let mut candidates = pids_of_cmd(SHIM)?;
    candidates.extend(pids_of_exe(&shim_binary()?)?);
    candidates.sort_unstable();
    candidates.dedup();
    Ok(candidates
        .into_iter()
        .filter(|pid| {
            let cmdline = cmdline(*pid);
            let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            cmdline.contains(&address) || cwd.starts_with(&state)
        })
        .collect())
}

/// The command line of `pid`, arguments joined (and ended) by spaces; empty if it is gone.
fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

/// Waits (up to [`SETTLE`]) until no shim process of container `id` runs: its server (`-id ID`
/// on the command line) or a helper or server working in its bundle.
fn assert_no_shim_of(dir: &Path, bundle: &Path, id: &str, after: &str) -> Result<()> {
    let id_arg = format!(" -id {id} ");
    // A server containerd never sent a Create (containerd failed after `start`) exits on its own
    // after ten seconds; allow for that.
    let deadline = Instant::now() + SETTLE + Duration::from_secs(10);
    loop {
        let ours: Vec<String> = shim_pids_of(dir)?
            .into_iter()
            .filter_map(|pid| {
                let cmdline = cmdline(pid);
                let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
                (cmdline.contains(&id_arg) || cwd.starts_with(bundle))
                    .then(|| format!("{pid}: {cmdline}"))
            })
            .collect();
        if ours.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "after {after}, shim processes of {id} still run {:?} later:\n{}",
            SETTLE + Duration::from_secs(10),
            ours.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The one shim server process of container `id`.
fn shim_server_of(env: &Env, id: &str) -> Result<i32> {
    let id_arg = format!(" -id {id} ");
    let servers: Vec<i32> = env
        .shim_pids()?
        .into_iter()
        .filter(|pid| cmdline(*pid).contains(&id_arg))
        .collect();
    match servers[..] {
        [pid] => Ok(pid),
        _ => bail!(
            "{}: expected one shim server for {id}, found {servers:?}",
            env.flavor()
        ),
    }
}

/// Mount table lines, in any process's mount namespace, that mention `needle` (a path): a mount
/// of it left in a namespace some process still holds. Each distinct line once, with one pid.
fn mounted_anywhere(needle: &Path) -> Result<Vec<String>> {
    let needle = needle.to_string_lossy().into_owned();
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").context("cannot list /proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // Gone by now, or a kernel thread: nothing to see.
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
            continue;
        };
        for line in info.lines().filter(|l| l.contains(&needle)) {
            if seen.insert(line.to_owned()) {
                found.push(format!("pid {pid}: {line}"));
            }
        }
    }
    Ok(found)
}

/// Fails unless nothing of container `id` is left: no shim, no host mount of this containerd
/// (other than those whose mount point is at or below one of `keep`: the test's own mounts and
/// the bundles of containers still running), no bundle, no cgroup, no container record.
fn assert_nothing_left(env: &Env, id: &str, keep: &[&Path], after: &str) -> Result<()> {
    let flavor = env.flavor();
    let bundle = env.bundle(id);
    assert_no_shim_of(env.dir(), &bundle, id, after).map_err(|e| anyhow!("{flavor}: {e:#}"))?;
    let kept = |point: &Path| keep.iter().any(|k| point.starts_with(k));
    let left: Vec<PathBuf> = mounts_under(env.dir())?
        .into_iter()
        .filter(|m| !kept(m))
        .collect();
    ensure!(
        left.is_empty(),
        "{flavor}: after {after}, mounts left under {}: {left:?}",
        env.dir().display()
    );
    let mut stray = Vec::new();
    for line in env.our_mount_lines()? {
        if !kept(Path::new(&common::MountLine::parse(&line)?.mount_point)) {
            stray.push(line);
        }
    }
    ensure!(
        stray.is_empty(),
        "{flavor}: after {after}, host mounts still mention {}:\n{}",
        env.dir().display(),
        stray.join("\n")
    );
    ensure!(
        !bundle.exists(),
        "{flavor}: after {after}, bundle {} was left behind",
        bundle.display()
    );
    assert_cgroup_gone(NS, id, after).map_err(|e| anyhow!("{flavor}: {e:#}"))?;
    let listed = env.ctr_ok(&["containers", "ls", "-q"])?;
    ensure!(
        !listed.lines().any(|l| l == id),
        "{flavor}: after {after}, container {id} is still listed"
    );
    Ok(())
}

/// Creates and starts a container from `spec`, which must fail: the error on `ctr task start`
/// names the container id and every one of `needles`, and nothing is left (see
/// [`assert_nothing_left`]); no process's mount table mentions any of `watched`. Returns the
/// error text.
fn expect_fault(
    env: &Env,
    id: &str,
    spec: &Value,
    what: &str,
    needles: &[&str],
    watched: &[&Path],
) -> Result<String> {
    let flavor = env.flavor();
    let before = env.our_mount_lines()?;
    let run = env.create_and_start(id, spec)?;
    ensure!(
        !run.status.success() && !run.stdout.contains("must-not-run"),
        "{flavor}: {what}: the container ran: {}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    for needle in needles.iter().copied().chain([id]) {
        ensure!(
            run.stderr.contains(needle),
            "{flavor}: {what}: the error must name {needle:?}; ctr task start said:\n{}",
            run.stderr
        );
    }
    assert_nothing_left(env, id, &[], what)?;
    let after = env.our_mount_lines()?;
    ensure!(
        after == before,
        "{flavor}: {what}: mounts of this containerd changed:\nbefore: {before:#?}\nafter: {after:#?}"
    );
    for path in watched {
        let found = mounted_anywhere(path)?;
        ensure!(
            found.is_empty(),
            "{flavor}: {what}: {} is still mounted:\n{}",
            path.display(),
            found.join("\n")
        );
    }
    Ok(run.stderr)
}

/// Collects the errors of independent checks, so that one failure does not hide the outcome of
/// the checks after it; [`Failures::finish`] reports them all.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check<T>(&mut self, what: &str, result: Result<T>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(format!("{what}: {e:#}"));
                None
            }
        }
    }

    fn finish(self, flavor: Flavor) -> Result<()> {
        ensure!(
            self.0.is_empty(),
            "{flavor}: {} check(s) failed:\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
        Ok(())
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// 1. The opt-in chown fallback for a rootfs that cannot be idmapped.
// ---------------------------------------------------------------------------------------------

/// The shim's runtime options file that opts in to the fallback.
const SLOW_CHOWN_TOML: &str = "slow_chown = true\n";

/// `ctr run --rm --config` of `spec` with the options file `options`, which must exit 0; how long
/// `ctr` took and its normalised output lines.
fn timed_run(env: &Env, id: &str, spec: &Value, options: &str) -> Result<(Duration, Vec<String>)> {
    let started = Instant::now();
    let out = run_config(env, id, spec, &["--rm", "--runtime-config-path", options])?;
    let took = started.elapsed();
    ensure!(
        out.status.success(),
        "{}: ctr run --config of {id} failed: {}",
        env.flavor(),
        render(&out)
    );
    Ok((took, lines(&String::from_utf8_lossy(&out.stdout))))
}

/// Adds `count` small files owned by 0:0 and 1000:1000 under `rootfs/many`, in subdirectories of
/// a thousand.
fn add_small_files(rootfs: &Path, count: usize) -> Result<()> {
    let many = rootfs.join("many");
    for i in 0..count {
        let dir = many.join(format!("d{}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = dir.join(format!("f{i}"));
        fs::write(&file, b"small\n").with_context(|| format!("cannot write {}", file.display()))?;
        if i % 2 == 1 {
            chown(&file, Some(1000), Some(1000))?;
        }
    }
    Ok(())
}

fn chown_fallback(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let kernel = kernel_release()?;
    let ram = HostMount::new("ramfs", &env.dir().join("ramfs"), "mode=0755")?;
    // The busybox image unpacked straight onto the ramfs, numeric owners preserved.
    let rootfs = ram.path().join("rootfs");
    unpack_busybox(&rootfs)?;
    let rootfs_s = rootfs.to_string_lossy().into_owned();
    let before = tree(&rootfs, true)?;
    let options = env.dir().join("usernsrs-slow-chown.toml");
    fs::write(&options, SLOW_CHOWN_TOML)?;
    let options_s = options.to_string_lossy().into_owned();
    let mut failures = Failures::default();

    // ctr adds runc's io_uid/io_gid options by itself whenever the spec has uidMappings, and then
    // cannot merge them with runtimeoptions (`--runtime-config-path`). So the containers here
    // join the user namespace of a holder container by path, without mappings in their spec:
    // the shim reads the mapping from the namespace.
    let holder = unique_id("holder");
    let holder_pid = env.run_detached(&userns_image_opts(flavor), &holder, &["sleep", "1000"])?;
    let userns = format!("/proc/{holder_pid}/ns/user");
    let holder_bundle = env.bundle(&holder);
    let keep = [ram.path(), holder_bundle.as_path()];

    // a. Without options: refused, naming the container, the path, the filesystem, the kernel
    //    and the way out.
    let id = unique_id("ramfs-refused");
    let spec = joined_spec(&env, &id, &rootfs, &userns, "echo must-not-run")?;
    let refused = run_config(&env, &id, &spec, &["--rm"]).and_then(|out| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("must-not-run"),
            "the container ran without slow_chown: {}",
            render(&out)
        );
        for needle in [id.as_str(), &rootfs_s, "ramfs", &kernel, "slow_chown"] {
            ensure!(
                stderr.contains(needle),
                "the error must name {needle:?}; ctr run said:\n{stderr}"
            );
        }
        assert_nothing_left(&env, &id, &keep, "the refused ramfs rootfs")?;
        Ok(stderr)
    });
    if let Some(err) = failures.check("a. ramfs rootfs without slow_chown", refused) {
        eprintln!("{flavor}: a ramfs rootfs without slow_chown is refused with:\n{err}");
    }

    // b. With slow_chown = true: the image's owners inside, writes in the upper layer under the
    //    bundle (metadata-only copy-ups), the ramfs untouched, the upper layer gone at Delete.
    let id = unique_id("ramfs-fallback");
    let b = (|| -> Result<()> {
        let spec = joined_spec(&env, &id, &rootfs, &userns, "sleep 1000")?;
        let out = run_config(
            &env,
            &id,
            &spec,
            &["-d", "--runtime-config-path", &options_s],
        )?;
        ensure!(
            out.status.success(),
            "ctr run -d with slow_chown failed: {}",
            render(&out)
        );
        let pid = env.wait_task(&id, "RUNNING")?;
        let inside = exec_lines(
            &env,
            &id,
            "check",
            &[
                "sh",
                "-c",
                "stat -c %u:%g /data/root-file /data/app-file; cat /proc/self/uid_map; \
                 echo inside > /written-inside && stat -c %u:%g /written-inside; \
                 readlink /proc/1/ns/user",
            ],
        )?;
        let holder_ns = fs::read_link(&userns)?;
        assert_eq!(
            inside,
            [
                "0:0",
                "1000:1000",
                UID_MAP_LINE,
                "0:0",
                &holder_ns.to_string_lossy(),
            ],
            "{flavor}: owners, uid_map, a new file's owner and the user namespace inside the \
             fallback container"
        );

        let bundle = env.bundle(&id);
        let state = bundle.join("usernsrs-fallback");
        let upper = state.join("upper");
        let host = fs::read_to_string("/proc/self/mountinfo")?;
        let rootfs_point = bundle.join("rootfs").to_string_lossy().into_owned();
        let root_mount = common::mount_at(&host, &rootfs_point)?;
        ensure!(
            root_mount.fs_type == "overlay"
                && root_mount.super_option("upperdir") == Some(&*upper.to_string_lossy())
                && root_mount.super_option("lowerdir") == Some(rootfs_s.as_str())
                && root_mount
                    .super_options
                    .split(',')
                    .any(|o| o == "metacopy=on"),
            "the rootfs of {id} must be an overlay of {rootfs_s} with its upper layer in {} \
             and metacopy=on: {} {}",
            upper.display(),
            root_mount.fs_type,
            root_mount.super_options
        );
        ensure!(
            fs::read_to_string(format!("/proc/{pid}/mountinfo"))?
                .lines()
                .any(|l| l.contains(" / / ") && l.contains(" - overlay ")),
            "the container's root is not the overlay"
        );
        ensure!(
            !rootfs.join("written-inside").exists(),
            "a file written in the container appeared in the ramfs"
        );
        ensure!(
            owner(&upper.join("written-inside"))? == (HOST_BASE, HOST_BASE),
            "the file written inside must be in the upper layer, owned by the mapped root"
        );
        // Metadata-only copy-ups: busybox is in the upper layer, chowned, without its data.
        let busybox = upper.join("bin/busybox");
        let md = fs::symlink_metadata(&busybox)
            .with_context(|| format!("cannot stat {}", busybox.display()))?;
        ensure!(
            (md.uid(), md.gid()) == (HOST_BASE, HOST_BASE) && md.blocks() * 512 < md.size(),
            "{} must be a chowned metadata-only copy ({HOST_BASE}:{HOST_BASE}, no data): \
             {}:{}, {} bytes in {} blocks",
            busybox.display(),
            md.uid(),
            md.gid(),
            md.size(),
            md.blocks()
        );
        ensure!(
            owner(&upper.join("data/app-file"))? == (HOST_BASE + 1000, HOST_BASE + 1000),
            "data/app-file in the upper layer must be owned by the mapped 1000"
        );
        assert_tree_unchanged("the ramfs rootfs while it runs", &rootfs, &before)?;

        env.kill_and_remove(&id)?;
        ensure!(
            !state.exists(),
            "{} is still there after the container was deleted",
            state.display()
        );
        assert_nothing_left(&env, &id, &keep, "deleting the fallback container")?;
        assert_tree_unchanged("the ramfs rootfs after Delete", &rootfs, &before)
    })();
    failures.check("b. ramfs rootfs with slow_chown = true", b);

    // c. The cost: `ctr run --rm` from start to exit, an idmapped ext4 rootfs against the ramfs
    //    through the fallback, as is and with many more small files.
    let c = (|| -> Result<()> {
        let ext4 = env.dir().join("rootfs-ext4");
        unpack_busybox(&ext4)?;
        let measure = |what: &str, root: &Path| -> Result<Duration> {
            let mut samples = Vec::new();
            for _ in 0..FALLBACK_RUNS {
                let id = unique_id("cost");
                let spec = joined_spec(&env, &id, root, &userns, "stat -c %u:%g /data/app-file")?;
                let (took, out) = timed_run(&env, &id, &spec, &options_s)?;
                ensure!(out == ["1000:1000"], "{what}: app-file inside is {out:?}");
                samples.push(took);
                assert_nothing_left(&env, &id, &keep, what)?;
            }
            Ok(median(samples))
        };
        let plain = measure("idmapped ext4", &ext4)?;
        let small = measure("ramfs fallback", &rootfs)?;
        let entries = tree(&rootfs, false)?.len();
        add_small_files(&rootfs, FALLBACK_EXTRA_FILES)?;
        let entries_many = tree(&rootfs, false)?.len();
        let many = measure("ramfs fallback with many files", &rootfs)?;
        let per_entry = many.saturating_sub(small) / (entries_many - entries).max(1) as u32;
        eprintln!(
            "{flavor}: chown fallback cost, `ctr run --rm` create to exit, median of \
             {FALLBACK_RUNS}: idmapped ext4 rootfs {plain:?}; ramfs + slow_chown \
             ({entries} entries) {small:?}; ramfs + slow_chown ({entries_many} entries) \
             {many:?}: about {per_entry:?} per extra entry"
        );
        Ok(())
    })();
    failures.check("c. the cost of the fallback", c);

    failures.check("the holder", env.kill_and_remove(&holder));
    failures.check(
        "at the end",
        assert_nothing_left(&env, &holder, &[ram.path()], "the fallback tests"),
    );
    drop(ram);
    failures.check(
        "after unmounting the ramfs",
        mounts_under(env.dir()).and_then(|left| {
            ensure!(left.is_empty(), "mounts left: {left:?}");
            Ok(())
        }),
    );
    failures.finish(flavor)
}

#[test]
fn containerd16_chown_fallback_is_opt_in_and_leaves_the_ramfs_alone() -> Result<()> {
    chown_fallback(Flavor::Containerd16)
}

#[test]
fn containerd2_chown_fallback_is_opt_in_and_leaves_the_ramfs_alone() -> Result<()> {
    chown_fallback(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 2. containerd restarts while containers run, sit paused, or exit.
// ---------------------------------------------------------------------------------------------

/// The FLAVOR argument of `hack/private-containerd.sh start`.
fn script_flavor(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::Containerd16 => "1.6",
        Flavor::Containerd2 => "2",
    }
}

/// The pid of the containerd running in `dir`, as the script recorded it.
fn recorded_containerd_pid(dir: &Path) -> Result<i32> {
    let file = dir.join("containerd.pid");
    let text =
        fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("bad pid {text:?} in {}", file.display()))
}

/// `hack/private-containerd.sh start DIR FLAVOR` with the shim under test: a containerd in
/// `dir` again (the harness starts one only once); returns its pid.
fn start_containerd_in(dir: &Path, flavor: Flavor) -> Result<i32> {
    let output = Command::new(workspace_root().join("hack/private-containerd.sh"))
        .arg("start")
        .arg(dir)
        .arg(script_flavor(flavor))
        .env("USERNSRS_SHIM", shim_binary()?)
        .output()
        .context("cannot run hack/private-containerd.sh start")?;
    ensure!(
        output.status.success(),
        "hack/private-containerd.sh start {} {} failed ({}):\n{}",
        dir.display(),
        script_flavor(flavor),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let pid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CONTAINERD_PID="))
        .ok_or_else(|| {
            anyhow!("hack/private-containerd.sh start printed no CONTAINERD_PID:\n{stdout}")
        })?;
    pid.parse()
        .with_context(|| format!("bad CONTAINERD_PID {pid:?}"))
}

/// SIGTERM to the containerd running in `dir`; waits until it is gone.
fn stop_containerd_in(dir: &Path) -> Result<()> {
    let pid = recorded_containerd_pid(dir)?;
    ensure!(process_alive(pid), "containerd {pid} is not running");
    kill(Pid::from_raw(pid), Signal::SIGTERM).with_context(|| format!("SIGTERM {pid}"))?;
    wait_for(&format!("containerd {pid} to exit"), CLEANUP, || {
        Ok(!process_alive(pid))
    })
}

fn containerd_restart(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let opts = userns_image_opts(flavor);
    ensure!(
        recorded_containerd_pid(env.dir())? == env.containerd.pid(),
        "{flavor}: the script's pid file does not name the harness's containerd"
    );

    let running = unique_id("running");
    let running_pid = env.run_detached(&opts, &running, &["sleep", "1000"])?;
    let paused = unique_id("paused");
    let paused_pid = env.run_detached(&opts, &paused, &["sleep", "1000"])?;
    env.ctr_ok(&["task", "pause", &paused])?;
    env.wait_task(&paused, "PAUSED")?;
    let exiting = unique_id("exits");
    let exiting_pid = env.run_detached(&opts, &exiting, &["sh", "-c", "sleep 2; exit 3"])?;
    let shims_before = env.shim_pids()?;

    // containerd goes away; the third container exits while it is down.
    let stopped_at = Instant::now();
    stop_containerd_in(env.dir())?;
    wait_for(
        &format!("container {exiting} (pid {exiting_pid}) to exit"),
        CLEANUP,
        || Ok(!process_alive(exiting_pid)),
    )?;
    std::thread::sleep(Duration::from_secs(3).saturating_sub(stopped_at.elapsed()));
    ensure!(
        process_alive(running_pid) && process_alive(paused_pid),
        "{flavor}: containers died with containerd: running {}, paused {}",
        process_alive(running_pid),
        process_alive(paused_pid)
    );
    let shims_down = env.shim_pids()?;
    ensure!(
        shims_down == shims_before,
        "{flavor}: the shims changed while containerd was down: {shims_before:?} -> {shims_down:?}"
    );
    let new_pid = start_containerd_in(env.dir(), flavor)?;
    eprintln!(
        "{flavor}: containerd restarted as pid {new_pid} after {:?} down",
        stopped_at.elapsed()
    );

    let mut failures = Failures::default();
    failures.check(
        "the states after the restart",
        (|| -> Result<()> {
            ensure!(
                env.wait_task(&running, "RUNNING")? == running_pid,
                "running: pid changed"
            );
            ensure!(
                env.wait_task(&paused, "PAUSED")? == paused_pid,
                "paused: pid changed"
            );
            ensure!(
                env.wait_task(&exiting, "STOPPED")? == exiting_pid,
                "exited: pid changed"
            );
            // containerd reconnected to the same servers: none was replaced or killed as leaked.
            let shims_after = env.shim_pids()?;
            ensure!(
                shims_after == shims_before,
                "the shims changed across the restart: {shims_before:?} -> {shims_after:?}"
            );
            Ok(())
        })(),
    );
    failures.check(
        "exec into the running container",
        exec_lines(
            &env,
            &running,
            "after-restart",
            &["sh", "-c", "cat /proc/self/uid_map; echo exec-ok"],
        )
        .and_then(|out| {
            ensure!(out == [UID_MAP_LINE, "exec-ok"], "exec printed {out:?}");
            Ok(())
        }),
    );
    for id in [&running, &paused] {
        failures.check(
            &format!("metrics of {id}"),
            env.ctr_ok(&["task", "metrics", id]).and_then(|out| {
                ensure!(
                    out.contains("memory.usage_in_bytes") || out.contains("memory.usage"),
                    "no memory usage in:\n{out}"
                );
                Ok(())
            }),
        );
    }
    failures.check(
        "resume the paused container",
        (|| -> Result<()> {
            env.ctr_ok(&["task", "resume", &paused])?;
            env.wait_task(&paused, "RUNNING")?;
            let out = exec_lines(&env, &paused, "after-resume", &["echo", "resumed"])?;
            ensure!(out == ["resumed"], "exec after resume printed {out:?}");
            Ok(())
        })(),
    );
    failures.check(
        "the exit status kept across the restart",
        (|| -> Result<()> {
            // ctr logs the exit status of the task it deleted (and exits 0).
            let out = env.ctr(&["task", "delete", &exiting])?;
            ensure!(
                out.status.success()
                    && String::from_utf8_lossy(&out.stderr).contains("non-zero exit code 3"),
                "`ctr task delete {exiting}` must report exit status 3: {}",
                render(&out)
            );
            env.ctr_ok(&["containers", "rm", &exiting])?;
            Ok(())
        })(),
    );
    for id in [&running, &paused] {
        failures.check(&format!("kill and delete {id}"), env.kill_and_remove(id));
    }
    for id in [&running, &paused, &exiting] {
        failures.check(
            &format!("nothing left of {id}"),
            assert_nothing_left(&env, id, &[], "the restart"),
        );
    }
    failures.check(
        "shims",
        env.assert_no_shim("deleting everything after the restart"),
    );
    failures.finish(flavor)
}

#[test]
fn containerd16_restart_keeps_running_paused_and_exited_containers() -> Result<()> {
    containerd_restart(Flavor::Containerd16)
}

#[test]
fn containerd2_restart_keeps_running_paused_and_exited_containers() -> Result<()> {
    containerd_restart(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 3. The shim SIGKILLed under a user-namespaced container with volumes.
// ---------------------------------------------------------------------------------------------

fn shim_crash_with_volumes(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs");
    unpack_busybox(&rootfs)?;
    let volume = env.dir().join("vol-idmapped");
    make_source(&volume, &[("root-file", 0, 0), ("app-file", 1000, 1000)])?;
    fs::create_dir(volume.join("sub"))?;
    fs::write(volume.join("sub/deep-file"), "deep\n")?;
    let data = env.dir().join("bind-src");
    make_source(&data, &[("data-file", 0, 0)])?;

    let id = unique_id("crash");
    let mut spec = userns_spec(
        &env,
        &id,
        &rootfs,
        "echo written-inside > /vol/written && test -s /bind/data-file && sleep 1000",
    )?;
    add_mounts(
        &mut spec,
        vec![
            bind("/vol", &volume, &["rbind", "idmap"]),
            bind("/bind", &data, &["rbind"]),
        ],
    )?;
    let pid = env.start_detached(&id, &spec)?;
    let written = volume.join("written");
    wait_for("the container to write into its volume", CLEANUP, || {
        Ok(written.exists())
    })?;
    // Container root wrote through the idmapped volume with the implied mapping: 0 on disk.
    assert_eq!(
        owner(&written)?,
        (0, 0),
        "{flavor}: the file written inside, on disk"
    );
    let volume_before = tree(&volume, true)?;
    let data_before = tree(&data, true)?;
    let rootfs_before = tree(&rootfs, false)?;
    let bundle = env.bundle(&id);
    let inside = fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    for point in ["/vol", "/bind"] {
        ensure!(
            inside.lines().any(|l| l.split(' ').nth(4) == Some(point)),
            "{flavor}: {point} is not mounted in the container:\n{inside}"
        );
    }
    ensure!(
        !mounts_under(&bundle)?.is_empty(),
        "{flavor}: the idmapped rootfs should be mounted under the bundle"
    );
    let memory_cgroup = Path::new("/sys/fs/cgroup/memory").join(NS).join(&id);
    ensure!(
        memory_cgroup.is_dir(),
        "{flavor}: {} should exist while the container runs",
        memory_cgroup.display()
    );

    let shim = shim_server_of(&env, &id)?;
    kill(Pid::from_raw(shim), Signal::SIGKILL)?;

    let mut failures = Failures::default();
    failures.check(
        "the container process",
        wait_for("the container process to be killed", CLEANUP, || {
            Ok(!process_alive(pid))
        }),
    );
    failures.check(
        "the mounts",
        wait_for("every mount under the containerd to go", CLEANUP, || {
            Ok(mounts_under(env.dir())?.is_empty())
        })
        .with_context(|| format!("left: {:?}", mounts_under(env.dir()))),
    );
    failures.check(
        "containerd's task",
        wait_for("containerd to forget the task", CLEANUP, || {
            Ok(!env.tasks()?.iter().any(|(t, _, _)| *t == id))
        }),
    );
    failures.check(
        "the cgroup",
        wait_for("the container's cgroups to go", CLEANUP, || {
            Ok(cgroup_dirs(NS, &id).is_empty())
        })
        .with_context(|| format!("left: {:?}", cgroup_dirs(NS, &id))),
    );
    failures.check(
        "the idmapped volume's source",
        assert_tree_unchanged("the idmapped volume's source", &volume, &volume_before),
    );
    failures.check(
        "the bind mount's source",
        assert_tree_unchanged("the bind mount's source", &data, &data_before),
    );
    failures.check(
        "the root.path rootfs",
        assert_tree_unchanged("the root.path rootfs", &rootfs, &rootfs_before),
    );
    failures.check(
        "the container record",
        env.ctr_ok(&["containers", "rm", &id]).map(drop),
    );
    failures.check(
        "nothing left",
        assert_nothing_left(&env, &id, &[], "SIGKILL of the shim"),
    );
    failures.finish(flavor)
}

#[test]
fn containerd16_sigkilled_shim_keeps_volume_sources_and_removes_the_cgroup() -> Result<()> {
    shim_crash_with_volumes(Flavor::Containerd16)
}

#[test]
fn containerd2_sigkilled_shim_keeps_volume_sources_and_removes_the_cgroup() -> Result<()> {
    shim_crash_with_volumes(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 4. Resource faults at Create or Start: a clear error, everything rolled back.
// ---------------------------------------------------------------------------------------------

fn resource_faults(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs");
    unpack_busybox(&rootfs)?;
    // A copy of busybox without any execute bit.
    let noexec = rootfs.join("bin/noexec");
    fs::copy(rootfs.join("bin/busybox"), &noexec)?;
    fs::set_permissions(&noexec, fs::Permissions::from_mode(0o644))?;
    let first = env.dir().join("vol-first");
    make_source(&first, &[("first-file", 0, 0)])?;
    let first_before = tree(&first, true)?;
    let missing = env.dir().join("vol-missing");
    let missing_s = missing.to_string_lossy().into_owned();
    let mut failures = Failures::default();

    // The process binary: missing, missing from PATH, not executable.
    let binaries: [(&str, &[&str], &[&str]); 3] = [
        ("a missing binary", &["/nonexistent"], &["/nonexistent"]),
        (
            "a bare name missing from PATH",
            &["no-such-command"],
            &["no-such-command"],
        ),
        (
            "a binary without execute permission",
            &["/bin/noexec"],
            &["/bin/noexec", "Permission denied"],
        ),
    ];
    for (what, args, needles) in binaries {
        let id = unique_id("badexec");
        let result = userns_spec(&env, &id, &rootfs, "echo must-not-run").and_then(|mut spec| {
            spec["process"]["args"] = json!(args);
            expect_fault(&env, &id, &spec, what, needles, &[])
        });
        if let Some(err) = failures.check(what, result) {
            eprintln!("{flavor}: {what}: {}", err.trim());
        }
    }

    // A mount failing half way. The second volume's source missing: every source is opened
    // by the helper before the container process exists, so that fails before any mount. A
    // second mount the kernel or the rootfs refuses fails in the container process, after the
    // first one was attached in its mount namespace. Either way the first one must not stay
    // mounted anywhere.
    let missing_second = |opts: &'static [&'static str]| bind("/second", &missing, opts);
    let halfway: Vec<(&str, &[&str], Value, Vec<&str>)> = vec![
        (
            "idmapped, then a missing idmapped source",
            &["rbind", "idmap"],
            missing_second(&["rbind", "idmap"]),
            vec!["/second", &missing_s],
        ),
        (
            "plain, then a missing plain source",
            &["rbind"],
            missing_second(&["rbind"]),
            vec!["/second", &missing_s],
        ),
        (
            "idmapped, then a missing plain source",
            &["rbind", "idmap"],
            missing_second(&["rbind"]),
            vec!["/second", &missing_s],
        ),
        (
            "idmapped, then a mount point under a file",
            &["rbind", "idmap"],
            bind("/data/root-file/below", &first, &["rbind"]),
            vec!["/data/root-file/below"],
        ),
        (
            "plain, then a tmpfs the kernel refuses",
            &["rbind"],
            json!({ "destination": "/second", "type": "tmpfs", "source": "tmpfs",
                    "options": ["size=not-a-size"] }),
            vec!["/second"],
        ),
    ];
    for (what, first_opts, second, needles) in halfway {
        let id = unique_id("halfway");
        let result = userns_spec(&env, &id, &rootfs, "echo must-not-run").and_then(|mut spec| {
            add_mounts(&mut spec, vec![bind("/first", &first, first_opts), second])?;
            expect_fault(&env, &id, &spec, what, &needles, &[&first])
        });
        if let Some(err) = failures.check(what, result) {
            eprintln!("{flavor}: {what}: {}", err.trim());
        }
    }
    failures.check(
        "the first volume's source",
        assert_tree_unchanged("the first volume's source", &first, &first_before),
    );
    failures.check(
        "the missing source",
        if missing.exists() {
            Err(anyhow!("{} was created", missing.display()))
        } else {
            Ok(())
        },
    );
    failures.check(
        "at the end",
        env.assert_no_shim("the faults").and_then(|()| {
            let left = mounts_under(env.dir())?;
            ensure!(left.is_empty(), "mounts left: {left:?}");
            Ok(())
        }),
    );
    drop(env);

    // The state directory full, from containerd's own files to the shim's.
    failures.check("a full state directory", full_state_dir(flavor));
    failures.finish(flavor)
}

/// A private containerd whose state directory (the bundles) is a 64 KiB tmpfs the test fills.
///
/// The harness's [`usernsrs_integration::Containerd`] creates its directory and starts
/// containerd in one go; the tmpfs must be mounted before containerd starts, so this starts
/// containerd itself with `hack/private-containerd.sh`, which it also stops.
struct TinyStateContainerd {
    flavor: Flavor,
    dir: PathBuf,
    /// `None` only while dropping.
    tempdir: Option<tempfile::TempDir>,
    /// `None` only while dropping.
    state: Option<HostMount>,
    _cgroups: NamespaceCgroups,
}

impl TinyStateContainerd {
    fn start(flavor: Flavor) -> Result<Self> {
        require_root()?;
        let tempdir = tempfile::Builder::new()
            .prefix("usernsrs-")
            .tempdir_in("/tmp")
            .context("cannot create a directory for containerd in /tmp")?;
        fs::set_permissions(tempdir.path(), fs::Permissions::from_mode(0o711))?;
        let dir = tempdir.path().canonicalize()?;
        let state = HostMount::new("tmpfs", &dir.join("state"), "size=64k,mode=0711")?;
        let containerd = TinyStateContainerd {
            flavor,
            dir,
            tempdir: Some(tempdir),
            state: Some(state),
            _cgroups: NamespaceCgroups(NS),
        };
        start_containerd_in(&containerd.dir, flavor)?;
        Ok(containerd)
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.state()
            .join("io.containerd.runtime.v2.task")
            .join(NS)
            .join(id)
    }

    /// `ctr -n NS ARGS` through the script, killed after [`CTR_TIMEOUT`].
    fn ctr(&self, args: &[&str]) -> Result<Output> {
        Command::new("timeout")
            .arg("--kill-after=5")
            .arg(CTR_TIMEOUT.as_secs().to_string())
            .arg(workspace_root().join("hack/private-containerd.sh"))
            .arg("ctr")
            .arg(&self.dir)
            .args(["-n", NS])
            .args(args)
            .output()
            .with_context(|| format!("cannot run ctr {args:?}"))
    }

    fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        ensure!(
            out.status.success(),
            "{}: ctr {args:?} failed: {}",
            self.flavor,
            render(&out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A root.path spec (see `Env::base_spec`) in a new user namespace `0 100000 65536`.
    fn userns_spec(&self, id: &str, root: &Path, script: &str) -> Result<Value> {
        let text = self.ctr_ok(&["oci", "spec"])?;
        let mut spec: Value = serde_json::from_str(&text)?;
        spec["root"] = json!({ "path": root.to_string_lossy() });
        spec["process"]["args"] = json!(["/bin/sh", "-c", script]);
        spec["process"]["terminal"] = json!(false);
        let linux = spec["linux"]
            .as_object_mut()
            .ok_or_else(|| anyhow!("`ctr oci spec` has no linux object"))?;
        linux.remove("seccomp");
        linux.insert("cgroupsPath".into(), json!(format!("/{NS}/{id}")));
        add_user_namespace(&mut spec)?;
        set_mapping(&mut spec, HOST_BASE, RANGE);
        Ok(spec)
    }

    /// `ctr c create --config` of `spec`; then `ctr t start` (`-d` if `detach`).
    fn create_and_start(&self, id: &str, spec: &Value, detach: bool) -> Result<Output> {
        let config = write_spec(&self.dir, id, spec)?;
        self.ctr_ok(&[
            "containers",
            "create",
            "--runtime",
            RUNTIME,
            "--config",
            &config,
            id,
        ])?;
        let fifo = self.dir.join("fifo").to_string_lossy().into_owned();
        let mut args = vec!["task", "start", "--fifo-dir", &fifo];
        if detach {
            args.push("-d");
        }
        args.push(id);
        self.ctr(&args)
    }

    /// The status of task `id` in `ctr task ls`, if listed.
    fn task_status(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .ctr_ok(&["task", "ls"])?
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&id)).then(|| f.get(2).map(|s| s.to_string()))
            })
            .flatten())
    }

    /// Fills the state tmpfs, then frees `free_pages` pages of it.
    fn fill_state(&self, free_pages: u64) -> Result<()> {
        let filler = self.state().join("filler");
        let _ = fs::remove_file(&filler);
        let mut file = fs::File::create(&filler)
            .with_context(|| format!("cannot create {}", filler.display()))?;
        let page = [0u8; 4096];
        let mut written = 0u64;
        loop {
            match file.write(&page) {
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).context(format!("cannot fill {}", filler.display())),
            }
        }
        file.set_len(written.saturating_sub(free_pages * 4096))?;
        Ok(())
    }

    /// Fails unless nothing of container `id` is left: shim, bundle, mounts (but the state
    /// tmpfs), cgroup, record.
    fn assert_nothing_left(&self, id: &str, after: &str) -> Result<()> {
        let bundle = self.bundle(id);
        assert_no_shim_of(&self.dir, &bundle, id, after)?;
        let state = self.state();
        let left: Vec<PathBuf> = mounts_under(&self.dir)?
            .into_iter()
            .filter(|m| *m != state)
            .collect();
        ensure!(left.is_empty(), "after {after}, mounts left: {left:?}");
        ensure!(
            !bundle.exists(),
            "after {after}, bundle {} left",
            bundle.display()
        );
        assert_cgroup_gone(NS, id, after)?;
        let listed = self.ctr_ok(&["containers", "ls", "-q"])?;
        ensure!(
            !listed.lines().any(|l| l == id),
            "after {after}, container {id} is still listed"
        );
        Ok(())
    }
}

impl Drop for TinyStateContainerd {
    fn drop(&mut self) {
        let Some(tempdir) = self.tempdir.take() else {
            return;
        };
        match Command::new(workspace_root().join("hack/private-containerd.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "!!! hack/private-containerd.sh stop {} failed ({}):\n{}",
                self.dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("!!! cannot run hack/private-containerd.sh stop: {e}"),
        }
        // The script unmounts everything under the directory; the guard only if it did not.
        drop(self.state.take());
        match mounts_under(&self.dir) {
            Ok(m) if m.is_empty() => {
                if let Err(e) = tempdir.close() {
                    eprintln!("!!! cannot remove {}: {e}", self.dir.display());
                }
            }
            other => {
                let kept = tempdir.keep();
                eprintln!(
                    "!!! LEFT {} IN PLACE: mounts below it: {other:?}",
                    kept.display()
                );
            }
        }
    }
}

/// The most free pages tried before a container must have run.
const MAX_FREE_PAGES: u64 = 16;

fn full_state_dir(flavor: Flavor) -> Result<()> {
    let c = TinyStateContainerd::start(flavor)?;
    let rootfs = c.dir.join("rootfs");
    unpack_busybox(&rootfs)?;

    // a. From a full state directory up, a page at a time: each attempt either runs the
    //    container or fails naming ENOSPC, and leaves nothing behind. Seen here: containerd
    //    fails on the bundle's config.json, then the shim's `start` on its `address` file, then
    //    containerd again on shim-binary-path and bootstrap.json (after `start` spawned the
    //    server, which nobody will ever connect to or shut down: it must go by itself), then
    //    the container runs.
    let mut failures = Failures::default();
    let mut refused = Vec::new();
    let mut ran_with = None;
    for free in 0..=MAX_FREE_PAGES {
        c.fill_state(free)?;
        let id = unique_id("full");
        let spec = c.userns_spec(&id, &rootfs, "cat /proc/self/uid_map")?;
        let run = c.create_and_start(&id, &spec, false)?;
        let _ = c.ctr(&["task", "delete", &id]);
        c.ctr_ok(&["containers", "rm", &id])?;
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        failures.check(
            &format!("{free} free pages"),
            c.assert_nothing_left(&id, &format!("a start with {free} free pages"))
                .with_context(|| format!("ctr task start said:\n{}", stderr.trim())),
        );
        if run.status.success() {
            let out = lines(&String::from_utf8_lossy(&run.stdout));
            ensure!(
                out == [UID_MAP_LINE],
                "{flavor}: with {free} free pages the container printed {out:?}"
            );
            ran_with = Some(free);
            break;
        }
        let reason = stderr
            .lines()
            .rfind(|l| l.starts_with("ctr: "))
            .unwrap_or(stderr.trim())
            .to_owned();
        ensure!(
            reason.to_lowercase().contains("no space left on device"),
            "{flavor}: with {free} free pages, the failure does not say the disk is full: {}",
            render(&run)
        );
        refused.push(format!("{free} free pages: {reason}"));
    }
    eprintln!(
        "{flavor}: a full state directory:\n  {}",
        refused.join("\n  ")
    );
    let Some(ran_with) = ran_with else {
        bail!("{flavor}: no container ran with up to {MAX_FREE_PAGES} free pages in the state dir")
    };
    eprintln!("{flavor}: the container ran with {ran_with} free pages");
    ensure!(
        !refused.is_empty(),
        "{flavor}: the container ran in a full state directory"
    );

    // b. Full while a container runs: exec fails or works, and kill and delete still clean up.
    c.fill_state(MAX_FREE_PAGES)?;
    let id = unique_id("full-running");
    let spec = c.userns_spec(&id, &rootfs, "sleep 1000")?;
    let start = c.create_and_start(&id, &spec, true)?;
    ensure!(
        start.status.success(),
        "{flavor}: detached start: {}",
        render(&start)
    );
    c.fill_state(0)?;
    let exec = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "full",
        &id,
        "cat",
        "/proc/self/uid_map",
    ])?;
    let stdout = String::from_utf8_lossy(&exec.stdout);
    let stderr = String::from_utf8_lossy(&exec.stderr);
    ensure!(
        (exec.status.success() && lines(&stdout) == [UID_MAP_LINE])
            || (!exec.status.success()
                && stderr.to_lowercase().contains("no space left on device")),
        "{flavor}: exec with a full state directory must work or say the disk is full: {}",
        render(&exec)
    );
    eprintln!(
        "{flavor}: exec in a full state directory: {}",
        if exec.status.success() {
            "works".to_owned()
        } else {
            stderr.trim().to_owned()
        }
    );
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id])?;
    wait_for(&format!("{id} to stop"), CLEANUP, || {
        Ok(c.task_status(&id)?.as_deref() == Some("STOPPED"))
    })?;
    c.ctr_ok(&["task", "delete", &id])?;
    c.ctr_ok(&["containers", "rm", &id])?;
    failures.check(
        "kill and delete with a full state directory",
        c.assert_nothing_left(&id, "kill and delete with a full state directory"),
    );
    failures.finish(flavor)
}

#[test]
fn containerd16_resource_faults_fail_clearly_and_roll_back() -> Result<()> {
    resource_faults(Flavor::Containerd16)
}

#[test]
fn containerd2_resource_faults_fail_clearly_and_roll_back() -> Result<()> {
    resource_faults(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 5. A soak: create/start/exec/kill/delete cycles, some failing on purpose, leak nothing.
// ---------------------------------------------------------------------------------------------

/// One full cycle: `ctr run -d` in a user namespace, an exec, SIGKILL, delete.
fn soak_cycle(env: &Env, opts: &[&str], id: &str) -> Result<()> {
    env.run_detached(opts, id, &["sleep", "1000"])?;
    let out = exec_lines(env, id, "soak", &["cat", "/proc/self/uid_map"])?;
    ensure!(out == [UID_MAP_LINE], "exec in {id} printed {out:?}");
    env.kill_and_remove(id)
}

/// Directories below `/sys/fs/cgroup/*/NS`: cgroups of containers that are gone should be too.
fn container_cgroups_left(ns: &str) -> Vec<PathBuf> {
    namespace_cgroup_dirs(ns)
        .into_iter()
        .flat_map(|d| fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

#[test]
fn containerd2_soak_of_cycles_with_failures_leaks_nothing() -> Result<()> {
    let flavor = Flavor::Containerd2;
    let env = Env::start_in(flavor, NS)?;
    let opts = userns_image_opts(flavor);
    let containerd_pid = env.containerd.pid();
    let task_dir = env
        .dir()
        .join("state/io.containerd.runtime.v2.task")
        .join(NS);

    // Warm-up: containerd opens some files lazily on its first task of a runtime.
    for _ in 0..2 {
        soak_cycle(&env, &opts, &unique_id("warmup"))?;
    }
    env.assert_no_shim("the warm-up cycles")?;
    let mounts_before = env.our_mount_lines()?;
    let fds_before = count_fds(containerd_pid)?;

    let started = Instant::now();
    let mut failed_on_purpose = 0;
    for i in 1..=SOAK_CYCLES {
        let id = unique_id("soak");
        if i % SOAK_FAIL_EVERY == 0 {
            let out = env.run(&opts, &id, &["/nonexistent"])?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(
                !out.status.success() && stderr.contains("/nonexistent") && stderr.contains(&id),
                "{flavor}: cycle {i}: the missing binary must fail naming it and {id}: {}",
                render(&out)
            );
            failed_on_purpose += 1;
        } else {
            soak_cycle(&env, &opts, &id)
                .with_context(|| format!("{flavor}: cycle {i} of {SOAK_CYCLES}"))?;
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{flavor}: {SOAK_CYCLES} create/start/exec/kill/delete cycles ({failed_on_purpose} failing \
         on purpose) in {elapsed:?}, {:?} per cycle",
        elapsed / SOAK_CYCLES as u32
    );

    let mut failures = Failures::default();
    failures.check("shims", env.assert_no_shim("the soak"));
    failures.check(
        "mounts",
        env.our_mount_lines().and_then(|after| {
            ensure!(
                after == mounts_before,
                "mounts of this containerd changed:\nbefore: {mounts_before:#?}\nafter: {after:#?}"
            );
            Ok(())
        }),
    );
    // containerd closes a shim's connection as it processes its exit, which may trail a little.
    failures.check(
        "containerd's fds",
        wait_for("containerd's fd count to settle", SETTLE, || {
            Ok(count_fds(containerd_pid)? == fds_before)
        })
        .with_context(|| {
            format!(
                "containerd had {fds_before} fds before and {:?} after",
                count_fds(containerd_pid)
            )
        }),
    );
    failures.check(
        "cgroups",
        (|| -> Result<()> {
            let left = container_cgroups_left(NS);
            ensure!(left.is_empty(), "cgroup directories left: {left:?}");
            Ok(())
        })(),
    );
    failures.check(
        "bundles",
        (|| -> Result<()> {
            let left: Vec<PathBuf> = match fs::read_dir(&task_dir) {
                Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e).context(format!("cannot list {}", task_dir.display())),
            };
            ensure!(left.is_empty(), "bundle directories left: {left:?}");
            Ok(())
        })(),
    );
    failures.check(
        "containers and tasks",
        (|| -> Result<()> {
            let containers = env.ctr_ok(&["containers", "ls", "-q"])?;
            ensure!(
                containers.trim().is_empty(),
                "containers left:\n{containers}"
            );
            let tasks = env.tasks()?;
            ensure!(tasks.is_empty(), "tasks left: {tasks:?}");
            Ok(())
        })(),
    );
    failures.finish(flavor)
}

// ---------------------------------------------------------------------------------------------
// 6. Escapes: what the container process can reach of the host and the shim.
// ---------------------------------------------------------------------------------------------

/// The fds `ls -l /proc/self/fd` lists, as (fd, target).
fn listed_fds(listing: &str) -> Result<Vec<(u32, String)>> {
    listing
        .lines()
        .filter(|l| l.contains(" -> "))
        .map(|l| {
            let (left, target) = l
                .split_once(" -> ")
                .ok_or_else(|| anyhow!("no link in {l:?}"))?;
            let fd = left
                .split_whitespace()
                .last()
                .ok_or_else(|| anyhow!("no fd in {l:?}"))?;
            Ok((
                fd.parse().with_context(|| format!("bad fd in {l:?}"))?,
                target.trim().to_owned(),
            ))
        })
        .collect()
}

/// Fails unless the process that listed `listing` had only 0, 1 and 2 open, besides the
/// directory `ls` opened to list them (`/proc/N/fd`).
fn assert_only_stdio(what: &str, listing: &str) -> Result<()> {
    let fds = listed_fds(listing)?;
    let stdio: Vec<u32> = fds.iter().map(|(fd, _)| *fd).filter(|fd| *fd < 3).collect();
    let others: Vec<&(u32, String)> = fds
        .iter()
        .filter(|(fd, target)| {
            *fd >= 3 && !(target.starts_with("/proc/") && target.ends_with("/fd"))
        })
        .collect();
    ensure!(
        stdio == [0, 1, 2] && others.is_empty(),
        "{what}: only 0, 1, 2 (and ls's own directory) may be open, found:\n{listing}"
    );
    Ok(())
}

fn escapes(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let opts = userns_image_opts(flavor);
    let shim = shim_binary()?.canonicalize()?;
    let shim_md = fs::metadata(&shim)?;
    let mut failures = Failures::default();

    // a. The container's main process lists its own fds.
    let id = unique_id("fds");
    failures.check(
        "the main process's fds, listed inside",
        env.run_ok(&opts, &id, &["ls", "-l", "/proc/self/fd"])
            .and_then(|out| assert_only_stdio("the main process", &out)),
    );

    // b. A running container: its init seen from the host and from an exec.
    let id = unique_id("exe");
    let b = (|| -> Result<()> {
        let pid = env.run_detached(&opts, &id, &["sleep", "1000"])?;
        let mut fds: Vec<u32> = fs::read_dir(format!("/proc/{pid}/fd"))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        ensure!(
            fds == [0, 1, 2],
            "host view: the container's init {pid} has fds {fds:?}, only 0 1 2 expected"
        );
        // The init's executable, seen from the host: a file of the container's root (the path
        // the link shows, resolved there, is the same inode) with busybox's size, not the shim.
        let exe = fs::read_link(format!("/proc/{pid}/exe"))?;
        let exe_md = fs::metadata(format!("/proc/{pid}/exe"))?;
        let in_root = fs::metadata(
            Path::new(&format!("/proc/{pid}/root")).join(exe.strip_prefix("/").unwrap_or(&exe)),
        )?;
        let busybox = fs::metadata(format!("/proc/{pid}/root/bin/busybox"))?;
        ensure!(
            exe != shim
                && (exe_md.dev(), exe_md.ino()) != (shim_md.dev(), shim_md.ino())
                && (exe_md.dev(), exe_md.ino()) == (in_root.dev(), in_root.ino())
                && exe_md.len() == busybox.len(),
            "host view: the container's init runs {} ({}:{}, {} bytes), not a busybox of its \
             root ({}:{} there; busybox {} bytes; the shim is {})",
            exe.display(),
            exe_md.dev(),
            exe_md.ino(),
            exe_md.len(),
            in_root.dev(),
            in_root.ino(),
            busybox.len(),
            shim.display()
        );
        // Inside: /proc/1/exe and /proc/self/exe name files of the container's root that are
        // busybox (a symlink, a hard link or a copy, depending on the image and the snapshot),
        // and /proc/1/root is the container's root.
        let inside = exec_lines(
            &env,
            &id,
            "look",
            &[
                "sh",
                "-c",
                "size=$(wc -c < /bin/busybox); \
                 for l in /proc/1/exe /proc/self/exe; do t=$(readlink $l); \
                   if test $l -ef \"$t\" && test \"$(wc -c < $l)\" = \"$size\"; \
                   then echo \"$l busybox\"; else echo \"$l -> $t\"; fi; done; \
                 readlink /proc/1/root; cat /proc/1/root/data/root-file; \
                 test \"$(ls -a /proc/1/root)\" = \"$(ls -a /)\" && echo same-root",
            ],
        )?;
        ensure!(
            inside
                == [
                    "/proc/1/exe busybox",
                    "/proc/self/exe busybox",
                    "/",
                    "owned by root",
                    "same-root"
                ],
            "inside: /proc/1/exe, /proc/self/exe, /proc/1/root and its contents are {inside:?}"
        );
        let fds = env.ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            "fds",
            &id,
            "ls",
            "-l",
            "/proc/self/fd",
        ])?;
        assert_only_stdio("an exec'd process", &fds)?;
        // The environment is the spec's, nothing of the shim's.
        let environ = exec_lines(
            &env,
            &id,
            "environ",
            &["sh", "-c", "tr '\\0' '\\n' < /proc/1/environ"],
        )?;
        let spec: Value =
            serde_json::from_str(&env.ctr_ok(&["containers", "info", "--spec", &id])?)?;
        let wanted: Vec<String> = spec["process"]["env"]
            .as_array()
            .ok_or_else(|| anyhow!("the spec of {id} has no process.env"))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        ensure!(
            environ.iter().collect::<BTreeSet<_>>() == wanted.iter().collect::<BTreeSet<_>>(),
            "the init's environment is {environ:?}, the spec's {wanted:?}"
        );
        // Stdio and the default devices work; the rest of the host's devices are not allowed.
        let devices = exec_lines(
            &env,
            &id,
            "devices",
            &[
                "sh",
                "-c",
                "echo x > /dev/null && head -c 1 /dev/zero | wc -c",
            ],
        )?;
        ensure!(devices == ["1"], "/dev/null and /dev/zero: {devices:?}");
        let list = Path::new("/sys/fs/cgroup/devices")
            .join(NS)
            .join(&id)
            .join("devices.list");
        let rules =
            fs::read_to_string(&list).with_context(|| format!("cannot read {}", list.display()))?;
        ensure!(
            !rules.lines().any(|l| l.starts_with("a ")),
            "{} allows every device:\n{rules}",
            list.display()
        );
        Ok(())
    })();
    failures.check("a running container's init and exec", b);
    failures.check(
        "kill and delete the running container",
        env.kill_and_remove(&id),
    );
    failures.check(
        "nothing left after the running container",
        assert_nothing_left(&env, &id, &[], "the escape checks"),
    );

    // c. A spec whose only device rule is "deny all" (what `ctr oci spec` and CRI send): the
    //    default devices stay usable, as with runc, and nothing else is allowed.
    let id = unique_id("devices");
    let c = (|| -> Result<()> {
        let rootfs = env.dir().join("rootfs-devices");
        unpack_busybox(&rootfs)?;
        let spec = userns_spec(&env, &id, &rootfs, "sleep 1000")?;
        ensure!(
            spec["linux"]["resources"]["devices"] == json!([{ "allow": false, "access": "rwm" }]),
            "`ctr oci spec` device rules are {}",
            spec["linux"]["resources"]["devices"]
        );
        env.start_detached(&id, &spec)?;
        let out = exec_lines(
            &env,
            &id,
            "devices",
            &[
                "sh",
                "-c",
                "echo x > /dev/null && head -c 1 /dev/zero | wc -c",
            ],
        )?;
        ensure!(
            out == ["1"],
            "/dev/null and /dev/zero with \"deny all\": {out:?}"
        );
        let list = Path::new("/sys/fs/cgroup/devices")
            .join(NS)
            .join(&id)
            .join("devices.list");
        let rules =
            fs::read_to_string(&list).with_context(|| format!("cannot read {}", list.display()))?;
        ensure!(
            rules.lines().any(|l| l == "c 1:3 rwm") && !rules.lines().any(|l| l.starts_with("a ")),
            "{}: /dev/null allowed and not every device expected:\n{rules}",
            list.display()
        );
        Ok(())
    })();
    failures.check("default devices with a deny-all spec", c);
    let _ = env.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    let _ = env.wait_task(&id, "STOPPED");
    let _ = env.ctr(&["task", "delete", &id]);
    let _ = env.ctr(&["containers", "rm", &id]);
    failures.check(
        "nothing left after the deny-all container",
        assert_nothing_left(&env, &id, &[], "the default devices check"),
    );

    // d. An image whose /proc or /sys is a symlink: procfs and sysfs are not mounted through it.
    for (dir, link, needles) in [
        (
            "proc",
            "/tmp",
            ["refusing to mount proc on /proc", "symlink"],
        ),
        ("sys", "tmp", ["refusing to mount sysfs on /sys", "symlink"]),
    ] {
        let what = format!("/{dir} a symlink to {link}");
        let id = unique_id("symlinked");
        let rootfs = env.dir().join(format!("rootfs-{dir}-link"));
        let result = (|| -> Result<()> {
            unpack_busybox(&rootfs)?;
            fs::remove_dir(rootfs.join(dir))?;
            symlink(link, rootfs.join(dir))?;
            let tmp_before = tree(&rootfs.join("tmp"), false)?;
            let spec = userns_spec(&env, &id, &rootfs, "echo must-not-run")?;
            let err = expect_fault(&env, &id, &spec, &what, &needles, &[])?;
            eprintln!("{flavor}: {what}: {}", err.trim());
            assert_tree_unchanged("the image's /tmp", &rootfs.join("tmp"), &tmp_before)
        })();
        failures.check(&what, result);
    }
    failures.check("shims", env.assert_no_shim("the escape checks"));
    failures.finish(flavor)
}

#[test]
fn containerd16_container_reaches_only_stdio_and_its_image() -> Result<()> {
    escapes(Flavor::Containerd16)
}

#[test]
fn containerd2_container_reaches_only_stdio_and_its_image() -> Result<()> {
    escapes(Flavor::Containerd2)
}
