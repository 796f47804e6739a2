//! The short-lived subcommands containerd runs: `-info`, `start` and `delete`.
//!
//! `start` speaks to every containerd from 1.6 on: containerd 2.3+ writes a protobuf
//! `BootstrapParams` on stdin and reads a protobuf `BootstrapResult` (task API v3); older ones
//! pass flags, environment and maybe runtime options on stdin, and read a bare address, which
//! means task API v2 — served too, under its own name.

use crate::container::{cleanup_host, proc_start_time, INIT_STATE_FILE};
use crate::server::socket_path;
use anyhow::Context;
use containerd_shim::api::DeleteResponse;
use containerd_shim::bootstrap::{BootstrapParams, BootstrapResult};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use containerd_shim::{Flags, StartOpts};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;
use usernsrs_init::cgroup::{Cgroup, CGROUP_ROOT};

pub const RUNTIME_NAME: &str = "io.containerd.usernsrs.v2";
const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut input = Vec::new();
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        std::io::stdin()
            .take(10 << 20)
            .read_to_end(&mut input)
            .context("read stdin")?;
    }
    Ok(input)
}

/// Whether the shim can make an idmapped rootfs here, probed by doing what it does for a
/// user-namespaced container from an overlayfs snapshot: an overlay over an idmapped layer
/// (which needs more of the kernel than an idmapped mount alone: Linux 5.19+). The probe runs in
/// a private mount namespace of this short-lived process, so its mounts never reach the host and
/// vanish with it whatever happens; its directory under the temp dir is removed.
fn probe_idmap() -> bool {
    let dir = std::env::temp_dir().join(format!("usernsrs-probe-{}", std::process::id()));
    if std::fs::create_dir(&dir).is_err() {
        return false;
    }
    let ok = probe_idmapped_overlay(&dir);
    if let Err(e) = &ok {
        log::debug!("idmap probe in {}: {e:#}", dir.display());
    }
    // Nothing can be mounted below `dir` any more: unmounted, or in a namespace now unused.
    let _ = std::fs::remove_dir_all(&dir);
    ok.is_ok()
}

pub(crate) fn probe_idmapped_overlay(dir: &Path) -> anyhow::Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use usernsrs_init::overlay::{mount_over_idmapped_layers, OverlayParts};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare mount namespace")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make mounts private")?;
    let layers = dir.join("layers");
    let lower = layers.join("1");
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&lower, &upper, &work, &merged] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    std::fs::write(lower.join("f"), b"").context("write the probe's file")?;
    std::os::unix::fs::chown(&upper, Some(1_000_000), Some(1_000_000)).context("chown upper")?;
    let ns = usernsrs_sys::user_namespace_fd("0 1000000 1\n", "0 1000000 1\n")
        .context("user namespace")?;
    let lowers = [lower];
    let parts = OverlayParts {
        lowerdirs: &lowers,
        parent: &layers,
        upper_work: Some((&upper, &work)),
        data: "",
        flags: MsFlags::empty(),
    };
    mount_over_idmapped_layers(
        &parts,
        std::os::fd::AsFd::as_fd(&ns),
        &dir.join("staging"),
        &merged,
    )?;
    // The layer's file, owned by 0 on disk, must show as the mapped id through the overlay.
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(merged.join("f"))?);
    umount2(&merged, MntFlags::MNT_DETACH).context("unmount the probe's overlay")?;
    anyhow::ensure!(
        owner == 1_000_000,
        "the overlay shows the layer's file as uid {owner}"
    );
    Ok(())
}

/// The OCI features document (runtime-spec `features.md`) of this runtime.
pub fn features(idmap: bool) -> serde_json::Value {
    let caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.1",
        "hooks": [],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "idmap",
            "lazytime", "mand", "noatime", "nodev", "nodiratime", "noexec", "nolazytime", "nomand",
            "norelatime", "nostrictatime", "nosuid", "nosymfollow", "private", "ratime", "rbind",
            "rdev", "rdiratime", "relatime", "remount", "rexec", "ridmap", "rnoatime", "rnodev",
            "rnodiratime", "rnoexec", "rnorelatime", "rnostrictatime", "rnosuid", "rnosymfollow",
            "ro", "rprivate", "rrelatime", "rro", "rrw", "rshared", "rslave", "rstrictatime",
            "rsuid", "rsymfollow", "runbindable", "rw", "shared", "slave", "strictatime", "suid",
            "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps,
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": seccomp_features(),
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
            "mountExtensions": { "idmap": { "enabled": idmap } }
        },
        "annotations": {
            "io.github.usernsrs.version": env!("CARGO_PKG_VERSION")
        }
    })
}

/// `linux.seccomp` of the features document, with runc's field names: what a profile may use
/// and which filter flags the running kernel takes.
fn seccomp_features() -> serde_json::Value {
    use usernsrs_runtime_core::seccomp::{Arch, ACTIONS, APPLICABLE_FLAGS, KNOWN_FLAGS, OPERATORS};
    let mut archs: Vec<&str> = Arch::native()
        .map(|native| {
            Arch::ALL
                .into_iter()
                .filter(|a| a.runs_on(native))
                .map(Arch::oci_name)
                .collect()
        })
        .unwrap_or_default();
    archs.sort_unstable();
    let supported: Vec<&str> = APPLICABLE_FLAGS
        .iter()
        .filter(|(_, bit)| usernsrs_sys::seccomp::filter_flag_supported(*bit))
        .map(|(name, _)| *name)
        .collect();
    serde_json::json!({
        "enabled": !archs.is_empty(),
        "actions": ACTIONS,
        "operators": OPERATORS,
        "archs": archs,
        "knownFlags": KNOWN_FLAGS,
        "supportedFlags": supported,
    })
}

pub fn info() -> anyhow::Result<()> {
    // Runtime options may come on stdin; nothing in them changes the features yet.
    let _ = read_stdin()?;
    let body = serde_json::to_vec(&features(probe_idmap()))?;
    let info = RuntimeInfo {
        name: RUNTIME_NAME.to_string(),
        version: Some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
        .into(),
        features: Some(Any {
            type_url: FEATURES_TYPE_URL.to_string(),
            value: body,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let mut out = std::io::stdout();
    out.write_all(&info.write_to_bytes()?)?;
    out.flush()?;
    Ok(())
}

/// `BootstrapParams` when containerd 2.3+ sent them, `None` for the older protocol (whose
/// stdin, if anything, is a protobuf `Any` of runtime options).
fn bootstrap_params(input: &[u8], flags: &Flags) -> Option<BootstrapParams> {
    if input.is_empty() {
        return None;
    }
    let params = BootstrapParams::parse_from_bytes(input).ok()?;
    // An `Any` decodes as BootstrapParams too (type URL into instance_id); the identity tells.
    (params.instance_id == flags.id && params.namespace == flags.namespace).then_some(params)
}

/// The group this container's server belongs to: its pod's sandbox, or itself.
fn grouping(bundle: &Path, id: &str) -> String {
    std::fs::read_to_string(bundle.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|spec| {
            spec["annotations"][SANDBOX_ID_ANNOTATION]
                .as_str()
                .map(str::to_string)
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_string())
}

pub fn start(flags: &Flags) -> anyhow::Result<()> {
    let input = read_stdin()?;
    let params = bootstrap_params(&input, flags);
    let opts = StartOpts {
        id: flags.id.clone(),
        namespace: flags.namespace.clone(),
        address: params
            .as_ref()
            .map(|p| p.containerd_grpc_address.clone())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| flags.address.clone()),
        ttrpc_address: params
            .as_ref()
            .map(|p| p.containerd_ttrpc_address.clone())
            .filter(|a| !a.is_empty())
            .or_else(|| std::env::var("TTRPC_ADDRESS").ok())
            .context("containerd's ttrpc address: neither bootstrap params nor TTRPC_ADDRESS")?,
        socket_dir: params
            .as_ref()
            .and_then(|p| p.socket_dir.clone())
            .filter(|d| !d.is_empty()),
        debug: flags.debug,
        ..Default::default()
    };
    let bundle = std::env::current_dir().context("bundle directory")?;
    let address = opts.socket_address(&grouping(&bundle, &flags.id));
    let path = socket_path(&address).to_string();

    // The address file first: if it cannot be written, no server is left behind.
    std::fs::write(bundle.join("address"), &address).context("write address file")?;
    let served = std::os::unix::net::UnixStream::connect(&path).is_ok();
    if !served {
        let _ = std::fs::remove_file(&path);
        spawn_server(&opts, &bundle, &address)?;
    }

    let mut out = std::io::stdout();
    if params.is_some() {
        let result = BootstrapResult {
            version: 3,
            address: address.clone(),
            protocol: "ttrpc".to_string(),
            ..Default::default()
        };
        out.write_all(&result.write_to_bytes()?)?;
    } else {
        out.write_all(address.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn spawn_server(opts: &StartOpts, bundle: &Path, address: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locate the shim binary")?;
    let mut cmd = Command::new(exe);
    cmd.current_dir(bundle)
        .args([
            "-namespace",
            &opts.namespace,
            "-id",
            &opts.id,
            "-address",
            &opts.address,
            "-socket",
            address,
        ])
        .env("TTRPC_ADDRESS", &opts.ttrpc_address)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if opts.debug {
        cmd.arg("-debug");
    }
    // Its own process group, so signals to containerd's group do not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("spawn the shim server")?;
    // The server closes its stdout once it listens (or found the socket served).
    let mut sink = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut sink);
    }
    if let Ok(Some(status)) = child.try_wait() {
        if !status.success() {
            anyhow::bail!("the shim server exited with {status} before listening on {address}");
        }
    }
    Ok(())
}

/// `delete`: containerd lost the server (it crashed or was killed) and asks us to clean up the
/// container of the bundle we run in: kill what is left of it, detach its mounts, remove its
/// cgroup. Prints a DeleteResponse and nothing else on stdout.
pub fn delete(flags: &Flags) -> anyhow::Result<()> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().context("bundle directory")?
    } else {
        PathBuf::from(&flags.bundle)
    };
    // The spec's cgroupsPath, or the one the shim gave a container without it (the bundle
    // directory is named after the container).
    let id = bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cgroup = std::fs::read_to_string(bundle.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .map(|spec| {
            spec["linux"]["cgroupsPath"]
                .as_str()
                .filter(|p| !p.is_empty())
                .map_or_else(
                    || usernsrs_init::cgroup::default_cgroups_path(&flags.namespace, &id),
                    str::to_string,
                )
        })
        .and_then(|p| Cgroup::new(Path::new(CGROUP_ROOT), &p).ok());
    let mut pid = 0;
    if let Some(state) = std::fs::read_to_string(bundle.join(INIT_STATE_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    {
        let recorded = state["pid"].as_i64().unwrap_or(0) as i32;
        // Only the very process we started: same pid and same start time.
        if recorded > 0
            && state["start_time"].as_u64().is_some()
            && proc_start_time(recorded) == state["start_time"].as_u64()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(recorded),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        pid = recorded;
        // A cgroup the container did not create is not its to empty or remove.
        if state["owns_cgroup"].as_bool() == Some(false) {
            cgroup = None;
        }
        let _ = std::fs::remove_file(bundle.join(INIT_STATE_FILE));
    }
    cleanup_host(&bundle, true, cgroup.as_ref())?;
    let response = DeleteResponse {
        pid: pid.max(0) as u32,
        exit_status: 128 + 9,
        exited_at: Some(crate::process::timestamp(SystemTime::now())).into(),
        ..Default::default()
    };
    let mut out = std::io::stdout();
    out.write_all(&response.write_to_bytes()?)?;
    out.flush()?;
    Ok(())
}
