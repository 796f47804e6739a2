//! What passes between the shim, the helper and the container's first processes.
//!
//! The shim starts the helper as `<shim binary> __usernsrs_create` with these fds:
//! - 0, 1, 2: the container's stdio;
//! - [`CONTROL_FD`]: a socket; the shim writes a [`HelperRequest`] as JSON and shuts down its
//!   write side; the helper answers one [`HelperReply`] line and exits;
//! - [`START_FD`]: the read end of the start pipe; the container blocks on it until Start;
//! - [`EXEC_STATUS_FD`]: the write end of the exec status pipe, close-on-exec in the container:
//!   EOF without data means the exec succeeded, otherwise it carries the error;
//! - [`INIT_PIDFD_FD`], for an Exec request only: a pidfd of the container's init, whose
//!   namespaces the exec'd process joins through it (never through `/proc/<pid>`: the init may
//!   have been reaped and its pid given to another process).

use serde::{Deserialize, Serialize};

/// The hidden subcommand of the shim binary that runs the helper.
pub const HELPER_ARG: &str = "__usernsrs_create";
pub const CONTROL_FD: i32 = 3;
pub const START_FD: i32 = 4;
pub const EXEC_STATUS_FD: i32 = 5;
pub const INIT_PIDFD_FD: i32 = 6;

/// What the helper is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub enum HelperRequest {
    /// Create a container (its init blocks until Start).
    Create(Box<usernsrs_runtime_core::ContainerPlan>),
    /// Create an extra process in a running container (it blocks until started).
    Exec(Box<ExecPlan>),
}

/// An exec'd process: joins every namespace of the container's init and its cgroup.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecPlan {
    pub container_id: String,
    pub exec_id: String,
    /// Host pid of the container's init, for messages and for reads checked against its
    /// pidfd ([`INIT_PIDFD_FD`]), through which its namespaces are joined.
    pub init_pid: i32,
    pub process: oci_spec::runtime::Process,
    pub cgroups_path: Option<String>,
    /// The container's seccomp profile, which exec'd processes get too.
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
}

/// The helper's answer to the shim.
#[derive(Debug, Serialize, Deserialize)]
pub enum HelperReply {
    /// The process runs (blocked until Start) as host pid `pid`. With `console`, the master of
    /// its pty comes attached to the reply (SCM_RIGHTS).
    Created { pid: i32, console: bool },
    /// Nothing was left behind; `error` says what failed, `kind` whose fault it was.
    Failed { error: String, kind: FailureKind },
}

/// Whose fault a failure was, for the status code the shim answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The spec asks for something the shim refuses (InvalidArgument).
    Refused,
    /// This host cannot do what the spec asks: its kernel, filesystem or cgroups
    /// (FailedPrecondition).
    Unsupported,
    /// Anything else: a syscall that failed, the protocol (Internal).
    Internal,
}

/// Messages between the helper and the processes it forks, over a socket pair, one JSON
/// document per line.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Sync {
    /// Child → helper: the user namespace exists (new or joined).
    UsernsReady,
    /// Helper → child: maps written and rootfs prepared; go on.
    Proceed,
    /// Child → helper: the container's pid 1, as a host pid.
    Pid(i32),
    /// Container → helper: set up and waiting for Start.
    Ready,
    /// Container → helper: the master of its pty follows (SCM_RIGHTS).
    Console,
    /// Child or container → helper: setup failed.
    Error(String, FailureKind),
}
