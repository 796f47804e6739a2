//! One process of a container, its init or an exec'd one: created by the helper, released by
//! Start, reaped, its exit published once its output reached containerd.
//!
//! Invariants:
//! - the process is created by the helper (a fresh exec of this binary), never by forking
//!   inside the tokio runtime;
//! - its TaskExit is queued only after Start queued TaskStart/TaskExecStarted (the `lifecycle`
//!   lock orders them), after the caller's gate (the init kills what is left of a container
//!   without its own pid namespace, then waits for its exec'd processes), and after its output
//!   was drained, under one deadline for stdout and stderr together;
//! - it is addressed through its pidfd, opened before the shim could reap it (see
//!   [`crate::reaper`]), never through its pid: between the reap and the published exit, and
//!   after, the pid may be another process's. A signal to a reaped process reaches nobody.

use crate::errors::{Result, ShimError};
use crate::events::EventQueue;
use crate::helper_exe::HelperExe;
use crate::reaper::Reaper;
use crate::stdio::{LogContext, ProcessIo, StdioPaths};
use containerd_shim::protos::events::task::{TaskExecStarted, TaskExit, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics::{
    TASK_EXEC_STARTED_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use nix::sys::signal::Signal;
use std::fs::File;
use std::future::Future;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};
use usernsrs_init::proto::{
    FailureKind, HelperReply, HelperRequest, CONTROL_FD, EXEC_STATUS_FD, HELPER_ARG, INIT_PIDFD_FD,
    START_FD,
};
use usernsrs_sys::PidFd;

/// How long the exit of a process waits for its output to be copied.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

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

pub struct Process {
    pub container_id: String,
    /// The exec id, or empty for the init.
    pub exec_id: String,
    pub pid: i32,
    /// The process itself, for signals and for the namespaces an exec joins; `None` when it
    /// had been reaped before the shim learnt its pid.
    pidfd: Option<PidFd>,
    pub stdio: StdioPaths,
    /// The master of its pty, for ResizePty.
    console: Option<OwnedFd>,
    state: Mutex<State>,
    exit: watch::Receiver<Option<Exit>>,
    exit_tx: Mutex<Option<watch::Sender<Option<Exit>>>>,
    io: tokio::sync::Mutex<ProcessIo>,
    lifecycle: tokio::sync::Mutex<()>,
}

/// Runs the helper on `request` in `cwd` with the given stdio (and, for an exec, the init's
/// pidfd); returns the new process's pid and the shim's ends of the start and exec status pipes.
async fn run_helper(
    request: &HelperRequest,
    what: &str,
    cwd: &Path,
    stdio: [OwnedFd; 3],
    helper: &HelperExe,
    init_pidfd: Option<&PidFd>,
) -> Result<Created> {
    // The sealed view of this server's own binary (CVE-2019-5736): the helper's stages, the
    // container's init up to its exec among them, run from a file no container can write,
    // never from the host's binary. It is the same code as the server, even after the file on
    // disk was replaced by an upgrade.
    let exe = helper.get().await?;
    let (control, helper_control) =
        std::os::unix::net::UnixStream::pair().map_err(ShimError::internal("socketpair"))?;
    let (start_r, start_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ShimError::internal("pipe"))?;
    let (status_r, status_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ShimError::internal("pipe"))?;
    let [stdin, stdout, stderr] = stdio;

    let mut cmd = std::process::Command::new(exe.exec_path());
    cmd.arg0("containerd-shim-usernsrs-v2")
        .arg(HELPER_ARG)
        .current_dir(cwd)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    let mut passed = vec![
        (OwnedFd::from(helper_control), CONTROL_FD),
        (start_r, START_FD),
        (status_w, EXEC_STATUS_FD),
    ];
    if let Some(fd) = init_pidfd {
        let fd = fd
            .try_clone()
            .map_err(ShimError::internal("dup the init's pidfd"))?;
        passed.push((fd.into(), INIT_PIDFD_FD));
    }
    let raw: Vec<(i32, i32)> = passed
        .iter()
        .map(|(fd, to)| (fd.as_raw_fd(), *to))
        .collect();
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl and dup2,
    // which are async-signal-safe; it touches no memory but the copied `raw` vector. The
    // sealed binary's fd is above every target here (see `helper_exe`), so no dup2 replaces
    // it before exec opens it through /proc/self/fd.
    unsafe {
        cmd.pre_exec(move || {
            // First move every source above the targets so that no dup2 clobbers a source.
            let mut high = [(0i32, 0i32); 4];
            for (i, (src, to)) in raw.iter().enumerate() {
                let fd = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 10);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high[i] = (fd, *to);
            }
            for &(fd, to) in &high[..raw.len()] {
                if libc::dup2(fd, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(ShimError::internal("start the helper"))?;
    drop(cmd);
    drop(passed);
    log::debug!("helper pid {} for {what}", child.id());

    control
        .set_nonblocking(true)
        .map_err(ShimError::internal("control socket"))?;
    let mut control =
        tokio::net::UnixStream::from_std(control).map_err(ShimError::internal("control socket"))?;
    let json = serde_json::to_vec(request).map_err(ShimError::internal("encode helper request"))?;
    control
        .write_all(&json)
        .await
        .map_err(ShimError::internal("send request to helper"))?;
    control
        .shutdown()
        .await
        .map_err(ShimError::internal("send request to helper"))?;
    // The reply is one line; a pty master may come attached to it (SCM_RIGHTS), so it is read
    // with recvmsg, on a blocking thread.
    let control = control
        .into_std()
        .map_err(ShimError::internal("control socket"))?;
    control
        .set_nonblocking(false)
        .map_err(ShimError::internal("control socket"))?;
    let (reply, console) =
        tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
            let mut reply = Vec::new();
            let mut console = None;
            let mut buf = [0u8; 4096];
            while !reply.ends_with(b"\n") {
                let (n, fd) = usernsrs_init::recv_with_fd(&control, &mut buf)?;
                if n == 0 {
                    break;
                }
                console = console.or(fd);
                reply.extend_from_slice(&buf[..n]);
            }
            Ok((reply, console))
        })
        .await
        .map_err(ShimError::internal("read helper reply"))?
        .map_err(ShimError::internal("read helper reply"))?;
    match serde_json::from_slice::<HelperReply>(&reply) {
        Ok(HelperReply::Created {
            pid,
            console: wants,
        }) => {
            if wants && console.is_none() {
                return Err(ShimError::Internal {
                    context: format!("{what}: the helper announced a console but sent none"),
                    err: anyhow::anyhow!("no SCM_RIGHTS"),
                });
            }
            Ok(Created {
                pid,
                start: start_w,
                exec_status: status_r,
                console,
            })
        }
        Ok(HelperReply::Failed { error, kind }) => {
            let message = format!("{what}: {error}");
            Err(match kind {
                FailureKind::Refused => ShimError::InvalidArgument(message),
                FailureKind::Unsupported => ShimError::FailedPrecondition(message),
                FailureKind::Internal => ShimError::Internal {
                    context: message,
                    err: anyhow::anyhow!("the helper failed"),
                },
            })
        }
        Err(_) => Err(ShimError::Internal {
            context: format!("{what}: the helper exited without an answer"),
            err: anyhow::anyhow!("reply {:?}", String::from_utf8_lossy(&reply)),
        }),
    }
}

/// What the helper hands back: the new process and the shim's ends of its pipes.
struct Created {
    pid: i32,
    start: OwnedFd,
    exec_status: OwnedFd,
    /// The master of its pty, with `process.terminal`.
    console: Option<OwnedFd>,
}

/// Who a new process is and where its helper runs.
pub struct Launch<'a> {
    pub namespace: &'a str,
    pub container_id: &'a str,
    /// Empty for the init.
    pub exec_id: &'a str,
    /// The helper's working directory (the bundle).
    pub cwd: &'a Path,
    /// Host ids that own the stdio pipes.
    pub io_owner: Option<(u32, u32)>,
    /// The process gets a pty (`process.terminal`).
    pub terminal: bool,
    /// The binary the helper is exec'd from.
    pub helper: &'a HelperExe,
    /// Exec: the container's init, whose namespaces the helper joins through this pidfd.
    pub init_pidfd: Option<&'a PidFd>,
}

impl Process {
    /// Creates the process (blocked until [`Process::start`]) and returns it with the receiver
    /// of its exit code, which [`Process::publish_exit`] consumes.
    pub async fn create(
        request: &HelperRequest,
        launch: Launch<'_>,
        stdio: StdioPaths,
        reaper: &Reaper,
    ) -> Result<(Arc<Process>, oneshot::Receiver<i32>)> {
        let Launch {
            namespace,
            container_id,
            exec_id,
            cwd,
            io_owner,
            terminal,
            helper,
            init_pidfd,
        } = launch;
        let what = if exec_id.is_empty() {
            format!("create {container_id}")
        } else {
            format!("exec {exec_id} in {container_id}")
        };
        let ctx = LogContext {
            container_id,
            namespace,
        };
        let (mut io, child_fds) = if terminal {
            ProcessIo::for_terminal()
        } else {
            ProcessIo::open(&stdio, io_owner, &ctx).await
        }
        .map_err(ShimError::internal(format!("open stdio of {what}")))?;
        let since = reaper.mark();
        let Created {
            pid,
            start: start_w,
            exec_status: status_r,
            console,
        } = run_helper(request, &what, cwd, child_fds, helper, init_pidfd).await?;
        let console = match console {
            Some(master) => {
                let copy = master
                    .try_clone()
                    .map_err(ShimError::internal("dup pty master"))?;
                io.attach_console(copy, &stdio)
                    .map_err(ShimError::internal(format!("copy the terminal of {what}")))?;
                Some(master)
            }
            None => None,
        };
        // No await between the helper's reply and here is needed for correctness: the pidfd is
        // opened under the reaper's lock, which tells whether the pid was reaped meanwhile.
        let (exit_rx, pidfd) = reaper
            .watch(pid, since)
            .map_err(ShimError::internal(format!(
                "{what}: pidfd of process {pid}"
            )))?;
        let (exit_tx, exit) = watch::channel(None);
        let process = Arc::new(Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            pid,
            pidfd,
            stdio,
            state: Mutex::new(State {
                status: Status::Created,
                start_pipe: Some(start_w),
                exec_status: Some(status_r),
            }),
            console,
            exit,
            exit_tx: Mutex::new(Some(exit_tx)),
            io: tokio::sync::Mutex::new(io),
            lifecycle: tokio::sync::Mutex::new(()),
        });
        Ok((process, exit_rx))
    }

    /// The exit path: reaped → `gate` → output drained → after Start's event → TaskExit.
    pub fn publish_exit(
        self: &Arc<Self>,
        exit_rx: oneshot::Receiver<i32>,
        events: EventQueue,
        gate: impl Future<Output = ()> + Send + 'static,
    ) {
        let p = self.clone();
        tokio::spawn(async move {
            let code = exit_rx.await.unwrap_or(255);
            // The gate first: it kills what is left of the container, which may be what still
            // holds the output open; the drain then ends as soon as the copies catch up.
            gate.await;
            p.io.lock().await.drain(DRAIN_LIMIT).await;
            let _order = p.lifecycle.lock().await;
            let at = SystemTime::now();
            {
                let mut st = p.lock_state();
                st.status = Status::Stopped;
                st.start_pipe = None;
            }
            let id = if p.exec_id.is_empty() {
                &p.container_id
            } else {
                &p.exec_id
            };
            events.send(
                TASK_EXIT_EVENT_TOPIC,
                TaskExit {
                    container_id: p.container_id.clone(),
                    id: id.clone(),
                    pid: p.pid as u32,
                    exit_status: code as u32,
                    exited_at: Some(timestamp(at)).into(),
                    ..Default::default()
                },
            );
            let tx = p.exit_tx.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(tx) = tx {
                let _ = tx.send(Some(Exit {
                    code: code as u32,
                    at,
                }));
            }
        });
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

    /// Releases the process and waits for its exec to succeed or fail; queues TaskStart (init)
    /// or TaskExecStarted.
    pub async fn start(&self, events: &EventQueue) -> Result<()> {
        let _order = self.lifecycle.lock().await;
        let (start, status) = {
            let mut st = self.lock_state();
            if st.status != Status::Created {
                return Err(ShimError::FailedPrecondition(format!(
                    "process {} of {} is {:?}, not created",
                    self.pid, self.container_id, st.status
                )));
            }
            (st.start_pipe.take(), st.exec_status.take())
        };
        let (Some(start), Some(status)) = (start, status) else {
            return Err(ShimError::FailedPrecondition(format!(
                "process {} of {} was already started",
                self.pid, self.container_id
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
        .map_err(ShimError::internal(format!("start {}", self.container_id)))?;
        if !outcome.is_empty() {
            return Err(ShimError::FailedPrecondition(format!(
                "start {}: {outcome}",
                self.container_id
            )));
        }
        self.lock_state().status = Status::Running;
        if self.exec_id.is_empty() {
            events.send(
                TASK_START_EVENT_TOPIC,
                TaskStart {
                    container_id: self.container_id.clone(),
                    pid: self.pid as u32,
                    ..Default::default()
                },
            );
        } else {
            events.send(
                TASK_EXEC_STARTED_EVENT_TOPIC,
                TaskExecStarted {
                    container_id: self.container_id.clone(),
                    exec_id: self.exec_id.clone(),
                    pid: self.pid as u32,
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    /// Kill: through the pidfd, so a process that was reaped (its exit maybe not published
    /// yet) gets nothing and neither does whoever holds its pid now. A finished process is
    /// NotFound "already finished", as containerd's runc shim answers.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let finished = || {
            ShimError::NotFound(format!(
                "process {} of {} already finished",
                self.pid, self.container_id
            ))
        };
        if self.exit().is_some() {
            return Err(finished());
        }
        let Some(pidfd) = &self.pidfd else {
            return Err(finished());
        };
        match pidfd.send_signal(signal as i32) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(finished()),
            Err(e) => Err(ShimError::internal(format!(
                "kill {} with {signal}",
                self.pid
            ))(e)),
        }
    }

    /// Whether the process has exited, even if the exit is not published yet (its output
    /// still draining): a zombie or reaped.
    pub fn has_exited(&self) -> bool {
        self.exit().is_some()
            || self
                .pidfd
                .as_ref()
                .is_none_or(|fd| fd.is_exited().unwrap_or(false))
    }

    /// The pidfd, for an exec into this process's namespaces.
    pub fn pidfd(&self) -> Option<&PidFd> {
        self.pidfd.as_ref()
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

    pub fn terminal(&self) -> bool {
        self.console.is_some()
    }

    /// ResizePty: the pty's window size.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(master) = &self.console else {
            return Err(ShimError::FailedPrecondition(format!(
                "process {} of {} has no terminal",
                self.pid, self.container_id
            )));
        };
        let ws = libc::winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a `winsize` from the pointer, valid for the call; `master`
        // is an open pty master.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(ShimError::internal("resize the terminal")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    pub async fn close_stdin(&self) {
        self.io.lock().await.close_stdin();
    }
}
