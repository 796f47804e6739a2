//! The task service: containerd's RPCs over the containers this shim process serves.
//!
//! One service value is registered under both `containerd.task.v2.Task` (containerd 1.6/1.7) and
//! `containerd.task.v3.Task` (containerd 2.x); the messages are the same. RPCs this shim does not
//! implement yet answer UNIMPLEMENTED with a sentence saying so.

use crate::container::Container;
use crate::errors::{Result, ShimError};
use crate::events::EventQueue;
use crate::helper_exe::HelperExe;
use crate::process::{timestamp, Status};
use crate::reaper::Reaper;
use crate::stdio::StdioPaths;
use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, KillRequest, PidsRequest, PidsResponse, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, Status as TaskStatus, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::api::ProcessInfo;
use containerd_shim::protos::api::{
    CheckpointTaskRequest, ExecProcessRequest, PauseRequest, ResizePtyRequest, ResumeRequest,
    StatsRequest, StatsResponse, UpdateTaskRequest,
};
use containerd_shim::protos::events::task::{TaskCreate, TaskIO};
use containerd_shim::protos::topics::TASK_CREATE_EVENT_TOPIC;
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext};
use containerd_shim::Task;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use usernsrs_runtime_core::{plan_container, RootMount};

/// How long a server with no container waits for one before it exits.
const IDLE_EXIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Service {
    containers: Arc<Mutex<HashMap<String, Arc<Container>>>>,
    creating: Arc<Mutex<HashSet<String>>>,
    /// Containers being created that containerd already sent Delete for.
    abandoned: Mutex<HashSet<String>>,
    /// Whether any Create ever arrived.
    used: Arc<std::sync::atomic::AtomicBool>,
    reaper: Reaper,
    /// The sealed binary every helper of this server is exec'd from.
    helper: HelperExe,
    events: EventQueue,
    shutdown: Arc<Notify>,
}

type RpcResult<T> = ttrpc::Result<T>;

fn owner(path: &Path) -> std::io::Result<(u32, u32)> {
    let md = std::fs::metadata(path)?;
    Ok((md.uid(), md.gid()))
}

impl Service {
    pub fn new(reaper: Reaper, events: EventQueue, shutdown: Arc<Notify>) -> Self {
        Self {
            containers: Arc::default(),
            creating: Arc::default(),
            abandoned: Mutex::default(),
            used: Arc::default(),
            reaper,
            helper: HelperExe::default(),
            events,
            shutdown,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id} not found")))
    }

    async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let id = req.id.clone();
        if id.is_empty() || id.contains('/') {
            return Err(ShimError::InvalidArgument(format!(
                "invalid container id {id:?}"
            )));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented("checkpoint restore"));
        }
        self.used.store(true, std::sync::atomic::Ordering::SeqCst);
        {
            let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
            if self.map().contains_key(&id) || !creating.insert(id.clone()) {
                return Err(ShimError::AlreadyExists(format!(
                    "container {id} already exists"
                )));
            }
        }
        let result = self.create_unreserved(&req).await;
        self.creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let abandoned = self
            .abandoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let result = match result {
            // containerd gave up on this Create (it sent Delete meanwhile): undo it rather than
            // keep a container nobody will ever delete.
            Ok(container) if abandoned => {
                log::info!("{id}: created after containerd gave up on it: removing it");
                let _ = container.delete(&self.events).await;
                Err(ShimError::FailedPrecondition(format!(
                    "container {id}: deleted while it was being created"
                )))
            }
            other => other,
        };
        if result.is_err() {
            self.exit_if_idle();
        }
        let container = result?;
        let pid = container.init.pid;
        self.map().insert(id.clone(), container);
        self.events.send(
            TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: id,
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        Ok(CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn idle(&self) -> bool {
        self.map().is_empty()
            && self
                .creating
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
    }

    /// Exits after `limit` if no Create ever arrived by then (containerd failed right after
    /// `start`).
    pub fn exit_if_unused(&self, limit: std::time::Duration) {
        self.exit_when_idle(limit, true, "no Create arrived after start");
    }

    /// containerd 2.x does not send Shutdown to a server whose only Create failed: it hangs up
    /// and runs `delete`. A server left with nothing to serve exits after a grace period (a
    /// Create of the same group may still be on its way).
    fn exit_if_idle(&self) {
        self.exit_when_idle(
            IDLE_EXIT,
            false,
            "no container to serve after a failed create",
        );
    }

    /// After `limit`, exits if no container exists or is being created (and, with
    /// `only_if_unused`, none ever was).
    fn exit_when_idle(&self, limit: std::time::Duration, only_if_unused: bool, why: &'static str) {
        let (containers, creating, used, shutdown) = (
            self.containers.clone(),
            self.creating.clone(),
            self.used.clone(),
            self.shutdown.clone(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            let idle = containers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
                && creating
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
                && !(only_if_unused && used.load(std::sync::atomic::Ordering::SeqCst));
            if idle {
                log::info!("{why}: exiting");
                shutdown.notify_one();
            }
        });
    }

    async fn create_unreserved(&self, req: &CreateTaskRequest) -> Result<Arc<Container>> {
        let bundle = PathBuf::from(&req.bundle);
        let config = bundle.join("config.json");
        let text = std::fs::read_to_string(&config)
            .map_err(|e| ShimError::InvalidArgument(format!("read {}: {e}", config.display())))?;
        let spec = serde_json::from_str(&text).map_err(|e| {
            // The parser's message for an unknown seccomp action, architecture, flag or
            // operator names the value and a line and column, not the field.
            let named = serde_json::from_str(&text)
                .ok()
                .and_then(|raw| usernsrs_runtime_core::seccomp::check_names(&raw).err());
            match named {
                Some(n) => ShimError::InvalidArgument(format!("{}: {n}", config.display())),
                None => ShimError::InvalidArgument(format!("parse {}: {e}", config.display())),
            }
        })?;
        let mounts: Vec<RootMount> = req
            .rootfs
            .iter()
            .map(|m| RootMount {
                typ: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let options = crate::options::parse(req.options.as_ref()).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "container {}: {}",
                req.id,
                usernsrs_init::error_chain(&e)
            ))
        })?;
        let mut plan = plan_container(&req.id, &bundle, spec, &mounts, owner).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "container {}: {}",
                req.id,
                usernsrs_init::error_chain(&e)
            ))
        })?;
        plan.chown_fallback = options.slow_chown;
        // Device rules and limits always need a cgroup: without linux.cgroupsPath (a spec
        // from `ctr c create --config`) the container gets one of its own, as with runc.
        if plan.cgroups_path.is_none() {
            plan.cgroups_path = Some(usernsrs_init::cgroup::default_cgroups_path(
                self.events.namespace(),
                &req.id,
            ));
        }
        log::info!(
            "{}: user namespace {:?}, rootfs {:?}",
            req.id,
            plan.user_namespace,
            plan.rootfs.source
        );
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        Container::create(
            plan,
            stdio,
            options.io_owner,
            &self.reaper,
            &self.helper,
            self.events.clone(),
        )
        .await
    }

    async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        if req.exec_id.is_empty() {
            let creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
            if creating.contains(&req.id) {
                self.abandoned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(req.id.clone());
            }
        }
        let c = self.get(&req.id)?;
        let (pid, exit) = if req.exec_id.is_empty() {
            let exit = c.delete(&self.events).await?;
            self.map().remove(&req.id);
            (c.init.pid, exit)
        } else {
            c.delete_exec(&req.exec_id).await?
        };
        Ok(DeleteResponse {
            pid: pid as u32,
            exit_status: exit.code,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(ShimError::InvalidArgument("exec needs an exec id".into()));
        }
        let spec = req.spec.as_ref().ok_or_else(|| {
            ShimError::InvalidArgument(format!("exec {}: no process spec", req.exec_id))
        })?;
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(&spec.value).map_err(|e| {
                ShimError::InvalidArgument(format!("exec {}: process spec: {e}", req.exec_id))
            })?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        c.add_exec(&req.exec_id, process, stdio, &self.events)
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> RpcResult<CreateTaskResponse> {
        log::info!(
            "create {} bundle {} rootfs {:?}",
            req.id,
            req.bundle,
            req.rootfs
        );
        Ok(self.do_create(req).await?)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> RpcResult<StartResponse> {
        let c = self.get(&req.id)?;
        let process = if req.exec_id.is_empty() {
            c.init.start(&self.events).await?;
            c.init.clone()
        } else {
            c.start_exec(&req.exec_id, &self.reaper, &self.helper, &self.events)
                .await?
        };
        Ok(StartResponse {
            pid: process.pid as u32,
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> RpcResult<StateResponse> {
        let c = self.get(&req.id)?;
        let (process, stdio) = if req.exec_id.is_empty() {
            (Some(c.init.clone()), c.init.stdio.clone())
        } else {
            c.exec_state(&req.exec_id)?
        };
        let exit = process.as_ref().and_then(|p| p.exit());
        let status = match (exit, process.as_ref().map(|p| p.status())) {
            (Some(_), _) | (_, Some(Status::Stopped)) => TaskStatus::STOPPED,
            (None, None) | (None, Some(Status::Created)) => TaskStatus::CREATED,
            (None, Some(Status::Running)) if req.exec_id.is_empty() && c.paused() => {
                TaskStatus::PAUSED
            }
            (None, Some(Status::Running)) => TaskStatus::RUNNING,
        };
        Ok(StateResponse {
            id: if req.exec_id.is_empty() {
                c.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: process.as_ref().map_or(0, |p| p.pid as u32),
            status: status.into(),
            stdin: stdio.stdin,
            stdout: stdio.stdout,
            stderr: stdio.stderr,
            exec_id: req.exec_id.clone(),
            terminal: process.as_ref().is_some_and(|p| p.terminal()),
            exit_status: exit.map_or(0, |e| e.code),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            ..Default::default()
        })
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> RpcResult<WaitResponse> {
        let exit = self.get(&req.id)?.wait(&req.exec_id).await?;
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> RpcResult<Empty> {
        self.get(&req.id)?
            .kill(&req.exec_id, req.signal, req.all)
            .await?;
        Ok(Empty::new())
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> RpcResult<DeleteResponse> {
        log::info!("delete {}", req.id);
        Ok(self.do_delete(req).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> RpcResult<PidsResponse> {
        let c = self.get(&req.id)?;
        // A container that exited but was not deleted still has its init: containerd, after a
        // restart, kills a shim whose Pids is empty as leaked, and the exit would be lost.
        let mut pids = c.pids();
        if pids.is_empty() {
            pids.push(c.init.pid);
        }
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> RpcResult<Empty> {
        let process = self.get(&req.id)?.process(&req.exec_id)?;
        if req.stdin {
            process.close_stdin().await;
        }
        Ok(Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> RpcResult<ConnectResponse> {
        let task_pid = self.map().get(&req.id).map_or(0, |c| c.init.pid as u32);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> RpcResult<Empty> {
        if !self.idle() {
            log::info!("shutdown requested while containers remain: ignored");
        } else {
            log::info!("shutdown: no container left");
            self.shutdown.notify_one();
        }
        Ok(Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> RpcResult<Empty> {
        self.get(&req.id)?.freeze(true, &self.events).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> RpcResult<Empty> {
        self.get(&req.id)?.freeze(false, &self.events).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> RpcResult<Empty> {
        Err(ShimError::Unimplemented("Checkpoint").into())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> RpcResult<Empty> {
        log::info!("exec {} in {}", req.exec_id, req.id);
        self.do_exec(req)?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> RpcResult<Empty> {
        self.get(&req.id)?
            .process(&req.exec_id)?
            .resize(req.width, req.height)?;
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> RpcResult<Empty> {
        let c = self.get(&req.id)?;
        let any = req.resources.as_ref().ok_or_else(|| {
            ShimError::InvalidArgument(format!("update {}: no resources", req.id))
        })?;
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| {
                ShimError::InvalidArgument(format!("update {}: resources: {e}", req.id))
            })?;
        c.update(&resources)?;
        Ok(Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> RpcResult<StatsResponse> {
        let stats = self.get(&req.id)?.stats()?;
        Ok(StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }
}
