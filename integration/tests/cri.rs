//! Kubernetes through containerd 2.x's CRI: pods with user namespace mode POD (`hostUsers:
//! false`) on the runtime handler `usernsrs`, driven with crictl as kubelet drives containerd.
//! The private containerd (hack/private-cri.sh) runs in a network namespace of its own; crictl
//! runs inside it.
//!
//! Needs root; `make integration` runs it.

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
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

/// What of critest does not apply here, and why. Each entry is a regex on the spec name.
const CRITEST_NOT_APPLICABLE: [(&str, &str); 7] = [
    ("Image Manager|Image Consistency|Image Identifier Consistency|Image Volume",
     "pull test images from gcr.io/k8s-staging-cri-tools and registry.k8s.io, which are not reachable; only busybox is served locally"),
    ("Multiple Containers|port mapping|portforward",
     "need the nginx and httpd images"),
    ("HostPID|HostIpc|PodPID|ContainerPID", "need the nginx image or ipcs, which Debian's busybox lacks"),
    ("NoNewPrivs", "needs the nonewprivs image"),
    ("SupplementalGroupsPolicy", "needs the test-image-predefined-group image"),
    ("MaskedPaths", "Debian's busybox sh runs ls as a built-in applet, so masking /bin/ls cannot show"),
    ("execSync with timeout", "runs pgrep, which Debian's busybox lacks"),
];

fn critest(cri: &Cri, args: &[&str]) -> Result<String> {
    let out = Command::new("bash")
        .arg(workspace_root().join("hack/private-cri.sh"))
        .arg("critest")
        .arg(cri.dir())
        .args(["--runtime-handler", HANDLER, "--ginkgo.no-color"])
        .args(args)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "critest {args:?} failed:\n{}",
        &text[text.len().saturating_sub(20_000)..]
    );
    Ok(text)
}

fn registry(cri: &Cri) -> Result<()> {
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
    Ok(())
}

/// critest's "UserNamespaces" group: the handler reports user namespaces, POD mode shows exactly
/// the mapping, and more than one mapping, an unmapped container id 0, CONTAINER and TARGET
/// modes are refused.
#[test]
fn critest_user_namespaces_group_passes() -> Result<()> {
    let cri = Cri::start()?;
    registry(&cri)?;
    let text = critest(&cri, &["--ginkgo.focus", "UserNamespaces"])?;
    ensure!(
        text.contains("SUCCESS! -- 6 Passed | 0 Failed"),
        "expected the 6 user namespace specs to pass:\n{text}"
    );
    Ok(())
}

/// The rest of critest, less what cannot apply here (listed with the reason in
/// CRITEST_NOT_APPLICABLE): pods, containers, exec, attach, logs, stats, security contexts,
/// seccomp profiles.
#[test]
fn critest_conformance_passes_except_what_cannot_apply() -> Result<()> {
    let cri = Cri::start()?;
    registry(&cri)?;
    let skip: Vec<&str> = CRITEST_NOT_APPLICABLE.iter().map(|(re, _)| *re).collect();
    let skip = format!("UserNamespaces|{}", skip.join("|"));
    let text = critest(&cri, &["--ginkgo.skip", &skip])?;
    let summary = text
        .lines()
        .find(|l| l.contains("Passed |"))
        .unwrap_or_default()
        .to_string();
    ensure!(summary.contains("| 0 Failed"), "critest: {summary}");
    eprintln!("critest: {summary}");
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
