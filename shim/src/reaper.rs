//! Reaping children and handing their exit statuses to whoever waits for them.
//!
//! The shim is a child subreaper: container processes, whose parents (the helper's stage-one
//! child) exit, become its children. One task reaps on SIGCHLD with `waitpid(-1, WNOHANG)`.
//!
//! A container's pid is learned only after its process exists, so an exit can be reaped before
//! anybody watches that pid. Exits nobody watches are kept, stamped with a sequence number; a
//! watcher passes the sequence number taken before it started the process, so an old exit of a
//! recycled pid is never mistaken for the new process's.
//!
//! Invariant: a reap and its record are one step under the lock. So, under the lock, a pid
//! whose exit is not recorded since the watcher's mark is still the process's (the shim is its
//! only reaper: its first parent exits without waiting, the helper waits only for its own
//! stage-one child), and [`Reaper::watch`] opens its pidfd there: every later signal or
//! `setns` goes through that fd, never through a pid that may be someone else's once reaped.

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use usernsrs_sys::PidFd;

/// How many unwatched exits are kept (orphans of containers without a pid namespace).
const KEEP_UNWATCHED: usize = 1024;

#[derive(Default)]
struct Inner {
    seq: u64,
    unwatched: HashMap<i32, (u64, i32)>,
    watchers: HashMap<i32, oneshot::Sender<i32>>,
}

#[derive(Clone, Default)]
pub struct Reaper(Arc<Mutex<Inner>>);

/// The exit code containerd expects: the status, or 128 + the signal.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

impl Reaper {
    /// Starts reaping. Must be called from within the tokio runtime.
    pub fn start() -> std::io::Result<Self> {
        let reaper = Reaper::default();
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing every exit afterwards; keep going with the data.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reap_all(&self) {
        loop {
            // The lock is held from the reap to its record (the invariant above).
            let mut inner = self.lock();
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    if let (Some(pid), Some(code)) = (status.pid(), exit_code(status)) {
                        Self::record_locked(&mut inner, pid.as_raw(), code);
                    }
                }
            }
        }
    }

    #[cfg(test)]
    fn record(&self, pid: i32, code: i32) {
        Self::record_locked(&mut self.lock(), pid, code);
    }

    fn record_locked(inner: &mut Inner, pid: i32, code: i32) {
        inner.seq += 1;
        if let Some(tx) = inner.watchers.remove(&pid) {
            let _ = tx.send(code);
            return;
        }
        if inner.unwatched.len() >= KEEP_UNWATCHED {
            let oldest = inner
                .unwatched
                .iter()
                .min_by_key(|(_, (s, _))| *s)
                .map(|(p, _)| *p);
            if let Some(p) = oldest {
                inner.unwatched.remove(&p);
            }
        }
        let seq = inner.seq;
        inner.unwatched.insert(pid, (seq, code));
    }

    /// The sequence number to pass to [`Reaper::watch`] for a process started after this call.
    pub fn mark(&self) -> u64 {
        self.lock().seq
    }

    /// Resolves with the exit code of `pid`, a process started after `since` was taken, and
    /// returns its pidfd, opened under the lock while the process is known not to be reaped;
    /// `None` when it was reaped already (it is gone: nothing may be sent to its pid).
    /// If the pidfd cannot be opened the process is killed (its pid is still its own here) and
    /// the error returned: a process the shim cannot address safely must not run.
    pub fn watch(
        &self,
        pid: i32,
        since: u64,
    ) -> std::io::Result<(oneshot::Receiver<i32>, Option<PidFd>)> {
        self.watch_with(pid, since, PidFd::open)
    }

    fn watch_with(
        &self,
        pid: i32,
        since: u64,
        open: impl FnOnce(i32) -> std::io::Result<PidFd>,
    ) -> std::io::Result<(oneshot::Receiver<i32>, Option<PidFd>)> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        if let Some((seq, code)) = inner.unwatched.remove(&pid) {
            if seq > since {
                let _ = tx.send(code);
                return Ok((rx, None));
            }
        }
        let pidfd = match open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                return Err(e);
            }
        };
        inner.watchers.insert(pid, tx);
        Ok((rx, Some(pidfd)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pidfd of a live process of our own, standing in for the container's: `watch` opens
    /// one for a process not reaped yet.
    fn pidfd_of_self(_pid: i32) -> std::io::Result<PidFd> {
        PidFd::open(std::process::id() as i32)
    }

    #[test]
    fn exit_before_watch_is_delivered_but_stale_exit_is_not() {
        let r = Reaper::default();
        r.record(42, 1); // an old process that had pid 42
        let since = r.mark();
        r.record(42, 7); // the new one, reaped before anyone watched
        let (mut rx, pidfd) = r.watch_with(42, since, pidfd_of_self).expect("watch");
        assert_eq!(rx.try_recv().expect("delivered"), 7);
        assert!(pidfd.is_none(), "a reaped process gets no pidfd");

        r.record(43, 3);
        let since = r.mark();
        let (mut rx, pidfd) = r.watch_with(43, since, pidfd_of_self).expect("watch");
        assert!(rx.try_recv().is_err(), "stale exit must not be delivered");
        assert!(pidfd.is_some(), "a process not reaped yet gets its pidfd");
        r.record(43, 9);
        assert_eq!(rx.try_recv().expect("delivered"), 9);
    }

    #[test]
    fn a_pidfd_that_cannot_be_opened_fails_the_watch() {
        let r = Reaper::default();
        let since = r.mark();
        // No process has this pid (above the largest pid_max), so the kill is a no-op.
        let err = r
            .watch_with(1 << 23, since, |_| {
                Err(std::io::Error::from_raw_os_error(libc::EMFILE))
            })
            .expect_err("no pidfd");
        assert_eq!(err.raw_os_error(), Some(libc::EMFILE));
        assert!(r.lock().watchers.is_empty(), "nobody waits for it");
    }

    #[test]
    fn signals_map_to_128_plus_n() {
        let pid = Pid::from_raw(1);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(
            exit_code(WaitStatus::Signaled(
                pid,
                nix::sys::signal::Signal::SIGKILL,
                false
            )),
            Some(137)
        );
    }
}
