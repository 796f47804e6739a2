//! Mount primitives of the container side: `mount(2)` with raw flags, mount points opened
//! inside the rootfs by the kernel (`openat2` with `RESOLVE_IN_ROOT`), and remounts that keep
//! the flags a user namespace may not clear.
//!
//! A mount point is used through its fd: `mount(2)` is handed `/proc/self/fd/N`, which names
//! the opened file whatever a symlink swapped in afterwards says.

use crate::InitError;
use nix::mount::{mount, MsFlags};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use usernsrs_runtime_core::mount_options::flags as mflags;

pub(crate) fn sys_mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: u64,
    data: Option<&str>,
) -> nix::Result<()> {
    mount(
        source,
        target,
        fstype,
        MsFlags::from_bits_retain(flags as libc::c_ulong),
        data,
    )
}

pub(crate) fn mount_err(what: &str, target: &Path) -> impl FnOnce(nix::Error) -> InitError {
    let what = what.to_string();
    let target = target.to_path_buf();
    move |e| InitError::Mount {
        what,
        target,
        err: e.into(),
    }
}

/// Opens `dest` (a path inside the container) as an `O_PATH` fd with the kernel resolving it
/// inside `root` (RESOLVE_IN_ROOT): even a symlink swapped in after [`crate::container::resolve_in_root`] cannot
/// lead the mount out of the rootfs.
pub(crate) fn open_in_root(root: &OwnedFd, dest: &Path) -> Result<OwnedFd, InitError> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, dest, how).map_err(InitError::sys(format!(
        "open mount point {} in the rootfs",
        dest.display()
    )))
}

/// The mount point `dest` as an `O_PATH` fd resolved inside the rootfs, and the
/// `/proc/self/fd/N` path through which `mount(2)` uses it (it follows that magic link).
pub(crate) fn target_in_root(root: &OwnedFd, dest: &Path) -> Result<(OwnedFd, PathBuf), InitError> {
    let fd = open_in_root(root, dest)?;
    let at = fd_path(&fd);
    Ok((fd, at))
}

/// The path through which `mount(2)` reaches an fd's file (it follows that magic link).
pub(crate) fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The flags of the mount at `path` that a user namespace may not clear (they are locked).
pub(crate) fn locked_flags(path: &Path) -> u64 {
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return 0;
    };
    let f = st.flags();
    use nix::sys::statvfs::FsFlags;
    let mut out = 0;
    for (fs, m) in [
        (FsFlags::ST_NOSUID, mflags::NOSUID),
        (FsFlags::ST_NODEV, mflags::NODEV),
        (FsFlags::ST_NOEXEC, mflags::NOEXEC),
        (FsFlags::ST_RDONLY, mflags::RDONLY),
        (FsFlags::ST_NOATIME, mflags::NOATIME),
        (FsFlags::ST_NODIRATIME, mflags::NODIRATIME),
        (FsFlags::ST_RELATIME, mflags::RELATIME),
    ] {
        if f.contains(fs) {
            out |= m;
        }
    }
    out
}

pub(crate) fn remount_flags(dest: &Path, flags: u64) -> nix::Result<()> {
    let keep = locked_flags(dest) & !mflags::RDONLY;
    sys_mount(
        None,
        dest,
        None,
        mflags::REMOUNT | mflags::BIND | flags | keep,
        None,
    )
}

pub(crate) fn remount_with(dest: &Path, flags: u64) -> Result<(), InitError> {
    remount_flags(dest, flags).map_err(mount_err("remount with options", dest))
}

pub(crate) fn remount_readonly(dest: &Path) -> Result<(), InitError> {
    remount_with(dest, mflags::RDONLY)
}
