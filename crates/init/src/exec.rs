//! An extra process in a running container (`ctr task exec`, `kubectl exec`), made by the
//! helper.
//!
//! The process must be exactly as confined as the container's init: the same user namespace
//! (its host uid is the mapped one, never host root; libcontainer's exec gets this wrong), every
//! other namespace of the init, the container's cgroup, and the credentials of its own process
//! spec. The steps:
//! 1. helper: find the namespaces of the init that differ from its own. The init is the pidfd
//!    the shim passes ([`INIT_PIDFD_FD`]), never a pid alone: once the init is reaped its pid
//!    may be another process's, and joining that one's namespaces as host root would run the
//!    exec'd process outside the container;
//! 2. helper: fork E1, which joins those namespaces through the pidfd in one `setns` (Linux
//!    5.8+; the kernel installs the user namespace first, whose full capabilities are what
//!    joining the others requires, and fails if the init has exited), then forks E2 into the
//!    pid namespace, reports E2's host pid and exits;
//! 3. helper: put E2 in the container's cgroup and give it the init's `oom_score_adj`, from the
//!    host side; tell it to go on;
//! 4. E2: limits, groups, ids, capabilities, cwd ([`crate::container::become_process`]);
//!    report ready, block until started, exec with stdio only.
//!
//! A failure kills and reaps what was forked; nothing else was changed.

use crate::cgroup::{Cgroup, CGROUP_ROOT};
use crate::channel::Channel;
use crate::container::{become_process, open_console, ready_then_exec};
use crate::proto::{ExecPlan, Sync, CONTROL_FD, INIT_PIDFD_FD};
use crate::{error_chain, InitError};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use usernsrs_sys::PidFd;

/// The namespaces an exec'd process shares with the init, by their `/proc/<pid>/ns` names.
const NAMESPACES: [(&str, CloneFlags); 8] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("time", CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// The error of an exec whose init exited before it could join it.
fn init_gone(plan: &ExecPlan, err: std::io::Error) -> InitError {
    InitError::Io {
        context: format!(
            "exec {} in {}: the container's init (pid {}) has exited",
            plan.exec_id, plan.container_id, plan.init_pid
        ),
        err,
    }
}

/// Fails unless the init is still running: what was read through `/proc/<pid>` before this
/// call was the init's, since a pid cannot change hands while its process lives.
fn init_still_runs(plan: &ExecPlan, init: &PidFd) -> Result<(), InitError> {
    match init.is_exited() {
        Ok(false) => Ok(()),
        Ok(true) => Err(init_gone(
            plan,
            std::io::Error::from_raw_os_error(libc::ESRCH),
        )),
        Err(e) => Err(InitError::io("poll the init's pidfd")(e)),
    }
}

/// Step 1: the setns flags of the init's namespaces that are not ours. The links are read
/// through `/proc/<pid>` and then checked against the pidfd.
fn namespaces_of(plan: &ExecPlan, init: &PidFd) -> Result<CloneFlags, InitError> {
    let mut flags = CloneFlags::empty();
    for (name, flag) in NAMESPACES {
        let theirs = format!("/proc/{}/ns/{name}", plan.init_pid);
        let same = match (
            fs::read_link(&theirs),
            fs::read_link(format!("/proc/self/ns/{name}")),
        ) {
            (Ok(a), Ok(b)) => a == b,
            // A kernel without this kind of namespace (no time namespaces before 5.6).
            (Err(_), Err(_)) => true,
            (Err(e), Ok(_)) => return Err(init_gone(plan, e)),
            (Ok(_), Err(_)) => false,
        };
        if !same {
            flags |= flag;
        }
    }
    init_still_runs(plan, init)?;
    Ok(flags)
}

/// Creates the exec'd process, blocked until started; returns its host pid.
pub(crate) fn exec(plan: &ExecPlan) -> Result<(i32, Option<OwnedFd>), InitError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(InitError::sys("set child subreaper"))?;
    // SAFETY: for an Exec request the shim passes the init's pidfd as INIT_PIDFD_FD (see
    // `proto`), and nothing else in this process owns that fd.
    let init = PidFd::from_owned(unsafe { OwnedFd::from_raw_fd(INIT_PIDFD_FD) });
    let namespaces = namespaces_of(plan, &init)?;
    let (ours, theirs) = UnixStream::pair().map_err(InitError::io("socketpair"))?;
    let mut chan = Channel::new(ours);
    // SAFETY: the helper is single-threaded, so the child may run ordinary code after fork.
    let e1 = match unsafe { fork() }.map_err(InitError::sys("fork"))? {
        ForkResult::Child => {
            drop(chan);
            stage_one(plan, &init, namespaces, Channel::new(theirs))
        }
        ForkResult::Parent { child } => child,
    };
    drop(theirs);
    let mut e2 = None;
    let result = (|| -> Result<(i32, Option<OwnedFd>), InitError> {
        let Sync::Pid(raw) = chan.expect_msg("Pid", |m| matches!(m, Sync::Pid(_)))? else {
            unreachable!("expect_msg checked the variant")
        };
        e2 = Some(Pid::from_raw(raw));
        waitpid(e1, None).map_err(InitError::sys("wait for exec stage one"))?;
        // Step 3.
        if let Some(path) = &plan.cgroups_path {
            Cgroup::new(Path::new(CGROUP_ROOT), path)
                .and_then(|cg| cg.add(raw))
                .map_err(InitError::io(format!("join cgroup {path}")))?;
        }
        same_oom_score_as_init(plan, &init, raw)?;
        chan.send(&Sync::Proceed)?;
        let console = chan.await_ready()?;
        Ok((raw, console))
    })();
    if result.is_err() {
        for pid in [e2, Some(e1)].into_iter().flatten() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
    result
}

/// The exec'd process is killed in the container's order under memory pressure, not protected
/// like the shim it was forked from (it inherits the shim's `oom_score_adj`).
fn same_oom_score_as_init(plan: &ExecPlan, init: &PidFd, pid: i32) -> Result<(), InitError> {
    let theirs = format!("/proc/{}/oom_score_adj", plan.init_pid);
    let score = fs::read_to_string(&theirs).map_err(InitError::io(format!("read {theirs}")))?;
    init_still_runs(plan, init)?;
    let ours = format!("/proc/{pid}/oom_score_adj");
    if fs::read_to_string(&ours).ok().as_deref() != Some(score.as_str()) {
        fs::write(&ours, score.trim()).map_err(InitError::io(format!(
            "set oom_score_adj {} of the exec'd process, as its container's",
            score.trim()
        )))?;
    }
    Ok(())
}

/// E1 (step 2). Never returns.
fn stage_one(plan: &ExecPlan, init: &PidFd, namespaces: CloneFlags, mut chan: Channel) -> ! {
    // SAFETY: CONTROL_FD is the shim's control socket, open in this forked copy and unused here.
    unsafe { libc::close(CONTROL_FD) };
    let result = (|chan: &mut Channel| -> Result<(), InitError> {
        if !namespaces.is_empty() {
            init.join_namespaces(namespaces).map_err(|e| {
                if e.raw_os_error() == Some(libc::ESRCH) {
                    init_gone(plan, e)
                } else {
                    InitError::io(format!(
                        "join the container's namespaces {namespaces:?} for exec {}",
                        plan.exec_id
                    ))(e)
                }
            })?;
        }
        if namespaces.contains(CloneFlags::CLONE_NEWUSER) {
            // Host uid 0 is unmapped inside: become the namespace's root, as the container's
            // init did, so that what the process creates (its pty) is owned by a mapped id.
            let root_gid = nix::unistd::Gid::from_raw(0);
            let root_uid = nix::unistd::Uid::from_raw(0);
            nix::unistd::setresgid(root_gid, root_gid, root_gid).map_err(InitError::sys(
                "become gid 0 in the container's user namespace",
            ))?;
            nix::unistd::setresuid(root_uid, root_uid, root_uid).map_err(InitError::sys(
                "become uid 0 in the container's user namespace",
            ))?;
        }
        // SAFETY: E1 is single-threaded (forked from the single-threaded helper).
        match unsafe { fork() }.map_err(InitError::sys("fork the exec'd process"))? {
            ForkResult::Child => {
                let mut own = chan.try_clone()?;
                let prepared = own
                    .expect_proceed()
                    .and_then(|()| open_console(&plan.process, &mut own))
                    .and_then(|()| become_process(&plan.process, plan.seccomp.as_ref()));
                ready_then_exec(own, prepared)
            }
            ForkResult::Parent { child } => chan.send(&Sync::Pid(child.as_raw())),
        }
    })(&mut chan);
    if let Err(e) = result {
        let _ = chan.send(&Sync::Error(error_chain(&e), e.kind()));
        // SAFETY: leaving the forked child without running destructors meant for the helper.
        unsafe { libc::_exit(1) }
    }
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}
