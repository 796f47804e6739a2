//! Deciding how a container's root filesystem is prepared, without touching it.
//!
//! Three sources arrive at the shim:
//! - rootfs mounts from containerd (`CreateTaskRequest.rootfs`): an overlay, or a bind for a
//!   single-layer snapshot. containerd 2.x's overlayfs snapshotter adds `uidmap=`/`gidmap=`
//!   options when the container has a user namespace; the lower layers must then be idmapped by
//!   the shim (the snapshotter already chowned the upper dir).
//! - `root.path` of the spec, a plain directory (`ctr c create --config`).
//! - nothing else: both empty is an error.
//!
//! For `root.path` in a user-namespaced container the rule is: idmap it with the container's
//! mapping, unless its top directory is already owned by a host id the uid mapping covers (it was
//! chowned into the range, as containerd's user-namespace document tells users to do). The
//! annotation [`ROOTFS_IDMAP_ANNOTATION`] overrides the rule with `true` or `false`.
//!
//! Invariant: every host-side mount a plan asks for lands at or under the bundle directory, so
//! cleanup after a crash is "unmount everything under the bundle".

use crate::idmap::{IdMap, IdMapError, UserMapping};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Annotation that forces (`true`) or forbids (`false`) idmapping `root.path`; `auto` or absent
/// applies the ownership rule.
pub const ROOTFS_IDMAP_ANNOTATION: &str = "usernsrs.io/rootfs-idmap";

/// A rootfs mount as containerd sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMount {
    pub typ: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Which user namespace's mapping an idmapped mount takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdmapWith {
    /// The container's own user namespace (the usual case).
    Container,
    /// A mapping of its own, which differs from the container's.
    Mapping(UserMapping),
}

/// How the rootfs gets to `<bundle>/rootfs` (or stays where it is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootfsSource {
    /// `root.path` used as it is: no user namespace, or already owned by the mapped ids.
    Directory { path: PathBuf },
    /// `root.path` bind-mounted, idmapped, at the target.
    IdmappedDirectory { path: PathBuf, idmap: IdmapWith },
    /// containerd's mounts, mounted in order at the target, as runc's shim does.
    Mounts { mounts: Vec<RootMount> },
    /// An overlay whose lower layers are idmapped through one idmapped mount of their common
    /// parent directory, then mounted with the remaining options at the target.
    IdmappedOverlay {
        lowerdirs: Vec<PathBuf>,
        upperdir: Option<PathBuf>,
        workdir: Option<PathBuf>,
        options: Vec<String>,
        idmap: IdmapWith,
    },
    /// A single-layer snapshot: its directory bind-mounted, idmapped, at the target.
    IdmappedBind {
        source: PathBuf,
        readonly: bool,
        idmap: IdmapWith,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsPlan {
    pub source: RootfsSource,
    /// Where the prepared rootfs is on the host; the container pivots into it.
    pub target: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("no rootfs: the task request has no rootfs mounts and the spec has no root.path")]
    Missing,
    #[error("rootfs mount {typ} {device}: {reason}")]
    BadMount {
        typ: String,
        device: String,
        reason: String,
    },
    #[error("rootfs mount {device}")]
    BadMapping {
        device: String,
        #[source]
        err: IdMapError,
    },
    #[error("annotation {ROOTFS_IDMAP_ANNOTATION}={value:?}: expected true, false or auto")]
    BadAnnotation { value: String },
    #[error("cannot stat root.path {path}")]
    Stat {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("rootfs mount {typ} {device}: cannot stat its source")]
    StatSource {
        typ: String,
        device: String,
        #[source]
        err: std::io::Error,
    },
}

/// What the planner needs to know about the container's user namespace.
pub struct UsernsFacts<'a> {
    /// Whether the container has a user namespace at all (new or joined).
    pub enabled: bool,
    /// Its mapping, when the spec gives it.
    pub mapping: Option<&'a UserMapping>,
}

/// Plans the rootfs. `owner` returns the on-disk uid and gid of a directory (a `stat`); it is
/// only called for `root.path` of a user-namespaced container under the `auto` rule.
pub fn plan_rootfs(
    bundle: &Path,
    root_path: Option<&Path>,
    mounts: &[RootMount],
    userns: &UsernsFacts<'_>,
    annotation: Option<&str>,
    owner: impl FnOnce(&Path) -> std::io::Result<(u32, u32)>,
) -> Result<RootfsPlan, RootfsError> {
    let target = bundle.join("rootfs");
    if !mounts.is_empty() {
        let source = plan_mounts(mounts, userns, owner)?;
        return Ok(RootfsPlan { source, target });
    }
    let Some(root) = root_path.filter(|p| !p.as_os_str().is_empty()) else {
        return Err(RootfsError::Missing);
    };
    let path = if root.is_absolute() {
        root.to_path_buf()
    } else {
        bundle.join(root)
    };
    let force = match annotation {
        None | Some("auto") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(RootfsError::BadAnnotation {
                value: other.to_string(),
            })
        }
    };
    let idmap = match (userns.enabled, force) {
        (false, _) | (true, Some(false)) => false,
        (true, Some(true)) => true,
        (true, None) => {
            let (uid, _gid) = owner(&path).map_err(|err| RootfsError::Stat {
                path: path.clone(),
                err,
            })?;
            match userns.mapping {
                Some(mapping) => !mapping.uid.covers_host(uid),
                // A joined namespace whose mapping the spec does not repeat: a tree owned by
                // host root is an image as unpacked; anything else was prepared on purpose.
                None => uid == 0,
            }
        }
    };
    if idmap {
        Ok(RootfsPlan {
            source: RootfsSource::IdmappedDirectory {
                path,
                idmap: IdmapWith::Container,
            },
            target,
        })
    } else {
        Ok(RootfsPlan {
            source: RootfsSource::Directory { path: path.clone() },
            target: path,
        })
    }
}

/// The mapping carried by `uidmap=`/`gidmap=` options, and the options without them.
fn split_idmap_options(m: &RootMount) -> Result<(Option<UserMapping>, Vec<String>), RootfsError> {
    let mut uid = None;
    let mut gid = None;
    let mut rest = Vec::new();
    for opt in &m.options {
        if let Some(v) = opt.strip_prefix("uidmap=") {
            uid = Some(v);
        } else if let Some(v) = opt.strip_prefix("gidmap=") {
            gid = Some(v);
        } else {
            rest.push(opt.clone());
        }
    }
    let bad_mapping = |err| RootfsError::BadMapping {
        device: m.source.clone(),
        err,
    };
    match (uid, gid) {
        (None, None) => Ok((None, rest)),
        (Some(u), Some(g)) => {
            let uid = IdMap::parse_containerd("uidmap", u).map_err(bad_mapping)?;
            let gid = IdMap::parse_containerd("gidmap", g).map_err(bad_mapping)?;
            Ok((Some(UserMapping { uid, gid }), rest))
        }
        _ => Err(RootfsError::BadMount {
            typ: m.typ.clone(),
            device: m.source.clone(),
            reason: "uidmap= and gidmap= must come together".into(),
        }),
    }
}

fn plan_mounts(
    mounts: &[RootMount],
    userns: &UsernsFacts<'_>,
    owner: impl FnOnce(&Path) -> std::io::Result<(u32, u32)>,
) -> Result<RootfsSource, RootfsError> {
    let [m] = mounts else {
        if mounts.iter().any(|m| {
            m.options
                .iter()
                .any(|o| o.starts_with("uidmap=") || o.starts_with("gidmap="))
        }) {
            return Err(RootfsError::BadMount {
                typ: mounts[0].typ.clone(),
                device: mounts[0].source.clone(),
                reason: "idmapped rootfs must be a single overlay or bind mount".into(),
            });
        }
        return Ok(RootfsSource::Mounts {
            mounts: mounts.to_vec(),
        });
    };
    let (mapping, options) = split_idmap_options(m)?;
    let Some(mapping) = mapping else {
        return Ok(RootfsSource::Mounts {
            mounts: mounts.to_vec(),
        });
    };
    let snapshot_uids = mapping.uid.clone();
    let idmap = match userns.mapping {
        Some(own) if *own == mapping => IdmapWith::Container,
        _ => IdmapWith::Mapping(mapping),
    };
    let bad = |reason: &str| RootfsError::BadMount {
        typ: m.typ.clone(),
        device: m.source.clone(),
        reason: reason.to_string(),
    };
    match m.typ.as_str() {
        "overlay" => {
            let mut lowerdirs = Vec::new();
            let mut upperdir = None;
            let mut workdir = None;
            let mut rest = Vec::new();
            for opt in options {
                if let Some(v) = opt.strip_prefix("lowerdir=") {
                    lowerdirs = v.split(':').map(PathBuf::from).collect();
                } else if let Some(v) = opt.strip_prefix("upperdir=") {
                    upperdir = Some(PathBuf::from(v));
                } else if let Some(v) = opt.strip_prefix("workdir=") {
                    workdir = Some(PathBuf::from(v));
                } else {
                    rest.push(opt);
                }
            }
            if lowerdirs.is_empty() || lowerdirs.iter().any(|d| !d.is_absolute()) {
                return Err(bad("overlay needs absolute lowerdir= paths"));
            }
            if upperdir.is_some() != workdir.is_some() {
                return Err(bad("overlay needs both upperdir= and workdir=, or neither"));
            }
            Ok(RootfsSource::IdmappedOverlay {
                lowerdirs,
                upperdir,
                workdir,
                options: rest,
                idmap,
            })
        }
        "bind" | "rbind" => {
            // A parentless active snapshot is a directory the snapshotter already chowned to
            // the mapped root (like an overlay's upper dir): used as it is, or the idmap would
            // push it out of the range. A view of an image layer is owned by host ids: idmap.
            let source = PathBuf::from(&m.source);
            let (uid, _) = owner(&source).map_err(|err| RootfsError::StatSource {
                typ: m.typ.clone(),
                device: m.source.clone(),
                err,
            })?;
            if snapshot_uids.covers_host(uid) {
                return Ok(RootfsSource::Mounts {
                    mounts: vec![RootMount {
                        options,
                        ..m.clone()
                    }],
                });
            }
            let readonly = options.iter().any(|o| o == "ro");
            Ok(RootfsSource::IdmappedBind {
                source,
                readonly,
                idmap,
            })
        }
        _ => Err(bad(
            "uidmap=/gidmap= are only understood on overlay and bind rootfs mounts",
        )),
    }
}

/// The deepest directory that contains every path in `dirs` (their common parent), so that one
/// idmapped mount of it covers all of them. `None` when the only common ancestor is `/`.
pub fn common_parent(dirs: &[PathBuf]) -> Option<PathBuf> {
    let first = dirs.first()?;
    let mut parent = first.parent()?.to_path_buf();
    while !dirs.iter().all(|d| d.starts_with(&parent) && d != &parent) {
        parent = parent.parent()?.to_path_buf();
    }
    (parent != Path::new("/")).then_some(parent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::IdMapping;

    fn mapping(host: u32) -> UserMapping {
        let r = vec![IdMapping {
            container_id: 0,
            host_id: host,
            size: 65536,
        }];
        UserMapping {
            uid: IdMap::new("u", r.clone()).expect("valid"),
            gid: IdMap::new("g", r).expect("valid"),
        }
    }

    fn no_stat(_: &Path) -> std::io::Result<(u32, u32)> {
        panic!("stat must not be called")
    }

    #[test]
    fn root_owned_directory_is_idmapped_under_a_user_namespace() {
        let map = mapping(100000);
        let facts = UsernsFacts {
            enabled: true,
            mapping: Some(&map),
        };
        let plan = plan_rootfs(
            Path::new("/b"),
            Some(Path::new("/img")),
            &[],
            &facts,
            None,
            |_| Ok((0, 0)),
        )
        .expect("plan");
        assert_eq!(plan.target, Path::new("/b/rootfs"));
        assert!(matches!(
            plan.source,
            RootfsSource::IdmappedDirectory { .. }
        ));
    }

    #[test]
    fn chowned_directory_is_used_as_it_is() {
        let map = mapping(65536);
        let facts = UsernsFacts {
            enabled: true,
            mapping: Some(&map),
        };
        let plan = plan_rootfs(
            Path::new("/b"),
            Some(Path::new("/img")),
            &[],
            &facts,
            None,
            |_| Ok((65536, 65536)),
        )
        .expect("plan");
        assert_eq!(
            plan.source,
            RootfsSource::Directory {
                path: "/img".into()
            }
        );
        assert_eq!(plan.target, Path::new("/img"));
    }

    #[test]
    fn annotation_overrides_the_ownership_rule() {
        let map = mapping(65536);
        let facts = UsernsFacts {
            enabled: true,
            mapping: Some(&map),
        };
        let forced = plan_rootfs(
            Path::new("/b"),
            Some(Path::new("/img")),
            &[],
            &facts,
            Some("true"),
            no_stat,
        )
        .expect("plan");
        assert!(matches!(
            forced.source,
            RootfsSource::IdmappedDirectory { .. }
        ));
        let never = plan_rootfs(
            Path::new("/b"),
            Some(Path::new("/img")),
            &[],
            &facts,
            Some("false"),
            no_stat,
        )
        .expect("plan");
        assert!(matches!(never.source, RootfsSource::Directory { .. }));
        let err = plan_rootfs(
            Path::new("/b"),
            Some(Path::new("/img")),
            &[],
            &facts,
            Some("yes"),
            no_stat,
        )
        .expect_err("bad value");
        assert!(
            err.to_string().contains("expected true, false or auto"),
            "{err}"
        );
    }

    #[test]
    fn no_user_namespace_keeps_directory_and_relative_paths_join_the_bundle() {
        let facts = UsernsFacts {
            enabled: false,
            mapping: None,
        };
        let plan = plan_rootfs(
            Path::new("/b"),
            Some(Path::new("rootfs")),
            &[],
            &facts,
            None,
            no_stat,
        )
        .expect("plan");
        assert_eq!(
            plan.source,
            RootfsSource::Directory {
                path: "/b/rootfs".into()
            }
        );
    }

    #[test]
    fn missing_rootfs_is_an_error() {
        let facts = UsernsFacts {
            enabled: false,
            mapping: None,
        };
        let err = plan_rootfs(Path::new("/b"), None, &[], &facts, None, no_stat).expect_err("none");
        assert!(matches!(err, RootfsError::Missing));
    }

    fn overlay(options: &[&str]) -> RootMount {
        RootMount {
            typ: "overlay".into(),
            source: "overlay".into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_with_uidmap_idmaps_lower_layers() {
        let map = mapping(100000);
        let facts = UsernsFacts {
            enabled: true,
            mapping: Some(&map),
        };
        let m = overlay(&[
            "uidmap=0:100000:65536",
            "gidmap=0:100000:65536",
            "index=off",
            "workdir=/s/3/work",
            "upperdir=/s/3/fs",
            "lowerdir=/s/2/fs:/s/1/fs",
        ]);
        let plan = plan_rootfs(Path::new("/b"), None, &[m], &facts, None, no_stat).expect("plan");
        assert_eq!(
            plan.source,
            RootfsSource::IdmappedOverlay {
                lowerdirs: vec!["/s/2/fs".into(), "/s/1/fs".into()],
                upperdir: Some("/s/3/fs".into()),
                workdir: Some("/s/3/work".into()),
                options: vec!["index=off".into()],
                idmap: IdmapWith::Container,
            }
        );
    }

    #[test]
    fn snapshot_mapping_that_differs_from_the_container_keeps_its_own() {
        let map = mapping(200000);
        let facts = UsernsFacts {
            enabled: true,
            mapping: Some(&map),
        };
        let m = overlay(&[
            "uidmap=0:100000:65536",
            "gidmap=0:100000:65536",
            "lowerdir=/s/1/fs",
        ]);
        let plan = plan_rootfs(Path::new("/b"), None, &[m], &facts, None, no_stat).expect("plan");
        let RootfsSource::IdmappedOverlay { idmap, .. } = plan.source else {
            panic!("overlay expected")
        };
        assert_eq!(idmap, IdmapWith::Mapping(mapping(100000)));
    }

    #[test]
    fn single_layer_bind_with_uidmap_is_an_idmapped_bind() {
        let facts = UsernsFacts {
            enabled: true,
            mapping: None,
        };
        let m = RootMount {
            typ: "bind".into(),
            source: "/s/1/fs".into(),
            options: vec![
                "uidmap=0:1:2".into(),
                "gidmap=0:1:2".into(),
                "rw".into(),
                "rbind".into(),
            ],
        };
        let image_owned = |_: &Path| Ok((0, 0));
        let plan = plan_rootfs(
            Path::new("/b"),
            None,
            std::slice::from_ref(&m),
            &facts,
            None,
            image_owned,
        )
        .expect("plan");
        assert!(matches!(
            plan.source,
            RootfsSource::IdmappedBind {
                readonly: false,
                ..
            }
        ));
    }

    #[test]
    fn single_layer_bind_already_chowned_by_the_snapshotter_is_not_idmapped() {
        let facts = UsernsFacts {
            enabled: true,
            mapping: None,
        };
        let m = RootMount {
            typ: "bind".into(),
            source: "/s/1/fs".into(),
            options: vec![
                "uidmap=0:100000:65536".into(),
                "gidmap=0:100000:65536".into(),
                "rw".into(),
                "rbind".into(),
            ],
        };
        let chowned = |_: &Path| Ok((100000, 100000));
        let plan = plan_rootfs(Path::new("/b"), None, &[m], &facts, None, chowned).expect("plan");
        let RootfsSource::Mounts { mounts } = plan.source else {
            panic!("plain bind expected, got {:?}", plan.source)
        };
        assert_eq!(
            mounts[0].options,
            vec!["rw".to_string(), "rbind".to_string()]
        );
    }

    #[test]
    fn a_bind_rootfs_whose_source_cannot_be_stated_names_the_mount() {
        // Found by the property tests (shrunk input): the error said "cannot stat root.path",
        // a field this spec may not even have.
        let facts = UsernsFacts {
            enabled: false,
            mapping: None,
        };
        let m = RootMount {
            typ: "bind".into(),
            source: "/s/1/fs".into(),
            options: vec![
                "uidmap=0:100000:65536".into(),
                "gidmap=0:100000:65536".into(),
            ],
        };
        let gone = |_: &Path| Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        let err = plan_rootfs(Path::new("/b"), None, &[m], &facts, None, gone).expect_err("stat");
        assert_eq!(
            err.to_string(),
            "rootfs mount bind /s/1/fs: cannot stat its source"
        );
    }

    #[test]
    fn refuses_half_a_mapping_and_unknown_types() {
        let facts = UsernsFacts {
            enabled: true,
            mapping: None,
        };
        let err = plan_rootfs(
            Path::new("/b"),
            None,
            &[overlay(&["uidmap=0:1:2", "lowerdir=/a"])],
            &facts,
            None,
            no_stat,
        )
        .expect_err("half");
        assert!(err.to_string().contains("must come together"), "{err}");
        let m = RootMount {
            typ: "ext4".into(),
            source: "/dev/x".into(),
            options: vec!["uidmap=0:1:2".into(), "gidmap=0:1:2".into()],
        };
        let err =
            plan_rootfs(Path::new("/b"), None, &[m], &facts, None, no_stat).expect_err("type");
        assert!(err.to_string().contains("ext4 /dev/x"), "{err}");
    }

    #[test]
    fn plain_mounts_pass_through() {
        let facts = UsernsFacts {
            enabled: false,
            mapping: None,
        };
        let m = overlay(&["lowerdir=/s/1/fs"]);
        let plan = plan_rootfs(
            Path::new("/b"),
            None,
            std::slice::from_ref(&m),
            &facts,
            None,
            no_stat,
        )
        .expect("plan");
        assert_eq!(plan.source, RootfsSource::Mounts { mounts: vec![m] });
        assert_eq!(plan.target, Path::new("/b/rootfs"));
    }

    #[test]
    fn common_parent_of_snapshot_layers() {
        let dirs: Vec<PathBuf> = vec!["/var/snap/2/fs".into(), "/var/snap/10/fs".into()];
        assert_eq!(common_parent(&dirs), Some(PathBuf::from("/var/snap")));
        let one: Vec<PathBuf> = vec!["/var/snap/2/fs".into()];
        assert_eq!(common_parent(&one), Some(PathBuf::from("/var/snap/2")));
        let apart: Vec<PathBuf> = vec!["/a/x".into(), "/b/y".into()];
        assert_eq!(common_parent(&apart), None);
    }
}
