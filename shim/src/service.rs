//! The task service: containerd's RPCs over the containers this shim process serves.
//!
//! One service value is registered under both `containerd.task.v2.Task` (containerd 1.6/1.7) and
//! `containerd.task.v3.Task` (containerd 2.x); the messages are the same. RPCs this shim does not
//! implement yet answer UNIMPLEMENTED with a sentence saying so.

use crate::container::{timestamp, Container, Status};
use crate::errors::{Result, ShimError};
use crate::events::EventQueue;
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

pub struct Service {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    creating: Mutex<HashSet<String>>,
    reaper: Reaper,
    events: EventQueue,
    shutdown: Arc<Notify>,
}

type RpcResult<T> = ttrpc::Result<T>;

fn no_exec(exec_id: &str) -> Result<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(ShimError::NotFound(format!(
            "exec process {exec_id} does not exist (exec is not implemented yet)"
        )))
    }
}

fn owner(path: &Path) -> std::io::Result<(u32, u32)> {
    let md = std::fs::metadata(path)?;
    Ok((md.uid(), md.gid()))
}

impl Service {
    pub fn new(reaper: Reaper, events: EventQueue, shutdown: Arc<Notify>) -> Self {
        Self {
            containers: Mutex::default(),
            creating: Mutex::default(),
            reaper,
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
        if req.terminal {
            return Err(ShimError::Unimplemented("a terminal (ctr -t)"));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented("checkpoint restore"));
        }
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
        let container = result?;
        let pid = container.pid;
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

    async fn create_unreserved(&self, req: &CreateTaskRequest) -> Result<Arc<Container>> {
        let bundle = PathBuf::from(&req.bundle);
        let config = bundle.join("config.json");
        let text = std::fs::read_to_string(&config)
            .map_err(|e| ShimError::InvalidArgument(format!("read {}: {e}", config.display())))?;
        let spec = serde_json::from_str(&text)
            .map_err(|e| ShimError::InvalidArgument(format!("parse {}: {e}", config.display())))?;
        let mounts: Vec<RootMount> = req
            .rootfs
            .iter()
            .map(|m| RootMount {
                typ: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let plan = plan_container(&req.id, &bundle, spec, &mounts, owner).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "container {}: {}",
                req.id,
                usernsrs_init::error_chain(&e)
            ))
        })?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        Container::create(plan, stdio, &self.reaper, self.events.clone()).await
    }

    async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let exit = c.delete(&self.events).await?;
        self.map().remove(&req.id);
        Ok(DeleteResponse {
            pid: c.pid as u32,
            exit_status: exit.code,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
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
        no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        c.start(&self.events).await?;
        Ok(StartResponse {
            pid: c.pid as u32,
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> RpcResult<StateResponse> {
        no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let exit = c.exit();
        let status = match (exit, c.status()) {
            (Some(_), _) | (_, Status::Stopped) => TaskStatus::STOPPED,
            (None, Status::Created) => TaskStatus::CREATED,
            (None, Status::Running) => TaskStatus::RUNNING,
        };
        Ok(StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: c.pid as u32,
            status: status.into(),
            stdin: c.stdio.stdin.clone(),
            stdout: c.stdio.stdout.clone(),
            stderr: c.stdio.stderr.clone(),
            exit_status: exit.map_or(0, |e| e.code),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            ..Default::default()
        })
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> RpcResult<WaitResponse> {
        no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let exit = c.wait().await;
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> RpcResult<Empty> {
        no_exec(&req.exec_id)?;
        self.get(&req.id)?.kill(req.signal, req.all)?;
        Ok(Empty::new())
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> RpcResult<DeleteResponse> {
        log::info!("delete {}", req.id);
        Ok(self.do_delete(req).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> RpcResult<PidsResponse> {
        let c = self.get(&req.id)?;
        Ok(PidsResponse {
            processes: c
                .pids()
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
        no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        if req.stdin {
            c.close_stdin().await;
        }
        Ok(Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> RpcResult<ConnectResponse> {
        let task_pid = self.map().get(&req.id).map_or(0, |c| c.pid as u32);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> RpcResult<Empty> {
        let busy = !self.map().is_empty()
            || !self
                .creating
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        if busy {
            log::info!("shutdown requested while containers remain: ignored");
        } else {
            log::info!("shutdown: no container left");
            self.shutdown.notify_one();
        }
        Ok(Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: PauseRequest) -> RpcResult<Empty> {
        Err(ShimError::Unimplemented("Pause").into())
    }

    async fn resume(&self, _ctx: &TtrpcContext, _req: ResumeRequest) -> RpcResult<Empty> {
        Err(ShimError::Unimplemented("Resume").into())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> RpcResult<Empty> {
        Err(ShimError::Unimplemented("Checkpoint").into())
    }

    async fn exec(&self, _ctx: &TtrpcContext, _req: ExecProcessRequest) -> RpcResult<Empty> {
        Err(ShimError::Unimplemented("Exec").into())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, _req: ResizePtyRequest) -> RpcResult<Empty> {
        Err(ShimError::Unimplemented("ResizePty").into())
    }

    async fn update(&self, _ctx: &TtrpcContext, _req: UpdateTaskRequest) -> RpcResult<Empty> {
        Err(ShimError::Unimplemented("Update").into())
    }

    async fn stats(&self, _ctx: &TtrpcContext, _req: StatsRequest) -> RpcResult<StatsResponse> {
        Err(ShimError::Unimplemented("Stats").into())
    }
}
