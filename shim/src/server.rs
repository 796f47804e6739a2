//! The long-lived shim server: ttrpc on a unix socket, the task service under both API
//! versions, the reaper and the event queue. It exits when Shutdown arrives with no container
//! left, after the queued events went out.

use crate::events::EventQueue;
use crate::reaper::Reaper;
use crate::service::Service;
use anyhow::Context;
use containerd_shim::protos::shim_async::create_task;
use containerd_shim::protos::ttrpc::asynchronous::{transport::Listener, Server};
use containerd_shim::Flags;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Notify;

const TASK_V2: &str = "containerd.task.v2.Task";
/// How long a new server waits for its first Create.
const FIRST_CREATE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
const TASK_V3: &str = "containerd.task.v3.Task";

/// Tells `start` (reading our stdout) that the socket is listening: stdout is replaced by
/// stderr, so its pipe closes.
fn signal_started() {
    // SAFETY: dup2 on the process's own standard descriptors; both stay open.
    unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
}

pub fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

pub fn serve(flags: Flags) -> anyhow::Result<()> {
    if flags.socket.is_empty() {
        anyhow::bail!("the server needs -socket (containerd runs it through the start subcommand)");
    }
    // Orphaned container processes must come back to us to be reaped.
    nix::sys::prctl::set_child_subreaper(true).context("set child subreaper")?;
    if let Err(e) = containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
    {
        eprintln!("no shim log fifo in the bundle, logging disabled: {e}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = runtime.block_on(run(flags));
    // Blocking threads may still wait on a fifo nobody opens; do not wait for them.
    runtime.shutdown_background();
    result
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let path = socket_path(&flags.socket).to_string();
    if let Some(dir) = Path::new(&path).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            // Another server of the same group won the race; `start` reuses it.
            log::info!("socket {path} already served");
            signal_started();
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("listen on {path}")),
    };
    // Only root (containerd) may connect, as with containerd's own shims: a task API socket
    // lets its client run processes as root.
    if let Err(e) =
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
    {
        let _ = std::fs::remove_file(&path);
        return Err(e).with_context(|| format!("make {path} 0600"));
    }
    let reaper = Reaper::start().context("reaper")?;
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS is not set")?;
    let events = EventQueue::new(ttrpc_address, flags.namespace.clone());
    let shutdown = Arc::new(Notify::new());
    let service = Arc::new(Service::new(reaper, events.clone(), shutdown.clone()));

    let mut services = create_task(service.clone());
    let v3 = services
        .remove(TASK_V3)
        .context("generated task service has no v3 name")?;
    let mut server = Server::new()
        .add_listener(Listener::try_from(listener).context("ttrpc listener")?)
        .register_service(std::collections::HashMap::from([(TASK_V3.to_string(), v3)]));
    let mut legacy = create_task(service.clone());
    if let Some(v2) = legacy.remove(TASK_V3) {
        server =
            server.register_service(std::collections::HashMap::from([(TASK_V2.to_string(), v2)]));
    }
    server.start().await.context("start ttrpc server")?;
    signal_started();
    // A server that containerd never sends a Create (containerd failed right after `start`)
    // must not stay forever.
    service.exit_if_unused(FIRST_CREATE_LIMIT);
    log::info!("serving {} on {path}", flags.id);

    shutdown.notified().await;
    events.flush().await;
    // Let the reply to Shutdown reach containerd before the socket goes.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let _ = std::fs::remove_file(&path);
    // The ttrpc server waits for clients to hang up; containerd may keep its connection open.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), server.shutdown()).await;
    Ok(())
}
