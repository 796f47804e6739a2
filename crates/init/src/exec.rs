//! An extra process in a running container (`ctr task exec`, `kubectl exec`), made by the
//! helper.
//!
//! The process must be exactly as confined as the container's init: the same user namespace
//! (its host uid is the mapped one, never host root; libcontainer's exec gets this wrong), every
//! other namespace of the init, the container's cgroup, and the credentials of its own process
//! spec. The steps:
//! 1. helper: open every namespace of the init that differs from its own, before joining any
//!    (once in the container's mount namespace, the host's /proc is gone);
//! 2. helper: fork E1, which joins the user namespace first (full capabilities inside it are
//!    what joining the others requires), then the others, then forks E2 into the pid namespace,
//!    reports E2's host pid and exits;
//! 3. helper: put E2 in the container's cgroup and give it the init's `oom_score_adj`, from the
//!    host side; tell it to go on;
//! 4. E2: limits, groups, ids, capabilities, cwd ([`crate::container::become_process`]);
//!    report ready, block until started, exec with stdio only.
//!
//! A failure kills and reaps what was forked; nothing else was changed.

use crate::cgroup::{Cgroup, CGROUP_ROOT};
use crate::channel::Channel;
use crate::container::{become_process, open_console, ready_then_exec};
use crate::proto::{ExecPlan, Sync, CONTROL_FD};
use crate::{error_chain, InitError};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use std::fs::{self, File};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Namespaces in the order they are joined: user first, mount last (it hides the host's
/// /proc, which the others do not need anyway since their fds are open already).
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

/// Step 1: fds of the init's namespaces that are not ours.
fn namespaces_of(init: i32) -> Result<Vec<(CloneFlags, OwnedFd)>, InitError> {
    let mut out = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = format!("/proc/{init}/ns/{name}");
        let same = match (
            fs::read_link(&theirs),
            fs::read_link(format!("/proc/self/ns/{name}")),
        ) {
            (Ok(a), Ok(b)) => a == b,
            (Err(e), _) => {
                return Err(InitError::Io {
                    context: format!("the container's init (pid {init}) is gone: {theirs}"),
                    err: e,
                })
            }
            (_, Err(_)) => false,
        };
        if !same {
            let fd = File::open(&theirs).map_err(InitError::io(format!("open {theirs}")))?;
            out.push((flag, OwnedFd::from(fd)));
        }
    }
    Ok(out)
}

/// Creates the exec'd process, blocked until started; returns its host pid.
pub(crate) fn exec(plan: &ExecPlan) -> Result<(i32, Option<OwnedFd>), InitError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(InitError::sys("set child subreaper"))?;
    let namespaces = namespaces_of(plan.init_pid)?;
    let (ours, theirs) = UnixStream::pair().map_err(InitError::io("socketpair"))?;
    let mut chan = Channel::new(ours);
    // SAFETY: the helper is single-threaded, so the child may run ordinary code after fork.
    let e1 = match unsafe { fork() }.map_err(InitError::sys("fork"))? {
        ForkResult::Child => {
            drop(chan);
            stage_one(plan, &namespaces, Channel::new(theirs))
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
        same_oom_score_as_init(plan.init_pid, raw)?;
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
fn same_oom_score_as_init(init: i32, pid: i32) -> Result<(), InitError> {
    let theirs = format!("/proc/{init}/oom_score_adj");
    let score = fs::read_to_string(&theirs).map_err(InitError::io(format!("read {theirs}")))?;
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
fn stage_one(plan: &ExecPlan, namespaces: &[(CloneFlags, OwnedFd)], mut chan: Channel) -> ! {
    // SAFETY: CONTROL_FD is the shim's control socket, open in this forked copy and unused here.
    unsafe { libc::close(CONTROL_FD) };
    let result = (|chan: &mut Channel| -> Result<(), InitError> {
        for (flag, fd) in namespaces {
            setns(fd.as_fd(), *flag).map_err(InitError::sys(format!(
                "join the container's {flag:?} namespace for exec {}",
                plan.exec_id
            )))?;
        }
        if namespaces
            .iter()
            .any(|(flag, _)| *flag == CloneFlags::CLONE_NEWUSER)
        {
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
        let _ = chan.send(&Sync::Error(error_chain(&e)));
        // SAFETY: leaving the forked child without running destructors meant for the helper.
        unsafe { libc::_exit(1) }
    }
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}
