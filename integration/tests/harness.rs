//! Tests of the harness itself, against both containerd flavors with the default runc runtime:
//! a private containerd starts, imports the busybox image, runs a container that sees the
//! image's owners, and leaves no process or mount behind once dropped.
//!
//! Needs root; run with `cargo test -p usernsrs-integration --test harness -- --test-threads=1`.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{ensure, Result};
use usernsrs_integration::{
    mounts_under, process_alive, require_root, Containerd, Flavor, BUSYBOX_IMAGE,
};

/// A container id unique across test processes and within this one.
fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn runs_busybox_and_cleans_up(flavor: Flavor) -> Result<()> {
    require_root()?;
    let containerd = Containerd::start_runc_only(flavor)?;
    let (dir, pid) = (containerd.dir().to_path_buf(), containerd.pid());
    ensure!(
        process_alive(pid),
        "{flavor}: containerd pid {pid} is not running after start"
    );

    let image = containerd.import_busybox("harness")?;
    assert_eq!(image, BUSYBOX_IMAGE);

    let id = unique_id("harness");
    let fifo_dir = dir.join("fifo");
    let runc_root = dir.join("runc");
    let args = [
        "-n",
        "harness",
        "run",
        "--rm",
        "--fifo-dir",
        path_str(&fifo_dir)?,
        "--runc-root",
        path_str(&runc_root)?,
        &image,
        &id,
        "/bin/sh",
        "-c",
        "id -u; stat -c %u:%g /data/app-file",
    ];
    let stdout = containerd.ctr_ok(args)?;
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["0", "1000:1000"],
        "{flavor}: container output"
    );

    // A container left running must not survive the drop either.
    let id = unique_id("harness-detached");
    containerd.ctr_ok([
        "-n",
        "harness",
        "run",
        "-d",
        "--fifo-dir",
        path_str(&fifo_dir)?,
        "--runc-root",
        path_str(&runc_root)?,
        &image,
        &id,
        "sleep",
        "1000",
    ])?;
    ensure!(
        !mounts_under(&dir)?.is_empty(),
        "{flavor}: the running container's rootfs is not mounted under {}",
        dir.display()
    );

    drop(containerd);
    ensure!(
        !process_alive(pid),
        "{flavor}: containerd pid {pid} still runs after drop"
    );
    ensure!(
        !dir.exists(),
        "{flavor}: {} still exists after drop",
        dir.display()
    );
    let left: Vec<_> = usernsrs_integration::mountinfo_lines()?
        .into_iter()
        .filter(|line| line.contains(&*dir.to_string_lossy()))
        .collect();
    ensure!(
        left.is_empty(),
        "{flavor}: mounts left under {}: {left:#?}",
        dir.display()
    );
    let shims = usernsrs_integration::pids_of_cmd(&dir.join("containerd.sock").to_string_lossy())?;
    ensure!(
        shims.is_empty(),
        "{flavor}: shims of the dropped containerd still run: {shims:?}"
    );
    Ok(())
}

fn path_str(path: &std::path::Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", path.display()))
}

#[test]
fn containerd16_runs_busybox_and_cleans_up() -> Result<()> {
    runs_busybox_and_cleans_up(Flavor::Containerd16)
}

#[test]
fn containerd2_runs_busybox_and_cleans_up() -> Result<()> {
    runs_busybox_and_cleans_up(Flavor::Containerd2)
}

#[test]
fn start_without_root_is_an_error_not_a_skip() {
    // As root this only checks that require_root passes; the unprivileged path is the error
    // every other test returns, with its message asserted here when run without root.
    match require_root() {
        Ok(()) => assert!(nix::unistd::geteuid().is_root()),
        Err(e) => assert!(
            e.to_string().contains("need root"),
            "unexpected message: {e}"
        ),
    }
}
