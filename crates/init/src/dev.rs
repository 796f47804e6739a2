//! The container's fresh `/dev`: the nodes runtime-core planned ([`DevNode`]), the usual
//! symlinks, and the `/dev/null` that masks paths.
//!
//! Everything goes through fds opened inside the rootfs, never a path joined to it: the
//! directory `/dev` is opened with `RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS`, subdirectories are
//! made with `mkdirat` and opened without following symlinks, nodes are made with `mknodat` and
//! bind targets are mounted on through `/proc/self/fd/N`. Nothing can be made outside the
//! container's `/dev`, whatever the image or a shared volume holds.
//!
//! Without a user namespace a node is made with its type, numbers, mode and owner, as runc does.
//! A user namespace cannot mknod: there the host's node at the same path is bound onto an empty
//! file, and only when it is the device the spec names (type and numbers checked), so a spec
//! cannot get another node under a trusted name.

use crate::mnt::fd_path;
use crate::InitError;
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{fstat, makedev, mkdirat, mknodat, umask, Mode, SFlag};
use nix::unistd::{fchownat, symlinkat, Gid, Uid};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use usernsrs_runtime_core::dev_nodes::{DevNode, NodeKind};

/// The symlinks of every fresh /dev (runc's `setupDevSymlinks`).
const SYMLINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
];

fn fail(msg: impl Into<String>) -> InitError {
    InitError::Container(msg.into())
}

/// Opens the directory `rel` beneath `dir` without following any symlink.
fn open_dir_beneath(dir: &impl AsFd, rel: &Path) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    openat2(dir, rel, how)
}

/// The directory holding `rel` (a normal relative path) beneath `dev`, made as needed, and the
/// last component's name.
fn parent_of<'a>(
    dev: &OwnedFd,
    rel: &'a Path,
) -> Result<(OwnedFd, &'a std::ffi::OsStr), InitError> {
    let name = rel
        .file_name()
        .ok_or_else(|| fail(format!("device path /dev/{} has no name", rel.display())))?;
    let mut dir =
        open_dir_beneath(dev, Path::new(".")).map_err(InitError::sys("open /dev in the rootfs"))?;
    for part in rel.parent().into_iter().flat_map(Path::components) {
        let Component::Normal(part) = part else {
            return Err(fail(format!(
                "device path /dev/{} is not normal",
                rel.display()
            )));
        };
        match mkdirat(&dir, part, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(InitError::sys(format!("create /dev/{}", rel.display()))(e));
            }
        }
        dir = open_dir_beneath(&dir, Path::new(part)).map_err(InitError::sys(format!(
            "open the directory of /dev/{} (a symlink is refused)",
            rel.display()
        )))?;
    }
    Ok((dir, name))
}

fn sflag(kind: NodeKind) -> SFlag {
    match kind {
        NodeKind::Char => SFlag::S_IFCHR,
        NodeKind::Block => SFlag::S_IFBLK,
        NodeKind::Fifo => SFlag::S_IFIFO,
    }
}

/// Makes the node with its numbers, mode and owner (host root, no user namespace).
fn make_node(dir: &OwnedFd, name: &std::ffi::OsStr, node: &DevNode) -> Result<(), InitError> {
    let what = format!("/dev/{}", node.path.display());
    // The mode is the spec's, not reduced by the helper's umask.
    let old = umask(Mode::empty());
    let made = mknodat(
        dir,
        name,
        sflag(node.kind),
        Mode::from_bits_truncate(node.mode),
        makedev(node.major, node.minor),
    );
    umask(old);
    made.map_err(InitError::sys(format!("mknod {what}")))?;
    fchownat(
        dir,
        name,
        Some(Uid::from_raw(node.uid)),
        Some(Gid::from_raw(node.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(InitError::sys(format!(
        "chown {what} to {}:{}",
        node.uid, node.gid
    )))
}

/// Binds the host's node at the same path onto an empty file (in a user namespace), after
/// checking that it is the device the spec names.
fn bind_host_node(dir: &OwnedFd, name: &std::ffi::OsStr, node: &DevNode) -> Result<(), InitError> {
    let what = format!("/dev/{}", node.path.display());
    let host_path = Path::new("/dev").join(&node.path);
    let host = nix::fcntl::open(
        &host_path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        fail(format!(
            "linux.devices {what}: a user namespace cannot mknod, and the host has no node at \
             {} to bind ({e})",
            host_path.display()
        ))
    })?;
    let st = fstat(&host).map_err(InitError::sys(format!("stat {}", host_path.display())))?;
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    let want = makedev(node.major, node.minor);
    if kind != sflag(node.kind) || (node.kind != NodeKind::Fifo && st.st_rdev != want) {
        return Err(fail(format!(
            "linux.devices {what}: the host's {} is not the {:?} device {}:{} the spec names, and \
             a user namespace cannot mknod",
            host_path.display(),
            node.kind,
            node.major,
            node.minor
        )));
    }
    let file = openat(
        dir,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(InitError::sys(format!("create the mount point {what}")))?;
    let target = openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(InitError::sys(format!("open the mount point {what}")))?;
    drop(file);
    mount(
        Some(&fd_path(&host)),
        &fd_path(&target),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| InitError::Mount {
        what: format!("bind {}", host_path.display()),
        target: PathBuf::from(&what),
        err: e.into(),
    })
}

/// Fills the fresh /dev of the rootfs held by `root`: the planned nodes, then the symlinks.
pub(crate) fn populate(
    root: &OwnedFd,
    nodes: &[DevNode],
    in_user_ns: bool,
) -> Result<(), InitError> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let dev = openat2(root, "dev", how).map_err(InitError::sys("open /dev in the rootfs"))?;
    for node in nodes {
        let (dir, name) = parent_of(&dev, &node.path)?;
        // A fifo is no device: a user namespace may make one.
        if in_user_ns && node.kind != NodeKind::Fifo {
            bind_host_node(&dir, name, node)?;
        } else {
            make_node(&dir, name, node)?;
        }
    }
    for (link, to) in SYMLINKS {
        symlink_if_absent(&dev, to, link)?;
    }
    let has_pts_ptmx = openat2(
        &dev,
        "pts/ptmx",
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS),
    )
    .is_ok();
    if has_pts_ptmx {
        symlink_if_absent(&dev, "pts/ptmx", "ptmx")?;
    }
    Ok(())
}

/// A symlink `link -> to` in `dev`, unless something is there already (a node or a mount the
/// spec put there wins, as with runc).
fn symlink_if_absent(dev: &OwnedFd, to: &str, link: &str) -> Result<(), InitError> {
    match symlinkat(to, dev, link) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(InitError::sys(format!("symlink /dev/{link} -> {to}"))(e)),
    }
}

/// The container's `/dev/null` (after pivot_root), opened without following symlinks and
/// checked to be the real 1:3 character device: a mask bound from anything else would show the
/// image's (or a volume's) file in place of the masked one (CVE-2025-31133).
pub(crate) fn open_null() -> Result<OwnedFd, InitError> {
    let fd = nix::fcntl::open(
        "/dev/null",
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(InitError::sys("open /dev/null in the container"))?;
    let st = fstat(&fd).map_err(InitError::sys("stat /dev/null in the container"))?;
    let is_char = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFCHR;
    if !is_char || st.st_rdev != makedev(1, 3) {
        return Err(fail(
            "refusing to mask paths: /dev/null in the container is not the 1:3 character device",
        ));
    }
    Ok(fd)
}
