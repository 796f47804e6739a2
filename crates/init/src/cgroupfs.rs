//! The container's `/sys/fs/cgroup`, from the [`CgroupView`] runtime-core computes: a spec mount
//! of `type: cgroup` shows the container's own cgroups, with the spec's flags (`ro` for CRI and
//! ctr), never the host's trees; `type: cgroup2` is a cgroup2 mount, as runc does it.
//!
//! On a cgroup v2 host a container without a cgroup namespace gets a bind of its own cgroup
//! directory, where runc mounts cgroup2 and so shows the host's root (every other container's
//! cgroup, read-only): the same files for the container, none of its neighbours'.
//!
//! The view is read while the helper is in the container's cgroups but not yet in its cgroup
//! namespace ([`read_view`]). Every mount goes through an fd opened inside the rootfs without
//! following symlinks (procfs-like destinations must be where they are named, CVE-2019-16884).

use crate::mnt::{fd_path, mount_err, remount_flags, sys_mount};
use crate::InitError;
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::symlinkat;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use usernsrs_runtime_core::cgroup_view::{cgroup_view, CgroupView};
use usernsrs_runtime_core::mount_options::flags as mflags;

/// The container's cgroups as the host names them; read before the cgroup namespace.
pub(crate) fn read_view() -> Result<CgroupView, InitError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(InitError::io("read /proc/self/mountinfo"))?;
    let mounts = usernsrs_runtime_core::mountinfo::parse(&info)
        .map_err(|e| InitError::Container(e.to_string()))?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(InitError::io("read /proc/self/cgroup"))?;
    cgroup_view(&mounts, &cgroup, Path::new("/sys/fs/cgroup"))
        .map_err(|e| InitError::Container(format!("the container's /sys/fs/cgroup: {e}")))
}

/// Opens `rel` beneath `dir`, symlinks refused.
fn open_beneath(dir: &impl AsFd, rel: &Path, what: &str) -> Result<OwnedFd, InitError> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS);
    openat2(dir, rel, how).map_err(InitError::sys(format!(
        "open {what} without following symlinks"
    )))
}

/// Binds host directory `source` on `target` (an fd) and applies `flags` (MS_RDONLY...)
/// to the bind; `reopen` opens the target again, to reach the new mount.
fn bind_with(
    source: &Path,
    target: &OwnedFd,
    flags: u64,
    what: &Path,
    reopen: impl Fn() -> Result<OwnedFd, InitError>,
) -> Result<(), InitError> {
    sys_mount(
        Some(source),
        &fd_path(target),
        None,
        mflags::BIND | mflags::REC,
        None,
    )
    .map_err(mount_err(&format!("bind {}", source.display()), what))?;
    let bound = reopen()?;
    remount_flags(&fd_path(&bound), flags & !mflags::REC)
        .map_err(mount_err("remount with the spec's options", what))
}

/// Mounts the view at `dest` (a path in the container; `root` the rootfs fd) for a spec mount of
/// `typ` (`cgroup` or `cgroup2`) with `flags`.
pub(crate) fn mount(
    root: &OwnedFd,
    dest: &Path,
    typ: &str,
    flags: u64,
    view: &CgroupView,
    in_cgroup_ns: bool,
) -> Result<(), InitError> {
    let target = open_beneath(root, dest, &dest.display().to_string())?;
    let reopen = || open_beneath(root, dest, &dest.display().to_string());
    let v2_own = match view {
        CgroupView::Unified { own } => Some(own.as_path()),
        CgroupView::V1 { hierarchies } => hierarchies
            .iter()
            .find(|h| h.name == "unified")
            .map(|h| h.source.as_path()),
    };
    let v1 = match view {
        CgroupView::V1 { hierarchies } if typ == "cgroup" => Some(hierarchies),
        _ => None,
    };
    // Without a cgroup namespace a cgroup2 mount is the host's whole tree: for `type: cgroup`
    // the container's own directory is bound instead (runc mounts the whole tree there).
    if let (None, "cgroup", false, Some(own)) = (v1, typ, in_cgroup_ns, v2_own) {
        return bind_with(own, &target, flags, dest, reopen);
    }
    let Some(hierarchies) = v1 else {
        // cgroup2: its root is the container's cgroup in a cgroup namespace of its own. A user
        // namespace without one may not mount it: the container's own directory, bound, shows
        // the same (runc binds the whole tree there).
        return match sys_mount(
            Some(Path::new("cgroup2")),
            &fd_path(&target),
            Some("cgroup2"),
            flags,
            None,
        ) {
            Ok(()) => Ok(()),
            Err(Errno::EPERM | Errno::EBUSY) => {
                let own = v2_own.ok_or_else(|| {
                    InitError::Container(format!(
                        "mount cgroup2 on {}: refused by the kernel, and the host has no cgroup2 \
                         hierarchy to bind the container's cgroup from",
                        dest.display()
                    ))
                })?;
                bind_with(own, &target, flags, dest, reopen)
            }
            Err(e) => Err(mount_err("cgroup2", dest)(e)),
        };
    };

    // v1 or hybrid: a tmpfs holding one bind per hierarchy, each with the spec's flags; the
    // tmpfs itself read-only last when the spec says so.
    let tmpfs_flags = (flags & (mflags::NOSUID | mflags::NODEV | mflags::NOEXEC))
        | mflags::NOSUID
        | mflags::NODEV
        | mflags::NOEXEC;
    sys_mount(
        Some(Path::new("tmpfs")),
        &fd_path(&target),
        Some("tmpfs"),
        tmpfs_flags,
        Some("mode=755"),
    )
    .map_err(mount_err("tmpfs for the cgroup hierarchies", dest))?;
    let tmpfs = reopen()?;
    for h in hierarchies {
        let at = dest.join(&h.name);
        match mkdirat(&tmpfs, h.name.as_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(InitError::sys(format!("create {}", at.display()))(e)),
        }
        let name = Path::new(&h.name);
        let point = open_beneath(&tmpfs, name, &at.display().to_string())?;
        bind_with(&h.source, &point, flags, &at, || {
            open_beneath(&tmpfs, name, &at.display().to_string())
        })?;
        for alias in &h.aliases {
            match symlinkat(h.name.as_str(), &tmpfs, alias.as_str()) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => {
                    return Err(InitError::sys(format!(
                        "symlink {} -> {}",
                        dest.join(alias).display(),
                        h.name
                    ))(e))
                }
            }
        }
    }
    if flags & mflags::RDONLY != 0 {
        remount_flags(&fd_path(&tmpfs), tmpfs_flags | mflags::RDONLY)
            .map_err(mount_err("read-only remount", dest))?;
    }
    Ok(())
}
