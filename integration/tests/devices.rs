//! Device rules end to end, through containerd: a container may create device nodes but not
//! open a block device, whether it made the node itself (no user namespace, mknod) or found it
//! in its root.path (user namespace, no `linux.cgroupsPath`), and on cgroup v2 (a hybrid
//! host's unified tree too) the rules are an eBPF program attached to the container's cgroup.
//!
//! On this project's hybrid machines the v1 devices controller denies the block device as
//! well, so the tests also look at the v2 cgroup for the attached program; on pure v2 hosts
//! (the VMs with Debian's 6.1 and 6.12) the program is the only thing that denies.

mod common;

use std::fs;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use usernsrs_integration::Flavor;

use common::{add_user_namespace, set_mapping, unique_id, unpack_busybox, Env};

const NS: &str = "devices-test";

/// The host's cgroup v2 root, where `Cgroup::new` finds it; the tests need one.
fn v2_root() -> Result<PathBuf> {
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if PathBuf::from(root).join("cgroup.controllers").exists() {
            return Ok(PathBuf::from(root));
        }
    }
    bail!("no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified: the v2 device filter is not exercised here")
}

/// A block device of this host that host root can open, as `major:minor`.
fn host_block_device() -> Result<(u32, u32)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/sys/dev/block").context("read /sys/dev/block")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some((a, b)) = name.split_once(':') {
            found.push((a.parse::<u32>()?, b.parse::<u32>()?));
        }
    }
    found.sort();
    let (major, minor) = *found.first().context("no block device in /sys/dev/block")?;
    // Opens outside any device filter: what the tests see in a container is the filter's.
    let scratch = tempfile::tempdir()?;
    let node = scratch.path().join("blk");
    make_block_node(&node, major, minor, 0o600)?;
    fs::File::open(&node)
        .with_context(|| format!("open {} b {major}:{minor} on the host", node.display()))?;
    Ok((major, minor))
}

fn make_block_node(path: &std::path::Path, major: u32, minor: u32, mode: u32) -> Result<()> {
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(mode),
        nix::sys::stat::makedev(major.into(), minor.into()),
    )
    .with_context(|| format!("mknod {} b {major} {minor}", path.display()))?;
    // Whatever the umask took away.
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(())
}

/// The ids of the device programs attached to the v2 cgroup `rel` (e.g. `ns/id`).
fn attached_programs(rel: &str) -> Result<Vec<u32>> {
    let dir = v2_root()?.join(rel);
    let file = fs::File::open(&dir).with_context(|| format!("open {}", dir.display()))?;
    usernsrs_sys::bpf::attached_device_programs(file.as_fd())
        .with_context(|| format!("BPF_PROG_QUERY on {}", dir.display()))
}

fn mknod_block_device_gives_eperm_without_userns(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let (major, minor) = host_block_device()?;
    let id = unique_id("mknod");
    let script = format!(
        "mknod /tmp/blk b {major} {minor} && echo mknod-ok; \
         if head -c 512 /tmp/blk >/dev/null; then echo blk-readable; fi; \
         head -c 1 /dev/null && echo null-ok"
    );
    let out = env.run(&[], &id, &["sh", "-c", &script])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stdout.contains("mknod-ok") && stdout.contains("null-ok"),
        "{flavor}: mknod of a block node and /dev/null must work; stdout {stdout:?} stderr {stderr:?}"
    );
    ensure!(
        !stdout.contains("blk-readable")
            && format!("{stdout}{stderr}").contains("Operation not permitted"),
        "{flavor}: reading block device {major}:{minor} must fail with EPERM; stdout {stdout:?} stderr {stderr:?}"
    );

    // While a container runs, its v2 cgroup (ctr's cgroupsPath /<ns>/<id>) holds the program.
    let id = unique_id("attached");
    env.run_detached(&[], &id, &["sleep", "60"])?;
    let attached = attached_programs(&format!("{NS}/{id}"));
    env.kill_and_remove(&id)?;
    let attached = attached?;
    ensure!(
        attached.len() == 1,
        "{flavor}: expected one device program on the container's v2 cgroup, found {attached:?}"
    );
    Ok(())
}

#[test]
fn containerd16_mknod_block_device_gives_eperm_without_userns() -> Result<()> {
    mknod_block_device_gives_eperm_without_userns(Flavor::Containerd16)
}

#[test]
fn containerd2_mknod_block_device_gives_eperm_without_userns() -> Result<()> {
    mknod_block_device_gives_eperm_without_userns(Flavor::Containerd2)
}

fn root_path_block_node_gives_eperm_with_userns(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let (major, minor) = host_block_device()?;
    let rootfs = env.dir().join("rootfs");
    unpack_busybox(&rootfs)?;
    // A node shipped with the rootfs, open to everyone: only the device rules stand between
    // the container and the disk (the user namespace cannot mknod, but it can open).
    let node = rootfs.join("blk");
    make_block_node(&node, major, minor, 0o666)?;

    let id = unique_id("rootpath");
    let mut spec = env.base_spec(
        &id,
        &rootfs,
        "if head -c 512 /blk >/dev/null; then echo blk-readable; fi; \
         head -c 1 /dev/null && echo null-ok; cat /proc/self/cgroup",
    )?;
    add_user_namespace(&mut spec)?;
    set_mapping(&mut spec, 100_000, 65_536);
    // No cgroupsPath: the shim gives the container /usernsrs/<ns>/<id>, and rules apply there.
    spec["linux"]
        .as_object_mut()
        .context("spec has a linux object")?
        .remove("cgroupsPath");
    let run = env.create_and_start(&id, &spec)?;
    ensure!(
        run.stdout.contains("null-ok"),
        "{flavor}: /dev/null must open; stdout {:?} stderr {:?}",
        run.stdout,
        run.stderr
    );
    ensure!(
        !run.stdout.contains("blk-readable")
            && format!("{}{}", run.stdout, run.stderr).contains("Operation not permitted"),
        "{flavor}: opening the root.path block node {major}:{minor} must fail with EPERM; stdout {:?} stderr {:?}",
        run.stdout,
        run.stderr
    );
    let cgroup = format!("/usernsrs/{NS}/{id}");
    ensure!(
        run.stdout.contains(&cgroup),
        "{flavor}: the container must run in {cgroup}; /proc/self/cgroup: {:?}",
        run.stdout
    );
    // Removed with the container.
    let dir = v2_root()?.join(cgroup.trim_start_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.exists() {
        ensure!(
            Instant::now() < deadline,
            "{flavor}: {} left after the container was deleted",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn containerd16_root_path_block_node_gives_eperm_with_userns() -> Result<()> {
    root_path_block_node_gives_eperm_with_userns(Flavor::Containerd16)
}

#[test]
fn containerd2_root_path_block_node_gives_eperm_with_userns() -> Result<()> {
    root_path_block_node_gives_eperm_with_userns(Flavor::Containerd2)
}
