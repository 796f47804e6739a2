//! Wrappers over the kernel's new mount API: `open_tree`, `mount_setattr` and `move_mount`.
//!
//! An idmapped mount is made in three steps (Linux 5.12+): clone a tree into a detached mount
//! (`open_tree(OPEN_TREE_CLONE)`), set `MOUNT_ATTR_IDMAP` with a user namespace fd on it
//! (`mount_setattr`, which the kernel only allows on a detached mount and with CAP_SYS_ADMIN
//! over the filesystem's user namespace, so on the host side), then attach it
//! (`move_mount`). A [`DetachedMount`] owns the fd; dropping it without attaching lets the
//! kernel dissolve the tree.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A mount tree cloned by `open_tree(OPEN_TREE_CLONE)`, not attached anywhere yet.
#[derive(Debug)]
pub struct DetachedMount {
    fd: OwnedFd,
}

/// `mount_setattr` on the mount `fd` refers to (an `open_tree` fd, or an `O_PATH` fd of a mount's
/// root): the mount, or with `recursive` it and every mount below it (AT_RECURSIVE).
pub fn set_attrs_at(
    fd: BorrowedFd<'_>,
    attrs: MountAttrs,
    userns: Option<BorrowedFd<'_>>,
    recursive: bool,
) -> io::Result<()> {
    let mut attr = libc::mount_attr {
        attr_set: attrs.set,
        attr_clr: attrs.clear,
        propagation: attrs.propagation,
        userns_fd: userns.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    let empty = c"";
    // SAFETY: `fd` is an open fd, the empty path with AT_EMPTY_PATH names it, and `attr` is a
    // properly initialised `mount_attr` whose size we pass; the kernel only reads it for the
    // duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            flags as libc::c_uint,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attributes for `mount_setattr`.
#[derive(Debug, Default, Clone, Copy)]
pub struct MountAttrs {
    /// `MOUNT_ATTR_*` bits to set.
    pub set: u64,
    /// `MOUNT_ATTR_*` bits to clear.
    pub clear: u64,
    /// Propagation (`MS_PRIVATE`, `MS_SLAVE`, ...), or 0 to leave it.
    pub propagation: u64,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

impl DetachedMount {
    /// Clones the mount at `path` (with its submounts when `recursive`) into a detached tree.
    pub fn clone_tree(path: &Path, recursive: bool) -> io::Result<Self> {
        let cpath = c_path(path)?;
        let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
        if recursive {
            flags |= libc::AT_RECURSIVE as libc::c_uint;
        }
        // SAFETY: `cpath` is a valid NUL-terminated string that outlives the call; the kernel
        // returns a new fd (which we take ownership of) or -1 with errno set.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                cpath.as_ptr(),
                flags as libc::c_ulong,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor returned by open_tree and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        Ok(Self { fd })
    }

    /// Sets mount attributes on the whole detached tree (or only its top when not `recursive`).
    pub fn set_attrs(
        &self,
        attrs: MountAttrs,
        userns: Option<BorrowedFd<'_>>,
        recursive: bool,
    ) -> io::Result<()> {
        set_attrs_at(self.fd.as_fd(), attrs, userns, recursive)
    }

    /// Makes the tree idmapped with the mapping of the user namespace `userns`.
    pub fn idmap(&self, userns: BorrowedFd<'_>, recursive: bool) -> io::Result<()> {
        self.set_attrs(
            MountAttrs {
                set: libc::MOUNT_ATTR_IDMAP,
                ..MountAttrs::default()
            },
            Some(userns),
            recursive,
        )
    }

    /// Attaches the tree on `target`.
    pub fn attach(&self, target: &Path) -> io::Result<()> {
        let ctarget = c_path(target)?;
        self.move_to(libc::AT_FDCWD, &ctarget, 0)
    }

    /// Attaches the tree on the directory or file `target` refers to (an `O_PATH` fd, so that
    /// a path resolved safely once is not looked up again).
    pub fn attach_at(&self, target: BorrowedFd<'_>) -> io::Result<()> {
        self.move_to(target.as_raw_fd(), c"", libc::MOVE_MOUNT_T_EMPTY_PATH)
    }

    fn move_to(
        &self,
        to_dirfd: libc::c_int,
        to_path: &std::ffi::CStr,
        flags: libc::c_uint,
    ) -> io::Result<()> {
        let empty = c"";
        // SAFETY: both strings are valid and NUL-terminated for the duration of the call;
        // `self.fd` is a detached mount fd and MOVE_MOUNT_F_EMPTY_PATH makes the kernel use it
        // as the source; `to_dirfd` is AT_FDCWD or an fd the caller keeps open.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.fd.as_raw_fd(),
                empty.as_ptr(),
                to_dirfd,
                to_path.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH | flags,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the root of the tree is a directory (a bind of a file is not).
    pub fn is_dir(&self) -> io::Result<bool> {
        let st = nix::sys::stat::fstat(&self.fd)?;
        Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }
}

impl AsFd for DetachedMount {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
