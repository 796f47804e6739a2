//! A user namespace fd carrying a given id mapping, for `MOUNT_ATTR_IDMAP`.
//!
//! The kernel only takes the mapping of an existing user namespace, so one is made for the
//! purpose: fork a child, let it `unshare(CLONE_NEWUSER)`, write its `uid_map`/`gid_map` from the
//! parent (as host root no `setgroups` write is needed), open `/proc/<child>/ns/user`, and let the
//! child exit. The fd keeps the namespace alive after the child is gone.
//!
//! Only call this from a single-threaded process: it forks.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, pipe, ForkResult};

/// Makes a user namespace whose `uid_map` and `gid_map` are the given texts (lines of
/// `inside outside length`) and returns an fd to it.
pub fn user_namespace_fd(uid_map: &str, gid_map: &str) -> io::Result<OwnedFd> {
    // Two pipes: the child says "unshared" on one, and waits for EOF on the other before exiting,
    // so that its /proc entry is there while the parent writes the maps and opens the ns.
    let (ready_r, ready_w) = pipe()?;
    let (done_r, done_w) = pipe()?;

    // SAFETY: the caller is single-threaded (documented contract of this module), so the child
    // may run arbitrary code; it still only makes raw syscalls and leaves with `_exit`.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(ready_r);
            drop(done_w);
            let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let mut ready = File::from(ready_w);
            let _ = ready.write_all(if ok { b"1" } else { b"0" });
            drop(ready);
            let mut done = File::from(done_r);
            let mut buf = [0u8; 1];
            let _ = done.read(&mut buf);
            // SAFETY: `_exit` ends the forked child without running the parent's atexit handlers
            // or destructors twice.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(done_r);
            let result = (|| {
                let mut status = [0u8; 1];
                File::from(ready_r).read_exact(&mut status)?;
                if status[0] != b'1' {
                    return Err(io::Error::other(
                        "unshare(CLONE_NEWUSER) failed in helper child",
                    ));
                }
                std::fs::write(format!("/proc/{child}/uid_map"), uid_map)?;
                std::fs::write(format!("/proc/{child}/gid_map"), gid_map)?;
                Ok(OwnedFd::from(File::open(format!("/proc/{child}/ns/user"))?))
            })();
            drop(done_w);
            waitpid(child, None)?;
            result
        }
    }
}
