//! Harness for the privileged end-to-end tests: private containerd instances (1.6 and 2.x) in
//! throwaway directories, the busybox test image, and small readers of host state (`/proc`).
//!
//! Invariants:
//! - Everything a [`Containerd`] creates lives under its own temporary directory, started and
//!   stopped by `hack/private-containerd.sh`; no system-wide containerd is used or touched.
//! - A directory is only removed once `stop` left no mount below it: removing a tree through a
//!   mount point would delete the mounted files (a container rootfs, a bind-mounted host dir).
//! - Nothing here skips: a missing prerequisite (root, the shim binary, the peers) is an error
//!   that names the way out, so a test that cannot run fails loudly.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// The image `hack/build-images.sh` builds and [`Containerd::import_busybox`] imports.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:usernsrs";

/// The longest a single `ctr` invocation may take before it is killed and reported as hung.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(120);

/// The containerd versions the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Debian's containerd 1.6 (`/usr/bin/containerd`): task API v2, bare-address `start`.
    Containerd16,
    /// containerd v2.4.2 built by `hack/install-peers.sh`: task API v3, `BootstrapParams`.
    Containerd2,
}

impl Flavor {
    /// Every flavor, for tests that must pass against each.
    pub fn all() -> [Flavor; 2] {
        [Flavor::Containerd16, Flavor::Containerd2]
    }

    /// The FLAVOR argument of `hack/private-containerd.sh start`.
    fn script_arg(self) -> &'static str {
        match self {
            Flavor::Containerd16 => "1.6",
            Flavor::Containerd2 => "2",
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::Containerd16 => "containerd 1.6",
            Flavor::Containerd2 => "containerd 2.4",
        })
    }
}

/// Fails, with the reason, unless the effective uid is 0: the tests mount, create user
/// namespaces and run containerd, none of which works unprivileged.
pub fn require_root() -> Result<()> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        bail!(
            "the integration tests need root (euid is {euid}): they run containerd, mount and \
             create user namespaces; run them as root, e.g. `sudo -E cargo test -p usernsrs-integration`"
        );
    }
    Ok(())
}

/// The workspace root: the parent of this crate's directory. Taken from the environment cargo
/// sets when it runs a test (the checkout being tested) before the path compiled in: a target
/// directory shared between checkouts (CI's cache) can hold a test binary compiled in another
/// checkout, one that may be gone.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let manifest_dir = manifest_dir.as_path();
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// The shim under test: `$USERNSRS_SHIM` if set, else the release build, else the debug build.
pub fn shim_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("USERNSRS_SHIM") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("USERNSRS_SHIM={} is not a file", path.display());
        }
        return Ok(path);
    }
    let target = workspace_root().join("target");
    let [release, debug] = ["release", "debug"]
        .map(|profile| target.join(profile).join("containerd-shim-usernsrs-v2"));
    for candidate in [&release, &debug] {
        if candidate.is_file() {
            return Ok(candidate.clone());
        }
    }
    bail!(
        "the shim binary is missing: neither {} nor {} exists; run `make build` first, \
         or set USERNSRS_SHIM",
        release.display(),
        debug.display()
    )
}

/// A private containerd of one [`Flavor`] in a fresh temporary directory.
///
/// Dropping it stops containerd, its shims and containers, unmounts what they left under the
/// directory and removes the directory, unless a mount remains (then it is kept and reported).
pub struct Containerd {
    flavor: Flavor,
    /// `None` only while dropping.
    tempdir: Option<tempfile::TempDir>,
    /// The canonical path of the directory, as mountinfo and the script see it.
    dir: PathBuf,
    address: PathBuf,
    ctr: PathBuf,
    pid: i32,
}

impl Containerd {
    /// Starts a containerd that can run `io.containerd.usernsrs.v2` (the shim from
    /// [`shim_binary`] is linked first on its PATH) as well as the default runc runtime.
    pub fn start(flavor: Flavor) -> Result<Self> {
        let shim = shim_binary()?;
        Self::start_with(flavor, Some(&shim), &[])
    }

    /// Like [`Containerd::start`], with `env` added to containerd's environment, which its
    /// shims inherit (e.g. the shim's `USERNSRS_EXE_SEAL`).
    pub fn start_with_env(flavor: Flavor, env: &[(&str, &str)]) -> Result<Self> {
        let shim = shim_binary()?;
        Self::start_with(flavor, Some(&shim), env)
    }

    /// Starts a containerd that knows only the runc runtime: for testing the harness itself
    /// and for peer measurements, where the usernsrs shim need not be built.
    pub fn start_runc_only(flavor: Flavor) -> Result<Self> {
        Self::start_with(flavor, None, &[])
    }

    fn start_with(flavor: Flavor, shim: Option<&Path>, env: &[(&str, &str)]) -> Result<Self> {
        require_root()?;
        // Short (the shim socket dir must fit in 42 bytes) and traversable (0711, like
        // /var/lib/containerd): a container whose root is a mapped uid must reach its rootfs.
        let tempdir = tempfile::Builder::new()
            .prefix("usernsrs-")
            .tempdir_in("/tmp")
            .context("cannot create a directory for containerd in /tmp")?;
        fs::set_permissions(tempdir.path(), fs::Permissions::from_mode(0o711))
            .with_context(|| format!("cannot chmod {}", tempdir.path().display()))?;
        let dir = tempdir
            .path()
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", tempdir.path().display()))?;

        // From here on, dropping `containerd` stops whatever the script got to start.
        let mut containerd = Containerd {
            flavor,
            tempdir: Some(tempdir),
            dir,
            address: PathBuf::new(),
            ctr: PathBuf::new(),
            pid: 0,
        };
        let mut cmd = Command::new(script("private-containerd.sh"));
        cmd.arg("start")
            .arg(&containerd.dir)
            .arg(flavor.script_arg())
            .envs(env.iter().copied());
        match shim {
            Some(shim) => cmd.env("USERNSRS_SHIM", shim),
            None => cmd.env_remove("USERNSRS_SHIM"),
        };
        let output = cmd
            .output()
            .context("cannot run hack/private-containerd.sh")?;
        if !output.status.success() {
            bail!(
                "hack/private-containerd.sh start {} {} failed ({}):\n{}",
                containerd.dir.display(),
                flavor.script_arg(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let value = |key: &str| -> Result<&str> {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .ok_or_else(|| {
                    anyhow!("hack/private-containerd.sh start printed no {key}:\n{stdout}")
                })
        };
        let pid = value("CONTAINERD_PID")?;
        containerd.pid = pid
            .parse()
            .with_context(|| format!("bad CONTAINERD_PID {pid:?}"))?;
        containerd.address = PathBuf::from(value("CONTAINERD_ADDRESS")?);
        containerd.ctr = PathBuf::from(value("CTR")?);
        Ok(containerd)
    }

    /// Which containerd this is.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The instance's directory (canonical): config, root, state, log, bin/.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The gRPC socket, for `ctr --address` and clients.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The ctr binary of this containerd's flavor.
    pub fn ctr_binary(&self) -> &Path {
        &self.ctr
    }

    /// The containerd process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Runs the flavor's `ctr` with `--address` set, killing it after [`CTR_TIMEOUT`].
    /// Pass `--fifo-dir <dir>/fifo` (and `--runc-root <dir>/runc` for runc) to `ctr run` to keep
    /// its FIFOs and runc state out of `/run/containerd`.
    pub fn ctr<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self.run_ctr(&args)
    }

    /// Like [`Containerd::ctr`], but fails unless ctr exits 0; returns its stdout.
    pub fn ctr_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let output = self.run_ctr(&args)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            let timed_out = if output.status.code() == Some(124) {
                format!(" (timed out after {} s)", CTR_TIMEOUT.as_secs())
            } else {
                String::new()
            };
            bail!(
                "ctr {} failed on {}: {}{timed_out}\nstdout:\n{stdout}\nstderr:\n{}",
                render_args(&args),
                self.flavor,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(stdout)
    }

    fn run_ctr(&self, args: &[OsString]) -> Result<Output> {
        // timeout(1) rather than a wait loop here: it also covers ctr's children.
        Command::new("timeout")
            .arg("--kill-after=5")
            .arg(CTR_TIMEOUT.as_secs().to_string())
            .arg(&self.ctr)
            .arg("--address")
            .arg(&self.address)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {} {}", self.ctr.display(), render_args(args)))
    }

    /// Imports [`BUSYBOX_IMAGE`] into `namespace` (building the archive once per process with
    /// `hack/build-images.sh`) and returns the image name.
    pub fn import_busybox(&self, namespace: &str) -> Result<String> {
        static ARCHIVE: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
        let archive = ARCHIVE
            .get_or_init(|| build_busybox_archive().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("{e}"))?;
        self.ctr_ok([
            OsStr::new("-n"),
            OsStr::new(namespace),
            OsStr::new("images"),
            OsStr::new("import"),
            archive.as_os_str(),
        ])?;
        let images = self.ctr_ok(["-n", namespace, "images", "ls", "-q"])?;
        if !images.lines().any(|name| name == BUSYBOX_IMAGE) {
            bail!(
                "after importing {} into namespace {namespace} on {}, ctr lists only:\n{images}",
                archive.display(),
                self.flavor
            );
        }
        Ok(BUSYBOX_IMAGE.to_owned())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(tempdir) = self.tempdir.take() {
            stop_and_remove("private-containerd.sh", &self.dir, tempdir);
        }
    }
}

/// Runs `hack/SCRIPT stop DIR`, then removes DIR only if nothing is mounted below it any more
/// (otherwise it is kept, and what is still mounted said): never a removal through a mount.
fn stop_and_remove(name: &str, dir: &Path, tempdir: tempfile::TempDir) {
    match Command::new("bash")
        .arg(script(name))
        .arg("stop")
        .arg(dir)
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "!!! hack/{name} stop {} failed ({}):\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("!!! cannot run hack/{name} stop {}: {e}", dir.display()),
    }
    match mounts_under(dir) {
        Ok(mounts) if mounts.is_empty() => {
            if let Err(e) = tempdir.close() {
                eprintln!("!!! cannot remove {}: {e}", dir.display());
            }
        }
        Ok(mounts) => {
            let kept = tempdir.keep();
            eprintln!(
                "!!! LEFT {} IN PLACE: still mounted below it: {}. Unmount these, then remove it.",
                kept.display(),
                mounts
                    .iter()
                    .map(|m| m.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Err(e) => {
            let kept = tempdir.keep();
            eprintln!(
                "!!! LEFT {} IN PLACE: cannot check its mounts: {e:#}",
                kept.display()
            );
        }
    }
}

fn script(name: &str) -> PathBuf {
    workspace_root().join("hack").join(name)
}

fn render_args(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn build_busybox_archive() -> Result<PathBuf> {
    let output = Command::new(script("build-images.sh"))
        .output()
        .context("cannot run hack/build-images.sh")?;
    if !output.status.success() {
        bail!(
            "hack/build-images.sh failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout
        .lines()
        .last()
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    path.ok_or_else(|| anyhow!("hack/build-images.sh printed no archive path:\n{stdout}"))
}

/// The lines of `/proc/self/mountinfo`.
pub fn mountinfo_lines() -> Result<Vec<String>> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// Mount points at or below `path` (which is canonicalized first), in mountinfo order.
pub fn mounts_under(path: &Path) -> Result<Vec<PathBuf>> {
    let root = path
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    Ok(mountinfo_lines()?
        .iter()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(usernsrs_runtime_core::mountinfo::unescape(field)))
        .filter(|mount_point| mount_point.starts_with(&root))
        .collect())
}

/// The real uid and real gid of `pid` as the host sees them (`Uid:`/`Gid:` of /proc/PID/status).
pub fn proc_status_uid(pid: i32) -> Result<(u32, u32)> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let real = |key: &str| -> Result<u32> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .ok_or_else(|| anyhow!("{path} has no {key} line"))?;
        let first = line
            .split_whitespace()
            .next()
            .ok_or_else(|| anyhow!("{path}: empty {key} line"))?;
        first
            .parse()
            .with_context(|| format!("{path}: bad {key} {first:?}"))
    };
    Ok((real("Uid:")?, real("Gid:")?))
}

/// How many file descriptors `pid` has open.
pub fn count_fds(pid: i32) -> Result<usize> {
    let path = format!("/proc/{pid}/fd");
    Ok(fs::read_dir(&path)
        .with_context(|| format!("cannot list {path}"))?
        .count())
}

/// Processes (other than this one) whose command line, arguments joined by spaces, contains
/// `substr`; sorted. Zombies have an empty command line and never match.
pub fn pids_of_cmd(substr: &str) -> Result<Vec<i32>> {
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").context("cannot list /proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if u32::try_from(pid).is_ok_and(|p| p == me) {
            continue;
        }
        // The process may be gone by now: that is not an error, it just does not match.
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(substr) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Processes (other than this one) running the executable `path` (compared canonically, as
/// `/proc/PID/exe` shows it; a binary replaced on disk since still matches); sorted. Catches
/// processes whose command line does not name the binary, e.g. a shim that re-executed itself
/// through `current_exe()` when it was installed under another name.
pub fn pids_of_exe(path: &Path) -> Result<Vec<i32>> {
    let wanted = path
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").context("cannot list /proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if u32::try_from(pid).is_ok_and(|p| p == me) {
            continue;
        }
        // Gone by now, or a kernel thread (no exe): not a match.
        let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) else {
            continue;
        };
        let exe = exe.to_string_lossy();
        if Path::new(exe.strip_suffix(" (deleted)").unwrap_or(&exe)) == wanted {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The runtime CRI gives the pods of a [`KubeletNode`]: a standalone kubelet sends every pod
/// with the default runtime handler, so the runtime under test must be CRI's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRuntime {
    /// The `usernsrs` handler: this shim.
    Usernsrs,
    /// containerd-shim-runc-v2 with runc v1.5.3 from the cache: the reference.
    Runc,
}

impl NodeRuntime {
    fn script_arg(self) -> &'static str {
        match self {
            NodeRuntime::Usernsrs => "usernsrs",
            NodeRuntime::Runc => "runc",
        }
    }
}

impl fmt::Display for NodeRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeRuntime::Usernsrs => "usernsrs",
            NodeRuntime::Runc => "runc v1.5.3",
        })
    }
}

/// The node name `hack/private-kubelet.sh` gives its kubelet: a static pod `NAME` is reported
/// as `NAME-usernsrs-node`.
pub const KUBELET_NODE_NAME: &str = "usernsrs-node";

/// A standalone kubelet (static pods from a manifest directory, no API server) over a private
/// containerd 2.x with CRI, both started by `hack/private-kubelet.sh` in a fresh directory under
/// /tmp; the containerd line is `$CONTAINERD2_VERSION`'s.
///
/// Dropping it removes the manifests, lets the kubelet stop the pods, stops the kubelet and
/// containerd, and removes the directory unless a mount remains below it (then it is kept and
/// reported).
pub struct KubeletNode {
    runtime: NodeRuntime,
    /// `None` only while dropping.
    tempdir: Option<tempfile::TempDir>,
    dir: PathBuf,
}

impl KubeletNode {
    /// Starts containerd and a kubelet whose pods run on `runtime`.
    pub fn start(runtime: NodeRuntime) -> Result<Self> {
        require_root()?;
        let shim = shim_binary()?;
        // Traversable (0711): a container whose root is a mapped uid reaches its rootfs.
        let tempdir = tempfile::Builder::new()
            .prefix("usernsrs-kubelet-")
            .tempdir_in("/tmp")
            .context("cannot create a directory for the kubelet in /tmp")?;
        fs::set_permissions(tempdir.path(), fs::Permissions::from_mode(0o711))
            .with_context(|| format!("cannot chmod {}", tempdir.path().display()))?;
        let dir = tempdir
            .path()
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", tempdir.path().display()))?;
        let node = KubeletNode {
            runtime,
            tempdir: Some(tempdir),
            dir,
        };
        let output = Command::new("bash")
            .arg(script("private-kubelet.sh"))
            .arg("start")
            .arg(&node.dir)
            .arg(runtime.script_arg())
            .env("USERNSRS_SHIM", &shim)
            .output()
            .context("cannot run hack/private-kubelet.sh")?;
        if !output.status.success() {
            bail!(
                "hack/private-kubelet.sh start {} {} failed ({}):\n{}",
                node.dir.display(),
                runtime.script_arg(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(node)
    }

    /// The runtime its pods run on.
    pub fn runtime(&self) -> NodeRuntime {
        self.runtime
    }

    /// The node's directory (canonical): containerd's files, `netns`, and `kubelet/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kubelet's `--root-dir`: `pods/<uid>/volumes`, `pods/<uid>/userns`.
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet/root")
    }

    fn manifests(&self) -> PathBuf {
        self.dir.join("kubelet/manifests")
    }

    /// Writes the static pod manifest `name` (a Pod as JSON). Written beside the directory and
    /// renamed in, so that the kubelet never reads half a file.
    pub fn put_manifest(&self, name: &str, pod: &serde_json::Value) -> Result<()> {
        let staged = self.dir.join(format!("kubelet/{name}.json.new"));
        fs::write(&staged, serde_json::to_vec_pretty(pod)?)
            .with_context(|| format!("cannot write {}", staged.display()))?;
        let path = self.manifests().join(format!("{name}.json"));
        fs::rename(&staged, &path)
            .with_context(|| format!("cannot move the manifest to {}", path.display()))
    }

    /// Removes the static pod manifest `name`: the kubelet stops and removes the pod.
    pub fn remove_manifest(&self, name: &str) -> Result<()> {
        let path = self.manifests().join(format!("{name}.json"));
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))
    }

    /// The kubelet's `/pods`: the pods it runs, the static ones with their status.
    pub fn pods(&self) -> Result<serde_json::Value> {
        let output = self.script_output(&["pods"])?;
        serde_json::from_slice(&output)
            .with_context(|| format!("the kubelet's /pods is not JSON on {}", self.runtime))
    }

    /// The static pod `name` as the kubelet's `/pods` has it, if it has it.
    pub fn pod(&self, name: &str) -> Result<Option<serde_json::Value>> {
        let full = format!("{name}-{KUBELET_NODE_NAME}");
        let pods = self.pods()?;
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        Ok(items
            .into_iter()
            .find(|pod| pod["metadata"]["name"] == full.as_str()))
    }

    /// Polls the kubelet's `/pods` until the pod `name` satisfies `ready`, for at most
    /// `timeout`; fails with `what`, the last status seen and the kubelet's log tail.
    pub fn wait_pod(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = std::time::Instant::now() + timeout;
        let mut last = serde_json::Value::Null;
        loop {
            if let Some(pod) = self.pod(name)? {
                if ready(&pod) {
                    return Ok(pod);
                }
                last = pod["status"].clone();
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "on {}: pod {name} is not {what} after {} s; last status:\n{}\nkubelet log tail:\n{}",
                    self.runtime,
                    timeout.as_secs(),
                    serde_json::to_string_pretty(&last).unwrap_or_default(),
                    self.kubelet_log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// crictl against this node's containerd; fails unless it exits 0, returns stdout.
    pub fn crictl(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("bash")
            .arg(script("private-cri.sh"))
            .arg("crictl")
            .arg(&self.dir)
            .args(args)
            .output()
            .context("cannot run hack/private-cri.sh crictl")?;
        if !output.status.success() {
            bail!(
                "crictl {} failed on {} ({}):\n{}{}",
                args.join(" "),
                self.runtime,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `crictl inspect` of a container, as JSON (`info.pid`, `status.logPath`, ...).
    pub fn inspect(&self, container_id: &str) -> Result<serde_json::Value> {
        let text = self.crictl(&["inspect", "-o", "json", container_id])?;
        serde_json::from_str(&text).with_context(|| format!("crictl inspect {container_id}"))
    }

    /// Stops the kubelet alone; its pods keep running.
    pub fn stop_kubelet(&self) -> Result<()> {
        self.script_output(&["kubelet-stop"]).map(drop)
    }

    /// Starts the kubelet again over the same root directory, manifests and containerd.
    pub fn start_kubelet(&self) -> Result<()> {
        self.script_output(&["kubelet-start"]).map(drop)
    }

    /// The running kubelet's pid.
    pub fn kubelet_pid(&self) -> Result<i32> {
        let path = self.dir.join("kubelet/kubelet.pid");
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: bad pid {text:?}", path.display()))
    }

    /// The last `lines` lines of the kubelet's log.
    pub fn kubelet_log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.join("kubelet/kubelet.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn script_output(&self, args: &[&str]) -> Result<Vec<u8>> {
        let output = Command::new("bash")
            .arg(script("private-kubelet.sh"))
            .arg(args[0])
            .arg(&self.dir)
            .args(&args[1..])
            .output()
            .context("cannot run hack/private-kubelet.sh")?;
        if !output.status.success() {
            bail!(
                "hack/private-kubelet.sh {} {} failed on {} ({}):\n{}",
                args[0],
                self.dir.display(),
                self.runtime,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output.stdout)
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        if let Some(tempdir) = self.tempdir.take() {
            stop_and_remove("private-kubelet.sh", &self.dir, tempdir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_child_by_its_executable() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep runs");
        let pid = i32::try_from(child.id()).expect("pids fit in i32");
        let exe = fs::read_link(format!("/proc/{pid}/exe")).expect("child exe");
        let found = pids_of_exe(&exe).expect("pids_of_exe");
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&pid), "{pid} not in {found:?}");
    }

    #[test]
    fn flavors_name_their_version() {
        assert_eq!(
            Flavor::all().map(|f| f.to_string()),
            ["containerd 1.6", "containerd 2.4"]
        );
    }

    #[test]
    fn reads_own_status_and_fds() {
        let me = i32::try_from(std::process::id()).expect("pids fit in i32");
        let (uid, gid) = proc_status_uid(me).expect("own status is readable");
        assert_eq!(uid, nix::unistd::getuid().as_raw());
        assert_eq!(gid, nix::unistd::getgid().as_raw());
        assert!(count_fds(me).expect("own fds are listable") >= 3);
        assert!(process_alive(me));
    }
}
