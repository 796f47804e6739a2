//! TaskOOM: the kernel's out-of-memory kills in a container's cgroup, as events.
//!
//! cgroup v1: an eventfd registered on `memory.oom_control` through `cgroup.event_control`; it
//! fires on each OOM and once more when the cgroup is removed. cgroup v2: inotify on
//! `memory.events`, and an event whenever its `oom_kill` count grows. Either watcher ends when
//! the cgroup goes away.

use crate::events::EventQueue;
use containerd_shim::protos::events::task::TaskOOM;
use containerd_shim::protos::topics::TASK_OOM_EVENT_TOPIC;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use usernsrs_init::cgroup::Cgroup;

/// Owns an fd-backed object for [`AsyncFd`], which wants `AsRawFd`.
struct Watched<T: AsFd>(T);

impl<T: AsFd> AsRawFd for Watched<T> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn register<T: AsFd>(inner: T) -> std::io::Result<AsyncFd<Watched<T>>> {
    // SAFETY: `Watched` owns the object, so its fd stays open and the same for as long as the
    // AsyncFd lives, and `as_raw_fd` always returns that fd.
    unsafe { AsyncFd::register_with_interest(Watched(inner), Interest::READABLE) }
        .map_err(std::io::Error::from)
}

fn publish(events: &EventQueue, id: &str) {
    log::info!("container {id}: out of memory kill");
    events.send(
        TASK_OOM_EVENT_TOPIC,
        TaskOOM {
            container_id: id.to_string(),
            ..Default::default()
        },
    );
}

fn oom_kills(memory_events: &Path) -> u64 {
    std::fs::read_to_string(memory_events)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Starts watching `cgroup` for OOM kills of container `id`.
pub fn watch(cgroup: &Cgroup, id: String, events: EventQueue) -> std::io::Result<()> {
    if let Some(dir) = cgroup.v1_dir("memory") {
        return watch_v1(dir, id, events);
    }
    if let Some(dir) = cgroup
        .unified
        .clone()
        .filter(|d| d.join("memory.events").exists())
    {
        return watch_v2(dir, id, events);
    }
    Ok(())
}

fn watch_v1(dir: PathBuf, id: String, events: EventQueue) -> std::io::Result<()> {
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    let control = std::fs::File::open(dir.join("memory.oom_control"))?;
    std::fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
    )?;
    let fd = register(efd)?;
    tokio::spawn(async move {
        let _control = control;
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            match guard.try_io(|inner| inner.get_ref().0.read().map_err(std::io::Error::from)) {
                Ok(Ok(_)) => {
                    // The eventfd also fires when the cgroup is removed.
                    if !dir.exists() {
                        return;
                    }
                    publish(&events, &id);
                }
                Ok(Err(_)) => return,
                Err(_would_block) => continue,
            }
        }
    });
    Ok(())
}

fn watch_v2(dir: PathBuf, id: String, events: EventQueue) -> std::io::Result<()> {
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
    let file = dir.join("memory.events");
    inotify.add_watch(&file, AddWatchFlags::IN_MODIFY)?;
    let mut seen = oom_kills(&file);
    let fd = register(inotify)?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            match guard.try_io(|inner| {
                inner
                    .get_ref()
                    .0
                    .read_events()
                    .map_err(std::io::Error::from)
            }) {
                Ok(Ok(_)) => {
                    if !dir.exists() {
                        return;
                    }
                    let now = oom_kills(&file);
                    if now > seen {
                        seen = now;
                        publish(&events, &id);
                    }
                }
                Ok(Err(_)) => return,
                Err(_would_block) => continue,
            }
        }
    });
    Ok(())
}
