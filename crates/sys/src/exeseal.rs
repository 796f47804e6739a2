//! A sealed view of this process's own binary, to exec the helper from (CVE-2019-5736).
//!
//! Why: a container process whose entrypoint is a script starting `#!/proc/self/exe` makes the
//! kernel run, as the script's interpreter, whatever binary the exec'ing process runs. If that
//! is the shim's container stage executing the host's binary, the container now runs the host
//! binary as its own process, and `open("/proc/self/exe", O_WRONLY)` there reaches the host
//! file. Only ETXTBSY stood in the way, and Linux 6.11 and 6.12 dropped it for exec'd files.
//! The helper is therefore exec'd from a file that cannot be written whatever the container
//! does, one of:
//!
//! - [`SealedExe::overlay`]: the binary seen through a read-only overlayfs made with the new
//!   mount API (`fsopen`, `fsconfig`, `fsmount`) and never attached to any mount tree, so it is
//!   in no mountinfo and nobody can remount it. An overlay with no upper layer is read-only by
//!   construction (writes give EROFS) and, unlike a read-only bind mount, cannot be "unwrapped"
//!   to the underlying file. No copy, no memory: the pages are the original file's.
//! - [`SealedExe::memfd`]: a copy in a memfd sealed against every change
//!   (`F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE`, and `F_SEAL_EXEC` where the
//!   kernel knows it). Costs a copy of the binary and its size in memory.
//!
//! The owner keeps the returned fd open for as long as helpers are started and execs it through
//! [`SealedExe::exec_path`]. The fd is close-on-exec, so no child keeps it.
//! Nothing here decides which one to use: the caller does.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Which kind of sealed file a [`SealedExe`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealKind {
    /// The binary through a detached, read-only overlayfs.
    Overlay,
    /// A sealed memfd copy of the binary.
    Memfd,
}

impl std::fmt::Display for SealKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SealKind::Overlay => "read-only overlayfs",
            SealKind::Memfd => "sealed memfd",
        })
    }
}

/// Why a binary could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{step}")]
    Sys {
        step: String,
        #[source]
        err: io::Error,
    },
    #[error("{step}: {messages}")]
    Overlay {
        step: String,
        /// What overlayfs said in the filesystem context's log.
        messages: String,
        #[source]
        err: io::Error,
    },
    #[error(
        "{path} is no longer the running binary (it was replaced: {found} there, {running} \
         running)"
    )]
    Replaced {
        path: PathBuf,
        found: String,
        running: String,
    },
    #[error("copied {copied} of {size} bytes of the binary into the memfd")]
    ShortCopy { copied: u64, size: u64 },
}

fn sys(step: impl Into<String>) -> impl FnOnce(io::Error) -> SealError {
    let step = step.into();
    move |err| SealError::Sys { step, err }
}

/// Memfd seals: the base four, and F_SEAL_EXEC (Linux 6.3) which also freezes the mode.
const BASE_SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// A sealed, executable view of a binary; exec it through [`SealedExe::exec_path`].
#[derive(Debug)]
pub struct SealedExe {
    fd: OwnedFd,
    kind: SealKind,
}

impl SealedExe {
    /// The binary at `exe` (the real path of the running binary) through a read-only
    /// overlayfs that is never attached: its directory is the top lower layer, over an empty
    /// directory made under `scratch` and removed again before this returns (overlayfs wants
    /// two layers to run without an upper one, and before Linux 6.15 refuses a detached mount
    /// as a layer). Fails if `exe` is not `running` (the binary was replaced since it started).
    pub fn overlay(exe: &Path, running: &File, scratch: &Path) -> Result<Self, SealError> {
        let (dir, name) = match (exe.parent(), exe.file_name()) {
            (Some(dir), Some(name)) if exe.is_absolute() => (dir, name),
            _ => {
                return Err(SealError::Sys {
                    step: format!("{} is not an absolute path to a file", exe.display()),
                    err: io::Error::from(io::ErrorKind::InvalidInput),
                })
            }
        };
        let run_md = running.metadata().map_err(sys("stat the running binary"))?;
        let disk_md = std::fs::metadata(exe).map_err(sys(format!("stat {}", exe.display())))?;
        if (disk_md.dev(), disk_md.ino()) != (run_md.dev(), run_md.ino()) {
            return Err(SealError::Replaced {
                path: exe.to_path_buf(),
                found: format!("inode {}:{}", disk_md.dev(), disk_md.ino()),
                running: format!("inode {}:{}", run_md.dev(), run_md.ino()),
            });
        }
        let empty = EmptyDir::new(scratch)?;
        let lowerdir = format!(
            "{}:{}",
            escape_lowerdir(dir.as_os_str().as_bytes()),
            escape_lowerdir(empty.path.as_os_str().as_bytes())
        );
        let fs = FsContext::open(c"overlay")?;
        fs.set_string(c"lowerdir", &lowerdir)?;
        // xino is irrelevant here and, when the layers are on different filesystems, makes
        // overlayfs log about it; ignore a kernel that does not know the option.
        let _ = fs.set_string(c"xino", "off");
        let mount = fs.create_and_mount(
            libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        )?;
        // The overlay keeps its layers pinned: the empty directory can go now.
        empty.remove()?;
        let cname = CString::new(name.as_bytes())
            .map_err(|_| sys("binary name")(io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: `mount` is an open mount fd and `cname` a NUL-terminated name valid for the
        // call; the kernel returns a new fd that we own, or -1.
        let fd = unsafe {
            libc::openat(
                mount.as_raw_fd(),
                cname.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(sys(format!(
                "open {} in the overlay of {}",
                name.to_string_lossy(),
                dir.display()
            ))(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // overlayfs gives the file a device number of its own but keeps the inode number of
        // the layer's file (xino off): the same inode and size as the running binary.
        let st =
            nix::sys::stat::fstat(&fd).map_err(|e| sys("stat the overlay's file")(e.into()))?;
        if st.st_ino != run_md.ino() || st.st_size as u64 != run_md.len() {
            return Err(SealError::Replaced {
                path: exe.to_path_buf(),
                found: format!("inode {} of {} bytes", st.st_ino, st.st_size),
                running: format!("inode {} of {} bytes", run_md.ino(), run_md.len()),
            });
        }
        Ok(SealedExe {
            fd,
            kind: SealKind::Overlay,
        })
    }

    /// A copy of `running` (the running binary, e.g. `/proc/self/exe` opened read-only) in a
    /// memfd named `name`, sealed against writes, truncation, growth and further seals.
    pub fn memfd(running: &File, name: &CStr) -> Result<Self, SealError> {
        let size = running
            .metadata()
            .map_err(sys("stat the running binary"))?
            .len();
        let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // MFD_EXEC (Linux 6.3) says outright that the memfd is to be executed, which
        // vm.memfd_noexec=1 requires; older kernels refuse the unknown flag with EINVAL.
        let fd = match memfd_create(name, base | libc::MFD_EXEC) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => memfd_create(name, base),
            other => other,
        }
        .map_err(sys("memfd_create"))?;
        let mut file = File::from(fd);
        let mut source = running;
        source
            .seek(io::SeekFrom::Start(0))
            .map_err(sys("rewind the running binary"))?;
        let copied = io::copy(&mut source.take(size), &mut file)
            .map_err(sys("copy the binary into the memfd"))?;
        if copied != size {
            return Err(SealError::ShortCopy { copied, size });
        }
        file.set_permissions(std::fs::Permissions::from_mode(0o511))
            .map_err(sys("chmod 0511 the memfd"))?;
        // F_SEAL_EXEC (Linux 6.3) also keeps the mode as it is; older kernels do not know it.
        match add_seals(&file, libc::F_SEAL_EXEC) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            other => other.map_err(sys("seal the memfd (F_SEAL_EXEC)"))?,
        }
        add_seals(&file, BASE_SEALS).map_err(sys("seal the memfd"))?;
        Ok(SealedExe {
            fd: file.into(),
            kind: SealKind::Memfd,
        })
    }

    pub fn kind(&self) -> SealKind {
        self.kind
    }

    /// `/proc/self/fd/N`: the path that execs the sealed file. The kernel opens it before it
    /// closes the close-on-exec fds, so it works in a child that inherits the fd, up to
    /// its exec; the child must not reuse fd N for anything else before it.
    pub fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Moves the fd to the lowest free number at or above `min`, so that a child that
    /// places its own fds below `min` before exec leaves it alone.
    pub fn move_fd_above(self, min: libc::c_int) -> Result<Self, SealError> {
        if self.fd.as_raw_fd() >= min {
            return Ok(self);
        }
        let fd = nix::fcntl::fcntl(&self.fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min))
            .map_err(|e| sys("move the sealed binary's fd")(e.into()))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SealedExe {
            fd,
            kind: self.kind,
        })
    }
}

impl AsFd for SealedExe {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn memfd_create(name: &CStr, flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and valid for the call; the kernel returns a new fd
    // that we own, or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn add_seals(file: &File, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: F_ADD_SEALS takes an int argument and `file` is an open memfd.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A lowerdir entry: `:` separates layers and `\` escapes, so both are escaped.
fn escape_lowerdir(path: &[u8]) -> String {
    let mut out = String::new();
    for c in String::from_utf8_lossy(path).chars() {
        if c == '\\' || c == ':' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// An empty directory made for the overlay's second layer, removed when dropped.
struct EmptyDir {
    path: PathBuf,
    removed: bool,
}

impl EmptyDir {
    fn new(scratch: &Path) -> Result<Self, SealError> {
        let template = scratch.join("usernsrs-exeseal-XXXXXX");
        let path = nix::unistd::mkdtemp(&template)
            .map_err(|e| sys(format!("mkdtemp {}", template.display()))(e.into()))?;
        Ok(EmptyDir {
            path,
            removed: false,
        })
    }

    fn remove(mut self) -> Result<(), SealError> {
        self.removed = true;
        std::fs::remove_dir(&self.path).map_err(sys(format!("rmdir {}", self.path.display())))
    }
}

impl Drop for EmptyDir {
    fn drop(&mut self) {
        if !self.removed {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// A filesystem context from `fsopen`.
struct FsContext {
    fd: OwnedFd,
    fs: String,
}

impl FsContext {
    fn open(fs: &CStr) -> Result<Self, SealError> {
        // SAFETY: `fs` is NUL-terminated and valid for the call; the kernel returns a new fd
        // that we own, or -1.
        let fd = unsafe { libc::syscall(libc::SYS_fsopen, fs.as_ptr(), libc::FSOPEN_CLOEXEC) };
        let fs = fs.to_string_lossy().into_owned();
        if fd < 0 {
            return Err(sys(format!("fsopen {fs}"))(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by fsopen and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        Ok(FsContext { fd, fs })
    }

    fn set_string(&self, key: &CStr, value: &str) -> Result<(), SealError> {
        let cvalue = CString::new(value)
            .map_err(|_| sys("fsconfig value")(io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: `self.fd` is a filesystem context; `key` and `cvalue` are NUL-terminated and
        // valid for the call; FSCONFIG_SET_STRING takes no aux argument.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                libc::FSCONFIG_SET_STRING,
                key.as_ptr(),
                cvalue.as_ptr(),
                0,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            return Err(self.failed(
                format!("{} {}={value}", self.fs, key.to_string_lossy()),
                err,
            ));
        }
        Ok(())
    }

    /// Creates the superblock and returns a detached mount of it with `attrs`.
    fn create_and_mount(&self, attrs: u64) -> Result<OwnedFd, SealError> {
        // SAFETY: `self.fd` is a filesystem context; FSCONFIG_CMD_CREATE takes no key, value
        // or aux argument.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                libc::FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            return Err(self.failed(format!("create the {} superblock", self.fs), err));
        }
        // SAFETY: `self.fd` is a filesystem context with a created superblock; the kernel
        // returns a new mount fd that we own, or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                self.fd.as_raw_fd(),
                libc::FSMOUNT_CLOEXEC,
                attrs as libc::c_uint,
            )
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(self.failed(format!("fsmount {}", self.fs), err));
        }
        // SAFETY: `fd` was just returned by fsmount and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    }

    /// The error, with what the filesystem wrote to the context's log (`e overlayfs: ...`).
    fn failed(&self, step: String, err: io::Error) -> SealError {
        let mut messages = Vec::new();
        let mut buf = [0u8; 512];
        // Each read returns one message; ENODATA once the log is empty.
        for _ in 0..8 {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(n) if n > 0 => {
                    messages.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
                }
                _ => break,
            }
        }
        if messages.is_empty() {
            SealError::Sys { step, err }
        } else {
            SealError::Overlay {
                step,
                messages: messages.join("; "),
                err,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_layer_separators_and_backslashes() {
        assert_eq!(escape_lowerdir(b"/usr/local/bin"), "/usr/local/bin");
        assert_eq!(escape_lowerdir(b"/a:b\\c"), "/a\\:b\\\\c");
    }

    fn running() -> File {
        File::open("/proc/self/exe").expect("/proc/self/exe opens in a test")
    }

    fn bytes_of(sealed: &SealedExe) -> Vec<u8> {
        std::fs::read(sealed.exec_path()).expect("the sealed binary reads back")
    }

    #[test]
    fn memfd_copy_is_the_binary_and_refuses_every_change() {
        let sealed = SealedExe::memfd(&running(), c"usernsrs-test").expect("memfd seal");
        assert_eq!(sealed.kind(), SealKind::Memfd);
        assert_eq!(
            bytes_of(&sealed),
            std::fs::read("/proc/self/exe").expect("read /proc/self/exe")
        );
        // SAFETY: F_GET_SEALS takes no argument; the fd is an open memfd.
        let seals = unsafe { libc::fcntl(sealed.as_fd().as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & BASE_SEALS, BASE_SEALS, "seals {seals:#x}");
        // Writing through a new open, growing and shrinking all fail; the open itself may
        // succeed (the seals are on the inode, not on opens).
        let path = sealed.exec_path();
        if let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(&path) {
            let err = std::io::Write::write(&mut w, b"x").expect_err("a write to a sealed memfd");
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
            let err = w.set_len(1).expect_err("a truncate of a sealed memfd");
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        }
        let meta = std::fs::metadata(&path).expect("stat the memfd");
        assert_eq!(meta.permissions().mode() & 0o777, 0o511);
    }

    #[test]
    fn moved_fd_is_above_the_minimum_and_still_the_binary() {
        let sealed = SealedExe::memfd(&running(), c"usernsrs-test")
            .expect("memfd seal")
            .move_fd_above(40)
            .expect("move the fd");
        assert!(sealed.as_fd().as_raw_fd() >= 40);
        assert_eq!(
            bytes_of(&sealed).len() as u64,
            running().metadata().expect("stat").len()
        );
    }

    /// Needs root (fsopen of overlayfs needs CAP_SYS_ADMIN): run as root, it checks the
    /// overlay; as another user it fails, saying so.
    #[test]
    fn overlay_view_is_read_only_and_in_no_mount_table() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts an overlayfs and needs root"
        );
        let exe = std::fs::read_link("/proc/self/exe").expect("readlink /proc/self/exe");
        let scratch = nix::unistd::mkdtemp(&std::env::temp_dir().join("usernsrs-sys-test-XXXXXX"))
            .expect("a scratch directory");
        let before = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let sealed = SealedExe::overlay(&exe, &running(), &scratch).expect("overlay seal");
        assert_eq!(sealed.kind(), SealKind::Overlay);
        assert_eq!(
            std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo"),
            before,
            "the overlay appeared in mountinfo"
        );
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(sealed.exec_path())
            .expect_err("opening the overlay's binary for writing");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        let host = std::fs::metadata(&exe).expect("stat the binary");
        let seen = std::fs::metadata(sealed.exec_path()).expect("stat the overlay's binary");
        assert_ne!((seen.dev(), seen.ino()), (host.dev(), host.ino()));
        assert_eq!(
            bytes_of(&sealed),
            std::fs::read(&exe).expect("read the binary")
        );
        let left: Vec<_> = std::fs::read_dir(&scratch)
            .expect("list the scratch dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        std::fs::remove_dir(&scratch).expect("remove the scratch directory");
        assert!(left.is_empty(), "left in the scratch directory: {left:?}");
    }

    #[test]
    fn overlay_refuses_a_path_that_is_not_the_running_binary() {
        let other = Path::new("/bin/sh")
            .canonicalize()
            .expect("resolve /bin/sh");
        let err = SealedExe::overlay(&other, &running(), &std::env::temp_dir())
            .expect_err("a binary that is not the running one");
        assert!(matches!(err, SealError::Replaced { .. }), "{err}");
    }
}
