//! The shim killed with SIGKILL while its container runs: containerd notices, runs
//! `containerd-shim-usernsrs-v2 delete` in the bundle, and that leaves nothing behind: the
//! container's processes gone, the idmapped rootfs and every mount under the bundle detached,
//! the task gone from containerd.
//!
//! Needs root; `make integration` runs it.

use anyhow::{bail, ensure, Context, Result};
use std::time::{Duration, Instant};
use usernsrs_integration::{
    mounts_under, pids_of_cmd, process_alive, require_root, Containerd, Flavor,
};

const RUNTIME: &str = "io.containerd.usernsrs.v2";

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

fn task_pid(c: &Containerd, id: &str) -> Result<i32> {
    let out = c.ctr_ok(["task", "ls"])?;
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id)).then(|| f.next()).flatten()
        })
        .next()
        .context("task not listed")?
        .parse()
        .context("task pid")
}

fn sigkill_of_the_shim_is_cleaned_up(flavor: Flavor, userns: bool) -> Result<()> {
    require_root()?;
    let c = Containerd::start(flavor)?;
    let image = c.import_busybox("default")?;
    let id = format!("crash-{}", std::process::id());
    let fifo = c.dir().join("fifo");
    let mut args = vec!["run", "-d", "--runtime", RUNTIME, "--fifo-dir"];
    let fifo_s = fifo.to_string_lossy().into_owned();
    args.push(&fifo_s);
    if userns {
        args.extend([
            "--uidmap",
            "0:100000:65536",
            "--gidmap",
            "0:100000:65536",
            "--remap-labels",
        ]);
    }
    args.extend([image.as_str(), id.as_str(), "/bin/sleep", "1000"]);
    c.ctr_ok(&args)?;

    let pid = task_pid(&c, &id)?;
    let bundle_root = c.dir().join("state");
    ensure!(
        !mounts_under(&bundle_root)?.is_empty(),
        "{flavor}: the rootfs should be mounted under the bundle"
    );
    let shims: Vec<i32> = pids_of_cmd(&format!("-id {id}"))?
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("usernsrs"))
        })
        .collect();
    let [shim] = shims[..] else {
        bail!("{flavor}: expected one shim server for {id}, found {shims:?}")
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )?;

    wait_for(
        "the container process to be killed",
        Duration::from_secs(15),
        || Ok(!process_alive(pid)),
    )?;
    wait_for(
        "the mounts under the bundles to go",
        Duration::from_secs(15),
        || Ok(mounts_under(&bundle_root)?.is_empty()),
    )?;
    wait_for(
        "containerd to forget the task",
        Duration::from_secs(15),
        || Ok(task_pid(&c, &id).is_err()),
    )?;
    c.ctr_ok(["containers", "delete", &id])?;
    // containerd's `delete` call of the binary may still be finishing.
    wait_for("no process of the shim", Duration::from_secs(15), || {
        Ok(pids_of_cmd(&format!("-id {id}"))?.is_empty())
    })?;
    Ok(())
}

#[test]
fn sigkilled_shim_leaves_nothing_containerd_2_userns() -> Result<()> {
    sigkill_of_the_shim_is_cleaned_up(Flavor::Containerd2, true)
}

#[test]
fn sigkilled_shim_leaves_nothing_containerd_16() -> Result<()> {
    sigkill_of_the_shim_is_cleaned_up(Flavor::Containerd16, false)
}
