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

/// `/dev` bound from a host directory that is shared with the host, with rootfsPropagation
/// rshared (CRI asks for it with a Bidirectional volume): the container's /dev is its source,
/// so the shim makes no node there. Making them once created files in the source and bound the
/// host's /dev/null and friends onto them, binds that propagated to the host for good.
fn bound_dev_is_left_as_its_source_is(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs");
    unpack_busybox(&rootfs)?;
    let source = common::HostMount::new("tmpfs", &env.dir().join("shared-dev"), "mode=755")?;
    nix::mount::mount(
        None::<&str>,
        source.path(),
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )
    .context("make the /dev source shared")?;
    fs::write(source.path().join("marker"), "x")?;

    let id = unique_id("bound-dev");
    let mut spec = env.base_spec(&id, &rootfs, "ls /dev")?;
    let mounts = spec["mounts"].as_array_mut().context("spec has mounts")?;
    mounts.retain(|m| {
        let dest = m["destination"].as_str().unwrap_or_default();
        dest != "/dev" && !dest.starts_with("/dev/")
    });
    mounts.push(serde_json::json!({
        "destination": "/dev",
        "type": "bind",
        "source": source.path(),
        "options": ["rbind", "rshared"],
    }));
    spec["linux"]["rootfsPropagation"] = "rshared".into();
    spec["linux"]["maskedPaths"] = serde_json::json!([]);
    let run = env.create_and_start(&id, &spec)?;
    ensure!(
        run.status.success() && run.stdout.contains("marker"),
        "{flavor}: the container must run and see its bound /dev; status {} stdout {:?} stderr {:?}",
        run.status,
        run.stdout,
        run.stderr
    );
    let mut entries: Vec<String> = fs::read_dir(source.path())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    entries.sort();
    let under = usernsrs_integration::mounts_under(source.path())?;
    ensure!(
        entries == ["marker"] && under == [source.path().to_path_buf()],
        "{flavor}: the shim changed the bound /dev's source: entries {entries:?}, mounts {under:?}"
    );
    Ok(())
}

#[test]
fn containerd16_bound_dev_is_left_as_its_source_is() -> Result<()> {
    bound_dev_is_left_as_its_source_is(Flavor::Containerd16)
}

#[test]
fn containerd2_bound_dev_is_left_as_its_source_is() -> Result<()> {
    bound_dev_is_left_as_its_source_is(Flavor::Containerd2)
}

/// Without a user namespace the nodes of `linux.devices` are made with the spec's numbers,
/// mode and owner, subdirectories too; they are not looked up on the host (which has no
/// /dev/usernsrs-zero).
fn spec_devices_are_made_as_the_spec_says(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs");
    unpack_busybox(&rootfs)?;
    let id = unique_id("spec-devices");
    let mut spec = env.base_spec(
        &id,
        &rootfs,
        "stat -c '%n %t:%T %a %u:%g %F' /dev/usernsrs-zero /dev/sub/dir/null2 /dev/null \
         /dev/usernsrs-fifo; head -c 3 /dev/usernsrs-zero | od -An -tx1",
    )?;
    spec["linux"]["devices"] = serde_json::json!([
        {"path": "/dev/usernsrs-zero", "type": "c", "major": 1, "minor": 5,
         "fileMode": 0o640, "uid": 7, "gid": 8},
        {"path": "/dev/sub/dir/null2", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600},
        {"path": "/dev/usernsrs-fifo", "type": "p", "major": 0, "minor": 0, "fileMode": 0o620}
    ]);
    let run = env.create_and_start(&id, &spec)?;
    for want in [
        "/dev/usernsrs-zero 1:5 640 7:8 character special file",
        "/dev/sub/dir/null2 1:3 600 0:0 character special file",
        "/dev/null 1:3 666 0:0 character special file",
        "/dev/usernsrs-fifo 0:0 620 0:0 fifo",
        "00 00 00",
    ] {
        ensure!(
            run.stdout.contains(want),
            "{flavor}: expected {want:?}; status {} stdout {:?} stderr {:?}",
            run.status,
            run.stdout,
            run.stderr
        );
    }
    Ok(())
}

#[test]
fn containerd16_spec_devices_are_made_as_the_spec_says() -> Result<()> {
    spec_devices_are_made_as_the_spec_says(Flavor::Containerd16)
}

#[test]
fn containerd2_spec_devices_are_made_as_the_spec_says() -> Result<()> {
    spec_devices_are_made_as_the_spec_says(Flavor::Containerd2)
}

/// Devices that cannot be made as the spec says are refused by name, with nothing left: a path
/// outside /dev, one the host lacks in a user namespace (which cannot mknod, so binds the host's
/// node), one whose host node is another device, and a /dev/null that is not 1:3 (masking
/// with it would show another file in place of the masked one, CVE-2025-31133).
fn refuses_devices_it_cannot_make_as_said(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs");
    unpack_busybox(&rootfs)?;
    let cases = [
        (
            "a path out of /dev",
            false,
            serde_json::json!([{"path": "/dev/../etc/x", "type": "c", "major": 1, "minor": 3}]),
            "linux.devices[0].path \"/dev/../etc/x\"",
        ),
        (
            "a node the host lacks, in a user namespace",
            true,
            serde_json::json!([{"path": "/dev/usernsrs-absent", "type": "c", "major": 1, "minor": 5}]),
            "linux.devices /dev/usernsrs-absent: a user namespace cannot mknod",
        ),
        (
            "a host node that is another device, in a user namespace",
            true,
            serde_json::json!([{"path": "/dev/zero", "type": "c", "major": 1, "minor": 3}]),
            "linux.devices /dev/zero: the host's /dev/zero is not the Char device 1:3",
        ),
        (
            "a /dev/null that is not 1:3",
            false,
            serde_json::json!([{"path": "/dev/null", "type": "c", "major": 1, "minor": 5}]),
            "/dev/null in the container is not the 1:3 character device",
        ),
    ];
    for (what, userns, devices, message) in cases {
        let id = unique_id("bad-device");
        let mut spec = env.base_spec(&id, &rootfs, "echo must-not-run")?;
        if userns {
            add_user_namespace(&mut spec)?;
            set_mapping(&mut spec, 100_000, 65_536);
        }
        spec["linux"]["devices"] = devices;
        let before = env.our_mount_lines()?;
        let run = env.create_and_start(&id, &spec)?;
        ensure!(
            !run.status.success() && !run.stdout.contains("must-not-run"),
            "{flavor}: {what}: the task ran: {} {:?}",
            run.status,
            run.stdout
        );
        ensure!(
            run.stderr.contains(message),
            "{flavor}: {what}: stderr must say `{message}`:\n{}",
            run.stderr
        );
        // ctr 1.6 prints the status code too: a refused spec is InvalidArgument.
        ensure!(
            flavor != Flavor::Containerd16 || run.stderr.contains("invalid argument"),
            "{flavor}: {what}: a refused spec must be InvalidArgument:\n{}",
            run.stderr
        );
        env.assert_no_shim(&format!("the refused create with {what}"))?;
        let after = env.our_mount_lines()?;
        ensure!(
            after.is_subset(&before),
            "{flavor}: {what}: mounts left: {:?}",
            after.difference(&before).collect::<Vec<_>>()
        );
    }
    ensure!(
        !PathBuf::from("/etc/x").exists(),
        "{flavor}: /etc/x was created on the host"
    );
    Ok(())
}

#[test]
fn containerd16_refuses_devices_it_cannot_make_as_said() -> Result<()> {
    refuses_devices_it_cannot_make_as_said(Flavor::Containerd16)
}

#[test]
fn containerd2_refuses_devices_it_cannot_make_as_said() -> Result<()> {
    refuses_devices_it_cannot_make_as_said(Flavor::Containerd2)
}

/// A bind whose destination reaches /dev through a symlink in the image (`/devlink -> /dev`)
/// covers the spec's fresh /dev: the shim must not make nodes in it, which would write them
/// into the bind's source on the host. The create is refused, the source left as it was.
fn a_mount_covering_dev_through_a_symlink_is_refused(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs");
    unpack_busybox(&rootfs)?;
    std::os::unix::fs::symlink("/dev", rootfs.join("devlink"))?;
    let source = env.dir().join("devlink-source");
    fs::create_dir_all(&source)?;
    let id = unique_id("devlink");
    let mut spec = env.base_spec(&id, &rootfs, "echo must-not-run")?;
    spec["mounts"]
        .as_array_mut()
        .context("spec has mounts")?
        .push(serde_json::json!({
            "destination": "/devlink",
            "type": "bind",
            "source": source,
            "options": ["rbind"],
        }));
    let run = env.create_and_start(&id, &spec)?;
    ensure!(
        !run.status.success() && run.stderr.contains("a later mount covered the spec's /dev"),
        "{flavor}: the create must be refused: {} {:?} {:?}",
        run.status,
        run.stdout,
        run.stderr
    );
    let left: Vec<_> = fs::read_dir(&source)?.collect::<std::io::Result<_>>()?;
    ensure!(
        left.is_empty(),
        "{flavor}: nodes were made in the bind's source: {left:?}"
    );
    env.assert_no_shim("the refused create")?;
    Ok(())
}

#[test]
fn containerd16_a_mount_covering_dev_through_a_symlink_is_refused() -> Result<()> {
    a_mount_covering_dev_through_a_symlink_is_refused(Flavor::Containerd16)
}

#[test]
fn containerd2_a_mount_covering_dev_through_a_symlink_is_refused() -> Result<()> {
    a_mount_covering_dev_through_a_symlink_is_refused(Flavor::Containerd2)
}
