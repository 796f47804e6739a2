//! `seccomp(2)`: install a classic BPF filter on the calling thread, and ask the kernel which
//! filter flags it knows.
//!
//! The filter is loaded with `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)`, never with a
//! library that sets `PR_SET_NO_NEW_PRIVS` on the way: whether the process gets no_new_privs is
//! the spec's `process.noNewPrivileges`, decided by the caller. Without it the kernel requires
//! CAP_SYS_ADMIN in the caller's user namespace (EACCES otherwise), so a caller that leaves
//! no_new_privs unset installs the filter before dropping its capabilities.

use std::io;

/// `SECCOMP_SET_MODE_FILTER`, include/uapi/linux/seccomp.h.
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;

/// Installs `program` with the `SECCOMP_FILTER_FLAG_*` bits `flags`. The thread keeps the
/// filter for good, and every process it execs or forks inherits it.
pub fn install_filter(flags: u32, program: &[libc::sock_filter]) -> io::Result<()> {
    let len = libc::c_ushort::try_from(program.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = libc::sock_fprog {
        len,
        // The kernel only reads the program (it copies it before installing it).
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `len` initialised `sock_filter`s borrowed from `program`, which
    // outlives the call; the kernel copies the program and keeps no pointer into our memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            libc::c_ulong::from(flags),
            &prog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the kernel knows the filter flag `flag`: it checks the flags before it reads the
/// program, so a null program gives EFAULT for a known flag and EINVAL for an unknown one (the
/// probe libseccomp uses). Nothing is installed either way.
pub fn filter_flag_supported(flag: u32) -> bool {
    // SAFETY: a null program pointer: the kernel validates the flags, then fails to copy the
    // program with EFAULT; it writes nothing and installs nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            libc::c_ulong::from(flag),
            std::ptr::null::<libc::sock_fprog>(),
        )
    };
    rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_the_log_flag_and_not_an_unknown_one() {
        // SECCOMP_FILTER_FLAG_LOG is in every kernel since 4.14.
        assert!(filter_flag_supported(1 << 1));
        assert!(!filter_flag_supported(1 << 31));
    }

    #[test]
    fn an_installed_filter_returns_its_errno_and_leaves_no_new_privs_alone() {
        // In a forked child, so the test process keeps no filter: as root, without
        // no_new_privs, CAP_SYS_ADMIN lets the filter in.
        // SAFETY: the child only makes raw syscalls and exits with _exit.
        match unsafe { libc::fork() } {
            0 => {
                // getppid (x86_64 110, aarch64 173) fails with EXDEV; everything else passes.
                let nr = libc::SYS_getppid as u32;
                let program = [
                    libc::sock_filter {
                        code: 0x20,
                        jt: 0,
                        jf: 0,
                        k: 0,
                    },
                    libc::sock_filter {
                        code: 0x15,
                        jt: 0,
                        jf: 1,
                        k: nr,
                    },
                    libc::sock_filter {
                        code: 0x06,
                        jt: 0,
                        jf: 0,
                        k: 0x0005_0000 | libc::EXDEV as u32,
                    },
                    libc::sock_filter {
                        code: 0x06,
                        jt: 0,
                        jf: 0,
                        k: 0x7fff_0000,
                    },
                ];
                let code = match install_filter(0, &program) {
                    Err(_) => 10,
                    Ok(()) => {
                        // SAFETY: plain syscalls without pointers.
                        let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
                        let errno = io::Error::last_os_error().raw_os_error();
                        // SAFETY: as above.
                        let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
                        match (ppid, errno, nnp) {
                            (-1, Some(libc::EXDEV), 0) => 0,
                            (_, _, 1) => 11,
                            _ => 12,
                        }
                    }
                };
                // SAFETY: leave the forked copy of the test harness at once.
                unsafe { libc::_exit(code) }
            }
            pid if pid > 0 => {
                let mut status = 0;
                // SAFETY: waiting for our own child; `status` is a valid out pointer.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                assert!(libc::WIFEXITED(status), "status {status:#x}");
                let code = libc::WEXITSTATUS(status);
                if code == 10 && !nix::unistd::geteuid().is_root() {
                    // Without root (CAP_SYS_ADMIN) the kernel wants no_new_privs: not this test.
                    panic!("run this test as root: the kernel refuses a filter without no_new_privs otherwise");
                }
                assert_eq!(
                    code, 0,
                    "10: refused, 11: no_new_privs set, 12: filter ignored"
                );
            }
            _ => panic!("fork: {}", io::Error::last_os_error()),
        }
    }
}
