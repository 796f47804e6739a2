//! The file the helper is exec'd from: a sealed view of this shim's own binary, so that no
//! container can reach the host's binary through `/proc/<pid>/exe` of a shim stage
//! (CVE-2019-5736; see [`usernsrs_sys::exeseal`]).
//!
//! Invariants:
//! - one sealed file per server, made on the first Create or Exec and kept open until the
//!   server exits; Creates and Execs that follow reuse it;
//! - it is the very binary this server runs (the overlay is refused when the file on disk was
//!   replaced since; the memfd is copied from `/proc/self/exe`);
//! - its fd is at [`MIN_FD`] or above, clear of the fds a helper gets before exec (see
//!   `process::run_helper`).
//!
//! Which seal: the read-only overlayfs first (no copy, no memory), else the memfd copy. The
//! environment variable [`SEAL_ENV`]`=memfd` makes it the memfd from the start (the tests of that
//! path and its measurement use it); `auto` or unset is the default. Any other value is refused
//! at the first Create, by name.

use crate::errors::{Result, ShimError};
use std::fs::File;
use usernsrs_sys::{SealKind, SealedExe};

/// The environment variable that picks the seal (`auto`, the default, or `memfd`).
pub const SEAL_ENV: &str = "USERNSRS_EXE_SEAL";

/// The sealed fd's lowest number: a helper gets its stdio and the fds of
/// `usernsrs_init::proto` (3 to 6) placed below it before exec.
const MIN_FD: i32 = 10;
const _: () = assert!(MIN_FD > usernsrs_init::proto::EXEC_STATUS_FD);
const _: () = assert!(MIN_FD > usernsrs_init::proto::CONTROL_FD);
const _: () = assert!(MIN_FD > usernsrs_init::proto::START_FD);
const _: () = assert!(MIN_FD > usernsrs_init::proto::INIT_PIDFD_FD);

/// The sealed binary of this server, made once, on first use.
#[derive(Default)]
pub struct HelperExe {
    sealed: tokio::sync::OnceCell<SealedExe>,
}

impl HelperExe {
    /// The sealed binary; seals it on the first call (a failure is returned and the next call
    /// tries again).
    pub async fn get(&self) -> Result<&SealedExe> {
        self.sealed
            .get_or_try_init(|| async {
                tokio::task::spawn_blocking(seal)
                    .await
                    .map_err(ShimError::internal("seal the shim binary"))?
            })
            .await
    }
}

/// What [`SEAL_ENV`] asks for.
#[derive(Debug, PartialEq, Eq)]
enum Choice {
    Auto,
    Memfd,
}

fn choice(value: Option<&str>) -> Result<Choice> {
    match value {
        None | Some("") | Some("auto") => Ok(Choice::Auto),
        Some("memfd") => Ok(Choice::Memfd),
        Some(other) => Err(ShimError::FailedPrecondition(format!(
            "the shim's environment has {SEAL_ENV}={other:?}: it takes \"auto\" (a read-only \
             overlayfs view of the binary, else a sealed memfd copy) or \"memfd\""
        ))),
    }
}

fn seal() -> Result<SealedExe> {
    let started = std::time::Instant::now();
    let choice = choice(std::env::var(SEAL_ENV).ok().as_deref())?;
    let running = File::open("/proc/self/exe")
        .map_err(ShimError::internal("open /proc/self/exe to seal it"))?;
    let memfd = || {
        SealedExe::memfd(&running, c"containerd-shim-usernsrs-v2").map_err(|e| {
            ShimError::FailedPrecondition(format!(
                "cannot seal the shim binary for its helper (CVE-2019-5736): memfd copy: {}",
                usernsrs_init::error_chain(&e)
            ))
        })
    };
    let sealed = match choice {
        Choice::Memfd => memfd()?,
        Choice::Auto => {
            let path = std::fs::read_link("/proc/self/exe")
                .map_err(ShimError::internal("readlink /proc/self/exe"))?;
            match SealedExe::overlay(&path, &running, &std::env::temp_dir()) {
                Ok(sealed) => sealed,
                Err(e) => {
                    let why = usernsrs_init::error_chain(&e);
                    log::warn!(
                        "no read-only overlayfs view of {} ({why}): the helper runs from a \
                         sealed memfd copy instead",
                        path.display()
                    );
                    memfd().map_err(|m| {
                        ShimError::FailedPrecondition(format!(
                            "{m}; and the read-only overlayfs view failed: {why}"
                        ))
                    })?
                }
            }
        }
    };
    let sealed = sealed
        .move_fd_above(MIN_FD)
        .map_err(ShimError::internal("move the sealed binary's fd"))?;
    log::info!(
        "helper binary: {} ({}), sealed in {:?}",
        sealed.kind(),
        match sealed.kind() {
            SealKind::Overlay => "detached, in no mount table",
            SealKind::Memfd => "a copy of the binary",
        },
        started.elapsed()
    );
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_choice_defaults_to_auto_and_refuses_unknown_values_by_name() {
        assert_eq!(choice(None).ok(), Some(Choice::Auto));
        assert_eq!(choice(Some("auto")).ok(), Some(Choice::Auto));
        assert_eq!(choice(Some("memfd")).ok(), Some(Choice::Memfd));
        let err = choice(Some("off")).expect_err("off is not a choice");
        let text = err.to_string();
        assert!(
            text.contains(SEAL_ENV) && text.contains("\"off\""),
            "{text}"
        );
    }
}
