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

/// What is mounted at `dest` now (the root of the top mount there), resolved inside `root`; no
/// symlink followed with `no_symlinks`.
pub(crate) fn open_mounted(
    root: &OwnedFd,
    dest: &Path,
    no_symlinks: bool,
) -> Result<OwnedFd, InitError> {
    use nix::fcntl::{openat2, ResolveFlag};
    let mut resolve = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    if no_symlinks {
        resolve |= ResolveFlag::RESOLVE_NO_SYMLINKS;
    }
    openat2(root, dest, open_how(resolve, false)).map_err(InitError::sys(format!(
        "open the mount at {} in the rootfs",
        dest.display()
    )))
}

/// This process's root directory (the container's, after pivot_root), for [`open_mounted`].
pub(crate) fn open_root() -> Result<OwnedFd, InitError> {
    use nix::fcntl::OFlag;
    nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(InitError::sys("open the container's root"))
}

/// The id of the mount `fd` is on (`mnt_id` in /proc/self/fdinfo).
pub(crate) fn mount_id(fd: &impl AsRawFd) -> Result<u64, InitError> {
    let fdinfo = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&fdinfo).map_err(InitError::io(format!("read {fdinfo}")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| InitError::Container(format!("{fdinfo} has no mnt_id")))
}

/// `dest` cleaned lexically: its normal components, `..` dropping the one before (never above
/// the root), `.` and the root dropped.
fn clean(dest: &Path) -> Vec<&std::ffi::OsStr> {
    let mut parts = Vec::new();
    for c in dest.components() {
        match c {
            std::path::Component::Normal(n) => parts.push(n),
            std::path::Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts
}

fn open_how(resolve: nix::fcntl::ResolveFlag, dir: bool) -> nix::fcntl::OpenHow {
    use nix::fcntl::{OFlag, OpenHow};
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if dir {
        flags |= OFlag::O_DIRECTORY;
    }
    OpenHow::new().flags(flags).resolve(resolve)
}

/// Makes the mount point `dest` (a path inside the container) as a directory or an empty file,
/// with its missing parents, and returns it opened `O_PATH`. The part that exists is resolved by
/// the kernel inside `root` (`RESOLVE_IN_ROOT`: no symlink, absolute or relative, leads out of
/// it); what is made here is made with `mkdirat`/`openat` under the fd of its parent and opened
/// without following symlinks. With `no_symlinks` no symlink is followed at all (procfs, sysfs
/// and the like must be where they are named, CVE-2019-16884): ELOOP then. A symlink whose
/// target is missing is followed by hand: its target is resolved inside the root again.
pub(crate) fn create_mount_point(
    root: &OwnedFd,
    dest: &Path,
    dir: bool,
    no_symlinks: bool,
) -> Result<OwnedFd, InitError> {
    create_mount_point_from(root, dest, dir, no_symlinks, 0)
}

/// Symlinks followed by hand on the way to a mount point, at most (the kernel's MAXSYMLINKS).
const MAX_LINKS: usize = 40;

fn create_mount_point_from(
    root: &OwnedFd,
    dest: &Path,
    dir: bool,
    no_symlinks: bool,
    links: usize,
) -> Result<OwnedFd, InitError> {
    use nix::errno::Errno;
    use nix::fcntl::{openat, openat2, OFlag, ResolveFlag};
    use nix::sys::stat::{mkdirat, Mode};
    let parts = clean(dest);
    let mut resolve = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    if no_symlinks {
        resolve |= ResolveFlag::RESOLVE_NO_SYMLINKS;
    }
    let made_here = ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    let io_err = |what: String| {
        move |e: Errno| InitError::Io {
            context: what,
            err: e.into(),
        }
    };
    let joined = |n: usize| -> PathBuf { parts[..n].iter().collect() };

    // The longest prefix that exists.
    let mut existing = parts.len();
    let mut cur = loop {
        let prefix = joined(existing);
        let at = if existing == 0 {
            Path::new(".")
        } else {
            prefix.as_path()
        };
        match openat2(root, at, open_how(resolve, existing < parts.len())) {
            Ok(fd) => break fd,
            Err(Errno::ENOENT) if existing > 0 => existing -= 1,
            Err(e) => {
                return Err(io_err(format!(
                    "open mount point {} in the rootfs",
                    dest.display()
                ))(e))
            }
        }
    };
    if existing == parts.len() {
        return Ok(cur);
    }
    for (i, part) in parts.iter().enumerate().skip(existing) {
        let last = i + 1 == parts.len();
        let what = format!("create mount point /{}", joined(i + 1).display());
        if last && !dir {
            match openat(
                &cur,
                *part,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            ) {
                Ok(_) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io_err(what)(e)),
            }
        } else {
            match mkdirat(&cur, *part, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io_err(what)(e)),
            }
        }
        match openat2(&cur, *part, open_how(made_here, !last || dir)) {
            Ok(fd) => cur = fd,
            // A symlink that leads nowhere yet (its target is missing): its target, taken as a
            // path inside the root again, is where the rest goes, as runc's MkdirAllInRoot
            // does. The kernel resolves that path in the root once more: an absolute target
            // or `..` cannot leave it.
            Err(Errno::ELOOP) if !no_symlinks && links < MAX_LINKS => {
                let target = nix::fcntl::readlinkat(&cur, *part).map_err(io_err(format!(
                    "read the symlink /{}",
                    joined(i + 1).display()
                )))?;
                let mut next = joined(i);
                next.push(Path::new(&target));
                for rest in &parts[i + 1..] {
                    next.push(rest);
                }
                return create_mount_point_from(root, &next, dir, no_symlinks, links + 1);
            }
            Err(e) => {
                return Err(io_err(format!(
                    "open {} without following symlinks",
                    joined(i + 1).display()
                ))(e))
            }
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root_fd(path: &Path) -> OwnedFd {
        std::fs::File::open(path).expect("open root").into()
    }

    #[test]
    fn creates_mount_points_without_leaving_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        std::fs::create_dir_all(r.join("real/dir")).expect("mkdir");
        symlink("/real", r.join("abs")).expect("link");
        symlink(
            "../../../../../..".to_string() + &outside.path().display().to_string(),
            r.join("escape"),
        )
        .expect("link");
        symlink("real/dir", r.join("rel")).expect("link");
        let fd = root_fd(r);

        create_mount_point(&fd, Path::new("/abs/a/b"), true, false).expect("abs");
        assert!(r.join("real/a/b").is_dir());
        create_mount_point(&fd, Path::new("/rel/file"), false, false).expect("rel");
        assert!(r.join("real/dir/file").is_file());
        // The symlink names a host directory: inside the root it is the root's own, made there,
        // and nothing outside.
        create_mount_point(&fd, Path::new("/escape/x"), true, false).expect("escape");
        assert!(r
            .join(outside.path().strip_prefix("/").expect("absolute"))
            .join("x")
            .is_dir());
        // A loop of symlinks ends.
        symlink("loop-b", r.join("loop-a")).expect("link");
        symlink("loop-a", r.join("loop-b")).expect("link");
        create_mount_point(&fd, Path::new("/loop-a/x"), true, false).expect_err("a loop");
        symlink("/real", r.join("abs-outside")).expect("link");
        create_mount_point(&fd, Path::new("/abs-outside/y"), true, false).expect("absolute");
        assert!(r.join("real/y").is_dir());
        assert!(std::fs::read_dir(outside.path())
            .expect("read")
            .next()
            .is_none());
        // `..` never climbs above the root.
        create_mount_point(&fd, Path::new("/../../top"), true, false).expect("dotdot");
        assert!(r.join("top").is_dir());
        // Existing: returned as is.
        create_mount_point(&fd, Path::new("/real"), true, false).expect("existing");
    }

    #[test]
    fn refuses_symlinks_when_asked() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        std::fs::create_dir_all(r.join("real")).expect("mkdir");
        symlink("/real", r.join("proc")).expect("link");
        let fd = root_fd(r);
        let err = create_mount_point(&fd, Path::new("/proc"), true, true).expect_err("a symlink");
        let InitError::Io { err, .. } = err else {
            panic!("expected an io error, got {err:?}");
        };
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        let err = create_mount_point(&fd, Path::new("/proc/sub"), true, true).expect_err("below");
        assert!(matches!(err, InitError::Io { .. }), "{err:?}");
        assert!(!r.join("real/sub").exists());
    }
}
