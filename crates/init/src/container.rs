//! C2: the container's first process, from "in its namespaces and cgroup" to `execve`.
//!
//! Runs as root of the container's user namespace in a fresh mount namespace that is a copy of
//! the host's, with the rootfs already prepared at `plan.rootfs.target` (see [`crate::create`]).
//! The steps, in order:
//! 1. read what /sys/fs/cgroup will show (the container's cgroup paths as the host names them),
//!    then join or make the cgroup namespace;
//! 2. make every mount a slave, so nothing done here propagates back to the host (or shared,
//!    as rootfsPropagation says);
//! 3. bind the rootfs onto itself, so that it is a mount point `pivot_root` accepts;
//! 4. the spec's mounts, each mount point made and mounted on through fds resolved inside the
//!    rootfs ([`crate::mnt`]); the nodes of a fresh /dev ([`crate::dev`]);
//! 5. `pivot_root`, the old root made rslave and detached;
//! 6. sysctls, while /proc/sys is writable;
//! 7. masked and read-only paths, read-only root;
//! 8. hostname, the console;
//! 9. the process ([`become_process`], shared with exec): rlimits, seccomp (early without
//!    no_new_privs), groups, ids, capabilities, no_new_privs, umask, cwd;
//! 10. report ready, block until Start, close every fd but stdio, seccomp (late with
//!     no_new_privs), exec.

use crate::channel::Channel;
use crate::mnt::{
    create_mount_point, fd_path, mount_err, mount_id, open_mounted, open_root, remount_readonly,
    remount_with, sys_mount,
};
use crate::proto::{Sync, EXEC_STATUS_FD, START_FD};
use crate::{error_chain, InitError};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::mount::{umount2, MntFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root, sethostname, setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{Mount, PosixRlimit, Process};
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use usernsrs_runtime_core::cgroup_view::CgroupView;
use usernsrs_runtime_core::mount_options::{flags as mflags, parse_mount_options};
use usernsrs_runtime_core::{ContainerPlan, NamespaceKind, UserNamespace};
use usernsrs_sys::DetachedMount;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The idmapped volumes C1 prepared on the host side, by the index of their spec mount: C2
/// attaches each at its destination.
pub(crate) type Volumes = Vec<(usize, DetachedMount)>;

/// What `execve` gets: the program, argv and envp; and the seccomp filter still to install
/// right before it (a process with no_new_privs installs it last).
pub(crate) type ExecArgs = (
    CString,
    Vec<CString>,
    Vec<CString>,
    Option<usernsrs_runtime_core::seccomp::Filter>,
);

/// Entry point of C2. Never returns: it execs the container process or exits.
pub(crate) fn run(
    plan: &ContainerPlan,
    volumes: &Volumes,
    cgroup_ns: Option<OwnedFd>,
    mut chan: Channel,
) -> ! {
    let prepared = (|| -> Result<ExecArgs, InitError> {
        chan.expect_proceed()?;
        setup(plan, volumes, cgroup_ns, &mut chan)
    })();
    ready_then_exec(chan, prepared)
}

/// Step 10, shared by containers and exec'd processes: report ready (or the error), block until
/// Start, keep only stdio, exec. Never returns.
pub(crate) fn ready_then_exec(mut chan: Channel, prepared: Result<ExecArgs, InitError>) -> ! {
    let (path, args, env, late_seccomp) = match prepared {
        Ok(v) => v,
        Err(e) => {
            let _ = chan.send(&Sync::Error(error_chain(&e), e.kind()));
            // SAFETY: leave the forked child without running the helper's destructors.
            unsafe { libc::_exit(1) }
        }
    };
    if chan.send(&Sync::Ready).is_err() {
        // SAFETY: as above.
        unsafe { libc::_exit(1) }
    }
    drop(chan);

    // EOF without a byte means the shim gave up on us (Delete of a created container, or the
    // shim died): exit quietly.
    // SAFETY: START_FD is the start pipe's read end, handed to the helper by the shim (proto).
    let mut start = unsafe { fs::File::from_raw_fd(START_FD) };
    let mut byte = [0u8; 1];
    if !matches!(start.read(&mut byte), Ok(1)) {
        // SAFETY: as above.
        unsafe { libc::_exit(1) }
    }
    drop(start);
    // Only stdio and the close-on-exec status pipe reach exec (CVE-2024-21626 class leaks).
    let _ = fcntl(
        // SAFETY: EXEC_STATUS_FD is the status pipe's write end (proto), open in this process.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(EXEC_STATUS_FD) },
        FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC),
    );
    close_fds_from(EXEC_STATUS_FD + 1);
    if let Err(e) = late_seccomp
        .as_ref()
        .map_or(Ok(()), crate::seccomp::install)
    {
        // SAFETY: as above; EXEC_STATUS_FD is still ours.
        let mut status = unsafe { fs::File::from_raw_fd(EXEC_STATUS_FD) };
        let _ = status.write_all(error_chain(&e).as_bytes());
        // SAFETY: as above.
        unsafe { libc::_exit(127) }
    }
    let err = nix::unistd::execve(&path, &args, &env).err();
    let msg = format!(
        "exec {:?}: {}",
        path,
        err.map(|e| std::io::Error::from(e).to_string())
            .unwrap_or_default()
    );
    // SAFETY: as above; EXEC_STATUS_FD is still ours.
    let mut status = unsafe { fs::File::from_raw_fd(EXEC_STATUS_FD) };
    let _ = status.write_all(msg.as_bytes());
    // SAFETY: as above.
    unsafe { libc::_exit(127) }
}

/// Closes every fd from `first` up: `close_range(2)` (Linux 5.9+), else a walk of
/// /proc/self/fd.
fn close_fds_from(first: i32) {
    let Ok(first) = u32::try_from(first) else {
        return;
    };
    // SAFETY: close_range only closes this process's descriptors from `first` up; none of them
    // is used after this point (the caller execs next).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if ret == 0 {
        return;
    }
    let fds: Vec<i32> = fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&fd| u32::try_from(fd).is_ok_and(|fd| fd >= first))
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        // SAFETY: closing descriptors this process owns; none is used after this point
        // (the directory fd read_dir used is already closed, so EBADF at worst).
        unsafe { libc::close(fd) };
    }
}

fn fail(msg: impl Into<String>) -> InitError {
    InitError::Container(msg.into())
}

/// Steps 1 to 9. Returns what to exec.
fn setup(
    plan: &ContainerPlan,
    volumes: &Volumes,
    cgroup_ns: Option<OwnedFd>,
    chan: &mut Channel,
) -> Result<ExecArgs, InitError> {
    let spec = &plan.spec;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or(fail("spec has no linux section"))?;
    let root = plan.rootfs.target.as_path();

    // Step 1. What /sys/fs/cgroup will show, read while the container's cgroup paths are still the
    // host's names for them (inside the cgroup namespace they are all "/").
    let wants_cgroupfs = spec
        .mounts()
        .iter()
        .flatten()
        .any(|m| matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2")));
    let cgroup_view = if wants_cgroupfs {
        Some(crate::cgroupfs::read_view()?)
    } else {
        None
    };

    // The cgroup namespace, now that we are in the container's cgroup (a joined one was
    // opened by C1 while it was still host root).
    if let Some(ns) = plan
        .namespaces
        .iter()
        .find(|n| n.kind == NamespaceKind::Cgroup)
    {
        match (&ns.path, &cgroup_ns) {
            (Some(p), Some(fd)) => setns(fd.as_fd(), CloneFlags::CLONE_NEWCGROUP).map_err(
                InitError::sys(format!("join cgroup namespace {}", p.display())),
            )?,
            _ => unshare(CloneFlags::CLONE_NEWCGROUP)
                .map_err(InitError::sys("unshare cgroup namespace"))?,
        }
    }
    drop(cgroup_ns);

    // Step 2.
    let propagation = match linux.rootfs_propagation().as_deref() {
        Some("shared") | Some("rshared") => mflags::SHARED | mflags::REC,
        Some("private") | Some("rprivate") => mflags::PRIVATE | mflags::REC,
        Some("unbindable") | Some("runbindable") => mflags::UNBINDABLE | mflags::REC,
        _ => mflags::SLAVE | mflags::REC,
    };
    sys_mount(None, Path::new("/"), None, propagation, None)
        .map_err(mount_err("propagation of /", Path::new("/")))?;

    // Step 3. pivot_root refuses a new root, or a parent of it, with shared propagation
    // (rootfsPropagation "rshared", which CRI asks for with Bidirectional volumes): the mount
    // holding the rootfs is made private first, then the bind of it is private too.
    let holder = mount_point_of(root)?;
    sys_mount(None, &holder, None, mflags::PRIVATE, None).map_err(mount_err(
        "private propagation of the rootfs mount",
        &holder,
    ))?;
    sys_mount(Some(root), root, None, mflags::BIND | mflags::REC, None)
        .map_err(mount_err("rootfs onto itself", root))?;

    // Step 4.
    let root_fd: OwnedFd = fs::File::open(root)
        .map_err(InitError::io(format!("open rootfs {}", root.display())))?
        .into();
    // The mount the spec's last /dev mount made, to check nothing covered it since.
    let mut dev_mount = None;
    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        let volume = volumes
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, tree)| tree);
        mount_one(plan, &root_fd, m, volume, cgroup_view.as_ref())?;
        if usernsrs_runtime_core::dev_nodes::is_dev(m.destination()) {
            dev_mount = Some(mount_id(&open_mounted(&root_fd, Path::new("/dev"), true)?)?);
        }
    }
    // Only a /dev of its own gets nodes (see runtime-core's dev_nodes): a bound /dev is its
    // source's, which may be the host's. A later mount that reached /dev through a symlink in
    // the image (a bind on /devlink -> /dev) would make it someone else's too.
    if !plan.dev_nodes.is_empty() {
        let now = mount_id(&open_mounted(&root_fd, Path::new("/dev"), true)?)?;
        if dev_mount != Some(now) {
            return Err(fail(
                "refusing to make device nodes: a later mount covered the spec's /dev (a \
                 destination reaching /dev through a symlink in the rootfs?)",
            ));
        }
        let in_user_ns = plan.user_namespace != UserNamespace::Host;
        crate::dev::populate(&root_fd, &plan.dev_nodes, in_user_ns)?;
    }

    // Step 5.
    // The old root is held by fd so that, after pivot_root stacks it on the new root, "." can
    // name it and nothing else: the path "." from the new root does not reliably reach the
    // mount stacked on it, and making the NEW root's tree rslave would cut its volumes from
    // their host peers (critest's bidirectional propagation failed that way).
    let old_root = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(InitError::sys("open the old root"))?;
    chdir(root).map_err(InitError::sys(format!("chdir {}", root.display())))?;
    pivot_root(".", ".").map_err(InitError::sys("pivot_root"))?;
    nix::unistd::fchdir(&old_root).map_err(InitError::sys("fchdir to the old root"))?;
    drop(old_root);
    // With rootfsPropagation shared the old root is still a peer of the host's mounts, and
    // detaching it would propagate the unmounts to the host. Made a recursive slave first, its
    // removal stays in this namespace (runc does the same).
    sys_mount(
        None,
        Path::new("."),
        None,
        libc::MS_SLAVE | libc::MS_REC,
        None,
    )
    .map_err(mount_err("make the old root rslave", Path::new(".")))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(InitError::sys("detach the old root"))?;
    chdir("/").map_err(InitError::sys("chdir /"))?;
    if linux.rootfs_propagation().is_some() {
        sys_mount(None, Path::new("/"), None, propagation, None)
            .map_err(mount_err("rootfsPropagation of /", Path::new("/")))?;
    }

    // Step 6. Sysctls, while /proc/sys is still writable (step 7 makes it read-only).
    for (key, value) in linux.sysctl().iter().flatten() {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        fs::write(&path, value).map_err(InitError::io(format!("sysctl {key}={value}")))?;
    }

    // Step 7.
    for p in linux.masked_paths().iter().flatten() {
        mask_path(Path::new(p))?;
    }
    for p in linux.readonly_paths().iter().flatten() {
        readonly_path(Path::new(p))?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        remount_readonly(Path::new("/"))?;
    }

    // Step 8.
    let new_uts = plan
        .namespaces
        .iter()
        .any(|n| n.kind == NamespaceKind::Uts && n.path.is_none());
    if let Some(h) = spec.hostname().as_ref().filter(|h| !h.is_empty()) {
        if !new_uts {
            return Err(fail(
                "hostname is set but the container has no new uts namespace",
            ));
        }
        sethostname(h).map_err(InitError::sys(format!("set hostname {h}")))?;
    }
    let process = spec.process().as_ref().ok_or(fail("spec has no process"))?;
    open_console(process, chan)?;
    become_process(process, linux.seccomp().as_ref())
}

/// With `process.terminal`: a pty from the container's own devpts, its slave as the process's
/// controlling terminal and stdio, owned by the process's user; the master goes to the shim.
pub(crate) fn open_console(process: &Process, chan: &mut Channel) -> Result<(), InitError> {
    use nix::fcntl::{open, OFlag};
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use std::os::fd::AsRawFd;
    if process.terminal() != Some(true) {
        return Ok(());
    }
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(
        InitError::sys("open /dev/ptmx in the container (is /dev/pts mounted?)"),
    )?;
    grantpt(&master).map_err(InitError::sys("grantpt"))?;
    unlockpt(&master).map_err(InitError::sys("unlockpt"))?;
    let name = ptsname_r(&master).map_err(InitError::sys("ptsname"))?;
    let slave = open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(InitError::sys(format!("open {name}")))?;
    let user = process.user();
    nix::unistd::fchown(&slave, Some(Uid::from_raw(user.uid())), None)
        .map_err(InitError::sys(format!("give {name} to uid {}", user.uid())))?;
    if let Some(size) = process.console_size() {
        let ws = libc::winsize {
            ws_row: size.height() as u16,
            ws_col: size.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a `winsize` from the pointer, valid for the call.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    nix::unistd::setsid().map_err(InitError::sys("setsid"))?;
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal); `slave` is an open pty.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(InitError::Io {
            context: format!("make {name} the controlling terminal"),
            err: std::io::Error::last_os_error(),
        });
    }
    for target in 0..3 {
        // SAFETY: replacing this process's stdio, which nothing else here holds a handle to.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(InitError::Io {
                context: "dup2 the pty onto stdio".into(),
                err: std::io::Error::last_os_error(),
            });
        }
    }
    chan.send(&Sync::Console)?;
    chan.send_fd(master.as_raw_fd())?;
    Ok(())
}

/// Step 9, shared with exec'd processes: the process's limits, seccomp, groups, ids,
/// capabilities, no_new_privs, umask and cwd; returns what to exec.
pub(crate) fn become_process(
    process: &Process,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
) -> Result<ExecArgs, InitError> {
    for rl in process.rlimits().iter().flatten() {
        set_rlimit(rl)?;
    }
    // A seccomp filter needs no_new_privs or CAP_SYS_ADMIN: with no_new_privs it goes on last,
    // right before exec; without, now, while the process still has its capabilities, and
    // no_new_privs stays unset (runc's order; the profile must then allow the few syscalls
    // that follow, as with runc).
    let filter = seccomp.map(crate::seccomp::compile).transpose()?;
    let late_seccomp = match filter {
        Some(f) if process.no_new_privileges() != Some(true) => {
            crate::seccomp::install(&f)?;
            None
        }
        other => other,
    };

    // Step 9, the credentials.
    let user = process.user();
    let gids: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids).map_err(InitError::sys(format!("setgroups {gids:?}")))?;
    nix::sys::prctl::set_keepcaps(true)
        .map_err(InitError::sys("keep capabilities across setuid"))?;
    let bounding = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default();
    let bounding = to_caps(&bounding)?;
    for cap in caps::all() {
        if !bounding.contains(&cap) {
            caps::drop(None, caps::CapSet::Bounding, cap)
                .map_err(|e| fail(format!("drop bounding {cap}: {e}")))?;
        }
    }
    let gid = Gid::from_raw(user.gid());
    let uid = Uid::from_raw(user.uid());
    give_stdio_to(uid)?;
    setresgid(gid, gid, gid).map_err(InitError::sys(format!("setgid {gid}")))?;
    setresuid(uid, uid, uid).map_err(InitError::sys(format!("setuid {uid}")))?;
    if let Some(c) = process.capabilities() {
        let set =
            |which, list: &Option<oci_spec::runtime::Capabilities>| -> Result<(), InitError> {
                let wanted = to_caps(&list.clone().unwrap_or_default())?;
                caps::set(None, which, &wanted)
                    .map_err(|e| fail(format!("set {which:?} capabilities: {e}")))
            };
        // Each capset must leave effective within permitted, and inheritable can only grow
        // while CAP_SETPCAP is still effective: inheritable, then effective, then permitted.
        set(caps::CapSet::Inheritable, c.inheritable())?;
        set(caps::CapSet::Effective, c.effective())?;
        set(caps::CapSet::Permitted, c.permitted())?;
        if c.ambient().as_ref().is_some_and(|a| !a.is_empty()) {
            set(caps::CapSet::Ambient, c.ambient())?;
        }
    } else {
        caps::clear(None, caps::CapSet::Permitted)
            .map_err(|e| fail(format!("clear capabilities: {e}")))?;
    }
    if process.no_new_privileges() == Some(true) {
        nix::sys::prctl::set_no_new_privs().map_err(InitError::sys("set no_new_privs"))?;
    }
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
            mask as libc::mode_t,
        ));
    }
    let cwd = process.cwd();
    chdir(cwd.as_path()).map_err(InitError::sys(format!(
        "chdir to process.cwd {}",
        cwd.display()
    )))?;

    let (path, args, env) = exec_target(process)?;
    Ok((path, args, env, late_seccomp))
}

/// The mount point of the mount that holds `path` (the longest mount point above it).
fn mount_point_of(path: &Path) -> Result<PathBuf, InitError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(InitError::io("read /proc/self/mountinfo"))?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(usernsrs_runtime_core::mountinfo::unescape(p)))
        .filter(|p| path.starts_with(p))
        .max_by_key(|p| p.components().count())
        .unwrap_or_else(|| PathBuf::from("/")))
}

/// Gives the process's stdio to its user before it stops being root, as runc does
/// (`fixStdioPermissions`): reopening `/dev/stdout` (`/proc/self/fd/1`) checks the pipe's owner,
/// which the shim may have set to the mapped root (the runtime options' io_uid). Only the uid
/// changes; /dev/null and what the process cannot chown (an owner outside its user namespace,
/// EPERM; an unmapped gid, EINVAL; a read-only file, EROFS) are left as they are.
fn give_stdio_to(uid: Uid) -> Result<(), InitError> {
    use nix::sys::stat::{fstat, major, minor, SFlag};
    for fd in 0..=2 {
        // SAFETY: fds 0 to 2 are this process's stdio, open for its whole life; the borrow
        // lasts for the two calls below only.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let st = fstat(fd).map_err(InitError::sys("stat the process's stdio"))?;
        let is_char =
            SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFCHR;
        let is_null = is_char && major(st.st_rdev) == 1 && minor(st.st_rdev) == 3;
        if st.st_uid == uid.as_raw() || is_null {
            continue;
        }
        match nix::unistd::fchown(fd, Some(uid), None) {
            Ok(()) | Err(nix::Error::EPERM | nix::Error::EINVAL | nix::Error::EROFS) => {}
            Err(e) => {
                let n = std::os::fd::AsRawFd::as_raw_fd(&fd);
                return Err(InitError::sys(format!("give stdio fd {n} to uid {uid}"))(e));
            }
        }
    }
    Ok(())
}

fn to_caps(set: &oci_spec::runtime::Capabilities) -> Result<caps::CapsHashSet, InitError> {
    set.iter()
        .map(|c| {
            let name = c.to_string();
            let name = if name.starts_with("CAP_") {
                name
            } else {
                format!("CAP_{name}")
            };
            name.parse::<caps::Capability>()
                .map_err(|e| fail(format!("capability {name}: {e}")))
        })
        .collect()
}

fn set_rlimit(rl: &PosixRlimit) -> Result<(), InitError> {
    let name = format!("{:?}", rl.typ()).to_uppercase();
    let resource = match name.trim_start_matches("RLIMIT").trim_start_matches('_') {
        "CPU" => libc::RLIMIT_CPU,
        "FSIZE" => libc::RLIMIT_FSIZE,
        "DATA" => libc::RLIMIT_DATA,
        "STACK" => libc::RLIMIT_STACK,
        "CORE" => libc::RLIMIT_CORE,
        "RSS" => libc::RLIMIT_RSS,
        "NPROC" => libc::RLIMIT_NPROC,
        "NOFILE" => libc::RLIMIT_NOFILE,
        "MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "AS" => libc::RLIMIT_AS,
        "LOCKS" => libc::RLIMIT_LOCKS,
        "SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "NICE" => libc::RLIMIT_NICE,
        "RTPRIO" => libc::RLIMIT_RTPRIO,
        "RTTIME" => libc::RLIMIT_RTTIME,
        other => return Err(fail(format!("process.rlimits: unknown limit {other}"))),
    };
    let lim = libc::rlimit {
        rlim_cur: rl.soft(),
        rlim_max: rl.hard(),
    };
    // SAFETY: `lim` is a valid rlimit value on the stack; setrlimit only reads it.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(InitError::Io {
            context: format!("setrlimit {name} {}/{}", rl.soft(), rl.hard()),
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn mount_one(
    plan: &ContainerPlan,
    root_fd: &OwnedFd,
    m: &Mount,
    volume: Option<&DetachedMount>,
    cgroup_view: Option<&CgroupView>,
) -> Result<(), InitError> {
    let dest = m.destination().as_path();
    let typ = m.typ().as_deref().unwrap_or("");
    // procfs, sysfs and friends must land where they are named: an image whose /proc is a
    // symlink would otherwise get them elsewhere and keep the real path under its control
    // (CVE-2019-16884, CVE-2019-19921).
    let no_symlinks = matches!(
        typ,
        "proc" | "sysfs" | "cgroup" | "cgroup2" | "devpts" | "mqueue"
    );
    let opts = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
    let is_bind = opts.is_bind() || typ == "bind";
    let bind_source = if is_bind && volume.is_none() {
        let src = m
            .source()
            .as_deref()
            .ok_or(fail(format!("bind mount {} has no source", dest.display())))?;
        Some(if src.is_absolute() {
            src.to_path_buf()
        } else {
            plan.bundle.join(src)
        })
    } else {
        None
    };
    let is_dir = match (volume, &bind_source) {
        (Some(tree), _) => tree
            .is_dir()
            .map_err(InitError::io(format!("stat source of {}", dest.display())))?,
        (None, Some(src)) => fs::metadata(src)
            .map_err(InitError::io(format!(
                "bind mount source {} for {}",
                src.display(),
                dest.display()
            )))?
            .is_dir(),
        (None, None) => true,
    };
    let target = mount_point(root_fd, dest, typ, is_dir, no_symlinks)?;
    let at = fd_path(&target);
    // What is mounted at the destination now, for the steps that act on the new mount.
    let mounted = || {
        open_mounted(root_fd, dest, no_symlinks).map(|fd| {
            let path = fd_path(&fd);
            (fd, path)
        })
    };

    if let Some(tree) = volume {
        tree.attach_at(target.as_fd())
            .map_err(|e| InitError::Mount {
                what: format!(
                    "id-mapped {}",
                    m.source().as_deref().unwrap_or(Path::new("")).display()
                ),
                target: dest.to_path_buf(),
                err: e,
            })?;
    } else if let Some(src) = &bind_source {
        let rec = opts.flags & mflags::REC;
        sys_mount(Some(src), &at, None, mflags::BIND | rec, None)
            .map_err(mount_err(&format!("bind {}", src.display()), dest))?;
        let extra = opts.flags & !(mflags::BIND | mflags::REC | mflags::REMOUNT);
        if extra != 0 {
            let (_fd, now) = mounted()?;
            remount_with(&now, extra)?;
        }
    } else if let ("cgroup" | "cgroup2", Some(view)) = (typ, cgroup_view) {
        let in_cgroup_ns = plan
            .namespaces
            .iter()
            .any(|n| n.kind == NamespaceKind::Cgroup);
        crate::cgroupfs::mount(root_fd, dest, typ, opts.flags, view, in_cgroup_ns)?;
    } else {
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        let result = sys_mount(Some(&src), &at, Some(typ), opts.flags, data);
        match (typ, result) {
            (_, Ok(())) => {}
            // Without a network namespace of our own the kernel refuses a new sysfs in a user
            // namespace; the host's, bound read-only, is what runc gives too.
            ("sysfs", Err(nix::Error::EPERM)) | ("mqueue", Err(nix::Error::EPERM)) => {
                let host = if typ == "sysfs" {
                    "/sys"
                } else {
                    "/dev/mqueue"
                };
                sys_mount(
                    Some(Path::new(host)),
                    &at,
                    None,
                    mflags::BIND | mflags::REC,
                    None,
                )
                .map_err(mount_err(&format!("bind {host}"), dest))?;
                // The host's submounts come along (/sys/fs/cgroup, /sys/kernel/security, ...):
                // every one of them read-only too, with the spec's nosuid, nodev, noexec.
                let (bound, _) = mounted()?;
                use usernsrs_runtime_core::mount_options::attrs;
                let set = [
                    (mflags::NOSUID, attrs::NOSUID),
                    (mflags::NODEV, attrs::NODEV),
                    (mflags::NOEXEC, attrs::NOEXEC),
                ]
                .iter()
                .filter(|(flag, _)| opts.flags & flag != 0)
                .fold(attrs::RDONLY, |acc, (_, attr)| acc | attr);
                let attrs = usernsrs_sys::MountAttrs {
                    set,
                    clear: 0,
                    propagation: 0,
                };
                usernsrs_sys::mount_api::set_attrs_at(bound.as_fd(), attrs, None, true).map_err(
                    |err| InitError::Mount {
                        what: format!("the host's {host}, read-only with its submounts"),
                        target: dest.to_path_buf(),
                        err,
                    },
                )?;
            }
            // devpts refuses gid=5 when gid 5 is not mapped in the user namespace.
            ("devpts", Err(nix::Error::EINVAL)) if opts.data.contains("gid=") => {
                let data: Vec<&str> = opts
                    .data
                    .split(',')
                    .filter(|o| !o.starts_with("gid="))
                    .collect();
                sys_mount(
                    Some(&src),
                    &at,
                    Some(typ),
                    opts.flags,
                    Some(&data.join(",")),
                )
                .map_err(mount_err("devpts without gid=", dest))?;
            }
            (_, Err(e)) => return Err(mount_err(&format!("{typ} {}", src.display()), dest)(e)),
        }
    }
    if !opts.propagation.is_empty() {
        let (_fd, now) = mounted()?;
        for p in &opts.propagation {
            sys_mount(None, &now, None, *p, None).map_err(mount_err("propagation", dest))?;
        }
    }
    apply_recursive(root_fd, m, &opts)
}

/// The mount point of `dest`, made if missing (see [`create_mount_point`]), with the errors a
/// user can act on: a symlink where procfs and the like go, a rootfs its root cannot write.
fn mount_point(
    root_fd: &OwnedFd,
    dest: &Path,
    typ: &str,
    is_dir: bool,
    no_symlinks: bool,
) -> Result<OwnedFd, InitError> {
    match create_mount_point(root_fd, dest, is_dir, no_symlinks) {
        Err(InitError::Io { err, .. })
            if no_symlinks && err.raw_os_error() == Some(libc::ELOOP) =>
        {
            Err(fail(format!(
                "refusing to mount {typ} on {}: the path goes through a symlink in the rootfs",
                dest.display()
            )))
        }
        Err(InitError::Io { context, err })
            if err.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Err(InitError::Io {
                context: format!(
                    "{context}: the container's root cannot write there because the rootfs is \
                     owned by a host id outside the mapping and not idmapped; create the mount \
                     point in the image, or let the shim idmap the rootfs (annotation \
                     usernsrs.io/rootfs-idmap)"
                ),
                err,
            })
        }
        other => other,
    }
}

/// The recursive options (`rro`, `rnosuid`, ...) on the mount at `m`'s destination and every
/// mount below it: `mount_setattr(AT_RECURSIVE)` through an fd of it, as runc does (Linux 5.12+).
fn apply_recursive(
    root_fd: &OwnedFd,
    m: &Mount,
    opts: &usernsrs_runtime_core::mount_options::MountOptions,
) -> Result<(), InitError> {
    if opts.recursive.is_empty() {
        return Ok(());
    }
    let fd = open_mounted(root_fd, m.destination(), false)?;
    let attrs = usernsrs_sys::MountAttrs {
        set: opts.recursive.set,
        clear: opts.recursive.clear,
        propagation: 0,
    };
    usernsrs_sys::mount_api::set_attrs_at(fd.as_fd(), attrs, None, true).map_err(|err| {
        InitError::Mount {
            what: "recursive options (rro, rnosuid, ...)".into(),
            target: m.destination().clone(),
            err,
        }
    })
}

fn mask_path(p: &Path) -> Result<(), InitError> {
    // What masks files is the container's /dev/null: it must be the device, not something the
    // image or a volume put there. The masked path is opened inside the container's root, and
    // mounted on through that fd.
    let null = crate::dev::open_null()?;
    let root = open_root()?;
    let target = match open_mounted(&root, p, false) {
        Ok(fd) => fd,
        Err(InitError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    let at = fd_path(&target);
    let md = fs::metadata(&at).map_err(InitError::io(format!("masked path {}", p.display())))?;
    if md.is_dir() {
        sys_mount(
            Some(Path::new("tmpfs")),
            &at,
            Some("tmpfs"),
            mflags::RDONLY,
            None,
        )
    } else {
        sys_mount(Some(&fd_path(&null)), &at, None, mflags::BIND, None)
    }
    .map_err(mount_err("mask", p))
}

/// A `linux.readonlyPaths` entry (after pivot_root): bound onto itself through an fd opened
/// inside the container's root, then made read-only with every mount below it
/// (`mount_setattr(AT_RECURSIVE)`: a submount, /proc/sys/fs/binfmt_misc say, stays no way in).
fn readonly_path(p: &Path) -> Result<(), InitError> {
    let root = open_root()?;
    let target = match open_mounted(&root, p, false) {
        Ok(fd) => fd,
        Err(InitError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    let at = fd_path(&target);
    sys_mount(Some(&at), &at, None, mflags::BIND | mflags::REC, None)
        .map_err(mount_err("read-only bind", p))?;
    let bound = open_mounted(&root, p, false)?;
    let attrs = usernsrs_sys::MountAttrs {
        set: usernsrs_runtime_core::mount_options::attrs::RDONLY,
        clear: 0,
        propagation: 0,
    };
    usernsrs_sys::mount_api::set_attrs_at(bound.as_fd(), attrs, None, true).map_err(|err| {
        InitError::Mount {
            what: "read-only (linux.readonlyPaths)".into(),
            target: p.to_path_buf(),
            err,
        }
    })
}

/// The program to exec, its argv and envp. A bare name is looked up in the container's PATH now,
/// so "not found" is a Create error, as with runc.
fn exec_target(process: &Process) -> Result<(CString, Vec<CString>, Vec<CString>), InitError> {
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let first = args.first().ok_or(fail("process.args is empty"))?;
    let cstr = |s: &str| CString::new(s).map_err(|_| fail(format!("{s:?} contains a NUL byte")));
    let path = if first.contains('/') {
        PathBuf::from(first)
    } else {
        let search = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        search
            .split(':')
            .map(|dir| Path::new(dir).join(first))
            .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file()))
            .ok_or_else(|| {
                fail(format!(
                    "exec {first:?}: executable file not found in PATH {search}"
                ))
            })?
    };
    if fs::metadata(&path).is_err() {
        return Err(fail(format!(
            "exec {}: no such file in the container",
            path.display()
        )));
    }
    Ok((
        cstr(&path.to_string_lossy())?,
        args.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
        env.iter().map(|e| cstr(e)).collect::<Result<_, _>>()?,
    ))
}
