//! A real kubelet drives the shim: a standalone kubelet v1.35 (static pods, no API server;
//! hack/private-kubelet.sh) over a private containerd 2.x whose CRI default runtime is the
//! `usernsrs` handler, and the same manifests on a second node whose default runtime is
//! containerd-shim-runc-v2 with runc v1.5.3, the reference: what the kubelet reports (phase,
//! conditions, container states and restarts) and what the pods see (the kubelet's user
//! namespace range, owners through idmapped rootfs and volumes) must be the same.
//!
//! The containerd line is `$CONTAINERD2_VERSION` (v2.4.2 unless set); hack/containerd-lines.sh
//! runs the tests of integration/line-tests.txt on the older lines. Needs root, the kubelet and
//! runc from hack/install-peers.sh; `make integration` runs it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{chown, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use usernsrs_integration::{
    mounts_under, pids_of_cmd, proc_status_uid, process_alive, KubeletNode, NodeRuntime,
    BUSYBOX_IMAGE,
};

/// How long a pod may take to reach a state the test waits for (the kubelet syncs a static pod
/// within seconds; a restart after a failed probe takes a few more).
const SETTLE: Duration = Duration::from_secs(90);
/// How long the kubelet may take to stop and remove a deleted static pod: it removes the
/// sandbox at its container garbage collection, once a minute.
const REMOVAL: Duration = Duration::from_secs(180);
/// The ids the kubelet gives each user-namespaced pod (KubeletConfiguration
/// `userNamespaces.idsPerPod`, default 65536), and where its ranges start.
const IDS_PER_POD: u64 = 65536;

/// Both nodes, started one after the other: the shim under test, then the reference.
fn both_nodes() -> Result<[KubeletNode; 2]> {
    let usernsrs = KubeletNode::start(NodeRuntime::Usernsrs)?;
    let runc = KubeletNode::start(NodeRuntime::Runc)?;
    Ok([usernsrs, runc])
}

fn container(name: &str, script: &str) -> Value {
    json!({"name": name, "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
           "command": ["/bin/sh", "-c", script]})
}

/// A readiness probe that passes once the container touched /tmp/ready.
fn ready_probe() -> Value {
    json!({"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1})
}

/// A pod manifest; `host_users: None` leaves `hostUsers` out (the host's user namespace).
/// A grace period of 1 s: `sh` as pid 1 ignores SIGTERM, so every stop waits for it.
fn pod(name: &str, host_users: Option<bool>, restart: &str, containers: Vec<Value>) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 1,
                 "containers": containers}});
    if let Some(host_users) = host_users {
        pod["spec"]["hostUsers"] = json!(host_users);
    }
    pod
}

fn is_running_and_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && condition(pod, "Ready") == "True"
}

fn condition(pod: &Value, kind: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("absent")
        .to_string()
}

fn container_status<'a>(pod: &'a Value, name: &str) -> Result<&'a Value> {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .ok_or_else(|| anyhow!("no status of container {name} in {}", pod["status"]))
}

/// The CRI id of container `name` (`containerd://<id>` in the pod status).
fn container_id(pod: &Value, name: &str) -> Result<String> {
    let status = container_status(pod, name)?;
    status["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("containerd://"))
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("container {name} has no containerd id: {status}"))
}

fn pod_uid(pod: &Value) -> Result<String> {
    pod["metadata"]["uid"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("pod without a uid: {}", pod["metadata"]))
}

/// What the kubelet reports, without what differs between any two runs (times, ids, IPs):
/// phase, conditions, and per container ready, started, restarts, state and last state.
fn observed_status(pod: &Value) -> Value {
    let status = &pod["status"];
    let conditions: BTreeMap<String, Value> = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["type"].as_str()?.to_owned(), c["status"].clone())))
        .collect();
    let state = |s: &Value| -> Value {
        match s.as_object().and_then(|o| o.iter().next()) {
            Some((kind, detail)) => json!({"kind": kind, "reason": detail["reason"],
                                           "exitCode": detail["exitCode"]}),
            None => Value::Null,
        }
    };
    let mut containers: Vec<Value> = status["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({"name": c["name"], "ready": c["ready"], "started": c["started"],
                   "restartCount": c["restartCount"], "state": state(&c["state"]),
                   "lastState": state(&c["lastState"])})
        })
        .collect();
    containers.sort_by_key(|c| c["name"].to_string());
    json!({"phase": status["phase"], "conditions": conditions, "containers": containers})
}

/// The kubelet's record of the pod's user namespace (`<root>/pods/<uid>/userns`): the first
/// host id and the length of its single uid range, which must equal its gid range.
fn kubelet_userns_range(node: &KubeletNode, uid: &str) -> Result<(u64, u64)> {
    let path = node.kubelet_root().join("pods").join(uid).join("userns");
    let record: Value = serde_json::from_slice(
        &fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )?;
    let range = |key: &str| -> Result<(u64, u64)> {
        match record[key].as_array().map(Vec::as_slice) {
            Some([m]) if m["containerId"] == 0 => Ok((
                m["hostId"].as_u64().context("hostId")?,
                m["length"].as_u64().context("length")?,
            )),
            _ => bail!(
                "{}: expected one {key} range from 0: {record}",
                path.display()
            ),
        }
    };
    let uids = range("uidMappings")?;
    ensure!(
        uids == range("gidMappings")?,
        "{}: uid and gid ranges differ: {record}",
        path.display()
    );
    Ok(uids)
}

/// The lines of a container's log file (CRI format `<time> <stream> <P|F> <text>`), as
/// `<stream> <text>`, stderr's after stdout's (the two streams are copied apart, so their
/// interleaving is not the container's); waits (bounded) until a line ends with `last`.
fn log_lines(node: &KubeletNode, container_id: &str, last: &str) -> Result<Vec<String>> {
    let inspect = node.inspect(container_id)?;
    let path = PathBuf::from(
        inspect["status"]["logPath"]
            .as_str()
            .ok_or_else(|| anyhow!("crictl inspect {container_id}: no status.logPath"))?,
    );
    let logs_dir = node.dir().join("kubelet/pod-logs");
    ensure!(
        path.starts_with(&logs_dir),
        "the container log {} is not under the kubelet's podLogsDir {}",
        path.display(),
        logs_dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let mut fields = l.splitn(4, ' ');
                let (_time, stream, _tag) = (fields.next()?, fields.next()?, fields.next()?);
                let text = fields.next().unwrap_or("");
                Some(format!(
                    "{stream} {}",
                    text.split_whitespace().collect::<Vec<_>>().join(" ")
                ))
            })
            .collect();
        if lines.iter().any(|l| l.ends_with(last)) {
            let (mut out, err): (Vec<String>, Vec<String>) =
                lines.into_iter().partition(|l| l.starts_with("stdout "));
            out.extend(err);
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!("{} has no line ending in {last:?}:\n{text}", path.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The container's process as the host sees it (`crictl inspect` info.pid).
fn container_pid(node: &KubeletNode, container_id: &str) -> Result<i32> {
    let inspect = node.inspect(container_id)?;
    inspect["info"]["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| anyhow!("crictl inspect {container_id}: no info.pid"))
}

/// The container's root mount line in its mountinfo (the last mount on `/`).
fn root_mount_line(pid: i32) -> Result<String> {
    let path = format!("/proc/{pid}/mountinfo");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .rfind(|l| l.split(' ').nth(4) == Some("/"))
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{path} has no mount on /"))
}

/// A hostPath volume's source, with a file owned by 0 and one owned by 1000 on disk.
fn host_path_source(node: &KubeletNode) -> Result<PathBuf> {
    let dir = node.dir().join("hostpath");
    fs::create_dir(&dir)?;
    fs::write(dir.join("root-file"), "r")?;
    fs::write(dir.join("app-file"), "a")?;
    chown(dir.join("app-file"), Some(1000), Some(1000))?;
    Ok(dir)
}

fn owner(path: &Path) -> Result<String> {
    let meta = fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    Ok(format!("{}:{}", meta.uid(), meta.gid()))
}

/// The script of the user-namespaced pod's root container: one report line per fact, then it
/// writes into both volumes and becomes ready.
const REPORT_SCRIPT: &str = "\
echo \"uid_map $(cat /proc/self/uid_map)\"; \
stat -c 'image %n %u:%g' /data/root-file /data/app-file; \
stat -c 'emptydir %u:%g %a' /scratch; \
stat -c 'hostpath %n %u:%g' /host/root-file /host/app-file; \
echo \"downward $(cat /podinfo/name) $(grep ' /podinfo ' /proc/self/mountinfo | sed 's/.* - \\([^ ]*\\) .*/\\1/')\"; \
echo main > /scratch/by-main && echo main > /host/by-main && echo wrote; \
touch /tmp/ready; echo ready; exec sleep 1000";

/// The non-root container: its ids on stderr, a write into the emptyDir.
const NONROOT_SCRIPT: &str = "\
echo \"to-stderr-as $(id -u):$(id -g)\" >&2; \
echo nonroot > /scratch/by-nonroot && echo wrote; \
touch /tmp/ready; echo ready; exec sleep 1000";

fn userns_pod(host_path: &Path) -> Value {
    let mut main = container("main", REPORT_SCRIPT);
    main["readinessProbe"] = ready_probe();
    main["volumeMounts"] = json!([{"name": "scratch", "mountPath": "/scratch"},
                                  {"name": "host", "mountPath": "/host"},
                                  {"name": "podinfo", "mountPath": "/podinfo"}]);
    let mut nonroot = container("nonroot", NONROOT_SCRIPT);
    nonroot["readinessProbe"] = ready_probe();
    nonroot["securityContext"] = json!({"runAsUser": 1000, "runAsGroup": 1000});
    nonroot["volumeMounts"] = json!([{"name": "scratch", "mountPath": "/scratch"}]);
    let mut pod = pod("userns", Some(false), "Always", vec![main, nonroot]);
    pod["spec"]["volumes"] = json!([
        {"name": "scratch", "emptyDir": {}},
        {"name": "host", "hostPath": {"path": host_path, "type": "Directory"}},
        {"name": "podinfo", "downwardAPI": {"items": [
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}]);
    pod
}

/// What one node showed of the user-namespaced pod, with the kubelet's range replaced by `R`
/// so that the two nodes' observations compare.
fn observe_userns_pod(node: &KubeletNode) -> Result<Value> {
    let runtime = node.runtime();
    let pod = node.wait_pod("userns", "running and ready", SETTLE, is_running_and_ready)?;
    let uid = pod_uid(&pod)?;
    let (first, length) = kubelet_userns_range(node, &uid)?;
    ensure!(
        length == IDS_PER_POD && first >= IDS_PER_POD && first % IDS_PER_POD == 0,
        "on {runtime}: the kubelet gave the pod {first}+{length}, not a {IDS_PER_POD}-aligned range above {IDS_PER_POD}"
    );
    let main = container_id(&pod, "main")?;
    let nonroot = container_id(&pod, "nonroot")?;
    let main_log = log_lines(node, &main, "stdout ready")?;
    let nonroot_log = log_lines(node, &nonroot, "stdout ready")?;

    // The container's processes as the host sees them: the kubelet's range.
    let main_pid = container_pid(node, &main)?;
    let nonroot_pid = container_pid(node, &nonroot)?;
    let host_ids = [proc_status_uid(main_pid)?, proc_status_uid(nonroot_pid)?];
    let expected_host_ids = [
        (u32::try_from(first)?, u32::try_from(first)?),
        (u32::try_from(first + 1000)?, u32::try_from(first + 1000)?),
    ];
    ensure!(
        host_ids == expected_host_ids,
        "on {runtime}: host ids of main and nonroot are {host_ids:?}, want {expected_host_ids:?}"
    );

    // The rootfs: files owned by 0 on disk (the image's layers, never chowned) show from the
    // host through the container's root as the range's first id, inside as 0; the root mount
    // is idmapped or an overlay of idmapped layers.
    let through_root = owner(&PathBuf::from(format!(
        "/proc/{main_pid}/root/data/root-file"
    )))?;
    ensure!(
        through_root == format!("{first}:{first}"),
        "on {runtime}: /data/root-file through the container's root is {through_root}, want {first}:{first}"
    );
    let layers = node
        .dir()
        .join("root/io.containerd.snapshotter.v1.overlayfs/snapshots");
    let on_disk: Vec<String> = fs::read_dir(&layers)
        .with_context(|| format!("cannot list {}", layers.display()))?
        .filter_map(|e| Some(e.ok()?.path().join("fs/data/root-file")))
        .filter(|p| p.exists())
        .map(|p| owner(&p))
        .collect::<Result<_>>()?;
    ensure!(
        on_disk == ["0:0"],
        "on {runtime}: the image layer's /data/root-file on disk: {on_disk:?}, want one, owned 0:0"
    );
    let root_mount = root_mount_line(main_pid)?;
    ensure!(
        root_mount.contains("idmapped"),
        "on {runtime}: the root mount shows no idmapped mount or layer: {root_mount}"
    );

    // Volumes on disk: the writes of container root and of uid 1000 land as 0 and 1000.
    let empty_dir = node
        .kubelet_root()
        .join("pods")
        .join(&uid)
        .join("volumes/kubernetes.io~empty-dir/scratch");
    let host_dir = node.dir().join("hostpath");
    let disk = json!({
        "emptydir/by-main": owner(&empty_dir.join("by-main"))?,
        "emptydir/by-nonroot": owner(&empty_dir.join("by-nonroot"))?,
        "hostpath/by-main": owner(&host_dir.join("by-main"))?,
        "hostpath/app-file": owner(&host_dir.join("app-file"))?,
    });
    let range = format!("0 {first} {length}");
    let normalize = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .map(|l| l.replace(&range, "0 R 65536"))
            .collect()
    };
    Ok(json!({
        "status": observed_status(&pod),
        "main": normalize(main_log),
        "nonroot": normalize(nonroot_log),
        "disk": disk,
    }))
}

/// A `hostUsers: false` static pod: the kubelet's range in the container's uid_map and as the
/// host uid of its processes, an idmapped rootfs with the image's owners inside, emptyDir and
/// hostPath volumes with the disk owners inside and writes landing as the container's ids, a
/// downward API volume on tmpfs, a non-root user's stderr in the kubelet's pod log; and all of
/// it, with the kubelet's status, the same as on runc v1.5.3.
#[test]
fn hostusers_false_pod_is_user_namespaced_like_runc() -> Result<()> {
    let nodes = both_nodes()?;
    for node in &nodes {
        let source = host_path_source(node)?;
        node.put_manifest("userns", &userns_pod(&source))?;
    }
    let [usernsrs, runc] = nodes.each_ref().map(observe_userns_pod);
    let (usernsrs, runc) = (usernsrs?, runc?);
    let expected = json!({
        "status": {"phase": "Running",
            "conditions": {"ContainersReady": "True", "Initialized": "True",
                           "PodReadyToStartContainers": "True", "PodScheduled": "True",
                           "Ready": "True"},
            "containers": [
                {"name": "main", "ready": true, "started": true, "restartCount": 0,
                 "state": {"kind": "running", "reason": null, "exitCode": null},
                 "lastState": null},
                {"name": "nonroot", "ready": true, "started": true, "restartCount": 0,
                 "state": {"kind": "running", "reason": null, "exitCode": null},
                 "lastState": null}]},
        "main": ["stdout uid_map 0 R 65536",
                 "stdout image /data/root-file 0:0", "stdout image /data/app-file 1000:1000",
                 "stdout emptydir 0:0 777",
                 "stdout hostpath /host/root-file 0:0", "stdout hostpath /host/app-file 1000:1000",
                 "stdout downward userns-usernsrs-node tmpfs",
                 "stdout wrote", "stdout ready"],
        "nonroot": ["stdout wrote", "stdout ready", "stderr to-stderr-as 1000:1000"],
        "disk": {"emptydir/by-main": "0:0", "emptydir/by-nonroot": "1000:1000",
                 "hostpath/by-main": "0:0", "hostpath/app-file": "1000:1000"},
    });
    assert_eq!(
        runc, expected,
        "runc v1.5.3 (the reference) under the kubelet:\n{runc:#}"
    );
    assert_eq!(
        usernsrs, runc,
        "usernsrs differs from runc v1.5.3 under the kubelet:\nusernsrs: {usernsrs:#}\nrunc: {runc:#}"
    );
    Ok(())
}

/// The pods of the probe test: a failing liveness probe under each restart policy, and
/// containers that exit on their own.
fn probe_pods() -> Vec<(&'static str, Value)> {
    let failing_probe = |command: &[&str]| json!({"exec": {"command": command}, "periodSeconds": 1, "failureThreshold": 1});
    // Alive for a few seconds, then its probe fails: every attempt starts afresh.
    let mut flapping = container(
        "probed",
        "touch /tmp/alive; sleep 3; rm /tmp/alive; exec sleep 1000",
    );
    flapping["livenessProbe"] = failing_probe(&["cat", "/tmp/alive"]);
    let mut never_alive = container("probed", "exec sleep 1000");
    never_alive["livenessProbe"] = failing_probe(&["cat", "/nonexistent"]);
    vec![
        (
            "liveness",
            pod("liveness", Some(false), "Always", vec![flapping]),
        ),
        (
            "never-probed",
            pod("never-probed", Some(false), "Never", vec![never_alive]),
        ),
        (
            "never-exits",
            pod(
                "never-exits",
                Some(false),
                "Never",
                vec![container("exits", "exit 3")],
            ),
        ),
        (
            "onfailure-succeeds",
            pod(
                "onfailure-succeeds",
                Some(false),
                "OnFailure",
                vec![container("succeeds", "exit 0")],
            ),
        ),
    ]
}

fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Failed" | "Succeeded")
    )
}

/// How many containers CRI has for the pod `name` (all attempts, running or exited).
fn attempts(node: &KubeletNode, name: &str) -> Result<usize> {
    let full = format!("{name}-{}", usernsrs_integration::KUBELET_NODE_NAME);
    let sandbox = node.crictl(&["pods", "-q", "--name", &full])?;
    let sandbox = sandbox.lines().next().context("no sandbox")?.to_owned();
    Ok(node
        .crictl(&["ps", "-a", "-q", "--pod", &sandbox])?
        .lines()
        .count())
}

/// What one node showed of the probe pods.
fn observe_probe_pods(node: &KubeletNode) -> Result<Value> {
    let liveness = node.wait_pod("liveness", "restarted by its liveness probe", SETTLE, |p| {
        container_status(p, "probed").is_ok_and(|c| {
            c["restartCount"].as_u64().is_some_and(|n| n >= 1) && c["state"]["running"].is_object()
        })
    })?;
    let status = container_status(&liveness, "probed")?;
    let last = &status["lastState"]["terminated"];
    let mut seen = json!({"liveness": {
        "restarted": true,
        "lastState": {"exitCode": last["exitCode"], "reason": last["reason"]}}});
    for name in ["never-probed", "never-exits", "onfailure-succeeds"] {
        let pod = node.wait_pod(name, "finished", SETTLE, is_terminal)?;
        // Terminal: the kubelet never starts it again, so CRI has its one attempt.
        seen[name] = json!({"status": observed_status(&pod), "attempts": attempts(node, name)?});
    }
    Ok(seen)
}

/// An exec liveness probe that fails makes the kubelet kill and restart the container
/// (restartCount grows); with `restartPolicy: Never` the killed container stays dead and the
/// pod fails; an exit 3 under Never fails the pod, an exit 0 under OnFailure ends it: the same
/// on usernsrs as on runc v1.5.3.
#[test]
fn liveness_probe_restarts_and_restart_policy_is_honoured_like_runc() -> Result<()> {
    let nodes = both_nodes()?;
    for node in &nodes {
        for (name, pod) in probe_pods() {
            node.put_manifest(name, &pod)?;
        }
    }
    let [usernsrs, runc] = nodes.each_ref().map(observe_probe_pods);
    let (usernsrs, runc) = (usernsrs?, runc?);
    let terminated =
        |code: u64, reason: &str| json!({"kind": "terminated", "reason": reason, "exitCode": code});
    let finished = |phase: &str, container: &str, code: u64, reason: &str| {
        json!({"attempts": 1, "status": {"phase": phase,
            "conditions": {"ContainersReady": "False", "Initialized": "True",
                           "PodReadyToStartContainers": "False", "PodScheduled": "True",
                           "Ready": "False"},
            "containers": [{"name": container, "ready": false, "started": false,
                            "restartCount": 0, "state": terminated(code, reason),
                            "lastState": null}]}})
    };
    let expected = json!({
        "liveness": {"restarted": true, "lastState": {"exitCode": 137, "reason": "Error"}},
        "never-probed": finished("Failed", "probed", 137, "Error"),
        "never-exits": finished("Failed", "exits", 3, "Error"),
        "onfailure-succeeds": finished("Succeeded", "succeeds", 0, "Completed"),
    });
    assert_eq!(runc, expected, "runc v1.5.3 (the reference):\n{runc:#}");
    assert_eq!(
        usernsrs, runc,
        "usernsrs differs from runc v1.5.3:\nusernsrs: {usernsrs:#}\nrunc: {runc:#}"
    );
    Ok(())
}

/// The kubelet stops and starts again while a user-namespaced pod runs: the pod keeps running
/// (same container, same process) and the new kubelet adopts it: Ready again through its exec
/// readiness probe, no restart, the same user namespace range on record.
#[test]
fn kubelet_restart_adopts_running_pods() -> Result<()> {
    let node = KubeletNode::start(NodeRuntime::Usernsrs)?;
    let mut main = container("main", "touch /tmp/ready; exec sleep 1000");
    main["readinessProbe"] = ready_probe();
    main["volumeMounts"] = json!([{"name": "scratch", "mountPath": "/scratch"}]);
    let mut manifest = pod("adopted", Some(false), "Always", vec![main]);
    manifest["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
    node.put_manifest("adopted", &manifest)?;
    let before = node.wait_pod("adopted", "running and ready", SETTLE, is_running_and_ready)?;
    let uid = pod_uid(&before)?;
    let id = container_id(&before, "main")?;
    let pid = container_pid(&node, &id)?;
    let range = kubelet_userns_range(&node, &uid)?;
    let old_kubelet = node.kubelet_pid()?;

    node.stop_kubelet()?;
    ensure!(
        !process_alive(old_kubelet),
        "kubelet {old_kubelet} still runs after its stop"
    );
    ensure!(
        process_alive(pid),
        "container process {pid} died with the kubelet"
    );

    node.start_kubelet()?;
    ensure!(node.kubelet_pid()? != old_kubelet, "no new kubelet");
    let after = node.wait_pod("adopted", "running and ready again", SETTLE, |p| {
        is_running_and_ready(p) && container_id(p, "main").is_ok_and(|c| c == id)
    })?;
    assert_eq!(pod_uid(&after)?, uid, "the static pod changed its uid");
    assert_eq!(
        container_status(&after, "main")?["restartCount"],
        json!(0),
        "the adopted container was restarted"
    );
    assert_eq!(
        container_pid(&node, &id)?,
        pid,
        "the adopted container has another process"
    );
    ensure!(process_alive(pid), "container process {pid} is gone");
    assert_eq!(
        attempts(&node, "adopted")?,
        1,
        "CRI has another attempt of the container"
    );
    assert_eq!(
        kubelet_userns_range(&node, &uid)?,
        range,
        "the kubelet recorded another range"
    );
    let uid_map = node.crictl(&["exec", &id, "cat", "/proc/self/uid_map"])?;
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0".to_owned(), range.0.to_string(), range.1.to_string()],
        "exec after the kubelet's restart"
    );
    Ok(())
}

/// Every cgroup directory named by `id` (under containerd's `k8s.io` parent) in any hierarchy.
fn cgroups_of(id: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/sys/fs/cgroup").context("cannot list /sys/fs/cgroup")? {
        let hierarchy = entry?.path();
        for candidate in [hierarchy.join("k8s.io").join(id), hierarchy.join(id)] {
            if candidate.is_dir() {
                found.push(candidate);
            }
        }
    }
    Ok(found)
}

/// Deleting the manifests: the kubelet stops and removes the pods (a user-namespaced one with
/// emptyDir and downward API volumes, and one in the host's user namespace); no shim process,
/// mount (the kubelet's volume tmpfs, the rootfs, the sandbox's) or cgroup of theirs is left.
#[test]
fn deleting_the_manifests_removes_the_pods_and_leaves_nothing() -> Result<()> {
    let node = KubeletNode::start(NodeRuntime::Usernsrs)?;
    let mut userns = container("main", "exec sleep 1000");
    userns["volumeMounts"] = json!([{"name": "scratch", "mountPath": "/scratch"},
                                    {"name": "podinfo", "mountPath": "/podinfo"}]);
    let mut with_volumes = pod("doomed-userns", Some(false), "Always", vec![userns]);
    with_volumes["spec"]["volumes"] = json!([
        {"name": "scratch", "emptyDir": {}},
        {"name": "podinfo", "downwardAPI": {"items": [
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}]);
    node.put_manifest("doomed-userns", &with_volumes)?;
    node.put_manifest(
        "doomed-host",
        &pod(
            "doomed-host",
            None,
            "Always",
            vec![container("main", "exec sleep 1000")],
        ),
    )?;
    let mut ids = Vec::new();
    let mut uids = Vec::new();
    for name in ["doomed-userns", "doomed-host"] {
        let pod = node.wait_pod(name, "running and ready", SETTLE, is_running_and_ready)?;
        uids.push(pod_uid(&pod)?);
        ids.push(container_id(&pod, "main")?);
    }
    ids.extend(node.crictl(&["pods", "-q"])?.lines().map(str::to_owned));
    let dir = node.dir().to_string_lossy().into_owned();
    let shims = |node_dir: &str| -> Result<Vec<i32>> {
        Ok(pids_of_cmd("containerd-shim-usernsrs-v2")?
            .into_iter()
            .filter(|p| {
                fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(node_dir))
            })
            .collect())
    };
    ensure!(!shims(&dir)?.is_empty(), "no shim serves the pods");
    let pods_dir = node.kubelet_root().join("pods");
    ensure!(
        !mounts_under(&pods_dir)?.is_empty(),
        "the kubelet mounted no volume under {}",
        pods_dir.display()
    );
    for id in &ids {
        ensure!(
            !cgroups_of(id)?.is_empty(),
            "no cgroup named {id} while it runs"
        );
    }

    for name in ["doomed-userns", "doomed-host"] {
        node.remove_manifest(name)?;
    }
    let deadline = Instant::now() + REMOVAL;
    loop {
        let sandboxes = node.crictl(&["pods", "-q"])?;
        let containers = node.crictl(&["ps", "-a", "-q"])?;
        let pod_dirs: Vec<&String> = uids.iter().filter(|u| pods_dir.join(u).exists()).collect();
        if sandboxes.trim().is_empty() && containers.trim().is_empty() && pod_dirs.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} s after the manifests went: sandboxes {sandboxes:?}, containers {containers:?}, pod dirs {pod_dirs:?}\nkubelet log tail:\n{}",
                REMOVAL.as_secs(),
                node.kubelet_log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let pods = node.pods()?;
    ensure!(
        pods["items"].as_array().is_none_or(Vec::is_empty),
        "the kubelet still has pods: {pods}"
    );
    assert_eq!(shims(&dir)?, Vec::<i32>::new(), "shim processes left");
    let mut left = mounts_under(&node.dir().join("state"))?;
    left.extend(mounts_under(&node.dir().join("root"))?);
    left.extend(mounts_under(&pods_dir)?);
    assert_eq!(left, Vec::<PathBuf>::new(), "mounts left");
    for id in &ids {
        assert_eq!(
            cgroups_of(id)?,
            Vec::<PathBuf>::new(),
            "cgroups of {id} left"
        );
    }
    Ok(())
}

/// What one node showed of the pod in the host's user namespace.
fn observe_host_users_pod(node: &KubeletNode) -> Result<Value> {
    let pod = node.wait_pod(
        "hostusers",
        "running and ready",
        SETTLE,
        is_running_and_ready,
    )?;
    let uid = pod_uid(&pod)?;
    let id = container_id(&pod, "main")?;
    let pid = container_pid(node, &id)?;
    let record = node.kubelet_root().join("pods").join(&uid).join("userns");
    Ok(json!({
        "status": observed_status(&pod),
        "log": log_lines(node, &id, "stdout ready")?,
        "host ids": format!("{:?}", proc_status_uid(pid)?),
        "kubelet userns record": record.exists(),
    }))
}

/// A pod without `hostUsers` on the same handler runs in the host's user namespace (identity
/// map, host uid 0, no range allocated by the kubelet), Running and Ready as on runc v1.5.3.
#[test]
fn pod_without_host_users_on_the_same_handler() -> Result<()> {
    let nodes = both_nodes()?;
    let manifest = pod(
        "hostusers",
        None,
        "Always",
        vec![container(
            "main",
            "echo \"uid_map $(cat /proc/self/uid_map)\"; echo ready; exec sleep 1000",
        )],
    );
    for node in &nodes {
        node.put_manifest("hostusers", &manifest)?;
    }
    let [usernsrs, runc] = nodes.each_ref().map(observe_host_users_pod);
    let (usernsrs, runc) = (usernsrs?, runc?);
    let expected = json!({
        "status": {"phase": "Running",
            "conditions": {"ContainersReady": "True", "Initialized": "True",
                           "PodReadyToStartContainers": "True", "PodScheduled": "True",
                           "Ready": "True"},
            "containers": [{"name": "main", "ready": true, "started": true, "restartCount": 0,
                            "state": {"kind": "running", "reason": null, "exitCode": null},
                            "lastState": null}]},
        "log": ["stdout uid_map 0 0 4294967295", "stdout ready"],
        "host ids": "(0, 0)",
        "kubelet userns record": false,
    });
    assert_eq!(runc, expected, "runc v1.5.3 (the reference):\n{runc:#}");
    assert_eq!(
        usernsrs, runc,
        "usernsrs differs from runc v1.5.3:\nusernsrs: {usernsrs:#}\nrunc: {runc:#}"
    );
    Ok(())
}

/// The six sysctls the kubelet sets (without `protectKernelDefaults`) land in the copies bound
/// over /proc/sys in its mount namespace; the host's values hold, and /var/log/containers is
/// the kubelet's own.
#[test]
fn kubelet_sysctl_writes_stay_in_its_mount_namespace() -> Result<()> {
    const SYSCTLS: [(&str, &str); 6] = [
        ("vm/overcommit_memory", "1"),
        ("vm/panic_on_oom", "0"),
        ("kernel/panic", "10"),
        ("kernel/panic_on_oops", "1"),
        ("kernel/keys/root_maxkeys", "1000000"),
        ("kernel/keys/root_maxbytes", "25000000"),
    ];
    let read = |path: &str| -> Result<String> {
        Ok(fs::read_to_string(path)
            .with_context(|| format!("cannot read {path}"))?
            .trim()
            .to_owned())
    };
    let host_before: Vec<String> = SYSCTLS
        .iter()
        .map(|(s, _)| read(&format!("/proc/sys/{s}")))
        .collect::<Result<_>>()?;
    let var_log_containers = Path::new("/var/log/containers").exists();
    let node = KubeletNode::start(NodeRuntime::Usernsrs)?;
    // The kubelet sets them as its container manager starts, around when it turns healthy.
    let wanted: Vec<&str> = SYSCTLS.iter().map(|(_, v)| *v).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let copies = loop {
        let copies: Vec<String> = SYSCTLS
            .iter()
            .map(|(s, _)| {
                read(&format!(
                    "{}/kubelet/sysctl/{}",
                    node.dir().display(),
                    s.replace('/', ".")
                ))
            })
            .collect::<Result<_>>()?;
        if copies == wanted || Instant::now() > deadline {
            break copies;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(copies, wanted, "the kubelet's values in its copies");
    let host_after: Vec<String> = SYSCTLS
        .iter()
        .map(|(s, _)| read(&format!("/proc/sys/{s}")))
        .collect::<Result<_>>()?;
    assert_eq!(host_after, host_before, "the host's sysctls changed");
    assert_eq!(
        Path::new("/var/log/containers").exists(),
        var_log_containers,
        "the kubelet created or removed the host's /var/log/containers"
    );
    ensure!(
        node.dir().join("kubelet/var-log/containers").is_dir(),
        "the kubelet made no /var/log/containers of its own"
    );
    Ok(())
}

/// The reference is what the comparisons claim: runc v1.5.3 built with seccomp, reporting
/// idmapped mounts and user namespaces.
#[test]
fn reference_runc_is_v1_5_3_with_seccomp_and_idmapped_mounts() -> Result<()> {
    let cache = std::env::var_os("USERNSRS_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/usernsrs"), PathBuf::from);
    let runc = cache.join("runc-v1.5.3/bin/runc");
    let run = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(&runc)
            .args(args)
            .output()
            .with_context(|| {
                format!(
                    "cannot run {} (hack/install-peers.sh builds it)",
                    runc.display()
                )
            })?;
        ensure!(
            out.status.success(),
            "{} {args:?} failed: {}",
            runc.display(),
            out.status
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let version = run(&["--version"])?;
    ensure!(
        version.lines().next() == Some("runc version 1.5.3"),
        "{}:\n{version}",
        runc.display()
    );
    let features: Value = serde_json::from_str(&run(&["features"])?)?;
    let linux = &features["linux"];
    assert_eq!(
        linux["seccomp"]["enabled"],
        json!(true),
        "seccomp: {features:#}"
    );
    assert_eq!(
        linux["mountExtensions"]["idmap"]["enabled"],
        json!(true),
        "idmapped mounts: {features:#}"
    );
    ensure!(
        linux["namespaces"]
            .as_array()
            .is_some_and(|ns| ns.contains(&json!("user"))),
        "user namespaces: {features:#}"
    );
    Ok(())
}
