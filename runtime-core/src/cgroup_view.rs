//! What a container sees at `/sys/fs/cgroup` for a spec mount of `type: cgroup`: its own
//! cgroups, never the host's trees.
//!
//! On a cgroup v1 or hybrid host that is runc's layout: a tmpfs, and in it, for every hierarchy
//! the host mounts under /sys/fs/cgroup (each v1 controller set, named ones such as
//! `name=systemd`, a hybrid host's cgroup2 `unified`), a bind of the host directory of the
//! container's own cgroup in that hierarchy, with the spec's flags (read-only for CRI and ctr);
//! controllers mounted together (`cpu,cpuacct`) get a symlink per controller. On a cgroup v2 host
//! it is a cgroup2 mount whose root is the container's cgroup, in the container's cgroup
//! namespace; without one, a bind of the container's own cgroup directory stands in for it.
//!
//! The container's cgroup paths must be read before it enters a cgroup namespace: inside one,
//! `/proc/self/cgroup` says `/` for every hierarchy.

use crate::mountinfo::MountEntry;
use std::path::{Component, Path, PathBuf};

/// One hierarchy as the container sees it under `/sys/fs/cgroup/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HierarchyBind {
    /// The directory name under /sys/fs/cgroup: the host's (`memory`, `cpu,cpuacct`, `systemd`,
    /// `unified`).
    pub name: String,
    /// The host directory of the container's cgroup in this hierarchy.
    pub source: PathBuf,
    /// Symlinks to make next to it, each naming `name` (`cpu` and `cpuacct` for `cpu,cpuacct`).
    pub aliases: Vec<String>,
}

/// The host's cgroup layout, with the container's place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupView {
    /// /sys/fs/cgroup is cgroup2; `own` is the host directory of the container's cgroup.
    Unified { own: PathBuf },
    /// v1 or hybrid: one bind per hierarchy.
    V1 { hierarchies: Vec<HierarchyBind> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgroupViewError {
    #[error("/proc/self/cgroup line {0:?} is not `id:controllers:path`")]
    BadCgroupLine(String),
    #[error("the container's cgroup {path} in hierarchy {controllers:?} is not visible under the host's mount of it at {mount_point} (root {root})")]
    NotVisible {
        controllers: String,
        path: PathBuf,
        mount_point: PathBuf,
        root: PathBuf,
    },
    #[error("no cgroup filesystem is mounted at or under {0}")]
    NoCgroupMount(PathBuf),
}

/// The v1 controllers (and `name=` of a named hierarchy) a cgroup mount's super options hold.
fn controllers_of(m: &MountEntry) -> Vec<&str> {
    m.super_options
        .iter()
        .map(String::as_str)
        .filter(|o| {
            !matches!(
                *o,
                "rw" | "ro"
                    | "xattr"
                    | "noprefix"
                    | "clone_children"
                    | "cpuset_v2_mode"
                    | "favordynmods"
            ) && !o.starts_with("release_agent=")
        })
        .collect()
}

/// The host directory of cgroup `path` (as /proc/self/cgroup names it) in mount `m`.
///
/// A cgroup outside the reader's cgroup namespace is named with `..` (`/../sibling`,
/// cgroup_namespaces(7)): it is not under the mount, and joining it would bind a directory
/// beside the mount instead of the container's cgroup.
fn host_dir(m: &MountEntry, controllers: &str, path: &Path) -> Result<PathBuf, CgroupViewError> {
    let not_visible = || CgroupViewError::NotVisible {
        controllers: controllers.to_string(),
        path: path.to_path_buf(),
        mount_point: m.mount_point.clone(),
        root: m.root.clone(),
    };
    let rel = path.strip_prefix(&m.root).map_err(|_| not_visible())?;
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(not_visible());
    }
    Ok(m.mount_point.join(rel))
}

/// The view for a process whose `/proc/self/cgroup` is `proc_cgroup`, on a host whose mount
/// table is `mounts`, with the cgroup tree at `base` (`/sys/fs/cgroup`).
pub fn cgroup_view(
    mounts: &[MountEntry],
    proc_cgroup: &str,
    base: &Path,
) -> Result<CgroupView, CgroupViewError> {
    let mut lines = Vec::new();
    for l in proc_cgroup.lines().filter(|l| !l.is_empty()) {
        let mut parts = l.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CgroupViewError::BadCgroupLine(l.to_string()));
        };
        lines.push((controllers, PathBuf::from(path)));
    }
    let v2_path = lines.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| p);

    // The last mount at a point is the one seen there.
    let at = |point: &Path| mounts.iter().rev().find(|m| m.mount_point == point);
    if let Some(m) = at(base).filter(|m| m.fstype == "cgroup2") {
        let path = v2_path.ok_or_else(|| CgroupViewError::BadCgroupLine("0::".into()))?;
        return Ok(CgroupView::Unified {
            own: host_dir(m, "", path)?,
        });
    }

    let mut hierarchies = Vec::new();
    let children = mounts
        .iter()
        .filter(|m| m.mount_point.parent() == Some(base))
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .filter(|m| at(&m.mount_point) == Some(*m));
    for m in children {
        let Some(name) = m
            .mount_point
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
        else {
            continue;
        };
        let (controllers, path) = if m.fstype == "cgroup2" {
            match v2_path {
                Some(p) => (String::new(), p),
                None => continue,
            }
        } else {
            let ours = controllers_of(m);
            let found = lines.iter().find(|(c, _)| {
                let mut theirs: Vec<&str> = c.split(',').filter(|s| !s.is_empty()).collect();
                let mut mine = ours.clone();
                theirs.sort_unstable();
                mine.sort_unstable();
                !theirs.is_empty() && theirs == mine
            });
            match found {
                Some((c, p)) => (c.to_string(), p),
                // A hierarchy the process is not in (mounted without a /proc/self/cgroup
                // line, e.g. a second mount of a named hierarchy): nothing of ours to show.
                None => continue,
            }
        };
        let source = host_dir(m, &controllers, path)?;
        let aliases = if controllers.contains(',') && !controllers.contains("name=") {
            controllers
                .split(',')
                .filter(|c| *c != name)
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        hierarchies.push(HierarchyBind {
            name,
            source,
            aliases,
        });
    }
    if hierarchies.is_empty() {
        return Err(CgroupViewError::NoCgroupMount(base.to_path_buf()));
    }
    Ok(CgroupView::V1 { hierarchies })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::parse;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";
    const HYBRID_CGROUP: &str = "\
5:memory:/k8s/pod1
4:cpu,cpuacct:/k8s/pod1
1:name=systemd:/k8s/pod1
0::/k8s/pod1
";

    #[test]
    fn hybrid_host_binds_each_hierarchy_at_the_containers_cgroup() {
        let mounts = parse(HYBRID).expect("mountinfo");
        let view = cgroup_view(&mounts, HYBRID_CGROUP, Path::new("/sys/fs/cgroup")).expect("view");
        let CgroupView::V1 { hierarchies } = view else {
            panic!("expected v1, got {view:?}");
        };
        let got: Vec<(&str, &Path, Vec<String>)> = hierarchies
            .iter()
            .map(|h| (h.name.as_str(), h.source.as_path(), h.aliases.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "cpu,cpuacct",
                    Path::new("/sys/fs/cgroup/cpu,cpuacct/k8s/pod1"),
                    vec!["cpu".to_string(), "cpuacct".to_string()]
                ),
                (
                    "memory",
                    Path::new("/sys/fs/cgroup/memory/k8s/pod1"),
                    vec![]
                ),
                (
                    "systemd",
                    Path::new("/sys/fs/cgroup/systemd/k8s/pod1"),
                    vec![]
                ),
                (
                    "unified",
                    Path::new("/sys/fs/cgroup/unified/k8s/pod1"),
                    vec![]
                ),
            ]
        );
    }

    #[test]
    fn unified_host_names_the_containers_own_directory() {
        let mounts =
            parse("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n").expect("mi");
        let view = cgroup_view(&mounts, "0::/usernsrs/ns/id\n", Path::new("/sys/fs/cgroup"))
            .expect("view");
        assert_eq!(
            view,
            CgroupView::Unified {
                own: PathBuf::from("/sys/fs/cgroup/usernsrs/ns/id")
            }
        );
    }

    #[test]
    fn a_mount_rooted_below_the_tree_is_followed_and_a_cgroup_outside_it_refused() {
        // Nested: the host itself sees only its own part of the hierarchy.
        let mounts =
            parse("35 31 0:32 /outer /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
                .expect("mi");
        let view = cgroup_view(&mounts, "5:memory:/outer/c1\n", Path::new("/sys/fs/cgroup"))
            .expect("view");
        assert_eq!(
            view,
            CgroupView::V1 {
                hierarchies: vec![HierarchyBind {
                    name: "memory".into(),
                    source: "/sys/fs/cgroup/memory/c1".into(),
                    aliases: vec![]
                }]
            }
        );
        let err = cgroup_view(
            &mounts,
            "5:memory:/elsewhere\n",
            Path::new("/sys/fs/cgroup"),
        )
        .expect_err("not visible");
        assert!(matches!(err, CgroupViewError::NotVisible { .. }), "{err}");
    }

    #[test]
    fn a_cgroup_outside_the_readers_namespace_is_not_visible() {
        // Found by the property tests (shrunk input): the source was
        // /sys/fs/cgroup/memory/../sibling, a directory beside the hierarchy.
        let mounts =
            parse("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n").expect("mi");
        for line in ["5:memory:/../sibling\n", "5:memory:/a/../../b\n"] {
            let err = cgroup_view(&mounts, line, Path::new("/sys/fs/cgroup")).expect_err(line);
            assert!(matches!(err, CgroupViewError::NotVisible { .. }), "{err}");
        }
        let mounts = parse("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n").expect("mi");
        let err = cgroup_view(&mounts, "0::/../x\n", Path::new("/sys/fs/cgroup")).expect_err("v2");
        assert!(matches!(err, CgroupViewError::NotVisible { .. }), "{err}");
    }

    #[test]
    fn refuses_garbage_and_a_host_without_cgroups() {
        let mounts = parse(HYBRID).expect("mountinfo");
        assert!(matches!(
            cgroup_view(&mounts, "nonsense\n", Path::new("/sys/fs/cgroup")),
            Err(CgroupViewError::BadCgroupLine(_))
        ));
        let none = parse("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n").expect("mi");
        assert!(matches!(
            cgroup_view(&none, HYBRID_CGROUP, Path::new("/sys/fs/cgroup")),
            Err(CgroupViewError::NoCgroupMount(_))
        ));
    }
}
