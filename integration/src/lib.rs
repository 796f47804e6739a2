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

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
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
        let Some(tempdir) = self.tempdir.take() else {
            return;
        };
        let stop = Command::new(script("private-containerd.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
        match &stop {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "!!! hack/private-containerd.sh stop {} failed ({}):\n{}",
                self.dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!(
                "!!! cannot run hack/private-containerd.sh stop {}: {e}",
                self.dir.display()
            ),
        }
        match mounts_under(&self.dir) {
            Ok(mounts) if mounts.is_empty() => {
                if let Err(e) = tempdir.close() {
                    eprintln!("!!! cannot remove {}: {e}", self.dir.display());
                }
            }
            Ok(mounts) => {
                let kept = tempdir.keep();
                eprintln!(
                    "!!! LEFT {} IN PLACE: still mounted below it: {}. Unmount these, then remove it.",
                    kept.display(),
                    mounts.iter().map(|m| m.display().to_string()).collect::<Vec<_>>().join(", ")
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
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|mount_point| mount_point.starts_with(&root))
        .collect())
}

/// Undoes the kernel's octal escapes of ' ', '\t', '\n' and '\\' in mountinfo paths.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push(
                    d.iter()
                        .fold(0u8, |acc, b| acc.wrapping_mul(8).wrapping_add(b - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal_mountinfo_escapes() {
        assert_eq!(
            unescape_mountinfo(r"/tmp/a\040b\011c\134d"),
            "/tmp/a b\tc\\d"
        );
        assert_eq!(unescape_mountinfo(r"/plain/path"), "/plain/path");
        assert_eq!(unescape_mountinfo(r"/trailing\04"), r"/trailing\04");
    }

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
