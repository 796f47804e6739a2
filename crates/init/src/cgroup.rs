//! The container's cgroup: created before the process runs, used to list and signal its
//! processes, removed at delete.
//!
//! Hosts come as pure cgroup v2 (`<root>/cgroup.controllers` exists) or as v1 hierarchies with
//! the v2 tree mounted at `<root>/unified` (hybrid, as on this project's machines). In hybrid mode
//! the container joins the unified tree (which tracks its processes) and every v1 hierarchy.
//! `linux.cgroupsPath` is either a path (`/default/id`) or systemd's `slice:prefix:name`, which is
//! expanded the way systemd lays it out. The root is injectable so tests run on a tempdir.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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

/// The resource limits the shim applies (from `linux.resources` or an Update).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub pids: Option<i64>,
    /// Device rules in v1 `devices.allow`/`devices.deny` form (`c 1:3 rwm`), in order.
    pub devices: Vec<(bool, String)>,
}

/// Devices every container may use whatever its rules deny (runc's default list): the ones the
/// shim binds into /dev, the pty multiplexer and the ptys.
pub const DEFAULT_DEVICE_RULES: [&str; 9] = [
    "c 1:3 rwm",   // null
    "c 1:5 rwm",   // zero
    "c 1:7 rwm",   // full
    "c 1:8 rwm",   // random
    "c 1:9 rwm",   // urandom
    "c 5:0 rwm",   // tty
    "c 5:1 rwm",   // console
    "c 5:2 rwm",   // ptmx
    "c 136:* rwm", // pts
];

impl Limits {
    /// Adds, after the spec's own rules, allow rules for the default devices and for the
    /// devices the spec lists in `linux.devices`, as runc does: CRI sends only "deny all".
    pub fn allow_container_devices(&mut self, devices: &[oci_spec::runtime::LinuxDevice]) {
        if self.devices.is_empty() {
            return;
        }
        self.devices
            .extend(DEFAULT_DEVICE_RULES.iter().map(|r| (true, r.to_string())));
        for d in devices {
            let typ = match d.typ() {
                oci_spec::runtime::LinuxDeviceType::B => "b",
                _ => "c",
            };
            self.devices
                .push((true, format!("{typ} {}:{} rwm", d.major(), d.minor())));
        }
    }

    /// The limits of an OCI `linux.resources`.
    pub fn from_resources(r: &oci_spec::runtime::LinuxResources) -> Self {
        let mem = r.memory().as_ref();
        let cpu = r.cpu().as_ref();
        let num = |v: Option<i64>| v.map_or("*".to_string(), |n| n.to_string());
        Limits {
            memory: mem.and_then(|m| m.limit()),
            memory_swap: mem.and_then(|m| m.swap()),
            cpu_shares: cpu.and_then(|c| c.shares()),
            cpu_quota: cpu.and_then(|c| c.quota()),
            cpu_period: cpu.and_then(|c| c.period()),
            cpuset_cpus: cpu.and_then(|c| c.cpus().clone()),
            cpuset_mems: cpu.and_then(|c| c.mems().clone()),
            pids: r.pids().as_ref().map(|p| p.limit()),
            devices: r
                .devices()
                .iter()
                .flatten()
                .map(|d| {
                    let typ = d
                        .typ()
                        .map_or_else(|| "a".to_string(), |t| t.as_str().to_string());
                    let rule = if typ == "a" {
                        format!("a *:* {}", d.access().as_deref().unwrap_or("rwm"))
                    } else {
                        format!(
                            "{typ} {}:{} {}",
                            num(d.major()),
                            num(d.minor()),
                            d.access().as_deref().unwrap_or("rwm")
                        )
                    };
                    (d.allow(), rule)
                })
                .collect(),
        }
    }
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

impl Cgroup {
    /// Lays out the directories for `cgroups_path` under `root`.
    pub fn new(root: &Path, cgroups_path: &str) -> io::Result<Self> {
        let rel = relative_path(cgroups_path);
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("linux.cgroupsPath {cgroups_path:?} must not contain '..'"),
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

    /// Writes the limits that are set, in the v1 hierarchies or the v2 tree that has the
    /// controller. A limit that no hierarchy can take is an error, not a silent skip.
    pub fn apply(&self, limits: &Limits) -> io::Result<()> {
        let missing = |c: &str| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("no {c} controller for {}", self.rel.display()),
            )
        };
        if let Some(mem) = limits.memory {
            if let Some(dir) = self.v1_dir("memory") {
                // memsw must stay >= the limit: raise it first when growing.
                let value = mem.to_string();
                if write(&dir, "memory.limit_in_bytes", &value).is_err() {
                    if let Some(swap) = limits.memory_swap {
                        write(&dir, "memory.memsw.limit_in_bytes", &swap.to_string())?;
                    }
                    write(&dir, "memory.limit_in_bytes", &value)?;
                }
            } else if let Some(dir) = self.v2_with("memory") {
                write(
                    dir,
                    "memory.max",
                    &if mem < 0 {
                        "max".into()
                    } else {
                        mem.to_string()
                    },
                )?;
            } else {
                return Err(missing("memory"));
            }
        }
        if let Some(swap) = limits.memory_swap {
            if let Some(dir) = self.v1_dir("memory") {
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write(&dir, "memory.memsw.limit_in_bytes", &swap.to_string())?;
                }
            }
        }
        if let Some(shares) = limits.cpu_shares {
            if let Some(dir) = self.v1_dir("cpu") {
                write(&dir, "cpu.shares", &shares.to_string())?;
            } else if let Some(dir) = self.v2_with("cpu") {
                // The conversion runc and the kernel documentation use.
                let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
                write(dir, "cpu.weight", &weight.to_string())?;
            } else {
                return Err(missing("cpu"));
            }
        }
        if limits.cpu_quota.is_some() || limits.cpu_period.is_some() {
            if let Some(dir) = self.v1_dir("cpu") {
                if let Some(period) = limits.cpu_period {
                    write(&dir, "cpu.cfs_period_us", &period.to_string())?;
                }
                if let Some(quota) = limits.cpu_quota {
                    write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
                }
            } else if let Some(dir) = self.v2_with("cpu") {
                let quota = limits
                    .cpu_quota
                    .filter(|q| *q > 0)
                    .map_or("max".to_string(), |q| q.to_string());
                write(
                    dir,
                    "cpu.max",
                    &format!("{quota} {}", limits.cpu_period.unwrap_or(100_000)),
                )?;
            } else {
                return Err(missing("cpu"));
            }
        }
        for (value, file) in [
            (&limits.cpuset_cpus, "cpuset.cpus"),
            (&limits.cpuset_mems, "cpuset.mems"),
        ] {
            if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
                let dir = self
                    .v1_dir("cpuset")
                    .or_else(|| self.v2_with("cpuset").cloned())
                    .ok_or_else(|| missing("cpuset"))?;
                write(&dir, file, v)?;
            }
        }
        if !limits.devices.is_empty() {
            match self.v1_dir("devices") {
                Some(dir) => {
                    for (allow, rule) in &limits.devices {
                        write(
                            &dir,
                            if *allow {
                                "devices.allow"
                            } else {
                                "devices.deny"
                            },
                            rule,
                        )?;
                    }
                }
                // cgroup v2 filters devices with eBPF programs, which this shim does not load:
                // said loudly, and covered by the user namespace (no mknod) for userns containers.
                None => log::warn!(
                    "{}: device rules not enforced: no v1 devices hierarchy",
                    self.rel.display()
                ),
            }
        }
        if let Some(pids) = limits.pids {
            let value = if pids <= 0 {
                "max".to_string()
            } else {
                pids.to_string()
            };
            let dir = self
                .v1_dir("pids")
                .or_else(|| self.v2_with("pids").cloned())
                .ok_or_else(|| missing("pids"))?;
            write(&dir, "pids.max", &value)?;
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

    /// Creates the directories. In a v1 cpuset hierarchy a group with empty `cpuset.cpus` or
    /// `cpuset.mems` refuses tasks, so every such level on the way inherits its parent's.
    pub fn create(&self) -> io::Result<()> {
        for dir in self.all() {
            fs::create_dir_all(dir)?;
            let chain: Vec<&Path> = dir
                .ancestors()
                .skip_while(|d| !d.join("cpuset.cpus").exists())
                .take_while(|d| d.join("cpuset.cpus").exists())
                .collect();
            for level in chain.iter().rev() {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let own = level.join(file);
                    if own.exists() && fs::read_to_string(&own)?.trim().is_empty() {
                        if let Some(parent) = level.parent() {
                            fs::write(&own, fs::read_to_string(parent.join(file))?.trim())?;
                        }
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

    /// The processes in the cgroup, from the unified tree, or the first v1 hierarchy.
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        let Some(dir) = self.unified.as_ref().or(self.v1.first()) else {
            return Ok(Vec::new());
        };
        match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Removes the leaf directories (not the parents, which other containers may share).
    /// A group still busy with exiting tasks is retried for a short while.
    pub fn remove(&self) -> io::Result<()> {
        let mut last = Ok(());
        for dir in self.all() {
            for attempt in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if attempt == 49 => {
                        last = Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
        last
    }
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
