//! Executes a [`ContainerPlan`](usernsrs_runtime_core::ContainerPlan) in a single-threaded
//! helper process: namespaces, idmapped rootfs, mounts, `pivot_root`, credentials, exec.
//!
//! [`create::helper_main`] is the helper's entry point; [`proto`] is what passes between it and
//! the shim; [`cgroup`] is shared with the shim, which lists, signals and removes the container's
//! cgroup; [`cleanup`] undoes the host-side mounts, for Delete and for the `delete` subcommand.

pub mod cgroup;
mod cgroupfs;
mod channel;
pub mod cleanup;
mod container;
pub mod create;
mod dev;
pub mod devices;
mod exec;
pub mod fallback;
mod mnt;
pub mod overlay;
pub mod proto;
mod seccomp;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        err: std::io::Error,
    },
    #[error("{context}")]
    Json {
        context: String,
        #[source]
        err: serde_json::Error,
    },
    #[error("mount {what} on {target}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error(
        "cannot idmap {path} (filesystem {fs}, kernel {kernel}): the kernel or filesystem does not \
         support idmapped mounts here. Idmapped mounts need Linux 5.12+ (overlayfs layers 5.19+, \
         tmpfs 6.3+) and a filesystem that supports them (ext4, xfs, btrfs, tmpfs; not NFS, not \
         FUSE before 6.12, not ramfs). Ways out: set slow_chown = true in the shim's runtime \
         options (a metadata-only chowned copy, see the README), or chown the rootfs into the \
         mapped range and set the annotation usernsrs.io/rootfs-idmap=false"
    )]
    Idmap {
        path: PathBuf,
        fs: String,
        kernel: String,
        #[source]
        err: std::io::Error,
    },
    #[error(
        "cannot mount the overlay rootfs on {target} over idmapped layers of {parent} (kernel \
         {kernel}): overlayfs on idmapped layers needs Linux 5.19+ and layers on a filesystem \
         that supports idmapped mounts. Ways out: set slow_chown = true in the shim's runtime \
         options (a metadata-only chowned copy, see the README), or run the pod without a user \
         namespace"
    )]
    OverlayIdmap {
        parent: PathBuf,
        target: PathBuf,
        kernel: String,
        #[source]
        err: std::io::Error,
    },
    #[error(
        "cannot idmap mount {destination}: source {source_path} is on {fs} (kernel {kernel}), \
         which cannot be idmapped here (idmapped mounts need Linux 5.12+, tmpfs 6.3+; NFS, \
         ramfs and FUSE before 6.12 refuse). Way out: drop uidMappings/gidMappings and the \
         idmap option from this mount and chown the source into the container's range, or use \
         a filesystem that supports idmapped mounts (ext4, xfs, btrfs, tmpfs)"
    )]
    VolumeIdmap {
        destination: PathBuf,
        source_path: PathBuf,
        fs: String,
        kernel: String,
        #[source]
        err: std::io::Error,
    },
    #[error("{context}")]
    Cgroup {
        context: String,
        #[source]
        err: cgroup::CgroupError,
    },
    #[error("{0}")]
    Container(String),
    #[error(transparent)]
    Seccomp(#[from] usernsrs_runtime_core::seccomp::SeccompError),
    /// A stage the helper forked failed; its message and kind.
    #[error("{0}")]
    Child(String, proto::FailureKind),
    #[error("helper protocol: {0}")]
    Protocol(String),
}

impl InitError {
    /// Whose fault this was (see [`proto::FailureKind`]).
    pub fn kind(&self) -> proto::FailureKind {
        use proto::FailureKind::*;
        match self {
            InitError::Container(_) | InitError::Seccomp(_) => Refused,
            InitError::Idmap { .. }
            | InitError::OverlayIdmap { .. }
            | InitError::VolumeIdmap { .. }
            | InitError::Cgroup { .. } => Unsupported,
            InitError::Child(_, kind) => *kind,
            InitError::Io { .. }
            | InitError::Json { .. }
            | InitError::Mount { .. }
            | InitError::Protocol(_) => Internal,
        }
    }

    pub(crate) fn io<C: Into<String>>(context: C) -> impl FnOnce(std::io::Error) -> InitError {
        let context = context.into();
        move |err| InitError::Io { context, err }
    }

    pub(crate) fn sys<C: Into<String>>(context: C) -> impl FnOnce(nix::Error) -> InitError {
        let context = context.into();
        move |err| InitError::Io {
            context,
            err: err.into(),
        }
    }

    pub(crate) fn json<C: Into<String>>(context: C) -> impl FnOnce(serde_json::Error) -> InitError {
        let context = context.into();
        move |err| InitError::Json { context, err }
    }
}

/// An error and its sources on one line: `a: b: c`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The running kernel's release, for error messages.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The name of the filesystem `path` is on, for error messages.
pub fn fs_type_name(path: &Path) -> String {
    let Ok(st) = nix::sys::statfs::statfs(path) else {
        return "unknown".into();
    };
    let magic = st.filesystem_type().0 as u64;
    let name = match magic {
        0xEF53 => "ext4",
        0x0102_1994 => "tmpfs",
        0x794c_7630 => "overlay",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0x8584_58f6 => "ramfs",
        0x9fa0 => "proc",
        0x6265_6572 => "sysfs",
        _ => return format!("magic {magic:#x}"),
    };
    name.into()
}

/// Sends `bytes` with `fd` attached (SCM_RIGHTS) on a unix socket.
pub fn send_fd(
    sock: &impl std::os::fd::AsRawFd,
    bytes: &[u8],
    fd: std::os::fd::RawFd,
) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(bytes)];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    if sent != bytes.len() {
        return Err(std::io::Error::other("short sendmsg"));
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes and at most one fd (SCM_RIGHTS) from a unix socket.
pub fn recv_with_fd(
    sock: &impl std::os::fd::AsRawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<std::os::fd::OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: the kernel just installed `raw` in this process for us; nothing else
                // owns it. Extra fds beyond the first are closed by their OwnedFd at once.
                let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    Ok((msg.bytes, fd))
}
