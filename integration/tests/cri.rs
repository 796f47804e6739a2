//! Kubernetes through containerd 2.x's CRI: pods with user namespace mode POD (`hostUsers:
//! false`) on the runtime handler `usernsrs`, driven with crictl as kubelet drives containerd.
//! The private containerd (hack/private-cri.sh) runs in a network namespace of its own; crictl
//! runs inside it.
//!
//! Needs root; `make integration` runs it.

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use usernsrs_integration::{mounts_under, require_root, shim_binary, workspace_root};

const HANDLER: &str = "usernsrs";
const IMAGE: &str = "docker.io/library/busybox:usernsrs";

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A private containerd with CRI, stopped (pods, mounts, network namespace) on drop.
struct Cri {
    dir: tempfile::TempDir,
}

impl Cri {
    fn start() -> Result<Self> {
        Self::start_flavor("2")
    }

    /// `flavor`: "2" (containerd v2.4.2) or "1.7" (Debian trixie's 1.7.24).
    fn start_flavor(flavor: &str) -> Result<Self> {
        Self::start_with_env(flavor, &[])
    }

    /// As start_flavor, with hack/private-cri.sh's environment knobs (default runtime, NRI).
    fn start_with_env(flavor: &str, env: &[(&str, &str)]) -> Result<Self> {
        require_root()?;
        let shim = shim_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("usernsrs-cri-")
            .tempdir_in("/tmp")?;
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )?;
        let out = Command::new("bash")
            .arg(workspace_root().join("hack/private-cri.sh"))
            .arg("start")
            .arg(dir.path())
            .arg(flavor)
            .env("USERNSRS_SHIM", &shim)
            .envs(env.iter().copied())
            .output()?;
        let cri = Cri { dir };
        ensure!(
            out.status.success(),
            "hack/private-cri.sh start failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(cri)
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn crictl(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new("bash")
            .arg(workspace_root().join("hack/private-cri.sh"))
            .arg("crictl")
            .arg(self.dir())
            .args(args)
            .output()?)
    }

    fn crictl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.crictl(args)?;
        ensure!(
            out.status.success(),
            "crictl {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn write_json(&self, name: &str, value: &Value) -> Result<PathBuf> {
        let path = self.dir().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
        Ok(path)
    }

    /// runp, with `userns` as the pod's user namespace options (None: the host's).
    fn run_pod(&self, name: &str, userns: Option<&Value>) -> Result<(String, PathBuf)> {
        let config = self.pod_config(name, userns);
        let path = self.write_json(&format!("pod-{name}.json"), &config)?;
        let id = self.crictl_ok(&["runp", "--runtime", HANDLER, &path.to_string_lossy()])?;
        Ok((id, path))
    }

    fn pod_config(&self, name: &str, userns: Option<&Value>) -> Value {
        let mut config = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"), "attempt": 0},
            "log_directory": self.dir().join("pod-logs").join(name).to_string_lossy(),
            "linux": {"security_context": {"namespace_options": {}}}
        });
        if let Some(u) = userns {
            config["linux"]["security_context"]["namespace_options"]["userns_options"] = u.clone();
        }
        config
    }

    /// create + start of a container running `script` in the pod; returns its id.
    fn run_container(
        &self,
        pod: &str,
        pod_config: &Path,
        name: &str,
        script: &str,
        extra: Value,
    ) -> Result<String> {
        let pod_json: Value = serde_json::from_slice(&std::fs::read(pod_config)?)?;
        let mut config = json!({
            "metadata": {"name": name},
            "image": {"image": IMAGE},
            "command": ["/bin/sh", "-c", script],
            "log_path": format!("{name}.log"),
            "linux": {"security_context": {"namespace_options":
                pod_json["linux"]["security_context"]["namespace_options"].clone()}}
        });
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if k == "linux" {
                    if let Some(sc) = v.get("security_context").and_then(Value::as_object) {
                        for (sk, sv) in sc {
                            c["linux"]["security_context"][sk] = sv.clone();
                        }
                    }
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        let path = self.write_json(&format!("ctr-{name}.json"), &config)?;
        let id = self.crictl_ok(&[
            "create",
            pod,
            &path.to_string_lossy(),
            &pod_config.to_string_lossy(),
        ])?;
        self.crictl_ok(&["start", &id])?;
        Ok(id)
    }

    /// The container's log once it contains `needle` (or the deadline passes).
    fn logs_with(&self, id: &str, needle: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.crictl(&["logs", id])?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if text.contains(needle) || Instant::now() > deadline {
                return Ok(text);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn shims(&self) -> Vec<i32> {
        let dir = self.dir().to_string_lossy().into_owned();
        usernsrs_integration::pids_of_cmd("-address")
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&dir))
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(workspace_root().join("hack/private-cri.sh"))
            .arg("stop")
            .arg(self.dir())
            .status();
    }
}

fn userns(host: u32, size: u32) -> Value {
    json!({"mode": 0,
           "uids": [{"host_id": host, "container_id": 0, "length": size}],
           "gids": [{"host_id": host, "container_id": 0, "length": size}]})
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn handler_reports_user_namespace_support() -> Result<()> {
    let cri = Cri::start()?;
    let info: Value = serde_json::from_str(&cri.crictl_ok(&["info", "-o", "json"])?)?;
    let handler = info["runtimeHandlers"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["name"] == HANDLER))
        .context("no usernsrs runtime handler in crictl info")?;
    assert_eq!(
        handler["features"]["user_namespaces"],
        json!(true),
        "{handler}"
    );
    Ok(())
}

#[test]
fn pod_with_user_namespace_runs_with_idmapped_rootfs_and_volume() -> Result<()> {
    let cri = Cri::start()?;
    let (pod, pod_config) = cri.run_pod("userns", Some(&userns(200000, 65536)))?;

    // A hostPath-style volume with the pod's mapping, as kubelet sends it.
    let vol = cri.dir().join("volume");
    std::fs::create_dir(&vol)?;
    std::fs::write(vol.join("root-file"), "r")?;
    std::fs::write(vol.join("app-file"), "a")?;
    std::os::unix::fs::chown(vol.join("app-file"), Some(1000), Some(1000))?;
    let mapping = json!([{"host_id": 200000, "container_id": 0, "length": 65536}]);
    let mounts = json!({"mounts": [{"container_path": "/vol", "host_path": vol.to_string_lossy(),
                                    "uidMappings": mapping, "gidMappings": mapping}]});
    let script = "cat /proc/self/uid_map; stat -c %u:%g /data/root-file /data/app-file /vol/root-file /vol/app-file; \
                  echo ready; sleep 1000";
    let c1 = cri.run_container(&pod, &pod_config, "main", script, mounts)?;
    let log = cri.logs_with(&c1, "ready")?;
    let out: Vec<String> = lines(&log)
        .into_iter()
        .filter(|l| !l.starts_with("time="))
        .collect();
    assert_eq!(
        out,
        [
            "0 200000 65536",
            "0:0",
            "1000:1000",
            "0:0",
            "1000:1000",
            "ready"
        ],
        "uid_map, image owners and volume owners inside the pod:\n{log}"
    );

    // exec joins the pod's user namespace.
    let exec = cri.crictl_ok(&["exec", &c1, "cat", "/proc/self/uid_map"])?;
    assert_eq!(lines(&exec), ["0 200000 65536"]);

    // A non-root container user writes /dev/stderr (containerd issue 10598), seen in the logs.
    let c2 = cri.run_container(
        &pod,
        &pod_config,
        "nonroot",
        "echo to-stderr-as-$(id -u) > /dev/stderr; sleep 1000",
        json!({"linux": {"security_context": {"run_as_user": {"value": 1000}}}}),
    )?;
    let log2 = cri.logs_with(&c2, "to-stderr-as-1000")?;
    ensure!(
        log2.contains("to-stderr-as-1000"),
        "the non-root write to /dev/stderr is missing:\n{log2}"
    );

    // stats, then the lifecycle kubelet drives.
    let stats = cri.crictl_ok(&["stats", "-o", "json", &c1])?;
    ensure!(
        stats.contains(&c1[..12.min(c1.len())]) || stats.contains("memory"),
        "crictl stats: {stats}"
    );
    let servers = cri.shims();
    ensure!(
        servers.len() == 1,
        "one shim server serves the whole pod, found {servers:?}"
    );
    for c in [&c1, &c2] {
        cri.crictl_ok(&["stop", "-t", "1", c])?;
        cri.crictl_ok(&["rm", c])?;
    }
    cri.crictl_ok(&["stopp", &pod])?;
    cri.crictl_ok(&["rmp", &pod])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cri.shims().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        cri.shims().is_empty(),
        "the pod's shim outlived the pod: {:?}",
        cri.shims()
    );
    let left: Vec<PathBuf> = mounts_under(&cri.dir().join("state"))?
        .into_iter()
        .chain(mounts_under(&cri.dir().join("root"))?)
        .collect();
    ensure!(left.is_empty(), "mounts left after the pod: {left:?}");
    assert_eq!(
        std::fs::metadata(vol.join("app-file"))?.uid(),
        1000,
        "the volume was chowned"
    );
    Ok(())
}

use std::os::unix::fs::MetadataExt;

#[test]
fn pod_without_user_namespace_on_the_same_handler() -> Result<()> {
    let cri = Cri::start()?;
    let (pod, pod_config) = cri.run_pod("hostusers", None)?;
    let c = cri.run_container(
        &pod,
        &pod_config,
        "plain",
        "cat /proc/self/uid_map; echo ready; sleep 1000",
        json!({}),
    )?;
    let log = cri.logs_with(&c, "ready")?;
    ensure!(
        lines(&log).iter().any(|l| l == "0 0 4294967295"),
        "identity map expected:\n{log}"
    );
    cri.crictl_ok(&["stopp", &pod])?;
    cri.crictl_ok(&["rmp", &pod])?;
    Ok(())
}

#[test]
fn refuses_pods_with_several_mappings_or_root_unmapped() -> Result<()> {
    let cri = Cri::start()?;
    let several = json!({"mode": 0,
        "uids": [{"host_id": 200000, "container_id": 0, "length": 1000},
                 {"host_id": 300000, "container_id": 1000, "length": 1000}],
        "gids": [{"host_id": 200000, "container_id": 0, "length": 65536}]});
    let unmapped_root = json!({"mode": 0,
        "uids": [{"host_id": 200000, "container_id": 1, "length": 65535}],
        "gids": [{"host_id": 200000, "container_id": 1, "length": 65535}]});
    for (what, config) in [
        ("several mappings", several),
        ("container id 0 unmapped", unmapped_root),
    ] {
        let path = cri.write_json(
            &format!("refused-{}.json", what.len()),
            &cri.pod_config(&unique("refused"), Some(&config)),
        )?;
        let out = cri.crictl(&["runp", "--runtime", HANDLER, &path.to_string_lossy()])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            bail!("a pod with {what} was accepted");
        }
        ensure!(
            stderr.contains("mapping")
                || stderr.contains("user namespace")
                || stderr.contains("userns"),
            "the refusal of {what} does not say why:\n{stderr}"
        );
    }
    ensure!(
        cri.shims().is_empty(),
        "refused pods left shims: {:?}",
        cri.shims()
    );
    Ok(())
}

/// containerd 1.7 (Kubernetes 1.25/1.26 semantics: the mappings come in the spec and containerd
/// chowns a copy of the snapshot itself) keeps working with the same shim and handler.
#[test]
fn containerd17_pod_with_user_namespace() -> Result<()> {
    let cri = Cri::start_flavor("1.7")?;
    let (pod, pod_config) = cri.run_pod("userns17", Some(&userns(200000, 65536)))?;
    let c = cri.run_container(
        &pod,
        &pod_config,
        "main",
        "cat /proc/self/uid_map; stat -c %u:%g /data/root-file /data/app-file; echo ready; sleep 1000",
        json!({}),
    )?;
    let log = cri.logs_with(&c, "ready")?;
    let out: Vec<String> = lines(&log)
        .into_iter()
        .filter(|l| !l.starts_with("time="))
        .collect();
    assert_eq!(
        out,
        ["0 200000 65536", "0:0", "1000:1000", "ready"],
        "containerd 1.7 pod:\n{log}"
    );
    let exec = cri.crictl_ok(&["exec", &c, "cat", "/proc/self/uid_map"])?;
    assert_eq!(lines(&exec), ["0 200000 65536"]);
    cri.crictl_ok(&["stopp", &pod])?;
    cri.crictl_ok(&["rmp", &pod])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cri.shims().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        cri.shims().is_empty(),
        "the pod's shim outlived the pod: {:?}",
        cri.shims()
    );
    Ok(())
}

/// The critest specs that cannot apply here, each with the reason: substrings of the spec's
/// text, given to critest as `--ginkgo.skip`.
const CRITEST_NOT_APPLICABLE: [(&str, &str); 2] = [
    (
        "public image with digest",
        "pulls gcr.io/k8s-staging-cri-tools/test-image-digest by the digest of upstream's \
         manifest, which no local build can have (hack/build-cri-images.sh builds every other \
         image critest pulls)",
    ),
    (
        "benchmark about",
        "critest's benchmarks, not conformance specs: critest runs them only with -benchmark",
    ),
];

/// The reasons critest itself gives for skipping a spec that cannot run here. A spec skipped for
/// any other reason fails the test.
const CRITEST_SELF_SKIPS: [(&str, &str); 3] = [
    (
        "AppArmor is disabled on this host",
        "this kernel has no AppArmor (CONFIG_SECURITY_APPARMOR unset)",
    ),
    (
        "Image Volume digest reporting",
        "containerd v2.4.2's CRI reports no image_ref for an image volume in ContainerStatus",
    ),
    (
        "spec discrepancy: containerd",
        "critest's NRI synchronization specs skip themselves when containerd (not the runtime) \
         loses a container created while a plugin synchronizes; it depends on timing",
    ),
];

/// The specs that may need a second attempt (critest runs with --ginkgo.flake-attempts=2), with
/// the reason; a spec not listed that needed one fails the test, and every retry is printed.
const CRITEST_RACES: [(&str, &str); 1] = [(
    "Image Identifier Consistency",
    "the spec starts the image's default command (sh, which exits at once) and removes the \
     container right away: a RemoveContainer that lands while containerd's CRI handles the exit \
     (its task Delete done, the status not yet updated) fails with \"container is still running, \
     to stop first\". The race is containerd's; it is hit more often on usernsrs, whose Start \
     replies once the process has exec'd (so the exit follows within a millisecond) where runc's \
     replies before the execve",
)];

/// One spec's outcome in critest's JSON report.
#[derive(Debug, Clone, PartialEq)]
struct SpecOutcome {
    /// ginkgo's state: passed, failed, skipped, panicked, timedout, ...
    state: String,
    /// The failure's or the skip's message (empty for a spec left out by --ginkgo.skip).
    message: String,
    /// How many times ginkgo ran it (more than one: it failed and was retried).
    attempts: u64,
}

/// critest against one runtime handler of a private CRI containerd of its own.
struct CritestRun {
    handler: &'static str,
    summary: String,
    specs: BTreeMap<String, SpecOutcome>,
}

/// Starts a private containerd with CRI (handlers `usernsrs` and `runc` = runc v1.5.3, NRI on),
/// the registry with the stand-ins of critest's images, and runs all of critest against
/// `handler` but CRITEST_NOT_APPLICABLE.
fn run_critest(handler: &'static str) -> Result<CritestRun> {
    let cri = Cri::start_with_env(
        "2",
        &[
            ("USERNSRS_CRI_DEFAULT_RUNTIME", "runc"),
            ("USERNSRS_CRI_NRI", "1"),
        ],
    )?;
    let out = Command::new("bash")
        .arg(workspace_root().join("hack/private-cri.sh"))
        .arg("registry")
        .arg(cri.dir())
        .output()?;
    ensure!(
        out.status.success(),
        "the local registry did not start:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = cri.dir().join(format!("critest-{handler}.json"));
    let skip: Vec<&str> = CRITEST_NOT_APPLICABLE.iter().map(|(s, _)| *s).collect();
    let out = Command::new("bash")
        .arg(workspace_root().join("hack/private-cri.sh"))
        .arg("critest")
        .arg(cri.dir())
        .args(["--runtime-handler", handler, "--ginkgo.no-color"])
        .arg(format!(
            "--nri-socket={}",
            cri.dir().join("nri.sock").display()
        ))
        .arg(format!("--ginkgo.skip={}", skip.join("|")))
        .arg(format!("--ginkgo.json-report={}", report.display()))
        .arg("--ginkgo.flake-attempts=2")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = text
        .lines()
        .filter(|l| l.starts_with("Ran ") || l.contains("Passed |"))
        .collect::<Vec<_>>()
        .join("; ");
    let json = std::fs::read(&report).with_context(|| {
        format!(
            "critest against {handler} wrote no report ({}):\n{}",
            out.status,
            &text[text.len().saturating_sub(20_000)..]
        )
    })?;
    let specs = spec_outcomes(&serde_json::from_slice(&json)?)?;
    Ok(CritestRun {
        handler,
        summary,
        specs,
    })
}

/// The It specs of a ginkgo JSON report, by their full text.
fn spec_outcomes(report: &Value) -> Result<BTreeMap<String, SpecOutcome>> {
    let mut specs = BTreeMap::new();
    let reports = report[0]["SpecReports"]
        .as_array()
        .context("critest's report has no SpecReports")?;
    for spec in reports.iter().filter(|s| s["LeafNodeType"] == "It") {
        let mut name: Vec<&str> = spec["ContainerHierarchyTexts"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        name.push(spec["LeafNodeText"].as_str().unwrap_or_default());
        specs.insert(
            name.join(" "),
            SpecOutcome {
                state: spec["State"].as_str().unwrap_or_default().to_string(),
                message: spec["Failure"]["Message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                attempts: spec["NumAttempts"].as_u64().unwrap_or(1),
            },
        );
    }
    ensure!(!specs.is_empty(), "critest's report lists no spec");
    Ok(specs)
}

/// Whether critest skipped the spec itself for a reason of CRITEST_SELF_SKIPS.
fn self_skipped(o: &SpecOutcome) -> bool {
    o.state == "skipped"
        && !o.message.is_empty()
        && CRITEST_SELF_SKIPS
            .iter()
            .any(|(s, _)| o.message.contains(s))
}

/// What is wrong with one run: failed specs, and specs skipped for a reason not listed.
fn critest_problems(run: &CritestRun) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, o) in &run.specs {
        let allowed = match o.state.as_str() {
            "passed" => true,
            "skipped" if o.message.is_empty() => {
                CRITEST_NOT_APPLICABLE.iter().any(|(s, _)| name.contains(s))
            }
            "skipped" => self_skipped(o),
            _ => false,
        };
        if o.attempts > 1 && !CRITEST_RACES.iter().any(|(s, _)| name.contains(s)) {
            problems.push(format!(
                "{}: {name}: needed {} attempts",
                run.handler, o.attempts
            ));
        }
        if !allowed {
            problems.push(format!(
                "{}: {name}: {} {}",
                run.handler,
                o.state,
                o.message.lines().take(6).collect::<Vec<_>>().join(" / ")
            ));
        }
    }
    problems
}

/// All of critest (but the one spec that cannot apply, CRITEST_NOT_APPLICABLE), against the
/// `usernsrs` handler and, in parallel on a containerd of its own, against
/// containerd-shim-runc-v2 with runc v1.5.3: no spec fails on either; a spec skips only for a
/// reason listed in CRITEST_SELF_SKIPS; only the specs of CRITEST_RACES may need a second
/// attempt; every spec that passes on runc passes on usernsrs; the
/// user namespace specs run and pass. The images critest pulls are stand-ins built by
/// hack/build-cri-images.sh, served on the test network namespace's 127.0.0.1:5000.
#[test]
fn critest_passes_on_usernsrs_wherever_it_passes_on_runc() -> Result<()> {
    require_root()?;
    let (runc, usernsrs) = std::thread::scope(|s| {
        let runc = s.spawn(|| run_critest("runc"));
        let usernsrs = s.spawn(|| run_critest(HANDLER));
        (
            runc.join().expect("the runc critest thread panicked"),
            usernsrs
                .join()
                .expect("the usernsrs critest thread panicked"),
        )
    });
    let (runc, usernsrs) = (runc?, usernsrs?);
    for run in [&runc, &usernsrs] {
        eprintln!("critest against {}: {}", run.handler, run.summary);
        for (name, o) in run.specs.iter().filter(|(_, o)| o.state == "skipped") {
            let why = if o.message.is_empty() {
                "left out: cannot apply here"
            } else {
                o.message.lines().next().unwrap_or_default()
            };
            eprintln!("  skipped on {}: {name}: {why}", run.handler);
        }
        for (name, o) in run.specs.iter().filter(|(_, o)| o.attempts > 1) {
            eprintln!(
                "  {} attempts on {}: {name}: {}",
                o.attempts, run.handler, o.state
            );
        }
    }
    let mut problems = critest_problems(&runc);
    problems.extend(critest_problems(&usernsrs));
    for (name, _) in runc.specs.iter().filter(|(_, o)| o.state == "passed") {
        match usernsrs.specs.get(name) {
            // critest's own skips for containerd's gaps are timing-dependent (NRI): not the shim's.
            Some(u) if u.state == "passed" || self_skipped(u) => {}
            Some(u) => problems.push(format!(
                "passes on runc, {} on usernsrs: {name}: {}",
                u.state,
                u.message.lines().take(6).collect::<Vec<_>>().join(" / ")
            )),
            None => problems.push(format!("passes on runc, absent on usernsrs: {name}")),
        }
    }
    let userns: Vec<_> = usernsrs
        .specs
        .iter()
        .filter(|(name, _)| name.contains("UserNamespaces"))
        .collect();
    ensure!(
        userns.len() == 6 && userns.iter().all(|(_, o)| o.state == "passed"),
        "critest's 6 user namespace specs must run and pass on usernsrs: {userns:?}"
    );
    ensure!(
        problems.is_empty(),
        "critest:\n{}\nrunc: {}\nusernsrs: {}",
        problems.join("\n"),
        runc.summary,
        usernsrs.summary
    );
    Ok(())
}

/// A hostNetwork pod with a user namespace works: the kernel refuses a new sysfs there (the
/// network namespace is not the user namespace's), and the host's is bound read-only instead,
/// as containerd does for runc.
#[test]
fn host_network_pod_with_user_namespace() -> Result<()> {
    let cri = Cri::start()?;
    let mut config = cri.pod_config("hostnet", Some(&userns(200000, 65536)));
    config["linux"]["security_context"]["namespace_options"]["network"] = json!(2);
    let pod_config = cri.write_json("pod-hostnet.json", &config)?;
    let pod = cri.crictl_ok(&["runp", "--runtime", HANDLER, &pod_config.to_string_lossy()])?;
    let c = cri.run_container(
        &pod,
        &pod_config,
        "main",
        "cat /proc/self/uid_map; ls /sys/class/net | grep -c . ; \
         if touch /sys/x 2>/dev/null; then echo sys-writable; else echo sys-read-only; fi; echo ready; sleep 1000",
        json!({}),
    )?;
    let log = cri.logs_with(&c, "ready")?;
    let out: Vec<String> = lines(&log)
        .into_iter()
        .filter(|l| !l.starts_with("time="))
        .collect();
    ensure!(out.len() == 4, "unexpected output:\n{log}");
    assert_eq!(out[0], "0 200000 65536");
    ensure!(
        out[1].parse::<u32>().is_ok_and(|n| n >= 1),
        "no network device seen in /sys:\n{log}"
    );
    assert_eq!(out[2], "sys-read-only");
    cri.crictl_ok(&["stopp", &pod])?;
    cri.crictl_ok(&["rmp", &pod])?;
    Ok(())
}

/// A pod's container with the RuntimeDefault seccomp profile and privilege escalation allowed
/// (Kubernetes' default, so CRI sends `noNewPrivileges` false) runs with the filter and without
/// no_new_privs, so setuid binaries work in it; exec'd processes too. With `no_new_privs` asked
/// (allowPrivilegeEscalation: false) it is set.
#[test]
fn runtime_default_seccomp_leaves_no_new_privs_to_the_pod() -> Result<()> {
    let cri = Cri::start()?;
    let (pod, pod_config) = cri.run_pod("seccomp", Some(&userns(200000, 65536)))?;
    let script = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; echo ready; sleep 1000";
    let mut results = Vec::new();
    for (name, nnp) in [("escalation", false), ("no-escalation", true)] {
        let extra = json!({"linux": {"security_context": {
            "seccomp": {"profile_type": 0},
            "no_new_privs": nnp,
            "run_as_user": {"value": 1000}
        }}});
        let c = cri.run_container(&pod, &pod_config, name, script, extra)?;
        let log = cri.logs_with(&c, "ready")?;
        let out: Vec<String> = lines(&log)
            .into_iter()
            .filter(|l| !l.starts_with("time="))
            .collect();
        let exec = cri.crictl_ok(&["exec", &c, "grep", "NoNewPrivs", "/proc/self/status"])?;
        results.push((name, out, lines(&exec)));
        cri.crictl_ok(&["stop", "-t", "1", &c])?;
        cri.crictl_ok(&["rm", &c])?;
    }
    cri.crictl_ok(&["stopp", &pod])?;
    cri.crictl_ok(&["rmp", &pod])?;
    for (name, out, exec) in results {
        let nnp = if name == "escalation" { "0" } else { "1" };
        assert_eq!(
            out,
            [
                format!("NoNewPrivs: {nnp}"),
                "Seccomp: 2".into(),
                "ready".into()
            ],
            "{name}: the container's process"
        );
        assert_eq!(
            exec,
            [format!("NoNewPrivs: {nnp}")],
            "{name}: an exec'd process"
        );
    }
    Ok(())
}
