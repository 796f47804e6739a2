//! Property tests of runtime-core's public API over generated bad input: id mappings, mount
//! destinations and options, sysctl keys, devices, mountinfo lines and whole specs perturbed
//! from a typical ctr/CRI spec.
//!
//! Each property states what must hold for every input: the planner never panics, every
//! refusal names the spec field it refuses, and where the rule is arithmetic or a table the
//! answer agrees with a model written here independently (a brute-force id map for small ids,
//! runc's sysctl table, "the later option wins" for mount flags).
//!
//! Cases per property: 512, or `PROPTEST_CASES`; `PROPTEST_RNG_SEED`
//! replays a run. Nothing is persisted: a failure found here becomes a named unit test next to
//! the code it fixes, with the shrunk input.

use oci_spec::runtime::Spec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use usernsrs_runtime_core::dev_nodes::{needs_dev_nodes, plan_dev_nodes, DevNodeError, NodeKind};
use usernsrs_runtime_core::idmap::{IdMap, IdMapError, IdMapping, MAX_RANGES};
use usernsrs_runtime_core::mount_options::{attrs, flags, parse_mount_options, IdmapOption};
use usernsrs_runtime_core::mountinfo::{self, MountEntry};
use usernsrs_runtime_core::rootfs::{common_parent, plan_rootfs, RootfsSource, UsernsFacts};
use usernsrs_runtime_core::sysctl::{check_sysctl, OwnNamespaces, SysctlError};
use usernsrs_runtime_core::volumes::plan_volumes;
use usernsrs_runtime_core::{plan_container, NamespaceKind, RootMount, UserMapping, UserNamespace};

/// 512 cases per property unless `PROPTEST_CASES` says otherwise (`Config::default` reads it).
fn config() -> Config {
    let mut config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 512;
    }
    config
}

/// An error and its sources, as the shim prints them to containerd.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn range(container_id: u32, host_id: u32, size: u32) -> IdMapping {
    IdMapping {
        container_id,
        host_id,
        size,
    }
}

fn ranges_json(ranges: &[IdMapping]) -> Value {
    ranges
        .iter()
        .map(|r| json!({"containerID": r.container_id, "hostID": r.host_id, "size": r.size}))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Id mappings.

/// 0 to 5 ranges of ids below 64 (sizes 0 to 7), so that overlaps and zero sizes are common.
fn small_ranges() -> impl Strategy<Value = Vec<IdMapping>> {
    prop::collection::vec(
        (0u32..56, 0u32..56, 0u32..8).prop_map(|(c, h, s)| range(c, h, s)),
        0..=5,
    )
}

/// An id near one of the edges that matter: 0, 2^31, 2^32-1.
fn edgy_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..8,
        (u32::MAX - 8)..=u32::MAX,
        ((1u32 << 31) - 4)..((1u32 << 31) + 4),
        any::<u32>(),
    ]
}

fn huge_ranges() -> impl Strategy<Value = Vec<IdMapping>> {
    prop::collection::vec(
        (edgy_u32(), edgy_u32(), edgy_u32()).prop_map(|(c, h, s)| range(c, h, s)),
        0..=5,
    )
}

/// The brute-force model of a small map: every container id and the host id it maps to, or
/// `None` when the kernel would refuse the ranges (none, a size 0, an id mapped twice on either
/// side).
fn brute_force(ranges: &[IdMapping]) -> Option<HashMap<u32, u32>> {
    if ranges.is_empty() || ranges.iter().any(|r| r.size == 0) {
        return None;
    }
    let mut to_host = HashMap::new();
    let mut hosts = HashSet::new();
    for r in ranges {
        for k in 0..r.size {
            if to_host.insert(r.container_id + k, r.host_id + k).is_some()
                || !hosts.insert(r.host_id + k)
            {
                return None;
            }
        }
    }
    Some(to_host)
}

/// The interval model for any ids, in u64: whether the kernel takes the ranges (each ends at
/// 2^32-1 at most, exclusive, since (uid_t)-1 is never mapped), and the translation.
fn interval_valid(ranges: &[IdMapping]) -> bool {
    let limit = u64::from(u32::MAX);
    let ends = |start: u32, size: u32| (u64::from(start), u64::from(start) + u64::from(size));
    let apart = |(a0, a1): (u64, u64), (b0, b1): (u64, u64)| a1 <= b0 || b1 <= a0;
    !ranges.is_empty()
        && ranges.len() <= MAX_RANGES
        && ranges.iter().all(|r| {
            r.size > 0
                && ends(r.container_id, r.size).1 <= limit
                && ends(r.host_id, r.size).1 <= limit
        })
        && ranges.iter().enumerate().all(|(i, a)| {
            ranges[i + 1..].iter().all(|b| {
                apart(ends(a.container_id, a.size), ends(b.container_id, b.size))
                    && apart(ends(a.host_id, a.size), ends(b.host_id, b.size))
            })
        })
}

/// The host id of container id `id` (u64: an invalid map can point past 2^32).
fn interval_to_host(ranges: &[IdMapping], id: u32) -> Option<u64> {
    let id = u64::from(id);
    ranges.iter().find_map(|r| {
        let start = u64::from(r.container_id);
        (start..start + u64::from(r.size))
            .contains(&id)
            .then(|| u64::from(r.host_id) + (id - start))
    })
}

fn interval_covers_host(ranges: &[IdMapping], id: u32) -> bool {
    let id = u64::from(id);
    ranges.iter().any(|r| {
        let start = u64::from(r.host_id);
        (start..start + u64::from(r.size)).contains(&id)
    })
}

/// Ids worth asking a map about: each range's edges on both sides, and a few fixed ones.
fn probe_ids(ranges: &[IdMapping]) -> Vec<u32> {
    let mut ids = vec![0, 1, u32::MAX - 1, u32::MAX];
    for r in ranges {
        for start in [r.container_id, r.host_id] {
            ids.push(start);
            ids.push(start.wrapping_sub(1));
            ids.push(start.saturating_add(r.size));
            ids.push(start.saturating_add(r.size).wrapping_sub(1));
        }
    }
    ids
}

const MAPPING_FIELDS: [&str; 3] = [
    "linux.uidMappings",
    "linux.gidMappings",
    "mounts[0].uidMappings",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn small_maps_agree_with_the_brute_force_model(
        ranges in small_ranges(),
        field in select(&MAPPING_FIELDS[..]),
    ) {
        let got = IdMap::new(field, ranges.clone());
        let Some(model) = brute_force(&ranges) else {
            let err = got.expect_err("the model refuses these ranges");
            prop_assert!(err.to_string().starts_with(field), "{err}");
            // Which refusal: the first check that fails, in the order the kernel's own
            // documentation lists them (emptiness, then each range, then pairs).
            match &err {
                IdMapError::Empty { .. } => prop_assert!(ranges.is_empty()),
                IdMapError::ZeroSize { range, .. } => {
                    prop_assert_eq!(Some(range), ranges.iter().find(|r| r.size == 0));
                }
                IdMapError::Overlap { side, a, b, .. } => {
                    prop_assert!(ranges.iter().all(|r| r.size > 0));
                    let set = |start: u32, size: u32| (start..start + size).collect::<HashSet<_>>();
                    let (sa, sb) = if *side == "container" {
                        (set(a.container_id, a.size), set(b.container_id, b.size))
                    } else {
                        (set(a.host_id, a.size), set(b.host_id, b.size))
                    };
                    prop_assert!(!sa.is_disjoint(&sb), "{err}: the ranges named do not overlap");
                }
                other => prop_assert!(false, "unexpected refusal {other}"),
            }
            return Ok(());
        };
        let map = got.expect("the model accepts these ranges");
        let hosts: HashMap<u32, u32> = model.iter().map(|(&c, &h)| (h, c)).collect();
        for id in 0..72 {
            prop_assert_eq!(map.to_host(id), model.get(&id).copied(), "container id {}", id);
            prop_assert_eq!(map.covers_host(id), hosts.contains_key(&id), "host id {}", id);
        }
        // Host to container: each covered host id comes from exactly one container id.
        for (&host, &container) in &hosts {
            let from: Vec<u32> = (0..72).filter(|&c| map.to_host(c) == Some(host)).collect();
            prop_assert_eq!(from, vec![container], "host id {}", host);
        }
        prop_assert_eq!(map.ranges(), &ranges[..]);
        prop_assert_eq!(map.proc_format().lines().count(), ranges.len());
    }

    #[test]
    fn maps_near_2_pow_32_agree_with_the_interval_model(
        ranges in huge_ranges(),
        field in select(&MAPPING_FIELDS[..]),
    ) {
        let got = IdMap::new(field, ranges.clone());
        prop_assert_eq!(got.is_ok(), interval_valid(&ranges), "{:?}", got);
        match got {
            Err(err) => prop_assert!(err.to_string().starts_with(field), "{err}"),
            Ok(map) => {
                for id in probe_ids(&ranges) {
                    prop_assert_eq!(
                        map.to_host(id).map(u64::from), interval_to_host(&ranges, id), "id {}", id
                    );
                    prop_assert_eq!(
                        map.covers_host(id), interval_covers_host(&ranges, id), "host id {}", id
                    );
                }
            }
        }
    }

    #[test]
    fn containerd_option_form_is_the_same_map(
        ranges in prop_oneof![small_ranges(), huge_ranges()]
            .prop_filter("one range at least", |r| !r.is_empty()),
    ) {
        let text: Vec<String> = ranges.iter().map(ToString::to_string).collect();
        let parsed = IdMap::parse_containerd("uidmap", &text.join(","));
        let direct = IdMap::new("uidmap", ranges);
        prop_assert_eq!(parsed, direct);
    }

    #[test]
    fn containerd_option_text_never_panics(
        text in prop_oneof!["[0-9:,+ -]{0,24}", "\\PC{0,24}"],
    ) {
        if let Err(err) = IdMap::parse_containerd("gidmap", &text) {
            prop_assert!(err.to_string().starts_with("gidmap"), "{err}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The process's ids against the container's mappings, through plan_container.

fn userns_spec(
    uid_ranges: &[IdMapping],
    gid_ranges: &[IdMapping],
    uid: u32,
    gid: u32,
    additional: &[u32],
) -> Spec {
    let v = json!({
        "ociVersion": "1.1.0",
        "process": {
            "args": ["/bin/true"], "cwd": "/",
            "user": {"uid": uid, "gid": gid, "additionalGids": additional},
        },
        "root": {"path": "/img"},
        "linux": {
            "namespaces": [{"type": "mount"}, {"type": "user"}],
            "uidMappings": ranges_json(uid_ranges),
            "gidMappings": ranges_json(gid_ranges),
        },
    });
    serde_json::from_value(v).expect("a spec")
}

fn plan(spec: Spec) -> Result<usernsrs_runtime_core::ContainerPlan, String> {
    plan_container("c1", Path::new("/b"), spec, &[], |_| Ok((0, 0))).map_err(|e| chain(&e))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn process_ids_must_be_mapped_as_the_brute_force_model_says(
        uid_ranges in small_ranges(),
        gid_ranges in small_ranges(),
        uid in 0u32..64,
        gid in 0u32..64,
        additional in prop::collection::vec(0u32..64, 0..3),
    ) {
        let got = plan(userns_spec(&uid_ranges, &gid_ranges, uid, gid, &additional));
        let uids = brute_force(&uid_ranges);
        let gids = brute_force(&gid_ranges);
        let expected: Option<String> = if uid_ranges.is_empty() && gid_ranges.is_empty() {
            Some("linux.uidMappings/gidMappings are empty".into())
        } else if uid_ranges.is_empty() {
            Some("linux.gidMappings is set but linux.uidMappings is empty".into())
        } else if gid_ranges.is_empty() {
            Some("linux.uidMappings is set but linux.gidMappings is empty".into())
        } else if uids.is_none() {
            Some("linux.uidMappings: ".into())
        } else if gids.is_none() {
            Some("linux.gidMappings: ".into())
        } else if !uids.as_ref().is_some_and(|m| m.contains_key(&uid)) {
            Some(format!("process.user.uid {uid} is not mapped by linux.uidMappings"))
        } else if !gids.as_ref().is_some_and(|m| m.contains_key(&gid)) {
            Some(format!("process.user.gid {gid} is not mapped by linux.gidMappings"))
        } else {
            additional
                .iter()
                .find(|g| !gids.as_ref().is_some_and(|m| m.contains_key(g)))
                .map(|g| format!("process.user.additionalGids {g} is not mapped"))
        };
        match (expected, got) {
            (None, Ok(p)) => {
                let UserNamespace::New(UserMapping { uid: u, gid: g }) = p.user_namespace else {
                    panic!("a new user namespace expected, got {:?}", p.user_namespace);
                };
                prop_assert_eq!(u.ranges(), &uid_ranges[..]);
                prop_assert_eq!(g.ranges(), &gid_ranges[..]);
            }
            (Some(want), Err(err)) => prop_assert!(err.contains(&want), "{err}\nwanted: {want}"),
            (want, got) => {
                prop_assert!(false, "model says {want:?}, plan says {:?}", got.map(|_| ()));
            }
        }
    }

    #[test]
    fn huge_mappings_never_panic_and_refusals_name_the_field(
        uid_ranges in huge_ranges(),
        gid_ranges in huge_ranges(),
        uid in edgy_u32(),
        gid in edgy_u32(),
        additional in prop::collection::vec(edgy_u32(), 0..3),
    ) {
        let ok_maps = interval_valid(&uid_ranges) && interval_valid(&gid_ranges);
        let mapped = interval_to_host(&uid_ranges, uid).is_some()
            && interval_to_host(&gid_ranges, gid).is_some()
            && additional.iter().all(|&g| interval_to_host(&gid_ranges, g).is_some());
        match plan(userns_spec(&uid_ranges, &gid_ranges, uid, gid, &additional)) {
            Ok(_) => prop_assert!(ok_maps && mapped),
            Err(err) => {
                prop_assert!(!(ok_maps && mapped), "refused a valid spec: {err}");
                prop_assert!(
                    err.contains("linux.uidMappings") || err.contains("linux.gidMappings"),
                    "{err}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mount options.

/// Every word the parser knows, and garbage next to them.
#[rustfmt::skip]
const OPTION_WORDS: &[&str] = &[
    "defaults", "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync", "async",
    "dirsync", "remount", "mand", "nomand", "atime", "noatime", "diratime", "nodiratime",
    "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime", "nolazytime",
    "nosymfollow", "bind", "rbind", "private", "rprivate", "shared", "rshared", "slave", "rslave",
    "unbindable", "runbindable", "rro", "rrw", "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec",
    "rexec", "rnodiratime", "rdiratime", "rrelatime", "rnorelatime", "rnoatime", "ratime",
    "rstrictatime", "rnostrictatime", "rnosymfollow", "rsymfollow", "idmap", "ridmap",
    // Garbage: data words, near misses, odd unicode.
    "mode=755", "size=65536k", "", "RO", "ro ", "rbind,ro", "bogus", "uidmap=0:1:2", "ró",
    "\u{202e}ro", "rrro", "norw",
];

fn option_words() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(select(OPTION_WORDS), 0..12)
}

/// The model's table for `mount(2)` flags: (sets the bits rather than clearing them, bits).
fn flag_word(w: &str) -> Option<(bool, u64)> {
    use flags::*;
    Some(match w {
        "defaults" => (true, 0),
        "ro" => (true, RDONLY),
        "rw" => (false, RDONLY),
        "nosuid" => (true, NOSUID),
        "suid" => (false, NOSUID),
        "nodev" => (true, NODEV),
        "dev" => (false, NODEV),
        "noexec" => (true, NOEXEC),
        "exec" => (false, NOEXEC),
        "sync" => (true, SYNCHRONOUS),
        "async" => (false, SYNCHRONOUS),
        "dirsync" => (true, DIRSYNC),
        "remount" => (true, REMOUNT),
        "mand" => (true, MANDLOCK),
        "nomand" => (false, MANDLOCK),
        "noatime" => (true, NOATIME),
        "atime" => (false, NOATIME),
        "nodiratime" => (true, NODIRATIME),
        "diratime" => (false, NODIRATIME),
        "relatime" => (true, RELATIME),
        "norelatime" => (false, RELATIME),
        "strictatime" => (true, STRICTATIME),
        "nostrictatime" => (false, STRICTATIME),
        "lazytime" => (true, LAZYTIME),
        "nolazytime" => (false, LAZYTIME),
        "nosymfollow" => (true, NOSYMFOLLOW),
        "bind" => (true, BIND),
        "rbind" => (true, BIND | REC),
        _ => return None,
    })
}

fn propagation_word(w: &str) -> Option<u64> {
    use flags::*;
    Some(match w {
        "private" => PRIVATE,
        "rprivate" => PRIVATE | REC,
        "shared" => SHARED,
        "rshared" => SHARED | REC,
        "slave" => SLAVE,
        "rslave" => SLAVE | REC,
        "unbindable" => UNBINDABLE,
        "runbindable" => UNBINDABLE | REC,
        _ => return None,
    })
}

/// What a recursive option does to the mounts of the tree: one attribute on or off, or the
/// atime setting (an enum in the kernel, not a bit).
enum RecursiveEffect {
    Bit(u64, bool),
    Atime(u64),
}

fn recursive_word(w: &str) -> Option<RecursiveEffect> {
    use attrs::*;
    use RecursiveEffect::*;
    Some(match w {
        "rro" => Bit(RDONLY, true),
        "rrw" => Bit(RDONLY, false),
        "rnosuid" => Bit(NOSUID, true),
        "rsuid" => Bit(NOSUID, false),
        "rnodev" => Bit(NODEV, true),
        "rdev" => Bit(NODEV, false),
        "rnoexec" => Bit(NOEXEC, true),
        "rexec" => Bit(NOEXEC, false),
        "rnodiratime" => Bit(NODIRATIME, true),
        "rdiratime" => Bit(NODIRATIME, false),
        "rnosymfollow" => Bit(NOSYMFOLLOW, true),
        "rsymfollow" => Bit(NOSYMFOLLOW, false),
        "rrelatime" | "rnorelatime" | "ratime" | "rnostrictatime" => Atime(RELATIME),
        "rnoatime" => Atime(NOATIME),
        "rstrictatime" => Atime(STRICTATIME),
        _ => return None,
    })
}

/// The model's reading of an option list: each bit (and the atime setting) is decided by the
/// last word that names it.
struct ModelOptions {
    flags: u64,
    propagation: Vec<u64>,
    data: Vec<String>,
    idmap: Option<IdmapOption>,
    /// `(bit, on)` of the recursive attributes some word decided, and the atime setting.
    recursive_bits: HashMap<u64, bool>,
    recursive_atime: Option<u64>,
}

fn model_options(words: &[&str]) -> ModelOptions {
    let mut flags = 0u64;
    for bit in (0..64).map(|i| 1u64 << i) {
        let last = words
            .iter()
            .rev()
            .find_map(|w| flag_word(w).filter(|(_, b)| b & bit != 0));
        if let Some((true, _)) = last {
            flags |= bit;
        }
    }
    let mut recursive_bits = HashMap::new();
    let mut recursive_atime = None;
    for w in words {
        match recursive_word(w) {
            Some(RecursiveEffect::Bit(bit, on)) => {
                recursive_bits.insert(bit, on);
            }
            Some(RecursiveEffect::Atime(v)) => recursive_atime = Some(v),
            None => {}
        }
    }
    let idmap = words.iter().rev().find_map(|w| match *w {
        "idmap" => Some(IdmapOption::Idmap),
        "ridmap" => Some(IdmapOption::Ridmap),
        _ => None,
    });
    let data = words
        .iter()
        .filter(|w| {
            !w.is_empty()
                && flag_word(w).is_none()
                && propagation_word(w).is_none()
                && recursive_word(w).is_none()
                && !matches!(**w, "idmap" | "ridmap")
        })
        .map(|w| w.to_string())
        .collect();
    ModelOptions {
        flags,
        propagation: words.iter().filter_map(|w| propagation_word(w)).collect(),
        data,
        idmap,
        recursive_bits,
        recursive_atime,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn later_mount_options_win_as_the_model_says(words in option_words()) {
        let got = parse_mount_options(&words);
        let model = model_options(&words);
        prop_assert_eq!(got.flags, model.flags, "flags of {:?}", words);
        prop_assert_eq!(&got.propagation, &model.propagation);
        prop_assert_eq!(&got.data, &model.data.join(","));
        prop_assert_eq!(got.idmap, model.idmap);
        prop_assert_eq!(got.is_bind(), model.flags & flags::BIND != 0);
        prop_assert_eq!(got.is_readonly(), model.flags & flags::RDONLY != 0);

        // mount_setattr(2) takes the pair only in this shape (EINVAL otherwise): the whole
        // atime field cleared whenever part of it is, one atime value at most, and no atime
        // value without the field cleared.
        let r = got.recursive;
        if r.clear & attrs::ATIME != 0 {
            prop_assert_eq!(r.clear & attrs::ATIME, attrs::ATIME);
            prop_assert!(
                [attrs::RELATIME, attrs::NOATIME, attrs::STRICTATIME]
                    .contains(&(r.set & attrs::ATIME))
            );
        } else {
            prop_assert_eq!(r.set & attrs::ATIME, 0);
        }
        // What the tree's mounts end with, from a few starting states: the kernel clears, then
        // sets.
        let plain = [
            attrs::RDONLY, attrs::NOSUID, attrs::NODEV, attrs::NOEXEC, attrs::NODIRATIME,
            attrs::NOSYMFOLLOW,
        ];
        let all_plain = plain.iter().fold(0, |a, b| a | b);
        for start in [
            0,
            attrs::NOATIME | attrs::RDONLY,
            attrs::STRICTATIME | attrs::NOSUID | attrs::NODEV,
            all_plain | attrs::NOATIME,
        ] {
            let end = (start & !r.clear) | r.set;
            for bit in plain {
                let want = model.recursive_bits.get(&bit).copied().unwrap_or(start & bit != 0);
                prop_assert_eq!(end & bit != 0, want, "bit {:#x} from {:#x}", bit, start);
            }
            let atime = model.recursive_atime.unwrap_or(start & attrs::ATIME);
            prop_assert_eq!(end & attrs::ATIME, atime, "atime from {:#x}", start);
            prop_assert_eq!(end & !(all_plain | attrs::ATIME), 0);
        }
        prop_assert_eq!(r.is_empty(), r.set == 0 && r.clear == 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Spec mounts: destinations, types, sources, options and mappings.

fn destination() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(&[
            "/data", "/dev", "/dev/", "dev", "/dev/../dev", "//dev", "/./dev", "/dev/.",
            "/x/../dev", "/../dev", "/dev/shm", "/devx", "/", "", ".", "..", "/..", "data",
            "../../etc", "/a/./b/../c", "/données/ünï", "/a b/\tc", "/\u{202e}lol", "/\u{0}x",
        ][..]).prop_map(String::from),
        1 => "(/[a-z.]{0,3}){1,4}",
        1 => "\\PC{0,12}",
        1 => Just(format!("/{}", "a".repeat(5000))),
    ]
}

#[derive(Debug, Clone)]
struct MountIn {
    destination: String,
    typ: Option<&'static str>,
    source: Option<&'static str>,
    options: Option<Vec<&'static str>>,
    uid: Option<Vec<IdMapping>>,
    gid: Option<Vec<IdMapping>>,
}

impl MountIn {
    fn json(&self) -> Value {
        let mut m = json!({"destination": self.destination});
        if let Some(t) = self.typ {
            m["type"] = json!(t);
        }
        if let Some(s) = self.source {
            m["source"] = json!(s);
        }
        if let Some(o) = &self.options {
            m["options"] = json!(o);
        }
        if let Some(u) = &self.uid {
            m["uidMappings"] = ranges_json(u);
        }
        if let Some(g) = &self.gid {
            m["gidMappings"] = ranges_json(g);
        }
        m
    }
}

fn mount_in() -> impl Strategy<Value = MountIn> {
    let mappings = || {
        prop_oneof![
            3 => Just(None),
            1 => Just(Some(vec![])),
            2 => small_ranges().prop_map(Some),
        ]
    };
    (
        destination(),
        prop::option::of(select(
            &[
                "bind", "tmpfs", "proc", "overlay", "sysfs", "", "BIND", "none", "cgroup",
            ][..],
        )),
        prop::option::of(select(&["/src", "rel", "", "../x", "tmpfs", "/ü"][..])),
        prop::option::of(option_words()),
        mappings(),
        mappings(),
    )
        .prop_map(|(destination, typ, source, options, uid, gid)| MountIn {
            destination,
            typ,
            source,
            options,
            uid,
            gid,
        })
}

fn to_mounts(mounts: &[MountIn]) -> Vec<oci_spec::runtime::Mount> {
    mounts
        .iter()
        .map(|m| serde_json::from_value(m.json()).expect("a mount"))
        .collect()
}

/// What the model expects for one mount: refused, prepared on the host side (with whether it is
/// idmapped), or left to the container side.
#[derive(Debug, PartialEq)]
enum HostSide {
    Refused,
    Prepared { idmapped: bool },
    ContainerSide,
}

/// runtime-spec's rules for a mount prepared on the host side, written from the spec's text:
/// only binds take mappings, both mappings or neither, implied mappings need a user namespace,
/// a bind takes no data words, and a prepared bind needs a source.
fn model_host_side(m: &MountIn, has_userns: bool) -> HostSide {
    let words = m.options.clone().unwrap_or_default();
    let opts = model_options(&words);
    let is_bind = opts.flags & flags::BIND != 0 || m.typ == Some("bind");
    let uid = m.uid.as_ref().filter(|v| !v.is_empty());
    let gid = m.gid.as_ref().filter(|v| !v.is_empty());
    let wants_idmap = uid.is_some() || gid.is_some() || opts.idmap.is_some();
    if is_bind && !opts.data.is_empty() {
        return HostSide::Refused;
    }
    if !(wants_idmap || is_bind && has_userns) {
        return HostSide::ContainerSide;
    }
    if !is_bind {
        return HostSide::Refused;
    }
    if wants_idmap {
        let ok = match (uid, gid) {
            (Some(u), Some(g)) => brute_force(u).is_some() && brute_force(g).is_some(),
            (None, None) => has_userns,
            _ => false,
        };
        if !ok {
            return HostSide::Refused;
        }
    }
    if m.source.is_none() {
        return HostSide::Refused;
    }
    HostSide::Prepared {
        idmapped: wants_idmap,
    }
}

fn own_mapping() -> UserMapping {
    let r = vec![range(0, 100000, 65536)];
    UserMapping {
        uid: IdMap::new("u", r.clone()).expect("valid"),
        gid: IdMap::new("g", r).expect("valid"),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mounts_are_prepared_or_refused_by_destination_as_the_model_says(
        mounts in prop::collection::vec(mount_in(), 0..5),
        userns in 0..3u8,
    ) {
        let own = own_mapping();
        let (container, has_userns) = match userns {
            0 => (None, false),
            1 => (None, true),
            _ => (Some(&own), true),
        };
        let spec_mounts = to_mounts(&mounts);
        let got = plan_volumes(&spec_mounts, Path::new("/bundle"), container, has_userns);
        let model: Vec<HostSide> = mounts.iter().map(|m| model_host_side(m, has_userns)).collect();
        match (model.iter().position(|h| *h == HostSide::Refused), got) {
            (Some(i), Err(err)) => {
                let text = chain(&err);
                let want = format!("mount {}", Path::new(&mounts[i].destination).display());
                prop_assert!(text.starts_with(&want), "{text}\nwanted: {want}");
            }
            (None, Ok(binds)) => {
                let want: Vec<(usize, bool)> = model
                    .iter()
                    .enumerate()
                    .filter_map(|(i, h)| match h {
                        HostSide::Prepared { idmapped } => Some((i, *idmapped)),
                        _ => None,
                    })
                    .collect();
                let got: Vec<(usize, bool)> =
                    binds.iter().map(|b| (b.index, b.idmap.is_some())).collect();
                prop_assert_eq!(got, want);
                for b in &binds {
                    let m = &mounts[b.index];
                    let words = m.options.clone().unwrap_or_default();
                    let opts = model_options(&words);
                    prop_assert_eq!(&b.destination, &PathBuf::from(&m.destination));
                    prop_assert!(b.source.is_absolute(), "{:?}", b.source);
                    prop_assert_eq!(b.recursive_bind, opts.flags & flags::REC != 0);
                    let recursive_idmap = b.idmap.is_some()
                        && match opts.idmap {
                            Some(IdmapOption::Ridmap) => true,
                            Some(IdmapOption::Idmap) => false,
                            None => b.recursive_bind,
                        };
                    prop_assert_eq!(b.recursive_idmap, recursive_idmap);
                }
            }
            (want, got) => prop_assert!(
                false,
                "model refuses mount {want:?}, plan_volumes says {:?}",
                got.map_err(|e| chain(&e))
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sysctls.

/// runc's rules (libcontainer/configs/validate, as documented in runc and the runtime-spec),
/// as a table: the exact keys and the prefixes each namespace owns. usernsrs also lets a user
/// namespace own `user.*`.
enum Pattern {
    Exact(&'static str),
    Prefix(&'static str),
}

const SYSCTL_TABLE: &[(Pattern, &str)] = &[
    (Pattern::Exact("kernel.msgmax"), "ipc"),
    (Pattern::Exact("kernel.msgmnb"), "ipc"),
    (Pattern::Exact("kernel.msgmni"), "ipc"),
    (Pattern::Exact("kernel.sem"), "ipc"),
    (Pattern::Exact("kernel.shmall"), "ipc"),
    (Pattern::Exact("kernel.shmmax"), "ipc"),
    (Pattern::Exact("kernel.shmmni"), "ipc"),
    (Pattern::Exact("kernel.shm_rmid_forced"), "ipc"),
    (Pattern::Prefix("fs.mqueue."), "ipc"),
    (Pattern::Prefix("net."), "network"),
    (Pattern::Exact("kernel.hostname"), "uts"),
    (Pattern::Exact("kernel.domainname"), "uts"),
    (Pattern::Prefix("user."), "user"),
];

#[derive(Debug, PartialEq)]
enum SysctlVerdict {
    Accepted,
    NotAName,
    HostNamespace(&'static str),
    NotNamespaced,
}

fn model_sysctl(key: &str, own: OwnNamespaces) -> SysctlVerdict {
    // A dotted name: no empty component, nothing that makes it a path under /proc/sys.
    let is_name = !key.is_empty()
        && !key.contains('/')
        && !key.contains('\0')
        && !key.split('.').any(str::is_empty);
    if !is_name {
        return SysctlVerdict::NotAName;
    }
    let owner = SYSCTL_TABLE.iter().find_map(|(p, ns)| {
        let hit = match p {
            Pattern::Exact(k) => key == *k,
            Pattern::Prefix(k) => key.starts_with(k),
        };
        hit.then_some(*ns)
    });
    let owned = |ns| match ns {
        "ipc" => own.ipc,
        "network" => own.network,
        "uts" => own.uts,
        _ => own.user,
    };
    match owner {
        None => SysctlVerdict::NotNamespaced,
        Some(ns) if owned(ns) => SysctlVerdict::Accepted,
        Some(ns) => SysctlVerdict::HostNamespace(ns),
    }
}

fn sysctl_key() -> impl Strategy<Value = String> {
    let component = select(
        &[
            "net",
            "kernel",
            "fs",
            "mqueue",
            "user",
            "ipv4",
            "ip_forward",
            "msgmax",
            "msg",
            "sem",
            "shm",
            "shmmax",
            "hostname",
            "domainname",
            "vm",
            "..",
            "",
            "ü",
            "a/b",
            "\0",
            " ",
            "max_user_namespaces",
            "msg_max",
        ][..],
    );
    prop_oneof![
        2 => select(&[
            "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
            "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced", "kernel.msgmaxx",
            "kernel.msg", "kernel.shm", "kernel.shm_next_id", "kernel.sem_next_id",
            "fs.mqueue", "fs.mqueue.", "fs.mqueue.msg_max", "net", "net.", "net.ipv4.ip_forward",
            "user.max_user_namespaces", "user", "kernel.hostname", "kernel.domainname",
            "kernel.hostnamex", "vm.swappiness", "/proc/sys/net/ipv4/ip_forward",
            "net/ipv4/ip_forward", "..", ".", "", "net..x", "net.ipv4.conf.eth0/1.rp_filter",
        ][..]).prop_map(String::from),
        3 => prop::collection::vec(component, 1..5).prop_map(|c| c.join(".")),
        1 => "\\PC{0,16}",
    ]
}

fn own_namespaces() -> impl Strategy<Value = OwnNamespaces> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(ipc, network, uts, user)| OwnNamespaces {
            ipc,
            network,
            uts,
            user,
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sysctl_keys_follow_runcs_table(key in sysctl_key(), own in own_namespaces()) {
        let got = check_sysctl(&key, own);
        let want = model_sysctl(&key, own);
        match (&want, &got) {
            (SysctlVerdict::Accepted, Ok(())) => {}
            (SysctlVerdict::NotAName, Err(SysctlError::BadKey { key: k }))
            | (SysctlVerdict::NotNamespaced, Err(SysctlError::NotNamespaced { key: k })) => {
                prop_assert_eq!(k, &key);
            }
            (
                SysctlVerdict::HostNamespace(ns),
                Err(SysctlError::HostNamespace { key: k, namespace }),
            ) => {
                prop_assert_eq!(k, &key);
                prop_assert_eq!(ns, namespace);
            }
            _ => prop_assert!(false, "model says {want:?}, check_sysctl says {got:?}"),
        }
        if let Err(err) = got {
            let text = err.to_string();
            prop_assert!(text.starts_with(&format!("linux.sysctl {key:?}")), "{text}");
        }
    }

    #[test]
    fn plan_refuses_a_sysctl_naming_a_refused_key(
        keys in prop::collection::vec(sysctl_key(), 0..4),
        ipc in any::<bool>(),
        network in any::<bool>(),
        uts in any::<bool>(),
        user in any::<bool>(),
    ) {
        let mut namespaces = vec![json!({"type": "mount"})];
        for (on, t) in [(ipc, "ipc"), (network, "network"), (uts, "uts"), (user, "user")] {
            if on {
                namespaces.push(json!({"type": t}));
            }
        }
        let sysctl: serde_json::Map<String, Value> =
            keys.iter().map(|k| (k.clone(), json!("1"))).collect();
        let mut linux = json!({"namespaces": namespaces, "sysctl": sysctl});
        if user {
            linux["uidMappings"] = ranges_json(&[range(0, 100000, 65536)]);
            linux["gidMappings"] = ranges_json(&[range(0, 100000, 65536)]);
        }
        let spec: Spec = serde_json::from_value(json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "/img"},
            "linux": linux,
        }))
        .expect("a spec");
        let own = OwnNamespaces { ipc, network, uts, user };
        let refused: Vec<&String> = keys
            .iter()
            .filter(|k| model_sysctl(k, own) != SysctlVerdict::Accepted)
            .collect();
        match plan(spec) {
            Ok(_) => prop_assert!(refused.is_empty(), "accepted {refused:?}"),
            Err(err) => prop_assert!(
                refused.iter().any(|k| err.starts_with(&format!("linux.sysctl {k:?}"))),
                "{err}, refused by the model: {refused:?}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Devices.

#[derive(Debug, Clone)]
struct DeviceIn {
    path: String,
    typ: &'static str,
    major: i64,
    minor: i64,
    mode: Option<u32>,
}

fn device_number() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..300,
        1 => select(&[
            -1, 4095, 4096, 0xfffff, 0x100000, u32::MAX as i64, (1 << 32) + 8, i64::MAX, i64::MIN,
        ][..]),
        1 => any::<i64>(),
    ]
}

fn device_in() -> impl Strategy<Value = DeviceIn> {
    let path = prop_oneof![
        3 => select(&[
            "/dev/null", "/dev/fuse", "/dev/net/tun", "/dev/x", "/dev/./x", "/dev//x", "/dev/x/",
            "/dev/../etc/shadow", "/dev", "/dev/", "dev/x", "/devx/a", "/etc/x", "", "/./dev/x",
            "/dev/a/../../etc", "/dev/ü", "/dev/\u{202e}x", "/dev/..", "/dev/.",
        ][..]).prop_map(String::from),
        1 => "/dev(/[a-z.]{0,3}){0,3}",
        1 => "\\PC{0,10}",
    ];
    let mode = prop_oneof![
        Just(None),
        Just(Some(0o666)),
        Just(Some(0o020666)),
        Just(Some(0o060600)),
        Just(Some(0o010644)),
        Just(Some(0o170777)),
        any::<u32>().prop_map(Some),
    ];
    (
        path,
        select(&["c", "b", "u", "p", "a"][..]),
        device_number(),
        device_number(),
        mode,
    )
        .prop_map(|(path, typ, major, minor, mode)| DeviceIn {
            path,
            typ,
            major,
            minor,
            mode,
        })
}

/// `/dev/...` as the path under /dev, by the string: components separated by `/`, `.` and
/// empty ones meaning nothing, `..` refused.
fn model_under_dev(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let parts: Vec<&str> = rest
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    match parts.split_first() {
        Some((&"dev", tail)) if !tail.is_empty() && !tail.contains(&"..") => Some(tail.join("/")),
        _ => None,
    }
}

#[derive(Debug, PartialEq)]
enum DeviceVerdict {
    BadPath(usize),
    BadType(usize),
    OutOfRange(usize, &'static str),
    Duplicate(usize, usize),
}

/// The kernel's dev_t holds a 12-bit major and a 20-bit minor (MINORBITS): a number past them
/// names no device, so a node can only be made with numbers in range.
const MAX_MAJOR: i64 = 0xfff;
const MAX_MINOR: i64 = 0xf_ffff;

/// A node as the model plans it: path under /dev, kind, major, minor, permission bits.
type ModelNode = (String, NodeKind, u64, u64, u32);

fn model_devices(devices: &[DeviceIn]) -> Result<Vec<ModelNode>, DeviceVerdict> {
    let mut out: Vec<ModelNode> = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let rel = model_under_dev(&d.path).ok_or(DeviceVerdict::BadPath(i))?;
        let (kind, type_bits) = match d.typ {
            "c" | "u" => (NodeKind::Char, 0o020000),
            "b" => (NodeKind::Block, 0o060000),
            "p" => (NodeKind::Fifo, 0o010000),
            _ => return Err(DeviceVerdict::BadType(i)),
        };
        let (major, minor) = if kind == NodeKind::Fifo {
            (0, 0)
        } else {
            if !(0..=MAX_MAJOR).contains(&d.major) {
                return Err(DeviceVerdict::OutOfRange(i, "major"));
            }
            if !(0..=MAX_MINOR).contains(&d.minor) {
                return Err(DeviceVerdict::OutOfRange(i, "minor"));
            }
            (d.major as u64, d.minor as u64)
        };
        let raw = d.mode.unwrap_or(0o666);
        if raw & !0o7777 != 0 && raw & !0o7777 != type_bits {
            return Err(DeviceVerdict::OutOfRange(i, "fileMode"));
        }
        if let Some(first) = out.iter().position(|n| n.0 == rel) {
            return Err(DeviceVerdict::Duplicate(first, i));
        }
        out.push((rel, kind, major, minor, raw & 0o7777));
    }
    Ok(out)
}

fn devices_spec(dev_mount: Value, devices: &[DeviceIn]) -> Spec {
    let devices: Vec<Value> = devices
        .iter()
        .map(|d| {
            let mut v = json!({"path": d.path, "type": d.typ, "major": d.major, "minor": d.minor});
            if let Some(m) = d.mode {
                v["fileMode"] = json!(m);
            }
            v
        })
        .collect();
    serde_json::from_value(json!({
        "ociVersion": "1.1.0",
        "root": {"path": "rootfs"},
        "mounts": [dev_mount],
        "linux": {"devices": devices},
    }))
    .expect("a spec")
}

/// A path cleaned the way the helper resolves a mount destination inside the rootfs: relative
/// to its root, `.` and empty components dropped, `..` dropping the one before and never going
/// above the root.
fn model_clean(dest: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for part in dest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn devices_are_made_or_refused_by_index_as_the_model_says(
        devices in prop::collection::vec(device_in(), 0..5),
    ) {
        let spec = devices_spec(json!({"destination": "/dev", "type": "tmpfs"}), &devices);
        let got = plan_dev_nodes(&spec);
        match (model_devices(&devices), got) {
            (Ok(want), Ok(nodes)) => {
                for (rel, kind, major, minor, mode) in &want {
                    let n = nodes.iter().find(|n| n.path == Path::new(rel));
                    let n = n.expect("every spec device is planned");
                    prop_assert_eq!(
                        (n.kind, n.major, n.minor, n.mode),
                        (*kind, *major, *minor, *mode)
                    );
                }
                for n in &nodes {
                    prop_assert!(
                        n.major <= MAX_MAJOR as u64 && n.minor <= MAX_MINOR as u64, "{n:?}"
                    );
                }
                let defaults = ["null", "zero", "full", "random", "urandom", "tty"];
                let replaced = defaults.iter().filter(|d| want.iter().any(|w| w.0 == **d)).count();
                prop_assert_eq!(nodes.len(), want.len() + defaults.len() - replaced);
            }
            (Err(want), Err(err)) => {
                let text = err.to_string();
                let (index, ok) = match (&want, &err) {
                    (DeviceVerdict::BadPath(i), DevNodeError::BadPath { index, .. })
                    | (DeviceVerdict::BadType(i), DevNodeError::BadType { index, .. }) => {
                        (*i, i == index)
                    }
                    (
                        DeviceVerdict::OutOfRange(i, f),
                        DevNodeError::OutOfRange { index, field, .. },
                    ) => {
                        (*i, i == index && f == field)
                    }
                    (
                        DeviceVerdict::Duplicate(a, b),
                        DevNodeError::Duplicate { first, second, .. },
                    ) => {
                        prop_assert!(text.starts_with("linux.devices has"), "{text}");
                        (*b, a == first && b == second)
                    }
                    _ => (0, false),
                };
                prop_assert!(ok, "model says {want:?}, plan_dev_nodes says {err:?}");
                if !matches!(want, DeviceVerdict::Duplicate(..)) {
                    prop_assert!(text.starts_with(&format!("linux.devices[{index}]")), "{text}");
                }
            }
            (want, got) => prop_assert!(false, "model says {want:?}, plan_dev_nodes says {got:?}"),
        }
    }

    #[test]
    fn dev_nodes_are_made_only_in_a_fresh_dev(
        mounts in prop::collection::vec(
            (destination(), any::<bool>(), prop::option::of(select(&["bind", "rbind", "ro"][..]))),
            0..4,
        ),
    ) {
        let mounts: Vec<oci_spec::runtime::Mount> = mounts
            .iter()
            .map(|(d, bind_type, opt)| {
                let typ = if *bind_type { "bind" } else { "tmpfs" };
                let mut m = json!({"destination": d, "type": typ});
                if let Some(o) = opt {
                    m["options"] = json!([o]);
                }
                serde_json::from_value(m).expect("a mount")
            })
            .collect();
        // The last mount the helper puts at /dev decides: nodes only in a filesystem of its own.
        let last_at_dev = mounts.iter().rev().find(|m| {
            model_clean(&m.destination().to_string_lossy()) == ["dev"]
        });
        let want = last_at_dev.is_some_and(|m| {
            m.typ().as_deref() != Some("bind")
                && !m.options().iter().flatten().any(|o| o == "bind" || o == "rbind")
        });
        prop_assert_eq!(needs_dev_nodes(&mounts), want);
    }
}

// ---------------------------------------------------------------------------------------------
// mountinfo.

/// The kernel's escaping of mountinfo fields (fs/proc_namespace.c `mangle`).
fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

fn field_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9 \t\n\\\\\r-]{0,10}",
        "\\PC{0,10}",
        Just("\\040".to_string()),
        Just("-".to_string()),
    ]
}

fn option_text() -> impl Strategy<Value = String> {
    // Options are split at commas; a comma never appears inside one in the kernel's output.
    "[a-z0-9=:/ \t\n\\\\\r.ü-]{1,10}"
}

fn mount_entry() -> impl Strategy<Value = MountEntry> {
    (
        (any::<u32>(), any::<u32>(), "[0-9]{1,3}:[0-9]{1,3}"),
        (field_text(), field_text()),
        // The kernel writes "rw" or "ro" first.
        (
            select(&["rw", "ro"][..]),
            prop::collection::vec(option_text(), 0..3),
        )
            .prop_map(|(first, rest)| [vec![first.to_string()], rest].concat()),
        prop::collection::vec(
            select(&["shared:1", "master:7", "propagate_from:2", "unbindable"][..]),
            0..3,
        ),
        ("[a-z0-9.]{1,8}", field_text()),
        prop::collection::vec(option_text(), 1..4),
    )
        .prop_map(
            |((id, parent, dev), (root, point), opts, optional, (fstype, source), sopts)| {
                MountEntry {
                    id,
                    parent,
                    dev,
                    root: PathBuf::from(format!("/{root}")),
                    mount_point: PathBuf::from(format!("/{point}")),
                    mount_options: opts,
                    optional: optional.into_iter().map(String::from).collect(),
                    fstype,
                    source,
                    super_options: sopts,
                }
            },
        )
}

fn mountinfo_line(m: &MountEntry) -> String {
    let opts = |o: &[String]| o.iter().map(|s| escape(s)).collect::<Vec<_>>().join(",");
    let mut fields = vec![
        m.id.to_string(),
        m.parent.to_string(),
        m.dev.clone(),
        escape(&m.root.to_string_lossy()),
        escape(&m.mount_point.to_string_lossy()),
        opts(&m.mount_options),
    ];
    fields.extend(m.optional.iter().cloned());
    fields.push("-".into());
    fields.push(escape(&m.fstype));
    fields.push(escape(&m.source));
    fields.push(opts(&m.super_options));
    fields.join(" ")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unescape_undoes_the_kernels_escaping(s in "\\PC{0,24}|[ \t\n\\\\0-7]{0,24}") {
        prop_assert_eq!(mountinfo::unescape(&escape(&s)), s);
    }

    #[test]
    fn unescape_never_panics(s in "\\PC{0,24}|(\\\\[0-9]{0,4}[a-z]?){0,6}") {
        let out = mountinfo::unescape(&s);
        if !s.contains('\\') {
            prop_assert_eq!(out, s);
        }
    }

    #[test]
    fn arbitrary_mountinfo_text_never_panics(
        lines in prop::collection::vec(
            prop_oneof![
                "\\PC{0,40}",
                prop::collection::vec(
                    select(&["1", "2", "-", "0:3", "/", "/x", "rw", "", "x"][..]),
                    0..12,
                )
                    .prop_map(|f| f.join(" ")),
            ],
            0..5,
        ),
    ) {
        let text = lines.join("\n");
        match mountinfo::parse(&text) {
            Ok(entries) => {
                let lines = text.split('\n').filter(|l| !l.is_empty()).count();
                prop_assert_eq!(entries.len(), lines);
            }
            Err(err) => prop_assert!(err.to_string().starts_with("mountinfo line "), "{err}"),
        }
    }

    #[test]
    fn mountinfo_lines_round_trip(entries in prop::collection::vec(mount_entry(), 1..4)) {
        let text: String = entries.iter().map(|m| mountinfo_line(m) + "\n").collect();
        let parsed = mountinfo::parse(&text);
        prop_assert_eq!(parsed, Ok(entries), "{}", text);
    }
}

// ---------------------------------------------------------------------------------------------
// The cgroup view, from a host mount table and /proc/self/cgroup.

fn cgroup_mount() -> impl Strategy<Value = MountEntry> {
    (
        select(
            &[
                "/sys/fs/cgroup",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup/x/y",
            ][..],
        ),
        select(&["cgroup", "cgroup2", "tmpfs"][..]),
        select(&["/", "/outer", "/../x", "", "rel"][..]),
        prop::collection::vec(
            select(
                &[
                    "rw",
                    "memory",
                    "cpu",
                    "cpuacct",
                    "name=systemd",
                    "xattr",
                    "nsdelegate",
                ][..],
            ),
            0..3,
        ),
    )
        .prop_map(|(point, fstype, root, sopts)| MountEntry {
            id: 1,
            parent: 0,
            dev: "0:1".into(),
            root: root.into(),
            mount_point: point.into(),
            mount_options: vec!["rw".into()],
            optional: vec![],
            fstype: fstype.into(),
            source: fstype.into(),
            super_options: sopts.into_iter().map(String::from).collect(),
        })
}

fn cgroup_line() -> impl Strategy<Value = String> {
    (
        select(&["0", "1", "5", "x"][..]),
        select(
            &[
                "",
                "memory",
                "cpu,cpuacct",
                "cpuacct,cpu",
                "name=systemd",
                "pids",
            ][..],
        ),
        select(
            &[
                "/",
                "/k8s/pod1",
                "/outer/c1",
                "/../sibling",
                "/outer/../..",
                "rel",
                "",
            ][..],
        ),
    )
        .prop_map(|(id, c, p)| format!("{id}:{c}:{p}"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cgroup_view_binds_only_directories_under_the_hosts_mounts(
        mounts in prop::collection::vec(cgroup_mount(), 0..5),
        lines in prop::collection::vec(prop_oneof![4 => cgroup_line(), 1 => "\\PC{0,12}"], 0..4),
    ) {
        use usernsrs_runtime_core::cgroup_view::{cgroup_view, CgroupView};
        let proc_cgroup = lines.join("\n");
        let base = Path::new("/sys/fs/cgroup");
        let under = |dir: &Path, point: &Path| {
            dir.starts_with(point)
                && dir
                    .strip_prefix(point)
                    .is_ok_and(|r| {
                        r.components().all(|c| matches!(c, std::path::Component::Normal(_)))
                    })
        };
        match cgroup_view(&mounts, &proc_cgroup, base) {
            Err(_) => {}
            Ok(CgroupView::Unified { own }) => prop_assert!(under(&own, base), "{own:?}"),
            Ok(CgroupView::V1 { hierarchies }) => {
                for h in hierarchies {
                    let point = base.join(&h.name);
                    prop_assert!(under(&h.source, &point), "{h:?}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rootfs mounts from containerd.

fn rootfs_option() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &[
                "uidmap=0:100000:65536",
                "gidmap=0:100000:65536",
                "uidmap=0:1:0",
                "gidmap=",
                "uidmap=x",
                "lowerdir=/s/2/fs:/s/1/fs",
                "lowerdir=rel",
                "lowerdir=",
                "lowerdir=/a::/b",
                "upperdir=/s/3/fs",
                "workdir=/s/3/work",
                "ro",
                "rw",
                "rbind",
                "index=off",
            ][..]
        )
        .prop_map(String::from),
        "\\PC{0,10}",
    ]
}

fn root_mount() -> impl Strategy<Value = RootMount> {
    (
        select(&["overlay", "bind", "rbind", "ext4", ""][..]),
        select(&["overlay", "/s/1/fs", "", "rel"][..]),
        prop::collection::vec(rootfs_option(), 0..6),
    )
        .prop_map(|(typ, source, options)| RootMount {
            typ: typ.into(),
            source: source.into(),
            options,
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rootfs_plans_never_panic_and_refusals_name_the_mount(
        mounts in prop::collection::vec(root_mount(), 0..3),
        root_path in prop::option::of(select(&["/img", "rootfs", "", "../x"][..])),
        userns in 0..3u8,
        annotation in prop::option::of(select(&["true", "false", "auto", "yes", ""][..])),
        owner_uid in prop::option::of(select(&[0u32, 100000, 65535][..])),
    ) {
        let own = own_mapping();
        let facts = UsernsFacts {
            enabled: userns > 0,
            mapping: (userns == 2).then_some(&own),
        };
        let owner = |_: &Path| match owner_uid {
            Some(uid) => Ok((uid, uid)),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        };
        let got = plan_rootfs(
            Path::new("/b"),
            root_path.map(Path::new),
            &mounts,
            &facts,
            annotation,
            owner,
        );
        match got {
            Err(err) => {
                let text = chain(&err);
                // containerd's mounts, when there are any, are the rootfs: root.path is not
                // looked at, so a refusal names one of them.
                let named = if mounts.is_empty() {
                    text.contains("root.path") || text.contains("usernsrs.io/rootfs-idmap")
                } else {
                    !text.contains("root.path")
                        && mounts.iter().any(|m| {
                            text.starts_with(&format!("rootfs mount {}", m.source))
                                || text.starts_with(&format!("rootfs mount {} {}", m.typ, m.source))
                        })
                };
                prop_assert!(named, "{text}");
            }
            Ok(p) => {
                if let RootfsSource::IdmappedOverlay { lowerdirs, .. } = &p.source {
                    prop_assert!(lowerdirs.iter().all(|d| d.is_absolute()), "{lowerdirs:?}");
                }
                if !mounts.is_empty() {
                    prop_assert_eq!(p.target, PathBuf::from("/b/rootfs"));
                }
            }
        }
    }

    #[test]
    fn common_parent_is_the_deepest_strict_ancestor(
        dirs in prop::collection::vec(
            prop::collection::vec(select(&["a", "b", "s", "1", "fs"][..]), 1..5)
                .prop_map(|p| PathBuf::from(format!("/{}", p.join("/")))),
            1..4,
        ),
    ) {
        let strict_ancestor = |p: &Path| dirs.iter().all(|d| d.starts_with(p) && d != p);
        match common_parent(&dirs) {
            Some(p) => {
                prop_assert!(strict_ancestor(&p), "{p:?}");
                prop_assert!(p != Path::new("/"));
                let deeper = dirs[0].ancestors().filter(|a| a.starts_with(&p) && *a != p);
                for a in deeper {
                    prop_assert!(!strict_ancestor(a), "{a:?} is deeper than {p:?}");
                }
            }
            None => {
                let deepest = dirs[0].ancestors().find(|a| strict_ancestor(a));
                prop_assert_eq!(deepest, Some(Path::new("/")));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Whole specs, perturbed from typical ones.

/// What `ctr run --uidmap/--gidmap` writes (containerd's default Unix spec with a user
/// namespace), with a volume and a device.
fn ctr_spec() -> Value {
    json!({
        "ociVersion": "1.1.0",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0, "additionalGids": [0, 10]},
            "args": ["/bin/sh", "-c", "true"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL"],
                "effective": ["CAP_CHOWN", "CAP_KILL"],
                "permitted": ["CAP_CHOWN", "CAP_KILL"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "c1",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": ["rbind", "rprivate", "ro"]},
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ridmap"]}
        ],
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shmmax": "100000"},
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "cgroupsPath": "/default/c1",
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network"}, {"type": "user"}, {"type": "cgroup"}
            ],
            "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438}],
            "maskedPaths": ["/proc/kcore", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// What containerd's CRI plugin writes for a pod's container: joined pod namespaces, no user
/// namespace, kubelet's volumes, annotations.
fn cri_spec() -> Value {
    json!({
        "ociVersion": "1.1.0",
        "process": {
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [1000]},
            "args": ["/pause"],
            "cwd": "/",
            "apparmorProfile": "",
            "oomScoreAdj": -998
        },
        "root": {"path": "rootfs", "readonly": true},
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "abc"
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/kubelet/pods/p/etc-hosts", "options": ["rbind", "rprivate", "rw"]},
            {"destination": "/var/run/secrets/kubernetes.io/serviceaccount", "type": "bind", "source": "/var/lib/kubelet/pods/p/volumes/token", "options": ["rbind", "rprivate", "ro"]}
        ],
        "linux": {
            "cgroupsPath": "kubepods-besteffort-p.slice:cri-containerd:abc",
            "namespaces": [
                {"type": "pid"}, {"type": "ipc", "path": "/proc/42/ns/ipc"},
                {"type": "uts", "path": "/proc/42/ns/uts"}, {"type": "mount"},
                {"type": "network", "path": "/var/run/netns/cni-1"}
            ],
            "sysctl": {"net.ipv4.ping_group_range": "0 2147483647"}
        }
    })
}

/// One change to a spec's JSON.
#[derive(Debug, Clone)]
enum Perturbation {
    Remove(&'static str),
    Set(&'static str, Value),
    /// Drop the element at an index of the array at a pointer (modulo its length).
    RemoveAt(&'static str, usize),
    Push(&'static str, Value),
    /// Set a field of the element at an index of an array.
    SetIn(&'static str, usize, &'static str, Value),
    Insert(&'static str, String, Value),
}

fn apply(spec: &mut Value, p: &Perturbation) {
    match p {
        Perturbation::Remove(ptr) => {
            let (parent, key) = ptr.rsplit_once('/').expect("a pointer");
            if let Some(Value::Object(o)) = spec.pointer_mut(parent) {
                o.remove(key);
            }
        }
        Perturbation::Set(ptr, v) => {
            let (parent, key) = ptr.rsplit_once('/').expect("a pointer");
            if let Some(Value::Object(o)) = spec.pointer_mut(parent) {
                o.insert(key.to_string(), v.clone());
            }
        }
        Perturbation::RemoveAt(ptr, i) => {
            if let Some(Value::Array(a)) = spec.pointer_mut(ptr) {
                if !a.is_empty() {
                    let i = i % a.len();
                    a.remove(i);
                }
            }
        }
        Perturbation::Push(ptr, v) => match spec.pointer_mut(ptr) {
            Some(Value::Array(a)) => a.push(v.clone()),
            _ => apply(spec, &Perturbation::Set(ptr, json!([v]))),
        },
        Perturbation::SetIn(ptr, i, key, v) => {
            if let Some(Value::Array(a)) = spec.pointer_mut(ptr) {
                let len = a.len();
                if let Some(Value::Object(o)) = a.get_mut(i % len.max(1)) {
                    o.insert(key.to_string(), v.clone());
                }
            }
        }
        Perturbation::Insert(ptr, key, v) => match spec.pointer_mut(ptr) {
            Some(Value::Object(o)) => {
                o.insert(key.clone(), v.clone());
            }
            _ => apply(spec, &Perturbation::Set(ptr, json!({key.clone(): v}))),
        },
    }
}

fn namespace_json() -> impl Strategy<Value = Value> {
    (
        select(
            &[
                "pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time",
            ][..],
        ),
        prop::option::of(select(&["/proc/1/ns/x", "", "rel"][..])),
    )
        .prop_map(|(t, p)| match p {
            Some(p) => json!({"type": t, "path": p}),
            None => json!({"type": t}),
        })
}

fn perturbation() -> impl Strategy<Value = Perturbation> {
    use Perturbation::*;
    prop_oneof![
        select(
            &[
                "/process",
                "/process/args",
                "/process/user/additionalGids",
                "/root",
                "/root/path",
                "/linux",
                "/linux/namespaces",
                "/linux/uidMappings",
                "/linux/gidMappings",
                "/mounts",
                "/linux/sysctl",
                "/linux/devices",
                "/annotations",
                "/hostname",
                "/linux/cgroupsPath",
            ][..]
        )
        .prop_map(Remove),
        Just(Set("/process/args", json!([]))),
        edgy_u32().prop_map(|u| Set("/process/user/uid", json!(u))),
        edgy_u32().prop_map(|g| Set("/process/user/gid", json!(g))),
        prop::collection::vec(edgy_u32(), 0..3)
            .prop_map(|g| Set("/process/user/additionalGids", json!(g))),
        select(&["", "rootfs", "/abs/rootfs", "../x"][..])
            .prop_map(|p| Set("/root/path", json!(p))),
        prop_oneof![small_ranges(), huge_ranges()]
            .prop_map(|r| Set("/linux/uidMappings", ranges_json(&r))),
        prop_oneof![small_ranges(), huge_ranges()]
            .prop_map(|r| Set("/linux/gidMappings", ranges_json(&r))),
        namespace_json().prop_map(|n| Push("/linux/namespaces", n)),
        any::<usize>().prop_map(|i| RemoveAt("/linux/namespaces", i)),
        any::<usize>().prop_map(|i| RemoveAt("/mounts", i)),
        mount_in().prop_map(|m| Push("/mounts", m.json())),
        (any::<usize>(), destination()).prop_map(|(i, d)| SetIn(
            "/mounts",
            i,
            "destination",
            json!(d)
        )),
        (any::<usize>(), option_words()).prop_map(|(i, o)| SetIn(
            "/mounts",
            i,
            "options",
            json!(o)
        )),
        (any::<usize>(), select(&["bind", "tmpfs", "proc", ""][..])).prop_map(|(i, t)| SetIn(
            "/mounts",
            i,
            "type",
            json!(t)
        )),
        (any::<usize>(), small_ranges()).prop_map(|(i, r)| SetIn(
            "/mounts",
            i,
            "uidMappings",
            ranges_json(&r)
        )),
        sysctl_key().prop_map(|k| Insert("/linux/sysctl", k, json!("1"))),
        device_in().prop_map(|d| Push(
            "/linux/devices",
            json!({
                "path": d.path, "type": d.typ, "major": d.major, "minor": d.minor
            })
        )),
        select(&["true", "false", "auto", "maybe"][..]).prop_map(|v| Insert(
            "/annotations",
            "usernsrs.io/rootfs-idmap".into(),
            json!(v)
        )),
        select(&["", "unconfined", "cri-containerd.apparmor.d"][..])
            .prop_map(|p| Set("/process/apparmorProfile", json!(p))),
        select(&["", "system_u:system_r:container_t:s0"][..])
            .prop_map(|l| Set("/process/selinuxLabel", json!(l))),
        Just(Set("/hooks", json!({"prestart": [{"path": "/bin/hook"}]}))),
    ]
}

/// Where a refusal from plan_container can point: a spec field, a mount by destination, or
/// one of containerd's rootfs mounts.
const SPEC_FIELDS: &[&str] = &[
    "spec has no process",
    "process.",
    "spec has no linux",
    "linux.",
    "root.path",
    "hooks",
    "annotation usernsrs.io/rootfs-idmap",
    "mounts[",
    "rootfs mount ",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn perturbed_specs_plan_or_are_refused_naming_a_field(
        cri in any::<bool>(),
        changes in prop::collection::vec(perturbation(), 0..6),
        owner_uid in prop::option::of(select(&[0u32, 100000][..])),
        rootfs_mounts in prop_oneof![
            3 => Just(vec![]),
            1 => prop::collection::vec(root_mount(), 1..3),
        ],
    ) {
        let mut v = if cri { cri_spec() } else { ctr_spec() };
        for p in &changes {
            apply(&mut v, p);
        }
        let spec: Spec = serde_json::from_value(v.clone()).map_err(|e| {
            TestCaseError::fail(format!("the generator made a spec oci-spec cannot read: {e}\n{v}"))
        })?;
        let destinations: Vec<String> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| m.destination().display().to_string())
            .collect();
        let owner = |_: &Path| match owner_uid {
            Some(uid) => Ok((uid, uid)),
            None => Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        };
        match plan_container("c1", Path::new("/b"), spec, &rootfs_mounts, owner) {
            Ok(p) => {
                prop_assert!(p.namespaces.iter().any(|n| n.kind == NamespaceKind::Mount));
            }
            Err(err) => {
                let text = chain(&err);
                let named = SPEC_FIELDS.iter().any(|f| text.contains(f))
                    || destinations
                        .iter()
                        .any(|d| !d.is_empty() && text.contains(&format!("mount {d}")));
                prop_assert!(named, "{text}\nafter {changes:?}");
            }
        }
    }
}

#[test]
fn the_unperturbed_specs_plan() {
    for v in [ctr_spec(), cri_spec()] {
        let spec: Spec = serde_json::from_value(v).expect("a spec");
        let p = plan_container("c1", Path::new("/b"), spec, &[], |_| Ok((0, 0)));
        let p = p.unwrap_or_else(|e| panic!("{}", chain(&e)));
        assert!(!p.dev_nodes.is_empty());
    }
}
