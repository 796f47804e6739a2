//! The one place in usernsrs with `unsafe` syscalls.
//!
//! `nix` covers most of what the shim needs, but not the new mount API that idmapped mounts are
//! built on (`open_tree`, `mount_setattr`, `move_mount`), and creating a user namespace only to
//! borrow its id mapping needs a `fork`; cgroup v2 device filters are eBPF programs loaded and
//! attached with `bpf(2)`; seccomp filters are loaded with `seccomp(2)`; the helper is exec'd
//! from a sealed view of the binary (`fsopen`, `fsmount`, `memfd_create`); processes are
//! signalled and their namespaces joined through pidfds, which nix does not wrap. Every
//! `unsafe` block here carries a `SAFETY:` comment
//! that names the invariant it relies on. Nothing here decides policy: callers pass in what to
//! map and where.

pub mod bpf;
pub mod exeseal;
pub mod mount_api;
pub mod pidfd;
pub mod seccomp;
pub mod userns;

pub use exeseal::{SealError, SealKind, SealedExe};
pub use mount_api::{DetachedMount, MountAttrs};
pub use pidfd::PidFd;
pub use userns::user_namespace_fd;
