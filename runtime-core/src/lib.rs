//! The logic of user namespaces and mounts as plain data and functions.
//!
//! Nothing in this crate makes a syscall that changes the system: it validates id mappings and
//! specs and turns a spec plus containerd's rootfs mounts into a [`plan::ContainerPlan`], which
//! the single-threaded helper (`usernsrs-init`) executes. Everything here is testable without
//! root.

pub mod cgroup_view;
pub mod dev_nodes;
pub mod idmap;
pub mod mount_options;
pub mod mountinfo;
pub mod plan;
pub mod rootfs;
pub mod seccomp;
pub mod sysctl;
pub mod volumes;

pub use idmap::{IdMap, IdMapError, IdMapping, UserMapping};
pub use plan::{plan_container, ContainerPlan, Namespace, NamespaceKind, PlanError, UserNamespace};
pub use rootfs::{IdmapWith, RootMount, RootfsPlan, RootfsSource};
pub use volumes::HostBind;
