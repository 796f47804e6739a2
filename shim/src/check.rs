//! `containerd-shim-usernsrs-v2 check [--json] [--containerd PATH] [PATH...]`: the pre-flight
//! report an operator runs before turning user namespaces on.
//!
//! Every line is tried for real, the way the shim would use it: a user namespace is created, a
//! directory idmapped, an overlay built over idmapped layers, a tmpfs idmapped, each PATH (by
//! default containerd's root and the kubelet's directory, where they exist) cloned and idmapped,
//! a cgroup device program loaded. Nothing changes on the host: the process works in a private
//! mount namespace of its own (its mounts vanish with it), clones are never attached, the
//! program is never attached, and its scratch directory is removed.
//!
//! The exit status is 0 only when everything user-namespaced pods need works; a failed line says
//! the way out. Lines that only inform (the kernel's release, a containerd not given) do not
//! count.

use anyhow::Context;
use std::path::{Path, PathBuf};

/// What a line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Fail,
    Info,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    area: &'static str,
    name: String,
    status: Status,
    detail: String,
    way_out: Option<String>,
}

impl Line {
    fn new(area: &'static str, name: impl Into<String>, result: Result<String, Failure>) -> Self {
        match result {
            Ok(detail) => Line {
                area,
                name: name.into(),
                status: Status::Ok,
                detail,
                way_out: None,
            },
            Err(f) => Line {
                area,
                name: name.into(),
                status: Status::Fail,
                detail: f.detail,
                way_out: Some(f.way_out),
            },
        }
    }

    fn info(area: &'static str, name: impl Into<String>, detail: impl Into<String>) -> Self {
        Line {
            area,
            name: name.into(),
            status: Status::Info,
            detail: detail.into(),
            way_out: None,
        }
    }
}

/// A failed probe: what happened, and what to do about it.
#[derive(Debug)]
struct Failure {
    detail: String,
    way_out: String,
}

fn failure(detail: impl std::fmt::Display, way_out: &str) -> Failure {
    Failure {
        detail: detail.to_string(),
        way_out: way_out.to_string(),
    }
}

/// The report's exit status: 0 when no line failed.
fn exit_status(lines: &[Line]) -> i32 {
    i32::from(lines.iter().any(|l| l.status == Status::Fail))
}

/// The report as text, one line per check, the way out indented under a failure.
fn render_text(lines: &[Line]) -> String {
    let mut out = String::new();
    for l in lines {
        let tag = match l.status {
            Status::Ok => "ok  ",
            Status::Fail => "FAIL",
            Status::Info => "info",
        };
        out.push_str(&format!("[{tag}] {}: {}: {}\n", l.area, l.name, l.detail));
        if let Some(w) = &l.way_out {
            out.push_str(&format!("       way out: {w}\n"));
        }
    }
    let verdict = if exit_status(lines) == 0 {
        "ready for user-namespaced pods"
    } else {
        "NOT ready for user-namespaced pods: see the FAIL lines"
    };
    out.push_str(&format!("{verdict}\n"));
    out
}

/// The report as JSON: `{"ready": bool, "checks": [...]}`.
fn render_json(lines: &[Line]) -> serde_json::Value {
    let checks: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| {
            serde_json::json!({
                "area": l.area,
                "name": l.name,
                "status": match l.status { Status::Ok => "ok", Status::Fail => "fail", Status::Info => "info" },
                "detail": l.detail,
                "way_out": l.way_out,
            })
        })
        .collect();
    serde_json::json!({ "ready": exit_status(lines) == 0, "checks": checks })
}

/// What a containerd line needs for this shim's handler to be reported with user namespace
/// support by its CRI, from `containerd --version`'s version (`v2.2.3`, `1.7.24`).
fn containerd_verdict(version: &str) -> Result<String, Failure> {
    let v = version.trim_start_matches('v');
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    let num = |p: Option<&str>| p.and_then(|p| p.parse::<u32>().ok());
    let (Some(major), Some(minor)) = (num(parts.next()), num(parts.next())) else {
        return Err(failure(
            format!("cannot read the version {version:?}"),
            "give the containerd binary with --containerd PATH",
        ));
    };
    let patch = num(parts.next()).unwrap_or(0);
    const TYPE: &str = "[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.usernsrs]\n  runtime_type = \"io.containerd.usernsrs.v2\"";
    const RUNC_PATH: &str = "[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.usernsrs]\n  runtime_type = \"io.containerd.runc.v2\"\n  runtime_path = \"/usr/local/bin/containerd-shim-usernsrs-v2\"";
    let runc_path = |version: &str| {
        format!(
            "containerd {version}: its CRI runs -info only for runc's runtime type; configure \
             the handler as\n{RUNC_PATH}"
        )
    };
    match (major, minor) {
        (0, _) | (1, 0..=6) => Err(failure(
            format!("containerd {version}: its CRI has no user namespaces"),
            "upgrade containerd to 2.x (the README's compatibility table); ctr --uidmap works on 1.6",
        )),
        (1, _) => Err(failure(
            format!("containerd {version}: its CRI reports no runtime handlers, so a kubelet refuses hostUsers: false pods"),
            "upgrade containerd to 2.x; pods with the mappings in the spec (Kubernetes 1.25/1.26 semantics) do run",
        )),
        // CRI ran a handler's -info only for runc's type before 2.2.7, 2.3.4 and 2.4.0.
        (2, 0 | 1) => Ok(runc_path(version)),
        (2, 2) if patch < 7 => Ok(runc_path(version)),
        (2, 3) if patch < 4 => Ok(runc_path(version)),
        _ => Ok(format!(
            "containerd {version}: its CRI reports the handler's user namespace support; configure it as\n{TYPE}"
        )),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

fn probe_userns() -> Result<String, Failure> {
    usernsrs_sys::user_namespace_fd("0 1000000 1\n", "0 1000000 1\n")
        .map(|_| "a user namespace with a mapping can be made".to_string())
        .map_err(|e| {
            failure(
                format!("cannot make a user namespace: {e}"),
                "enable user namespaces (user.max_user_namespaces > 0; on Debian kernel.unprivileged_userns_clone does not matter for root)",
            )
        })
}

/// Clones `path` into a detached tree and idmaps it; the tree is dropped unattached.
fn try_idmap(path: &Path) -> std::io::Result<()> {
    let ns = usernsrs_sys::user_namespace_fd("0 1000000 65536\n", "0 1000000 65536\n")?;
    let tree = usernsrs_sys::DetachedMount::clone_tree(path, false)?;
    tree.idmap(std::os::fd::AsFd::as_fd(&ns), false)
}

fn fs_name(path: &Path) -> String {
    match nix::sys::statfs::statfs(path) {
        Ok(st) => {
            let magic = st.filesystem_type().0 as u64;
            let name = match magic {
                0xEF53 => "ext4",
                0x5846_5342 => "xfs",
                0x9123_683E => "btrfs",
                0x0102_1994 => "tmpfs",
                0x8584_58f6 => "ramfs",
                0x6969 => "nfs",
                0x6573_5546 => "fuse",
                0x794c_7630 => "overlayfs",
                0x0102_1997 => "9p",
                0x6367_7270 => "cgroup2",
                _ => "",
            };
            if name.is_empty() {
                format!("filesystem magic {magic:#x}")
            } else {
                name.to_string()
            }
        }
        Err(e) => format!("unknown filesystem ({e})"),
    }
}

fn probe_path(path: &Path) -> Result<String, Failure> {
    let fs = fs_name(path);
    try_idmap(path)
        .map(|()| format!("{fs}: an idmapped mount of it works"))
        .map_err(|e| {
            failure(
                format!("{fs}: an idmapped mount of it fails: {e}"),
                "keep containerd's root and the kubelet's directory on ext4, xfs, btrfs or tmpfs (6.3+), or set slow_chown = true in the shim's runtime options (a metadata-only chowned copy)",
            )
        })
}

fn probe_tmpfs(scratch: &Path) -> Result<String, Failure> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let dir = scratch.join("tmpfs");
    std::fs::create_dir_all(&dir).map_err(|e| failure(e, "check the temp dir"))?;
    mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| failure(format!("mount a tmpfs: {e}"), "run check as root"))?;
    let result = try_idmap(&dir);
    let _ = umount2(&dir, MntFlags::MNT_DETACH);
    result.map(|()| "an idmapped tmpfs works (emptyDir medium Memory, projected volumes)".into()).map_err(|e| {
        failure(
            format!("an idmapped tmpfs fails: {e}"),
            "Linux 6.3+ idmaps tmpfs: upgrade the kernel, or keep tmpfs volumes out of user-namespaced pods",
        )
    })
}

fn probe_cgroups() -> Vec<Line> {
    let unified = |p: &str| {
        nix::sys::statfs::statfs(p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
    };
    let (mode, v2) = if unified("/sys/fs/cgroup") {
        ("v2 (unified)", true)
    } else if unified("/sys/fs/cgroup/unified") {
        (
            "hybrid (v1 controllers, a v2 tree at /sys/fs/cgroup/unified)",
            true,
        )
    } else {
        ("v1", false)
    };
    let mut lines = vec![Line::info("cgroups", "mode", mode)];
    if v2 {
        let insns = usernsrs_init::devices::program(&usernsrs_init::devices::DEFAULT_ALLOWED);
        let loaded =
            usernsrs_sys::bpf::load_device_program(&insns, usernsrs_init::devices::LICENSE);
        lines.push(Line::new(
            "cgroups",
            "device rules",
            loaded
                .map(|_| "an eBPF device program loads: device rules are enforced on the v2 tree".to_string())
                .map_err(|e| {
                    failure(
                        format!("an eBPF device program does not load: {e}"),
                        "a kernel with CONFIG_CGROUP_BPF and CONFIG_BPF_SYSCALL (every distribution kernel has them)",
                    )
                }),
        ));
    } else {
        lines.push(Line::new(
            "cgroups",
            "device rules",
            Ok("the v1 devices controller enforces them".into()),
        ));
    }
    lines
}

fn containerd_line(binary: Option<&Path>) -> Line {
    let binary = binary.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("containerd"))
                .find(|c| c.is_file())
        })
    });
    let Some(binary) = binary else {
        return Line::new(
            "containerd",
            "CRI handler",
            Err(failure(
                "no containerd in PATH",
                "give the binary with --containerd PATH",
            )),
        );
    };
    let out = std::process::Command::new(&binary)
        .arg("--version")
        .output();
    let version = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string(),
        Ok(o) => {
            return Line::new(
                "containerd",
                binary.display().to_string(),
                Err(failure(
                    format!("`--version` failed: {}", o.status),
                    "give a containerd binary with --containerd PATH",
                )),
            )
        }
        Err(e) => {
            return Line::new(
                "containerd",
                binary.display().to_string(),
                Err(failure(
                    format!("cannot run it: {e}"),
                    "give a containerd binary with --containerd PATH",
                )),
            )
        }
    };
    Line::new(
        "containerd",
        binary.display().to_string(),
        containerd_verdict(&version),
    )
}

struct Args {
    json: bool,
    containerd: Option<PathBuf>,
    paths: Vec<PathBuf>,
}

fn parse_args(args: &[std::ffi::OsString]) -> anyhow::Result<Args> {
    let mut out = Args {
        json: false,
        containerd: None,
        paths: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--json") => out.json = true,
            Some("--containerd") => {
                out.containerd = Some(PathBuf::from(
                    it.next().context("--containerd needs a PATH")?,
                ))
            }
            Some(s) if s.starts_with('-') => {
                anyhow::bail!("unknown option {s}: check [--json] [--containerd PATH] [PATH...]")
            }
            _ => out.paths.push(PathBuf::from(a)),
        }
    }
    Ok(out)
}

/// The probes' directory under the temp dir: removed at the end, once nothing is mounted in it.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("usernsrs-check-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let clear = usernsrs_init::cleanup::unmount_under(&self.0).is_ok_and(|l| l.is_empty());
        if clear {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!(
                "check: {} still holds a mount: left in place",
                self.0.display()
            );
        }
    }
}

/// Runs every check and prints the report; returns the exit status.
pub fn main(args: &[std::ffi::OsString]) -> anyhow::Result<i32> {
    let args = parse_args(args)?;
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "check needs root: it makes user namespaces and idmapped mounts"
    );
    // Step 1: a private mount namespace, so every probe mount vanishes with this process.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare mount namespace")?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make mounts private")?;
    let scratch = Scratch::new()?;

    let mut lines = vec![Line::info("kernel", "release", kernel_release())];
    lines.push(Line::new("kernel", "user namespaces", probe_userns()));
    lines.push(Line::new(
        "kernel",
        "idmapped mounts",
        try_idmap(scratch.path())
            .map(|()| "an idmapped mount of a directory works".to_string())
            .map_err(|e| {
                failure(
                    format!("an idmapped mount fails here: {e}"),
                    "Linux 5.12+ and a filesystem that supports idmapped mounts for the temp dir",
                )
            }),
    ));
    let overlay_dir = scratch.path().join("overlay");
    let overlay = std::fs::create_dir(&overlay_dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| crate::bootstrap::probe_idmapped_overlay(&overlay_dir));
    lines.push(Line::new(
        "kernel",
        "overlayfs over idmapped layers",
        overlay
            .map(|()| "an overlay over an idmapped layer works (the rootfs of a pod)".to_string())
            .map_err(|e| {
                failure(
                    format!("{e:#}"),
                    "Linux 5.19+; or set slow_chown = true in the shim's runtime options",
                )
            }),
    ));
    lines.push(Line::new(
        "kernel",
        "idmapped tmpfs",
        probe_tmpfs(scratch.path()),
    ));

    let paths = if args.paths.is_empty() {
        ["/var/lib/containerd", "/var/lib/kubelet"]
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect()
    } else {
        args.paths.clone()
    };
    if paths.is_empty() {
        lines.push(Line::info(
            "paths",
            "none",
            "neither /var/lib/containerd nor /var/lib/kubelet exists: give paths to check",
        ));
    }
    for p in &paths {
        let result = if p.is_dir() {
            probe_path(p)
        } else {
            Err(failure("not a directory", "give an existing directory"))
        };
        lines.push(Line::new("paths", p.display().to_string(), result));
    }
    lines.extend(probe_cgroups());
    lines.push(containerd_line(args.containerd.as_deref()));
    lines.push(Line::info(
        "userns",
        "auto pool",
        "not configured: containers get a user namespace when their spec asks (userns mode \"spec\")",
    ));

    if args.json {
        println!("{}", serde_json::to_string_pretty(&render_json(&lines))?);
    } else {
        print!("{}", render_text(&lines));
    }
    Ok(exit_status(&lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_lines_get_the_configuration_that_works_there() {
        for (version, runc_path) in [
            ("v2.0.14", true),
            ("v2.1.9", true),
            ("v2.2.3", true),
            ("v2.2.7", false),
            ("v2.2.9", false),
            ("v2.3.3", true),
            ("v2.3.4", false),
            ("v2.4.2", false),
            ("2.5.0", false),
        ] {
            let text = containerd_verdict(version).expect(version);
            assert_eq!(
                text.contains("runtime_path"),
                runc_path,
                "{version}: {text}"
            );
            assert!(text.contains("[plugins."), "{version}: {text}");
        }
        for version in ["1.6.20", "1.7.24", "nonsense"] {
            let err = containerd_verdict(version).expect_err(version);
            assert!(!err.way_out.is_empty(), "{version}");
        }
    }

    #[test]
    fn exit_status_counts_failures_only() {
        let ok = Line::new("a", "b", Ok("fine".into()));
        let info = Line::info("a", "c", "just so");
        let bad = Line::new("a", "d", Err(failure("broken", "fix it")));
        assert_eq!(exit_status(&[ok.clone(), info.clone()]), 0);
        assert_eq!(exit_status(&[ok, info, bad.clone()]), 1);
        let text = render_text(&[bad]);
        assert!(
            text.contains("[FAIL] a: d: broken\n       way out: fix it"),
            "{text}"
        );
        assert!(text.contains("NOT ready"), "{text}");
    }

    #[test]
    fn json_has_the_verdict_and_every_line() {
        let lines = [
            Line::new("kernel", "x", Ok("y".into())),
            Line::new("paths", "/p", Err(failure("ramfs", "move it"))),
        ];
        let v = render_json(&lines);
        assert_eq!(v["ready"], false);
        assert_eq!(v["checks"][1]["status"], "fail");
        assert_eq!(v["checks"][1]["way_out"], "move it");
        assert_eq!(v["checks"][0]["way_out"], serde_json::Value::Null);
    }
}
