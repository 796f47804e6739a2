//! The shim's own binary, out of a container's reach (CVE-2019-5736), against a private
//! containerd (1.6 and 2.4), with containers WITHOUT a user namespace, whose root is host root:
//!
//! 1. The `#!/proc/self/exe` trick. A container's entrypoint (and an exec'd process) is a script
//!    whose interpreter is `/proc/self/exe`, so the kernel runs, as the container's process,
//!    whatever binary the shim stage that execs it runs; `LD_PRELOAD` puts a probe library of
//!    the image into that process. The probe reports what its `/proc/self/exe` is and whether
//!    it can be opened for writing (a write, if the open succeeds, puts back the byte already
//!    there). It must not be the host's binary (device and inode compared from the host), the
//!    write must fail (EROFS through the overlay; ETXTBSY or EPERM for the memfd), and the host
//!    binary's bytes are the same before and after.
//!    Both seals: the read-only overlayfs (the default) and the memfd copy
//!    (`USERNSRS_EXE_SEAL=memfd` in the shim's environment), recognised by the filesystem the
//!    probe's `/proc/self/exe` is on, and for the memfd its seals.
//! 2. A shim stage while it runs in a container's namespaces: a container created straight on
//!    the shim's task API (Create, no Start) whose init joins the pid namespace of a running
//!    container waits for Start as a shim stage, with its final credentials. From inside the
//!    running container, its root (same capabilities, no CAP_SYS_PTRACE) sees that process in
//!    /proc but cannot open its `exe` or `environ` or read its `fd/` links (the stage is non-dumpable), while the
//!    running container's own init, an ordinary process, stays readable; from the host, the
//!    waiting stage's executable is the sealed view, not the host binary.
//!
//! Needs root, the shim (`$USERNSRS_SHIM` or a build), the peers (`hack/install-peers.sh`) and
//! a C compiler (`cc`, for the probe library). Nothing here skips. Run with
//! `cargo test -p usernsrs-integration --test exeseal -- --test-threads=1`.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, ensure, Context, Result};
use containerd_shim_protos::api::{CreateTaskRequest, DeleteRequest, KillRequest, WaitRequest};
use containerd_shim_protos::shim_sync::TaskClient;
use containerd_shim_protos::ttrpc::context::{self as ttrpc_context, Context as TtrpcContext};
use serde_json::{json, Value};
use usernsrs_integration::{shim_binary, Flavor};

use common::{lines, run_tool, unique_id, unpack_busybox, Env};

/// The containerd namespace of this target.
const NS: &str = "exeseal-test";

/// The shim's environment variable that picks its seal (see shim/src/helper_exe.rs).
const SEAL_ENV: &str = "USERNSRS_EXE_SEAL";

/// `statfs` magic numbers of the filesystems a sealed binary lives on.
const OVERLAYFS_MAGIC: u64 = 0x794c_7630;
/// memfds are shmem files: tmpfs's magic.
const TMPFS_MAGIC: u64 = 0x0102_1994;
/// F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE.
const BASE_SEALS: i64 = 0x1 | 0x2 | 0x4 | 0x8;

/// The probe library: its constructor runs before the shim's `main` when the shim binary is the
/// interpreter of a `#!/proc/self/exe` script, prints one `probe` line and ends the process.
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

__attribute__((constructor)) static void probe(void) {
    char line[512];
    struct stat st;
    struct statfs sf;
    unsigned char first = 0;
    int n, seals, w, open_err, write_err = -1;
    int r = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (r < 0) {
        n = snprintf(line, sizeof line, "probe cannot read /proc/self/exe: errno %d\n", errno);
        write(1, line, n);
        _exit(3);
    }
    if (fstat(r, &st) != 0 || fstatfs(r, &sf) != 0 || pread(r, &first, 1, 0) != 1) {
        n = snprintf(line, sizeof line, "probe cannot stat /proc/self/exe: errno %d\n", errno);
        write(1, line, n);
        _exit(3);
    }
    seals = fcntl(r, F_GET_SEALS);
    /* No O_TRUNC: the open itself changes nothing; a write puts back the byte at offset 0. */
    w = open("/proc/self/exe", O_WRONLY | O_CLOEXEC);
    open_err = w < 0 ? errno : 0;
    if (w >= 0) {
        write_err = pwrite(w, &first, 1, 0) == 1 ? 0 : errno;
        close(w);
    }
    n = snprintf(line, sizeof line,
                 "probe dev %llu ino %llu fstype %lu seals %d open-write %d write %d\n",
                 (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
                 (unsigned long)sf.f_type, seals, open_err, write_err);
    write(1, line, n);
    _exit(0);
}
"#;

/// What the probe saw.
#[derive(Debug)]
struct Probe {
    dev: u64,
    ino: u64,
    fstype: u64,
    /// F_GET_SEALS, -1 where the file is not a memfd.
    seals: i64,
    /// errno of `open(O_WRONLY)`, 0 if it opened.
    open_write: i32,
    /// errno of the write after an open that succeeded, 0 if it wrote, -1 if not tried.
    write: i32,
}

impl Probe {
    fn parse(output: &str) -> Result<Probe> {
        let line = output
            .lines()
            .find(|l| l.starts_with("probe "))
            .ok_or_else(|| anyhow!("no probe line in the output:\n{output}"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let field = |key: &str| -> Result<i64> {
            let at = words
                .iter()
                .position(|w| *w == key)
                .ok_or_else(|| anyhow!("no {key} in {line:?}"))?;
            words
                .get(at + 1)
                .ok_or_else(|| anyhow!("no value for {key} in {line:?}"))?
                .parse()
                .with_context(|| format!("bad {key} in {line:?}"))
        };
        Ok(Probe {
            dev: field("dev")? as u64,
            ino: field("ino")? as u64,
            fstype: field("fstype")? as u64,
            seals: field("seals")?,
            open_write: field("open-write")? as i32,
            write: field("write")? as i32,
        })
    }
}

/// The seal a shim is expected to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seal {
    Overlay,
    Memfd,
}

/// The shim binary on the host: where it is, its identity and a digest of its bytes.
struct HostBinary {
    path: PathBuf,
    dev: u64,
    ino: u64,
    digest: String,
}

impl HostBinary {
    fn of_shim() -> Result<Self> {
        let path = shim_binary()?.canonicalize()?;
        let md = fs::metadata(&path)?;
        Ok(HostBinary {
            digest: sha256(&path)?,
            dev: md.dev(),
            ino: md.ino(),
            path,
        })
    }

    fn assert_unchanged(&self, after: &str) -> Result<()> {
        let now = sha256(&self.path)?;
        ensure!(
            now == self.digest,
            "after {after}, the host binary {} changed: sha256 {} before, {now} after",
            self.path.display(),
            self.digest
        );
        Ok(())
    }
}

fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .with_context(|| format!("cannot run sha256sum {}", path.display()))?;
    ensure!(out.status.success(), "sha256sum {} failed", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("sha256sum printed nothing for {}", path.display()))
}

/// Compiles [`PROBE_C`] into `dir/probe.so`.
fn build_probe(dir: &Path) -> Result<PathBuf> {
    let source = dir.join("probe.c");
    let library = dir.join("probe.so");
    fs::write(&source, PROBE_C)?;
    run_tool(
        Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&library)
            .arg(&source),
    )
    .context("the probe library needs a C compiler (cc)")?;
    Ok(library)
}

/// The shared libraries `ldd` lists for `binary`, as absolute host paths.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("cannot run ldd {}", binary.display()))?;
    ensure!(
        out.status.success(),
        "ldd {} failed: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let libs: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    ensure!(
        !libs.is_empty(),
        "{} is not dynamically linked (ldd: {text}): the LD_PRELOAD probe cannot run in it",
        binary.display()
    );
    Ok(libs)
}

/// Copies the host file `path` to the same path under `rootfs`, refusing a symlink on the way
/// (it could lead out of the rootfs).
fn copy_into(rootfs: &Path, path: &Path) -> Result<()> {
    let relative = path.strip_prefix("/")?;
    let dest = rootfs.join(relative);
    let mut at = rootfs.to_path_buf();
    for part in relative.parent().into_iter().flat_map(Path::components) {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(md) if md.file_type().is_symlink() => {
                bail!("{} in the test rootfs is a symlink", at.display())
            }
            Ok(_) => {}
            Err(_) => fs::create_dir(&at).with_context(|| format!("mkdir {}", at.display()))?,
        }
    }
    fs::copy(path, &dest)
        .with_context(|| format!("copy {} to {}", path.display(), dest.display()))?;
    Ok(())
}

/// A busybox rootfs at `env.dir()/name` with what the probe needs: the shim's shared libraries
/// (the shim binary runs in it as an interpreter), `/probe.so` and the script `/entry`.
fn probe_rootfs(env: &Env, name: &str, probe: &Path) -> Result<PathBuf> {
    let rootfs = env.dir().join(name);
    unpack_busybox(&rootfs)?;
    for lib in shared_libraries(&shim_binary()?)? {
        copy_into(&rootfs, &lib)?;
    }
    fs::copy(probe, rootfs.join("probe.so"))?;
    let entry = rootfs.join("entry");
    fs::write(&entry, "#!/proc/self/exe\n")?;
    fs::set_permissions(&entry, fs::Permissions::from_mode(0o755))?;
    Ok(rootfs)
}

/// A spec without a user namespace running `args` from `rootfs`, with the probe preloaded into
/// every dynamically linked process (busybox is static and ignores it).
fn probe_spec(env: &Env, id: &str, rootfs: &Path, args: &[&str]) -> Result<Value> {
    let mut spec = env.base_spec(id, rootfs, "true")?;
    ensure!(
        !spec["linux"]["namespaces"]
            .as_array()
            .is_some_and(|ns| ns.iter().any(|n| n["type"] == "user")),
        "`ctr oci spec` has a user namespace; these containers must not"
    );
    spec["process"]["args"] = json!(args);
    let mut environment = spec["process"]["env"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![json!("PATH=/bin")]);
    environment.push(json!("LD_PRELOAD=/probe.so"));
    spec["process"]["env"] = json!(environment);
    Ok(spec)
}

/// Checks what the probe saw in `what` against the host binary and the expected seal.
fn check_probe(what: &str, output: &str, host: &HostBinary, seal: Seal) -> Result<()> {
    let p = Probe::parse(output).with_context(|| what.to_owned())?;
    ensure!(
        (p.dev, p.ino) != (host.dev, host.ino),
        "{what}: /proc/self/exe of the process is the host binary {} ({}:{}): {p:?}",
        host.path.display(),
        host.dev,
        host.ino
    );
    match seal {
        Seal::Overlay => ensure!(
            p.fstype == OVERLAYFS_MAGIC,
            "{what}: /proc/self/exe is on filesystem {:#x}, not overlayfs ({OVERLAYFS_MAGIC:#x}): \
             {p:?}",
            p.fstype
        ),
        Seal::Memfd => ensure!(
            p.fstype == TMPFS_MAGIC && p.seals >= 0 && p.seals & BASE_SEALS == BASE_SEALS,
            "{what}: /proc/self/exe is not a sealed memfd (filesystem {:#x}, seals {:#x}; a \
             memfd is on {TMPFS_MAGIC:#x} with seals {BASE_SEALS:#x}): {p:?}",
            p.fstype,
            p.seals
        ),
    }
    let refused = [libc::EROFS, libc::ETXTBSY, libc::EPERM, libc::EACCES];
    let write_failed = if p.open_write == 0 {
        // Opens of a memfd are not sealed (kernels without ETXTBSY for exec'd files let the
        // open through): its write must fail.
        seal == Seal::Memfd && p.write == libc::EPERM
    } else {
        refused.contains(&p.open_write)
    };
    ensure!(
        write_failed,
        "{what}: writing /proc/self/exe was not refused (open errno {}, write errno {}): {p:?}",
        p.open_write,
        p.write
    );
    if seal == Seal::Overlay {
        ensure!(
            p.open_write == libc::EROFS,
            "{what}: opening the overlay view for writing gave errno {}, not EROFS: {p:?}",
            p.open_write
        );
    }
    eprintln!("{what}: {p:?}");
    Ok(())
}

/// Group 1 on `flavor`, with the shim's environment `shim_env`, expecting `seal`.
fn script_interpreter_is_sealed(
    flavor: Flavor,
    shim_env: &[(&str, &str)],
    seal: Seal,
) -> Result<()> {
    let env = Env::start_with_env(flavor, NS, shim_env)?;
    let host = HostBinary::of_shim()?;
    let probe = build_probe(env.dir())?;
    let rootfs = probe_rootfs(&env, "rootfs-probe", &probe)?;

    // The container's init execs the script: the stage that does it is C2, the shim's code.
    let id = unique_id("seal-init");
    let spec = probe_spec(&env, &id, &rootfs, &["/entry"])?;
    let run = env.create_and_start(&id, &spec)?;
    ensure!(
        run.status.success(),
        "{flavor}: the probe container failed: {}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    check_probe(
        &format!("{flavor}: the init's entrypoint"),
        &run.stdout,
        &host,
        seal,
    )?;
    host.assert_unchanged("the init's probe")?;

    // An exec'd process: the stage that execs it is E2, also the shim's code.
    let id = unique_id("seal-exec");
    let spec = probe_spec(&env, &id, &rootfs, &["/bin/sleep", "1000"])?;
    env.start_detached(&id, &spec)?;
    let exec = env.ctr(&["task", "exec", "--exec-id", "probe", &id, "/entry"]);
    let killed = env.kill_and_remove(&id);
    let exec = exec?;
    ensure!(
        exec.status.success(),
        "{flavor}: the probe exec failed: {}\nstdout:\n{}\nstderr:\n{}",
        exec.status,
        String::from_utf8_lossy(&exec.stdout),
        String::from_utf8_lossy(&exec.stderr)
    );
    check_probe(
        &format!("{flavor}: an exec'd process"),
        &String::from_utf8_lossy(&exec.stdout),
        &host,
        seal,
    )?;
    killed?;
    host.assert_unchanged("the exec's probe")?;
    env.assert_no_shim("the probes")
}

#[test]
fn containerd2_script_interpreter_is_the_overlay_view_not_the_host_binary() -> Result<()> {
    script_interpreter_is_sealed(Flavor::Containerd2, &[], Seal::Overlay)
}

#[test]
fn containerd16_script_interpreter_is_the_overlay_view_not_the_host_binary() -> Result<()> {
    script_interpreter_is_sealed(Flavor::Containerd16, &[], Seal::Overlay)
}

#[test]
fn containerd2_script_interpreter_is_a_sealed_memfd_when_asked() -> Result<()> {
    script_interpreter_is_sealed(Flavor::Containerd2, &[(SEAL_ENV, "memfd")], Seal::Memfd)
}

// ---------------------------------------------------------------------------------------------
// 2. A shim stage in a container's namespaces is not dumpable.
// ---------------------------------------------------------------------------------------------

fn rpc_context() -> TtrpcContext {
    let mut ctx = ttrpc_context::with_timeout(30 * 1_000_000_000);
    ctx.add("containerd-namespace".to_owned(), NS.to_owned());
    ctx
}

/// The pid of host process `pid` in the innermost pid namespace it is in (`NSpid`).
fn inner_pid(pid: u32) -> Result<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .ok_or_else(|| anyhow!("no NSpid in /proc/{pid}/status"))?
        .parse()
        .context("bad NSpid")
}

/// Kills, waits for and deletes container `id` created straight on the shim.
fn remove_on_shim(shim: &TaskClient, id: &str) -> Result<()> {
    shim.kill(
        rpc_context(),
        &KillRequest {
            id: id.to_owned(),
            signal: libc::SIGKILL as u32,
            ..Default::default()
        },
    )
    .with_context(|| format!("Kill {id}"))?;
    shim.wait(
        rpc_context(),
        &WaitRequest {
            id: id.to_owned(),
            ..Default::default()
        },
    )
    .with_context(|| format!("Wait {id}"))?;
    shim.delete(
        rpc_context(),
        &DeleteRequest {
            id: id.to_owned(),
            ..Default::default()
        },
    )
    .with_context(|| format!("Delete {id}"))?;
    Ok(())
}

#[test]
fn containerd2_waiting_shim_stage_is_not_dumpable_from_the_container() -> Result<()> {
    let env = Env::start_in(Flavor::Containerd2, NS)?;
    let host = HostBinary::of_shim()?;

    // The container whose root looks: an ordinary one, running.
    let runner = unique_id("runner");
    let rootfs = env.dir().join("rootfs-runner");
    unpack_busybox(&rootfs)?;
    let mut spec = env.base_spec(&runner, &rootfs, "true")?;
    spec["process"]["args"] = json!(["/bin/sleep", "1000"]);
    let runner_pid = env.start_detached(&runner, &spec)?;

    // The stage: a container created on the same shim, joining the runner's pid namespace,
    // not started. Its init (C2) has its final credentials and waits for Start.
    let waiting = unique_id("waiting");
    let bundle = env.dir().join(format!("bundle-{waiting}"));
    fs::create_dir(&bundle)?;
    let rootfs = bundle.join("rootfs");
    unpack_busybox(&rootfs)?;
    let mut spec = env.base_spec(&waiting, &rootfs, "echo must-not-run")?;
    let namespaces = spec["linux"]["namespaces"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("spec has no linux.namespaces"))?;
    let pid_ns = namespaces
        .iter_mut()
        .find(|n| n["type"] == "pid")
        .ok_or_else(|| anyhow!("`ctr oci spec` has no pid namespace"))?;
    pid_ns["path"] = json!(format!("/proc/{runner_pid}/ns/pid"));
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )?;
    let shim = env.shim_client(&runner)?;
    let created = shim
        .create(
            rpc_context(),
            &CreateTaskRequest {
                id: waiting.clone(),
                bundle: bundle.to_string_lossy().into_owned(),
                ..Default::default()
            },
        )
        .context("Create on the shim")?;

    let looked = (|| -> Result<()> {
        let stage = created.pid;
        // From the host: the stage runs the sealed view, not the host binary.
        let exe = fs::metadata(format!("/proc/{stage}/exe"))?;
        let sealed = (exe.dev(), exe.ino()) != (host.dev, host.ino);
        // From inside the runner, as its root.
        let inside = inner_pid(stage)?;
        let script = format!(
            "p=/proc/{inside}; test -d $p && echo visible; \
             cat /proc/1/exe > /dev/null && readlink /proc/1/fd/0 > /dev/null && \
               echo init-readable; \
             cat $p/exe > /dev/null 2>&1 && echo exe-readable || echo exe-refused; \
             readlink $p/fd/0 > /dev/null 2>&1 && echo fd-readable || echo fd-refused; \
             cat $p/environ > /dev/null 2>&1 && echo environ-readable || echo environ-refused"
        );
        let out = lines(&env.ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            "look",
            &runner,
            "sh",
            "-c",
            &script,
        ])?);
        let refused = out
            == [
                "visible",
                "init-readable",
                "exe-refused",
                "fd-refused",
                "environ-refused",
            ];
        ensure!(
            sealed && refused,
            "the waiting stage (pid {stage} on the host, {inside} in the runner): {}; the \
             runner's root looking at it saw {out:?}{}",
            if sealed {
                "runs the sealed view".to_owned()
            } else {
                format!("runs the host binary {}", host.path.display())
            },
            if refused {
                ""
            } else {
                " (expected visible, init-readable, exe-refused, fd-refused, environ-refused)"
            }
        );
        Ok(())
    })();
    let removed = remove_on_shim(&shim, &waiting);
    let runner_removed = env.kill_and_remove(&runner);
    looked?;
    removed?;
    runner_removed?;
    host.assert_unchanged("the look at the waiting stage")?;
    env.assert_no_shim("the waiting stage")
}
