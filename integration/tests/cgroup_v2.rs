//! The cgroup v2 device filter against the real kernel, without containerd: a cgroup made in
//! the host's cgroup v2 tree (`/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on
//! a hybrid one like this project's machines), the shim's device program attached to it, and
//! a process moved into it that opens a character device the rules allow and a block device
//! they do not.
//!
//! Only the v2 directory is used, never the v1 devices hierarchy: on a hybrid host the EPERM
//! seen here can only come from the eBPF program. Needs root and a cgroup2 mount; without one
//! the test fails, saying so.

use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use usernsrs_init::cgroup::{replace_device_program, Limits};
use usernsrs_integration::require_root;

/// The host's cgroup v2 root, as `Cgroup::new` finds it.
fn v2_root() -> Result<PathBuf> {
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if Path::new(root).join("cgroup.controllers").exists() {
            return Ok(PathBuf::from(root));
        }
    }
    bail!(
        "no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified: the v2 device filter \
         cannot be tested on this host (mount one: mount -t cgroup2 none /sys/fs/cgroup/unified)"
    )
}

/// A block device of this host (major:minor) that host root can open for reading.
fn host_block_device() -> Result<(u32, u32)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/sys/dev/block").context("read /sys/dev/block")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some((a, b)) = name.split_once(':') {
            found.push((a.parse()?, b.parse()?));
        }
    }
    found.sort();
    found
        .first()
        .copied()
        .context("this host has no block device in /sys/dev/block")
}

/// Removes the test's cgroup (detaching its program) when the test ends, however it ends.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

#[test]
fn v2_device_program_denies_block_devices_and_allows_dev_null() -> Result<()> {
    require_root()?;
    let root = v2_root()?;
    let (major, minor) = host_block_device()?;
    let scratch = tempfile::tempdir()?;
    let node = scratch.path().join("blk");
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(major.into(), minor.into()),
    )
    .with_context(|| format!("mknod {} b {major}:{minor}", node.display()))?;
    ensure!(fs::metadata(&node)?.file_type().is_block_device());
    // Outside the filter the node opens: what follows tests the program, not the node.
    fs::File::open(&node).with_context(|| format!("open {} on the host", node.display()))?;

    let cg = TestCgroup(
        root.join("usernsrs-test")
            .join(format!("devices-{}", std::process::id())),
    );
    fs::create_dir_all(&cg.0).with_context(|| format!("mkdir {}", cg.0.display()))?;
    let mut limits = Limits::default();
    limits.allow_container_devices(&[]);
    replace_device_program(&cg.0, &limits.devices)?;
    // A second call replaces the first program: one stays attached.
    replace_device_program(&cg.0, &limits.devices)?;
    let dir = fs::File::open(&cg.0)?;
    let attached = usernsrs_sys::bpf::attached_device_programs(dir.as_fd())?;
    ensure!(
        attached.len() == 1,
        "expected one device program on {}, found {attached:?}",
        cg.0.display()
    );

    // The child waits for a line on stdin, by which time it is in the cgroup.
    let script = format!(
        "read go; head -c 1 /dev/null && echo null-ok; \
         if head -c 512 {} >/dev/null; then echo blk-readable; fi",
        node.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    fs::write(cg.0.join("cgroup.procs"), child.id().to_string())
        .with_context(|| format!("move {} into {}", child.id(), cg.0.display()))?;
    child
        .stdin
        .take()
        .context("child stdin")?
        .write_all(b"go\n")?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stdout.contains("null-ok"),
        "/dev/null must open in the cgroup; stdout {stdout:?} stderr {stderr:?}"
    );
    ensure!(
        !stdout.contains("blk-readable") && stderr.contains("Operation not permitted"),
        "block device {major}:{minor} must give EPERM in the cgroup; stdout {stdout:?} stderr {stderr:?}"
    );
    Ok(())
}
