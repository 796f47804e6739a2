//! `linux.seccomp` in the container's processes: the profile compiled by
//! [`usernsrs_runtime_core::seccomp`] and installed with `seccomp(2)` ([`usernsrs_sys::seccomp`]).
//!
//! When it is installed is [`crate::container::become_process`]'s business, as in runc: with
//! `process.noNewPrivileges` the filter goes on last, right before exec (as few syscalls as
//! possible run under it); without, it goes on while the process still has CAP_SYS_ADMIN in its
//! user namespace, which the kernel requires of a filter without no_new_privs, and the process
//! never gets no_new_privs (setuid binaries keep working).

use crate::InitError;
use oci_spec::runtime::LinuxSeccomp;
use usernsrs_runtime_core::seccomp::{compile as compile_profile, Arch, Filter};

/// The filter for `profile` on this machine's architecture.
pub(crate) fn compile(profile: &LinuxSeccomp) -> Result<Filter, InitError> {
    Ok(compile_profile(profile, Arch::native()?)?)
}

/// Installs `filter` on this thread; what it execs inherits it.
pub(crate) fn install(filter: &Filter) -> Result<(), InitError> {
    let program: Vec<libc::sock_filter> = filter
        .program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    usernsrs_sys::seccomp::install_filter(filter.flags, &program).map_err(|err| {
        let flags = filter.flag_names();
        InitError::Io {
            context: format!(
                "linux.seccomp: load the filter ({} instructions{}{})",
                program.len(),
                if flags.is_empty() { "" } else { ", flags " },
                flags.join(" ")
            ),
            err,
        }
    })
}
