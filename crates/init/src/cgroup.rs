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
        Ok(Self { unified, v1 })
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
