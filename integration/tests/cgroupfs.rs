//! What a container sees at `/sys/fs/cgroup`, through containerd, with and without a user
//! namespace and a cgroup namespace: its own cgroups only, read-only as the spec's `ro` says.
//!
//! On a v1 or hybrid host (this project's machines) that is a tmpfs with one read-only bind per
//! host hierarchy, each rooted at the container's cgroup (runc's layout). On a pure v2 host (the
//! VMs) it is a cgroup2 mount rooted at the container's cgroup: its own cgroup namespace's
//! mount, or a bind of its own directory where a user namespace has no cgroup namespace. Once
//! the host's whole tree was bound read-write into user-namespaced containers, every other
//! container's cgroup visible, and containers without one got the host's cgroup2 root.
//!
//! The limit set in the spec (memory 64 MiB, pids 77) is read back through /sys/fs/cgroup: only
//! the container's own cgroup has those values.

mod common;

use anyhow::{ensure, Context, Result};
use usernsrs_integration::Flavor;

use common::{add_user_namespace, set_mapping, unique_id, unpack_busybox, Env};

const NS: &str = "cgroupfs-test";
const MEMORY: u64 = 64 << 20;
const PIDS: u64 = 77;

fn host_is_unified() -> Result<bool> {
    let st = nix::sys::statfs::statfs("/sys/fs/cgroup").context("statfs /sys/fs/cgroup")?;
    Ok(st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The host's hierarchies under /sys/fs/cgroup (directory names of its cgroup mounts).
fn host_hierarchies() -> Result<Vec<String>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut names: Vec<String> = usernsrs_runtime_core::mountinfo::parse(&info)?
        .into_iter()
        .filter(|m| m.fstype.starts_with("cgroup"))
        .filter_map(|m| {
            let parent = m.mount_point.parent()?;
            (parent == std::path::Path::new("/sys/fs/cgroup"))
                .then(|| m.mount_point.file_name()?.to_str().map(str::to_string))?
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The probe: mountinfo lines of /sys/fs/cgroup, the limits read through it, and a write.
const PROBE: &str = "\
grep -E ' /sys(/fs/cgroup[^ ]*)? ' /proc/self/mountinfo | sed 's/^/mnt /'; \
for f in /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max; do \
  [ -e $f ] && echo mem $(cat $f); done; \
for f in /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max; do \
  [ -e $f ] && echo pids $(cat $f); done; \
ls /sys/fs/cgroup | sed 's/^/entry /'; \
if mkdir /sys/fs/cgroup/usernsrs-probe 2>/dev/null || mkdir /sys/fs/cgroup/pids/usernsrs-probe 2>/dev/null; \
  then echo writable; else echo read-only; fi";

fn sees_only_its_own_cgroups(flavor: Flavor, userns: bool, cgroupns: bool) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs");
    unpack_busybox(&rootfs)?;
    let id = unique_id("cgroupfs");
    let mut spec = env.base_spec(&id, &rootfs, PROBE)?;
    if userns {
        add_user_namespace(&mut spec)?;
        set_mapping(&mut spec, 100_000, 65_536);
    }
    let namespaces = spec["linux"]["namespaces"]
        .as_array_mut()
        .context("spec has linux.namespaces")?;
    namespaces.retain(|n| n["type"] != "cgroup");
    if cgroupns {
        namespaces.push(serde_json::json!({"type": "cgroup"}));
    }
    // The mount CRI puts in every container's spec (ctr's default spec has none).
    spec["mounts"]
        .as_array_mut()
        .context("spec has mounts")?
        .push(serde_json::json!({
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        }));
    spec["linux"]["resources"]["memory"] = serde_json::json!({ "limit": MEMORY });
    spec["linux"]["resources"]["pids"] = serde_json::json!({ "limit": PIDS });
    let what = format!("{flavor} userns={userns} cgroupns={cgroupns}");
    let run = env.create_and_start(&id, &spec)?;
    ensure!(
        run.status.success(),
        "{what}: the probe failed: {}\nstdout {}\nstderr {}",
        run.status,
        run.stdout,
        run.stderr
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    let mounts: Vec<Vec<&str>> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("mnt "))
        .map(|l| l.split(' ').collect())
        .collect();
    let cgroup = format!("/{NS}/{id}");
    ensure!(
        lines.contains(&format!("mem {MEMORY}").as_str())
            && lines.contains(&format!("pids {PIDS}").as_str()),
        "{what}: /sys/fs/cgroup must show the container's own limits (memory {MEMORY}, pids \
         {PIDS}):\n{}",
        run.stdout
    );
    ensure!(
        lines.contains(&"read-only"),
        "{what}: /sys/fs/cgroup must be read-only (the spec says ro):\n{}",
        run.stdout
    );
    // Every mount the container can reach at or under /sys/fs/cgroup is read-only (one that a
    // later mount at or above its point hides does not count: a host bind of /sys brings the
    // host's, under the container's own).
    let visible: Vec<&Vec<&str>> = mounts
        .iter()
        .enumerate()
        .filter(|(i, m)| {
            let point = std::path::Path::new(m.get(4).copied().unwrap_or_default());
            !mounts[i + 1..].iter().any(|later| {
                let later = std::path::Path::new(later.get(4).copied().unwrap_or_default());
                later != std::path::Path::new("/sys") && point.starts_with(later)
            })
        })
        .map(|(_, m)| m)
        .filter(|m| m.get(4).is_some_and(|p| p.starts_with("/sys/fs/cgroup")))
        .collect();
    for m in &visible {
        ensure!(
            m.get(5).is_some_and(|o| o.split(',').any(|f| f == "ro")),
            "{what}: {} is not mounted read-only: {m:?}\n{}",
            m.get(4).unwrap_or(&"?"),
            run.stdout
        );
    }
    if host_is_unified()? {
        let top: Vec<&Vec<&str>> = mounts
            .iter()
            .filter(|m| m.get(4) == Some(&"/sys/fs/cgroup"))
            .collect();
        let last = top.last().context("no mount at /sys/fs/cgroup")?;
        // A cgroup2 mount in its own namespace is rooted at "/" of that namespace; a bind of
        // the container's directory shows the directory as its root.
        let root = last.get(3).copied().unwrap_or_default();
        ensure!(
            root == cgroup || (cgroupns && root == "/"),
            "{what}: /sys/fs/cgroup must be rooted at the container's cgroup {cgroup}: {last:?}"
        );
    } else {
        let want = host_hierarchies()?;
        let entries: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("entry "))
            .collect();
        for h in &want {
            ensure!(
                entries.contains(&h.as_str()),
                "{what}: /sys/fs/cgroup lacks the host's hierarchy {h}: {entries:?}"
            );
            let point = format!("/sys/fs/cgroup/{h}");
            let m = mounts
                .iter()
                .rfind(|m| m.get(4) == Some(&point.as_str()))
                .with_context(|| format!("{what}: nothing mounted at {point}:\n{}", run.stdout))?;
            // In a cgroup namespace mountinfo shows cgroup roots relative to it.
            let root = m.get(3).copied().unwrap_or_default();
            ensure!(
                root == cgroup || (cgroupns && root == "/"),
                "{what}: {point} must be the container's cgroup {cgroup}, it is rooted at {:?}",
                m.get(3)
            );
        }
        let top = mounts
            .iter()
            .rfind(|m| m.get(4) == Some(&"/sys/fs/cgroup"))
            .context("nothing at /sys/fs/cgroup")?;
        let fstype = top.iter().skip_while(|f| **f != "-").nth(1);
        ensure!(
            fstype == Some(&"tmpfs"),
            "{what}: /sys/fs/cgroup must be a tmpfs of its own: {top:?}"
        );
    }
    Ok(())
}

fn own_cgroups_in_every_combination(flavor: Flavor) -> Result<()> {
    for (userns, cgroupns) in [(false, false), (true, false), (true, true), (false, true)] {
        sees_only_its_own_cgroups(flavor, userns, cgroupns)?;
    }
    Ok(())
}

#[test]
fn containerd16_sys_fs_cgroup_shows_only_the_containers_own_cgroups() -> Result<()> {
    own_cgroups_in_every_combination(Flavor::Containerd16)
}

#[test]
fn containerd2_sys_fs_cgroup_shows_only_the_containers_own_cgroups() -> Result<()> {
    own_cgroups_in_every_combination(Flavor::Containerd2)
}

/// A user namespace without a network namespace may not mount sysfs: the host's /sys is bound
/// instead, and with it the host's submounts (its /sys/fs/cgroup trees among them). All of them
/// are read-only in the container; once only the top was, and the host's cgroup hierarchies
/// were writable under it.
fn host_sys_bound_in_is_read_only_throughout(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs");
    unpack_busybox(&rootfs)?;
    let id = unique_id("sys-bind");
    let mut spec = env.base_spec(
        &id,
        &rootfs,
        "grep -E ' /sys(/[^ ]*)? ' /proc/self/mountinfo; \
         if mkdir /sys/fs/cgroup/pids/usernsrs-probe 2>/dev/null; then echo writable; fi",
    )?;
    add_user_namespace(&mut spec)?;
    set_mapping(&mut spec, 100_000, 65_536);
    spec["linux"]["namespaces"]
        .as_array_mut()
        .context("spec has linux.namespaces")?
        .retain(|n| n["type"] != "network");
    let run = env.create_and_start(&id, &spec)?;
    ensure!(
        run.status.success() && !run.stdout.contains("writable"),
        "{flavor}: the probe failed or the host's cgroup tree was writable: {}\n{}\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    ensure!(
        lines.len() > 1,
        "{flavor}: expected the host's /sys with its submounts:\n{}",
        run.stdout
    );
    for l in lines {
        let opts = l.split(' ').nth(5).unwrap_or_default();
        ensure!(
            opts.split(',').any(|o| o == "ro"),
            "{flavor}: a mount under the bound /sys is writable: {l}"
        );
    }
    Ok(())
}

#[test]
fn containerd16_host_sys_bound_in_is_read_only_throughout() -> Result<()> {
    host_sys_bound_in_is_read_only_throughout(Flavor::Containerd16)
}

#[test]
fn containerd2_host_sys_bound_in_is_read_only_throughout() -> Result<()> {
    host_sys_bound_in_is_read_only_throughout(Flavor::Containerd2)
}
