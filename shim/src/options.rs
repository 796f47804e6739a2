//! The shim's own settings, as containerd hands them over with each task.
//!
//! For a runtime type other than runc, CRI (from the runtime's `options` table in containerd's
//! config) and `ctr --runtime-config-path` send a `runtimeoptions.v1.Options` message:
//! `type_url` (1), `config_path` (2), `config_body` (3). The settings are TOML, in the body or
//! in the file the path names:
//!
//! ```toml
//! # Allow the slow path when the rootfs cannot be idmapped (see the README's operations
//! # section): an overlay with metadata-only copy-ups owned by the mapped ids.
//! slow_chown = true
//! ```
//!
//! `ctr` also sends runc's own `containerd.runc.v1.Options` (and CRI does when a runtime is
//! configured with runc's options schema): its `io_uid`/`io_gid` (the host ids CRI wants the
//! stdio pipes to belong to) are honoured; the runc-specific knobs (binary name, criu paths,
//! no_pivot_root, ...) have no meaning here and are refused when set, not ignored.
//!
//! Any other message type is refused by name rather than guessed at.

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;
use serde::Deserialize;

const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";
const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
/// What ctr 1.6 sends for `--uidmap` (runc's older CreateOptions).
const RUNC_CREATE_OPTIONS: &str = "containerd.linux.runc.CreateOptions";

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimOptions {
    /// Opt in to the chown fallback when idmapped mounts are not available.
    #[serde(default)]
    pub slow_chown: bool,
    /// Host uid and gid the stdio pipes belong to (runc options' io_uid/io_gid).
    #[serde(skip)]
    pub io_owner: Option<(u32, u32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("runtime options of type {0:?} are not understood; usernsrs takes {RUNTIME_OPTIONS} (config_path or config_body with TOML)")]
    UnknownType(String),
    #[error("{RUNC_OPTIONS}: {0} has no meaning for usernsrs")]
    RuncOnly(&'static str),
    #[error("decode {RUNTIME_OPTIONS}")]
    Decode(#[source] containerd_shim::protos::protobuf::Error),
    #[error("read the shim config {path}")]
    Read {
        path: String,
        #[source]
        err: std::io::Error,
    },
    #[error("parse the shim config ({source_name})")]
    Toml {
        source_name: String,
        #[source]
        err: toml::de::Error,
    },
}

/// The `config_path` and `config_body` fields of a `runtimeoptions.v1.Options`.
fn decode_runtime_options(bytes: &[u8]) -> Result<(String, String), OptionsError> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let (mut path, mut body) = (String::new(), String::new());
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(OptionsError::Decode)? {
        match tag >> 3 {
            2 => path = input.read_string().map_err(OptionsError::Decode)?,
            3 => body = input.read_string().map_err(OptionsError::Decode)?,
            _ => skip(&mut input, tag & 7)?,
        }
    }
    Ok((path, body))
}

fn runc_options(bytes: &[u8]) -> Result<ShimOptions, OptionsError> {
    use containerd_shim::protos::protobuf::Message;
    let o = containerd_shim::api::Options::parse_from_bytes(bytes).map_err(OptionsError::Decode)?;
    for (set, name) in [
        (o.no_pivot_root, "no_pivot_root"),
        (!o.binary_name.is_empty(), "binary_name"),
        (!o.criu_image_path.is_empty(), "criu_image_path"),
        (!o.criu_work_path.is_empty(), "criu_work_path"),
        // The shim manages cgroups through cgroupfs only, and stays where containerd put it.
        (o.systemd_cgroup, "systemd_cgroup (SystemdCgroup)"),
        (!o.shim_cgroup.is_empty(), "shim_cgroup (ShimCgroup)"),
    ] {
        if set {
            return Err(OptionsError::RuncOnly(name));
        }
    }
    Ok(ShimOptions {
        slow_chown: false,
        io_owner: (o.io_uid != 0 || o.io_gid != 0).then_some((o.io_uid, o.io_gid)),
    })
}

/// `containerd.linux.runc.CreateOptions`: `no_pivot_root` (1), `io_uid` (10), `io_gid` (11)
/// matter; criu paths (12, 13) are runc's alone.
fn runc_create_options(bytes: &[u8]) -> Result<ShimOptions, OptionsError> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let (mut uid, mut gid) = (0u32, 0u32);
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(OptionsError::Decode)? {
        match (tag >> 3, tag & 7) {
            (1, 0) => {
                if input.read_bool().map_err(OptionsError::Decode)? {
                    return Err(OptionsError::RuncOnly("no_pivot_root"));
                }
            }
            (10, 0) => uid = input.read_uint32().map_err(OptionsError::Decode)?,
            (11, 0) => gid = input.read_uint32().map_err(OptionsError::Decode)?,
            (12 | 13, 2) => {
                if !input
                    .read_string()
                    .map_err(OptionsError::Decode)?
                    .is_empty()
                {
                    return Err(OptionsError::RuncOnly("criu paths"));
                }
            }
            (_, wire) => skip(&mut input, wire)?,
        }
    }
    Ok(ShimOptions {
        slow_chown: false,
        io_owner: (uid != 0 || gid != 0).then_some((uid, gid)),
    })
}

fn skip(input: &mut CodedInputStream<'_>, wire: u32) -> Result<(), OptionsError> {
    let wire = containerd_shim::protos::protobuf::rt::WireType::new(wire).ok_or_else(|| {
        OptionsError::Decode(containerd_shim::protos::protobuf::Error::from(
            std::io::Error::other("bad wire type"),
        ))
    })?;
    input.skip_field(wire).map_err(OptionsError::Decode)
}

/// The settings in `options`, or the defaults when containerd sent none.
pub fn parse(options: Option<&Any>) -> Result<ShimOptions, OptionsError> {
    let Some(any) = options.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
        return Ok(ShimOptions::default());
    };
    match any.type_url.rsplit('/').next() {
        Some(RUNTIME_OPTIONS) => {}
        Some(RUNC_OPTIONS) => return runc_options(&any.value),
        Some(RUNC_CREATE_OPTIONS) => return runc_create_options(&any.value),
        _ => return Err(OptionsError::UnknownType(any.type_url.clone())),
    }
    let (path, body) = decode_runtime_options(&any.value)?;
    let (text, source_name) = if !body.is_empty() {
        (body, "config_body".to_string())
    } else if !path.is_empty() {
        let text = std::fs::read_to_string(&path).map_err(|err| OptionsError::Read {
            path: path.clone(),
            err,
        })?;
        (text, path)
    } else {
        return Ok(ShimOptions::default());
    };
    toml::from_str(&text).map_err(|err| OptionsError::Toml { source_name, err })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(path: &str, body: &str) -> Any {
        let mut value = Vec::new();
        for (field, s) in [(2u8, path), (3u8, body)] {
            if !s.is_empty() {
                value.push(field << 3 | 2);
                value.push(s.len() as u8);
                value.extend_from_slice(s.as_bytes());
            }
        }
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_without_options() {
        assert_eq!(parse(None).expect("none"), ShimOptions::default());
    }

    #[test]
    fn reads_the_body_or_the_file() {
        assert!(
            parse(Some(&encode("", "slow_chown = true")))
                .expect("body")
                .slow_chown
        );
        let file =
            std::env::temp_dir().join(format!("usernsrs-options-{}.toml", std::process::id()));
        std::fs::write(&file, "slow_chown = true\n").expect("write");
        let opts = parse(Some(&encode(&file.to_string_lossy(), ""))).expect("path");
        std::fs::remove_file(&file).expect("cleanup");
        assert!(opts.slow_chown);
    }

    #[test]
    fn takes_io_owner_from_runc_options_and_refuses_runc_only_knobs() {
        use containerd_shim::protos::protobuf::Message;
        let runc = |o: containerd_shim::api::Options| Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: o.write_to_bytes().expect("encode"),
            ..Default::default()
        };
        let empty = parse(Some(&runc(Default::default()))).expect("empty runc options");
        assert_eq!(empty, ShimOptions::default());
        let cri = parse(Some(&runc(containerd_shim::api::Options {
            io_uid: 101000,
            io_gid: 101000,
            ..Default::default()
        })))
        .expect("io ids");
        assert_eq!(cri.io_owner, Some((101000, 101000)));
        let err = parse(Some(&runc(containerd_shim::api::Options {
            binary_name: "crun".into(),
            ..Default::default()
        })))
        .expect_err("binary name");
        assert_eq!(
            err.to_string(),
            "containerd.runc.v1.Options: binary_name has no meaning for usernsrs"
        );
        let err = parse(Some(&runc(containerd_shim::api::Options {
            systemd_cgroup: true,
            ..Default::default()
        })))
        .expect_err("systemd cgroup");
        assert_eq!(
            err.to_string(),
            "containerd.runc.v1.Options: systemd_cgroup (SystemdCgroup) has no meaning for usernsrs"
        );
    }

    #[test]
    fn takes_io_owner_from_ctr_16_create_options() {
        // io_uid = 100000 (field 10), io_gid = 100000 (field 11), varints.
        let varint = |mut v: u32| {
            let mut out = Vec::new();
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    out.push(b);
                    return out;
                }
                out.push(b | 0x80);
            }
        };
        let mut value = vec![10 << 3];
        value.extend(varint(100000));
        value.push(11 << 3);
        value.extend(varint(100000));
        let any = Any {
            type_url: "containerd.linux.runc.CreateOptions".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            parse(Some(&any)).expect("create options").io_owner,
            Some((100000, 100000))
        );
    }

    #[test]
    fn refuses_unknown_keys_types_and_missing_files() {
        let err = parse(Some(&encode("", "slowchown = true"))).expect_err("typo");
        assert!(matches!(err, OptionsError::Toml { .. }), "{err}");
        let other = Any {
            type_url: "io.example.Other".into(),
            value: vec![1],
            ..Default::default()
        };
        let err = parse(Some(&other)).expect_err("other options");
        assert!(err.to_string().contains("io.example.Other"), "{err}");
        let err = parse(Some(&encode("/nonexistent/usernsrs.toml", ""))).expect_err("missing");
        assert!(matches!(err, OptionsError::Read { .. }), "{err}");
    }
}
