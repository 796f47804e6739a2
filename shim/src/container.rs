//! One container: its plan, its init process, its exec'd processes, and the lifecycle
//! Create → Start → exit → Delete.
//!
//! Invariants:
//! - every exec'd process's TaskExit is queued before the init's: when the init exits, the
//!   processes still running in the container are killed (a pid namespace does that by itself;
//!   without one the shim does it) and their exits published first;
//! - Delete undoes every host-side change: processes, mounts under the bundle, the cgroup;
//!   the blocking part (kills and waits, unmounts, removals) runs off the runtime thread, which
//!   serves every other container of the shim meanwhile, and Delete answers once it is done;
//! - a cgroup that existed before the container is joined only if empty and not frozen (as
//!   runc has it), and is someone else's: never emptied or removed by this container.

use crate::errors::{Result, ShimError};
use crate::events::EventQueue;
use crate::helper_exe::HelperExe;
use crate::process::{timestamp, Exit, Launch, Process, Status};
use crate::reaper::Reaper;
use crate::stdio::StdioPaths;
use containerd_shim::protos::events::task::{TaskDelete, TaskExecAdded, TaskPaused, TaskResumed};
use containerd_shim::protos::topics::{
    TASK_DELETE_EVENT_TOPIC, TASK_EXEC_ADDED_EVENT_TOPIC, TASK_PAUSED_EVENT_TOPIC,
    TASK_RESUMED_EVENT_TOPIC,
};
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use usernsrs_init::cgroup::{Cgroup, Limits, CGROUP_ROOT, KILL_WAIT};
use usernsrs_init::proto::{ExecPlan, HelperRequest};
use usernsrs_runtime_core::{ContainerPlan, RootfsSource, UserMapping};

/// Name of the file in the bundle that records the init pid and its start time, so that the
/// `delete` subcommand can find the process after the server died, and never a recycled pid.
pub const INIT_STATE_FILE: &str = "usernsrs-init.json";

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Writes [`INIT_STATE_FILE`]: the init's pid (0 before it exists) and start time, and whether
/// the container made its cgroup.
fn record_init_state(bundle: &Path, id: &str, pid: i32, owns_cgroup: bool) {
    let state = serde_json::json!({
        "pid": pid,
        "start_time": if pid > 0 { proc_start_time(pid) } else { None },
        "owns_cgroup": owns_cgroup,
    });
    if let Err(e) = std::fs::write(bundle.join(INIT_STATE_FILE), state.to_string()) {
        log::warn!("record init state of {id}: {e}");
    }
}

/// The host uid and gid of a process's user, in a container with a known mapping.
fn host_ids(mapping: Option<&UserMapping>, user: &oci_spec::runtime::User) -> Option<(u32, u32)> {
    let m = mapping?;
    Some((m.uid.to_host(user.uid())?, m.gid.to_host(user.gid())?))
}

/// An exec'd process: added by Exec, created and started by Start.
struct Exec {
    spec: oci_spec::runtime::Process,
    stdio: StdioPaths,
    process: Option<Arc<Process>>,
    /// Tells waiters (containerd calls Wait before Start) when the process exists.
    started: tokio::sync::watch::Sender<Option<Arc<Process>>>,
}

type Execs = Arc<Mutex<HashMap<String, Exec>>>;

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub init: Arc<Process>,
    rootfs_mounted: bool,
    cgroups_path: Option<String>,
    cgroup: Option<Cgroup>,
    /// The cgroup, when this container created it (and so empties and removes it).
    owned_cgroup: Option<Cgroup>,
    mapping: Option<UserMapping>,
    /// The container's seccomp profile, applied to exec'd processes too.
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    /// `linux.devices`: an Update's device rules get the same allowances as the create's.
    devices: Vec<oci_spec::runtime::LinuxDevice>,
    execs: Execs,
}

fn lock(execs: &Execs) -> std::sync::MutexGuard<'_, HashMap<String, Exec>> {
    execs.lock().unwrap_or_else(|e| e.into_inner())
}

impl Container {
    /// Creates the container from a validated plan. On error nothing is left behind (the
    /// helper rolls back its own steps).
    /// `io_owner` (from the runtime options) overrides who owns the stdio pipes, which is
    /// otherwise the host ids of the process's user.
    pub async fn create(
        plan: ContainerPlan,
        stdio: StdioPaths,
        io_owner: Option<(u32, u32)>,
        reaper: &Reaper,
        helper: &HelperExe,
        events: EventQueue,
    ) -> Result<Arc<Container>> {
        let id = plan.id.clone();
        let bundle = plan.bundle.clone();
        let cgroups_path = plan.cgroups_path.clone();
        let mapping = plan.user_namespace.mapping().cloned();
        let seccomp = plan.spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let devices = plan
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.devices().clone())
            .unwrap_or_default();
        let own_pid_ns = plan
            .namespaces
            .iter()
            .any(|n| n.kind == usernsrs_runtime_core::NamespaceKind::Pid && n.path.is_none());
        let rootfs_mounted = !matches!(plan.rootfs.source, RootfsSource::Directory { .. });
        let terminal = plan.spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
        let io_owner = io_owner.or_else(|| {
            plan.spec
                .process()
                .as_ref()
                .and_then(|p| host_ids(mapping.as_ref(), p.user()))
        });
        // A cgroup that exists before the container is someone else's: joined only if empty
        // and not frozen, never emptied or removed by this container's Delete.
        let cgroup = match &cgroups_path {
            Some(p) => Some(Cgroup::new(Path::new(CGROUP_ROOT), p).map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidInput {
                    ShimError::InvalidArgument(format!("container {id}: {e}"))
                } else {
                    ShimError::internal(format!("container {id}: cgroup {p}"))(e)
                }
            })?),
            None => None,
        };
        let owned_cgroup = cgroup.clone().filter(|cg| !cg.exists());
        // Whose the cgroup is, on record before anything can fail: the `delete` subcommand,
        // which containerd runs after a failed create too, must not empty or remove a cgroup
        // that was there before (no pid yet: it kills no process either).
        record_init_state(&bundle, &id, 0, owned_cgroup.is_some());
        if let (Some(cg), Some(p)) = (&cgroup, &cgroups_path) {
            cg.check_joinable().map_err(|e| {
                ShimError::FailedPrecondition(format!(
                    "container {id}: linux.cgroupsPath {p:?}: {}",
                    usernsrs_init::error_chain(&e)
                ))
            })?;
        }
        let request = HelperRequest::Create(Box::new(plan));
        let launch = Launch {
            namespace: events.namespace(),
            container_id: &id,
            exec_id: "",
            cwd: &bundle,
            io_owner,
            terminal,
            helper,
            init_pidfd: None,
        };
        let (init, exit_rx) = Process::create(&request, launch, stdio, reaper).await?;

        if let Some(cg) = &cgroup {
            if let Err(e) = crate::oom::watch(cg, id.clone(), events.clone()) {
                log::warn!("container {id}: no OOM events: {e}");
            }
        }
        record_init_state(&bundle, &id, init.pid, owned_cgroup.is_some());
        let execs: Execs = Arc::default();
        // Before the init's TaskExit: without a pid namespace of its own, what is left of the
        // container is killed (a pid namespace does that itself), then the exec'd processes'
        // exits are published.
        let gate = {
            let execs = execs.clone();
            let cgroup = owned_cgroup.clone();
            async move {
                if !own_pid_ns {
                    if let Some(cg) = cgroup {
                        let killed =
                            tokio::task::spawn_blocking(move || cg.kill_all(Signal::SIGKILL)).await;
                        if let Ok(Err(e)) = killed {
                            log::warn!("kill what is left in the cgroup: {e}");
                        }
                    }
                }
                let started: Vec<Arc<Process>> = lock(&execs)
                    .values()
                    .filter_map(|e| e.process.clone())
                    .collect();
                for p in started {
                    let _ = p.signal(Signal::SIGKILL);
                    p.wait().await;
                }
            }
        };
        init.publish_exit(exit_rx, events, gate);
        Ok(Arc::new(Container {
            id,
            bundle,
            init,
            rootfs_mounted,
            cgroups_path,
            cgroup,
            owned_cgroup,
            mapping,
            seccomp,
            devices,
            execs,
        }))
    }

    /// The init for an empty exec id, else the started exec'd process.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs)
            .get(exec_id)
            .and_then(|e| e.process.clone())
            .ok_or_else(|| {
                ShimError::NotFound(format!(
                    "exec process {exec_id} of {} not found or not started",
                    self.id
                ))
            })
    }

    /// Wait: blocks until the process exits, including an exec'd process not started yet.
    pub async fn wait(&self, exec_id: &str) -> Result<Exit> {
        if exec_id.is_empty() {
            return Ok(self.init.wait().await);
        }
        let mut started = {
            let execs = lock(&self.execs);
            let e = execs.get(exec_id).ok_or_else(|| {
                ShimError::NotFound(format!("exec process {exec_id} of {} not found", self.id))
            })?;
            e.started.subscribe()
        };
        loop {
            let current = started.borrow_and_update().clone();
            if let Some(p) = current {
                return Ok(p.wait().await);
            }
            if started.changed().await.is_err() {
                return Err(ShimError::NotFound(format!(
                    "exec process {exec_id} of {} was deleted before it started",
                    self.id
                )));
            }
        }
    }

    /// State of an exec id: its process if started, or the paths of a created one.
    pub fn exec_state(&self, exec_id: &str) -> Result<(Option<Arc<Process>>, StdioPaths)> {
        let execs = lock(&self.execs);
        let e = execs.get(exec_id).ok_or_else(|| {
            ShimError::NotFound(format!("exec process {exec_id} of {} not found", self.id))
        })?;
        Ok((e.process.clone(), e.stdio.clone()))
    }

    /// Exec: records the process; it is created at Start.
    pub fn add_exec(
        &self,
        exec_id: &str,
        spec: oci_spec::runtime::Process,
        stdio: StdioPaths,
        events: &EventQueue,
    ) -> Result<()> {
        if self.init.has_exited() || self.init.status() != Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not running: cannot exec {exec_id}",
                self.id
            )));
        }
        self.refuse_exec_if_paused(exec_id)?;
        if spec.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(ShimError::InvalidArgument(format!(
                "exec {exec_id}: process.args is empty"
            )));
        }
        if let Some(m) = &self.mapping {
            let user = spec.user();
            let unmapped = |what: &str, id: u32| {
                ShimError::InvalidArgument(format!(
                    "exec {exec_id}: {what} {id} is not mapped in the container's user namespace"
                ))
            };
            if m.uid.to_host(user.uid()).is_none() {
                return Err(unmapped("user.uid", user.uid()));
            }
            if m.gid.to_host(user.gid()).is_none() {
                return Err(unmapped("user.gid", user.gid()));
            }
            // setgroups would fail with EINVAL at Start, naming nothing.
            for &gid in user.additional_gids().iter().flatten() {
                if m.gid.to_host(gid).is_none() {
                    return Err(unmapped("user.additionalGids", gid));
                }
            }
        }
        let mut execs = lock(&self.execs);
        if execs.contains_key(exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec process {exec_id} of {} already exists",
                self.id
            )));
        }
        let (started, _) = tokio::sync::watch::channel(None);
        execs.insert(
            exec_id.to_string(),
            Exec {
                spec,
                stdio,
                process: None,
                started,
            },
        );
        events.send(
            TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
                ..Default::default()
            },
        );
        Ok(())
    }

    /// Start of an exec'd process: the helper creates it in the container, then it is released.
    pub async fn start_exec(
        &self,
        exec_id: &str,
        reaper: &Reaper,
        helper: &HelperExe,
        events: &EventQueue,
    ) -> Result<Arc<Process>> {
        let (spec, stdio) = {
            let execs = lock(&self.execs);
            let e = execs.get(exec_id).ok_or_else(|| {
                ShimError::NotFound(format!("exec process {exec_id} of {} not found", self.id))
            })?;
            if e.process.is_some() {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec process {exec_id} was already started"
                )));
            }
            (e.spec.clone(), e.stdio.clone())
        };
        if self.init.has_exited() {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} has exited: cannot start exec {exec_id}",
                self.id
            )));
        }
        let Some(init_pidfd) = self.init.pidfd() else {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} has exited: cannot start exec {exec_id}",
                self.id
            )));
        };
        self.refuse_exec_if_paused(exec_id)?;
        let request = HelperRequest::Exec(Box::new(ExecPlan {
            container_id: self.id.clone(),
            exec_id: exec_id.to_string(),
            init_pid: self.init.pid,
            process: spec,
            cgroups_path: self.cgroups_path.clone(),
            seccomp: self.seccomp.clone(),
        }));
        let (io_owner, terminal) = match &request {
            HelperRequest::Exec(plan) => (
                host_ids(self.mapping.as_ref(), plan.process.user()),
                plan.process.terminal() == Some(true),
            ),
            HelperRequest::Create(_) => (None, false),
        };
        let launch = Launch {
            namespace: events.namespace(),
            container_id: &self.id,
            exec_id,
            cwd: &self.bundle,
            io_owner,
            terminal,
            helper,
            init_pidfd: Some(init_pidfd),
        };
        let (process, exit_rx) = Process::create(&request, launch, stdio, reaper).await?;
        process.publish_exit(exit_rx, events.clone(), async {});
        if let Some(e) = lock(&self.execs).get_mut(exec_id) {
            e.process = Some(process.clone());
            e.started.send_replace(Some(process.clone()));
        }
        process.start(events).await?;
        Ok(process)
    }

    fn cgroup_for(&self, what: &str) -> Result<Cgroup> {
        self.cgroup.clone().ok_or_else(|| {
            ShimError::FailedPrecondition(format!(
                "{what} {}: the container has no cgroup (linux.cgroupsPath is empty)",
                self.id
            ))
        })
    }

    /// Pause (`freeze = true`) or Resume, through the freezer; TaskPaused/TaskResumed.
    pub async fn freeze(&self, freeze: bool, events: &EventQueue) -> Result<()> {
        let what = if freeze { "pause" } else { "resume" };
        if self.init.exit().is_some() || self.init.status() != Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "{what} {}: the container is not running",
                self.id
            )));
        }
        let cg = self.cgroup_for(what)?;
        tokio::task::spawn_blocking(move || cg.freeze(freeze))
            .await
            .map_err(ShimError::internal(what))?
            .map_err(ShimError::internal(format!("{what} {}", self.id)))?;
        if freeze {
            events.send(
                TASK_PAUSED_EVENT_TOPIC,
                TaskPaused {
                    container_id: self.id.clone(),
                    ..Default::default()
                },
            );
        } else {
            events.send(
                TASK_RESUMED_EVENT_TOPIC,
                TaskResumed {
                    container_id: self.id.clone(),
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    /// Whether the container's processes are frozen.
    /// A frozen container cannot take a new process: joining its cgroup would freeze the
    /// helper's child mid-setup and the exec would wait forever (runc refuses likewise).
    fn refuse_exec_if_paused(&self, exec_id: &str) -> Result<()> {
        if self.paused() {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is paused: cannot exec {exec_id} in a paused state (resume it first)",
                self.id
            )));
        }
        Ok(())
    }

    pub fn paused(&self) -> bool {
        self.init.exit().is_none() && self.cgroup.as_ref().is_some_and(Cgroup::is_frozen)
    }

    /// Stats: the cgroup's usage in containerd's metrics type.
    pub fn stats(&self) -> Result<containerd_shim::protos::protobuf::well_known_types::any::Any> {
        let cg = self.cgroup_for("stats")?;
        crate::metrics::to_any(&cg.usage()).map_err(ShimError::internal("encode metrics"))
    }

    /// Update: new resource limits for the running container.
    pub fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        if self.init.exit().is_some() {
            return Err(ShimError::FailedPrecondition(format!(
                "update {}: the container has exited",
                self.id
            )));
        }
        let cg = self.cgroup_for("update")?;
        let invalid = |e: usernsrs_init::cgroup::CgroupError| {
            ShimError::InvalidArgument(format!(
                "update {}: {}",
                self.id,
                usernsrs_init::error_chain(&e)
            ))
        };
        let mut limits = Limits::from_resources(resources).map_err(invalid)?;
        // An Update that names device rules gets the defaults again, as at create: CRI sends
        // the container's whole resources, whose rules are only "deny all".
        if !limits.devices.is_empty() {
            limits.allow_container_devices(&self.devices);
        }
        cg.apply(&limits).map_err(invalid)
    }

    /// The processes of the container: its cgroup's, or the init alone without a cgroup.
    pub fn pids(&self) -> Vec<i32> {
        match self.cgroup.as_ref().map(Cgroup::pids) {
            Some(Ok(pids)) if !pids.is_empty() => pids,
            _ if self.init.exit().is_none() => vec![self.init.pid],
            _ => Vec::new(),
        }
    }

    /// Kill: the process through its pidfd; with `all`, then every process of the cgroup
    /// ([`Cgroup::kill_all`]: none escapes by forking), off the runtime thread since the
    /// freezer's way waits for the freezer.
    pub async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = Signal::try_from(signal as i32)
            .map_err(|_| ShimError::InvalidArgument(format!("invalid signal {signal}")))?;
        let process = self.process(exec_id)?;
        process.signal(sig)?;
        if all && exec_id.is_empty() {
            if let Some(cg) = self.cgroup.clone() {
                tokio::task::spawn_blocking(move || cg.kill_all(sig))
                    .await
                    .map_err(ShimError::internal("kill all"))?
                    .map_err(ShimError::internal(format!(
                        "kill every process of {} with {sig}",
                        self.id
                    )))?;
            }
        }
        Ok(())
    }

    /// Delete of an exec'd process: it must have exited (a created one is just forgotten).
    pub async fn delete_exec(&self, exec_id: &str) -> Result<(i32, Exit)> {
        let (process, _) = self.exec_state(exec_id)?;
        let result = match process {
            Some(p) if p.exit().is_none() => {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec process {exec_id} of {} is running: kill it before delete",
                    self.id
                )))
            }
            Some(p) => (p.pid, p.wait().await),
            None => (
                0,
                Exit {
                    code: 0,
                    at: std::time::SystemTime::now(),
                },
            ),
        };
        lock(&self.execs).remove(exec_id);
        Ok(result)
    }

    /// Delete of the container: the init must have exited (a created one is killed first).
    /// Undoes the host-side setup and publishes TaskDelete.
    pub async fn delete(&self, events: &EventQueue) -> Result<Exit> {
        match self.init.status() {
            Status::Running if self.init.exit().is_none() => {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {} is running: kill it before delete",
                    self.id
                )))
            }
            Status::Created if self.init.exit().is_none() => {
                let _ = self.init.signal(Signal::SIGKILL);
            }
            _ => {}
        }
        let exit = self.init.wait().await;
        // Off the runtime thread: the waits for the cgroup to empty and the unmounts must not
        // stall the RPCs and events of the shim's other containers. Delete answers after.
        let (bundle, unmount, cgroup) = (
            self.bundle.clone(),
            self.rootfs_mounted,
            self.owned_cgroup.clone(),
        );
        tokio::task::spawn_blocking(move || cleanup_host(&bundle, unmount, cgroup.as_ref()))
            .await
            .map_err(ShimError::internal(format!("clean up {}", self.id)))?
            .map_err(|e| ShimError::Internal {
                context: format!("clean up {}", self.id),
                err: e,
            })?;
        // Nothing is left to clean: containerd 2.x runs the `delete` subcommand after every
        // Delete (it treats the server's exit after Shutdown as a dead shim), which must then
        // neither kill by pid nor empty the cgroup, whoever's it is by now.
        record_init_state(&self.bundle, &self.id, 0, false);
        events.send(
            TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: self.id.clone(),
                id: self.id.clone(),
                pid: self.init.pid as u32,
                exit_status: exit.code,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            },
        );
        Ok(exit)
    }
}

/// Removes what a container left on the host: its remaining processes (by cgroup), the mounts
/// under its bundle, its cgroup. Shared by Delete and the `delete` subcommand. Blocks: up to
/// [`KILL_WAIT`] for the killed processes to go, before the cgroup is removed.
pub fn cleanup_host(bundle: &Path, unmount: bool, cgroup: Option<&Cgroup>) -> anyhow::Result<()> {
    // Killed first, so that they exit while the mounts are detached.
    if let Some(cg) = cgroup {
        if let Err(e) = cg.kill_all(Signal::SIGKILL) {
            log::warn!("kill what is left in the cgroup: {e}");
        }
    }
    if unmount {
        let left = usernsrs_init::cleanup::unmount_under(bundle)?;
        if !left.is_empty() {
            anyhow::bail!("mounts still present after unmount: {left:?}");
        }
        // The chown fallback's upper layer: removed whole, now that nothing is mounted under
        // the bundle any more.
        let fallback = bundle.join(usernsrs_init::fallback::FALLBACK_DIR);
        if fallback.exists() {
            std::fs::remove_dir_all(&fallback)?;
        }
    }
    if let Some(cg) = cgroup {
        cg.kill_and_wait(KILL_WAIT)?;
        cg.remove()?;
    }
    Ok(())
}
