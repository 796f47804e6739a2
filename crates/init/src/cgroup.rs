//! The container's cgroup: created before the process runs, used to list and signal its
//! processes, removed at delete.
//!
//! Hosts come as pure cgroup v2 (`<root>/cgroup.controllers` exists) or as v1 hierarchies with
//! the v2 tree mounted at `<root>/unified` (hybrid, as on this project's machines). In hybrid mode
//! the container joins the unified tree (which tracks its processes) and every v1 hierarchy.
//! `linux.cgroupsPath` is either a path (`/default/id`) or systemd's `slice:prefix:name`, which is
//! expanded the way systemd lays it out; it never names the root cgroup. The root is injectable
//! so tests run on a tempdir.
//!
//! The container's processes are those of its directory and every directory below it (a
//! container may make sub-cgroups). Killing them all ([`Cgroup::kill_all`]) leaves none a
//! chance to escape by forking: `cgroup.kill` where the kernel has it, otherwise the freezer
//! holds them still while each is signalled through a pidfd, never through a pid that may have
//! changed hands since it was listed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use usernsrs_sys::PidFd;

use crate::devices::DeviceRule;

/// The default cgroup filesystem root.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The directories that make up one container's cgroup across hierarchies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// The v2 directory (unified tree), if the host has one.
    pub unified: Option<PathBuf>,
    /// The v1 directories, one per hierarchy.
    pub v1: Vec<PathBuf>,
    /// The container's path relative to each hierarchy's root.
    rel: PathBuf,
    root: PathBuf,
}

/// What the shim reports for `ctr task metrics` and CRI stats, read from the cgroup files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// True when the values come from v1 hierarchies (the host's memory controller is v1).
    pub v1: bool,
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub memory_max_usage: u64,
    pub memory_failcnt: u64,
    /// `memory.stat` (v1 names, or v2 names), as read.
    pub memory_stat: Vec<(String, u64)>,
    pub cpu_total_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_kernel_ns: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
    pub oom_kills: u64,
    pub cpu_periods: u64,
    pub cpu_throttled_periods: u64,
    pub cpu_throttled_ns: u64,
    pub memory_kernel_usage: u64,
    pub memory_swap_usage: u64,
    pub memory_swap_limit: u64,
}

/// Why a cgroup could not be set up as the spec asks.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A `linux.resources` field this host (or this cgroup version) cannot apply: refused,
    /// never dropped.
    #[error("{field}: not supported on this host: {why}")]
    Unsupported { field: String, why: String },
    #[error("{field}: {why}")]
    Invalid { field: String, why: String },
    #[error(transparent)]
    Device(#[from] crate::devices::DeviceError),
    #[error("write {value:?} to {}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        err: io::Error,
    },
    #[error("enable the {controller} controller in {}/cgroup.subtree_control{}", cgroup.display(), enable_hint(.err))]
    Enable {
        cgroup: PathBuf,
        controller: String,
        #[source]
        err: io::Error,
    },
    #[error("cgroup v2 device filter for {}", cgroup.display())]
    DeviceFilter {
        cgroup: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("cgroup v2 device filter for {}", cgroup.display())]
    DeviceLoad {
        cgroup: PathBuf,
        #[source]
        err: usernsrs_sys::bpf::LoadError,
    },
    #[error("{context} {}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        err: io::Error,
    },
    /// A cgroup that exists with processes in it is theirs: the container's Kill(all), Pause
    /// and limits would reach them (runc refuses it likewise).
    #[error(
        "the cgroup {} already exists and is not empty: {count} process(es) found; a \
         container's cgroup must be new or empty",
        path.display()
    )]
    InUse { path: PathBuf, count: usize },
    #[error("the cgroup {} already exists and is frozen", path.display())]
    Frozen { path: PathBuf },
}

fn enable_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EBUSY) => {
            " (the cgroup has processes of its own, and cgroup v2 enables controllers only \
             for groups whose processes live in leaves: move them into a child cgroup)"
        }
        Some(libc::ENOENT) => " (the parent does not pass the controller down)",
        _ => "",
    }
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |err| CgroupError::Io { context, path, err }
}

/// The controllers enabled in every ancestor's `cgroup.subtree_control` on cgroup v2, when the
/// level offers them: those `linux.resources` can limit.
pub const V2_CONTROLLERS: [&str; 7] = ["cpuset", "cpu", "io", "memory", "pids", "hugetlb", "rdma"];

/// The parent under which containers without `linux.cgroupsPath` get their cgroup.
pub const DEFAULT_PARENT: &str = "usernsrs";

/// The cgroup of a container whose spec has no `linux.cgroupsPath`: `/usernsrs/<ns>/<id>`.
/// Container ids are unique only within a containerd namespace, hence the namespace level;
/// the `usernsrs` level says who made it up.
pub fn default_cgroups_path(namespace: &str, id: &str) -> String {
    format!("/{DEFAULT_PARENT}/{namespace}/{id}")
}

/// The resource limits the shim applies (from `linux.resources` or an Update): the spec's
/// fields as they came, each of which [`Cgroup::apply`] writes or refuses.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub resources: oci_spec::runtime::LinuxResources,
    /// `linux.resources.devices` then, at create, the defaults and `linux.devices`, in order.
    pub devices: Vec<DeviceRule>,
}

pub use crate::devices::DEFAULT_ALLOWED as DEFAULT_DEVICE_RULES;

impl Limits {
    /// Makes the device rules complete, as runc does: deny everything first (CRI sends only
    /// "deny all", `ctr c create --config` may send nothing), then the spec's rules, then the
    /// default devices and the devices the spec lists in `linux.devices`.
    pub fn allow_container_devices(&mut self, devices: &[oci_spec::runtime::LinuxDevice]) {
        let mut rules = vec![DeviceRule {
            allow: false,
            kind: crate::devices::DeviceKind::All,
            major: None,
            minor: None,
            access: crate::devices::ACC_READ
                | crate::devices::ACC_WRITE
                | crate::devices::ACC_MKNOD,
        }];
        rules.append(&mut self.devices);
        rules.extend(DEFAULT_DEVICE_RULES);
        rules.extend(devices.iter().map(DeviceRule::for_node));
        self.devices = rules;
    }

    /// The limits of an OCI `linux.resources`; a malformed device rule is refused here.
    pub fn from_resources(r: &oci_spec::runtime::LinuxResources) -> Result<Self, CgroupError> {
        let devices = r
            .devices()
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, d)| DeviceRule::from_spec(i, d))
            .collect::<Result<_, _>>()?;
        Ok(Limits {
            resources: r.clone(),
            devices,
        })
    }
}

/// memory+swap (the OCI value, v1's memsw) as cgroup v2's swap alone, the way runc converts it:
/// -1 is unlimited, 0 is unset, else swap minus memory. `None`: write nothing.
pub fn v2_swap(swap: i64, memory: i64) -> Result<Option<String>, String> {
    if memory == -1 && swap == 0 {
        return Ok(Some("max".into()));
    }
    match swap {
        -1 => return Ok(Some("max".into())),
        0 => return Ok(None),
        _ => {}
    }
    if memory <= 0 {
        return Err("a swap limit needs a memory limit".into());
    }
    if swap < memory {
        return Err(format!(
            "memory+swap {swap} is below the memory limit {memory}"
        ));
    }
    Ok(Some((swap - memory).to_string()))
}

/// `cpu.shares` (2..262144) as `cpu.weight` (1..10000), the conversion runc and the kernel
/// documentation use.
pub fn v2_weight_from_shares(shares: u64) -> u64 {
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// `blkio.weight` (10..1000) as `io.weight` (1..10000), as runc converts it.
pub fn v2_io_weight(weight: u16) -> u64 {
    let w = u64::from(weight.clamp(10, 1000));
    1 + (w - 10) * 9999 / 990
}

/// The `unified` keys that name cgroup core files a spec may set: limits on the subtree. The
/// others (`cgroup.procs`, `cgroup.subtree_control`, `cgroup.type`, `cgroup.freeze`,
/// `cgroup.kill`...) change membership or state the shim owns.
const UNIFIED_CORE_KEYS: [&str; 2] = ["cgroup.max.depth", "cgroup.max.descendants"];

/// A cgroup file write the limits need, and the spec field it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Write {
    field: String,
    dir: PathBuf,
    file: String,
    value: String,
}

fn read_u64(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn read_keyed(path: &Path) -> Vec<(String, u64)> {
    fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    Some((f.next()?.to_string(), f.next()?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write {value} to {}: {e}", path.display()),
        )
    })
}

/// Turns `linux.cgroupsPath` into a relative path: `/a/b` stays, `slice:prefix:name` becomes
/// `a.slice/a-b.slice/prefix-name.scope`.
pub fn relative_path(cgroups_path: &str) -> PathBuf {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    if let [slice, prefix, name] = parts.as_slice() {
        if !cgroups_path.starts_with('/') {
            let mut path = PathBuf::new();
            let slice = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            // "a-b-c.slice" lives in "a.slice/a-b.slice/a-b-c.slice".
            let stem = slice.trim_end_matches(".slice");
            let mut acc = String::new();
            for piece in stem.split('-').filter(|p| !p.is_empty()) {
                if !acc.is_empty() {
                    acc.push('-');
                }
                acc.push_str(piece);
                path.push(format!("{acc}.slice"));
            }
            let scope = if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            path.push(scope);
            return path;
        }
    }
    PathBuf::from(cgroups_path.trim_start_matches('/'))
}

/// How long [`Cgroup::kill_and_wait`] waits for killed processes to go: as long as runc's
/// `delete --force` waits for a killed init.
pub const KILL_WAIT: Duration = Duration::from_secs(10);

impl Cgroup {
    /// Lays out the directories for `cgroups_path` under `root`. A path with `.` or `..`
    /// components, or one naming the root cgroup (`/`, empty), is refused: the root holds
    /// every process of the host, which the container's Kill(all), Pause and Delete would reach.
    pub fn new(root: &Path, cgroups_path: &str) -> io::Result<Self> {
        let rel = relative_path(cgroups_path);
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("linux.cgroupsPath {cgroups_path:?} must not contain '.' or '..'"),
            ));
        }
        if rel.components().next().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "linux.cgroupsPath {cgroups_path:?} is the root cgroup: a container needs a \
                     cgroup of its own below it"
                ),
            ));
        }
        if root.join("cgroup.controllers").exists() {
            return Ok(Self {
                unified: Some(root.join(&rel)),
                v1: Vec::new(),
                rel,
                root: root.to_path_buf(),
            });
        }
        let unified = root.join("unified");
        let unified = unified
            .join("cgroup.controllers")
            .exists()
            .then(|| unified.join(&rel));
        let mut v1 = Vec::new();
        for entry in fs::read_dir(root)? {
            let entry = entry?;
            let dir = entry.path();
            if entry.file_name() != "unified" && dir.join("cgroup.procs").exists() {
                v1.push(dir.join(&rel));
            }
        }
        v1.sort();
        Ok(Self {
            unified,
            v1,
            rel,
            root: root.to_path_buf(),
        })
    }

    /// The v1 directory of `controller` (hierarchies may co-mount several: `cpu,cpuacct`).
    pub fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        self.v1.iter().find_map(|dir| {
            let hierarchy = dir.strip_prefix(&self.root).ok()?.components().next()?;
            let name = hierarchy.as_os_str().to_str()?;
            name.split(',')
                .any(|c| c == controller)
                .then(|| dir.clone())
        })
    }

    /// The v2 directory, when it has `controller` enabled (a hybrid host's unified tree has
    /// none).
    fn v2_with(&self, controller: &str) -> Option<&PathBuf> {
        let dir = self.unified.as_ref()?;
        let parent = dir.parent()?;
        let enabled = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        enabled
            .split_whitespace()
            .any(|c| c == controller)
            .then_some(dir)
    }

    /// Freezes (Pause) or thaws (Resume) every process of the container, and waits until the
    /// kernel says it is done.
    pub fn freeze(&self, frozen: bool) -> io::Result<()> {
        if let Some(dir) = self.v1_dir("freezer") {
            write(
                &dir,
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
            )?;
            let want = if frozen { "FROZEN" } else { "THAWED" };
            for _ in 0..1000 {
                if fs::read_to_string(dir.join("freezer.state"))?.trim() == want {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not reach {want}", dir.display()),
            ));
        }
        if let Some(dir) = &self.unified {
            write(dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
            let want = if frozen { "frozen 1" } else { "frozen 0" };
            for _ in 0..1000 {
                if fs::read_to_string(dir.join("cgroup.events"))?
                    .lines()
                    .any(|l| l == want)
                {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not reach {want}", dir.display()),
            ));
        }
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no freezer: neither a v1 freezer hierarchy nor cgroup v2",
        ))
    }

    /// Whether the container is frozen.
    pub fn is_frozen(&self) -> bool {
        if let Some(dir) = self.v1_dir("freezer") {
            return fs::read_to_string(dir.join("freezer.state"))
                .is_ok_and(|s| s.trim() == "FROZEN");
        }
        self.unified.as_ref().is_some_and(|d| {
            fs::read_to_string(d.join("cgroup.events"))
                .is_ok_and(|t| t.lines().any(|l| l == "frozen 1"))
        })
    }

    /// Where a controller's files are: its v1 hierarchy, else the v2 directory when the
    /// controller is enabled for it. Err: why neither.
    fn controller_dir(&self, controller: &str) -> Result<(bool, PathBuf), String> {
        if let Some(dir) = self.v1_dir(controller) {
            return Ok((true, dir));
        }
        if let Some(dir) = self.v2_with(controller) {
            return Ok((false, dir.clone()));
        }
        Err(match &self.unified {
            Some(dir) => {
                let parent = dir.parent().unwrap_or(dir);
                format!(
                    "no {controller} controller for {} (no v1 hierarchy; {} cgroup.subtree_control: {})",
                    self.rel.display(),
                    parent.display(),
                    fs::read_to_string(parent.join("cgroup.subtree_control"))
                        .unwrap_or_default()
                        .trim()
                )
            }
            None => format!("no {controller} controller for {}", self.rel.display()),
        })
    }

    /// The writes `limits` need, or the refusal of the first field this host cannot apply.
    /// Nothing is written here, so a refusal leaves the cgroup as it was.
    fn plan_writes(&self, limits: &Limits) -> Result<Vec<Write>, CgroupError> {
        let r = &limits.resources;
        let mut writes = Vec::new();
        let unsupported = |field: &str, why: String| CgroupError::Unsupported {
            field: field.into(),
            why,
        };
        // One field: on v1 `v1` (file, value), on v2 `v2`; None for a version means the
        // field has no meaning there and is refused.
        let mut put = |field: &str,
                       controller: &str,
                       v1: Option<(&str, String)>,
                       v2: Option<(&str, String)>|
         -> Result<(), CgroupError> {
            let (is_v1, dir) = self
                .controller_dir(controller)
                .map_err(|why| unsupported(field, why))?;
            let version = if is_v1 { "v1" } else { "v2" };
            let Some((file, value)) = (if is_v1 { v1 } else { v2 }) else {
                return Err(unsupported(
                    field,
                    format!("cgroup {version} ({controller}) has no such setting"),
                ));
            };
            if !value.is_empty() && !dir.join(file).exists() {
                return Err(unsupported(
                    field,
                    format!("no {file} in the {version} {controller} hierarchy"),
                ));
            }
            writes.push(Write {
                field: field.into(),
                dir,
                file: file.into(),
                value,
            });
            Ok(())
        };
        let max = |n: i64| {
            if n < 0 {
                "max".to_string()
            } else {
                n.to_string()
            }
        };

        if let Some(m) = r.memory() {
            let limit = m.limit().unwrap_or(0);
            if let Some(l) = m.limit().filter(|l| *l != 0) {
                put(
                    "linux.resources.memory.limit",
                    "memory",
                    Some(("memory.limit_in_bytes", l.to_string())),
                    Some(("memory.max", max(l))),
                )?;
            }
            if let Some(s) = m.swap() {
                let v2 = v2_swap(s, limit).map_err(|why| CgroupError::Invalid {
                    field: "linux.resources.memory.swap".into(),
                    why,
                })?;
                if s != 0 || v2.is_some() {
                    put(
                        "linux.resources.memory.swap",
                        "memory",
                        Some(("memory.memsw.limit_in_bytes", s.to_string())),
                        v2.map(|v| ("memory.swap.max", v)),
                    )?;
                }
            }
            if let Some(v) = m.reservation().filter(|v| *v != 0) {
                put(
                    "linux.resources.memory.reservation",
                    "memory",
                    Some(("memory.soft_limit_in_bytes", v.to_string())),
                    Some(("memory.low", max(v))),
                )?;
            }
            if let Some(v) = m.kernel().filter(|v| *v != 0) {
                put(
                    "linux.resources.memory.kernel",
                    "memory",
                    Some(("memory.kmem.limit_in_bytes", v.to_string())),
                    None,
                )?;
            }
            if let Some(v) = m.kernel_tcp().filter(|v| *v != 0) {
                put(
                    "linux.resources.memory.kernelTCP",
                    "memory",
                    Some(("memory.kmem.tcp.limit_in_bytes", v.to_string())),
                    None,
                )?;
            }
            if let Some(v) = m.swappiness() {
                if v > 100 {
                    return Err(CgroupError::Invalid {
                        field: "linux.resources.memory.swappiness".into(),
                        why: format!("{v} is above 100"),
                    });
                }
                put(
                    "linux.resources.memory.swappiness",
                    "memory",
                    Some(("memory.swappiness", v.to_string())),
                    None,
                )?;
            }
            if m.disable_oom_killer() == Some(true) {
                put(
                    "linux.resources.memory.disableOOMKiller",
                    "memory",
                    Some(("memory.oom_control", "1".into())),
                    None,
                )?;
            }
            match m.use_hierarchy() {
                Some(true) => put(
                    "linux.resources.memory.useHierarchy",
                    "memory",
                    Some(("memory.use_hierarchy", "1".into())),
                    // cgroup v2 is always hierarchical: accepted, nothing to write (an
                    // empty value is dropped below).
                    Some(("memory.max", String::new())),
                )?,
                Some(false) => put(
                    "linux.resources.memory.useHierarchy",
                    "memory",
                    Some(("memory.use_hierarchy", "0".into())),
                    None,
                )?,
                None => {}
            }
            if m.check_before_update() == Some(true) && limit > 0 {
                let (is_v1, dir) = self
                    .controller_dir("memory")
                    .map_err(|why| unsupported("linux.resources.memory.checkBeforeUpdate", why))?;
                let usage = dir.join(if is_v1 {
                    "memory.usage_in_bytes"
                } else {
                    "memory.current"
                });
                let used = read_u64(&usage);
                if used > limit as u64 {
                    return Err(CgroupError::Invalid {
                        field: "linux.resources.memory.checkBeforeUpdate".into(),
                        why: format!("the limit {limit} is below the current usage {used}"),
                    });
                }
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(s) = c.shares().filter(|s| *s != 0) {
                put(
                    "linux.resources.cpu.shares",
                    "cpu",
                    Some(("cpu.shares", s.to_string())),
                    Some(("cpu.weight", v2_weight_from_shares(s).to_string())),
                )?;
            }
            let quota = c.quota().filter(|q| *q != 0);
            let period = c.period().filter(|p| *p != 0);
            if let Some(p) = period {
                put(
                    "linux.resources.cpu.period",
                    "cpu",
                    Some(("cpu.cfs_period_us", p.to_string())),
                    // With a quota, cpu.max below takes both (an empty value writes nothing).
                    Some(match quota {
                        None => ("cpu.max", format!("max {p}")),
                        Some(_) => ("cpu.max", String::new()),
                    }),
                )?;
            }
            if let Some(q) = quota {
                put(
                    "linux.resources.cpu.quota",
                    "cpu",
                    Some(("cpu.cfs_quota_us", q.to_string())),
                    Some((
                        "cpu.max",
                        format!("{} {}", max(q), period.unwrap_or(100_000)),
                    )),
                )?;
            }
            if let Some(b) = c.burst() {
                put(
                    "linux.resources.cpu.burst",
                    "cpu",
                    Some(("cpu.cfs_burst_us", b.to_string())),
                    Some(("cpu.max.burst", b.to_string())),
                )?;
            }
            if let Some(p) = c.realtime_period().filter(|p| *p != 0) {
                put(
                    "linux.resources.cpu.realtimePeriod",
                    "cpu",
                    Some(("cpu.rt_period_us", p.to_string())),
                    None,
                )?;
            }
            if let Some(rt) = c.realtime_runtime().filter(|p| *p != 0) {
                put(
                    "linux.resources.cpu.realtimeRuntime",
                    "cpu",
                    Some(("cpu.rt_runtime_us", rt.to_string())),
                    None,
                )?;
            }
            if let Some(i) = c.idle() {
                put(
                    "linux.resources.cpu.idle",
                    "cpu",
                    Some(("cpu.idle", i.to_string())),
                    Some(("cpu.idle", i.to_string())),
                )?;
            }
            for (field, file, value) in [
                ("linux.resources.cpu.cpus", "cpuset.cpus", c.cpus()),
                ("linux.resources.cpu.mems", "cpuset.mems", c.mems()),
            ] {
                if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
                    put(
                        field,
                        "cpuset",
                        Some((file, v.clone())),
                        Some((file, v.clone())),
                    )?;
                }
            }
        }
        if let Some(p) = r.pids().as_ref().filter(|p| p.limit() != 0) {
            put(
                "linux.resources.pids.limit",
                "pids",
                Some(("pids.max", max(p.limit()))),
                Some(("pids.max", max(p.limit()))),
            )?;
        }
        if let Some(b) = r.block_io() {
            let io = "linux.resources.blockIO";
            let (v1_weight, v2_weight) = match self
                .controller_dir("io")
                .or_else(|_| self.controller_dir("blkio"))
            {
                Ok((true, dir)) => (
                    if dir.join("blkio.weight").exists() {
                        "blkio.weight"
                    } else {
                        "blkio.bfq.weight"
                    },
                    "io.weight",
                ),
                Ok((false, dir)) => (
                    "blkio.weight",
                    if dir.join("io.weight").exists() || !dir.join("io.bfq.weight").exists() {
                        "io.weight"
                    } else {
                        "io.bfq.weight"
                    },
                ),
                Err(_) => ("blkio.weight", "io.weight"),
            };
            let v2w = |w: u16| {
                if v2_weight == "io.weight" {
                    v2_io_weight(w)
                } else {
                    u64::from(w)
                }
            };
            let ctrl = if self.v1_dir("blkio").is_some() {
                "blkio"
            } else {
                "io"
            };
            if let Some(w) = b.weight().filter(|w| *w != 0) {
                put(
                    &format!("{io}.weight"),
                    ctrl,
                    Some((v1_weight, w.to_string())),
                    Some((v2_weight, format!("default {}", v2w(w)))),
                )?;
            }
            if let Some(w) = b.leaf_weight().filter(|w| *w != 0) {
                put(
                    &format!("{io}.leafWeight"),
                    ctrl,
                    Some(("blkio.leaf_weight", w.to_string())),
                    None,
                )?;
            }
            for (i, d) in b.weight_device().iter().flatten().enumerate() {
                let dev = format!("{}:{}", d.major(), d.minor());
                if let Some(w) = d.weight() {
                    let v1_file = if v1_weight == "blkio.weight" {
                        "blkio.weight_device"
                    } else {
                        "blkio.bfq.weight_device"
                    };
                    put(
                        &format!("{io}.weightDevice[{i}].weight"),
                        ctrl,
                        Some((v1_file, format!("{dev} {w}"))),
                        Some((v2_weight, format!("{dev} {}", v2w(w)))),
                    )?;
                }
                if let Some(w) = d.leaf_weight() {
                    put(
                        &format!("{io}.weightDevice[{i}].leafWeight"),
                        ctrl,
                        Some(("blkio.leaf_weight_device", format!("{dev} {w}"))),
                        None,
                    )?;
                }
            }
            for (name, v1_file, key, list) in [
                (
                    "throttleReadBpsDevice",
                    "blkio.throttle.read_bps_device",
                    "rbps",
                    b.throttle_read_bps_device(),
                ),
                (
                    "throttleWriteBpsDevice",
                    "blkio.throttle.write_bps_device",
                    "wbps",
                    b.throttle_write_bps_device(),
                ),
                (
                    "throttleReadIOPSDevice",
                    "blkio.throttle.read_iops_device",
                    "riops",
                    b.throttle_read_iops_device(),
                ),
                (
                    "throttleWriteIOPSDevice",
                    "blkio.throttle.write_iops_device",
                    "wiops",
                    b.throttle_write_iops_device(),
                ),
            ] {
                for (i, d) in list.iter().flatten().enumerate() {
                    let dev = format!("{}:{}", d.major(), d.minor());
                    let rate = if d.rate() == 0 {
                        "max".to_string()
                    } else {
                        d.rate().to_string()
                    };
                    put(
                        &format!("{io}.{name}[{i}]"),
                        ctrl,
                        Some((v1_file, format!("{dev} {}", d.rate()))),
                        Some(("io.max", format!("{dev} {key}={rate}"))),
                    )?;
                }
            }
        }
        for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
            let field = format!("linux.resources.hugepageLimits[{i}]");
            let size = h.page_size();
            let digits = size.trim_end_matches("B").trim_end_matches(['K', 'M', 'G']);
            if digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || !size.ends_with("B")
                || size.len() < digits.len() + 2
            {
                return Err(CgroupError::Invalid {
                    field,
                    why: format!("page size {size:?} is not like 2MB or 1GB"),
                });
            }
            let v1 = format!("hugetlb.{size}.limit_in_bytes");
            let v2 = format!("hugetlb.{size}.max");
            put(
                &field,
                "hugetlb",
                Some((v1.as_str(), h.limit().to_string())),
                Some((v2.as_str(), max(h.limit()))),
            )?;
        }
        if let Some(n) = r.network() {
            if let Some(id) = n.class_id() {
                put(
                    "linux.resources.network.classID",
                    "net_cls",
                    Some(("net_cls.classid", id.to_string())),
                    None,
                )?;
            }
            for (i, p) in n.priorities().iter().flatten().enumerate() {
                put(
                    &format!("linux.resources.network.priorities[{i}]"),
                    "net_prio",
                    Some((
                        "net_prio.ifpriomap",
                        format!("{} {}", p.name(), p.priority()),
                    )),
                    None,
                )?;
            }
        }
        for (dev, limit) in r.rdma().iter().flatten() {
            let mut value = dev.clone();
            if let Some(h) = limit.hca_handles() {
                value.push_str(&format!(" hca_handle={h}"));
            }
            if let Some(o) = limit.hca_objects() {
                value.push_str(&format!(" hca_object={o}"));
            }
            let field = format!("linux.resources.rdma[{dev:?}]");
            if dev.contains(char::is_whitespace) || value == *dev {
                return Err(CgroupError::Invalid {
                    field,
                    why: "needs a device name and hcaHandles or hcaObjects".into(),
                });
            }
            put(
                &field,
                "rdma",
                Some(("rdma.max", value.clone())),
                Some(("rdma.max", value)),
            )?;
        }
        // Written last, as runc does, so that a key overrides what a named field set.
        let mut unified: Vec<_> = r.unified().iter().flatten().collect();
        unified.sort();
        for (key, value) in unified {
            let field = format!("linux.resources.unified[{key:?}]");
            if key.contains('/') || key.is_empty() || key.starts_with('.') {
                return Err(CgroupError::Invalid {
                    field,
                    why: "a key is a file name of the container's cgroup".into(),
                });
            }
            let controller = key.split('.').next().unwrap_or_default();
            let dir = if controller == "cgroup" {
                if !UNIFIED_CORE_KEYS.contains(&key.as_str()) {
                    return Err(CgroupError::Invalid {
                        field,
                        why: format!(
                            "of the cgroup core files only {} may be set",
                            UNIFIED_CORE_KEYS.join(" and ")
                        ),
                    });
                }
                self.unified.clone()
            } else {
                self.v2_with(controller).cloned()
            };
            let Some(dir) = dir else {
                return Err(unsupported(
                    &field,
                    match &self.unified {
                        None => "unified keys need cgroup v2".into(),
                        Some(_) => format!(
                            "the {controller} controller is not enabled for the cgroup v2 tree here"
                        ),
                    },
                ));
            };
            if !dir.join(key).exists() {
                return Err(unsupported(
                    &field,
                    format!("no file {key} in the cgroup v2 tree"),
                ));
            }
            writes.push(Write {
                field,
                dir,
                file: key.clone(),
                value: value.clone(),
            });
        }
        // v1 device rules; v2's are an eBPF program (see [`Cgroup::apply`]).
        if !limits.devices.is_empty() {
            if let Some(dir) = self.v1_dir("devices") {
                for rule in &limits.devices {
                    writes.push(Write {
                        field: "linux.resources.devices".into(),
                        dir: dir.clone(),
                        file: if rule.allow {
                            "devices.allow"
                        } else {
                            "devices.deny"
                        }
                        .into(),
                        value: rule.v1_line(),
                    });
                }
            } else if self.unified.is_none() {
                return Err(unsupported(
                    "linux.resources.devices",
                    "neither a v1 devices hierarchy nor cgroup v2".into(),
                ));
            }
        }
        // Settings that need no write (useHierarchy on v2) leave an empty value.
        writes.retain(|w| !w.value.is_empty());
        Ok(writes)
    }

    /// Writes the limits, in the v1 hierarchies or the v2 tree that has each controller, and
    /// on cgroup v2 (a hybrid host's unified tree too) replaces the device program. A field no
    /// hierarchy can take is refused, naming it, before anything is written.
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        let writes = self.plan_writes(limits)?;
        let write = |w: &Write| {
            fs::write(w.dir.join(&w.file), &w.value).map_err(|err| CgroupError::Write {
                path: w.dir.join(&w.file),
                value: w.value.clone(),
                err,
            })
        };
        let mut i = 0;
        while i < writes.len() {
            let w = &writes[i];
            match write(w) {
                Ok(()) => {}
                // v1's memory limit may not exceed memory+swap: when growing both, raise
                // memsw first.
                Err(e) if w.file == "memory.limit_in_bytes" => {
                    let Some(memsw) = writes[i + 1..]
                        .iter()
                        .find(|n| n.file == "memory.memsw.limit_in_bytes")
                    else {
                        return Err(e);
                    };
                    write(memsw)?;
                    write(w)?;
                }
                Err(e) => return Err(e),
            }
            i += 1;
        }
        if !limits.devices.is_empty() {
            if let Some(dir) = &self.unified {
                replace_device_program(dir, &limits.devices)?;
            }
        }
        Ok(())
    }

    /// Reads the usage counters. v1 when the host's memory controller is v1.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        if let Some(mem) = self.v1_dir("memory") {
            u.v1 = true;
            u.memory_usage = read_u64(&mem.join("memory.usage_in_bytes"));
            u.memory_limit = read_u64(&mem.join("memory.limit_in_bytes"));
            u.memory_max_usage = read_u64(&mem.join("memory.max_usage_in_bytes"));
            u.memory_failcnt = read_u64(&mem.join("memory.failcnt"));
            u.memory_stat = read_keyed(&mem.join("memory.stat"));
            u.oom_kills = read_keyed(&mem.join("memory.oom_control"))
                .into_iter()
                .find(|(k, _)| k == "oom_kill")
                .map_or(0, |(_, v)| v);
        } else if let Some(dir) = &self.unified {
            u.memory_usage = read_u64(&dir.join("memory.current"));
            u.memory_limit = fs::read_to_string(dir.join("memory.max"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(u64::MAX);
            u.memory_max_usage = read_u64(&dir.join("memory.peak"));
            u.memory_stat = read_keyed(&dir.join("memory.stat"));
            u.oom_kills = read_keyed(&dir.join("memory.events"))
                .into_iter()
                .find(|(k, _)| k == "oom_kill")
                .map_or(0, |(_, v)| v);
        }
        if let Some(mem) = self.v1_dir("memory") {
            u.memory_kernel_usage = read_u64(&mem.join("memory.kmem.usage_in_bytes"));
            u.memory_swap_usage = read_u64(&mem.join("memory.memsw.usage_in_bytes"));
            u.memory_swap_limit = read_u64(&mem.join("memory.memsw.limit_in_bytes"));
        } else if let Some(dir) = &self.unified {
            u.memory_swap_usage = read_u64(&dir.join("memory.swap.current"));
        }
        let cpu_stat = self
            .v1_dir("cpu")
            .map(|d| read_keyed(&d.join("cpu.stat")))
            .or_else(|| {
                self.unified
                    .as_ref()
                    .map(|d| read_keyed(&d.join("cpu.stat")))
            })
            .unwrap_or_default();
        let get = |k: &str| cpu_stat.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
        u.cpu_periods = get("nr_periods");
        u.cpu_throttled_periods = get("nr_throttled");
        // v1 counts nanoseconds, v2 microseconds.
        u.cpu_throttled_ns = get("throttled_time").max(get("throttled_usec") * 1000);
        if let Some(acct) = self.v1_dir("cpuacct") {
            u.cpu_total_ns = read_u64(&acct.join("cpuacct.usage"));
            u.cpu_user_ns = read_u64(&acct.join("cpuacct.usage_user"));
            u.cpu_kernel_ns = read_u64(&acct.join("cpuacct.usage_sys"));
        } else if let Some(dir) = &self.unified {
            let stat = read_keyed(&dir.join("cpu.stat"));
            let get = |k: &str| {
                stat.iter()
                    .find(|(n, _)| n == k)
                    .map_or(0, |(_, v)| v * 1000)
            };
            u.cpu_total_ns = get("usage_usec");
            u.cpu_user_ns = get("user_usec");
            u.cpu_kernel_ns = get("system_usec");
        }
        if let Some(dir) = self.v1_dir("pids").or_else(|| self.unified.clone()) {
            u.pids_current = read_u64(&dir.join("pids.current"));
            u.pids_limit = read_u64(&dir.join("pids.max"));
        }
        if u.pids_current == 0 {
            u.pids_current = self.pids().map_or(0, |p| p.len() as u64);
        }
        u
    }

    /// Whether the container's directory already exists (another container's, or a parent
    /// shared on purpose): such a cgroup is joined as it is, never limited, emptied or removed
    /// by this container.
    pub fn exists(&self) -> bool {
        self.all().next().is_some_and(|d| d.is_dir())
    }

    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        self.unified.iter().chain(self.v1.iter())
    }

    /// Creates the directories. On cgroup v2 each level from the root down to the parent first
    /// passes the controllers the limits need to its children (`cgroup.subtree_control`; a
    /// child only has the files of the controllers its parent enables). In a v1 cpuset
    /// hierarchy a group with empty `cpuset.cpus` or `cpuset.mems` refuses tasks, so every such
    /// level on the way inherits its parent's; v2 cpusets inherit by themselves when empty.
    pub fn create(&self) -> Result<(), CgroupError> {
        if let Some(leaf) = &self.unified {
            let v2_root = leaf
                .ancestors()
                .nth(self.rel.components().count())
                .unwrap_or(leaf);
            enable_controllers(v2_root, &self.rel)?;
            fs::create_dir_all(leaf).map_err(io_err("create cgroup", leaf))?;
        }
        for dir in &self.v1 {
            fs::create_dir_all(dir).map_err(io_err("create cgroup", dir))?;
            let chain: Vec<&Path> = dir
                .ancestors()
                .skip_while(|d| !d.join("cpuset.cpus").exists())
                .take_while(|d| d.join("cpuset.cpus").exists())
                .collect();
            for level in chain.iter().rev() {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let own = level.join(file);
                    let Some(parent) = level.parent() else {
                        continue;
                    };
                    let theirs = parent.join(file);
                    if !theirs.exists() {
                        continue;
                    }
                    let text = fs::read_to_string(&own).map_err(io_err("read", &own))?;
                    if text.trim().is_empty() {
                        let value = fs::read_to_string(&theirs).map_err(io_err("read", &theirs))?;
                        let value = value.trim();
                        fs::write(&own, value).map_err(|err| CgroupError::Write {
                            path: own.clone(),
                            value: value.into(),
                            err,
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves `pid` into the cgroup in every hierarchy.
    pub fn add(&self, pid: i32) -> io::Result<()> {
        for dir in self.all() {
            fs::write(dir.join("cgroup.procs"), pid.to_string())
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        }
        Ok(())
    }

    /// The directory whose `cgroup.procs` lists the container's processes: the unified tree
    /// (which a hybrid host's processes join too), or the first v1 hierarchy.
    fn tracking_dir(&self) -> Option<&PathBuf> {
        self.unified.as_ref().or(self.v1.first())
    }

    /// The processes in the cgroup and its sub-cgroups, from the unified tree, or the first
    /// v1 hierarchy, as pids of the caller's pid namespace (0 for a process outside it:
    /// cgroup v2 lists those as 0, which must never reach kill(2), where it means "my group").
    fn listed(&self) -> io::Result<Vec<i32>> {
        let Some(dir) = self.tracking_dir() else {
            return Ok(Vec::new());
        };
        let mut pids = Vec::new();
        for d in std::iter::once(dir.clone()).chain(sub_cgroups(dir)?) {
            match fs::read_to_string(d.join("cgroup.procs")) {
                Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
                // A sub-cgroup removed while we read: nothing of it left to list.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(pids)
    }

    /// The processes in the cgroup and its sub-cgroups that the caller can see (see
    /// [`Cgroup::listed`]).
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        let mut pids = self.listed()?;
        pids.retain(|p| *p > 0);
        Ok(pids)
    }

    /// Whether `pid` is in the cgroup or one below it now, by `/proc/<pid>/cgroup` (the shim
    /// runs in the host's cgroup namespace, where the paths there are the hierarchy's).
    fn has_member(&self, pid: i32) -> bool {
        let Some(dir) = self.tracking_dir() else {
            return false;
        };
        // v1 lines name their hierarchy: "4:memory:/path", "9:name=systemd:/path".
        let hierarchy = dir
            .strip_prefix(&self.root)
            .ok()
            .and_then(|d| d.components().next())
            .and_then(|c| c.as_os_str().to_str())
            .filter(|_| self.unified.is_none())
            .map(str::to_owned);
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return false;
        };
        let ours = Path::new("/").join(&self.rel);
        text.lines().any(|line| {
            let mut f = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
                return false;
            };
            let right_hierarchy = match &hierarchy {
                None => controllers.is_empty(),
                Some(h) => controllers
                    .split(',')
                    .any(|c| c == h || c.strip_prefix("name=") == Some(h)),
            };
            right_hierarchy && Path::new(path).starts_with(&ours)
        })
    }

    /// Sends `signal` to every process of the cgroup and its sub-cgroups, none escaping by
    /// forking meanwhile (runc's way, with pidfds):
    /// 1. SIGKILL with `cgroup.kill` (cgroup v2, a hybrid host's unified tree; Linux 5.14+):
    ///    the kernel kills the subtree at once, processes being forked included; a v1 freezer
    ///    is thawed after, since a task frozen there acts on SIGKILL only once thawed;
    /// 2. otherwise the cgroup is frozen (nothing forks or runs while frozen), each listed
    ///    process is signalled through a pidfd opened after the listing and only if it is
    ///    still a member then (its pid may have been reaped and reused in between), and the
    ///    freezer is put back: thawed after SIGKILL, else as it was (a paused container stays
    ///    paused, its signals pending).
    ///
    /// A cgroup that does not exist has nothing to signal.
    pub fn kill_all(&self, signal: Signal) -> io::Result<()> {
        let Some(dir) = self.tracking_dir() else {
            return Ok(());
        };
        if !dir.is_dir() {
            return Ok(());
        }
        let has_v1_freezer = self.v1_dir("freezer").is_some();
        if signal == Signal::SIGKILL {
            if let Some(unified) = &self.unified {
                match fs::write(unified.join("cgroup.kill"), "1") {
                    Ok(()) => {
                        if has_v1_freezer && self.is_frozen() {
                            self.freeze(false)?;
                        }
                        return Ok(());
                    }
                    // Before Linux 5.14 there is no cgroup.kill: the freezer's way below.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && unified.is_dir() => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("write 1 to {}/cgroup.kill: {e}", unified.display()),
                        ))
                    }
                }
            }
        }
        let was_frozen = self.is_frozen();
        // Without a freezer (or one that did not settle, a task in uninterruptible sleep) the
        // processes are still signalled, each checked through its pidfd.
        let froze = match self.freeze(true) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("signal {}: freeze: {e}", dir.display());
                e.kind() == io::ErrorKind::TimedOut
            }
        };
        let sent = self.signal_members(signal);
        if froze && (signal == Signal::SIGKILL || !was_frozen) {
            self.freeze(false)?;
        }
        sent
    }

    fn signal_members(&self, signal: Signal) -> io::Result<()> {
        for pid in self.pids()? {
            let pidfd = match PidFd::open(pid) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("pidfd of {pid}: {e}"))),
            };
            // The pidfd is of whoever has the pid now: signal it only if that is a member.
            if !self.has_member(pid) {
                continue;
            }
            match pidfd.send_signal(signal as i32) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("signal {pid} with {signal}: {e}"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Kills every process of the cgroup and waits up to `limit` for them to be gone,
    /// killing again meanwhile (a process may be caught in the middle of a fork by the
    /// freezer's way). Err: some are still there.
    pub fn kill_and_wait(&self, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        let mut round = 0u32;
        loop {
            if round % 10 == 0 {
                self.kill_all(Signal::SIGKILL)?;
            }
            let left = self.pids()?;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let dir = self.tracking_dir().cloned().unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} process(es) still in {} {limit:?} after SIGKILL: {left:?}",
                        left.len(),
                        dir.display()
                    ),
                ));
            }
            round += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Refuses a cgroup that exists with processes in it, or frozen, as runc does at create:
    /// those processes are someone else's. An empty one is joined (and stays its owner's:
    /// never removed by the container).
    pub fn check_joinable(&self) -> Result<(), CgroupError> {
        let Some(dir) = self.tracking_dir() else {
            return Ok(());
        };
        if !self.exists() {
            return Ok(());
        }
        // Processes outside our pid namespace count too.
        let pids = self
            .listed()
            .map_err(io_err("list the processes of", dir))?;
        if !pids.is_empty() {
            return Err(CgroupError::InUse {
                path: dir.clone(),
                count: pids.len(),
            });
        }
        if self.is_frozen() {
            return Err(CgroupError::Frozen { path: dir.clone() });
        }
        Ok(())
    }

    /// Removes the directories, sub-cgroups first (not the parents, which other containers
    /// may share). A group still busy with exiting tasks is retried for a short while.
    pub fn remove(&self) -> io::Result<()> {
        let mut last = Ok(());
        for leaf in self.all() {
            let below = match sub_cgroups(leaf) {
                Ok(dirs) => dirs,
                Err(e) => {
                    last = Err(e);
                    Vec::new()
                }
            };
            for dir in below.iter().rev().chain(std::iter::once(leaf)) {
                for attempt in 0..50 {
                    match fs::remove_dir(dir) {
                        Ok(()) => break,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                        Err(e) if attempt == 49 => {
                            last = Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }
        }
        last
    }
}

/// The cgroups below `dir`, parents before their children; none if `dir` is gone.
fn sub_cgroups(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = Vec::new();
    let mut current = dir.to_path_buf();
    let mut next = 0;
    loop {
        match fs::read_dir(&current) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    if entry.file_type()?.is_dir() {
                        found.push(entry.path());
                    }
                }
            }
            // Removed meanwhile: nothing below it either.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", current.display()),
                ))
            }
        }
        let Some(d) = found.get(next) else {
            return Ok(found);
        };
        current = d.clone();
        next += 1;
    }
}

/// Enables [`V2_CONTROLLERS`] (those each level offers in `cgroup.controllers`) in
/// `cgroup.subtree_control` of `root` and of every directory on the way to `rel`'s parent,
/// creating the directories. All of a level's controllers go in one write; when it fails they
/// are written one at a time so that the error names the controller.
pub fn enable_controllers(root: &Path, rel: &Path) -> Result<(), CgroupError> {
    let mut level = root.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    let parents = &parents[..parents.len().saturating_sub(1)];
    let mut i = 0;
    loop {
        let offered = level.join("cgroup.controllers");
        let offered = fs::read_to_string(&offered).map_err(io_err("read", &offered))?;
        let control = level.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&control).map_err(io_err("read", &control))?;
        let wanted: Vec<&str> = V2_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| offered.split_whitespace().any(|o| o == *c))
            .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
            .collect();
        if !wanted.is_empty() {
            let all: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
            if fs::write(&control, all.join(" ")).is_err() {
                for c in &wanted {
                    fs::write(&control, format!("+{c}")).map_err(|err| CgroupError::Enable {
                        cgroup: level.clone(),
                        controller: (*c).into(),
                        err,
                    })?;
                }
            }
        }
        let Some(next) = parents.get(i) else {
            return Ok(());
        };
        level.push(next);
        i += 1;
        match fs::create_dir(&level) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create cgroup", &level)(e)),
        }
    }
}

/// Loads the device program for `rules` and attaches it to the v2 cgroup `dir` in place of the
/// programs of ours attached there before (named [`usernsrs_sys::bpf::PROGRAM_NAME`]); the
/// programs of whoever owns a cgroup that existed before the container stay.
///
/// Attached with `BPF_F_ALLOW_MULTI`, as runc and systemd do: the programs of the ancestors
/// (a systemd slice's) keep running, since all must allow, and the container's own
/// sub-cgroups (systemd or a runtime inside it, given a delegated tree) can attach programs
/// that only narrow further; without the flag they would get EPERM, and with
/// `BPF_F_ALLOW_OVERRIDE` they could replace, so widen, ours. The new program is attached
/// before the old ones are detached, so in between the old and new rules apply together:
/// never more access than either allows. The fds are closed on return: an attached program is
/// held by the cgroup, and goes with it when the cgroup is removed.
pub fn replace_device_program(dir: &Path, rules: &[DeviceRule]) -> Result<(), CgroupError> {
    use std::os::fd::AsFd;
    use usernsrs_sys::bpf;
    let fail = |err| CgroupError::DeviceFilter {
        cgroup: dir.to_path_buf(),
        err,
    };
    let insns = crate::devices::program(rules);
    let prog = bpf::load_device_program(&insns, crate::devices::LICENSE).map_err(|err| {
        CgroupError::DeviceLoad {
            cgroup: dir.to_path_buf(),
            err,
        }
    })?;
    let cgroup = fs::File::open(dir).map_err(fail)?;
    let before = bpf::attached_device_programs(cgroup.as_fd()).map_err(fail)?;
    bpf::attach_device_program(cgroup.as_fd(), prog.as_fd(), bpf::BPF_F_ALLOW_MULTI)
        .map_err(fail)?;
    for id in before {
        let old = bpf::program_by_id(id).map_err(fail)?;
        // Only ours: a program someone else attached to a cgroup that existed before the
        // container keeps applying (removing it could only widen access).
        if bpf::program_name(old.as_fd()).map_err(fail)? != bpf::PROGRAM_NAME {
            continue;
        }
        bpf::detach_device_program(cgroup.as_fd(), old.as_fd()).map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_systemd_style_paths() {
        assert_eq!(relative_path("/default/c1"), PathBuf::from("default/c1"));
        assert_eq!(
            relative_path("kubepods-besteffort-pod12.slice:cri-containerd:abc"),
            PathBuf::from("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope")
        );
        assert_eq!(
            relative_path(":p:n"),
            PathBuf::from("system.slice/p-n.scope")
        );
    }

    #[test]
    fn lays_out_hybrid_hierarchies_and_inherits_cpusets() {
        let root = tempfile_dir();
        for h in ["memory", "cpuset", "unified"] {
            fs::create_dir_all(root.join(h)).expect("mkdir");
            fs::write(root.join(h).join("cgroup.procs"), "").expect("procs");
        }
        fs::write(root.join("unified/cgroup.controllers"), "").expect("controllers");
        fs::write(root.join("unified/cgroup.subtree_control"), "").expect("subtree");
        v2_level(&root.join("unified/default"), "");
        fs::write(root.join("cpuset/cpuset.cpus"), "0-1\n").expect("cpus");
        fs::write(root.join("cpuset/cpuset.mems"), "0\n").expect("mems");
        let cg = Cgroup::new(&root, "/default/c1").expect("layout");
        assert_eq!(cg.unified, Some(root.join("unified/default/c1")));
        assert_eq!(
            cg.v1,
            vec![
                root.join("cpuset/default/c1"),
                root.join("memory/default/c1")
            ]
        );
        // A real cgroupfs creates these files itself; emulate it for the new levels.
        fs::create_dir_all(root.join("cpuset/default")).expect("mkdir");
        fs::write(root.join("cpuset/default/cpuset.cpus"), "").expect("cpus");
        fs::write(root.join("cpuset/default/cpuset.mems"), "").expect("mems");
        cg.create().expect("create");
        assert_eq!(
            fs::read_to_string(root.join("cpuset/default/cpuset.cpus")).expect("read"),
            "0-1"
        );
        fs::write(root.join("unified/default/c1/cgroup.procs"), "12\n34\n").expect("procs");
        assert_eq!(cg.pids().expect("pids"), vec![12, 34]);
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn refuses_parent_components() {
        let root = tempfile_dir();
        let err = Cgroup::new(&root, "/a/../../etc").expect_err("dotdot");
        assert!(err.to_string().contains("must not contain"), "{err}");
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn refuses_the_root_cgroup_naming_the_field() {
        let root = tempfile_dir();
        for path in ["/", "", "//", "/..", ".", "./", "/a/..", "a/../.."] {
            let err = Cgroup::new(&root, path).expect_err(path);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{path:?}: {err}");
            assert!(
                err.to_string().starts_with("linux.cgroupsPath"),
                "{path:?}: {err}"
            );
        }
        assert!(Cgroup::new(&root, "/a/b").is_ok());
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn lists_and_removes_sub_cgroups_too() {
        let root = tempfile_dir();
        fs::write(root.join("cgroup.controllers"), "").expect("v2 root");
        let cg = Cgroup::new(&root, "/ns/c1").expect("layout");
        let leaf = root.join("ns/c1");
        for (dir, procs) in [
            (leaf.clone(), "10\n0\n"),
            (leaf.join("a"), "11\n12\n"),
            (leaf.join("a/b"), "13\n"),
        ] {
            fs::create_dir_all(&dir).expect("mkdir");
            fs::write(dir.join("cgroup.procs"), procs).expect("procs");
        }
        let mut pids = cg.pids().expect("pids");
        pids.sort_unstable();
        assert_eq!(pids, vec![10, 11, 12, 13]);
        assert_eq!(
            sub_cgroups(&leaf).expect("walk"),
            vec![leaf.join("a"), leaf.join("a/b")]
        );
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn joins_only_an_empty_existing_cgroup() {
        let root = tempfile_dir();
        fs::write(root.join("cgroup.controllers"), "").expect("v2 root");
        let cg = Cgroup::new(&root, "/ns/c1").expect("layout");
        cg.check_joinable()
            .expect("a cgroup that does not exist yet");
        let leaf = root.join("ns/c1");
        fs::create_dir_all(&leaf).expect("mkdir");
        fs::write(leaf.join("cgroup.procs"), "").expect("procs");
        cg.check_joinable().expect("an empty one");
        fs::write(leaf.join("cgroup.procs"), "7\n8\n").expect("procs");
        let err = cg.check_joinable().expect_err("with processes");
        assert!(
            err.to_string().contains("not empty: 2 process(es)"),
            "{err}"
        );
        fs::write(leaf.join("cgroup.procs"), "").expect("procs");
        fs::write(leaf.join("cgroup.events"), "populated 0\nfrozen 1\n").expect("events");
        let err = cg.check_joinable().expect_err("frozen");
        assert!(err.to_string().contains("frozen"), "{err}");
        fs::remove_dir_all(&root).expect("cleanup");
    }

    /// A fake cgroup v2 directory: the files the kernel would make, with `controllers`
    /// offered to its children's parent (`cgroup.controllers`).
    fn v2_level(dir: &Path, controllers: &str) {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join("cgroup.controllers"), controllers).expect("controllers");
        fs::write(dir.join("cgroup.subtree_control"), "").expect("subtree");
        fs::write(dir.join("cgroup.procs"), "").expect("procs");
    }

    fn read(path: PathBuf) -> String {
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn resources(json: &str) -> Limits {
        let r: oci_spec::runtime::LinuxResources = serde_json::from_str(json).expect("resources");
        Limits::from_resources(&r).expect("valid resources")
    }

    /// A pure v2 tree with /ceo/c1 created and every controller passed down to it, each
    /// file of `files` present in the leaf (the kernel makes them; the fake must).
    fn v2_container(root: &Path, files: &[&str]) -> Cgroup {
        let all = "cpuset cpu io memory pids hugetlb rdma";
        v2_level(root, all);
        v2_level(&root.join("ceo"), all);
        let cg = Cgroup::new(root, "/ceo/c1").expect("layout");
        cg.create().expect("create");
        fs::write(root.join("ceo/cgroup.subtree_control"), all).expect("subtree");
        for f in files {
            fs::write(root.join("ceo/c1").join(f), "").expect("file");
        }
        cg
    }

    #[test]
    fn enables_controllers_in_every_ancestor_on_v2_without_copying_cpusets() {
        let root = tempfile_dir();
        v2_level(&root, "cpuset cpu io memory hugetlb pids rdma misc");
        // /ceo exists (containerd's namespace level) with an empty cpuset.cpus: on v2 empty
        // means "inherit", and the root has no cpuset.cpus to copy from.
        v2_level(&root.join("ceo"), "cpuset cpu io memory hugetlb pids rdma");
        fs::write(root.join("ceo/cpuset.cpus"), "").expect("cpus");
        fs::write(root.join("ceo/cpuset.mems"), "").expect("mems");
        let cg = Cgroup::new(&root, "/ceo/e-shim").expect("layout");
        cg.create().expect("create on v2");
        assert_eq!(
            read(root.join("cgroup.subtree_control")),
            "+cpuset +cpu +io +memory +pids +hugetlb +rdma"
        );
        assert_eq!(
            read(root.join("ceo/cgroup.subtree_control")),
            "+cpuset +cpu +io +memory +pids +hugetlb +rdma"
        );
        assert!(root.join("ceo/e-shim").is_dir());
        assert_eq!(read(root.join("ceo/cpuset.cpus")), "");
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn enables_only_what_each_level_offers_and_lacks() {
        let root = tempfile_dir();
        v2_level(&root, "cpu memory pids");
        fs::write(root.join("cgroup.subtree_control"), "cpu").expect("subtree");
        v2_level(&root.join("a"), "memory");
        v2_level(&root.join("a/b"), "");
        let cg = Cgroup::new(&root, "/a/b/c").expect("layout");
        cg.create().expect("create");
        assert_eq!(read(root.join("cgroup.subtree_control")), "+memory +pids");
        assert_eq!(read(root.join("a/cgroup.subtree_control")), "+memory");
        // Nothing offered: nothing written.
        assert_eq!(read(root.join("a/b/cgroup.subtree_control")), "");
        // The leaf's own subtree_control is never written: it holds the processes.
        assert!(!root.join("a/b/c/cgroup.subtree_control").exists());
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn enabling_failure_names_the_cgroup_and_the_controller() {
        let root = tempfile_dir();
        v2_level(&root, "cpu");
        v2_level(&root.join("ceo"), "cpu");
        // A file that reads but refuses writes, as the kernel's does with EBUSY or ENOENT.
        fs::remove_file(root.join("ceo/cgroup.subtree_control")).expect("rm");
        std::os::unix::fs::symlink("/proc/version", root.join("ceo/cgroup.subtree_control"))
            .expect("symlink");
        let cg = Cgroup::new(&root, "/ceo/f-shim").expect("layout");
        let err = cg.create().expect_err("cannot enable");
        let text = err.to_string();
        assert!(
            text.contains("enable the cpu controller in")
                && text.contains("/ceo/cgroup.subtree_control"),
            "{text}"
        );
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn applies_every_resource_field_to_v2_files() {
        let root = tempfile_dir();
        let files = [
            "memory.max",
            "memory.swap.max",
            "memory.low",
            "cpu.weight",
            "cpu.max",
            "cpu.max.burst",
            "cpu.idle",
            "cpuset.cpus",
            "cpuset.mems",
            "pids.max",
            "io.weight",
            "io.max",
            "hugetlb.2MB.max",
            "rdma.max",
            "memory.high",
            "cgroup.max.depth",
        ];
        let cg = v2_container(&root, &files);
        let limits = resources(
            r#"{
            "memory": {"limit": 1073741824, "swap": 2147483648, "reservation": 536870912,
                       "useHierarchy": true},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "burst": 1000,
                    "idle": 0, "cpus": "0-1", "mems": "0"},
            "pids": {"limit": 99},
            "blockIO": {"weight": 500,
                        "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
                        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
            "rdma": {"mlx5_0": {"hcaHandles": 3, "hcaObjects": 1000}},
            "unified": {"memory.high": "900000000", "cgroup.max.depth": "3"}
        }"#,
        );
        cg.apply(&limits).expect("apply");
        let leaf = |f: &str| read(root.join("ceo/c1").join(f));
        assert_eq!(leaf("memory.max"), "1073741824");
        assert_eq!(leaf("memory.swap.max"), "1073741824");
        assert_eq!(leaf("memory.low"), "536870912");
        assert_eq!(leaf("cpu.weight"), "39");
        assert_eq!(leaf("cpu.max"), "50000 100000");
        assert_eq!(leaf("cpu.max.burst"), "1000");
        assert_eq!(leaf("cpu.idle"), "0");
        assert_eq!(leaf("cpuset.cpus"), "0-1");
        assert_eq!(leaf("cpuset.mems"), "0");
        assert_eq!(leaf("pids.max"), "99");
        // The last write to io.weight is the per-device one; both went in (the fake file keeps
        // only the last).
        assert_eq!(leaf("io.weight"), "8:0 910");
        assert_eq!(leaf("io.max"), "8:0 rbps=1048576");
        assert_eq!(leaf("hugetlb.2MB.max"), "4194304");
        assert_eq!(leaf("rdma.max"), "mlx5_0 hca_handle=3 hca_object=1000");
        assert_eq!(leaf("memory.high"), "900000000");
        assert_eq!(leaf("cgroup.max.depth"), "3");
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn refuses_on_v2_what_v2_cannot_apply_naming_the_field() {
        let root = tempfile_dir();
        let cg = v2_container(&root, &["memory.max", "cpu.weight", "pids.max"]);
        fs::write(root.join("ceo/c1/memory.max"), "max").expect("max");
        let cases = [
            (
                r#"{"memory": {"limit": 1000000, "swappiness": 10}}"#,
                "linux.resources.memory.swappiness: not supported on this host",
            ),
            (
                r#"{"memory": {"kernel": 1000000}}"#,
                "linux.resources.memory.kernel: not supported on this host",
            ),
            (
                r#"{"memory": {"disableOOMKiller": true}}"#,
                "linux.resources.memory.disableOOMKiller: not supported on this host",
            ),
            (
                r#"{"memory": {"limit": 1000000, "swap": 2000000}}"#,
                "linux.resources.memory.swap: not supported on this host: no memory.swap.max",
            ),
            (
                r#"{"memory": {"limit": 2000000, "swap": 1000000}}"#,
                "linux.resources.memory.swap: memory+swap 1000000 is below",
            ),
            (
                r#"{"cpu": {"realtimeRuntime": 950000}}"#,
                "linux.resources.cpu.realtimeRuntime: not supported on this host",
            ),
            (
                r#"{"blockIO": {"leafWeight": 300}}"#,
                "linux.resources.blockIO.leafWeight: not supported on this host",
            ),
            (
                r#"{"blockIO": {"weight": 300}}"#,
                "linux.resources.blockIO.weight: not supported on this host: no io.weight",
            ),
            (
                r#"{"hugepageLimits": [{"pageSize": "1GB", "limit": 0}]}"#,
                "linux.resources.hugepageLimits[0]: not supported on this host",
            ),
            (
                r#"{"hugepageLimits": [{"pageSize": "../2MB", "limit": 0}]}"#,
                "linux.resources.hugepageLimits[0]: page size",
            ),
            (
                r#"{"network": {"classID": 1048577}}"#,
                "linux.resources.network.classID: not supported on this host",
            ),
            (
                r#"{"rdma": {"mlx5_0": {"hcaHandles": 1}}}"#,
                "linux.resources.rdma[\"mlx5_0\"]: not supported on this host",
            ),
            (
                r#"{"unified": {"cgroup.procs": "1"}}"#,
                "linux.resources.unified[\"cgroup.procs\"]: of the cgroup core files only",
            ),
            (
                r#"{"unified": {"../cpu.weight": "1"}}"#,
                "linux.resources.unified[\"../cpu.weight\"]: a key is a file name",
            ),
            (
                r#"{"unified": {"misc.max": "x 1"}}"#,
                "linux.resources.unified[\"misc.max\"]: not supported on this host",
            ),
        ];
        for (json, want) in cases {
            let limits = resources(json);
            let err = cg.apply(&limits).expect_err(json);
            let text = crate::error_chain(&err);
            assert!(text.starts_with(want), "{json}: {text}");
        }
        // A refusal comes before any write: the memory limit of the first case is not set.
        assert_eq!(read(root.join("ceo/c1/memory.max")), "max");
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn applies_v1_fields_and_refuses_unified_without_v2() {
        let root = tempfile_dir();
        for h in ["memory", "cpu,cpuacct", "blkio"] {
            fs::create_dir_all(root.join(h)).expect("mkdir");
            fs::write(root.join(h).join("cgroup.procs"), "").expect("procs");
        }
        let cg = Cgroup::new(&root, "/ns/c1").expect("layout");
        cg.create().expect("create");
        for f in [
            "memory/ns/c1/memory.limit_in_bytes",
            "memory/ns/c1/memory.memsw.limit_in_bytes",
            "memory/ns/c1/memory.swappiness",
            "memory/ns/c1/memory.soft_limit_in_bytes",
            "cpu,cpuacct/ns/c1/cpu.shares",
            "cpu,cpuacct/ns/c1/cpu.rt_runtime_us",
            "blkio/ns/c1/blkio.throttle.write_iops_device",
        ] {
            fs::write(root.join(f), "").expect("file");
        }
        let limits = resources(
            r#"{"memory": {"limit": 1000000, "swap": 3000000, "swappiness": 0,
                           "reservation": 500000},
                "cpu": {"shares": 512, "realtimeRuntime": 1000},
                "blockIO": {"throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 10}]}}"#,
        );
        cg.apply(&limits).expect("apply v1");
        let v1 = |f: &str| read(root.join(f));
        assert_eq!(v1("memory/ns/c1/memory.limit_in_bytes"), "1000000");
        // v1 keeps the OCI value: memory plus swap.
        assert_eq!(v1("memory/ns/c1/memory.memsw.limit_in_bytes"), "3000000");
        assert_eq!(v1("memory/ns/c1/memory.swappiness"), "0");
        assert_eq!(v1("memory/ns/c1/memory.soft_limit_in_bytes"), "500000");
        assert_eq!(v1("cpu,cpuacct/ns/c1/cpu.shares"), "512");
        assert_eq!(v1("cpu,cpuacct/ns/c1/cpu.rt_runtime_us"), "1000");
        assert_eq!(
            v1("blkio/ns/c1/blkio.throttle.write_iops_device"),
            "8:16 10"
        );
        for (json, want) in [
            (
                r#"{"unified": {"memory.high": "1"}}"#,
                "linux.resources.unified[\"memory.high\"]: not supported on this host: unified keys need cgroup v2",
            ),
            (
                r#"{"blockIO": {"weight": 100}}"#,
                "linux.resources.blockIO.weight: not supported on this host: no blkio.bfq.weight",
            ),
            (
                r#"{"pids": {"limit": 10}}"#,
                "linux.resources.pids.limit: not supported on this host: no pids controller",
            ),
            (
                r#"{"devices": [{"allow": false, "access": "rwm"}]}"#,
                "linux.resources.devices: not supported on this host: neither a v1 devices",
            ),
        ] {
            let err = cg.apply(&resources(json)).expect_err(json);
            let text = crate::error_chain(&err);
            assert!(text.starts_with(want), "{json}: {text}");
        }
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn writes_v1_device_rules_deny_all_then_defaults() {
        let root = tempfile_dir();
        fs::create_dir_all(root.join("devices")).expect("mkdir");
        fs::write(root.join("devices/cgroup.procs"), "").expect("procs");
        let cg = Cgroup::new(&root, "/c1").expect("layout");
        let mut limits = Limits::default();
        limits.allow_container_devices(&[]);
        let writes = cg.plan_writes(&limits).expect("plan");
        let lines: Vec<(String, String)> = writes.into_iter().map(|w| (w.file, w.value)).collect();
        assert_eq!(lines[0], ("devices.deny".into(), "a *:* rwm".into()));
        assert_eq!(lines[1], ("devices.allow".into(), "c *:* m".into()));
        assert!(lines.contains(&("devices.allow".into(), "c 1:3 rwm".into())));
        assert!(lines.contains(&("devices.allow".into(), "c 10:200 rwm".into())));
        assert!(!lines
            .iter()
            .any(|(_, v)| v.starts_with("b ") && v.contains('r')));
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn converts_like_runc() {
        assert_eq!(v2_swap(2000, 1000), Ok(Some("1000".into())));
        assert_eq!(v2_swap(-1, 1000), Ok(Some("max".into())));
        assert_eq!(v2_swap(0, -1), Ok(Some("max".into())));
        assert_eq!(v2_swap(0, 1000), Ok(None));
        assert!(v2_swap(2000, 0).is_err());
        assert!(v2_swap(500, 1000).is_err());
        assert_eq!(v2_weight_from_shares(2), 1);
        assert_eq!(v2_weight_from_shares(1024), 39);
        assert_eq!(v2_weight_from_shares(262_144), 10_000);
        assert_eq!(v2_io_weight(10), 1);
        assert_eq!(v2_io_weight(1000), 10_000);
    }

    #[test]
    fn containers_without_cgroups_path_get_one_per_namespace() {
        assert_eq!(
            default_cgroups_path("ceo", "e-shim"),
            "/usernsrs/ceo/e-shim"
        );
        assert_eq!(
            relative_path(&default_cgroups_path("k8s.io", "abc")),
            PathBuf::from("usernsrs/k8s.io/abc")
        );
    }

    #[test]
    fn no_resources_means_no_writes_but_device_rules() {
        let root = tempfile_dir();
        let cg = v2_container(&root, &[]);
        assert!(cg.plan_writes(&Limits::default()).expect("plan").is_empty());
        fs::remove_dir_all(&root).expect("cleanup");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "usernsrs-cgroup-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        fs::create_dir_all(&dir).expect("tempdir");
        dir
    }
}
