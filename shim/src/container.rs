//! One container: its plan, its init process, and the lifecycle Create → Start → exit → Delete.
//!
//! Invariants:
//! - the container's process is created by the helper (a fresh exec of this binary), never by
//!   forking inside the tokio runtime;
//! - TaskExit of the init is published only after its output reached containerd and after Start
//!   finished publishing TaskStart (the `lifecycle` lock orders them);
//! - Delete undoes every host-side change: processes, mounts under the bundle, the cgroup.

use crate::errors::{Result, ShimError};
use crate::events::EventQueue;
use crate::reaper::Reaper;
use crate::stdio::{ProcessIo, StdioPaths};
use containerd_shim::protos::events::task::{TaskDelete, TaskExit, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics::{
    TASK_DELETE_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;
use usernsrs_init::cgroup::{Cgroup, CGROUP_ROOT};
use usernsrs_init::proto::{HelperReply, CONTROL_FD, EXEC_STATUS_FD, HELPER_ARG, START_FD};
use usernsrs_runtime_core::ContainerPlan;

/// How long the exit of a process waits for its output to be copied.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Name of the file in the bundle that records the init pid and its start time, so that the
/// `delete` subcommand can find the process after the server died, and never a recycled pid.
pub const INIT_STATE_FILE: &str = "usernsrs-init.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub code: u32,
    pub at: SystemTime,
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

struct State {
    status: Status,
    start_pipe: Option<OwnedFd>,
    exec_status: Option<OwnedFd>,
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub pid: i32,
    pub stdio: StdioPaths,
    pub rootfs_mounted: bool,
    cgroup: Option<Cgroup>,
    state: Mutex<State>,
    exit: watch::Receiver<Option<Exit>>,
    io: Arc<tokio::sync::Mutex<ProcessIo>>,
    /// Held by Start from writing the start byte until TaskStart is queued, and by the exit
    /// path before TaskExit is queued: TaskStart always comes first.
    lifecycle: Arc<tokio::sync::Mutex<()>>,
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Runs the helper on `plan` with the given stdio; returns the init pid and the shim's ends of
/// the start and exec status pipes.
async fn run_helper(plan: &ContainerPlan, stdio: [OwnedFd; 3]) -> Result<(i32, OwnedFd, OwnedFd)> {
    let exe = std::env::current_exe().map_err(ShimError::internal("locate the shim binary"))?;
    let (control, helper_control) =
        std::os::unix::net::UnixStream::pair().map_err(ShimError::internal("socketpair"))?;
    let (start_r, start_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ShimError::internal("pipe"))?;
    let (status_r, status_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ShimError::internal("pipe"))?;
    let [stdin, stdout, stderr] = stdio;

    let mut cmd = std::process::Command::new(exe);
    cmd.arg(HELPER_ARG)
        .current_dir(&plan.bundle)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    let passed = [
        (OwnedFd::from(helper_control), CONTROL_FD),
        (start_r, START_FD),
        (status_w, EXEC_STATUS_FD),
    ];
    let raw: Vec<(i32, i32)> = passed
        .iter()
        .map(|(fd, to)| (fd.as_raw_fd(), *to))
        .collect();
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl and dup2,
    // which are async-signal-safe; it touches no memory but the copied `raw` vector.
    unsafe {
        cmd.pre_exec(move || {
            // First move every source above the targets so that no dup2 clobbers a source.
            let mut high = [(0i32, 0i32); 3];
            for (i, (src, to)) in raw.iter().enumerate() {
                let fd = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 10);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high[i] = (fd, *to);
            }
            for (fd, to) in high {
                if libc::dup2(fd, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(ShimError::internal("start the create helper"))?;
    drop(cmd);
    drop(passed);
    log::debug!("helper pid {} creating {}", child.id(), plan.id);

    control
        .set_nonblocking(true)
        .map_err(ShimError::internal("control socket"))?;
    let mut control =
        tokio::net::UnixStream::from_std(control).map_err(ShimError::internal("control socket"))?;
    let plan_json = serde_json::to_vec(plan).map_err(ShimError::internal("encode plan"))?;
    control
        .write_all(&plan_json)
        .await
        .map_err(ShimError::internal("send plan to helper"))?;
    control
        .shutdown()
        .await
        .map_err(ShimError::internal("send plan to helper"))?;
    let mut reply = Vec::new();
    let mut reader = tokio::io::BufReader::new(control);
    reader
        .read_until(b'\n', &mut reply)
        .await
        .map_err(ShimError::internal("read helper reply"))?;
    match serde_json::from_slice::<HelperReply>(&reply) {
        Ok(HelperReply::Created { pid }) => Ok((pid, start_w, status_r)),
        Ok(HelperReply::Failed { error }) => Err(ShimError::FailedPrecondition(format!(
            "create {}: {error}",
            plan.id
        ))),
        Err(_) => Err(ShimError::Internal {
            context: format!("create {}: the helper exited without an answer", plan.id),
            err: anyhow::anyhow!("reply {:?}", String::from_utf8_lossy(&reply)),
        }),
    }
}

impl Container {
    /// Creates the container from a validated plan. On error nothing is left behind (the
    /// helper rolls back its own steps).
    pub async fn create(
        plan: ContainerPlan,
        stdio: StdioPaths,
        reaper: &Reaper,
        events: EventQueue,
    ) -> Result<Arc<Container>> {
        let (io, child_fds) = ProcessIo::open(&stdio)
            .map_err(ShimError::internal(format!("open stdio of {}", plan.id)))?;
        let since = reaper.mark();
        let (pid, start_w, status_r) = run_helper(&plan, child_fds).await?;
        let exit_rx = reaper.watch(pid, since);

        let cgroup = match &plan.cgroups_path {
            Some(p) => Some(
                Cgroup::new(Path::new(CGROUP_ROOT), p)
                    .map_err(ShimError::internal(format!("cgroup {p}")))?,
            ),
            None => None,
        };
        let state_json = serde_json::json!({ "pid": pid, "start_time": proc_start_time(pid) });
        if let Err(e) = std::fs::write(plan.bundle.join(INIT_STATE_FILE), state_json.to_string()) {
            log::warn!("record init state of {}: {e}", plan.id);
        }
        let (exit_tx, exit) = watch::channel(None);
        let container = Arc::new(Container {
            id: plan.id.clone(),
            bundle: plan.bundle.clone(),
            pid,
            stdio,
            rootfs_mounted: !matches!(
                plan.rootfs.source,
                usernsrs_runtime_core::RootfsSource::Directory { .. }
            ),
            cgroup,
            state: Mutex::new(State {
                status: Status::Created,
                start_pipe: Some(start_w),
                exec_status: Some(status_r),
            }),
            exit,
            io: Arc::new(tokio::sync::Mutex::new(io)),
            lifecycle: Arc::new(tokio::sync::Mutex::new(())),
        });

        // The exit path: reaped → output drained → after TaskStart → TaskExit.
        let c = container.clone();
        tokio::spawn(async move {
            let code = exit_rx.await.unwrap_or(255);
            c.io.lock().await.drain(DRAIN_LIMIT).await;
            let _order = c.lifecycle.lock().await;
            let at = SystemTime::now();
            {
                let mut st = c.lock_state();
                st.status = Status::Stopped;
                st.start_pipe = None;
            }
            events.send(
                TASK_EXIT_EVENT_TOPIC,
                TaskExit {
                    container_id: c.id.clone(),
                    id: c.id.clone(),
                    pid: c.pid as u32,
                    exit_status: code as u32,
                    exited_at: Some(timestamp(at)).into(),
                    ..Default::default()
                },
            );
            let _ = exit_tx.send(Some(Exit {
                code: code as u32,
                at,
            }));
        });
        Ok(container)
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> Status {
        self.lock_state().status
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Start: release the init and wait for its exec to succeed or fail.
    pub async fn start(&self, events: &EventQueue) -> Result<()> {
        let _order = self.lifecycle.lock().await;
        let (start, status) = {
            let mut st = self.lock_state();
            if st.status != Status::Created {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {} is {:?}, not created",
                    self.id, st.status
                )));
            }
            (st.start_pipe.take(), st.exec_status.take())
        };
        let (Some(start), Some(status)) = (start, status) else {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} was already started",
                self.id
            )));
        };
        let outcome = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            nix::unistd::write(&start, b"s")?;
            drop(start);
            let mut msg = String::new();
            File::from(status).read_to_string(&mut msg)?;
            Ok(msg)
        })
        .await
        .map_err(ShimError::internal("start task"))?
        .map_err(ShimError::internal(format!("start {}", self.id)))?;
        if !outcome.is_empty() {
            return Err(ShimError::FailedPrecondition(format!(
                "start {}: {outcome}",
                self.id
            )));
        }
        self.lock_state().status = Status::Running;
        events.send(
            TASK_START_EVENT_TOPIC,
            TaskStart {
                container_id: self.id.clone(),
                pid: self.pid as u32,
                ..Default::default()
            },
        );
        Ok(())
    }

    /// The processes of the container: its cgroup's, or the init alone without a cgroup.
    pub fn pids(&self) -> Vec<i32> {
        match self.cgroup.as_ref().map(Cgroup::pids) {
            Some(Ok(pids)) if !pids.is_empty() => pids,
            _ if self.exit().is_none() => vec![self.pid],
            _ => Vec::new(),
        }
    }

    pub fn kill(&self, signal: u32, all: bool) -> Result<()> {
        if self.exit().is_some() {
            return Err(ShimError::NotFound(format!(
                "process {} of {} already finished",
                self.pid, self.id
            )));
        }
        let sig = Signal::try_from(signal as i32)
            .map_err(|_| ShimError::InvalidArgument(format!("invalid signal {signal}")))?;
        let targets = if all { self.pids() } else { vec![self.pid] };
        for pid in targets {
            match kill(Pid::from_raw(pid), sig) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => return Err(ShimError::internal(format!("kill {pid} with {sig}"))(e)),
            }
        }
        Ok(())
    }

    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.clone();
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return exit;
            }
            if rx.changed().await.is_err() {
                return Exit {
                    code: 255,
                    at: SystemTime::now(),
                };
            }
        }
    }

    pub async fn close_stdin(&self) {
        self.io.lock().await.close_stdin();
    }

    /// Delete: the init must have exited (a created one is killed first). Undoes the host-side
    /// setup and publishes TaskDelete.
    pub async fn delete(&self, events: &EventQueue) -> Result<Exit> {
        match self.status() {
            Status::Running => {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {} is running: kill it before delete",
                    self.id
                )))
            }
            Status::Created if self.exit().is_none() => {
                let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            }
            _ => {}
        }
        let exit = self.wait().await;
        cleanup_host(&self.bundle, self.rootfs_mounted, self.cgroup.as_ref()).map_err(|e| {
            ShimError::Internal {
                context: format!("clean up {}", self.id),
                err: e,
            }
        })?;
        let _ = std::fs::remove_file(self.bundle.join(INIT_STATE_FILE));
        events.send(
            TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: self.id.clone(),
                id: self.id.clone(),
                pid: self.pid as u32,
                exit_status: exit.code,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            },
        );
        Ok(exit)
    }
}

/// Removes what a container left on the host: its remaining processes (by cgroup), the mounts
/// under its bundle, its cgroup. Shared by Delete and the `delete` subcommand.
pub fn cleanup_host(bundle: &Path, unmount: bool, cgroup: Option<&Cgroup>) -> anyhow::Result<()> {
    if let Some(cg) = cgroup {
        for pid in cg.pids().unwrap_or_default() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    if unmount {
        let left = usernsrs_init::cleanup::unmount_under(bundle)?;
        if !left.is_empty() {
            anyhow::bail!("mounts still present after unmount: {left:?}");
        }
    }
    if let Some(cg) = cgroup {
        cg.remove()?;
    }
    Ok(())
}
