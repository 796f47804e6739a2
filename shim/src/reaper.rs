//! Reaping children and handing their exit statuses to whoever waits for them.
//!
//! The shim is a child subreaper: container processes, whose parents (the helper's stage-one
//! child) exit, become its children. One task reaps on SIGCHLD with `waitpid(-1, WNOHANG)`.
//!
//! A container's pid is learned only after its process exists, so an exit can be reaped before
//! anybody watches that pid. Exits nobody watches are kept, stamped with a sequence number; a
//! watcher passes the sequence number taken before it started the process, so an old exit of a
//! recycled pid is never mistaken for the new process's.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

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
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    if let (Some(pid), Some(code)) = (status.pid(), exit_code(status)) {
                        self.record(pid.as_raw(), code);
                    }
                }
            }
        }
    }

    fn record(&self, pid: i32, code: i32) {
        let mut inner = self.lock();
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

    /// Resolves with the exit code of `pid`, a process started after `since` was taken.
    pub fn watch(&self, pid: i32, since: u64) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        match inner.unwatched.remove(&pid) {
            Some((seq, code)) if seq > since => {
                let _ = tx.send(code);
            }
            _ => {
                inner.watchers.insert(pid, tx);
            }
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_before_watch_is_delivered_but_stale_exit_is_not() {
        let r = Reaper::default();
        r.record(42, 1); // an old process that had pid 42
        let since = r.mark();
        r.record(42, 7); // the new one, reaped before anyone watched
        let mut rx = r.watch(42, since);
        assert_eq!(rx.try_recv().expect("delivered"), 7);

        r.record(43, 3);
        let since = r.mark();
        let mut rx = r.watch(43, since);
        assert!(rx.try_recv().is_err(), "stale exit must not be delivered");
        r.record(43, 9);
        assert_eq!(rx.try_recv().expect("delivered"), 9);
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
