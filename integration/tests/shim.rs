//! End-to-end tests of `containerd-shim-usernsrs-v2` through `ctr`, against a private containerd
//! 1.6 and a private containerd 2.4 (see `hack/private-containerd.sh`): the acceptance points of
//! the shim, each checked on real host state (`/proc`, mountinfo, on-disk owners).
//!
//! - plain containers keep the host's ids, and exit codes and signal deaths reach `ctr`;
//! - containerd 2.x `ctr run --uidmap --remap-labels`: the lower layers are idmapped through a
//!   mount staged under the bundle while the overlay is mounted (no temporary mount left, no layer
//!   chowned), the upper dir is the mapped root's;
//! - `root.path` from `ctr c create --config`: idmapped when owned by host root, used as it is
//!   when chowned into the range, and the `usernsrs.io/rootfs-idmap` annotation overrides;
//! - bad mappings are refused at create with the shim's message, leaving nothing behind;
//! - create/start/delete cycles leak no mount, no shim process and no containerd fd;
//! - `-info` advertises user namespaces, idmapped mounts and seccomp as the shim applies it.
//!
//! Needs root, the shim built (`cargo build -p containerd-shim-usernsrs-v2`) and the peers
//! (`hack/install-peers.sh`). Nothing here skips: a missing prerequisite fails the test.
//! Run with `cargo test -p usernsrs-integration --test shim -- --test-threads=1`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use usernsrs_integration::{
    count_fds, mountinfo_lines, mounts_under, proc_status_uid, require_root, shim_binary, Flavor,
};

use common::{
    add_user_namespace, lines, mount_at, owner, run_lines, run_tool, set_mapping, unique_id,
    unpack_busybox, Env, HostMount, MountLine, RUNTIME, SETTLE, SHIM,
};

const SNAPSHOTS: &str = "io.containerd.snapshotter.v1.overlayfs/snapshots";
const ROOTFS_IDMAP_ANNOTATION: &str = "usernsrs.io/rootfs-idmap";

// ---------------------------------------------------------------------------------------------
// 1. A plain container: host ids, exit codes, signal deaths.
// ---------------------------------------------------------------------------------------------

fn plain_container(flavor: Flavor) -> Result<()> {
    let env = Env::start(flavor)?;

    let id = unique_id("plain");
    let out = env.run_ok(
        &[],
        &id,
        &["/bin/sh", "-c", "cat /proc/self/uid_map; id -u"],
    )?;
    assert_eq!(
        lines(&out),
        ["0 0 4294967295", "0"],
        "{flavor}: a container without a user namespace must see the identity map and uid 0"
    );

    let id = unique_id("exit3");
    let out = env.run(&[], &id, &["/bin/sh", "-c", "exit 3"])?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{flavor}: `exit 3` in the container must make ctr exit 3; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A signal death is reported as 128+n. The container's process is pid 1 of its pid
    // namespace, which ignores SIGKILL sent from inside (`kill -9 $$` is a no-op, as with runc),
    // so the signal comes from the host side, through the shim's Kill.
    let id = unique_id("sigkill");
    let mut child = env.spawn_run(&id, &["sleep", "1000"])?;
    let killed = env
        .wait_task(&id, "RUNNING")
        .and_then(|_| env.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]));
    if let Err(e) = killed {
        // Our own child, by its handle; the container itself goes with the containerd.
        let _ = child.kill();
        let output = child.wait_with_output()?;
        return Err(e.context(format!(
            "{flavor}: could not kill the task of `ctr run {id}`; its stderr:
{}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            bail!("{flavor}: ctr run of {id} did not exit 30 s after SIGKILL of its task");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output()?;
    assert_eq!(
        status.code(),
        Some(128 + 9),
        "{flavor}: a container killed by SIGKILL must make ctr exit 137; stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    env.assert_no_shim("three --rm runs")?;
    let left = mounts_under(env.dir())?;
    ensure!(
        left.is_empty(),
        "{flavor}: mounts left under {} after --rm runs: {left:?}",
        env.dir().display()
    );
    Ok(())
}

#[test]
fn containerd16_plain_container_keeps_host_ids_and_exit_codes() -> Result<()> {
    plain_container(Flavor::Containerd16)
}

#[test]
fn containerd2_plain_container_keeps_host_ids_and_exit_codes() -> Result<()> {
    plain_container(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 2. containerd 2.x `--uidmap --remap-labels`: idmapped lower layers, nothing chowned or left.
// ---------------------------------------------------------------------------------------------

#[test]
fn containerd2_remapped_snapshot_idmaps_lower_layers_without_leftovers() -> Result<()> {
    let env = Env::start(Flavor::Containerd2)?;
    let userns = [
        "--uidmap",
        "0:100000:65536",
        "--gidmap",
        "0:100000:65536",
        "--remap-labels",
    ];

    // Inside: the mapping, the image's owners as the image has them, new files owned by root.
    let id = unique_id("remap");
    let out = env.run_ok(
        &userns,
        &id,
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map; stat -c %u:%g /data/root-file /data/app-file; \
             touch /data/new && stat -c %u:%g /data/new",
        ],
    )?;
    assert_eq!(
        lines(&out),
        ["0 100000 65536", "0:0", "1000:1000", "0:0"],
        "uid_map, image owners and a new file's owner inside a --uidmap container"
    );

    // On the host, while a container runs.
    let before = env.our_mount_lines()?;
    let id = unique_id("remap-detached");
    let pid = env.run_detached(&userns, &id, &["sleep", "1000"])?;
    let bundle = env.bundle(&id);
    let snapshots = env.dir().join("root").join(SNAPSHOTS);
    let snapshots_str = snapshots.to_string_lossy().into_owned();

    assert_eq!(
        proc_status_uid(pid)?,
        (100000, 100000),
        "host uid/gid of the container process {pid}"
    );
    // The filter the leak checks rely on does see a live shim.
    ensure!(
        !env.shim_pids()?.is_empty(),
        "no {SHIM} process of this containerd found while {id} runs"
    );

    let inside = fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .with_context(|| format!("cannot read /proc/{pid}/mountinfo"))?;
    let root = mount_at(&inside, "/")?;
    let rootfs_point = bundle.join("rootfs").to_string_lossy().into_owned();
    let staging = bundle.join("idmapped-layers");
    let host_mountinfo = mountinfo_lines()?.join("\n");
    let host_root = mount_at(&host_mountinfo, &rootfs_point)?;
    for (whose, m) in [("container", &root), ("host", &host_root)] {
        ensure!(
            m.fs_type == "overlay",
            "{whose} rootfs is {} (an overlay expected): {}",
            m.fs_type,
            m.super_options
        );
        let lower = m.super_option("lowerdir").ok_or_else(|| {
            anyhow!(
                "{whose} rootfs overlay has no lowerdir: {}",
                m.super_options
            )
        })?;
        // The layers are reached through the helper's idmapped clone of their parent
        // directory, staged under the bundle while the overlay was mounted
        // (crates/init/src/overlay.rs), never by their own paths: through those, the container
        // would see host root's files as the overflow id.
        for dir in lower.split(':') {
            ensure!(
                Path::new(dir).starts_with(&staging) && !dir.contains(&snapshots_str),
                "{whose} rootfs lowerdir {dir:?} (of {lower:?}) is not an idmapped path: \
                 expected {}/... of the staged idmapped mount",
                staging.display()
            );
        }
        ensure!(
            !m.idmapped(),
            "{whose}: the overlay itself cannot be idmapped, yet it says so: {}",
            m.mount_options
        );
    }

    // The upper dir was chowned by the snapshotter to the mapped root; the shim left it so.
    let upper = PathBuf::from(
        root.super_option("upperdir")
            .ok_or_else(|| anyhow!("container rootfs has no upperdir: {}", root.super_options))?,
    );
    ensure!(
        upper.starts_with(&snapshots),
        "upperdir {} is not a snapshot of {}",
        upper.display(),
        snapshots.display()
    );
    assert_eq!(
        owner(&upper)?,
        (100000, 100000),
        "owner of upper dir {}",
        upper.display()
    );

    // The only new mount of this containerd is the rootfs overlay: the idmapped clone of the
    // snapshots directory was detached once the overlay held its layers, its staging directory
    // is gone, and no mount has a snapshot as its root.
    ensure!(
        !staging.exists(),
        "the staging directory {} is still there after the overlay was mounted",
        staging.display()
    );
    let during = env.our_mount_lines()?;
    let new: Vec<&String> = during.difference(&before).collect();
    ensure!(
        new.len() == 1 && new[0].contains(&format!(" {rootfs_point} ")),
        "expected exactly one new mount (the rootfs at {rootfs_point}), got:\n{new:#?}"
    );
    let dir = env.dir().to_string_lossy().into_owned();
    for line in mountinfo_lines()? {
        let m = MountLine::parse(&line)?;
        let snapshot_clone = m.root.contains(SNAPSHOTS);
        let idmapped_here = m.idmapped() && line.contains(&dir);
        ensure!(
            !snapshot_clone && !idmapped_here,
            "a temporary idmapped mount of the snapshots remains in the host mountinfo: {line}"
        );
    }

    // The image layers on disk are untouched: never chowned into the range.
    let mut layer_files = 0;
    for entry in fs::read_dir(&snapshots)? {
        let fs_dir = entry?.path().join("fs");
        let root_file = fs_dir.join("data/root-file");
        if root_file.exists() {
            layer_files += 1;
            assert_eq!(
                owner(&root_file)?,
                (0, 0),
                "{} on disk",
                root_file.display()
            );
            let app_file = fs_dir.join("data/app-file");
            assert_eq!(
                owner(&app_file)?,
                (1000, 1000),
                "{} on disk",
                app_file.display()
            );
        }
    }
    ensure!(
        layer_files >= 1,
        "no snapshot under {} holds data/root-file",
        snapshots.display()
    );

    // Gone without a trace.
    env.kill_and_remove(&id)?;
    let after = env.our_mount_lines()?;
    ensure!(
        after == before,
        "mounts of this containerd after kill + delete differ from before the container:\n\
         before: {before:#?}\nafter: {after:#?}"
    );
    let left = mounts_under(env.dir())?;
    ensure!(
        left.is_empty(),
        "mounts left under {}: {left:?}",
        env.dir().display()
    );
    ensure!(
        !bundle.exists(),
        "bundle {} is still there",
        bundle.display()
    );
    env.assert_no_shim("kill + delete")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. root.path through `ctr c create --config` + `ctr t start`.
// ---------------------------------------------------------------------------------------------

/// Prints the uid map, the owners of the image files, and the root mount's options.
const ROOT_PATH_SCRIPT: &str =
    "cat /proc/self/uid_map; stat -c %u:%g /data/root-file /data/app-file; \
     awk '$5 == \"/\" { print \"root-mount \" $6 }' /proc/self/mountinfo";

fn root_path(flavor: Flavor) -> Result<()> {
    let env = Env::start(flavor)?;

    // a. Owned by host root, as unpacked: idmapped, so the image owners show as they are, and
    //    nothing is chowned on disk.
    let id = unique_id("rootpath-root");
    let rootfs = env.dir().join(format!("rootfs-{id}"));
    unpack_busybox(&rootfs)?;
    let script = format!(
        "{ROOT_PATH_SCRIPT}; id -u; echo hi > /data/written && stat -c %u:%g /data/written"
    );
    let mut spec = env.base_spec(&id, &rootfs, &script)?;
    add_user_namespace(&mut spec)?;
    set_mapping(&mut spec, 100000, 65536);
    let out = run_lines(&env, &id, &spec, "root-owned root.path", 6)?;
    assert_eq!(
        out[..3],
        ["0 100000 65536", "0:0", "1000:1000"],
        "{flavor}: root-owned rootfs"
    );
    ensure!(
        out[3].starts_with("root-mount ") && out[3].split(',').any(|o| o == "idmapped"),
        "{flavor}: root-owned root.path must be mounted idmapped, root mount is {:?}",
        out[3]
    );
    assert_eq!(
        out[4..],
        ["0", "0:0"],
        "{flavor}: id -u and a new file's owner inside"
    );
    assert_eq!(
        owner(&rootfs.join("data/root-file"))?,
        (0, 0),
        "{flavor}: root-file on disk"
    );
    assert_eq!(
        owner(&rootfs.join("data/app-file"))?,
        (1000, 1000),
        "{flavor}: app-file on disk"
    );
    // Through an idmapped mount a write by container root (host 100000) is mapped back through
    // the mount's idmap: it lands on disk as 0, like the image's own files. (The brief expected
    // 100000 here; that is what a write without an idmapped mount would give, see case b.)
    assert_eq!(
        owner(&rootfs.join("data/written"))?,
        (0, 0),
        "{flavor}: a file written by container root through the idmapped rootfs, on disk"
    );
    let left = mounts_under(env.dir())?;
    ensure!(
        left.is_empty(),
        "{flavor}: the idmapped rootfs of {id} is still mounted: {left:?}"
    );

    // b. Chowned into the range (containerd's user-namespace document): used as it is.
    let id = unique_id("rootpath-chowned");
    let rootfs = env.dir().join(format!("rootfs-{id}"));
    unpack_busybox(&rootfs)?;
    run_tool(
        Command::new("chown")
            .args(["-R", "65536:65536"])
            .arg(&rootfs),
    )?;
    // app (1000) shifted like the rest, so the shift shows inside as 1000 again.
    run_tool(
        Command::new("chown")
            .args(["-h", "66536:66536"])
            .arg(rootfs.join("data/app-file")),
    )?;
    let script =
        format!("{ROOT_PATH_SCRIPT}; echo hi > /data/written && stat -c %u:%g /data/written");
    let mut spec = env.base_spec(&id, &rootfs, &script)?;
    add_user_namespace(&mut spec)?;
    set_mapping(&mut spec, 65536, 65536);
    let out = run_lines(&env, &id, &spec, "chowned root.path", 5)?;
    assert_eq!(
        out[..3],
        ["0 65536 65536", "0:0", "1000:1000"],
        "{flavor}: chowned rootfs"
    );
    ensure!(
        out[3].starts_with("root-mount ") && !out[3].split(',').any(|o| o == "idmapped"),
        "{flavor}: a rootfs chowned into the range must not be idmapped, root mount is {:?}",
        out[3]
    );
    assert_eq!(out[4], "0:0", "{flavor}: a new file's owner inside");
    // No idmapped mount: a write by container root lands as its host id.
    assert_eq!(
        owner(&rootfs.join("data/written"))?,
        (65536, 65536),
        "{flavor}: a file written by container root into the chowned rootfs, on disk"
    );
    assert_eq!(
        owner(&rootfs.join("data/root-file"))?,
        (65536, 65536),
        "{flavor}: root-file"
    );

    // c. The annotation forbids the idmap of a root-owned rootfs: the files are unmapped.
    let id = unique_id("rootpath-noidmap");
    let rootfs = env.dir().join(format!("rootfs-{id}"));
    unpack_busybox(&rootfs)?;
    // Without the idmap, container root cannot create mount points in host root's directories
    // (EACCES, as with runc): the spec's /run tmpfs needs its directory in the image.
    fs::create_dir(rootfs.join("run")).context("cannot create run/ in the rootfs")?;
    let script = format!("{ROOT_PATH_SCRIPT}; id -u");
    let mut spec = env.base_spec(&id, &rootfs, &script)?;
    add_user_namespace(&mut spec)?;
    set_mapping(&mut spec, 100000, 65536);
    spec["annotations"] = json!({ ROOTFS_IDMAP_ANNOTATION: "false" });
    let out = run_lines(
        &env,
        &id,
        &spec,
        &format!("root.path with {ROOTFS_IDMAP_ANNOTATION}=false"),
        5,
    )?;
    assert_eq!(
        out[..3],
        ["0 100000 65536", "65534:65534", "65534:65534"],
        "{flavor}: with {ROOTFS_IDMAP_ANNOTATION}=false host root's files are the overflow id"
    );
    ensure!(
        !out[3].split(',').any(|o| o == "idmapped"),
        "{flavor}: {ROOTFS_IDMAP_ANNOTATION}=false, yet the root mount is {:?}",
        out[3]
    );
    assert_eq!(out[4], "0", "{flavor}: id -u");

    let left = mounts_under(env.dir())?;
    ensure!(
        left.is_empty(),
        "{flavor}: mounts left under {}: {left:?}",
        env.dir().display()
    );
    env.assert_no_shim("three root.path containers")?;
    Ok(())
}

#[test]
fn containerd16_root_path_is_idmapped_unless_chowned_or_annotated() -> Result<()> {
    root_path(Flavor::Containerd16)
}

#[test]
fn containerd2_root_path_is_idmapped_unless_chowned_or_annotated() -> Result<()> {
    root_path(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 4. Bad input refused at create, nothing left behind.
// ---------------------------------------------------------------------------------------------

fn refuses_bad_mappings(flavor: Flavor) -> Result<()> {
    let env = Env::start(flavor)?;
    let rootfs = env.dir().join("rootfs-bad-input");
    unpack_busybox(&rootfs)?;
    let before_mounts = env.our_mount_lines()?;

    type Edit = fn(&mut Value) -> Result<()>;
    let cases: [(&str, Edit, &str); 5] = [
        (
            "mapping of size 0",
            |s| {
                add_user_namespace(s)?;
                set_mapping(s, 100000, 0);
                Ok(())
            },
            "linux.uidMappings: range 0:100000:0 has size 0",
        ),
        (
            "overlapping host ranges",
            |s| {
                add_user_namespace(s)?;
                let ranges = json!([
                    { "containerID": 0, "hostID": 100000, "size": 1000 },
                    { "containerID": 1000, "hostID": 100500, "size": 1000 }
                ]);
                s["linux"]["uidMappings"] = ranges.clone();
                s["linux"]["gidMappings"] = ranges;
                Ok(())
            },
            "linux.uidMappings: host ids of ranges 0:100000:1000 and 1000:100500:1000 overlap",
        ),
        (
            "process uid outside the mapping",
            |s| {
                add_user_namespace(s)?;
                set_mapping(s, 100000, 65536);
                s["process"]["user"]["uid"] = json!(70000);
                Ok(())
            },
            "process.user.uid 70000 is not mapped by linux.uidMappings [0:100000:65536]",
        ),
        (
            "mappings without a user namespace",
            |s| {
                set_mapping(s, 100000, 65536);
                Ok(())
            },
            "linux.uidMappings/gidMappings are set but linux.namespaces has no user namespace",
        ),
        (
            "a user namespace without mappings",
            add_user_namespace,
            "linux.namespaces has a new user namespace but linux.uidMappings/gidMappings are empty",
        ),
    ];

    for (what, edit, message) in cases {
        let id = unique_id("bad");
        let mut spec = env.base_spec(&id, &rootfs, "echo must-not-run")?;
        edit(&mut spec)?;
        let run = env.create_and_start(&id, &spec)?;
        ensure!(
            !run.status.success(),
            "{flavor}: {what}: the task started: {}\nstdout:\n{}",
            run.status,
            run.stdout
        );
        ensure!(
            !run.stdout.contains("must-not-run"),
            "{flavor}: {what}: the process ran:\n{}",
            run.stdout
        );
        ensure!(
            run.stderr.contains(message) && run.stderr.contains(&format!("container {id}")),
            "{flavor}: {what}: ctr task start must report `container {id}: ... {message}`; \
             stderr:\n{}",
            run.stderr
        );
        env.assert_no_shim(&format!("the refused create of {what}"))?;
        let mounts = env.our_mount_lines()?;
        ensure!(
            mounts == before_mounts,
            "{flavor}: {what}: mounts of this containerd changed:\nbefore: {before_mounts:#?}\n\
             after: {mounts:#?}"
        );
        let bundle = env.bundle(&id);
        ensure!(
            !bundle.exists(),
            "{flavor}: {what}: bundle {} was left behind",
            bundle.display()
        );
        let listed = env.ctr_ok(&["containers", "ls", "-q"])?;
        ensure!(
            !listed.lines().any(|l| l == id),
            "{flavor}: {what}: container {id} is still listed"
        );
    }
    Ok(())
}

#[test]
fn containerd16_refuses_bad_mappings_at_create_leaving_nothing() -> Result<()> {
    refuses_bad_mappings(Flavor::Containerd16)
}

#[test]
fn containerd2_refuses_bad_mappings_at_create_leaving_nothing() -> Result<()> {
    refuses_bad_mappings(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 5. Leaks over many create/start/delete cycles.
// ---------------------------------------------------------------------------------------------

/// The targets of `pid`'s open fds, for telling what leaked.
fn fd_targets(pid: i32) -> Vec<String> {
    let mut targets: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    fs::read_link(e.path())
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| "?".into())
                })
                .collect()
        })
        .unwrap_or_default();
    targets.sort();
    targets
}

/// `cycles` times `ctr run --rm [opts] IMAGE ID /bin/true`; `uid_map` is what the container's
/// `/proc/self/uid_map` shows with `opts` (checked on the warm-up runs).
fn no_leaks(flavor: Flavor, cycles: usize, opts: &[&str], uid_map: &str) -> Result<()> {
    let env = Env::start(flavor)?;
    let containerd_pid = env.containerd.pid();

    // Warm-up: containerd opens some files lazily on its first task of a runtime.
    for _ in 0..2 {
        let out = env.run_ok(opts, &unique_id("warmup"), &["cat", "/proc/self/uid_map"])?;
        assert_eq!(lines(&out), [uid_map], "{flavor}: uid_map with {opts:?}");
    }
    env.assert_no_shim("the warm-up runs")?;
    let mounts_before = env.our_mount_lines()?;
    let global_before = mountinfo_lines()?.len();
    let fds_before = count_fds(containerd_pid)?;
    let targets_before = fd_targets(containerd_pid);

    let started = Instant::now();
    for i in 0..cycles {
        let id = unique_id("cycle");
        env.run_ok(opts, &id, &["/bin/true"])
            .with_context(|| format!("{flavor}: cycle {i} of {cycles}"))?;
    }
    let elapsed = started.elapsed();
    eprintln!("{flavor}: {cycles} cycles of ctr run --rm {opts:?} in {elapsed:?}");

    env.assert_no_shim(&format!("{cycles} create/start/delete cycles"))?;
    // The mounts of this containerd, not the global line count: other tests on the machine
    // (this workspace's own, run in parallel) mount and unmount under their own directories.
    // Every host-side mount of a shim mentions this containerd's directory (bundle mount point,
    // snapshot root, overlay dirs), so a leak shows here.
    let mounts_after = env.our_mount_lines()?;
    ensure!(
        mounts_after == mounts_before,
        "{flavor}: mounts of this containerd changed over {cycles} cycles \
         (global mountinfo {global_before} -> {} lines):\nbefore: {mounts_before:#?}\n\
         after: {mounts_after:#?}",
        mountinfo_lines()?.len()
    );
    // containerd closes a shim's connection and event fds as it processes the shim's exit,
    // which may trail `ctr run --rm` a little: wait for it, then demand the same count.
    let deadline = Instant::now() + SETTLE;
    loop {
        let fds = count_fds(containerd_pid)?;
        if fds == fds_before {
            break;
        }
        if Instant::now() > deadline {
            let after = fd_targets(containerd_pid);
            bail!(
                "{flavor}: containerd had {fds_before} fds before {cycles} cycles and {fds} \
                 {SETTLE:?} after them\nbefore: {targets_before:?}\nafter: {after:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = mounts_under(env.dir())?;
    ensure!(
        left.is_empty(),
        "{flavor}: mounts left under {}: {left:?}",
        env.dir().display()
    );
    Ok(())
}

#[test]
fn containerd2_100_user_namespace_cycles_leak_nothing() -> Result<()> {
    no_leaks(
        Flavor::Containerd2,
        100,
        &[
            "--uidmap",
            "0:100000:65536",
            "--gidmap",
            "0:100000:65536",
            "--remap-labels",
        ],
        "0 100000 65536",
    )
}

#[test]
fn containerd16_100_user_namespace_cycles_leak_nothing() -> Result<()> {
    // containerd 1.6's ctr chowns a copy of the snapshot for --uidmap (no --remap-labels
    // support in its overlayfs snapshotter): the shim gets plain overlay mounts and a userns.
    no_leaks(
        Flavor::Containerd16,
        100,
        &["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"],
        "0 100000 65536",
    )
}

/// A process that is not the container's root reopens its stdio (`/dev/stdout` is
/// `/proc/self/fd/1`): the kernel checks the pipe's owner, which the shim may have set to the
/// mapped root (ctr 2.x sends runc options with io_uid/io_gid of root for `--uidmap`). As runc
/// does, the helper gives the process's stdio to its user before dropping root; once `echo err
/// >/dev/stderr` failed with EACCES for user 1000 on containerd 2.4.2.
fn non_root_user_reopens_its_stdio(flavor: Flavor) -> Result<()> {
    let env = Env::start(flavor)?;
    let id = unique_id("stdio-user");
    // ctr 1.6 has no --user: containerd 2.x only.
    let opts = [
        "--uidmap",
        "0:100000:65536",
        "--gidmap",
        "0:100000:65536",
        "--user",
        "1000:1000",
        "--remap-labels",
    ];
    let out = env.run(
        &opts,
        &id,
        &[
            "sh",
            "-c",
            "id -u; echo out >/dev/stdout && echo err >/dev/stderr",
        ],
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stdout.contains("1000\nout") && stderr.contains("err"),
        "{flavor}: user 1000 must reopen /dev/stdout and /dev/stderr: {}\nstdout {stdout:?}\nstderr {stderr:?}",
        out.status
    );
    Ok(())
}

#[test]
fn containerd2_non_root_user_reopens_its_stdio() -> Result<()> {
    non_root_user_reopens_its_stdio(Flavor::Containerd2)
}

/// The task API socket of a shim is 0600: whoever connects can run processes as root, so only
/// root (containerd) may, as with containerd's own shims.
#[test]
fn containerd2_task_socket_is_for_root_only() -> Result<()> {
    let env = Env::start(Flavor::Containerd2)?;
    let id = unique_id("socket-mode");
    env.run_detached(&[], &id, &["sleep", "60"])?;
    let result = (|| -> Result<()> {
        let pids = env.shim_pids()?;
        let mut sockets = Vec::new();
        for pid in pids {
            let raw = fs::read(format!("/proc/{pid}/cmdline"))?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if let Some(i) = args.iter().position(|a| a == "-socket") {
                let addr = args.get(i + 1).context("-socket without a value")?;
                sockets.push(PathBuf::from(addr.trim_start_matches("unix://")));
            }
        }
        ensure!(!sockets.is_empty(), "no shim server with -socket found");
        for socket in sockets {
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&socket)?.permissions());
            ensure!(
                mode & 0o777 == 0o600,
                "{} has mode {:o}, not 0600",
                socket.display(),
                mode & 0o777
            );
        }
        Ok(())
    })();
    env.kill_and_remove(&id)?;
    result
}

// ---------------------------------------------------------------------------------------------
// 6. `-info`.
// ---------------------------------------------------------------------------------------------

/// One field of a protobuf message: its number and, for length-delimited fields, the bytes.
struct Field<'a> {
    number: u64,
    bytes: Option<&'a [u8]>,
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf
            .get(*pos)
            .ok_or_else(|| anyhow!("protobuf varint runs past the end"))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("protobuf varint longer than 10 bytes")
}

/// The top-level fields of a protobuf message (wire types 0, 1, 2, 5).
fn protobuf_fields(buf: &[u8]) -> Result<Vec<Field<'_>>> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos)?;
        let (number, wire) = (key >> 3, key & 7);
        let bytes = match wire {
            0 => {
                read_varint(buf, &mut pos)?;
                None
            }
            1 => {
                pos += 8;
                None
            }
            2 => {
                let len = usize::try_from(read_varint(buf, &mut pos)?)?;
                let bytes = buf
                    .get(pos..pos + len)
                    .ok_or_else(|| anyhow!("field {number} runs past the end"))?;
                pos += len;
                Some(bytes)
            }
            5 => {
                pos += 4;
                None
            }
            other => bail!("unsupported protobuf wire type {other} (field {number})"),
        };
        ensure!(pos <= buf.len(), "field {number} runs past the end");
        fields.push(Field { number, bytes });
    }
    Ok(fields)
}

fn bytes_field<'a>(fields: &[Field<'a>], number: u64, what: &str) -> Result<&'a [u8]> {
    fields
        .iter()
        .find(|f| f.number == number)
        .and_then(|f| f.bytes)
        .ok_or_else(|| anyhow!("no {what} (field {number})"))
}

/// The features document `-info` prints, run with the extra environment `envs`.
fn info_features(envs: &[(&str, &Path)]) -> Result<Value> {
    let shim = shim_binary()?;
    let out = Command::new(&shim)
        .arg("-info")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} -info", shim.display()))?;
    ensure!(
        out.status.success(),
        "{} -info failed: {}\n{}",
        shim.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // RuntimeInfo { name = 1; version = 2; options = 3; features = 4 (Any) }.
    let info = protobuf_fields(&out.stdout).context("-info output is not a protobuf message")?;
    let name = bytes_field(&info, 1, "RuntimeInfo.name")?;
    assert_eq!(std::str::from_utf8(name)?, RUNTIME, "RuntimeInfo.name");
    let features = protobuf_fields(bytes_field(&info, 4, "RuntimeInfo.features")?)?;
    let type_url = bytes_field(&features, 1, "features.type_url")?;
    assert_eq!(
        std::str::from_utf8(type_url)?,
        "types.containerd.io/opencontainers/runtime-spec/1/features/Features",
        "features type URL"
    );
    serde_json::from_slice(bytes_field(&features, 2, "features.value")?)
        .context("features value is not JSON")
}

#[test]
fn info_advertises_user_namespaces_and_idmap() -> Result<()> {
    require_root()?;
    let body = info_features(&[])?;
    let namespaces: Vec<&str> = body["linux"]["namespaces"]
        .as_array()
        .ok_or_else(|| anyhow!("features have no linux.namespaces: {body}"))?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        namespaces.contains(&"user"),
        "linux.namespaces lacks user: {namespaces:?}"
    );
    assert_eq!(
        body["linux"]["mountExtensions"]["idmap"]["enabled"],
        json!(true),
        "linux.mountExtensions.idmap.enabled in {body}"
    );
    let options = body["mountOptions"]
        .as_array()
        .ok_or_else(|| anyhow!("features have no mountOptions: {body}"))?;
    for o in ["rro", "rnosuid", "rnodev", "rnoexec", "ridmap"] {
        ensure!(
            options.contains(&json!(o)),
            "mountOptions lacks {o}: {options:?}"
        );
    }
    Ok(())
}

/// `-info` probes what the shim really does (an overlay over an idmapped layer, in its temp
/// dir) rather than assuming: where that cannot work (a ramfs refuses idmapped mounts) it says
/// idmap is disabled, so containerd never sends a spec the shim cannot run. The probe leaves
/// nothing: no mount (it runs in a mount namespace of its own) and no directory.
#[test]
fn info_reports_idmap_only_where_the_probe_succeeds() -> Result<()> {
    require_root()?;
    let dir = tempfile::tempdir()?;
    let ram = HostMount::new("ramfs", &dir.path().join("ramfs"), "mode=0755")?;
    let body = info_features(&[("TMPDIR", ram.path())])?;
    assert_eq!(
        body["linux"]["mountExtensions"]["idmap"]["enabled"],
        json!(false),
        "linux.mountExtensions.idmap.enabled with the temp dir on a ramfs in {body}"
    );
    let left: Vec<_> = fs::read_dir(ram.path())?.collect::<Result<_, _>>()?;
    ensure!(left.is_empty(), "the probe left {left:?} in its temp dir");
    ensure!(
        mounts_under(dir.path())?.len() == 1,
        "the probe left mounts: {:?}",
        mounts_under(dir.path())?
    );
    Ok(())
}

/// `-info` reports seccomp as the shim applies it, with runc's `features` field names: enabled,
/// the actions (each one the kernel has, SCMP_ACT_NOTIFY not among them), every operator, the
/// architectures a filter tells apart here, the known flags, and the flags the kernel takes
/// (all three since Linux 4.17; WAIT_KILLABLE_RECV is known but refused without notify).
#[test]
fn info_reports_seccomp_as_the_shim_applies_it() -> Result<()> {
    require_root()?;
    let body = info_features(&[])?;
    let seccomp = &body["linux"]["seccomp"];
    let list = |key: &str| -> Vec<String> {
        seccomp[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    };
    assert_eq!(seccomp["enabled"], json!(true), "linux.seccomp in {body}");
    let actions = list("actions");
    assert_eq!(
        actions,
        [
            "SCMP_ACT_ALLOW",
            "SCMP_ACT_ERRNO",
            "SCMP_ACT_KILL",
            "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_KILL_THREAD",
            "SCMP_ACT_LOG",
            "SCMP_ACT_TRACE",
            "SCMP_ACT_TRAP"
        ],
        "linux.seccomp.actions"
    );
    let avail = fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
        .context("read /proc/sys/kernel/seccomp/actions_avail")?;
    for action in &actions {
        let kernel = match action.as_str() {
            "SCMP_ACT_KILL" => "kill_thread",
            other => other.trim_start_matches("SCMP_ACT_"),
        }
        .to_lowercase();
        ensure!(
            avail.split_whitespace().any(|a| a == kernel),
            "{action} is advertised but the kernel's actions are {avail:?}"
        );
    }
    assert_eq!(
        list("operators"),
        [
            "SCMP_CMP_EQ",
            "SCMP_CMP_GE",
            "SCMP_CMP_GT",
            "SCMP_CMP_LE",
            "SCMP_CMP_LT",
            "SCMP_CMP_MASKED_EQ",
            "SCMP_CMP_NE"
        ],
        "linux.seccomp.operators"
    );
    if std::env::consts::ARCH == "x86_64" {
        assert_eq!(
            list("archs"),
            ["SCMP_ARCH_X32", "SCMP_ARCH_X86", "SCMP_ARCH_X86_64"],
            "linux.seccomp.archs"
        );
    }
    assert_eq!(
        list("knownFlags"),
        [
            "SECCOMP_FILTER_FLAG_TSYNC",
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
            "SECCOMP_FILTER_FLAG_LOG",
            "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"
        ],
        "linux.seccomp.knownFlags"
    );
    assert_eq!(
        list("supportedFlags"),
        [
            "SECCOMP_FILTER_FLAG_TSYNC",
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
            "SECCOMP_FILTER_FLAG_LOG"
        ],
        "linux.seccomp.supportedFlags on Linux {}",
        fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()
    );
    Ok(())
}

/// `linux.sysctl` keys the kernel does not namespace (or whose namespace the container shares
/// with the host, or written as paths) are refused naming the key, and the host's value stays;
/// a namespaced key in the container's own namespace is applied inside it, as runc does.
fn sysctls_stay_in_the_containers_namespaces(flavor: Flavor) -> Result<()> {
    let env = Env::start(flavor)?;
    let rootfs = env.dir().join("rootfs-sysctl");
    unpack_busybox(&rootfs)?;
    let swappiness = || fs::read_to_string("/proc/sys/vm/swappiness");
    let host_swappiness = swappiness()?;
    let forced = if host_swappiness.trim() == "7" {
        "8"
    } else {
        "7"
    };

    let refused: [(&str, Value, &str); 3] = [
        (
            "a host-wide key",
            json!({ "vm.swappiness": forced }),
            "linux.sysctl \"vm.swappiness\": not namespaced by the kernel",
        ),
        (
            "a key written as a path",
            json!({ "/proc/sys/vm/swappiness": forced }),
            "linux.sysctl \"/proc/sys/vm/swappiness\": not a sysctl name",
        ),
        (
            "a network key without a network namespace",
            json!({ "net.ipv4.ip_forward": "1" }),
            "linux.sysctl \"net.ipv4.ip_forward\": belongs to the network namespace",
        ),
    ];
    for (what, sysctl, message) in refused {
        let id = unique_id("sysctl");
        let mut spec = env.base_spec(&id, &rootfs, "echo must-not-run")?;
        spec["linux"]["sysctl"] = sysctl;
        if what.contains("without a network namespace") {
            let namespaces = spec["linux"]["namespaces"]
                .as_array_mut()
                .ok_or_else(|| anyhow!("spec has no linux.namespaces"))?;
            namespaces.retain(|n| n["type"] != "network");
        }
        let run = env.create_and_start(&id, &spec)?;
        ensure!(
            !run.status.success() && !run.stdout.contains("must-not-run"),
            "{flavor}: {what}: the task ran: {}\n{}",
            run.status,
            run.stdout
        );
        ensure!(
            run.stderr.contains(message),
            "{flavor}: {what}: stderr must say `{message}`:\n{}",
            run.stderr
        );
        assert_eq!(
            swappiness()?,
            host_swappiness,
            "{flavor}: {what}: the host's vm.swappiness changed"
        );
        env.assert_no_shim(&format!("the refused create of {what}"))?;
    }

    let id = unique_id("sysctl-ok");
    let mut spec = env.base_spec(&id, &rootfs, "cat /proc/sys/net/ipv4/ip_forward")?;
    spec["linux"]["sysctl"] = json!({ "net.ipv4.ip_forward": "1" });
    let out = run_lines(&env, &id, &spec, "namespaced sysctl", 1)?;
    assert_eq!(
        out,
        ["1"],
        "{flavor}: net.ipv4.ip_forward inside the container"
    );
    Ok(())
}

#[test]
fn containerd16_sysctls_stay_in_the_containers_namespaces() -> Result<()> {
    sysctls_stay_in_the_containers_namespaces(Flavor::Containerd16)
}

#[test]
fn containerd2_sysctls_stay_in_the_containers_namespaces() -> Result<()> {
    sysctls_stay_in_the_containers_namespaces(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 5. More user namespace shapes: several ranges, a joined namespace, a parentless snapshot.
// ---------------------------------------------------------------------------------------------

/// root.path containers with a two-range mapping, then joining the user namespace of a running
/// container (with and without the mappings repeated in the spec, as CRI pods do).
fn multi_range_and_joined_namespaces(flavor: Flavor) -> Result<()> {
    let env = Env::start(flavor)?;
    let rootfs = env.dir().join("rootfs-shapes");
    unpack_busybox(&rootfs)?;

    // Two ranges: container 0..1000 at host 100000, 1000.. at host 300000.
    let id = unique_id("multirange");
    let mut spec = env.base_spec(&id, &rootfs, ROOT_PATH_SCRIPT)?;
    add_user_namespace(&mut spec)?;
    let ranges = json!([
        { "containerID": 0, "hostID": 100000, "size": 1000 },
        { "containerID": 1000, "hostID": 300000, "size": 64536 }
    ]);
    spec["linux"]["uidMappings"] = ranges.clone();
    spec["linux"]["gidMappings"] = ranges;
    let out = run_lines(&env, &id, &spec, "two-range mapping", 5)?;
    assert_eq!(
        out[..4],
        ["0 100000 1000", "1000 300000 64536", "0:0", "1000:1000"],
        "{flavor}: two-range mapping"
    );

    // A container whose user namespace others join (containerd 1.6 chowns a copy for --uidmap,
    // 2.x idmaps it: either way a namespace with 0 100000 65536).
    let holder = unique_id("holder");
    let mut holder_opts = vec!["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];
    if flavor == Flavor::Containerd2 {
        holder_opts.push("--remap-labels");
    }
    let holder_pid = env.run_detached(&holder_opts, &holder, &["/bin/sleep", "1000"])?;
    let holder_ns = fs::read_link(format!("/proc/{holder_pid}/ns/user"))?;
    let ns_path = format!("/proc/{holder_pid}/ns/user");
    let script = "cat /proc/self/uid_map; stat -c %u:%g /data/root-file /data/app-file; readlink /proc/self/ns/user";
    for repeat_mappings in [false, true] {
        let id = unique_id("joiner");
        let mut spec = env.base_spec(&id, &rootfs, script)?;
        spec["linux"]["namespaces"]
            .as_array_mut()
            .ok_or_else(|| anyhow!("spec has no linux.namespaces array"))?
            .push(json!({ "type": "user", "path": ns_path }));
        if repeat_mappings {
            set_mapping(&mut spec, 100000, 65536);
        }
        let what = format!("joined user namespace (mappings in spec: {repeat_mappings})");
        let out = run_lines(&env, &id, &spec, &what, 4)?;
        assert_eq!(
            out[..3],
            ["0 100000 65536", "0:0", "1000:1000"],
            "{flavor}: {what}"
        );
        assert_eq!(
            out[3],
            holder_ns.to_string_lossy(),
            "{flavor}: {what}: the container must be in the holder's user namespace"
        );
    }
    env.kill_and_remove(&holder)?;
    let left = mounts_under(env.dir())?;
    ensure!(left.is_empty(), "{flavor}: mounts left: {left:?}");
    env.assert_no_shim("multi-range and joined containers")?;
    Ok(())
}

#[test]
fn containerd16_multi_range_and_joined_user_namespaces() -> Result<()> {
    multi_range_and_joined_namespaces(Flavor::Containerd16)
}

#[test]
fn containerd2_multi_range_and_joined_user_namespaces() -> Result<()> {
    multi_range_and_joined_namespaces(Flavor::Containerd2)
}

/// Writes an OCI archive of an image without layers: its container's active snapshot has no
/// parent, so containerd 2.x's overlay snapshotter hands it over as a single bind mount.
fn empty_image(dir: &Path, name: &str) -> Result<PathBuf> {
    let layout = dir.join("empty-image");
    fs::create_dir_all(layout.join("blobs/sha256"))?;
    let blob = |bytes: &[u8]| -> Result<(String, usize)> {
        let tmp = layout.join("blob.tmp");
        fs::write(&tmp, bytes)?;
        let out = Command::new("sha256sum").arg(&tmp).output()?;
        ensure!(out.status.success(), "sha256sum failed");
        let digest = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .context("sha256sum printed nothing")?
            .to_string();
        fs::rename(&tmp, layout.join("blobs/sha256").join(&digest))?;
        Ok((digest, bytes.len()))
    };
    let config = json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": { "type": "layers", "diff_ids": [] }
    });
    let (config_digest, config_size) = blob(&serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"), "size": config_size
        },
        "layers": []
    });
    let (manifest_digest, manifest_size) = blob(&serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
            "annotations": { "io.containerd.image.name": name, "org.opencontainers.image.ref.name": "empty" }
        }]
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let archive = dir.join("empty-image.tar");
    run_tool(
        Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout)
            .arg("."),
    )?;
    Ok(archive)
}

#[test]
fn containerd2_parentless_snapshot_bind_is_used_as_chowned() -> Result<()> {
    let env = Env::start(Flavor::Containerd2)?;
    let name = "docker.io/library/empty:usernsrs";
    let archive = empty_image(env.dir(), name)?;
    env.ctr_ok(&["images", "import", &archive.to_string_lossy()])?;
    let id = unique_id("parentless");
    let fifo = env.fifo_dir();
    let busybox = "type=bind,src=/bin/busybox,dst=/busybox,options=rbind:ro";
    let script = "/busybox cat /proc/self/uid_map; /busybox stat -c %u:%g /; \
                  /busybox touch /written; /busybox stat -c %u:%g /written";
    let mut args = env.run_args(
        &fifo,
        &[
            "--uidmap",
            "0:100000:65536",
            "--gidmap",
            "0:100000:65536",
            "--remap-labels",
        ],
    );
    args.extend([
        "--mount", busybox, name, &id, "/busybox", "sh", "-c", script,
    ]);
    let out = env.ctr(&args)?;
    ensure!(
        out.status.success(),
        "ctr run of the empty image failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lines(&String::from_utf8_lossy(&out.stdout)),
        ["0 100000 65536", "0:0", "0:0"],
        "a parentless snapshot (bind with uidmap=) seen from inside"
    );
    // The snapshotter chowned the directory to the mapped root; the shim used it as it is, so
    // the container's write is stored with its host id, as in an overlay's upper dir.
    let snapshots = env.dir().join("root").join(SNAPSHOTS);
    let written: Vec<PathBuf> = fs::read_dir(&snapshots)?
        .filter_map(|e| Some(e.ok()?.path().join("fs/written")))
        .filter(|p| p.exists())
        .collect();
    let [file] = &written[..] else {
        bail!("expected the container's write in one snapshot, found {written:?}")
    };
    assert_eq!(owner(file)?, (100000, 100000), "the write on disk");
    env.ctr_ok(&["containers", "rm", &id])?;
    // containerd removes the snapshot in its garbage collection, shortly after.
    let deadline = Instant::now() + SETTLE;
    while file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        !file.exists(),
        "the snapshot outlived its container: {}",
        file.display()
    );
    let left = mounts_under(env.dir())?;
    ensure!(left.is_empty(), "mounts left: {left:?}");
    env.assert_no_shim("the parentless snapshot container")?;
    Ok(())
}

/// Two containers of one pod (same `io.kubernetes.cri.sandbox-id`) share one shim server; the
/// server ignores Shutdown while a container remains and exits after the last Delete.
fn pod_containers_share_one_shim(flavor: Flavor) -> Result<()> {
    let env = Env::start(flavor)?;
    let rootfs = env.dir().join("rootfs-pod");
    unpack_busybox(&rootfs)?;
    let pod = unique_id("pod");
    let fifo = env.fifo_dir();
    let ids = [unique_id("pod-a"), unique_id("pod-b")];
    for id in &ids {
        let mut spec = env.base_spec(id, &rootfs, "exec sleep 1000")?;
        add_user_namespace(&mut spec)?;
        set_mapping(&mut spec, 100000, 65536);
        spec["annotations"] = json!({ "io.kubernetes.cri.sandbox-id": pod });
        let config = env.dir().join(format!("config-{id}.json"));
        fs::write(&config, serde_json::to_vec_pretty(&spec)?)?;
        env.ctr_ok(&[
            "containers",
            "create",
            "--runtime",
            RUNTIME,
            "--config",
            &config.to_string_lossy(),
            id,
        ])?;
        env.ctr_ok(&["task", "start", "-d", "--fifo-dir", &fifo, id])?;
        env.wait_task(id, "RUNNING")?;
    }
    let servers = env.shim_pids()?;
    ensure!(
        servers.len() == 1,
        "{flavor}: two containers of pod {pod} must share one shim server, found {servers:?}"
    );
    env.kill_and_remove(&ids[0])?;
    // containerd sent Shutdown after the first Delete: the server must still serve the second.
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        env.shim_pids()? == servers,
        "{flavor}: the shared server went away while {} still runs",
        ids[1]
    );
    env.wait_task(&ids[1], "RUNNING")?;
    env.kill_and_remove(&ids[1])?;
    env.assert_no_shim("the last container of the pod")?;
    let left = mounts_under(env.dir())?;
    ensure!(left.is_empty(), "{flavor}: mounts left: {left:?}");
    Ok(())
}

#[test]
fn containerd16_pod_containers_share_one_shim() -> Result<()> {
    pod_containers_share_one_shim(Flavor::Containerd16)
}

#[test]
fn containerd2_pod_containers_share_one_shim() -> Result<()> {
    pod_containers_share_one_shim(Flavor::Containerd2)
}

/// containerd receives TaskCreate, TaskStart, TaskExit, TaskDelete for a container, in that
/// order, with the exit status in TaskExit and TaskDelete (read from `ctr events`).
fn events_arrive_in_order(flavor: Flavor) -> Result<()> {
    let env = Env::start(flavor)?;
    let address = env.containerd.address().to_string_lossy().into_owned();
    let ctr_bin = env.containerd.ctr_binary().to_path_buf();
    let log = env.dir().join("events.log");
    let mut events = Command::new(&ctr_bin)
        .args(["--address", &address, "events"])
        .stdout(fs::File::create(&log)?)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {} events", ctr_bin.display()))?;
    std::thread::sleep(Duration::from_millis(300));
    let id = unique_id("events");
    let out = env.run(&[], &id, &["/bin/sh", "-c", "exit 7"]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = events.kill();
    let _ = events.wait();
    let out = out?;
    assert_eq!(
        out.status.code(),
        Some(7),
        "{flavor}: exit status through ctr run"
    );
    let text = fs::read_to_string(&log)?;
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("\"container_id\":\"{id}\"")))
        .collect();
    let topics: Vec<&str> = ours
        .iter()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
        .collect();
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{flavor}: task events of {id}:\n{text}"
    );
    for line in ours
        .iter()
        .filter(|l| l.contains("/tasks/exit") || l.contains("/tasks/delete"))
    {
        ensure!(
            line.contains("\"exit_status\":7"),
            "{flavor}: no exit status 7 in {line}"
        );
    }
    Ok(())
}

#[test]
fn containerd16_events_arrive_in_order() -> Result<()> {
    events_arrive_in_order(Flavor::Containerd16)
}

#[test]
fn containerd2_events_arrive_in_order() -> Result<()> {
    events_arrive_in_order(Flavor::Containerd2)
}

/// The one RPC the shim does not implement, Checkpoint, answers so by name instead of pretending.
fn unimplemented_rpcs_say_so(flavor: Flavor) -> Result<()> {
    let env = Env::start(flavor)?;
    let id = unique_id("unimpl");
    env.run_detached(&[], &id, &["/bin/sleep", "1000"])?;
    // containerd pauses the task (which works), asks for the checkpoint, and resumes it.
    let out = env.ctr(&["task", "checkpoint", id.as_str()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("usernsrs: Checkpoint is not implemented yet"),
        "{flavor}: ctr task checkpoint should fail naming Checkpoint: {}\n{stderr}",
        out.status
    );
    env.wait_task(&id, "RUNNING")?;
    env.kill_and_remove(&id)?;
    env.assert_no_shim("the unimplemented RPCs")?;
    Ok(())
}

#[test]
fn containerd16_unimplemented_rpcs_say_so() -> Result<()> {
    unimplemented_rpcs_say_so(Flavor::Containerd16)
}

#[test]
fn containerd2_unimplemented_rpcs_say_so() -> Result<()> {
    unimplemented_rpcs_say_so(Flavor::Containerd2)
}

/// `check`, the operator's pre-flight report, run for real: on this kernel every probe works
/// (an idmapped tmpfs only from 6.3, where the report must say so and fail), a ramfs path fails
/// naming the way out, containerd lines get the configuration that works on them, and the run
/// leaves the host's mount table and temp dir as they were.
#[test]
fn check_reports_what_works_and_changes_nothing() -> Result<()> {
    require_root()?;
    let cache = std::env::var_os("USERNSRS_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/usernsrs"), PathBuf::from);
    let dir = tempfile::tempdir()?;
    let ram = HostMount::new("ramfs", &dir.path().join("ramfs"), "mode=0755")?;
    let run = |args: &[&std::ffi::OsStr]| -> Result<(i32, Value)> {
        let out = Command::new(shim_binary()?)
            .arg("check")
            .arg("--json")
            .args(args)
            .output()?;
        let body: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "check printed no JSON: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((out.status.code().unwrap_or(-1), body))
    };
    let status_of = |body: &Value, name: &str| -> Result<(String, Value)> {
        let line = body["checks"]
            .as_array()
            .context("no checks")?
            .iter()
            .find(|c| {
                c["name"]
                    .as_str()
                    .is_some_and(|n| n == name || n.ends_with(name))
            })
            .with_context(|| format!("no line {name} in {body}"))?;
        Ok((
            line["status"].as_str().unwrap_or_default().to_string(),
            line.clone(),
        ))
    };
    let before = mountinfo_lines()?;
    let tmpfs_ok = common::kernel_at_least(6, 3)?;

    let c24 = cache.join("containerd-v2.4.2/bin/containerd");
    let (code, body) = run(&[
        "--containerd".as_ref(),
        c24.as_os_str(),
        dir.path().as_os_str(),
    ])?;
    for name in [
        "user namespaces",
        "idmapped mounts",
        "overlayfs over idmapped layers",
        "device rules",
    ] {
        let (status, line) = status_of(&body, name)?;
        ensure!(status == "ok", "check: {name} must be ok here: {line}");
    }
    let (status, line) = status_of(&body, "idmapped tmpfs")?;
    ensure!(
        (status == "ok") == tmpfs_ok,
        "check: idmapped tmpfs must be {} on this kernel: {line}",
        if tmpfs_ok { "ok" } else { "fail" }
    );
    let (status, line) = status_of(&body, &dir.path().display().to_string())?;
    ensure!(
        status == "ok",
        "check: the temp dir must be idmappable: {line}"
    );
    let (status, line) = status_of(&body, "v2.4.2/bin/containerd")?;
    ensure!(
        status == "ok"
            && line["detail"]
                .as_str()
                .is_some_and(|d| d.contains("io.containerd.usernsrs.v2")),
        "check: containerd 2.4.2 gets runtime_type usernsrs: {line}"
    );
    ensure!(
        code == i32::from(!tmpfs_ok) && body["ready"] == json!(tmpfs_ok),
        "check: exit {code}, ready {} on a kernel {} idmapped tmpfs",
        body["ready"],
        if tmpfs_ok { "with" } else { "without" }
    );

    let c20 = cache.join("containerd-v2.0.14/bin/containerd");
    let (code, body) = run(&[
        "--containerd".as_ref(),
        c20.as_os_str(),
        ram.path().as_os_str(),
    ])?;
    let (status, line) = status_of(&body, &ram.path().display().to_string())?;
    ensure!(
        status == "fail"
            && line["detail"].as_str().is_some_and(|d| d.contains("ramfs"))
            && line["way_out"]
                .as_str()
                .is_some_and(|w| w.contains("slow_chown")),
        "check: a ramfs path must fail naming ramfs and slow_chown: {line}"
    );
    let (status, line) = status_of(&body, "v2.0.14/bin/containerd")?;
    ensure!(
        status == "ok"
            && line["detail"]
                .as_str()
                .is_some_and(|d| d.contains("runtime_path")),
        "check: containerd 2.0.14 needs runc's type with runtime_path: {line}"
    );
    ensure!(
        code == 1 && body["ready"] == json!(false),
        "check: a failed line must give exit 1"
    );

    let (code, body) = run(&["--containerd".as_ref(), "/usr/bin/containerd".as_ref()])?;
    let (status, line) = status_of(&body, "/usr/bin/containerd")?;
    ensure!(
        status == "fail" && code == 1,
        "check: Debian's containerd 1.6 has no CRI user namespaces: {line}"
    );

    // What check could have mounted: its scratch dir, or the paths it was given (other work on
    // the machine may mount elsewhere meanwhile).
    let dir_text = dir.path().to_string_lossy().into_owned();
    let ours = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .filter(|l| l.contains("usernsrs-check-") || l.contains(&dir_text))
            .collect()
    };
    let (before, after) = (ours(before), ours(mountinfo_lines()?));
    ensure!(
        before == after,
        "check changed the host's mount table: before {before:?}, after {after:?}"
    );
    let left: Vec<_> = fs::read_dir(std::env::temp_dir())?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("usernsrs-check-")
        })
        .map(|e| e.path())
        .collect();
    ensure!(left.is_empty(), "check left {left:?}");
    Ok(())
}
