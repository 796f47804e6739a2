//! The device nodes of a container's fresh `/dev`: runc's six defaults plus `linux.devices`.
//!
//! A container gets its nodes made only when the spec mounts a new filesystem (a tmpfs) on
//! `/dev`. A `/dev` bound from elsewhere already has its nodes, and creating files in it would
//! write into that source: the host's own /dev when a bind of it is shared with the host
//! (rootfsPropagation rshared), which is how a run once left its binds on the host's /dev/null.
//! runc decides the same way (its `needsSetupDev`).
//!
//! Invariants of a [`DevNode`]: `path` is relative to `/dev`, has only normal components (no
//! `..`, no `.`, not empty), and names a block, character or fifo node. A spec entry for the path
//! of a default replaces the default, as with runc.

use oci_spec::runtime::{LinuxDeviceType, Mount, Spec};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// One node to make under the container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevNode {
    /// Relative to `/dev`, normal components only.
    pub path: PathBuf,
    pub kind: NodeKind,
    pub major: u64,
    pub minor: u64,
    /// Permission bits (0o7777 at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DevNodeError {
    #[error("linux.devices[{index}].path {path:?}: a device must be an absolute path under /dev without '..'")]
    BadPath { index: usize, path: PathBuf },
    #[error("linux.devices[{index}].type \"a\" ({path:?}): \"a\" is for device cgroup rules, a node needs b, c, u or p")]
    BadType { index: usize, path: PathBuf },
    #[error("linux.devices[{index}] {path:?}: {field} {value} is out of range")]
    OutOfRange {
        index: usize,
        path: PathBuf,
        field: &'static str,
        value: i64,
    },
    #[error("linux.devices has {path:?} twice (entries {first} and {second})")]
    Duplicate {
        path: PathBuf,
        first: usize,
        second: usize,
    },
}

/// runc's default nodes, made in every fresh /dev (`specconv.AllowedDevices` with a path).
const DEFAULTS: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Whether the container's `/dev` is a filesystem of its own that needs nodes: the last mount
/// of the spec on `/dev` is not a bind (a later mount hides an earlier one).
pub fn needs_dev_nodes(mounts: &[Mount]) -> bool {
    mounts
        .iter()
        .rev()
        .find(|m| {
            m.destination()
                .components()
                .eq(Path::new("/dev").components())
        })
        .is_some_and(|m| !is_bind(m))
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// `/dev/x/y` as `x/y`, or `None` for anything else: relative, outside /dev, `..`, `.`.
fn under_dev(path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix("/dev").ok()?;
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// The nodes of the container's fresh `/dev`, or none when it has no /dev of its own.
pub fn plan_dev_nodes(spec: &Spec) -> Result<Vec<DevNode>, DevNodeError> {
    if !needs_dev_nodes(spec.mounts().as_deref().unwrap_or(&[])) {
        return Ok(Vec::new());
    }
    let devices = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    let mut from_spec: Vec<(usize, DevNode)> = Vec::new();
    for (index, d) in devices.iter().enumerate() {
        let path = d.path().clone();
        let rel = under_dev(&path).ok_or_else(|| DevNodeError::BadPath {
            index,
            path: path.clone(),
        })?;
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => NodeKind::Char,
            LinuxDeviceType::B => NodeKind::Block,
            LinuxDeviceType::P => NodeKind::Fifo,
            LinuxDeviceType::A => return Err(DevNodeError::BadType { index, path }),
        };
        let number = |field, value: i64| {
            u64::try_from(value).map_err(|_| DevNodeError::OutOfRange {
                index,
                path: path.clone(),
                field,
                value,
            })
        };
        let (major, minor) = match kind {
            NodeKind::Fifo => (0, 0),
            _ => (number("major", d.major())?, number("minor", d.minor())?),
        };
        // Permission bits; some clients also send the node's type bits (S_IFCHR...), which
        // say nothing more. Any other high bit is an error.
        let type_bits = match kind {
            NodeKind::Char => 0o020000,
            NodeKind::Block => 0o060000,
            NodeKind::Fifo => 0o010000,
        };
        let raw = d.file_mode().unwrap_or(0o666);
        let mode = raw & 0o7777;
        if raw & !0o7777 != 0 && raw & !0o7777 != type_bits {
            return Err(DevNodeError::OutOfRange {
                index,
                path,
                field: "fileMode",
                value: i64::from(raw),
            });
        }
        if let Some((first, _)) = from_spec.iter().find(|(_, n)| n.path == rel) {
            return Err(DevNodeError::Duplicate {
                path,
                first: *first,
                second: index,
            });
        }
        let node = DevNode {
            path: rel,
            kind,
            major,
            minor,
            mode,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        };
        from_spec.push((index, node));
    }
    let mut nodes: Vec<DevNode> = DEFAULTS
        .iter()
        .filter(|(name, _, _)| !from_spec.iter().any(|(_, n)| n.path == Path::new(name)))
        .map(|&(name, major, minor)| DevNode {
            path: PathBuf::from(name),
            kind: NodeKind::Char,
            major,
            minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
        })
        .collect();
    nodes.extend(from_spec.into_iter().map(|(_, n)| n));
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(mounts: serde_json::Value, devices: serde_json::Value) -> Spec {
        serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": mounts,
            "linux": {"devices": devices},
        }))
        .expect("a valid spec")
    }

    fn dev_tmpfs() -> serde_json::Value {
        json!([{"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}])
    }

    #[test]
    fn a_dev_tmpfs_gets_the_six_defaults() {
        let nodes = plan_dev_nodes(&spec(dev_tmpfs(), json!([]))).expect("plan");
        let names: Vec<_> = nodes
            .iter()
            .map(|n| n.path.to_str().expect("utf-8 names"))
            .collect();
        assert_eq!(names, ["null", "zero", "full", "random", "urandom", "tty"]);
        let null = &nodes[0];
        assert_eq!((null.kind, null.major, null.minor), (NodeKind::Char, 1, 3));
        assert_eq!(null.mode, 0o666);
    }

    #[test]
    fn a_bound_dev_gets_no_nodes() {
        for m in [
            json!([{"destination": "/dev", "type": "bind", "source": "/x"}]),
            json!([{"destination": "/dev", "source": "/x", "options": ["rbind", "rshared"]}]),
            json!([{"destination": "/dev/", "source": "/x", "options": ["bind"]}]),
            json!([
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/dev", "type": "bind", "source": "/x", "options": ["rbind"]}
            ]),
            json!([]),
        ] {
            let s = spec(
                m.clone(),
                json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]),
            );
            assert_eq!(plan_dev_nodes(&s).expect("plan"), Vec::new(), "{m}");
        }
    }

    #[test]
    fn a_tmpfs_after_a_bind_of_dev_needs_nodes() {
        let m = json!([
            {"destination": "/dev", "type": "bind", "source": "/x", "options": ["rbind"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}
        ]);
        assert!(needs_dev_nodes(
            &spec(m, json!([])).mounts().clone().expect("mounts")
        ));
    }

    #[test]
    fn spec_devices_keep_their_numbers_mode_and_owner_and_replace_defaults() {
        let s = spec(
            dev_tmpfs(),
            json!([
                {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 0o600, "uid": 7, "gid": 8},
                {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640},
                {"path": "/dev/loop0", "type": "b", "major": 7, "minor": 0},
                {"path": "/dev/pipe", "type": "p", "major": 0, "minor": 0}
            ]),
        );
        let nodes = plan_dev_nodes(&s).expect("plan");
        assert_eq!(nodes.len(), 9, "{nodes:?}");
        let find = |p: &str| nodes.iter().find(|n| n.path == Path::new(p)).expect(p);
        let tun = find("net/tun");
        assert_eq!(
            (tun.kind, tun.major, tun.minor, tun.mode, tun.uid, tun.gid),
            (NodeKind::Char, 10, 200, 0o600, 7, 8)
        );
        assert_eq!(find("null").mode, 0o640);
        assert_eq!(
            nodes.iter().filter(|n| n.path == Path::new("null")).count(),
            1
        );
        assert_eq!(find("loop0").kind, NodeKind::Block);
        assert_eq!(find("pipe").kind, NodeKind::Fifo);
    }

    #[test]
    fn refuses_paths_outside_dev_or_with_dot_dot() {
        for (i, p) in [
            "/dev/../etc/shadow",
            "/etc/x",
            "dev/null",
            "/dev",
            "/dev/a/../../etc",
            "/devx/a",
        ]
        .iter()
        .enumerate()
        {
            let s = spec(
                dev_tmpfs(),
                json!([{"path": p, "type": "c", "major": 1, "minor": 3}]),
            );
            let err = plan_dev_nodes(&s).expect_err(p);
            assert_eq!(
                err,
                DevNodeError::BadPath {
                    index: 0,
                    path: PathBuf::from(p)
                },
                "case {i}"
            );
            assert!(err.to_string().contains("linux.devices[0].path"), "{err}");
        }
    }

    #[test]
    fn refuses_negative_numbers_type_a_and_duplicates() {
        let s = spec(
            dev_tmpfs(),
            json!([{"path": "/dev/x", "type": "c", "major": -1, "minor": 3}]),
        );
        assert!(matches!(
            plan_dev_nodes(&s),
            Err(DevNodeError::OutOfRange { field: "major", .. })
        ));
        let s = spec(
            dev_tmpfs(),
            json!([{"path": "/dev/x", "type": "a", "major": 1, "minor": 3}]),
        );
        assert!(matches!(
            plan_dev_nodes(&s),
            Err(DevNodeError::BadType { .. })
        ));
        let s = spec(
            dev_tmpfs(),
            json!([
                {"path": "/dev/x", "type": "c", "major": 1, "minor": 3},
                {"path": "/dev/x", "type": "c", "major": 1, "minor": 5}
            ]),
        );
        let err = plan_dev_nodes(&s).expect_err("a duplicate");
        assert_eq!(
            err,
            DevNodeError::Duplicate {
                path: "/dev/x".into(),
                first: 0,
                second: 1
            }
        );
    }
}
