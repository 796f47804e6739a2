//! Bind mounts prepared on the host side: which of the spec's binds are cloned (and maybe
//! idmapped) by the helper with host privileges, with which mapping, how deep.
//!
//! In a container with a user namespace every bind mount goes this way, so that a source the
//! container's root could not reach (a 0700 directory of host root) still mounts, as with runc.
//! Without a user namespace only id-mapped binds do; the others are bound by path.
//!
//! The runtime-spec rules, as runc applies them:
//! - a mount is id-mapped when it carries `uidMappings`/`gidMappings` (both, or neither) or the
//!   `idmap`/`ridmap` option; without mappings the container's user namespace supplies them;
//! - `idmap` maps the top mount only, `ridmap` every submount too; mappings without either
//!   option follow the bind: recursive for `rbind`, the top mount for `bind`;
//! - only bind mounts can be id-mapped.
//!
//! Invariant: every [`HostBind`] names a bind mount of the spec by index, and its mapping, if
//! any, has passed [`IdMap::new`].

use crate::idmap::{IdMap, IdMapping, UserMapping};
use crate::mount_options::{parse_mount_options, IdmapOption};
use crate::rootfs::IdmapWith;
use oci_spec::runtime::{LinuxIdMapping, Mount};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One spec bind mount prepared on the host side as a detached (maybe idmapped) mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostBind {
    /// Index in `spec.mounts`.
    pub index: usize,
    pub source: PathBuf,
    pub destination: PathBuf,
    /// Clone the submounts of the source too (`rbind`).
    pub recursive_bind: bool,
    /// Idmap the submounts too (`ridmap`, or mappings on an `rbind`).
    pub recursive_idmap: bool,
    /// The mapping, for an id-mapped mount.
    pub idmap: Option<IdmapWith>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("mount {destination}: {reason}")]
    Refused {
        destination: PathBuf,
        reason: String,
    },
    #[error("mount {destination}")]
    Mapping {
        destination: PathBuf,
        #[source]
        err: crate::idmap::IdMapError,
    },
}

fn ranges(spec: &[LinuxIdMapping]) -> Vec<IdMapping> {
    spec.iter()
        .map(|m| IdMapping {
            container_id: m.container_id(),
            host_id: m.host_id(),
            size: m.size(),
        })
        .collect()
}

/// Finds the id-mapped mounts of `mounts`. `container` is the container's user namespace
/// mapping if known; `has_userns` says whether it has a user namespace at all.
pub fn plan_volumes(
    mounts: &[Mount],
    bundle: &Path,
    container: Option<&UserMapping>,
    has_userns: bool,
) -> Result<Vec<HostBind>, VolumeError> {
    let mut out = Vec::new();
    for (index, m) in mounts.iter().enumerate() {
        let opts = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
        let uid = m.uid_mappings().as_ref().filter(|v| !v.is_empty());
        let gid = m.gid_mappings().as_ref().filter(|v| !v.is_empty());
        let wants_idmap = uid.is_some() || gid.is_some() || opts.idmap.is_some();
        let is_bind = opts.is_bind() || m.typ().as_deref() == Some("bind");
        // A bind mount takes no filesystem data: a word the parser does not know would be
        // dropped by the kernel without a word, so it is refused by name.
        if is_bind && !opts.data.is_empty() {
            return Err(VolumeError::Refused {
                destination: m.destination().clone(),
                reason: format!(
                    "option(s) {:?} are not mount flags and mean nothing for a bind mount",
                    opts.data
                ),
            });
        }
        if !(wants_idmap || is_bind && has_userns) {
            continue;
        }
        let destination = m.destination().clone();
        let refused = |reason: &str| VolumeError::Refused {
            destination: destination.clone(),
            reason: reason.to_string(),
        };
        if !is_bind {
            return Err(refused(&format!(
                "id-mapping is only possible for bind mounts, not type {:?}",
                m.typ().as_deref().unwrap_or("")
            )));
        }
        let idmap = match (uid, gid) {
            _ if !wants_idmap => None,
            (Some(u), Some(g)) => {
                let mapping_err = |err| VolumeError::Mapping {
                    destination: destination.clone(),
                    err,
                };
                let mapping = UserMapping {
                    uid: IdMap::new("uidMappings", ranges(u)).map_err(mapping_err)?,
                    gid: IdMap::new("gidMappings", ranges(g)).map_err(mapping_err)?,
                };
                Some(match container {
                    Some(own) if *own == mapping => IdmapWith::Container,
                    _ => IdmapWith::Mapping(mapping),
                })
            }
            (None, None) => {
                if !has_userns {
                    return Err(refused(
                        "idmap without uidMappings/gidMappings needs the container to have a user namespace to take them from",
                    ));
                }
                Some(IdmapWith::Container)
            }
            (Some(_), None) => return Err(refused("uidMappings without gidMappings")),
            (None, Some(_)) => return Err(refused("gidMappings without uidMappings")),
        };
        let Some(source) = m.source().as_ref() else {
            return Err(refused("a bind mount needs a source"));
        };
        let source = if source.is_absolute() {
            source.clone()
        } else {
            bundle.join(source)
        };
        let recursive_bind = opts.flags & crate::mount_options::flags::REC != 0;
        let recursive_idmap = match opts.idmap {
            _ if idmap.is_none() => false,
            Some(IdmapOption::Ridmap) => true,
            Some(IdmapOption::Idmap) => false,
            None => recursive_bind,
        };
        out.push(HostBind {
            index,
            source,
            destination,
            recursive_bind,
            recursive_idmap,
            idmap,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_words_on_a_bind_mount() {
        let m: Mount = serde_json::from_value(serde_json::json!({
            "destination": "/data", "type": "bind", "source": "/src",
            "options": ["rbind", "ro", "bogus=1"]
        }))
        .expect("a mount");
        let err = plan_volumes(&[m], Path::new("/b"), None, false).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("/data") && text.contains("bogus=1"), "{text}");
    }

    fn mounts(json: &str) -> Vec<Mount> {
        serde_json::from_str(json).expect("mounts")
    }

    fn own() -> UserMapping {
        let r = vec![IdMapping {
            container_id: 0,
            host_id: 100000,
            size: 65536,
        }];
        UserMapping {
            uid: IdMap::new("u", r.clone()).expect("valid"),
            gid: IdMap::new("g", r).expect("valid"),
        }
    }

    #[test]
    fn plain_binds_go_through_the_host_only_with_a_user_namespace() {
        let m = mounts(
            r#"[{"destination":"/proc","type":"proc","source":"proc"},
                {"destination":"/v","type":"bind","source":"/s","options":["rbind"]}]"#,
        );
        assert_eq!(plan_volumes(&m, Path::new("/b"), None, false), Ok(vec![]));
        let v = plan_volumes(&m, Path::new("/b"), Some(&own()), true).expect("plan");
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].index, v[0].idmap.clone(), v[0].recursive_bind),
            (1, None, true)
        );
        assert!(!v[0].recursive_idmap);
    }

    #[test]
    fn implied_mapping_and_recursion_follow_the_options() {
        let m = mounts(
            r#"[{"destination":"/a","type":"bind","source":"/s","options":["rbind","idmap"]},
                {"destination":"/b","type":"bind","source":"rel","options":["rbind","ridmap"]},
                {"destination":"/c","source":"/s","options":["bind","ro","ridmap"]}]"#,
        );
        let v = plan_volumes(&m, Path::new("/bundle"), Some(&own()), true).expect("plan");
        assert_eq!(v.len(), 3);
        assert!(v[0].recursive_bind && !v[0].recursive_idmap);
        assert_eq!(v[0].idmap, Some(IdmapWith::Container));
        assert!(v[1].recursive_bind && v[1].recursive_idmap);
        assert_eq!(v[1].source, PathBuf::from("/bundle/rel"));
        assert!(!v[2].recursive_bind && v[2].recursive_idmap);
    }

    #[test]
    fn explicit_mappings_of_their_own_are_kept() {
        let m = mounts(
            r#"[{"destination":"/a","type":"bind","source":"/s","options":["rbind"],
                 "uidMappings":[{"containerID":0,"hostID":200000,"size":10}],
                 "gidMappings":[{"containerID":0,"hostID":200000,"size":10}]},
                {"destination":"/b","type":"bind","source":"/s","options":["bind"],
                 "uidMappings":[{"containerID":0,"hostID":100000,"size":65536}],
                 "gidMappings":[{"containerID":0,"hostID":100000,"size":65536}]}]"#,
        );
        let v = plan_volumes(&m, Path::new("/b"), Some(&own()), true).expect("plan");
        assert!(matches!(v[0].idmap, Some(IdmapWith::Mapping(_))));
        assert!(
            v[0].recursive_idmap,
            "mappings on an rbind map the submounts too"
        );
        assert_eq!(v[1].idmap, Some(IdmapWith::Container));
        assert!(!v[1].recursive_idmap);
    }

    #[test]
    fn refuses_non_bind_half_mappings_and_missing_namespace() {
        let tmpfs =
            mounts(r#"[{"destination":"/t","type":"tmpfs","source":"tmpfs","options":["idmap"]}]"#);
        let err = plan_volumes(&tmpfs, Path::new("/b"), Some(&own()), true).expect_err("tmpfs");
        assert_eq!(
            err.to_string(),
            "mount /t: id-mapping is only possible for bind mounts, not type \"tmpfs\""
        );
        let half = mounts(
            r#"[{"destination":"/h","type":"bind","source":"/s","options":["rbind"],
                 "uidMappings":[{"containerID":0,"hostID":1,"size":1}]}]"#,
        );
        let err = plan_volumes(&half, Path::new("/b"), Some(&own()), true).expect_err("half");
        assert_eq!(err.to_string(), "mount /h: uidMappings without gidMappings");
        let implied = mounts(
            r#"[{"destination":"/i","type":"bind","source":"/s","options":["rbind","idmap"]}]"#,
        );
        let err = plan_volumes(&implied, Path::new("/b"), None, false).expect_err("no userns");
        assert!(
            err.to_string()
                .contains("needs the container to have a user namespace"),
            "{err}"
        );
        let bad = mounts(
            r#"[{"destination":"/z","type":"bind","source":"/s","options":["rbind"],
                 "uidMappings":[{"containerID":0,"hostID":1,"size":0}],
                 "gidMappings":[{"containerID":0,"hostID":1,"size":1}]}]"#,
        );
        let err = plan_volumes(&bad, Path::new("/b"), None, true).expect_err("size 0");
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(err.to_string(), "mount /z");
        assert_eq!(
            source.as_deref(),
            Some("uidMappings: range 0:1:0 has size 0")
        );
    }
}
