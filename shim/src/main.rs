//! `containerd-shim-usernsrs-v2`: a containerd shim v2 that runs containers in user namespaces
//! with idmapped rootfs.
//!
//! One binary, several roles, chosen by the command line:
//! - `-info`: describe the runtime (features) to containerd;
//! - `start`: spawn (or reuse) the long-lived server and tell containerd its address;
//! - `delete`: clean up after a server that died;
//! - `check`: the operator's pre-flight report (see [`check`]);
//! - `__usernsrs_create`: the single-threaded helper that creates one container;
//! - anything else (with `-socket`): the server itself.
//!
//! The helper role is decided before any thread exists: it forks.

mod bootstrap;
mod check;
mod container;
mod errors;
mod events;
mod helper_exe;
mod metrics;
mod oom;
mod options;
mod process;
mod reaper;
mod server;
mod service;
mod stdio;

use anyhow::Context;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == usernsrs_init::proto::HELPER_ARG)
    {
        usernsrs_init::create::helper_main();
    }
    if args.get(1).is_some_and(|a| a == "check") {
        match check::main(&args[2..]) {
            Ok(status) => std::process::exit(status),
            Err(e) => {
                eprintln!("containerd-shim-usernsrs-v2 check: {e:#}");
                std::process::exit(2);
            }
        }
    }
    let result = (|| -> anyhow::Result<()> {
        let flags = containerd_shim::parse(&args[1..]).context("parse command line")?;
        if flags.version {
            println!("containerd-shim-usernsrs-v2 {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        if flags.info {
            return bootstrap::info();
        }
        match flags.action.as_str() {
            "start" => bootstrap::start(&flags),
            "delete" => bootstrap::delete(&flags),
            _ => server::serve(flags),
        }
    })();
    if let Err(e) = result {
        eprintln!("containerd-shim-usernsrs-v2: {e:#}");
        std::process::exit(1);
    }
}
