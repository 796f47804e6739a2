//! The helper: a single-threaded process (the shim binary re-executed) that creates one
//! container and exits.
//!
//! Why a separate process: creating a container forks and changes process-wide state (cwd,
//! namespaces, credentials), which must never happen inside the shim's multi-threaded tokio
//! runtime; and idmapping a mount needs host privileges (`mount_setattr` wants CAP_SYS_ADMIN over
//! the filesystem's user namespace), so the rootfs is prepared here, on the host side, before the
//! container process enters anything.
//!
//! The sequence, with the process that runs each step:
//! 0. helper: become non-dumpable, which every stage forked from it inherits; it runs from the
//!    shim's sealed view of its binary (CVE-2019-5736), and so do C1 and C2 until C2's exec.
//! 1. helper: fork C1 (its stage-one child). The helper is a child subreaper, so that C1's own
//!    child stays the helper's to reap on rollback, and becomes the shim's once the helper exits.
//! 2. C1: create (`unshare`) or join (`setns`) the user namespace; say so.
//! 3. helper: write C1's `uid_map`/`gid_map` (new namespace), take a fd of the namespace, and
//!    prepare the rootfs with it: idmapped bind of `root.path`, idmapped lower layers under an
//!    overlay, or containerd's mounts as they are. All of it lands under the bundle.
//! 4. C1: become root of the namespace, join namespaces given by path, unshare the new ones, fork
//!    C2 (pid 1 of a new pid namespace), report its host pid, exit.
//! 5. helper: put C2 in its cgroup, set its OOM score from the host side, tell it to go on.
//! 6. C2: mounts, pivot_root, credentials ([`crate::container`]); report ready; block on the start
//!    pipe.
//! 7. helper: answer the shim with C2's pid and exit.
//!
//! Any failure rolls back what was done so far: C2 and C1 are killed and reaped, mounts made in
//! step 3 are detached, the cgroup is removed. Nothing is left behind.

use crate::cgroup::{Cgroup, Limits, CGROUP_ROOT};
use crate::channel::Channel;
use crate::container::Volumes;
use crate::overlay::{mount_over_idmapped_layers, mount_overlay_of, OverlayParts};
use crate::proto::{HelperReply, HelperRequest, Sync, CONTROL_FD};
use crate::{error_chain, InitError};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, setresgid, setresuid, ForkResult, Gid, Pid, Uid};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use usernsrs_runtime_core::mount_options::parse_mount_options;
use usernsrs_runtime_core::rootfs::common_parent;
use usernsrs_runtime_core::{
    ContainerPlan, IdmapWith, NamespaceKind, RootfsSource, UserMapping, UserNamespace,
};
use usernsrs_sys::DetachedMount;

/// Where the idmapped layers of an overlay rootfs are staged, under the bundle, while the
/// overlay is mounted (see [`crate::overlay`]).
const IDMAPPED_LAYERS_DIR: &str = "idmapped-layers";

/// Entry point of the helper subcommand. Never returns.
pub fn helper_main() -> ! {
    // SAFETY: the shim hands the helper its control socket as fd CONTROL_FD (see `proto`), and
    // nothing else in this process owns that fd.
    let mut control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    // Non-dumpable before anything else, inherited by every stage forked from here (C1, C2,
    // E1, E2): once a stage is in the container's namespaces, the container's root (without
    // CAP_SYS_PTRACE over the host) cannot open its /proc/<pid>/exe, fd/*, mem or environ.
    // The host side needs nothing of the kind: the helper writes C1's maps and reads its
    // namespaces as host root. The container's process gets its dumpable flag back from the
    // kernel at its own exec (unchanged credentials and a readable binary), as with runc.
    let request = nix::sys::prctl::set_dumpable(false)
        .map_err(InitError::sys("make the helper non-dumpable"))
        .and_then(|()| read_request(&mut control));
    let (reply, console) = match request.and_then(|req| match req {
        HelperRequest::Create(plan) => create(&plan),
        HelperRequest::Exec(plan) => crate::exec::exec(&plan),
    }) {
        Ok((pid, console)) => (
            HelperReply::Created {
                pid,
                console: console.is_some(),
            },
            console,
        ),
        Err(e) => (
            HelperReply::Failed {
                error: error_chain(&e),
                kind: e.kind(),
            },
            None,
        ),
    };
    // One line: the container process keeps a copy of nothing here (C1 closes the control fd),
    // but the shim reads up to the newline rather than relying on EOF.
    let line = serde_json::to_vec(&reply).map(|mut bytes| {
        bytes.push(b'\n');
        bytes
    });
    let sent = |bytes: &[u8]| match &console {
        Some(fd) => crate::send_fd(&control, bytes, std::os::fd::AsRawFd::as_raw_fd(fd)).is_ok(),
        None => (&control).write_all(bytes).is_ok(),
    };
    let code = match line {
        Ok(bytes) if sent(&bytes) => 0,
        _ => 1,
    };
    std::process::exit(code)
}

fn read_request(control: &mut UnixStream) -> Result<HelperRequest, InitError> {
    let mut bytes = Vec::new();
    control
        .read_to_end(&mut bytes)
        .map_err(InitError::io("read the helper request"))?;
    serde_json::from_slice(&bytes).map_err(InitError::json("decode the helper request"))
}

/// What to undo if creation fails part way.
#[derive(Default)]
struct Undo {
    c1: Option<Pid>,
    c2: Option<Pid>,
    mounts: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    /// Directories with content (the chown fallback's upper layer), removed whole once
    /// nothing is mounted below them.
    trees: Vec<PathBuf>,
    cgroup: Option<Cgroup>,
}

impl Undo {
    fn rollback(self) {
        for pid in [self.c2, self.c1].into_iter().flatten() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        for target in self.mounts.iter().rev() {
            let _ = umount2(target, MntFlags::MNT_DETACH);
        }
        for dir in self.dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
        for tree in &self.trees {
            let clear = crate::cleanup::unmount_under(tree).is_ok_and(|left| left.is_empty());
            if clear {
                let _ = fs::remove_dir_all(tree);
            }
        }
        if let Some(cg) = self.cgroup {
            let _ = cg.remove();
        }
    }
}

fn create(plan: &ContainerPlan) -> Result<(i32, Option<OwnedFd>), InitError> {
    let mut undo = Undo::default();
    match create_steps(plan, &mut undo) {
        Ok(pid) => Ok(pid),
        Err(e) => {
            undo.rollback();
            Err(e)
        }
    }
}

fn create_steps(
    plan: &ContainerPlan,
    undo: &mut Undo,
) -> Result<(i32, Option<OwnedFd>), InitError> {
    // Step 1: C2 must stay reapable by us until we hand it over.
    nix::sys::prctl::set_child_subreaper(true).map_err(InitError::sys("set child subreaper"))?;
    // Step 0: id-mapped volume sources, opened and idmapped here with host privileges, before
    // any user namespace could stand in the way (a 0700 source owned by host root is fine);
    // the container process inherits the detached trees and attaches them.
    let volumes = prepare_volumes(plan)?;
    let (ours, theirs) = UnixStream::pair().map_err(InitError::io("socketpair"))?;
    let mut chan = Channel::new(ours);

    // SAFETY: the helper is single-threaded (it is a fresh exec of the shim binary that starts
    // no threads), so the child may allocate and run ordinary code after fork.
    match unsafe { fork() }.map_err(InitError::sys("fork"))? {
        ForkResult::Child => {
            drop(chan);
            stage_one(plan, &volumes, Channel::new(theirs))
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            undo.c1 = Some(child);
        }
    }
    let c1 = undo.c1.ok_or(InitError::Protocol("no C1".into()))?;

    // Step 3: the user namespace's fd, then the rootfs on the host side.
    chan.expect_msg("UsernsReady", |m| matches!(m, Sync::UsernsReady))?;
    let userns: Option<OwnedFd> = match &plan.user_namespace {
        UserNamespace::Host => None,
        UserNamespace::New(mapping) => {
            // As host root no `setgroups` deny is needed before writing gid_map.
            fs::write(format!("/proc/{c1}/uid_map"), mapping.uid.proc_format())
                .map_err(InitError::io(format!("write uid_map {}", mapping.uid)))?;
            fs::write(format!("/proc/{c1}/gid_map"), mapping.gid.proc_format())
                .map_err(InitError::io(format!("write gid_map {}", mapping.gid)))?;
            Some(open_fd(&format!("/proc/{c1}/ns/user"))?)
        }
        UserNamespace::Join { path, .. } => Some(open_fd(&path.to_string_lossy())?),
    };
    if userns.is_some() && plan.rootfs.target.starts_with(&plan.bundle) {
        open_bundle_to_container_root(&plan.bundle, c1)?;
    }
    let mapping = match &plan.user_namespace {
        UserNamespace::Host => None,
        _ => Some(mapping_of(c1)?),
    };
    prepare_rootfs(plan, userns.as_ref(), mapping.as_ref(), undo)?;
    drop(userns);
    chan.send(&Sync::Proceed)?;

    // Step 4 happens in C1; we learn C2's pid and reap C1.
    let Sync::Pid(raw) = chan.expect_msg("Pid", |m| matches!(m, Sync::Pid(_)))? else {
        unreachable!("expect checked the variant")
    };
    let c2 = Pid::from_raw(raw);
    undo.c2 = Some(c2);
    waitpid(c1, None).map_err(InitError::sys("wait for stage one"))?;
    undo.c1 = None;

    // Step 5: cgroup and OOM score, from the host side, while C2 waits: the limits and the
    // device rules (on cgroup v2 an eBPF program attached to the cgroup) are in place before
    // the container's process runs anything of its own. A cgroup made here is removed again
    // if any of it fails; one that existed before (shared on purpose) is left alone.
    if let Some(path) = &plan.cgroups_path {
        let cgroup = |err| InitError::Cgroup {
            context: format!("cgroup {path}"),
            err,
        };
        let cg = Cgroup::new(Path::new(CGROUP_ROOT), path)
            .map_err(InitError::io(format!("cgroup {path}")))?;
        let existed = cg.exists();
        let linux = plan.spec.linux().as_ref();
        let mut limits = match linux.and_then(|l| l.resources().as_ref()) {
            Some(resources) => Limits::from_resources(resources).map_err(cgroup)?,
            None => Limits::default(),
        };
        let devices = linux.and_then(|l| l.devices().clone());
        limits.allow_container_devices(&devices.unwrap_or_default());
        if !existed {
            undo.cgroup = Some(cg.clone());
        }
        cg.create().map_err(cgroup)?;
        cg.apply(&limits).map_err(cgroup)?;
        cg.add(raw)
            .map_err(InitError::io(format!("join cgroup {path}")))?;
    }
    if let Some(score) = plan.spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
        fs::write(format!("/proc/{raw}/oom_score_adj"), score.to_string())
            .map_err(InitError::io(format!("set oom_score_adj {score}")))?;
    }
    chan.send(&Sync::Proceed)?;

    // Step 6 happens in C2.
    let console = chan.await_ready()?;
    Ok((raw, console))
}

/// The container reaches its rootfs through the bundle directory, which containerd makes
/// 0700 unless the spec lists gid mappings (then it gives the group to the mapped root, 0710).
/// A joined user namespace whose mappings the spec does not repeat gets the same treatment
/// here, from the namespace's own gid_map.
fn open_bundle_to_container_root(bundle: &Path, c1: Pid) -> Result<(), InitError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let map = fs::read_to_string(format!("/proc/{c1}/gid_map"))
        .map_err(InitError::io("read the user namespace's gid_map"))?;
    let Some(root_gid) = map.lines().find_map(|l| {
        let f: Vec<u32> = l
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        (f.len() == 3 && f[0] == 0).then_some(f[1])
    }) else {
        return Ok(());
    };
    let md = fs::metadata(bundle).map_err(InitError::io(format!("stat {}", bundle.display())))?;
    if root_gid == 0 || (md.gid() == root_gid && md.mode() & 0o010 != 0) || md.mode() & 0o001 != 0 {
        return Ok(());
    }
    nix::unistd::chown(bundle, None, Some(Gid::from_raw(root_gid))).map_err(InitError::sys(
        format!("give {} to gid {root_gid}", bundle.display()),
    ))?;
    fs::set_permissions(bundle, fs::Permissions::from_mode(0o710))
        .map_err(InitError::io(format!("chmod 0710 {}", bundle.display())))
}

/// Detached, idmapped trees for the spec's id-mapped mounts, by index in `spec.mounts`.
/// The `MOUNT_ATTR_*` bits for the flags of a mount's options.
fn mount_attrs(flags: u64) -> u64 {
    use usernsrs_runtime_core::mount_options::flags as f;
    [
        (f::RDONLY, libc::MOUNT_ATTR_RDONLY),
        (f::NOSUID, libc::MOUNT_ATTR_NOSUID),
        (f::NODEV, libc::MOUNT_ATTR_NODEV),
        (f::NOEXEC, libc::MOUNT_ATTR_NOEXEC),
        (f::NOATIME, libc::MOUNT_ATTR_NOATIME),
        (f::STRICTATIME, libc::MOUNT_ATTR_STRICTATIME),
        (f::NODIRATIME, libc::MOUNT_ATTR_NODIRATIME),
        (f::NOSYMFOLLOW, libc::MOUNT_ATTR_NOSYMFOLLOW),
    ]
    .iter()
    .filter(|(flag, _)| flags & flag != 0)
    .fold(0, |acc, (_, attr)| acc | attr)
}

/// User namespace fds for id-mapped mounts, one per distinct mapping, made on first use.
#[derive(Default)]
struct MountNamespaces(Vec<(Option<usernsrs_runtime_core::UserMapping>, OwnedFd)>);

impl MountNamespaces {
    fn get(
        &mut self,
        plan: &ContainerPlan,
        idmap: &IdmapWith,
        what: &Path,
    ) -> Result<&OwnedFd, InitError> {
        let mapping = match (idmap, &plan.user_namespace) {
            (IdmapWith::Mapping(m), _) | (IdmapWith::Container, UserNamespace::New(m)) => {
                Some(m.clone())
            }
            // The joined namespace itself, never the mapping the spec claims for it: a volume
            // must show the ids the container really has.
            (IdmapWith::Container, UserNamespace::Join { .. }) => None,
            (IdmapWith::Container, UserNamespace::Host) => None,
        };
        if let Some(i) = self.0.iter().position(|(m, _)| *m == mapping) {
            return Ok(&self.0[i].1);
        }
        let fd = match (&mapping, &plan.user_namespace) {
            (Some(m), _) => {
                usernsrs_sys::user_namespace_fd(&m.uid.proc_format(), &m.gid.proc_format())
                    .map_err(InitError::io(format!(
                        "user namespace for mount {}",
                        what.display()
                    )))?
            }
            (None, UserNamespace::Join { path, .. }) => open_fd(&path.to_string_lossy())?,
            (None, _) => {
                return Err(InitError::Protocol(format!(
                    "mount {} takes the container's mapping, but it has no user namespace",
                    what.display()
                )))
            }
        };
        self.0.push((mapping, fd));
        Ok(&self.0[self.0.len() - 1].1)
    }
}

fn prepare_volumes(plan: &ContainerPlan) -> Result<Volumes, InitError> {
    let mounts = plan.spec.mounts().as_deref().unwrap_or(&[]);
    let mut namespaces = MountNamespaces::default();
    let mut out = Vec::new();
    for v in &plan.volumes {
        let tree = DetachedMount::clone_tree(&v.source, v.recursive_bind).map_err(
            InitError::io(format!(
                "mount {}: open source {}",
                v.destination.display(),
                v.source.display()
            )),
        )?;
        if let Some(idmap) = &v.idmap {
            let ns = namespaces.get(plan, idmap, &v.destination)?;
            tree.idmap(ns.as_fd(), v.recursive_idmap)
                .map_err(|err| InitError::VolumeIdmap {
                    destination: v.destination.clone(),
                    source_path: v.source.clone(),
                    fs: crate::fs_type_name(&v.source),
                    kernel: crate::kernel_release(),
                    err,
                })?;
        }
        let opts = parse_mount_options(
            mounts
                .get(v.index)
                .and_then(|m| m.options().as_deref())
                .unwrap_or(&[]),
        );
        let attrs = mount_attrs(opts.flags);
        if attrs != 0 {
            let set = usernsrs_sys::MountAttrs {
                set: attrs,
                ..Default::default()
            };
            tree.set_attrs(set, None, false)
                .map_err(InitError::io(format!(
                    "mount {}: options",
                    v.destination.display()
                )))?;
        }
        out.push((v.index, tree));
    }
    Ok(out)
}

fn open_fd(path: &str) -> Result<OwnedFd, InitError> {
    File::open(path)
        .map(OwnedFd::from)
        .map_err(InitError::io(format!("open {path}")))
}

/// C1: steps 2 and 4. Never returns.
fn stage_one(plan: &ContainerPlan, volumes: &Volumes, mut chan: Channel) -> ! {
    // The shim's control socket is the helper's business; the container must not hold it.
    // SAFETY: CONTROL_FD is open in this forked copy and nothing here uses it.
    unsafe { libc::close(CONTROL_FD) };
    let result = (|chan: &mut Channel| -> Result<(), InitError> {
        // Namespaces given by path are joined now, as host root: host root may join any of
        // them, while from inside the container's user namespace neither a path under
        // containerd's 0700 state directory nor a namespace of the host (a hostNetwork pod's
        // UTS namespace) is within reach. The cgroup namespace is only opened: C2 joins it
        // once it is in its cgroup. The new namespaces are made after the user namespace, so
        // that it owns them.
        let mut cgroup_ns = None;
        for ns in &plan.namespaces {
            let Some(path) = &ns.path else { continue };
            let fd = open_fd(&path.to_string_lossy())?;
            if ns.kind == NamespaceKind::Cgroup {
                cgroup_ns = Some(fd);
                continue;
            }
            setns(fd.as_fd(), clone_flag(ns.kind)).map_err(InitError::sys(format!(
                "join {:?} namespace {}",
                ns.kind,
                path.display()
            )))?;
        }
        match &plan.user_namespace {
            UserNamespace::Host => {}
            UserNamespace::New(_) => unshare(CloneFlags::CLONE_NEWUSER)
                .map_err(InitError::sys("unshare user namespace"))?,
            UserNamespace::Join { path, .. } => {
                let fd = open_fd(&path.to_string_lossy())?;
                setns(fd.as_fd(), CloneFlags::CLONE_NEWUSER).map_err(InitError::sys(format!(
                    "join user namespace {}",
                    path.display()
                )))?;
            }
        }
        chan.send(&Sync::UsernsReady)?;
        chan.expect_msg("Proceed", |m| matches!(m, Sync::Proceed))?;
        if plan.user_namespace != UserNamespace::Host {
            // Our host uid 0 is unmapped inside; root of the namespace owns what we create.
            setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(
                InitError::sys("become gid 0 in the user namespace (is container gid 0 mapped?)"),
            )?;
            setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(
                InitError::sys("become uid 0 in the user namespace (is container uid 0 mapped?)"),
            )?;
        }
        let new = plan
            .namespaces
            .iter()
            .filter(|ns| ns.path.is_none() && ns.kind != NamespaceKind::Cgroup)
            .fold(CloneFlags::empty(), |acc, ns| acc | clone_flag(ns.kind));
        unshare(new).map_err(InitError::sys(format!("unshare namespaces {new:?}")))?;
        // The clocks of a new time namespace can be offset only until a process is in it:
        // now, before C2 is forked into it.
        if !plan.time_offsets.is_empty() {
            let lines = plan.time_offsets.join("\n") + "\n";
            std::fs::write("/proc/self/timens_offsets", lines).map_err(InitError::io(format!(
                "write linux.timeOffsets {:?} to /proc/self/timens_offsets",
                plan.time_offsets
            )))?;
        }
        // SAFETY: C1 is single-threaded (forked from the single-threaded helper).
        match unsafe { fork() }.map_err(InitError::sys("fork the container process"))? {
            ForkResult::Child => {
                let own = chan.try_clone()?;
                crate::container::run(plan, volumes, cgroup_ns, own)
            }
            ForkResult::Parent { child } => chan.send(&Sync::Pid(child.as_raw())),
        }
    })(&mut chan);
    if let Err(e) = result {
        let _ = chan.send(&Sync::Error(error_chain(&e), e.kind()));
        // SAFETY: leaving the forked child without running destructors meant for the helper.
        unsafe { libc::_exit(1) }
    }
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}

pub(crate) fn clone_flag(kind: NamespaceKind) -> CloneFlags {
    match kind {
        NamespaceKind::Mount => CloneFlags::CLONE_NEWNS,
        NamespaceKind::Pid => CloneFlags::CLONE_NEWPID,
        NamespaceKind::Network => CloneFlags::CLONE_NEWNET,
        NamespaceKind::Ipc => CloneFlags::CLONE_NEWIPC,
        NamespaceKind::Uts => CloneFlags::CLONE_NEWUTS,
        NamespaceKind::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        NamespaceKind::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The user namespace an idmapped mount takes: the container's, or one made for its mapping.
fn idmap_userns(idmap: &IdmapWith, container: Option<&OwnedFd>) -> Result<OwnedFd, InitError> {
    match idmap {
        IdmapWith::Container => container
            .ok_or(InitError::Protocol(
                "rootfs idmap needs the container's user namespace".into(),
            ))?
            .try_clone()
            .map_err(InitError::io("dup user namespace fd")),
        IdmapWith::Mapping(m) => {
            usernsrs_sys::user_namespace_fd(&m.uid.proc_format(), &m.gid.proc_format()).map_err(
                InitError::io(format!(
                    "user namespace for mapping uid {} gid {}",
                    m.uid, m.gid
                )),
            )
        }
    }
}

fn mkdir_target(target: &Path, undo: &mut Undo) -> Result<(), InitError> {
    if !target.exists() {
        fs::create_dir_all(target)
            .map_err(InitError::io(format!("create {}", target.display())))?;
        undo.dirs.push(target.to_path_buf());
    }
    Ok(())
}

/// The mapping of the user namespace process `pid` is in, from its uid_map and gid_map.
fn mapping_of(pid: Pid) -> Result<UserMapping, InitError> {
    let read = |which: &str| -> Result<usernsrs_runtime_core::IdMap, InitError> {
        let text = fs::read_to_string(format!("/proc/{pid}/{which}"))
            .map_err(InitError::io(format!("read {which} of pid {pid}")))?;
        let ranges = text
            .lines()
            .filter_map(|l| {
                let f: Vec<u32> = l
                    .split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect();
                (f.len() == 3).then(|| usernsrs_runtime_core::IdMapping {
                    container_id: f[0],
                    host_id: f[1],
                    size: f[2],
                })
            })
            .collect();
        usernsrs_runtime_core::IdMap::new(which, ranges)
            .map_err(|e| InitError::Protocol(format!("the user namespace's {which}: {e}")))
    };
    Ok(UserMapping {
        uid: read("uid_map")?,
        gid: read("gid_map")?,
    })
}

/// Explains a failed idmap: which path, which filesystem, which kernel, and the way out.
fn idmap_failure(path: &Path, err: std::io::Error) -> InitError {
    InitError::Idmap {
        path: path.to_path_buf(),
        fs: crate::fs_type_name(path),
        kernel: crate::kernel_release(),
        err,
    }
}

/// A recursive bind of `source`, idmapped with `ns` (and made read-only when asked), attached at
/// `target`.
fn idmapped_bind(
    source: &Path,
    readonly: bool,
    ns: &OwnedFd,
    target: &Path,
    undo: &mut Undo,
) -> Result<(), InitError> {
    let tree = DetachedMount::clone_tree(source, true)
        .map_err(InitError::io(format!("clone rootfs {}", source.display())))?;
    tree.idmap(ns.as_fd(), true)
        .map_err(|e| idmap_failure(source, e))?;
    if readonly {
        let attrs = usernsrs_sys::MountAttrs {
            set: libc::MOUNT_ATTR_RDONLY,
            ..Default::default()
        };
        tree.set_attrs(attrs, None, true)
            .map_err(InitError::io("make rootfs read-only"))?;
    }
    mkdir_target(target, undo)?;
    tree.attach(target).map_err(InitError::io(format!(
        "attach idmapped rootfs at {}",
        target.display()
    )))?;
    undo.mounts.push(target.to_path_buf());
    Ok(())
}

/// Step 3: prepares the rootfs at `plan.rootfs.target` on the host side.
fn prepare_rootfs(
    plan: &ContainerPlan,
    userns: Option<&OwnedFd>,
    container_mapping: Option<&UserMapping>,
    undo: &mut Undo,
) -> Result<(), InitError> {
    let target = &plan.rootfs.target;
    // The slow path, when the operator allowed it and the idmap was refused.
    let fallback = |idmap: &IdmapWith,
                    lowers: &[PathBuf],
                    view: &Path,
                    undo: &mut Undo|
     -> Result<(), InitError> {
        let mapping = match idmap {
            IdmapWith::Mapping(m) => m,
            IdmapWith::Container => container_mapping.ok_or_else(|| {
                InitError::Protocol("the chown fallback needs the container's mapping".into())
            })?,
        };
        let state = plan.bundle.join(crate::fallback::FALLBACK_DIR);
        undo.trees.push(state.clone());
        let started = std::time::Instant::now();
        let chowned = crate::fallback::chowned_view(lowers, mapping, &state, view)?;
        undo.mounts.push(view.to_path_buf());
        log::info!(
            "{}: rootfs cannot be idmapped; slow_chown view of {} entries in {:?}",
            plan.id,
            chowned,
            started.elapsed()
        );
        Ok(())
    };
    let allowed = |e: &InitError| {
        plan.chown_fallback && matches!(e, InitError::Idmap { .. } | InitError::OverlayIdmap { .. })
    };
    match &plan.rootfs.source {
        RootfsSource::Directory { .. } => Ok(()),
        RootfsSource::IdmappedDirectory { path, idmap } => {
            match idmapped_bind(path, false, &idmap_userns(idmap, userns)?, target, undo) {
                Err(e) if allowed(&e) => fallback(idmap, std::slice::from_ref(path), target, undo),
                other => other,
            }
        }
        RootfsSource::IdmappedBind {
            source,
            readonly,
            idmap,
        } => match idmapped_bind(
            source,
            *readonly,
            &idmap_userns(idmap, userns)?,
            target,
            undo,
        ) {
            Err(e) if allowed(&e) => fallback(idmap, std::slice::from_ref(source), target, undo),
            other => other,
        },
        RootfsSource::IdmappedOverlay {
            lowerdirs,
            upperdir,
            workdir,
            options,
            idmap,
        } => {
            let parent = common_parent(lowerdirs).ok_or_else(|| {
                InitError::Protocol(format!(
                    "overlay lower layers {lowerdirs:?} share no parent directory below /"
                ))
            })?;
            let ns = idmap_userns(idmap, userns)?;
            let opts = parse_mount_options(options);
            let parts = OverlayParts {
                lowerdirs,
                parent: &parent,
                upper_work: upperdir.as_deref().zip(workdir.as_deref()),
                data: &opts.data,
                flags: MsFlags::from_bits_retain(opts.flags as libc::c_ulong),
            };
            mkdir_target(target, undo)?;
            let staging = plan.bundle.join(IDMAPPED_LAYERS_DIR);
            match mount_over_idmapped_layers(&parts, ns.as_fd(), &staging, target) {
                Ok(()) => {}
                Err(e) if allowed(&e) => {
                    // The layers, chowned in a view of their own; the container's upper dir
                    // (already chowned by the snapshotter) goes on top as usual.
                    let view = plan
                        .bundle
                        .join(crate::fallback::FALLBACK_DIR)
                        .join("layers");
                    fallback(idmap, lowerdirs, &view, undo)?;
                    let chowned = [view];
                    mount_overlay_of(
                        &OverlayParts {
                            lowerdirs: &chowned,
                            parent: &chowned[0],
                            ..parts
                        },
                        target,
                    )?;
                }
                Err(e) => return Err(e),
            }
            undo.mounts.push(target.clone());
            Ok(())
        }
        RootfsSource::Mounts { mounts } => {
            mkdir_target(target, undo)?;
            for m in mounts {
                let opts = parse_mount_options(&m.options);
                let typ = if opts.is_bind() {
                    None
                } else {
                    Some(m.typ.as_str())
                };
                let flags = MsFlags::from_bits_retain(opts.flags as libc::c_ulong);
                let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
                mount(Some(m.source.as_str()), target, typ, flags, data).map_err(|e| {
                    InitError::Mount {
                        what: format!("{} {}", m.typ, m.source),
                        target: target.clone(),
                        err: e.into(),
                    }
                })?;
                undo.mounts.push(target.clone());
                if opts.is_bind() && opts.is_readonly() {
                    mount(
                        None::<&str>,
                        target,
                        None::<&str>,
                        flags | MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(|e| InitError::Mount {
                        what: "read-only remount".into(),
                        target: target.clone(),
                        err: e.into(),
                    })?;
                }
            }
            Ok(())
        }
    }
}
