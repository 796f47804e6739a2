//! Process file descriptors (`pidfd_open(2)`, Linux 5.3+): a handle on one process that stays
//! tied to it after it exits, so a signal or a `setns` through it can never reach another
//! process that was given the same pid later.
//!
//! A pid names a process only until its parent reaps it; after that the kernel may hand the
//! number to anyone. A pidfd opened while the process is alive or a zombie (not yet reaped)
//! refers to that process for as long as the fd is open: once it is reaped, signals through
//! the fd fail with `ESRCH` and `setns` through it fails as well, whatever holds the pid now.
//!
//! Opening is only race-free when the caller knows the pid was not reaped in between (it is
//! the caller's unreaped child, or the only reaper of it checked under its lock); see
//! [`PidFd::open`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sched::CloneFlags;

/// An open pidfd.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a pidfd of `pid` (in the caller's pid namespace). The caller vouches that `pid`
    /// still names the process it means: a child it has not reaped, or a process whose reaper
    /// says it was not reaped (under the reaper's lock). `ESRCH` means no process has `pid`.
    pub fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and a flags word by value and returns a new fd or -1;
        // no memory is passed. The fd is close-on-exec (the kernel always sets O_CLOEXEC).
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd_open: fd out of range"))?;
        // SAFETY: the kernel just returned `fd`, a new descriptor nothing else owns.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Takes ownership of a pidfd received from elsewhere (an inherited fd, SCM_RIGHTS). Only
    /// its kind is checked: [`PidFd::is_exited`] on a descriptor that is not a pidfd fails.
    pub fn from_owned(fd: OwnedFd) -> Self {
        PidFd(fd)
    }

    /// Sends `signal` (0 only checks that the process exists) to the process. `ESRCH`: it was
    /// reaped; nothing was sent to anybody. A zombie accepts a signal and ignores it.
    pub fn send_signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal(fd, sig, info, flags): `self.0` is an open pidfd for the
        // duration of the call; a null `info` makes the kernel fill in a SI_USER siginfo
        // itself, so no memory is passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the process has exited (a zombie or reaped): the kernel makes a pidfd readable
    /// then. Does not block.
    pub fn is_exited(&self) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes the one `pollfd` the pointer designates, which lives on
        // this stack frame for the whole call; a zero timeout never blocks.
        if unsafe { libc::poll(&mut pfd, 1, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if pfd.revents & libc::POLLNVAL != 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        Ok(pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0)
    }

    /// Joins the namespaces in `flags` of the process, all in one step (`setns(2)` on a
    /// pidfd, Linux 5.8+): the user namespace first, then the others with the credentials it
    /// gives. Fails (`ESRCH`) once the process has exited, whoever holds its pid now; a flag
    /// naming a user namespace the caller is already in gives `EINVAL`.
    pub fn join_namespaces(&self, flags: CloneFlags) -> io::Result<()> {
        nix::sched::setns(self.0.as_fd(), flags).map_err(io::Error::from)
    }

    /// A second descriptor of the same process, e.g. to hand to a helper.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(PidFd(self.0.try_clone()?))
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl From<PidFd> for OwnedFd {
    fn from(fd: PidFd) -> Self {
        fd.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn signals_reach_the_process_until_it_is_reaped_then_nobody() {
        let mut child = Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id()).expect("pid fits");
        let fd = PidFd::open(pid).expect("pidfd_open of our child");
        assert!(!fd.is_exited().expect("poll"), "sleep is running");
        fd.send_signal(0).expect("the process exists");
        fd.send_signal(libc::SIGKILL)
            .expect("kill through the pidfd");
        // A zombie until reaped: exited, and still accepting (ignoring) signals.
        while !fd.is_exited().expect("poll") {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        fd.send_signal(0).expect("a zombie still takes signals");
        let status = child.wait().expect("reap");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        let err = fd
            .send_signal(libc::SIGTERM)
            .expect_err("reaped: nothing to signal");
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "{err}");
        let err = fd
            .join_namespaces(CloneFlags::CLONE_NEWUTS)
            .expect_err("reaped: no namespaces to join");
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "{err}");
    }

    #[test]
    fn opening_a_pid_nobody_has_fails_with_esrch() {
        // Above /proc/sys/kernel/pid_max's largest possible value (2^22).
        let err = PidFd::open(1 << 23).expect_err("no such process");
        assert!(
            matches!(err.raw_os_error(), Some(libc::ESRCH) | Some(libc::EINVAL)),
            "{err}"
        );
    }
}
