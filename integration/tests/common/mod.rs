//! Helpers shared by the end-to-end test targets (`shim.rs`, `volumes.rs`): a private containerd
//! with the busybox image imported ([`Env`]), `ctr` wrappers that run containers from `ctr run`
//! or from a spec (`ctr c create --config` + `ctr t start`), a rootfs unpacked from the image,
//! spec edits, and readers of the results (lines, mountinfo, owners).
//!
//! Each test target compiles this module on its own and uses a part of it, hence the
//! `dead_code` allowance: an item unused by one target is used by another.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::{json, Value};
use usernsrs_integration::{
    mountinfo_lines, mounts_under, pids_of_cmd, pids_of_exe, require_root, shim_binary,
    workspace_root, Containerd, Flavor,
};

pub const RUNTIME: &str = "io.containerd.usernsrs.v2";
pub const SHIM: &str = "containerd-shim-usernsrs-v2";
/// The containerd namespace the tests of `shim.rs` work in. Each test target has its own, so
/// that targets running at the same time never remove each other's `/sys/fs/cgroup/*/NS`.
pub const NS: &str = "shim-test";
/// How long a container may take to reach a state (running, stopped) or a process to go away.
pub const SETTLE: Duration = Duration::from_secs(10);

/// A container id unique across test processes and within this one.
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A private containerd with the busybox image imported into one containerd namespace.
///
/// Field order is drop order: containerd (and its containers) go first, then the namespace's
/// parent cgroups that `ctr run` (cgroupsPath `/<ns>/<id>`) made and nothing removes.
pub struct Env {
    pub containerd: Containerd,
    pub image: String,
    /// The containerd namespace every `ctr` call of this `Env` works in.
    ns: &'static str,
    _cgroups: NamespaceCgroups,
}

impl Env {
    /// A private containerd of `flavor` working in namespace [`NS`].
    pub fn start(flavor: Flavor) -> Result<Self> {
        Self::start_in(flavor, NS)
    }

    /// A private containerd of `flavor` working in containerd namespace `ns`.
    pub fn start_in(flavor: Flavor, ns: &'static str) -> Result<Self> {
        Self::start_with_env(flavor, ns, &[])
    }

    /// Like [`Env::start_in`], with `env` in the environment of containerd and its shims.
    pub fn start_with_env(flavor: Flavor, ns: &'static str, env: &[(&str, &str)]) -> Result<Self> {
        require_root()?;
        let containerd = Containerd::start_with_env(flavor, env)?;
        let image = containerd.import_busybox(ns)?;
        Ok(Env {
            containerd,
            image,
            ns,
            _cgroups: NamespaceCgroups(ns),
        })
    }

    pub fn flavor(&self) -> Flavor {
        self.containerd.flavor()
    }

    pub fn dir(&self) -> &Path {
        self.containerd.dir()
    }

    pub fn fifo_dir(&self) -> String {
        self.dir().join("fifo").to_string_lossy().into_owned()
    }

    /// Writes `spec` as `config-ID.json` in this containerd's directory; its path.
    pub fn write_spec(&self, id: &str, spec: &Value) -> Result<String> {
        let config = self.dir().join(format!("config-{id}.json"));
        fs::write(&config, serde_json::to_vec_pretty(spec)?)
            .with_context(|| format!("cannot write {}", config.display()))?;
        Ok(config.to_string_lossy().into_owned())
    }

    /// `ctr c create --config` + `ctr t start -d`: the container's host pid once it runs.
    pub fn start_detached(&self, id: &str, spec: &Value) -> Result<i32> {
        let config = self.write_spec(id, spec)?;
        self.ctr_ok(&[
            "containers",
            "create",
            "--runtime",
            RUNTIME,
            "--config",
            &config,
            id,
        ])?;
        let fifo = self.fifo_dir();
        self.ctr_ok(&["task", "start", "-d", "--fifo-dir", &fifo, id])?;
        self.wait_task(id, "RUNNING")
    }

    /// A ttrpc client of the shim serving container `id`, at the address in its bundle.
    pub fn shim_client(&self, id: &str) -> Result<containerd_shim_protos::shim_sync::TaskClient> {
        let file = self.bundle(id).join("address");
        let address = fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .trim()
            .to_owned();
        let client =
            containerd_shim_protos::shim_sync::Client::connect(&address).with_context(|| {
                format!(
                    "cannot connect to the shim at {address} (from {})",
                    file.display()
                )
            })?;
        Ok(containerd_shim_protos::shim_sync::TaskClient::new(client))
    }

    /// What containerd sends with each call: a 30 s deadline and this env's namespace.
    pub fn rpc_context(&self) -> containerd_shim_protos::ttrpc::context::Context {
        let mut ctx = containerd_shim_protos::ttrpc::context::with_timeout(30 * 1_000_000_000);
        ctx.add("containerd-namespace".to_owned(), self.ns.to_owned());
        ctx
    }

    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir()
            .join("state/io.containerd.runtime.v2.task")
            .join(self.ns)
            .join(id)
    }

    /// `ctr -n <ns> ARGS`, whatever its exit status.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        self.containerd
            .ctr(["-n", self.ns].into_iter().chain(args.iter().copied()))
    }

    /// `ctr -n <ns> ARGS`, which must succeed; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        self.containerd
            .ctr_ok(["-n", self.ns].into_iter().chain(args.iter().copied()))
    }

    /// The arguments of `ctr run` up to the image: `--runtime`, `--fifo-dir`, then `opts`.
    pub fn run_args<'a>(&'a self, fifo: &'a str, opts: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run", "--runtime", RUNTIME, "--fifo-dir", fifo];
        args.extend_from_slice(opts);
        args
    }

    /// `ctr run --rm [opts] IMAGE ID CMD...`, whatever its exit status.
    pub fn run(&self, opts: &[&str], id: &str, cmd: &[&str]) -> Result<Output> {
        let fifo = self.fifo_dir();
        let mut args = self.run_args(&fifo, &["--rm"]);
        args.extend_from_slice(opts);
        args.push(&self.image);
        args.push(id);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// Like [`Env::run`], but the container must exit 0; its stdout.
    pub fn run_ok(&self, opts: &[&str], id: &str, cmd: &[&str]) -> Result<String> {
        let out = self.run(opts, id, cmd)?;
        ensure!(
            out.status.success(),
            "{}: ctr run {opts:?} {id} {cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            self.flavor(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ctr run -d [opts] IMAGE ID CMD...`; returns the container's host pid once it runs.
    pub fn run_detached(&self, opts: &[&str], id: &str, cmd: &[&str]) -> Result<i32> {
        let fifo = self.fifo_dir();
        let mut args = self.run_args(&fifo, &["-d"]);
        args.extend_from_slice(opts);
        args.push(&self.image);
        args.push(id);
        args.extend_from_slice(cmd);
        self.ctr_ok(&args)?;
        self.wait_task(id, "RUNNING")
    }

    /// `ctr run` in the foreground without waiting for it: a child process of this test.
    pub fn spawn_run(&self, id: &str, cmd: &[&str]) -> Result<std::process::Child> {
        let fifo = self.fifo_dir();
        let mut args = self.run_args(&fifo, &["--rm"]);
        args.push(&self.image);
        args.push(id);
        args.extend_from_slice(cmd);
        // The script execs the flavor's ctr with --address: the child is ctr itself, so its
        // exit status is ctr's, not a wrapper's.
        Command::new(workspace_root().join("hack/private-containerd.sh"))
            .arg("ctr")
            .arg(self.dir())
            .args(["-n", self.ns])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot spawn ctr run through hack/private-containerd.sh ctr")
    }

    /// The tasks `ctr task ls` lists: id, pid, status.
    pub fn tasks(&self) -> Result<Vec<(String, i32, String)>> {
        let out = self.ctr_ok(&["task", "ls"])?;
        out.lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.as_slice() {
                    [id, pid, status] => Ok((
                        id.to_string(),
                        pid.parse().with_context(|| format!("bad pid in {l:?}"))?,
                        status.to_string(),
                    )),
                    _ => bail!("unexpected `ctr task ls` line {l:?}"),
                }
            })
            .collect()
    }

    /// Waits until task `id` has `status`; returns its pid.
    pub fn wait_task(&self, id: &str, status: &str) -> Result<i32> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let tasks = self.tasks()?;
            if let Some((_, pid, _)) = tasks.iter().find(|(t, _, s)| t == id && s == status) {
                return Ok(*pid);
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: task {id} did not reach {status} within {SETTLE:?}: {tasks:?}",
                    self.flavor()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills a running task with SIGKILL, deletes it and its container.
    pub fn kill_and_remove(&self, id: &str) -> Result<()> {
        self.ctr_ok(&["task", "kill", "-s", "SIGKILL", id])?;
        self.wait_task(id, "STOPPED")?;
        self.ctr_ok(&["task", "delete", id])?;
        self.ctr_ok(&["containers", "rm", id])?;
        Ok(())
    }

    /// `ctr containers create --runtime R --config FILE ID` then `ctr task start --fifo-dir D
    /// ID`: the output of `task start` (which attaches stdio and deletes the task at exit).
    /// The container is removed afterwards whatever happened.
    pub fn create_and_start(&self, id: &str, spec: &Value) -> Result<CreateStart> {
        let config = self.dir().join(format!("config-{id}.json"));
        fs::write(&config, serde_json::to_vec_pretty(spec)?)
            .with_context(|| format!("cannot write {}", config.display()))?;
        let config_arg = config.to_string_lossy().into_owned();
        let create = self.ctr(&[
            "containers",
            "create",
            "--runtime",
            RUNTIME,
            "--config",
            &config_arg,
            id,
        ])?;
        ensure!(
            create.status.success(),
            "{}: ctr containers create --config {config_arg} {id} failed: {}\n{}",
            self.flavor(),
            create.status,
            String::from_utf8_lossy(&create.stderr)
        );
        let fifo = self.fifo_dir();
        let start = self.ctr(&["task", "start", "--fifo-dir", &fifo, id]);
        // A task that failed to be created leaves nothing to delete; one that ran was deleted
        // by `task start`. Either way the container record goes.
        let _ = self.ctr(&["task", "delete", id]);
        let rm = self.ctr(&["containers", "rm", id])?;
        ensure!(
            rm.status.success(),
            "{}: ctr containers rm {id} failed: {}\n{}",
            self.flavor(),
            rm.status,
            String::from_utf8_lossy(&rm.stderr)
        );
        let start = start?;
        Ok(CreateStart {
            status: start.status,
            stdout: String::from_utf8_lossy(&start.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&start.stderr).into_owned(),
        })
    }

    /// An OCI spec from this flavor's `ctr oci spec`, set up to run `script` with `sh -c` from
    /// the rootfs at `root`, without a terminal or seccomp, in cgroup `/<ns>/ID`.
    pub fn base_spec(&self, id: &str, root: &Path, script: &str) -> Result<Value> {
        let text = self.ctr_ok(&["oci", "spec"])?;
        let mut spec: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: `ctr oci spec` is not JSON:\n{text}", self.flavor()))?;
        spec["root"] = json!({ "path": root.to_string_lossy() });
        spec["process"]["args"] = json!(["/bin/sh", "-c", script]);
        spec["process"]["terminal"] = json!(false);
        let linux = spec["linux"]
            .as_object_mut()
            .ok_or_else(|| anyhow!("`ctr oci spec` has no linux object"))?;
        // The shim refuses seccomp for now rather than run without the requested filter.
        linux.remove("seccomp");
        linux.insert("cgroupsPath".into(), json!(format!("/{}/{id}", self.ns)));
        Ok(spec)
    }

    /// Processes of this containerd's usernsrs shims: started with its address, or (helpers,
    /// a shim that lost its arguments) running in one of its bundles. A shim is recognised by
    /// its command line or by its executable: the server re-executes `current_exe()`, which
    /// names the binary's real path, e.g. `$USERNSRS_SHIM` whatever its file name, not the
    /// `containerd-shim-usernsrs-v2` link containerd started; helpers run from a sealed view of
    /// the binary with `containerd-shim-usernsrs-v2` as their `argv[0]`.
    pub fn shim_pids(&self) -> Result<Vec<i32>> {
        let address = self.containerd.address().to_string_lossy().into_owned();
        let state = self.dir().join("state");
        let mut candidates = pids_of_cmd(SHIM)?;
        candidates.extend(pids_of_exe(&shim_binary()?)?);
        candidates.sort_unstable();
        candidates.dedup();
        Ok(candidates
            .into_iter()
            .filter(|pid| {
                let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
                    .unwrap_or_default();
                let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
                cmdline.contains(&address) || cwd.starts_with(&state)
            })
            .collect())
    }

    /// Waits (up to [`SETTLE`]) until no shim of this containerd runs.
    pub fn assert_no_shim(&self, after: &str) -> Result<()> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let pids = self.shim_pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let cmds: Vec<String> = pids
                    .iter()
                    .map(|p| {
                        let raw = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                        format!("{p}: {}", String::from_utf8_lossy(&raw).replace('\0', " "))
                    })
                    .collect();
                bail!(
                    "{}: after {after}, shims of this containerd still run {SETTLE:?} later:\n{}",
                    self.flavor(),
                    cmds.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Host mountinfo lines that mention this containerd's directory anywhere: mount point,
    /// root (an idmapped clone of a snapshot attached elsewhere) or options (an overlay's dirs).
    pub fn our_mount_lines(&self) -> Result<BTreeSet<String>> {
        let dir = self.dir().to_string_lossy().into_owned();
        Ok(mountinfo_lines()?
            .into_iter()
            .filter(|l| l.contains(&dir))
            .collect())
    }
}

/// Removes the empty `/sys/fs/cgroup/*/NS` directories left by containers of namespace NS
/// (containerd makes cgroupsPath `/NS/ID`; the shim removes `ID`, as runc does, not the
/// namespace's parent).
pub struct NamespaceCgroups(&'static str);

impl Drop for NamespaceCgroups {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        // Also the parents of the cgroups the shim gives containers without cgroupsPath:
        // /usernsrs/NS and /usernsrs.
        let mut dirs = Vec::new();
        for hierarchy in std::iter::once(PathBuf::from("/sys/fs/cgroup"))
            .chain(entries.flatten().map(|e| e.path()))
        {
            dirs.push(hierarchy.join(self.0));
            dirs.push(hierarchy.join("usernsrs").join(self.0));
            dirs.push(hierarchy.join("usernsrs"));
        }
        for dir in dirs {
            // rmdir only: a cgroup directory is removable exactly when it has no children.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The result of [`Env::create_and_start`].
pub struct CreateStart {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Non-empty lines with their whitespace runs collapsed (`uid_map` pads with spaces).
pub fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// One `/proc/PID/mountinfo` line, split into the fields the tests read.
pub struct MountLine {
    pub root: String,
    pub mount_point: String,
    pub mount_options: String,
    pub fs_type: String,
    pub super_options: String,
}

impl MountLine {
    pub fn parse(line: &str) -> Result<Self> {
        let (left, right) = line
            .split_once(" - ")
            .ok_or_else(|| anyhow!("mountinfo line without separator: {line:?}"))?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let field = |v: &[&str], i: usize| -> Result<String> {
            v.get(i)
                .map(|s| s.to_string())
                .ok_or_else(|| anyhow!("mountinfo line too short: {line:?}"))
        };
        Ok(MountLine {
            root: field(&left, 3)?,
            mount_point: field(&left, 4)?,
            mount_options: field(&left, 5)?,
            fs_type: field(&right, 0)?,
            super_options: field(&right, 2)?,
        })
    }

    /// The value of `key=` among the superblock options (e.g. an overlay's `lowerdir`).
    pub fn super_option(&self, key: &str) -> Option<&str> {
        self.super_options
            .split(',')
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }

    pub fn idmapped(&self) -> bool {
        self.mount_options.split(',').any(|o| o == "idmapped")
    }
}

/// The line of `mountinfo` text whose mount point is `mount_point` (the last, i.e. the top one).
pub fn mount_at(mountinfo: &str, mount_point: &str) -> Result<MountLine> {
    let mut found = None;
    for line in mountinfo.lines() {
        let m = MountLine::parse(line)?;
        if m.mount_point == mount_point {
            found = Some(m);
        }
    }
    found.ok_or_else(|| anyhow!("no mount at {mount_point} in:\n{mountinfo}"))
}

pub fn owner(path: &Path) -> Result<(u32, u32)> {
    let md =
        fs::symlink_metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    Ok((md.uid(), md.gid()))
}

pub fn run_tool(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Unpacks the busybox test image's layers, in order, into a new directory `dest` (0755, owned
/// by host root, numeric owners preserved): the image as `ctr c create --config` users have it.
pub fn unpack_busybox(dest: &Path) -> Result<()> {
    let out = Command::new(workspace_root().join("hack/build-images.sh"))
        .output()
        .context("cannot run hack/build-images.sh")?;
    ensure!(
        out.status.success(),
        "hack/build-images.sh failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let archive = PathBuf::from(
        stdout
            .lines()
            .last()
            .ok_or_else(|| anyhow!("hack/build-images.sh printed no archive path"))?,
    );
    let layout = tempfile::tempdir().context("cannot create a directory for the OCI layout")?;
    run_tool(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(layout.path()),
    )?;
    let blob = |digest: &str| -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| anyhow!("unexpected digest {digest}"))?;
        Ok(layout.path().join("blobs/sha256").join(hex))
    };
    let read_json = |path: &Path| -> Result<Value> {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
    };
    let index = read_json(&layout.path().join("index.json"))?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .ok_or_else(|| anyhow!("index.json of {} has no manifest", archive.display()))?;
    let manifest = read_json(&blob(manifest_digest)?)?;
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| anyhow!("manifest {manifest_digest} has no layers"))?;
    ensure!(
        !layers.is_empty(),
        "manifest {manifest_digest} has no layers"
    );

    fs::create_dir(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", dest.display()))?;
    for layer in layers {
        let digest = layer["digest"]
            .as_str()
            .ok_or_else(|| anyhow!("a layer of {manifest_digest} has no digest"))?;
        run_tool(
            Command::new("tar")
                .args(["--numeric-owner", "--same-owner", "-xzf"])
                .arg(blob(digest)?)
                .arg("-C")
                .arg(dest),
        )?;
    }
    ensure!(
        owner(&dest.join("data/root-file"))? == (0, 0)
            && owner(&dest.join("data/app-file"))? == (1000, 1000),
        "unpacked busybox in {} lacks /data/root-file 0:0 and /data/app-file 1000:1000",
        dest.display()
    );
    Ok(())
}

/// Sets `linux.uidMappings`/`gidMappings` to one range `0 host size`.
pub fn set_mapping(spec: &mut Value, host: u32, size: u32) {
    let range = json!([{ "containerID": 0, "hostID": host, "size": size }]);
    spec["linux"]["uidMappings"] = range.clone();
    spec["linux"]["gidMappings"] = range;
}

/// Adds `{"type": "user"}` to `linux.namespaces`.
pub fn add_user_namespace(spec: &mut Value) -> Result<()> {
    spec["linux"]["namespaces"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("spec has no linux.namespaces array"))?
        .push(json!({ "type": "user" }));
    Ok(())
}

/// Creates and starts a root.path container, requires that it succeeded, and returns its
/// output as `expected` normalised lines.
pub fn run_lines(
    env: &Env,
    id: &str,
    spec: &Value,
    what: &str,
    expected: usize,
) -> Result<Vec<String>> {
    let flavor = env.flavor();
    let run = env.create_and_start(id, spec)?;
    ensure!(
        run.status.success(),
        "{flavor}: {what} container failed: {}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let out = lines(&run.stdout);
    ensure!(
        out.len() == expected,
        "{flavor}: {what}: expected {expected} lines, got:\n{}",
        run.stdout
    );
    Ok(out)
}

/// A filesystem this test mounted on the host, unmounted when dropped unless something else
/// (the private containerd's `stop`, which unmounts everything under its directory) already did.
pub struct HostMount {
    target: PathBuf,
}

impl HostMount {
    /// Mounts a new `fstype` (with mount data `data`) on directory `target`, creating it.
    pub fn new(fstype: &str, target: &Path, data: &str) -> Result<Self> {
        fs::create_dir_all(target)
            .with_context(|| format!("cannot create {}", target.display()))?;
        let target = target
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", target.display()))?;
        mount(
            Some(fstype),
            &target,
            Some(fstype),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data),
        )
        .with_context(|| format!("cannot mount a {fstype} on {}", target.display()))?;
        Ok(HostMount { target })
    }

    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let mounted = mounts_under(&self.target).map_or(true, |m| m.contains(&self.target));
        if !mounted {
            return;
        }
        if umount2(&self.target, MntFlags::empty()).is_ok() {
            return;
        }
        // Busy (a container of a failed test still holds it): detach it, so that the
        // containerd directory around it can still be removed.
        if let Err(e) = umount2(&self.target, MntFlags::MNT_DETACH) {
            eprintln!("!!! cannot unmount {}: {e}", self.target.display());
        }
    }
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("cannot read /proc/sys/kernel/osrelease")?
        .trim()
        .to_owned())
}

/// Whether the running kernel is `major.minor` or newer.
pub fn kernel_at_least(major: u32, minor: u32) -> Result<bool> {
    let release = kernel_release()?;
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    Ok(have >= (major, minor))
}

/// The marker the VM test bed (hack/vm) looks for in a failed test's output to report it as
/// not applicable on that kernel rather than as a failure. Anywhere else it is a failure.
pub const NOT_APPLICABLE: &str = "usernsrs-not-applicable:";

/// Fails, saying the test is not applicable, unless the kernel is at least `major.minor`, which
/// `feature` needs. Never a pass: a test that cannot run here must not look like one that did.
pub fn require_kernel(major: u32, minor: u32, feature: &str) -> Result<()> {
    let release = kernel_release()?;
    if !kernel_at_least(major, minor)? {
        println!("{NOT_APPLICABLE} {feature} needs Linux {major}.{minor}+, this is {release}");
        bail!("{feature} needs Linux {major}.{minor}+; this kernel is {release}");
    }
    Ok(())
}
