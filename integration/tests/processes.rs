//! End-to-end tests of how the shim addresses processes and cgroups, against private
//! containerd instances, each checked on real host state (`/proc`, cgroup directories):
//!
//! 1. pid reuse: once a container's init is reaped, its pid may be given to another process
//!    before the exit is published (the output is still draining). Kill and Exec in that window
//!    must reach nobody: the test runs containerd in a pid namespace of its own, holds the
//!    init's stdout open (the window stays open for the drain limit), puts a stand-in process
//!    at the init's old pid (`ns_last_pid`, writable in a pid namespace we own), and checks that
//!    Kill answers NotFound and leaves the stand-in alone, and that an exec is refused instead of
//!    joining the stand-in's namespaces as host root;
//! 2. Delete off the runtime thread: while one container's Delete waits for its cgroup to
//!    empty (held by a process the test keeps frozen in a v1 freezer sub-cgroup), a State and a
//!    Pids of another container of the same shim (one pod) answer before Delete does;
//! 3. a forking workload (chains of processes that each start their successor and exit, in a
//!    sub-cgroup the container made, under a pids limit, in a container sharing the host's pid
//!    namespace) is killed completely by `kill --all` with SIGTERM (the freezer's way) and
//!    SIGKILL (`cgroup.kill`), and by the exit and Delete of its container;
//! 4. a cgroup that exists before the container: refused with processes in it, joined empty
//!    without a limit written nor removed by rollback, Delete or the `delete` subcommand; the
//!    root cgroup is refused naming `linux.cgroupsPath`, however spelt (in a pid namespace of
//!    its own, so that a shim that took the root kills nothing outside it).
//!
//! Needs root, the shim (`$USERNSRS_SHIM` or a build) and the peers (`hack/install-peers.sh`).
//! Nothing here skips: a missing prerequisite fails the test, saying why.
//! Run with `cargo test -p usernsrs-integration --test processes -- --test-threads=1`.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use containerd_shim_protos::api::{
    DeleteRequest, ExecProcessRequest, KillRequest, PidsRequest, StartRequest, StateRequest,
    Status as TaskStatus,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::shim_sync::{Client, TaskClient};
use containerd_shim_protos::ttrpc::context::{self as ttrpc_context, Context as TtrpcContext};
use containerd_shim_protos::ttrpc::{Code, Error as TtrpcError};
use serde_json::{json, Value};
use usernsrs_init::cgroup::Cgroup;
use usernsrs_integration::{mounts_under, process_alive, workspace_root, Flavor};

use common::{
    add_user_namespace, set_mapping, unique_id, unpack_busybox, Env, NOT_APPLICABLE, RUNTIME,
    SETTLE,
};

/// The containerd namespace of this target (see [`common::NS`]).
const NS: &str = "processes-test";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits up to [`SETTLE`] for `done`; fails naming `what`.
fn wait_for(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + SETTLE;
    while !done()? {
        ensure!(Instant::now() < deadline, "{what}: not within {SETTLE:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The cgroup `/NS/ID` of a container, as the shim lays it out.
fn container_cgroup(id: &str) -> Result<Cgroup> {
    Cgroup::new(Path::new(CGROUP_ROOT), &format!("/{NS}/{id}"))
        .with_context(|| format!("cgroup of {id}"))
}

/// A cgroup that must be gone at the end of a test: whatever a failed test leaves in it (a
/// fork bomb the shim did not catch) is killed and the directories removed when dropped.
struct CgroupCleanup(Cgroup);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        if !self.0.exists() {
            return;
        }
        // Thaw first: a frozen v1 task would not die.
        let _ = self.0.freeze(false);
        if let Err(e) = self.0.kill_and_wait(SETTLE) {
            eprintln!("!!! cannot empty {:?}: {e}", self.0.unified);
        }
        if let Err(e) = self.0.remove() {
            eprintln!("!!! cannot remove the cgroup: {e}");
        }
    }
}

/// Writes `spec` as the container's config, `ctr containers create --config` it, then `ctr
/// task start -d`; returns the start's output (the caller checks it).
fn create_detached(env: &Env, id: &str, spec: &Value) -> Result<std::process::Output> {
    let config = env.dir().join(format!("config-{id}.json"));
    fs::write(&config, serde_json::to_vec_pretty(spec)?)?;
    env.ctr_ok(&[
        "containers",
        "create",
        "--runtime",
        RUNTIME,
        "--config",
        &config.to_string_lossy(),
        id,
    ])?;
    let fifo = env.fifo_dir();
    env.ctr(&["task", "start", "-d", "--fifo-dir", &fifo, id])
}

/// Like [`create_detached`], which must succeed.
fn start_detached(env: &Env, id: &str, spec: &Value) -> Result<()> {
    let out = create_detached(env, id, spec)?;
    ensure!(
        out.status.success(),
        "{}: ctr task start -d {id}: {}\n{}",
        env.flavor(),
        out.status,
        text(&out.stderr)
    );
    Ok(())
}

fn remove_pid_namespace(spec: &mut Value) -> Result<()> {
    spec["linux"]["namespaces"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("spec has no linux.namespaces array"))?
        .retain(|n| n["type"] != "pid");
    Ok(())
}

/// A ttrpc connection to the shim serving the container of `bundle` (the address in it).
fn shim_connection(bundle: &Path) -> Result<Client> {
    let file = bundle.join("address");
    let address =
        fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    Client::connect(address.trim())
        .with_context(|| format!("cannot connect to the shim at {address}"))
}

/// A task client of the shim serving the container of `bundle`.
fn shim_client(bundle: &Path) -> Result<TaskClient> {
    Ok(TaskClient::new(shim_connection(bundle)?))
}

/// What containerd sends with each call: a deadline and its namespace.
fn rpc_context(ns: &str) -> TtrpcContext {
    let mut ctx = ttrpc_context::with_timeout(30 * 1_000_000_000);
    ctx.add("containerd-namespace".to_owned(), ns.to_owned());
    ctx
}

/// The gRPC code and message of a failed RPC.
fn rpc_status(err: &TtrpcError) -> Option<(Code, String)> {
    match err {
        TtrpcError::RpcStatus(s) => Some((s.code(), s.message().to_owned())),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Pid reuse.
// ---------------------------------------------------------------------------------------------

/// A containerd 2.4 whose every process (shims, helpers, containers) lives in a pid and mount
/// namespace of its own, with its own /proc: pids there are small and the test can give an
/// exited process's pid to a process of its choice (`ns_last_pid`) without touching the host's
/// pid allocation. The test reaches that /proc through `/proc/<its init>/root/proc`.
///
/// Dropping it stops containerd from inside the namespaces (`private-containerd.sh stop`), then
/// kills the namespace's init, which takes every process left in it along.
struct PidNsContainerd {
    unshare: Child,
    /// Host pid of the namespace's init.
    init: i32,
    dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
}

impl PidNsContainerd {
    fn start() -> Result<Self> {
        let shim = usernsrs_integration::shim_binary()?;
        let tempdir = tempfile::Builder::new()
            .prefix("usernsrs-")
            .tempdir_in("/tmp")
            .context("a directory for containerd")?;
        fs::set_permissions(tempdir.path(), fs::Permissions::from_mode(0o711))?;
        let dir = tempdir.path().canonicalize()?;
        let script = workspace_root().join("hack/private-containerd.sh");
        // The namespace's init starts containerd and then only reaps orphans.
        let init_script = format!(
            "{} start {} 2 >{}/start.out 2>{}/start.err || exit 1; \
             while :; do sleep 3600 & wait $!; done",
            script.display(),
            dir.display(),
            dir.display(),
            dir.display()
        );
        let unshare = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--propagation",
                "slave",
                "--mount-proc",
                "--",
                "/bin/bash",
                "-c",
                &init_script,
            ])
            .env("USERNSRS_SHIM", &shim)
            // A process group of its own: a kill(0) in there (what a pid of 0 means to kill(2))
            // reaches the namespace's processes and unshare, never this test's group.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot run unshare --pid --fork --mount --mount-proc")?;
        let mut me = PidNsContainerd {
            unshare,
            init: 0,
            dir,
            _tempdir: Some(tempdir),
        };
        let children = format!("/proc/{0}/task/{0}/children", me.unshare.id());
        wait_for("the pid namespace's init", || {
            let found = fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = found.split_whitespace().next() {
                me.init = pid.parse()?;
            }
            Ok(me.init != 0)
        })?;
        let out = me.dir.join("start.out");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("CONTAINERD_ADDRESS=")
        {
            if let Some(status) = me.unshare.try_wait()? {
                bail!(
                    "containerd in a pid namespace did not start ({status}):\n{}",
                    fs::read_to_string(me.dir.join("start.err")).unwrap_or_default()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "containerd in a pid namespace did not start within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    /// The namespace's /proc, from the host.
    fn proc(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root/proc", self.init))
    }

    /// `ctr -n NS ARGS` (through the script, which knows the flavor's ctr), whatever its
    /// exit status.
    fn ctr_output(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(
            Command::new(workspace_root().join("hack/private-containerd.sh"))
                .arg("ctr")
                .arg(&self.dir)
                .args(["-n", NS])
                .args(args)
                .stdin(Stdio::null())
                .output()?,
        )
    }

    /// `ctr -n NS ARGS`, which must succeed; its stdout.
    fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr_output(args)?;
        ensure!(
            out.status.success(),
            "ctr {args:?}: {}\n{}",
            out.status,
            text(&out.stderr)
        );
        Ok(text(&out.stdout))
    }

    /// Runs `script` with sh in the namespaces (pid and mount): a child of this test.
    fn sh(&self, script: &str) -> Result<Child> {
        Command::new("nsenter")
            .args([
                "-t",
                &self.init.to_string(),
                "-p",
                "-m",
                "--",
                "/bin/sh",
                "-c",
            ])
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot run nsenter")
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(NS)
            .join(id)
    }
}

impl Drop for PidNsContainerd {
    fn drop(&mut self) {
        if self.init != 0 {
            let stop = Command::new("nsenter")
                .args(["-t", &self.init.to_string(), "-p", "-m", "--"])
                .arg(workspace_root().join("hack/private-containerd.sh"))
                .arg("stop")
                .arg(&self.dir)
                .output();
            if let Ok(out) = &stop {
                if !out.status.success() {
                    eprintln!("!!! private-containerd.sh stop: {}", text(&out.stderr));
                }
            }
        }
        // Our child: its death takes the namespace's init (--kill-child), and so the rest.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        // The mount namespace went with its last process; the directory holds no mount here.
        if !mounts_under(&self.dir).is_ok_and(|m| m.is_empty()) {
            if let Some(t) = self._tempdir.take() {
                eprintln!("!!! LEFT {} IN PLACE: mounts below it", t.keep().display());
            }
        }
        // The namespace's parent cgroups containerd and the shim made (rmdir only: a cgroup
        // directory goes exactly when nothing is below it).
        let hierarchies = fs::read_dir(CGROUP_ROOT)
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        for h in std::iter::once(PathBuf::from(CGROUP_ROOT)).chain(hierarchies) {
            for dir in [h.join(NS), h.join("usernsrs").join(NS), h.join("usernsrs")] {
                let _ = fs::remove_dir(dir);
            }
        }
    }
}

/// The state letter of a process in `/proc/<pid>/stat` of `proc`, None once it is reaped.
fn proc_state(proc: &Path, pid: i32) -> Option<char> {
    let stat = fs::read_to_string(proc.join(format!("{pid}/stat"))).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// An exec process spec: `args` as root in `/`.
fn exec_spec(args: &[&str]) -> Any {
    let process = json!({
        "args": args,
        "cwd": "/",
        "user": { "uid": 0, "gid": 0 },
        "env": ["PATH=/usr/bin:/bin"],
    });
    Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
        value: serde_json::to_vec(&process).unwrap_or_default(),
        ..Default::default()
    }
}

#[test]
fn containerd2_kill_and_exec_after_the_init_exited_reach_no_other_process() -> Result<()> {
    usernsrs_integration::require_root()?;
    let ns = PidNsContainerd::start()?;
    let archive = Command::new(workspace_root().join("hack/build-images.sh")).output()?;
    ensure!(
        archive.status.success(),
        "hack/build-images.sh: {}",
        text(&archive.stderr)
    );
    let archive = text(&archive.stdout);
    let archive = archive.lines().last().unwrap_or_default();
    ns.ctr(&["images", "import", archive])?;

    let id = unique_id("reuse");
    let log = ns.dir.join(format!("{id}.log"));
    let uri = format!("file://{}", log.display());
    let fifo = ns.dir.join("fifo");
    ns.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--fifo-dir",
        &fifo.to_string_lossy(),
        "--log-uri",
        &uri,
        "--uidmap",
        "0:100000:65536",
        "--gidmap",
        "0:100000:65536",
        "--remap-labels",
        usernsrs_integration::BUSYBOX_IMAGE,
        &id,
        "sh",
        "-c",
        "echo started; while [ ! -e /tmp/go ]; do sleep 0.05; done",
    ])?;
    let proc = ns.proc();
    let client = shim_client(&ns.bundle(&id))?;
    let ctx = || rpc_context(NS);
    let state = |exec_id: &str| {
        client.state(
            ctx(),
            &StateRequest {
                id: id.clone(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
    };
    let pid = state("")?.pid as i32;
    wait_for("the init to print", || {
        Ok(fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("started"))
    })?;

    // An exec added while the container runs, to be started once its init is gone.
    client.exec(
        ctx(),
        &ExecProcessRequest {
            id: id.clone(),
            exec_id: "late".into(),
            spec: Some(exec_spec(&["/bin/true"])).into(),
            ..Default::default()
        },
    )?;

    // The init's stdout, held open here: after the init is reaped its exit waits for the
    // output to drain (up to the shim's 2 s limit), the window in which its pid is free.
    let held = fs::OpenOptions::new()
        .write(true)
        .open(proc.join(format!("{pid}/fd/1")))
        .context("open the init's stdout pipe")?;
    fs::write(proc.join(format!("{pid}/root/tmp/go")), "")?;
    wait_for("the shim to reap the init", || {
        Ok(proc_state(&proc, pid).is_none())
    })?;

    // A stand-in at the init's old pid.
    let mut standin = ns.sh(&format!(
        "echo {} > /proc/sys/kernel/ns_last_pid || exit 1; sleep 60 & echo $!; wait $!; \
         echo exit=$?",
        pid - 1
    ))?;
    let mut lines = BufReader::new(standin.stdout.take().context("stand-in stdout")?).lines();
    let got: i32 = lines
        .next()
        .context("the stand-in printed nothing")??
        .trim()
        .parse()?;
    ensure!(
        got == pid,
        "the stand-in got pid {got}, not the init's old {pid}: something else forked in the \
         namespace in between (cannot test)"
    );

    let kill = client.kill(
        ctx(),
        &KillRequest {
            id: id.clone(),
            signal: 15,
            ..Default::default()
        },
    );
    let started = client.start(
        ctx(),
        &StartRequest {
            id: id.clone(),
            exec_id: "late".into(),
            ..Default::default()
        },
    );
    let later = client.exec(
        ctx(),
        &ExecProcessRequest {
            id: id.clone(),
            exec_id: "later".into(),
            spec: Some(exec_spec(&["/bin/true"])).into(),
            ..Default::default()
        },
    );
    // Still in the window: the exit is not published, State says running.
    let during = state("")?;
    let standin_state = proc_state(&proc, pid);
    drop(held);

    ensure!(
        during.status() == TaskStatus::RUNNING,
        "the init's exit was published before the Kill and Exec were done ({:?}): the window \
         closed too early to tell (a machine this slow cannot test it)",
        during.status()
    );
    ensure!(
        standin_state.is_some_and(|s| s != 'Z'),
        "Kill of container {id}, whose init had exited, signalled the process now at its pid \
         {pid} (stand-in state {standin_state:?}); Kill answered {kill:?}"
    );
    let kill_err = kill
        .err()
        .and_then(|e| rpc_status(&e))
        .ok_or_else(|| anyhow!("Kill of the exited init must fail"))?;
    ensure!(
        kill_err.0 == Code::NOT_FOUND && kill_err.1.contains("already finished"),
        "Kill of the exited init: {kill_err:?}, want NotFound \"already finished\""
    );
    let start_err = started.err().and_then(|e| rpc_status(&e)).ok_or_else(|| {
        anyhow!(
            "exec \"late\" started after its container's init had exited: it joined the \
                 namespaces of pid {pid}, another process"
        )
    })?;
    ensure!(
        start_err.0 == Code::FAILED_PRECONDITION && start_err.1.contains("has exited"),
        "Start of exec late: {start_err:?}"
    );
    let later_err = later
        .err()
        .and_then(|e| rpc_status(&e))
        .ok_or_else(|| anyhow!("Exec after the init exited was accepted"))?;
    ensure!(
        later_err.0 == Code::FAILED_PRECONDITION,
        "Exec after the init exited: {later_err:?}"
    );

    // Once published, Kill answers as before.
    wait_for("the exit to be published", || {
        Ok(state("")?.status() == TaskStatus::STOPPED)
    })?;
    let again = client.kill(
        ctx(),
        &KillRequest {
            id: id.clone(),
            signal: 15,
            ..Default::default()
        },
    );
    ensure!(
        again
            .as_ref()
            .err()
            .and_then(rpc_status)
            .is_some_and(|(c, m)| c == Code::NOT_FOUND && m.contains("already finished")),
        "Kill after the exit was published: {again:?}"
    );
    ensure!(
        proc_state(&proc, pid).is_some_and(|s| s != 'Z'),
        "the stand-in at pid {pid} died"
    );
    let _ = standin.kill();
    let _ = standin.wait();
    drop(client);
    ns.ctr(&["task", "delete", &id])?;
    ns.ctr(&["containers", "rm", &id])?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Delete off the runtime thread.
// ---------------------------------------------------------------------------------------------

/// A v1 freezer cgroup the test makes below a container's and freezes, holding a process.
struct Hold {
    dir: PathBuf,
}

impl Hold {
    fn freeze(parent: &Path, pid: i32) -> Result<Self> {
        let dir = parent.join("hold");
        fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let hold = Hold { dir };
        fs::write(hold.dir.join("cgroup.procs"), pid.to_string())?;
        fs::write(hold.dir.join("freezer.state"), "FROZEN")?;
        wait_for("the hold cgroup to freeze", || {
            Ok(fs::read_to_string(hold.dir.join("freezer.state"))?.trim() == "FROZEN")
        })?;
        Ok(hold)
    }

    fn thaw(&self) -> Result<()> {
        fs::write(self.dir.join("freezer.state"), "THAWED")
            .with_context(|| format!("thaw {}", self.dir.display()))
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = self.thaw();
    }
}

fn delete_does_not_stall_the_other_containers(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        bail!(
            "{NOT_APPLICABLE} holding a Delete needs a v1 freezer hierarchy (a process frozen \
             there survives SIGKILL until thawed); this host has pure cgroup v2"
        );
    }
    let rootfs = env.dir().join("rootfs-pod");
    unpack_busybox(&rootfs)?;
    let pod = unique_id("pod");
    let (slow, other) = (unique_id("slow"), unique_id("other"));
    let cleanup = CgroupCleanup(container_cgroup(&slow)?);
    // The slow one shares the host's pid namespace: a process of it outlives its init.
    let script = "sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > /held; \
                  while [ ! -e /go ]; do sleep 0.05; done";
    for (id, script) in [(&slow, script), (&other, "exec sleep 1000")] {
        let mut spec = env.base_spec(id, &rootfs, script)?;
        add_user_namespace(&mut spec)?;
        set_mapping(&mut spec, 100000, 65536);
        spec["annotations"] = json!({ "io.kubernetes.cri.sandbox-id": pod });
        if id == &slow {
            // In the host's pid namespace, which its user namespace does not own: no procfs.
            remove_pid_namespace(&mut spec)?;
            spec["mounts"]
                .as_array_mut()
                .ok_or_else(|| anyhow!("spec has no mounts array"))?
                .retain(|m| m["type"] != "proc");
            spec["linux"]["maskedPaths"] = json!([]);
            spec["linux"]["readonlyPaths"] = json!([]);
        }
        start_detached(&env, id, &spec)?;
        env.wait_task(id, "RUNNING")?;
    }
    let servers = env.shim_pids()?;
    ensure!(
        servers.len() == 1,
        "{flavor}: one shim for the pod, found {servers:?}"
    );

    wait_for("the held process's pid", || {
        Ok(rootfs.join("held").exists())
    })?;
    let held: i32 = fs::read_to_string(rootfs.join("held"))?.trim().parse()?;
    let freezer = cleanup
        .0
        .v1_dir("freezer")
        .ok_or_else(|| anyhow!("{NOT_APPLICABLE} no v1 freezer hierarchy"))?;
    let hold = Hold::freeze(&freezer, held)?;
    fs::write(rootfs.join("go"), "")?;
    env.wait_task(&slow, "STOPPED")?;
    ensure!(
        process_alive(held),
        "{flavor}: the held process died while frozen"
    );

    // Delete, as containerd sends it, from another thread; it cannot finish while the held
    // process is frozen. Delete, State and Pids share one connection: the shim's replies come
    // back on it in the order it sent them.
    let bundle = env.bundle(&slow);
    let connection = shim_connection(&env.bundle(&other))?;
    let deleter = TaskClient::new(connection.clone());
    let (done_tx, done) = std::sync::mpsc::channel();
    let delete_id = slow.clone();
    let delete = std::thread::spawn(move || {
        let reply = deleter.delete(
            rpc_context(NS),
            &DeleteRequest {
                id: delete_id,
                ..Default::default()
            },
        );
        let _ = done_tx.send(reply);
    });
    wait_for("Delete to reach its cleanup (the rootfs unmounted)", || {
        Ok(mounts_under(&bundle)?.is_empty())
    })?;
    let client = TaskClient::new(connection);
    let state = client.state(
        rpc_context(NS),
        &StateRequest {
            id: other.clone(),
            ..Default::default()
        },
    )?;
    let pids = client.pids(
        rpc_context(NS),
        &PidsRequest {
            id: other.clone(),
            ..Default::default()
        },
    )?;
    // A Delete answered before State and Pids reached this process first: its thread only has
    // to wake up to hand it over, a second is plenty for that.
    let early = done.recv_timeout(Duration::from_secs(1));
    hold.thaw()?;
    ensure!(
        early.is_err(),
        "{flavor}: the Delete of {slow} answered ({early:?}) before State and Pids of {other}, \
         served by the same shim: the cleanup blocked every RPC"
    );
    ensure!(
        state.status() == TaskStatus::RUNNING && pids.processes.len() == 1,
        "{flavor}: State/Pids of {other}: {state:?} {pids:?}"
    );
    let reply = done
        .recv_timeout(SETTLE)
        .context("Delete did not answer once the held process could die")?;
    let _ = delete.join();
    ensure!(
        reply.is_ok(),
        "{flavor}: Delete of {slow} once the held process could die: {reply:?}"
    );
    // containerd finds the task gone (NotFound) and lets its record go with the container.
    let _ = env.ctr(&["task", "delete", &slow]);
    ensure!(
        !process_alive(held),
        "{flavor}: the held process outlived Delete"
    );
    ensure!(
        !cleanup.0.exists() && !freezer.exists(),
        "{flavor}: the cgroup of {slow} (with its sub-cgroup) outlived Delete"
    );
    drop(client);
    env.ctr_ok(&["containers", "rm", &slow])?;
    env.kill_and_remove(&other)?;
    env.assert_no_shim("the pod")
}

#[test]
fn containerd16_delete_does_not_stall_the_other_containers_of_the_shim() -> Result<()> {
    delete_does_not_stall_the_other_containers(Flavor::Containerd16)
}

#[test]
fn containerd2_delete_does_not_stall_the_other_containers_of_the_shim() -> Result<()> {
    delete_does_not_stall_the_other_containers(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 3. A forking workload.
// ---------------------------------------------------------------------------------------------

/// A chain of processes, each starting its successor and exiting: the forking process is
/// always a new one with a new pid, so a kill of the pids listed a moment ago may miss the one
/// forked since. Four chains run at once, in a sub-cgroup the container makes below its own (as
/// a container with a delegated cgroup, systemd in it, does), under a pids limit and one CPU.
/// The limit leaves room for the exited generations the shim (their subreaper) has not reaped
/// yet, which count against it: at 64 the chains died of failed forks within seconds.
const WALKER: &str = "/bin/sh /walk.sh </dev/null >/dev/null 2>&1 &\n";
const START_WALKERS: &str = "D=/sys/fs/cgroup; [ -e $D/unified/cgroup.procs ] && D=$D/unified; \
    mkdir $D/forks || exit 1; \
    /bin/sh -c \"echo \\$\\$ > $D/forks/cgroup.procs && \
    for i in 1 2 3 4; do /bin/sh /walk.sh </dev/null >/dev/null 2>&1 & done\" || exit 1";
const PIDS_LIMIT: i64 = 1024;

/// A container sharing the host's pid namespace (so its init's death kills nothing by
/// itself), with a writable `/sys/fs/cgroup` of its own, starting the [`WALKER`] chains and
/// then running `init`.
fn fork_bomb_spec(env: &Env, id: &str, rootfs: &Path, init: &str) -> Result<Value> {
    let mut spec = env.base_spec(
        id,
        rootfs,
        &format!("exec 2>/{id}.err; {START_WALKERS}; {init}"),
    )?;
    remove_pid_namespace(&mut spec)?;
    spec["mounts"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("spec has no mounts array"))?
        .push(json!({
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "rw"],
        }));
    spec["linux"]["resources"]["pids"] = json!({ "limit": PIDS_LIMIT });
    spec["linux"]["resources"]["cpu"] = json!({ "quota": 100000, "period": 100000 });
    Ok(spec)
}

/// Waits until the chains are forking: processes in the sub-cgroup, new ones seen.
fn wait_for_forks(env: &Env, cg: &Cgroup, id: &str, rootfs: &Path) -> Result<()> {
    let first = cg.pids()?;
    wait_for("the chains to fork", || {
        let now = cg.pids()?;
        Ok(now.len() > 2 && now.iter().any(|p| !first.contains(p)))
    })
    .with_context(|| {
        format!(
            "{id}: processes {:?}, tasks {:?}, stderr {:?}",
            cg.pids(),
            env.tasks(),
            fs::read_to_string(rootfs.join(format!("{id}.err")))
        )
    })
}

/// Waits until the cgroup holds only `keep`, then checks it stays so for a moment (nothing
/// forked was missed).
fn wait_until_only(cg: &Cgroup, keep: &[i32], what: &str) -> Result<()> {
    let only = |pids: &[i32]| pids.iter().all(|p| keep.contains(p));
    let kept = |pids: &[i32]| keep.iter().all(|p| pids.contains(p));
    let deadline = Instant::now() + SETTLE;
    loop {
        let pids = cg.pids()?;
        if only(&pids) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: {} process(es) still in the cgroup {SETTLE:?} later (keeping {keep:?}): \
             the forking chains escaped",
            pids.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let pids = cg.pids()?;
    ensure!(only(&pids), "{what}: processes came back: {pids:?}");
    ensure!(
        kept(&pids),
        "{what}: {keep:?} should be left, only {pids:?} are"
    );
    Ok(())
}

fn kill_all_leaves_no_forking_process(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs-forks");
    unpack_busybox(&rootfs)?;
    fs::write(rootfs.join("walk.sh"), WALKER)?;

    // kill --all: SIGTERM through the freezer (the init ignores it and stays), then SIGKILL
    // through cgroup.kill (v2, or a hybrid host's unified tree).
    let id = unique_id("forks");
    let cg = container_cgroup(&id)?;
    let cleanup = CgroupCleanup(cg.clone());
    let spec = fork_bomb_spec(&env, &id, &rootfs, "trap '' TERM; exec sleep 1000")?;
    start_detached(&env, &id, &spec)?;
    let init = env.wait_task(&id, "RUNNING")?;
    wait_for_forks(&env, &cg, &id, &rootfs)?;
    // The init ignores SIGTERM once it is the sleep (it set the trap before its exec).
    wait_for("the init to exec sleep", || {
        Ok(fs::read(format!("/proc/{init}/cmdline"))? == b"sleep\x001000\x00")
    })?;
    env.ctr_ok(&["task", "kill", "--all", "-s", "SIGTERM", &id])?;
    wait_until_only(&cg, &[init], &format!("{flavor}: kill --all -s SIGTERM"))?;
    env.ctr_ok(&["task", "kill", "--all", "-s", "SIGKILL", &id])?;
    env.wait_task(&id, "STOPPED")?;
    ensure!(
        cg.pids()?.is_empty(),
        "{flavor}: processes outlived kill --all -s SIGKILL"
    );
    env.ctr_ok(&["task", "delete", &id])?;
    ensure!(!cg.exists(), "{flavor}: the cgroup of {id} outlived Delete");
    env.ctr_ok(&["containers", "rm", &id])?;
    drop(cleanup);

    // The init exits by itself: its exit and the Delete kill what is left.
    let id = unique_id("forks-exit");
    let cg = container_cgroup(&id)?;
    let cleanup = CgroupCleanup(cg.clone());
    let spec = fork_bomb_spec(
        &env,
        &id,
        &rootfs,
        "while [ ! -e /stop ]; do sleep 0.05; done",
    )?;
    let _ = fs::remove_file(rootfs.join("stop"));
    start_detached(&env, &id, &spec)?;
    env.wait_task(&id, "RUNNING")?;
    wait_for_forks(&env, &cg, &id, &rootfs)?;
    fs::write(rootfs.join("stop"), "")?;
    env.wait_task(&id, "STOPPED")?;
    let out = env.ctr(&["task", "delete", &id])?;
    ensure!(
        out.status.success(),
        "{flavor}: ctr task delete of the exited fork bomb: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    ensure!(
        !cg.exists(),
        "{flavor}: the cgroup of {id} outlived Delete, with {:?}",
        cg.pids()
    );
    env.ctr_ok(&["containers", "rm", &id])?;
    drop(cleanup);
    env.assert_no_shim("the fork bombs")
}

#[test]
fn containerd16_kill_all_and_delete_leave_no_forking_process() -> Result<()> {
    kill_all_leaves_no_forking_process(Flavor::Containerd16)
}

#[test]
fn containerd2_kill_all_and_delete_leave_no_forking_process() -> Result<()> {
    kill_all_leaves_no_forking_process(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 4. A cgroup that exists before the container.
// ---------------------------------------------------------------------------------------------

/// A cgroup the test makes (every hierarchy), as another owner would; removed when dropped.
struct OwnCgroup(Cgroup, String);

impl OwnCgroup {
    /// `/NS/<prefix>-N`.
    fn create(prefix: &str) -> Result<Self> {
        let path = format!("/{NS}/{}", unique_id(prefix));
        let cg = Cgroup::new(Path::new(CGROUP_ROOT), &path)?;
        cg.create()?;
        Ok(OwnCgroup(cg, path))
    }

    /// The file of the memory limit and its contents.
    fn memory_limit(&self) -> Result<(PathBuf, String)> {
        let file = match self.0.v1_dir("memory") {
            Some(dir) => dir.join("memory.limit_in_bytes"),
            None => self
                .0
                .unified
                .as_ref()
                .ok_or_else(|| anyhow!("no memory controller"))?
                .join("memory.max"),
        };
        let value =
            fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        Ok((file, value.trim().to_owned()))
    }
}

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

/// Attaches, as a cgroup's owner would, a device program allowing everything but /dev/zero to
/// the v2 cgroup `dir`; its id.
fn attach_owner_device_program(dir: &Path) -> Result<u32> {
    use usernsrs_init::devices::{DeviceKind, DeviceRule, ACC_MKNOD, ACC_READ, ACC_WRITE};
    let rules = [
        DeviceRule {
            allow: true,
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: ACC_READ | ACC_WRITE | ACC_MKNOD,
        },
        DeviceRule {
            allow: false,
            kind: DeviceKind::Char,
            major: Some(1),
            minor: Some(5),
            access: ACC_READ | ACC_WRITE,
        },
    ];
    let insns = usernsrs_init::devices::program(&rules);
    let prog = usernsrs_sys::bpf::load_named_device_program(
        &insns,
        usernsrs_init::devices::LICENSE,
        "owner",
    )?;
    let cgroup = fs::File::open(dir)?;
    let before = usernsrs_sys::bpf::attached_device_programs(std::os::fd::AsFd::as_fd(&cgroup))?;
    usernsrs_sys::bpf::attach_device_program(
        std::os::fd::AsFd::as_fd(&cgroup),
        std::os::fd::AsFd::as_fd(&prog),
        usernsrs_sys::bpf::BPF_F_ALLOW_MULTI,
    )?;
    let after = usernsrs_sys::bpf::attached_device_programs(std::os::fd::AsFd::as_fd(&cgroup))?;
    after
        .into_iter()
        .find(|id| !before.contains(id))
        .ok_or_else(|| anyhow!("the owner's program is not listed on {}", dir.display()))
}

fn existing_cgroup_is_someone_elses(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs-cg");
    unpack_busybox(&rootfs)?;

    // With a process in it: refused, the process and the cgroup untouched.
    let busy = OwnCgroup::create("busy")?;
    let mut sleeper = Command::new("sleep").arg("1000").spawn()?;
    busy.0.add(sleeper.id() as i32)?;
    let id = unique_id("in-busy");
    let mut spec = env.base_spec(&id, &rootfs, "exit 0")?;
    spec["linux"]["cgroupsPath"] = json!(busy.1);
    let run = env.create_and_start(&id, &spec)?;
    // containerd runs the shim's `delete` after a failed create: it must leave them alone too.
    env.assert_no_shim("the create refused in a busy cgroup")?;
    let alive = sleeper.try_wait()?.is_none();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    ensure!(
        !run.status.success()
            && run.stderr.contains("linux.cgroupsPath")
            && run.stderr.contains("not empty: 1 process(es)"),
        "{flavor}: a cgroup with a process must be refused: {}\n{}",
        run.status,
        run.stderr
    );
    ensure!(
        alive,
        "{flavor}: the process in the refused cgroup was killed"
    );
    ensure!(busy.0.exists(), "{flavor}: the refused cgroup was removed");

    // Empty, with its owner's memory limit: joined; no limit written (the spec sets none);
    // neither the rollback of a failed create nor Delete removes it.
    let own = OwnCgroup::create("own")?;
    let (limit_file, _) = own.memory_limit()?;
    fs::write(&limit_file, "67108864")
        .with_context(|| format!("cannot write {}", limit_file.display()))?;
    let (_, before) = own.memory_limit()?;
    let path = own.1.clone();

    let id = unique_id("own-fails");
    let mut spec = env.base_spec(&id, &rootfs, "exit 0")?;
    spec["linux"]["cgroupsPath"] = json!(path);
    spec["process"]["cwd"] = json!("/no-such-directory");
    let run = env.create_and_start(&id, &spec)?;
    ensure!(
        !run.status.success(),
        "{flavor}: a create with a missing cwd must fail"
    );
    env.assert_no_shim("the failed create in an existing cgroup")?;
    ensure!(
        own.0.exists(),
        "{flavor}: the rollback of a failed create removed its owner's cgroup"
    );

    // The owner's device program on the v2 cgroup (it denies /dev/zero) keeps applying next to
    // the container's: the shim replaces only its own programs there.
    let owners_program = match &own.0.unified {
        Some(dir) => Some(attach_owner_device_program(dir)?),
        None => None,
    };
    let id = unique_id("own");
    let mut spec = env.base_spec(
        &id,
        &rootfs,
        "cat /proc/self/cgroup; if head -c 1 /dev/zero >/dev/null 2>&1; then echo zero-open; \
         else echo zero-denied; fi",
    )?;
    spec["linux"]["cgroupsPath"] = json!(path);
    let run = env.create_and_start(&id, &spec)?;
    ensure!(
        run.status.success() && run.stdout.contains(&path),
        "{flavor}: a container in an empty existing cgroup: {}\n{}\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    if let (Some(dir), Some(program)) = (&own.0.unified, owners_program) {
        ensure!(
            run.stdout.contains("zero-denied"),
            "{flavor}: the owner's device program of {} no longer applied: {}",
            dir.display(),
            run.stdout
        );
        let cgroup = fs::File::open(dir)?;
        let attached =
            usernsrs_sys::bpf::attached_device_programs(std::os::fd::AsFd::as_fd(&cgroup))?;
        ensure!(
            attached.contains(&program),
            "{flavor}: the owner's device program {program} was detached from {}: {attached:?}",
            dir.display()
        );
    }
    ensure!(
        own.0.exists(),
        "{flavor}: Delete removed its owner's cgroup"
    );
    let (_, after) = own.memory_limit()?;
    ensure!(
        after == before,
        "{flavor}: the memory limit of the existing cgroup changed from {before} to {after}, \
         though the spec sets none"
    );
    env.assert_no_shim("the existing cgroups")
}

#[test]
fn containerd16_existing_cgroup_is_joined_only_empty_and_never_removed() -> Result<()> {
    existing_cgroup_is_someone_elses(Flavor::Containerd16)
}

#[test]
fn containerd2_existing_cgroup_is_joined_only_empty_and_never_removed() -> Result<()> {
    existing_cgroup_is_someone_elses(Flavor::Containerd2)
}

/// The root cgroup, however spelt, is refused naming `linux.cgroupsPath`, before anything is
/// made. Run in a pid namespace of its own: a shim that took the root for the container's
/// cgroup would kill every process listed there at its `delete`, and from inside a pid
/// namespace it lists only that namespace's.
#[test]
fn containerd2_root_cgroup_is_refused_naming_the_field() -> Result<()> {
    usernsrs_integration::require_root()?;
    let ns = PidNsContainerd::start()?;
    let rootfs = ns.dir.join("rootfs");
    unpack_busybox(&rootfs)?;
    let mut spec: Value = serde_json::from_str(&ns.ctr(&["oci", "spec"])?)?;
    spec["root"] = json!({ "path": rootfs.to_string_lossy() });
    spec["process"]["args"] = json!(["/bin/true"]);
    spec["process"]["terminal"] = json!(false);
    let fifo = ns.dir.join("fifo");
    for path in ["/", "/..", ".", ""] {
        let id = unique_id("root-cg");
        spec["linux"]["cgroupsPath"] = json!(path);
        let config = ns.dir.join(format!("config-{id}.json"));
        fs::write(&config, serde_json::to_vec_pretty(&spec)?)?;
        let config = config.to_string_lossy().into_owned();
        ns.ctr(&[
            "containers",
            "create",
            "--runtime",
            RUNTIME,
            "--config",
            &config,
            &id,
        ])?;
        let start =
            ns.ctr_output(&["task", "start", "--fifo-dir", &fifo.to_string_lossy(), &id])?;
        let _ = ns.ctr_output(&["task", "delete", &id]);
        ns.ctr(&["containers", "rm", &id])?;
        let stderr = text(&start.stderr);
        if path.is_empty() {
            // No cgroupsPath: the shim's own /usernsrs/<ns>/<id>.
            ensure!(
                start.status.success(),
                "no cgroupsPath: {}\n{stderr}",
                start.status
            );
            continue;
        }
        ensure!(
            !start.status.success()
                && stderr.contains("linux.cgroupsPath")
                && stderr.contains(&format!("{path:?}")),
            "cgroupsPath {path:?} must be refused naming linux.cgroupsPath: {}\n{stderr}",
            start.status
        );
    }
    Ok(())
}
