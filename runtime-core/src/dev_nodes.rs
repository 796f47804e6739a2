//! The device nodes of a container's fresh `/dev`: runc's six defaults plus `linux.devices`.
//!
//! A container gets its nodes made only when the spec mounts a new filesystem (a tmpfs) on
//! `/dev`. A `/dev` bound from elsewhere already has its nodes, and creating files in it would
//! write into that source: the host's own /dev when a bind of it is shared with the host
//! (rootfsPropagation rshared), which is how a run once left its binds on the host's /dev/null.
//! runc decides the same way (its `needsSetupDev`).
//!
//! Which mount is "at /dev" is decided on the destination cleaned as the helper resolves it in
//! the rootfs (relative to its root, `..` never above it): `dev` and `/dev/../dev` are /dev.
//!
//! Invariants of a [`DevNode`]: `path` is relative to `/dev`, has only normal components (no
//! `..`, no `.`, not empty), and names a block, character or fifo node whose numbers the
//! kernel's dev_t holds (major below 2^12, minor below 2^20). A spec entry for the path of a
//! default replaces the default, as with runc.

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

/// The kernel's dev_t: 12 bits of major, 20 of minor (`MINORBITS`). `makedev` keeps only the
/// low 32 bits of each number, so a larger one would name another device.
const MAX_MAJOR: u64 = (1 << 12) - 1;
const MAX_MINOR: u64 = (1 << 20) - 1;

/// Whether the container's `/dev` is a filesystem of its own that needs nodes: the last mount
/// of the spec on `/dev` is not a bind (a later mount hides an earlier one).
pub fn needs_dev_nodes(mounts: &[Mount]) -> bool {
    mounts
        .iter()
        .rev()
        .find(|m| is_dev(m.destination()))
        .is_some_and(|m| !is_bind(m))
}

/// Whether the helper mounts at `/dev` for destination `dest`: it resolves destinations inside
/// the rootfs, relative to its root, `.` dropped and `..` never going above the root.
pub fn is_dev(dest: &Path) -> bool {
    let mut parts = Vec::new();
    for c in dest.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    parts == ["dev"]
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
        let number = |field, value: i64, max: u64| {
            u64::try_from(value)
                .ok()
                .filter(|v| *v <= max)
                .ok_or_else(|| DevNodeError::OutOfRange {
                    index,
                    path: path.clone(),
                    field,
                    value,
                })
        };
        let (major, minor) = match kind {
            NodeKind::Fifo => (0, 0),
            _ => (
                number("major", d.major(), MAX_MAJOR)?,
                number("minor", d.minor(), MAX_MINOR)?,
            ),
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
    fn a_bind_reaching_dev_through_dot_dot_gets_no_nodes() {
        // Found by the property tests: the helper resolves `/dev/../dev` to /dev, so nodes were
        // made in the bound source (the host's /dev for a bind of it).
        let m = json!([
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/dev/../dev", "type": "bind", "source": "/dev", "options": ["rbind"]}
        ]);
        assert!(!needs_dev_nodes(
            &spec(m, json!([])).mounts().clone().expect("mounts")
        ));
    }

    #[test]
    fn a_relative_dev_destination_is_dev() {
        // Found by the property tests (shrunk input): a tmpfs at `dev` is the container's /dev
        // for the helper, and got no nodes.
        let m = json!([{"destination": "dev", "type": "tmpfs"}]);
        assert!(needs_dev_nodes(
            &spec(m, json!([])).mounts().clone().expect("mounts")
        ));
    }

    #[test]
    fn refuses_numbers_the_kernels_dev_t_cannot_hold() {
        // Found by the property tests (shrunk input: minor 1048576). makedev keeps 32 bits of
        // each number: major 2^32 + 8 would have made block device 8:0 (sda).
        for (major, minor, field) in [
            (0, 1 << 20, "minor"),
            (4096, 0, "major"),
            ((1_i64 << 32) + 8, 0, "major"),
        ] {
            let s = spec(
                dev_tmpfs(),
                json!([{"path": "/dev/x", "type": "b", "major": major, "minor": minor}]),
            );
            let err = plan_dev_nodes(&s).expect_err("out of range");
            assert!(
                matches!(err, DevNodeError::OutOfRange { field: f, index: 0, .. } if f == field),
                "{major}:{minor}: {err}"
            );
            assert!(err.to_string().starts_with("linux.devices[0]"), "{err}");
        }
        let s = spec(
            dev_tmpfs(),
            json!([{"path": "/dev/x", "type": "c", "major": 4095, "minor": (1 << 20) - 1}]),
        );
        plan_dev_nodes(&s).expect("the largest numbers are taken");
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
