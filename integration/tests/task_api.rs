//! End-to-end tests of the task API beyond create/start/delete, through `ctr` (and, for Update
//! and Stats, the shim's own ttrpc socket), against a private containerd 1.6 and a private
//! containerd 2.4, every container in a user namespace (`0:100000:65536`):
//!
//! 1. exec: the exec'd process joins the init's user namespace (never host root), its other
//!    namespaces and cgroup; exit codes propagate; duplicate ids and exec into an exited
//!    container are refused; TaskExecAdded/TaskExecStarted/TaskExit arrive in order, and every
//!    exec's TaskExit before the init's;
//! 2. stdio ownership (containerd issue 10598): a process running as uid 1000 (an exec, a
//!    container from a spec, `ctr run --user`) can reopen `/dev/stdout` and `/dev/stderr`;
//! 3. terminals: `ctr run -t` and `ctr t exec -t` get a pty of the container's devpts, owned by
//!    the process's user, and their exit code;
//! 4. log URIs: `file://` and `binary://` (a logger with fds 3, 4, 5, its arguments and
//!    environment); a logger slow to get ready does not stall the shim's other RPCs;
//! 5. cgroups: limits at create, metrics, Pause/Resume through the freezer, TaskOOM, Update and
//!    Stats over ttrpc;
//! 6. kill: of an exited exec, and `--all`.
//!
//! Needs root, the shim (`$USERNSRS_SHIM` or a build) and the peers (`hack/install-peers.sh`);
//! the hosts this runs on have cgroup v1 controllers (hybrid), which group 5 reads directly.
//! Nothing here skips: a missing prerequisite fails the test.
//! Run with `cargo test -p usernsrs-integration --test task_api -- --test-threads=1`.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use containerd_shim_protos::api::{ConnectRequest, StatsRequest, UpdateTaskRequest};
use containerd_shim_protos::cgroups::metrics::Metrics as CgroupV1Metrics;
use containerd_shim_protos::cgroups_v2::metrics::Metrics as CgroupV2Metrics;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::context::{self as ttrpc_context};
use serde_json::{json, Value};
use usernsrs_integration::{mounts_under, proc_status_uid, process_alive, Flavor, CTR_TIMEOUT};

use common::{lines, unique_id, unpack_busybox, Env, RUNTIME, SETTLE};

/// The containerd namespace of this target (its own, so that the cgroup parents
/// `/sys/fs/cgroup/*/task-api-test` are never removed under another target's containers).
const NS: &str = "task-api-test";
/// `/proc/self/uid_map` inside every container here, whitespace collapsed.
const UID_MAP: &str = "0 100000 65536";
/// The host uid (and gid) of container root, and of the image's user `app` (1000).
const HOST_ROOT: u32 = 100_000;
const HOST_APP: u32 = 101_000;
/// The cgroup v1 root the containers' cgroups (`/<ns>/<id>`, as `ctr run` sets) live under.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// `ctr run` options for a user namespace `0:100000:65536`: containerd 2.x idmaps the snapshot
/// (`--remap-labels`), 1.6's ctr chowns a copy of it.
fn userns_opts(flavor: Flavor) -> Vec<&'static str> {
    let mut opts = vec!["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];
    if flavor == Flavor::Containerd2 {
        opts.push("--remap-labels");
    }
    opts
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// `ctr task exec --fifo-dir D --exec-id EXEC_ID [opts] ID CMD...`, whatever its exit status.
fn exec(env: &Env, id: &str, exec_id: &str, opts: &[&str], cmd: &[&str]) -> Result<Output> {
    let fifo = env.fifo_dir();
    let mut args = vec!["task", "exec", "--fifo-dir", &fifo, "--exec-id", exec_id];
    args.extend_from_slice(opts);
    args.push(id);
    args.extend_from_slice(cmd);
    env.ctr(&args)
}

/// Like [`exec`], but the exec must succeed; its stdout.
fn exec_ok(env: &Env, id: &str, exec_id: &str, opts: &[&str], cmd: &[&str]) -> Result<String> {
    let out = exec(env, id, exec_id, opts, cmd)?;
    ensure!(
        out.status.success(),
        "{}: ctr task exec {opts:?} --exec-id {exec_id} {id} {cmd:?} failed: {}",
        env.flavor(),
        describe(&out)
    );
    Ok(text(&out.stdout))
}

/// Like [`exec`], but the exec must fail with `needle` in ctr's stderr.
fn exec_fails(
    env: &Env,
    id: &str,
    exec_id: &str,
    opts: &[&str],
    cmd: &[&str],
    needle: &str,
) -> Result<()> {
    let out = exec(env, id, exec_id, opts, cmd)?;
    ensure!(
        !out.status.success() && text(&out.stderr).contains(needle),
        "{}: ctr task exec --exec-id {exec_id} {id} {cmd:?} should fail saying {needle:?}: {}",
        env.flavor(),
        describe(&out)
    );
    Ok(())
}

/// `ctr -n NS ARGS` must fail with `needle` in its stderr.
fn ctr_fails(env: &Env, args: &[&str], needle: &str) -> Result<()> {
    let out = env.ctr(args)?;
    ensure!(
        !out.status.success() && text(&out.stderr).contains(needle),
        "{}: ctr {args:?} should fail saying {needle:?}: {}",
        env.flavor(),
        describe(&out)
    );
    Ok(())
}

/// The pids `ctr task ps ID` lists.
fn task_pids(env: &Env, id: &str) -> Result<Vec<i32>> {
    let out = env.ctr_ok(&["task", "ps", id])?;
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| {
            p.parse()
                .with_context(|| format!("bad pid {p:?} in:\n{out}"))
        })
        .collect()
}

/// A process's command line, arguments joined by spaces ("" once it is gone or a zombie).
fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| text(&raw).trim_end_matches('\0').replace('\0', " "))
        .unwrap_or_default()
}

/// Waits until `ctr task ps ID` lists a process whose command line is `cmd`; its host pid.
fn wait_for_process(env: &Env, id: &str, cmd: &str) -> Result<i32> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let pids = task_pids(env, id)?;
        if let Some(pid) = pids.iter().copied().find(|p| cmdline(*p) == cmd) {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = pids
                .iter()
                .map(|p| format!("{p}: {}", cmdline(*p)))
                .collect();
            bail!(
                "{}: no `{cmd}` among the processes of {id} after {SETTLE:?}: {seen:?}",
                env.flavor()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `pid` is gone or a zombie.
fn wait_gone(pid: i32, what: &str) -> Result<()> {
    let deadline = Instant::now() + SETTLE;
    while process_alive(pid) {
        if Instant::now() > deadline {
            bail!(
                "{what} (pid {pid}, `{}`) still runs {SETTLE:?} later",
                cmdline(pid)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The namespace `kind` of `pid`, as `/proc/PID/ns/KIND` names it (`user:[4026532...]`).
fn namespace(pid: i32, kind: &str) -> Result<PathBuf> {
    let link = format!("/proc/{pid}/ns/{kind}");
    fs::read_link(&link).with_context(|| format!("cannot read {link}"))
}

fn read_trimmed(path: &Path) -> Result<String> {
    Ok(fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .trim()
        .to_owned())
}

/// The v1 cgroup directory of container `id` for `controller` (`ctr run` sets `/<ns>/<id>`).
fn cgroup_dir(controller: &str, id: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join(controller).join(NS).join(id)
}

/// Where a container's memory limit, processes and freezer state are read, and how `ctr task
/// metrics` names them: v1 hierarchies (hybrid hosts) or the pure cgroup v2 tree (most hosts
/// today, and the VM test bed).
struct CgroupFiles {
    v2: bool,
    memory_limit: PathBuf,
    procs: PathBuf,
    freezer: PathBuf,
    frozen: &'static str,
    thawed: &'static str,
    limit_metric: &'static str,
    usage_metric: &'static str,
}

impl CgroupFiles {
    fn of(id: &str) -> Self {
        if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            let dir = Path::new(CGROUP_ROOT).join(NS).join(id);
            CgroupFiles {
                v2: true,
                memory_limit: dir.join("memory.max"),
                procs: dir.join("cgroup.procs"),
                freezer: dir.join("cgroup.freeze"),
                frozen: "1",
                thawed: "0",
                limit_metric: "memory.usage_limit",
                usage_metric: "memory.usage",
            }
        } else {
            CgroupFiles {
                v2: false,
                memory_limit: cgroup_dir("memory", id).join("memory.limit_in_bytes"),
                procs: cgroup_dir("freezer", id).join("cgroup.procs"),
                freezer: cgroup_dir("freezer", id).join("freezer.state"),
                frozen: "FROZEN",
                thawed: "THAWED",
                limit_metric: "memory.limit_in_bytes",
                usage_metric: "memory.usage_in_bytes",
            }
        }
    }
}

/// The end of every test: no shim of this containerd left, nothing mounted under its directory.
fn assert_clean(env: &Env, after: &str) -> Result<()> {
    env.assert_no_shim(after)?;
    let left = mounts_under(env.dir())?;
    ensure!(
        left.is_empty(),
        "{}: mounts left under {} after {after}: {left:?}",
        env.flavor(),
        env.dir().display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Events, as `ctr events` prints them.
// ---------------------------------------------------------------------------------------------

/// One task event: its topic (`/tasks/exit`) and its JSON body.
#[derive(Debug)]
struct Event {
    topic: String,
    body: Value,
}

impl Event {
    fn container(&self) -> &str {
        self.body["container_id"].as_str().unwrap_or_default()
    }

    /// The process an event is about: the exec id of exec events, the `id` of TaskExit (the
    /// exec id, or the container id for the init).
    fn process(&self) -> &str {
        self.body["exec_id"]
            .as_str()
            .or_else(|| self.body["id"].as_str())
            .unwrap_or_default()
    }

    /// TaskExit's status; protobuf's JSON leaves a zero out.
    fn exit_status(&self) -> u64 {
        self.body["exit_status"].as_u64().unwrap_or(0)
    }

    fn is(&self, topic: &str, container: &str, process: &str) -> bool {
        self.topic == topic && self.container() == container && self.process() == process
    }
}

/// `ctr events` running in the background, its output in a file; killed when dropped.
struct EventLog {
    child: Child,
    path: PathBuf,
}

impl EventLog {
    /// Starts `ctr events` (all namespaces) and waits until it is subscribed: a namespace label
    /// it must report as `/namespaces/update`.
    fn start(env: &Env) -> Result<Self> {
        let path = env.dir().join(format!("{}.events", unique_id("events")));
        let child = Command::new(env.containerd.ctr_binary())
            .arg("--address")
            .arg(env.containerd.address())
            .arg("events")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&path)?)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run {} events",
                    env.containerd.ctr_binary().display()
                )
            })?;
        let log = EventLog { child, path };
        let deadline = Instant::now() + SETTLE;
        let mut n = 0;
        loop {
            n += 1;
            env.ctr_ok(&["namespaces", "label", NS, &format!("usernsrs-events={n}")])?;
            std::thread::sleep(Duration::from_millis(100));
            if log.raw()?.contains("/namespaces/update") {
                return Ok(log);
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: `ctr events` reported no /namespaces/update within {SETTLE:?}:\n{}",
                    env.flavor(),
                    log.raw()?
                );
            }
        }
    }

    fn raw(&self) -> Result<String> {
        fs::read_to_string(&self.path)
            .with_context(|| format!("cannot read {}", self.path.display()))
    }

    /// The `/tasks/...` events so far, in the order containerd published them.
    fn tasks(&self) -> Result<Vec<Event>> {
        let raw = self.raw()?;
        let mut events = Vec::new();
        for line in raw.lines() {
            // "<date> <time> +0000 UTC <namespace> /tasks/exit {json}"
            let Some(topic) = line.split_whitespace().find(|w| w.starts_with("/tasks/")) else {
                continue;
            };
            let body = line
                .split_once(topic)
                .map(|(_, rest)| rest.trim())
                .unwrap_or_default();
            let body: Value = serde_json::from_str(body)
                .with_context(|| format!("event body is not JSON: {line:?}"))?;
            events.push(Event {
                topic: topic.to_owned(),
                body,
            });
        }
        Ok(events)
    }

    /// Waits until an event matches; all the events so far.
    fn wait_for(&self, what: &str, matches: impl Fn(&Event) -> bool) -> Result<Vec<Event>> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let events = self.tasks()?;
            if events.iter().any(&matches) {
                return Ok(events);
            }
            if Instant::now() > deadline {
                bail!(
                    "no {what} event within {SETTLE:?}; task events:\n{}",
                    self.raw()?
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The position of the first event that matches, for ordering checks.
fn position(events: &[Event], what: &str, matches: impl Fn(&Event) -> bool) -> Result<usize> {
    events
        .iter()
        .position(matches)
        .ok_or_else(|| anyhow!("no {what} among the task events: {events:#?}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Exec.
// ---------------------------------------------------------------------------------------------

fn exec_joins_the_container(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let events = EventLog::start(&env)?;
    let userns = userns_opts(flavor);
    let id = unique_id("exec");
    let init = env.run_detached(&userns, &id, &["sleep", "1000"])?;
    let init_map = read_trimmed(Path::new(&format!("/proc/{init}/uid_map")))?;
    assert_eq!(lines(&init_map), [UID_MAP], "{flavor}: uid_map of the init");

    // The exec'd process sees what the init sees: the mapping, root, the image's owners, and
    // nothing but its stdio (3 is ls's own directory fd).
    let out = exec_ok(
        &env,
        &id,
        "probe",
        &[],
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map; id -u; stat -c %u:%g /data/root-file /data/app-file; \
             ls /proc/self/fd",
        ],
    )?;
    assert_eq!(
        lines(&out),
        [UID_MAP, "0", "0:0", "1000:1000", "0", "1", "2", "3"],
        "{flavor}: uid_map, id -u, image owners and open fds of an exec'd process"
    );

    let out = exec(&env, &id, "exit4", &[], &["sh", "-c", "exit 4"])?;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{flavor}: `exit 4` in an exec must make ctr exit 4: {}",
        describe(&out)
    );

    // From the host: a detached exec has the mapped uid, and the init's namespaces and cgroups.
    exec_ok(&env, &id, "bg", &["-d"], &["sleep", "100"])?;
    let bg = wait_for_process(&env, &id, "sleep 100")?;
    ensure!(
        bg != init,
        "{flavor}: the exec reported the init's pid {init}"
    );
    assert_eq!(
        proc_status_uid(bg)?,
        (HOST_ROOT, HOST_ROOT),
        "{flavor}: host uid/gid of the exec'd root process {bg} (never host root)"
    );
    for kind in ["user", "mnt", "pid", "ipc", "uts", "net", "cgroup"] {
        assert_eq!(
            namespace(bg, kind)?,
            namespace(init, kind)?,
            "{flavor}: the exec'd process {bg} must be in the init's {kind} namespace"
        );
    }
    assert_eq!(
        read_trimmed(Path::new(&format!("/proc/{bg}/cgroup")))?,
        read_trimmed(Path::new(&format!("/proc/{init}/cgroup")))?,
        "{flavor}: the exec'd process {bg} must be in the init's cgroups"
    );

    exec_ok(
        &env,
        &id,
        "bg-app",
        &["-d", "--user", "1000"],
        &["sleep", "101"],
    )?;
    let app = wait_for_process(&env, &id, "sleep 101")?;
    assert_eq!(
        proc_status_uid(app)?,
        (HOST_APP, HOST_APP),
        "{flavor}: host uid/gid of `ctr task exec --user 1000` (pid {app})"
    );
    assert_eq!(
        namespace(app, "user")?,
        namespace(init, "user")?,
        "{flavor}: user namespace of the --user 1000 exec"
    );

    // The same exec id while the first one runs.
    exec_fails(
        &env,
        &id,
        "bg",
        &["-d"],
        &["sleep", "100"],
        "already exists",
    )?;

    // Killing the init ends the execs; exec into the exited container is refused.
    env.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id])?;
    env.wait_task(&id, "STOPPED")?;
    for (pid, what) in [(bg, "exec bg"), (app, "exec bg-app")] {
        wait_gone(pid, &format!("{flavor}: {what} after the init was killed"))?;
    }
    exec_fails(&env, &id, "late", &[], &["true"], "not running")?;

    let tasks = events.wait_for("TaskExit of the init", |e| e.is("/tasks/exit", &id, &id))?;
    let ours: Vec<&Event> = tasks.iter().filter(|e| e.container() == id).collect();
    for exec_id in ["probe", "exit4", "bg", "bg-app"] {
        let topics: Vec<&str> = ours
            .iter()
            .filter(|e| e.process() == exec_id)
            .map(|e| e.topic.as_str())
            .collect();
        assert_eq!(
            topics,
            ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"],
            "{flavor}: events of exec {exec_id} in {id}: {ours:#?}"
        );
    }
    let status = |process: &str| {
        ours.iter()
            .find(|e| e.is("/tasks/exit", &id, process))
            .map(|e| e.exit_status())
    };
    assert_eq!(
        status("probe"),
        Some(0),
        "{flavor}: exit status of exec probe"
    );
    assert_eq!(
        status("exit4"),
        Some(4),
        "{flavor}: exit status of exec exit4"
    );
    assert_eq!(
        status(&id),
        Some(137),
        "{flavor}: exit status of the killed init"
    );
    let init_exit = position(&tasks, "TaskExit of the init", |e| {
        e.is("/tasks/exit", &id, &id)
    })?;
    for exec_id in ["bg", "bg-app"] {
        let exec_exit = position(&tasks, "TaskExit of an exec", |e| {
            e.is("/tasks/exit", &id, exec_id)
        })?;
        ensure!(
            exec_exit < init_exit,
            "{flavor}: TaskExit of exec {exec_id} must precede the init's: {ours:#?}"
        );
    }
    ensure!(
        !ours.iter().any(|e| e.process() == "late"),
        "{flavor}: the refused exec `late` must leave no event: {ours:#?}"
    );

    env.ctr_ok(&["task", "delete", &id])?;
    env.ctr_ok(&["containers", "rm", &id])?;
    drop(events);
    assert_clean(&env, "the exec container")
}

#[test]
fn containerd16_exec_joins_the_containers_user_namespace() -> Result<()> {
    exec_joins_the_container(Flavor::Containerd16)
}

#[test]
fn containerd2_exec_joins_the_containers_user_namespace() -> Result<()> {
    exec_joins_the_container(Flavor::Containerd2)
}

/// An exec'd process gets its container's `oom_score_adj`, not the shim's; an exec into a
/// paused container is refused at once (FailedPrecondition, as runc's "cannot exec in a paused
/// state"), where it used to wait forever on the frozen cgroup; after Resume exec works again.
fn exec_follows_the_containers_oom_score_and_pause(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let userns = userns_opts(flavor);
    let id = unique_id("exec-oom");
    let init = env.run_detached(&userns, &id, &["sleep", "1000"])?;
    // The container's score, different from anything the shim has (raising needs no privilege).
    let shim_score = read_trimmed(Path::new("/proc/self/oom_score_adj"))?;
    let score = if shim_score == "567" { "568" } else { "567" };
    fs::write(format!("/proc/{init}/oom_score_adj"), score)?;
    let out = exec_ok(&env, &id, "oom", &[], &["cat", "/proc/self/oom_score_adj"])?;
    assert_eq!(
        lines(&out),
        [score],
        "{flavor}: oom_score_adj of an exec'd process (the container's init has {score})"
    );

    env.ctr_ok(&["task", "pause", &id])?;
    env.wait_task(&id, "PAUSED")?;
    exec_fails(
        &env,
        &id,
        "frozen",
        &[],
        &["true"],
        "is paused: cannot exec frozen in a paused state",
    )?;
    env.ctr_ok(&["task", "resume", &id])?;
    env.wait_task(&id, "RUNNING")?;
    exec_ok(&env, &id, "thawed", &[], &["true"])?;

    env.ctr_ok(&["task", "kill", "-s", "KILL", &id])?;
    env.wait_task(&id, "STOPPED")?;
    env.ctr_ok(&["task", "delete", &id])?;
    env.ctr_ok(&["containers", "rm", &id])?;
    assert_clean(&env, "the paused exec container")
}

#[test]
fn containerd16_exec_follows_the_containers_oom_score_and_pause() -> Result<()> {
    exec_follows_the_containers_oom_score_and_pause(Flavor::Containerd16)
}

#[test]
fn containerd2_exec_follows_the_containers_oom_score_and_pause() -> Result<()> {
    exec_follows_the_containers_oom_score_and_pause(Flavor::Containerd2)
}

/// A container without a pid namespace of its own whose init exits while a child still holds
/// its stdout: the child is killed first, then the output drained, so the exit reaches ctr
/// at once (it used to wait for two 2 s drains, stdout's then stderr's, before the leftover was
/// killed: 4.06 s against runc's 0.05 s under CRI).
fn leftover_holding_stdout_is_killed_before_the_drain(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs-leftover");
    unpack_busybox(&rootfs)?;
    let id = unique_id("leftover");
    let mut spec = env.base_spec(
        &id,
        &rootfs,
        "sleep 1001 & echo $! > /tmp/leftover; echo init-done",
    )?;
    spec["linux"]["namespaces"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("spec has no linux.namespaces array"))?
        .retain(|n| n["type"] != "pid");
    let started = Instant::now();
    let run = env.create_and_start(&id, &spec)?;
    let took = started.elapsed();
    ensure!(
        run.status.success() && lines(&run.stdout) == ["init-done"],
        "{flavor}: the container: {}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let leftover: i32 = fs::read_to_string(rootfs.join("tmp/leftover"))?
        .trim()
        .parse()?;
    ensure!(
        !process_alive(leftover) || !cmdline(leftover).contains("1001"),
        "{flavor}: the leftover sleep (pid {leftover}) outlived its container"
    );
    // One drain limit (2 s) is the most the exit may wait once the leftover is killed; create,
    // start and delete of a root.path container take well under a second here.
    ensure!(
        took < Duration::from_secs(2),
        "{flavor}: create, start and exit took {took:?}: the exit waited for the output drain \
         before killing the process that held it"
    );
    assert_clean(&env, "the leftover container")
}

#[test]
fn containerd16_leftover_holding_stdout_is_killed_before_the_drain() -> Result<()> {
    leftover_holding_stdout_is_killed_before_the_drain(Flavor::Containerd16)
}

#[test]
fn containerd2_leftover_holding_stdout_is_killed_before_the_drain() -> Result<()> {
    leftover_holding_stdout_is_killed_before_the_drain(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 2. Stdio of a non-root process (containerd issue 10598).
// ---------------------------------------------------------------------------------------------

/// Run as uid 1000: reopens its stdout and stderr by path (`/dev/stdout` is a symlink to
/// `/proc/self/fd/1`, whose open is a permission check on the pipe's owner and mode).
const REOPEN_STDIO: &str = "id -u; echo to-stderr > /dev/stderr; echo to-stdout > /dev/stdout";

/// A user namespace whose FIRST range maps uid 1000. containerd 2.x's ctr asks for stdio pipes
/// owned by the first range's host id (runc options `io_uid`/`io_gid`), so with these ranges it
/// asks for what CRI asks for a container whose user is 1000: the host ids of the process's
/// user (containerd's fix for issue 10598). containerd 1.6's `ctr task start` leaves the owner
/// to the shim, which takes the same ids.
const APP_FIRST_RANGES: [(u32, u32, u32); 3] = [
    (1000, HOST_APP, 1),
    (0, HOST_ROOT, 1000),
    (1001, HOST_APP + 1, 64535),
];

fn assert_reopened(flavor: Flavor, what: &str, out: &Output) {
    assert!(
        out.status.success()
            && lines(&text(&out.stdout)) == ["1000", "to-stdout"]
            && lines(&text(&out.stderr)).iter().any(|l| l == "to-stderr"),
        "{flavor}: {what}: uid 1000 must reopen /dev/stdout and /dev/stderr: {}",
        describe(out)
    );
}

fn non_root_stdio(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let userns = userns_opts(flavor);

    // An exec as uid 1000: the shim gives its pipes to the user's host ids.
    let id = unique_id("stdio-exec");
    env.run_detached(&userns, &id, &["sleep", "1000"])?;
    let out = exec(
        &env,
        &id,
        "app",
        &["--user", "1000"],
        &["sh", "-c", REOPEN_STDIO],
    )?;
    assert_reopened(flavor, "ctr task exec --user 1000", &out);
    // The owners, from the host, on a detached one.
    exec_ok(
        &env,
        &id,
        "app-bg",
        &["-d", "--user", "1000"],
        &["sleep", "102"],
    )?;
    let pid = wait_for_process(&env, &id, "sleep 102")?;
    for fd in [1, 2] {
        let md = fs::metadata(format!("/proc/{pid}/fd/{fd}"))
            .with_context(|| format!("cannot stat /proc/{pid}/fd/{fd}"))?;
        assert_eq!(
            (md.uid(), md.gid()),
            (HOST_APP, HOST_APP),
            "{flavor}: owner of fd {fd} (a pipe from the shim) of the --user 1000 exec {pid}"
        );
    }
    env.kill_and_remove(&id)?;

    // A container whose process is uid 1000, from a spec (`ctr c create --config`).
    let rootfs = env.dir().join("rootfs-stdio");
    unpack_busybox(&rootfs)?;
    let id = unique_id("stdio-spec");
    let mut spec = env.base_spec(&id, &rootfs, REOPEN_STDIO)?;
    spec["process"]["user"] = json!({ "uid": 1000, "gid": 1000 });
    spec["linux"]["namespaces"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("spec has no linux.namespaces array"))?
        .push(json!({ "type": "user" }));
    let ranges: Vec<Value> = APP_FIRST_RANGES
        .iter()
        .map(|(c, h, s)| json!({ "containerID": c, "hostID": h, "size": s }))
        .collect();
    spec["linux"]["uidMappings"] = json!(ranges);
    spec["linux"]["gidMappings"] = json!(ranges);
    let run = env.create_and_start(&id, &spec)?;
    assert!(
        run.status.success()
            && lines(&run.stdout) == ["1000", "to-stdout"]
            && lines(&run.stderr).iter().any(|l| l == "to-stderr"),
        "{flavor}: a container running as uid 1000 must reopen /dev/stdout and /dev/stderr: \
         {}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );

    if flavor == Flavor::Containerd2 {
        // `ctr run --user 1000` (only 2.x's ctr has --user), with the same ranges.
        let mut opts: Vec<String> = Vec::new();
        for flag in ["--uidmap", "--gidmap"] {
            for (c, h, s) in APP_FIRST_RANGES {
                opts.push(flag.to_owned());
                opts.push(format!("{c}:{h}:{s}"));
            }
        }
        opts.extend(["--remap-labels", "--user", "1000"].map(str::to_owned));
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let out = env.run(&opts, &unique_id("stdio-run"), &["sh", "-c", REOPEN_STDIO])?;
        assert_reopened(flavor, "ctr run --user 1000", &out);

        // With the plain mapping, ctr asks for pipes owned by container root's host id
        // (`io_uid` 100000; containerd-shim-runc-v2 gets the same and honours it, so there uid
        // 1000 cannot reopen /dev/stderr either): the fds the process inherited still work.
        let mut opts = userns.clone();
        opts.extend(["--user", "1000"]);
        let out = env.run(
            &opts,
            &unique_id("stdio-run-plain"),
            &["sh", "-c", "id -u; echo to-stdout; echo to-stderr >&2"],
        )?;
        assert!(
            out.status.success()
                && lines(&text(&out.stdout)) == ["1000", "to-stdout"]
                && lines(&text(&out.stderr)).iter().any(|l| l == "to-stderr"),
            "{flavor}: ctr run --user 1000: the inherited stdio must work: {}",
            describe(&out)
        );
    }
    assert_clean(&env, "the stdio containers")
}

#[test]
fn containerd16_non_root_process_reopens_its_stdio() -> Result<()> {
    non_root_stdio(Flavor::Containerd16)
}

#[test]
fn containerd2_non_root_process_reopens_its_stdio() -> Result<()> {
    non_root_stdio(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 3. Terminals.
// ---------------------------------------------------------------------------------------------

/// Run in the container with a terminal: the pty's name and owner, whether stdio is the pty,
/// and an exit code to propagate. (`readlink` rather than `tty`: not every busybox image
/// links the applet.)
const TTY_PROBE: &str = "p=$(readlink /proc/self/fd/0); echo \"tty=$p\"; \
     stat -c \"owner=%u:%g\" \"$p\"; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo stdio=pty; exit 6";

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Runs the flavor's `ctr -n NS ARGS` with a terminal of its own: `script` gives it a pty, as
/// `ctr -t` needs one on its side. Returns the combined output with `\r` removed, and the exit
/// code (`script -e` passes ctr's on).
fn ctr_in_terminal(env: &Env, args: &[&str]) -> Result<(Option<i32>, String)> {
    let mut words = vec![
        env.containerd.ctr_binary().to_string_lossy().into_owned(),
        "--address".to_owned(),
        env.containerd.address().to_string_lossy().into_owned(),
        "-n".to_owned(),
        NS.to_owned(),
    ];
    words.extend(args.iter().map(|a| a.to_string()));
    let line = words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(CTR_TIMEOUT.as_secs().to_string())
        .args(["script", "-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run script(1) (util-linux)")?;
    let combined = format!("{}{}", text(&out.stdout), text(&out.stderr)).replace('\r', "");
    Ok((out.status.code(), combined))
}

/// The value after `key=` on the first output line that has it.
fn probe_value<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    let key = format!("{key}=");
    output
        .lines()
        .find_map(|l| l.find(&key).map(|at| l[at + key.len()..].trim()))
}

fn assert_tty(
    flavor: Flavor,
    what: &str,
    got: (Option<i32>, String),
    tty: Option<&str>,
    owner: &str,
) {
    let (code, output) = got;
    assert_eq!(
        code,
        Some(6),
        "{flavor}: {what}: exit code through ctr and script:\n{output}"
    );
    let name = probe_value(&output, "tty");
    match tty {
        Some(want) => assert_eq!(name, Some(want), "{flavor}: {what}: the pty:\n{output}"),
        None => assert!(
            name.is_some_and(|n| n.starts_with("/dev/pts/")),
            "{flavor}: {what}: stdin must be a pty of the container's devpts:\n{output}"
        ),
    }
    // gid 5: the devpts mount's gid=5 (ctr's default spec), as with runc.
    assert_eq!(
        probe_value(&output, "owner"),
        Some(owner),
        "{flavor}: {what}: owner of the pty inside the container:\n{output}"
    );
    assert_eq!(
        probe_value(&output, "stdio"),
        Some("pty"),
        "{flavor}: {what}: stdin, stdout and stderr must all be the pty:\n{output}"
    );
}

fn terminals(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let fifo = env.fifo_dir();
    let userns = userns_opts(flavor);

    // `ctr run -t`: the container's own devpts, so its first pty is /dev/pts/0 whatever the host
    // has open.
    let id = unique_id("tty-run");
    let mut args = vec![
        "run",
        "--rm",
        "-t",
        "--runtime",
        RUNTIME,
        "--fifo-dir",
        &fifo,
    ];
    args.extend_from_slice(&userns);
    args.extend([env.image.as_str(), &id, "sh", "-c", TTY_PROBE]);
    let got = ctr_in_terminal(&env, &args)?;
    assert_tty(flavor, "ctr run -t", got, Some("/dev/pts/0"), "0:5");

    // `ctr task exec -t` in a container without a terminal, as root and as uid 1000.
    let id = unique_id("tty-exec");
    env.run_detached(&userns, &id, &["sleep", "1000"])?;
    let got = ctr_in_terminal(
        &env,
        &[
            "task",
            "exec",
            "-t",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            "t-root",
            &id,
            "sh",
            "-c",
            TTY_PROBE,
        ],
    )?;
    assert_tty(flavor, "ctr task exec -t", got, Some("/dev/pts/0"), "0:5");
    let got = ctr_in_terminal(
        &env,
        &[
            "task",
            "exec",
            "-t",
            "--user",
            "1000",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            "t-app",
            &id,
            "sh",
            "-c",
            TTY_PROBE,
        ],
    )?;
    assert_tty(flavor, "ctr task exec -t --user 1000", got, None, "1000:5");
    env.kill_and_remove(&id)?;
    assert_clean(&env, "the terminal containers")
}

#[test]
fn containerd16_terminals_are_the_containers_ptys() -> Result<()> {
    terminals(Flavor::Containerd16)
}

#[test]
fn containerd2_terminals_are_the_containers_ptys() -> Result<()> {
    terminals(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 4. Log URIs.
// ---------------------------------------------------------------------------------------------

/// A `binary://` logger: records its arguments and environment, copies fd 3 (stdout) and fd 4
/// (stderr) to files, and closes fd 5 once ready, before the copies start, so that they do not
/// hold the ready pipe open.
const LOGGER: &str = r#"#!/bin/sh
d=$(dirname "$0")
printf '%s\n' "$@" > "$d/args"
printf 'CONTAINER_ID=%s\nCONTAINER_NAMESPACE=%s\n' "$CONTAINER_ID" "$CONTAINER_NAMESPACE" > "$d/env"
exec 5>&-
cat <&3 > "$d/stdout" &
cat <&4 > "$d/stderr" &
wait
echo done > "$d/done"
"#;

const TWO_STREAMS: &str = "echo to-stdout; echo to-stderr >&2; exit 3";

fn log_uris(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let userns = userns_opts(flavor);

    // file://: both streams appended to one file.
    let log = env.dir().join("logs/file.log");
    let uri = format!("file://{}", log.display());
    let mut opts = userns.clone();
    opts.extend(["--log-uri", &uri]);
    let out = env.run(&opts, &unique_id("log-file"), &["sh", "-c", TWO_STREAMS])?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{flavor}: --log-uri {uri}: {}",
        describe(&out)
    );
    let mut logged = lines(&read_trimmed(&log)?);
    logged.sort();
    assert_eq!(
        logged,
        ["to-stderr", "to-stdout"],
        "{flavor}: contents of {}",
        log.display()
    );

    // binary://: a logger with both streams, the query as arguments, the container in its env.
    let dir = env.dir().join("logger");
    fs::create_dir(&dir)?;
    let logger = dir.join("logger.sh");
    fs::write(&logger, LOGGER)?;
    fs::set_permissions(&logger, fs::Permissions::from_mode(0o755))?;
    let uri = format!("binary://{}?key=val&flag", logger.display());
    let id = unique_id("log-binary");
    let mut opts = userns.clone();
    opts.extend(["--log-uri", &uri]);
    let out = env.run(&opts, &id, &["sh", "-c", TWO_STREAMS])?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{flavor}: --log-uri {uri}: {}",
        describe(&out)
    );
    // The logger ends when the container's side of its pipes is closed.
    let done = dir.join("done");
    let deadline = Instant::now() + SETTLE;
    while !done.exists() {
        ensure!(
            Instant::now() < deadline,
            "{flavor}: the logger did not finish {SETTLE:?} after the container exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let file = |name: &str| read_trimmed(&dir.join(name));
    assert_eq!(file("stdout")?, "to-stdout", "{flavor}: the logger's fd 3");
    assert_eq!(file("stderr")?, "to-stderr", "{flavor}: the logger's fd 4");
    assert_eq!(
        lines(&file("args")?),
        ["key", "val", "flag"],
        "{flavor}: the logger's arguments"
    );
    assert_eq!(
        lines(&file("env")?),
        [
            format!("CONTAINER_ID={id}"),
            format!("CONTAINER_NAMESPACE={NS}")
        ],
        "{flavor}: the logger's environment"
    );
    assert_clean(&env, "the log URI containers")
}

/// A logger that takes its time: 5 s between its start and its closing fd 5.
const SLOW_LOGGER: &str = r#"#!/bin/sh
d=$(dirname "$0")
touch "$d/started"
sleep 5
touch "$d/ready"
exec 5>&-
cat <&3 > /dev/null &
cat <&4 > /dev/null &
wait
"#;

/// Kills and reaps a child of this test (a `ctr` that may hang) when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// While a Create waits for its `binary://` logger to get ready, the shim still answers other
/// RPCs: the wait must not block the server (one shim serves every container of a pod, and
/// containerd's own Delete/Shutdown after a cancelled create go to it too).
fn slow_logger_does_not_stall_the_shim(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let dir = env.dir().join("slow-logger");
    fs::create_dir(&dir)?;
    let logger = dir.join("logger.sh");
    fs::write(&logger, SLOW_LOGGER)?;
    fs::set_permissions(&logger, fs::Permissions::from_mode(0o755))?;
    let uri = format!("binary://{}", logger.display());
    let id = unique_id("log-slow");
    let fifo = env.fifo_dir();
    let mut args = env.run_args(&fifo, &["-d"]);
    args.extend(userns_opts(flavor));
    args.extend(["--log-uri", &uri, &env.image, &id, "sleep", "1000"]);
    let mut run = ChildGuard(
        Command::new(env.containerd.ctr_binary())
            .arg("--address")
            .arg(env.containerd.address())
            .args(["-n", NS])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot spawn ctr run with a slow logger")?,
    );

    // The logger started: the Create is now waiting for it.
    let started = dir.join("started");
    let deadline = Instant::now() + SETTLE;
    while !started.exists() {
        ensure!(
            Instant::now() < deadline,
            "{flavor}: the logger of {id} did not start within {SETTLE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        !dir.join("ready").exists(),
        "{flavor}: the logger of {id} got ready before the shim could be asked anything \
         (a machine this slow cannot tell)"
    );
    let client = env.shim_client(&id)?;
    let asked = Instant::now();
    let answer = client.connect(
        ttrpc_context::with_timeout(2_000_000_000),
        &ConnectRequest {
            id: id.clone(),
            ..Default::default()
        },
    );
    let waited = asked.elapsed();
    ensure!(
        answer.is_ok(),
        "{flavor}: the shim did not answer Connect within 2 s while the binary:// logger of {id} \
         was getting ready (logger ready meanwhile: {}; answer after {waited:?}: {answer:?}): \
         a slow logger stalls every RPC of the shim",
        dir.join("ready").exists()
    );
    drop(client);

    // Once the logger is ready the Create completes and the container runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = run.0.try_wait()? {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "{flavor}: ctr run -d with a slow logger did not return within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = run.0.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
        }
        bail!("{flavor}: ctr run -d with a slow logger: {status}\n{stderr}");
    }
    env.wait_task(&id, "RUNNING")?;
    env.kill_and_remove(&id)?;
    drop(run);
    assert_clean(&env, "the slow logger container")
}

#[test]
fn containerd16_log_uris_reach_the_file_and_the_logger() -> Result<()> {
    log_uris(Flavor::Containerd16)
}

#[test]
fn containerd2_log_uris_reach_the_file_and_the_logger() -> Result<()> {
    log_uris(Flavor::Containerd2)
}

#[test]
fn containerd16_slow_logger_does_not_stall_the_shim() -> Result<()> {
    slow_logger_does_not_stall_the_shim(Flavor::Containerd16)
}

#[test]
fn containerd2_slow_logger_does_not_stall_the_shim() -> Result<()> {
    slow_logger_does_not_stall_the_shim(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 5. cgroups: limits, metrics, Pause/Resume, OOM, Update and Stats.
// ---------------------------------------------------------------------------------------------

/// `ctr task metrics ID` (table format) as metric name → value.
fn metrics(env: &Env, id: &str) -> Result<HashMap<String, String>> {
    let out = env.ctr_ok(&["task", "metrics", id])?;
    Ok(out
        .lines()
        .skip_while(|l| !l.starts_with("METRIC"))
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .collect())
}

/// Reads a container's growing file from the host, through its root.
fn size_of(pid: i32, path: &str) -> Result<u64> {
    let host = format!("/proc/{pid}/root{path}");
    Ok(fs::metadata(&host)
        .with_context(|| format!("cannot stat {host}"))?
        .len())
}

fn cgroups(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let events = EventLog::start(&env)?;
    let userns = userns_opts(flavor);

    // A limit at create, page-rounded by the kernel, and a container that shows it is running:
    // it appends to /tmp/ticks every 20 ms.
    let id = unique_id("cg");
    let mut opts = userns.clone();
    opts.extend(["--memory-limit", "50000000"]);
    let init = env.run_detached(
        &opts,
        &id,
        &[
            "sh",
            "-c",
            "while :; do echo tick >> /tmp/ticks; usleep 20000; done",
        ],
    )?;
    let cg = CgroupFiles::of(&id);
    assert_eq!(
        read_trimmed(&cg.memory_limit)?,
        "49999872",
        "{flavor}: {}",
        cg.memory_limit.display()
    );
    let m = metrics(&env, &id)?;
    assert_eq!(
        m.get(cg.limit_metric).map(String::as_str),
        Some("49999872"),
        "{flavor}: ctr task metrics {id}: {m:?}"
    );
    let usage: u64 = m
        .get(cg.usage_metric)
        .ok_or_else(|| anyhow!("{flavor}: no {} in {m:?}", cg.usage_metric))?
        .parse()?;
    ensure!(
        usage > 0,
        "{flavor}: memory usage of a running container is 0: {m:?}"
    );

    // Pause: PAUSED, the freezer cgroup (holding the init) frozen, nothing runs; Resume undoes it.
    let procs = read_trimmed(&cg.procs)?;
    ensure!(
        procs.lines().any(|p| p == init.to_string()),
        "{flavor}: init {init} is not in {}: {procs}",
        cg.procs.display()
    );
    env.ctr_ok(&["task", "pause", &id])?;
    env.wait_task(&id, "PAUSED")?;
    assert_eq!(
        read_trimmed(&cg.freezer)?,
        cg.frozen,
        "{flavor}: paused: {}",
        cg.freezer.display()
    );
    let before = size_of(init, "/tmp/ticks")?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        size_of(init, "/tmp/ticks")?,
        before,
        "{flavor}: a paused container went on writing"
    );
    env.ctr_ok(&["task", "resume", &id])?;
    env.wait_task(&id, "RUNNING")?;
    assert_eq!(
        read_trimmed(&cg.freezer)?,
        cg.thawed,
        "{flavor}: resumed: {}",
        cg.freezer.display()
    );
    let deadline = Instant::now() + SETTLE;
    while size_of(init, "/tmp/ticks")? == before {
        ensure!(
            Instant::now() < deadline,
            "{flavor}: a resumed container does not run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Update and Stats straight over the shim's ttrpc socket (ctr has no update command).
    let client = env.shim_client(&id)?;
    let update = UpdateTaskRequest {
        id: id.clone(),
        resources: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: serde_json::to_vec(&json!({ "memory": { "limit": 60_000_000 } }))?,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    client
        .update(env.rpc_context(), &update)
        .map_err(|e| anyhow!("{flavor}: Update of {id}: {e:?}"))?;
    assert_eq!(
        read_trimmed(&cg.memory_limit)?,
        "59998208",
        "{flavor}: {} after Update to 60000000",
        cg.memory_limit.display()
    );
    let stats = client
        .stats(
            env.rpc_context(),
            &StatsRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .map_err(|e| anyhow!("{flavor}: Stats of {id}: {e:?}"))?;
    let any = stats
        .stats
        .as_ref()
        .ok_or_else(|| anyhow!("{flavor}: Stats of {id} carries no metrics"))?;
    let (limit, usage, pids) = if cg.v2 {
        assert_eq!(
            any.type_url, "io.containerd.cgroups.v2.Metrics",
            "{flavor}: Stats type"
        );
        let m = CgroupV2Metrics::parse_from_bytes(&any.value)
            .with_context(|| format!("{flavor}: Stats of {id} does not decode as v2 metrics"))?;
        (m.memory.usage_limit, m.memory.usage, m.pids.current)
    } else {
        assert_eq!(
            any.type_url, "io.containerd.cgroups.v1.Metrics",
            "{flavor}: Stats type"
        );
        let m = CgroupV1Metrics::parse_from_bytes(&any.value)
            .with_context(|| format!("{flavor}: Stats of {id} does not decode as v1 metrics"))?;
        (m.memory.usage.limit, m.memory.usage.usage, m.pids.current)
    };
    assert_eq!(limit, 59_998_208, "{flavor}: limit in Stats: {any:?}");
    ensure!(usage > 0, "{flavor}: no memory usage in Stats: {any:?}");
    ensure!(pids >= 1, "{flavor}: no pids in Stats: {any:?}");
    // An unknown container is NotFound.
    let err = client
        .update(
            env.rpc_context(),
            &UpdateTaskRequest {
                id: "no-such-container".into(),
                ..update
            },
        )
        .err()
        .ok_or_else(|| anyhow!("{flavor}: Update of an unknown container succeeded"))?;
    ensure!(
        format!("{err:?}").contains("NOT_FOUND"),
        "{flavor}: Update of an unknown container: {err:?}"
    );
    drop(client);
    env.kill_and_remove(&id)?;

    let tasks = events.tasks()?;
    let topics: Vec<&str> = tasks
        .iter()
        .filter(|e| {
            e.container() == id && (e.topic == "/tasks/paused" || e.topic == "/tasks/resumed")
        })
        .map(|e| e.topic.as_str())
        .collect();
    assert_eq!(
        topics,
        ["/tasks/paused", "/tasks/resumed"],
        "{flavor}: events of {id}: {tasks:#?}"
    );

    // OOM: a memory hog over a 20 MB limit is killed, and containerd hears of it.
    let id = unique_id("oom");
    let mut opts = userns.clone();
    opts.extend(["--memory-limit", "20000000"]);
    let out = env.run(
        &opts,
        &id,
        &["sh", "-c", "x=a; while true; do x=$x$x; done"],
    )?;
    assert_eq!(
        out.status.code(),
        Some(137),
        "{flavor}: the OOM-killed container: {}",
        describe(&out)
    );
    let tasks = events.wait_for("TaskOOM", |e| {
        e.topic == "/tasks/oom" && e.container() == id
    })?;
    let oom = position(&tasks, "TaskOOM", |e| {
        e.topic == "/tasks/oom" && e.container() == id
    })?;
    let exit = position(&tasks, "TaskExit", |e| e.is("/tasks/exit", &id, &id))?;
    ensure!(
        oom < exit,
        "{flavor}: TaskOOM must precede the TaskExit it caused: {tasks:#?}"
    );
    assert_eq!(
        tasks[exit].exit_status(),
        137,
        "{flavor}: exit status of the OOM kill"
    );

    drop(events);
    assert_clean(&env, "the cgroup containers")
}

#[test]
fn containerd16_cgroup_limits_pause_oom_update_and_stats() -> Result<()> {
    cgroups(Flavor::Containerd16)
}

#[test]
fn containerd2_cgroup_limits_pause_oom_update_and_stats() -> Result<()> {
    cgroups(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 6. Kill.
// ---------------------------------------------------------------------------------------------

fn kill_semantics(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let events = EventLog::start(&env)?;
    let id = unique_id("kill");
    // The init is pid 1 of the container's pid namespace and has no SIGTERM handler, so the
    // kernel drops a SIGTERM sent to it; a child it started and an exec'd process do not.
    let init = env.run_detached(
        &userns_opts(flavor),
        &id,
        &["sh", "-c", "sleep 1001 & exec sleep 1000"],
    )?;
    let child = wait_for_process(&env, &id, "sleep 1001")?;
    exec_ok(&env, &id, "bg", &["-d"], &["sleep", "100"])?;
    let bg = wait_for_process(&env, &id, "sleep 100")?;

    // Kill of an exec that has exited, and of one that does not exist.
    exec_ok(&env, &id, "quick", &["-d"], &["true"])?;
    events.wait_for("TaskExit of exec quick", |e| {
        e.is("/tasks/exit", &id, "quick")
    })?;
    ctr_fails(
        &env,
        &["task", "kill", "--exec-id", "quick", &id],
        "already finished",
    )?;
    ctr_fails(
        &env,
        &["task", "kill", "--exec-id", "no-such-exec", &id],
        "not found",
    )?;

    // Without --all, only the init is signalled (and ignores it).
    env.ctr_ok(&["task", "kill", "-s", "SIGTERM", &id])?;
    std::thread::sleep(Duration::from_millis(500));
    for (pid, what) in [
        (init, "the init"),
        (child, "the init's child"),
        (bg, "exec bg"),
    ] {
        ensure!(
            process_alive(pid),
            "{flavor}: {what} ({pid}) died of a SIGTERM sent to the init alone"
        );
    }
    env.wait_task(&id, "RUNNING")?;

    // --all reaches every process of the container.
    env.ctr_ok(&["task", "kill", "--all", "-s", "SIGTERM", &id])?;
    wait_gone(
        child,
        &format!("{flavor}: the init's child after kill --all SIGTERM"),
    )?;
    wait_gone(bg, &format!("{flavor}: exec bg after kill --all SIGTERM"))?;
    let tasks = events.wait_for("TaskExit of exec bg", |e| e.is("/tasks/exit", &id, "bg"))?;
    let bg_exit = position(&tasks, "TaskExit of exec bg", |e| {
        e.is("/tasks/exit", &id, "bg")
    })?;
    assert_eq!(
        tasks[bg_exit].exit_status(),
        128 + 15,
        "{flavor}: exec bg must have died of the SIGTERM of kill --all"
    );
    ensure!(
        process_alive(init),
        "{flavor}: the init died of SIGTERM without a handler"
    );
    env.wait_task(&id, "RUNNING")?;

    env.ctr_ok(&["task", "kill", "-a", "-s", "SIGKILL", &id])?;
    env.wait_task(&id, "STOPPED")?;
    wait_gone(
        init,
        &format!("{flavor}: the init after kill --all SIGKILL"),
    )?;
    let tasks = events.wait_for("TaskExit of the init", |e| e.is("/tasks/exit", &id, &id))?;
    let exit = position(&tasks, "TaskExit of the init", |e| {
        e.is("/tasks/exit", &id, &id)
    })?;
    assert_eq!(
        tasks[exit].exit_status(),
        137,
        "{flavor}: exit status after kill --all SIGKILL"
    );

    env.ctr_ok(&["task", "delete", &id])?;
    env.ctr_ok(&["containers", "rm", &id])?;
    drop(events);
    assert_clean(&env, "the kill container")
}

#[test]
fn containerd16_kill_of_exited_exec_and_kill_all() -> Result<()> {
    kill_semantics(Flavor::Containerd16)
}

#[test]
fn containerd2_kill_of_exited_exec_and_kill_all() -> Result<()> {
    kill_semantics(Flavor::Containerd2)
}

/// `linux.timeOffsets` with a new time namespace: the container's and an exec'd process's
/// boot-time clock run ten days ahead (/proc/uptime), the host's does not. The offsets were
/// dropped once, and exec did not join the time namespace. containerd 2.x only: Debian's 1.6
/// ctr has no `timeOffsets` in its spec type (its binary lacks the string; 2.4.2's has it) and
/// drops the field before the shim sees the spec.
fn time_offsets_apply_to_the_container_and_its_execs(flavor: Flavor) -> Result<()> {
    const AHEAD: u64 = 10 * 86_400;
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs");
    unpack_busybox(&rootfs)?;
    let id = unique_id("timens");
    let mut spec = env.base_spec(&id, &rootfs, "cat /proc/uptime >/uptime; exec sleep 1000")?;
    spec["linux"]["namespaces"]
        .as_array_mut()
        .context("spec has linux.namespaces")?
        .push(json!({"type": "time"}));
    spec["linux"]["timeOffsets"] = json!({
        "boottime": {"secs": AHEAD},
        "monotonic": {"secs": AHEAD},
    });
    let init = env.start_detached(&id, &spec)?;
    let result = (|| -> Result<()> {
        let uptime = |text: &str| -> Result<u64> {
            let secs = text.split(['.', ' ']).next().unwrap_or_default();
            secs.parse().with_context(|| format!("uptime {text:?}"))
        };
        let host = uptime(&fs::read_to_string("/proc/uptime")?)?;
        // Read by the container, in its time namespace: the host reads its own clock anywhere.
        let file = format!("/proc/{init}/root/uptime");
        let deadline = Instant::now() + SETTLE;
        while fs::metadata(&file).map_or(true, |m| m.len() == 0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let inside = uptime(&fs::read_to_string(&file)?)?;
        let exec = uptime(&exec_ok(
            &env,
            &id,
            "uptime",
            &[],
            &["cat", "/proc/uptime"],
        )?)?;
        ensure!(
            inside >= host + AHEAD && exec >= host + AHEAD,
            "{flavor}: uptime host {host} s, container {inside} s, exec {exec} s: both must be \
             {AHEAD} s ahead"
        );
        let ns = |pid: i32| fs::read_link(format!("/proc/{pid}/ns/time"));
        ensure!(
            ns(init)? != fs::read_link("/proc/self/ns/time")?,
            "{flavor}: the container is in the host's time namespace"
        );
        Ok(())
    })();
    env.kill_and_remove(&id)?;
    result
}

#[test]
fn containerd2_time_offsets_apply_to_the_container_and_its_execs() -> Result<()> {
    time_offsets_apply_to_the_container_and_its_execs(Flavor::Containerd2)
}

/// An exec whose additional gid the container's user namespace does not map is refused at the
/// Exec call, naming the field (setgroups failed at Start with EINVAL, naming nothing).
#[test]
fn containerd2_exec_with_unmapped_additional_gids_is_refused_by_name() -> Result<()> {
    let env = Env::start_in(Flavor::Containerd2, NS)?;
    let id = unique_id("exec-gids");
    env.run_detached(&userns_opts(Flavor::Containerd2), &id, &["sleep", "1000"])?;
    let result = (|| -> Result<()> {
        let client = env.shim_client(&id)?;
        let spec = json!({
            "args": ["id"], "cwd": "/",
            "user": {"uid": 0, "gid": 0, "additionalGids": [70000]},
        });
        let request = containerd_shim_protos::api::ExecProcessRequest {
            id: id.clone(),
            exec_id: "gids".into(),
            spec: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(&spec)?,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let err = client
            .exec(env.rpc_context(), &request)
            .expect_err("an unmapped additional gid must be refused");
        let text = format!("{err:?}");
        ensure!(
            text.contains("user.additionalGids 70000")
                && (text.contains("InvalidArgument") || text.contains("INVALID_ARGUMENT")),
            "the refusal must name user.additionalGids 70000 with InvalidArgument: {text}"
        );
        Ok(())
    })();
    env.kill_and_remove(&id)?;
    result
}
