//! End-to-end tests of id-mapped VOLUME mounts (the spec's `mounts` with `idmap`/`ridmap` or
//! `uidMappings`/`gidMappings`) through `ctr`, against a private containerd 1.6 and 2.4, each
//! checked on real state: owners inside (`stat`), owners on disk (`std::fs::metadata`), the
//! container's and the host's mountinfo, exit codes and error texts.
//!
//! Most containers come from `ctr c create --config` + `ctr t start`: a `root.path` rootfs
//! unpacked from the busybox image and owned by host root (so the shim idmaps it too), a user
//! namespace `0 100000 65536` unless said otherwise, and volume sources under the containerd's
//! own directory. The kernel semantics every expectation below follows (REFERENCE §1):
//!
//! - an idmapped mount with mapping M shows a file owned by `k` on disk as `M(k)` to the host,
//!   or as the overflow id 65534 when M does not map `k`;
//! - the container sees that host id through its own user namespace C: `C⁻¹(M(k))`, again
//!   65534 when C does not map it; a write by container id `c` lands on disk as `M⁻¹(C(c))`;
//! - so with M = C (the implied mapping) the container sees the owners on disk as they are.
//!
//! Cases: the implied mapping and writes through it; explicit mappings of their own; one
//! source mounted with several mappings and as a plain bind; multi-range mappings; `idmap` vs
//! `ridmap` recursion into submounts; 0700 sources; symlinked destinations that try to leave
//! the rootfs; a filesystem that cannot be idmapped (ramfs); refused specs; no fd reaching the
//! container process; `ctr run --mount ...:idmap`. After each: no mount of this containerd left
//! (other than the test's own, unmounted by a guard), no shim process left.
//!
//! Needs root, the shim (`$USERNSRS_SHIM`, or built) and the peers (`hack/install-peers.sh`).
//! Nothing here skips. Run with
//! `cargo test -p usernsrs-integration --test volumes -- --test-threads=1`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::{json, Value};
use usernsrs_integration::{mountinfo_lines, mounts_under, Flavor};

use common::{
    add_user_namespace, kernel_at_least, kernel_release, lines, mount_at, owner, require_kernel,
    run_lines, set_mapping, unique_id, unpack_busybox, Env, HostMount, SETTLE,
};

/// The containerd namespace of these tests (see [`common::NS`]).
const NS: &str = "volume-test";

/// The container's user namespace in most cases: container 0.. at host 100000...
const HOST_BASE: u32 = 100000;
const RANGE: u32 = 65536;

/// Shell functions every container script starts with:
/// - `own PATH...` prints `PATH uid:gid` per path;
/// - `kind MOUNTPOINT` prints `MOUNTPOINT idmapped|plain` for the top mount there (or
///   `unmounted`), from the mount options in the container's mountinfo.
const SH_LIB: &str = r#"own() { stat -c '%n %u:%g' "$@"; }
kind() { awk -v m="$1" '$5 == m { r = "plain"; n = split($6, o, ","); for (i = 1; i <= n; i++) if (o[i] == "idmapped") r = "idmapped"; k = m " " r } END { print (k == "" ? m " unmounted" : k) }' /proc/self/mountinfo; }
"#;

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// `linux.uidMappings`-style ranges from `(container, host, size)` triples.
fn ranges(r: &[(u32, u32, u32)]) -> Value {
    Value::Array(
        r.iter()
            .map(|&(c, h, s)| json!({ "containerID": c, "hostID": h, "size": s }))
            .collect(),
    )
}

/// A spec mount `{type: bind}` of `source` at `destination`.
fn bind(destination: &str, source: &Path, options: &[&str]) -> Value {
    json!({
        "destination": destination,
        "type": "bind",
        "source": source.to_string_lossy(),
        "options": options,
    })
}

/// `mount` with `uidMappings` and `gidMappings` of its own.
fn mapped(mut mount: Value, uid: &[(u32, u32, u32)], gid: &[(u32, u32, u32)]) -> Value {
    mount["uidMappings"] = ranges(uid);
    mount["gidMappings"] = ranges(gid);
    mount
}

/// Appends `mounts` to the spec's mounts (after the defaults: /proc, /dev, ...).
fn add_mounts(spec: &mut Value, mounts: Vec<Value>) -> Result<()> {
    spec["mounts"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("spec has no mounts array"))?
        .extend(mounts);
    Ok(())
}

/// A root.path spec running `SH_LIB` + `script`, in a new user namespace `0 100000 65536`.
fn userns_spec(env: &Env, id: &str, rootfs: &Path, script: &str) -> Result<Value> {
    let mut spec = env.base_spec(id, rootfs, &format!("{SH_LIB}{script}"))?;
    add_user_namespace(&mut spec)?;
    set_mapping(&mut spec, HOST_BASE, RANGE);
    Ok(spec)
}

/// Creates directory `dir` (0755, owned by host root) holding one file per `(name, uid, gid)`,
/// each containing its name.
fn make_source(dir: &Path, files: &[(&str, u32, u32)]) -> Result<()> {
    fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for &(name, uid, gid) in files {
        let path = dir.join(name);
        fs::write(&path, format!("{name}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
        chown(&path, Some(uid), Some(gid))
            .with_context(|| format!("cannot chown {}", path.display()))?;
    }
    Ok(())
}

/// Creates directory `dir` with `mode`, owned by `uid:gid` on disk.
fn make_dir(dir: &Path, uid: u32, gid: u32, mode: u32) -> Result<()> {
    fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    chown(dir, Some(uid), Some(gid)).with_context(|| format!("cannot chown {}", dir.display()))
}

/// Owner and mode of `dir` and everything below it, by path relative to `dir`.
fn owners_below(dir: &Path) -> Result<BTreeMap<PathBuf, (u32, u32, u32)>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let md = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let rel = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
        out.insert(rel, (md.uid(), md.gid(), md.mode()));
        if md.is_dir() {
            for entry in
                fs::read_dir(&path).with_context(|| format!("cannot list {}", path.display()))?
            {
                pending.push(entry?.path());
            }
        }
    }
    Ok(out)
}

/// Fails unless every entry of `before` still has the same owner and mode: the shim chowns
/// nothing of a volume, whatever mapping it is mounted with.
fn assert_not_chowned(
    flavor: Flavor,
    dir: &Path,
    before: &BTreeMap<PathBuf, (u32, u32, u32)>,
) -> Result<()> {
    let after = owners_below(dir)?;
    for (path, was) in before {
        let now = after.get(path);
        ensure!(
            now == Some(was),
            "{flavor}: {} changed on disk: uid, gid, mode were {was:?}, now {now:?}",
            dir.join(path).display()
        );
    }
    Ok(())
}

/// Fails unless no shim of this containerd runs and no host mount mentions its directory
/// (as mount point, root or option) other than `own`, the test's own mounts.
fn assert_clean(env: &Env, own: &[&Path], after: &str) -> Result<()> {
    let flavor = env.flavor();
    env.assert_no_shim(after)?;
    let left: Vec<PathBuf> = mounts_under(env.dir())?
        .into_iter()
        .filter(|m| !own.contains(&m.as_path()))
        .collect();
    ensure!(
        left.is_empty(),
        "{flavor}: after {after}, mounts left under {}: {left:?}",
        env.dir().display()
    );
    let own_points: Vec<String> = own
        .iter()
        .map(|p| format!(" {} ", p.to_string_lossy()))
        .collect();
    let stray: Vec<String> = env
        .our_mount_lines()?
        .into_iter()
        .filter(|l| !own_points.iter().any(|p| l.contains(p.as_str())))
        .collect();
    ensure!(
        stray.is_empty(),
        "{flavor}: after {after}, host mounts still mention {}:\n{}",
        env.dir().display(),
        stray.join("\n")
    );
    Ok(())
}

/// Creates and starts a container from `spec`, which must be refused: the task never runs, the
/// error on `ctr task start` names the container id and every one of `needles`, and nothing is
/// left (shim, mounts, bundle, container record). Returns the error text.
fn expect_refused(
    env: &Env,
    id: &str,
    spec: &Value,
    what: &str,
    needles: &[&str],
) -> Result<String> {
    let flavor = env.flavor();
    let before = env.our_mount_lines()?;
    let run = env.create_and_start(id, spec)?;
    ensure!(
        !run.status.success() && !run.stdout.contains("must-not-run"),
        "{flavor}: {what}: the container ran: {}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    for needle in needles.iter().copied().chain([id]) {
        ensure!(
            run.stderr.contains(needle),
            "{flavor}: {what}: the error must name {needle:?}; ctr task start said:\n{}",
            run.stderr
        );
    }
    assert_no_shim_of(env, id, &format!("the refused create of {what}"))?;
    let after = env.our_mount_lines()?;
    ensure!(
        after == before,
        "{flavor}: {what}: mounts of this containerd changed:\nbefore: {before:#?}\nafter: {after:#?}"
    );
    let bundle = env.bundle(id);
    ensure!(
        !bundle.exists(),
        "{flavor}: {what}: bundle {} was left behind",
        bundle.display()
    );
    let listed = env.ctr_ok(&["containers", "ls", "-q"])?;
    ensure!(
        !listed.lines().any(|l| l == id),
        "{flavor}: {what}: container {id} is still listed"
    );
    Ok(run.stderr)
}

/// Waits (up to [`SETTLE`]) until no shim process of container `id` runs: its server (`-id ID`
/// on the command line) or a helper or server working in its bundle. Unlike
/// [`Env::assert_no_shim`], a shim another container left behind does not count.
fn assert_no_shim_of(env: &Env, id: &str, after: &str) -> Result<()> {
    let bundle = env.bundle(id);
    let id_arg = format!(" -id {id} ");
    let deadline = Instant::now() + SETTLE;
    loop {
        let ours: Vec<String> = env
            .shim_pids()?
            .into_iter()
            .filter_map(|pid| {
                let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
                let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
                (cmdline.contains(&id_arg) || cwd.starts_with(&bundle))
                    .then(|| format!("{pid}: {cmdline}"))
            })
            .collect();
        if ours.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{}: after {after}, shim processes of {id} still run {SETTLE:?} later:\n{}",
            env.flavor(),
            ours.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Collects the errors of independent checks, so that one failure (e.g. a shim left running)
/// does not hide the outcome of the checks after it; [`Failures::finish`] reports them all.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check<T>(&mut self, what: &str, result: Result<T>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(format!("{what}: {e:#}"));
                None
            }
        }
    }

    fn finish(self, flavor: Flavor) -> Result<()> {
        ensure!(
            self.0.is_empty(),
            "{flavor}: {} check(s) failed:\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
        Ok(())
    }
}

/// A fresh containerd of `flavor` and a busybox rootfs owned by host root in its directory.
fn env_and_rootfs(flavor: Flavor) -> Result<(Env, PathBuf)> {
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs");
    unpack_busybox(&rootfs)?;
    Ok((env, rootfs))
}

// ---------------------------------------------------------------------------------------------
// 1. The implied mapping: owners as on disk, writes land as the writer's container ids.
// ---------------------------------------------------------------------------------------------

fn implied_mapping(flavor: Flavor) -> Result<()> {
    let (env, rootfs) = env_and_rootfs(flavor)?;
    let src = env.dir().join("vol-simple");
    make_source(&src, &[("root-file", 0, 0), ("app-file", 1000, 1000)])?;
    make_dir(&src.join("app-dir"), 1000, 1000, 0o755)?;
    let before = owners_below(&src)?;

    // a. As container root: M = C, so disk k shows as C⁻¹(C(k)) = k; a write by root (host
    //    100000) lands as M⁻¹(100000) = 0, and a chown to 1000 as M⁻¹(101000) = 1000.
    let id = unique_id("implied");
    let mut spec = userns_spec(
        &env,
        &id,
        &rootfs,
        "own /vol /vol/root-file /vol/app-file /vol/app-dir; kind /vol; cat /vol/root-file; \
         echo hi > /vol/by-root && own /vol/by-root; \
         touch /vol/by-app && chown 1000:1000 /vol/by-app && own /vol/by-app",
    )?;
    add_mounts(&mut spec, vec![bind("/vol", &src, &["rbind", "idmap"])])?;
    let out = run_lines(&env, &id, &spec, "implied idmap", 8)?;
    assert_eq!(
        out,
        [
            "/vol 0:0",
            "/vol/root-file 0:0",
            "/vol/app-file 1000:1000",
            "/vol/app-dir 1000:1000",
            "/vol idmapped",
            "root-file",
            "/vol/by-root 0:0",
            "/vol/by-app 1000:1000",
        ],
        "{flavor}: a volume with the implied mapping, seen from inside"
    );
    assert_eq!(
        owner(&src.join("by-root"))?,
        (0, 0),
        "{flavor}: root's write on disk"
    );
    assert_eq!(
        owner(&src.join("by-app"))?,
        (1000, 1000),
        "{flavor}: the file chowned to 1000 inside, on disk"
    );

    // b. As container uid 1000 (host 101000): its write lands as M⁻¹(101000) = 1000.
    let id = unique_id("implied-app");
    let mut spec = userns_spec(
        &env,
        &id,
        &rootfs,
        "id -u; echo hi > /vol/app-dir/by-uid-1000 && own /vol/app-dir/by-uid-1000",
    )?;
    spec["process"]["user"] = json!({ "uid": 1000, "gid": 1000 });
    add_mounts(&mut spec, vec![bind("/vol", &src, &["rbind", "idmap"])])?;
    let out = run_lines(&env, &id, &spec, "implied idmap, process uid 1000", 2)?;
    assert_eq!(
        out,
        ["1000", "/vol/app-dir/by-uid-1000 1000:1000"],
        "{flavor}: uid 1000 writing into the volume"
    );
    assert_eq!(
        owner(&src.join("app-dir/by-uid-1000"))?,
        (1000, 1000),
        "{flavor}: uid 1000's write on disk"
    );

    // c. While a container runs: the shim is seen (so the "no shim left" checks can fail), the
    //    volume is idmapped in the container's mount namespace, and the host's own mount table
    //    gains nothing but the rootfs at the bundle (the volume is attached inside only).
    let host_before = env.our_mount_lines()?;
    let id = unique_id("implied-running");
    let mut spec = userns_spec(&env, &id, &rootfs, "exec sleep 1000")?;
    add_mounts(&mut spec, vec![bind("/vol", &src, &["rbind", "idmap"])])?;
    let pid = env.start_detached(&id, &spec)?;
    ensure!(
        !env.shim_pids()?.is_empty(),
        "{flavor}: no shim process of this containerd found while {id} runs"
    );
    let inside = fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .with_context(|| format!("cannot read /proc/{pid}/mountinfo"))?;
    let vol = mount_at(&inside, "/vol")?;
    ensure!(
        vol.idmapped(),
        "{flavor}: /vol in the container's mountinfo is not idmapped: {}",
        vol.mount_options
    );
    let rootfs_point = format!(" {} ", env.bundle(&id).join("rootfs").display());
    let new: Vec<String> = env
        .our_mount_lines()?
        .difference(&host_before)
        .cloned()
        .collect();
    ensure!(
        new.len() == 1 && new[0].contains(&rootfs_point),
        "{flavor}: expected only the rootfs at{rootfs_point}as a new host mount, got:\n{new:#?}"
    );
    env.kill_and_remove(&id)?;

    assert_not_chowned(flavor, &src, &before)?;
    assert_clean(&env, &[], "three containers with an implied-mapping volume")
}

#[test]
fn containerd16_implied_mapping_shows_disk_owners_and_writes_through() -> Result<()> {
    implied_mapping(Flavor::Containerd16)
}

#[test]
fn containerd2_implied_mapping_shows_disk_owners_and_writes_through() -> Result<()> {
    implied_mapping(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 2. Explicit mappings of the mount's own, different from the container's.
// ---------------------------------------------------------------------------------------------

fn explicit_mappings(flavor: Flavor) -> Result<()> {
    let (env, rootfs) = env_and_rootfs(flavor)?;
    let src = env.dir().join("vol-explicit");
    make_source(
        &src,
        &[
            ("f0", 0, 0),
            ("f1000", 1000, 1000),
            ("f65100", 65100, 65100),
        ],
    )?;
    let before = owners_below(&src)?;
    // /shift: uids M(k) = 100500 + k, gids M(k) = 100700 + k; with C(c) = 100000 + c:
    //   disk 0     -> host 100500 / 100700 -> inside 500:700
    //   disk 1000  -> host 101500 / 101700 -> inside 1500:1700
    //   disk 65100 -> host 165600 / 165800 -> beyond C's last id 165535 -> 65534:65534
    // /out: M(k) = 200000 + k, never within C -> everything 65534 inside.
    let shift = |m| mapped(m, &[(0, 100500, RANGE)], &[(0, 100700, RANGE)]);
    let out_of_range = |m| mapped(m, &[(0, 200000, RANGE)], &[(0, 200000, RANGE)]);
    let mounts = || {
        vec![
            shift(bind("/shift", &src, &["rbind"])),
            out_of_range(bind("/out", &src, &["rbind"])),
        ]
    };

    // a. As container root.
    let id = unique_id("explicit");
    let mut spec = userns_spec(
        &env,
        &id,
        &rootfs,
        "own /shift /shift/f0 /shift/f1000 /shift/f65100 /out /out/f0 /out/f1000; \
         kind /shift; kind /out; \
         touch /shift/by-root 2>/dev/null && echo root-wrote || echo root-refused",
    )?;
    add_mounts(&mut spec, mounts())?;
    let out = run_lines(&env, &id, &spec, "explicit mappings", 10)?;
    assert_eq!(
        out,
        [
            "/shift 500:700",
            "/shift/f0 500:700",
            "/shift/f1000 1500:1700",
            "/shift/f65100 65534:65534",
            "/out 65534:65534",
            "/out/f0 65534:65534",
            "/out/f1000 65534:65534",
            "/shift idmapped",
            "/out idmapped",
            // Container root is host 100000, which M does not map back to a disk id (M starts
            // at 100500): the kernel refuses to create a file whose owner it cannot store.
            "root-refused",
        ],
        "{flavor}: mounts with mappings of their own, seen from inside"
    );
    ensure!(
        !src.join("by-root").exists(),
        "{flavor}: container root created a file through a mapping that does not map it"
    );

    // b. As container uid 500, gid 700 (host 100500 / 100700): the owner of /shift, so it may
    //    write there; its file lands as M⁻¹(100500) = 0, M⁻¹(100700) = 0 on disk.
    let id = unique_id("explicit-500");
    let mut spec = userns_spec(
        &env,
        &id,
        &rootfs,
        "echo hi > /shift/by-500 && own /shift/by-500",
    )?;
    spec["process"]["user"] = json!({ "uid": 500, "gid": 700 });
    add_mounts(&mut spec, mounts())?;
    let out = run_lines(&env, &id, &spec, "explicit mappings, process 500:700", 1)?;
    assert_eq!(
        out,
        ["/shift/by-500 500:700"],
        "{flavor}: uid 500 writing into /shift"
    );
    assert_eq!(
        owner(&src.join("by-500"))?,
        (0, 0),
        "{flavor}: container 500:700's write through /shift, on disk"
    );

    assert_not_chowned(flavor, &src, &before)?;
    assert_clean(&env, &[], "containers with explicitly mapped volumes")
}

#[test]
fn containerd16_explicit_mount_mappings_are_honoured() -> Result<()> {
    explicit_mappings(Flavor::Containerd16)
}

#[test]
fn containerd2_explicit_mount_mappings_are_honoured() -> Result<()> {
    explicit_mappings(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 3. One source, three mounts: implied mapping, explicit mapping, plain bind.
// ---------------------------------------------------------------------------------------------

fn one_source_three_ways(flavor: Flavor) -> Result<()> {
    let (env, rootfs) = env_and_rootfs(flavor)?;
    let src = env.dir().join("vol-shared");
    make_source(&src, &[("f0", 0, 0), ("f1000", 1000, 1000)])?;
    let before = owners_below(&src)?;

    // /implied: M = C, disk k -> k.  /explicit: M(k) = 102000 + k -> inside 2000 + k.
    // /plain: no idmap, disk k is host k, which C does not map -> 65534.
    // A file root writes through /implied is disk 0, so 0, 2000 and 65534 in the three.
    let id = unique_id("threeway");
    let mut spec = userns_spec(
        &env,
        &id,
        &rootfs,
        "own /implied/f0 /implied/f1000 /explicit/f0 /explicit/f1000 /plain/f0 /plain/f1000; \
         kind /implied; kind /explicit; kind /plain; \
         echo hi > /implied/new && own /implied/new /explicit/new /plain/new",
    )?;
    add_mounts(
        &mut spec,
        vec![
            bind("/implied", &src, &["rbind", "idmap"]),
            mapped(
                bind("/explicit", &src, &["rbind"]),
                &[(0, 102000, 63536)],
                &[(0, 102000, 63536)],
            ),
            bind("/plain", &src, &["rbind"]),
        ],
    )?;
    let out = run_lines(&env, &id, &spec, "one source, three mounts", 12)?;
    assert_eq!(
        out,
        [
            "/implied/f0 0:0",
            "/implied/f1000 1000:1000",
            "/explicit/f0 2000:2000",
            "/explicit/f1000 3000:3000",
            "/plain/f0 65534:65534",
            "/plain/f1000 65534:65534",
            "/implied idmapped",
            "/explicit idmapped",
            "/plain plain",
            "/implied/new 0:0",
            "/explicit/new 2000:2000",
            "/plain/new 65534:65534",
        ],
        "{flavor}: one source mounted idmapped twice and plain once"
    );
    assert_eq!(
        owner(&src.join("new"))?,
        (0, 0),
        "{flavor}: root's write on disk"
    );
    assert_not_chowned(flavor, &src, &before)?;
    assert_clean(&env, &[], "a container with one source mounted three ways")
}

#[test]
fn containerd16_one_source_with_two_mappings_and_a_plain_bind() -> Result<()> {
    one_source_three_ways(Flavor::Containerd16)
}

#[test]
fn containerd2_one_source_with_two_mappings_and_a_plain_bind() -> Result<()> {
    one_source_three_ways(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 4. Multi-range mappings.
// ---------------------------------------------------------------------------------------------

fn multi_range(flavor: Flavor) -> Result<()> {
    let (env, rootfs) = env_and_rootfs(flavor)?;
    let src = env.dir().join("vol-ranges");
    make_source(
        &src,
        &[
            ("f0", 0, 0),
            ("f1000", 1000, 1000),
            ("f1999", 1999, 1999),
            ("f2000", 2000, 2000),
        ],
    )?;
    let before = owners_below(&src)?;
    // C: container 0..1000 at host 100000, 1000..2000 at host 300000.
    let container = [(0, HOST_BASE, 1000), (1000, 300000, 1000)];
    // /other: 0..1000 at 100000 as C, but 1000..2000 at 300500:
    //   disk 1000 -> host 300500 -> inside 1500;  disk 1999 -> host 301499, beyond C -> 65534.
    // Writes: chown to 1500 inside is host 300500, M⁻¹ -> disk 1000; 1999 -> host 300999 -> 1499.
    let other = [(0, HOST_BASE, 1000), (1000, 300500, 1000)];
    let id = unique_id("ranges");
    let mut spec = env.base_spec(
        &id,
        &rootfs,
        &format!(
            "{SH_LIB}cat /proc/self/uid_map; \
             own /same/f0 /same/f1000 /same/f1999 /same/f2000; \
             own /implied/f0 /implied/f1000 /implied/f1999 /implied/f2000; \
             own /other/f0 /other/f1000 /other/f1999 /other/f2000; \
             touch /same/w1000 && chown 1000:1000 /same/w1000 && own /same/w1000; \
             touch /other/w1500 && chown 1500:1500 /other/w1500 && own /other/w1500; \
             touch /other/w1999 && chown 1999:1999 /other/w1999 && own /other/w1999"
        ),
    )?;
    add_user_namespace(&mut spec)?;
    spec["linux"]["uidMappings"] = ranges(&container);
    spec["linux"]["gidMappings"] = ranges(&container);
    add_mounts(
        &mut spec,
        vec![
            mapped(bind("/same", &src, &["rbind"]), &container, &container),
            bind("/implied", &src, &["rbind", "idmap"]),
            mapped(bind("/other", &src, &["rbind"]), &other, &other),
        ],
    )?;
    let out = run_lines(&env, &id, &spec, "multi-range mappings", 17)?;
    assert_eq!(
        out,
        [
            "0 100000 1000",
            "1000 300000 1000",
            "/same/f0 0:0",
            "/same/f1000 1000:1000",
            "/same/f1999 1999:1999",
            "/same/f2000 65534:65534",
            "/implied/f0 0:0",
            "/implied/f1000 1000:1000",
            "/implied/f1999 1999:1999",
            "/implied/f2000 65534:65534",
            "/other/f0 0:0",
            "/other/f1000 1500:1500",
            "/other/f1999 65534:65534",
            "/other/f2000 65534:65534",
            "/same/w1000 1000:1000",
            "/other/w1500 1500:1500",
            "/other/w1999 1999:1999",
        ],
        "{flavor}: two-range mappings on the container and its mounts"
    );
    for (file, disk) in [("w1000", 1000), ("w1500", 1000), ("w1999", 1499)] {
        assert_eq!(
            owner(&src.join(file))?,
            (disk, disk),
            "{flavor}: {file} on disk"
        );
    }
    assert_not_chowned(flavor, &src, &before)?;
    assert_clean(&env, &[], "a container with multi-range mapped volumes")
}

#[test]
fn containerd16_multi_range_mount_mappings() -> Result<()> {
    multi_range(Flavor::Containerd16)
}

#[test]
fn containerd2_multi_range_mount_mappings() -> Result<()> {
    multi_range(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 5. idmap maps the top mount only, ridmap the submounts too.
// ---------------------------------------------------------------------------------------------

fn recursion(flavor: Flavor) -> Result<()> {
    // The submount is a tmpfs, which ridmap idmaps too.
    require_kernel(6, 3, "an idmapped tmpfs")?;
    let (env, rootfs) = env_and_rootfs(flavor)?;
    let src = env.dir().join("vol-rec");
    make_source(&src, &[("top", 0, 0)])?;
    let sub = HostMount::new("tmpfs", &src.join("sub"), "size=1m,mode=0755")?;
    let inner = sub.path().join("inner");
    fs::write(&inner, "inner\n")?;
    chown(&inner, Some(0), Some(0))?;
    let before = owners_below(&src)?;

    // The tmpfs's file is 0:0 on disk: 0:0 inside through an idmapped submount, 65534 through
    // a plain one (host 0 is not in the container's range).
    let id = unique_id("recursion");
    let mut spec = userns_spec(
        &env,
        &id,
        &rootfs,
        "own /idmap/top /idmap/sub/inner /ridmap/top /ridmap/sub/inner \
             /mapped/top /mapped/sub/inner /nonrec/top; \
         kind /idmap; kind /idmap/sub; kind /ridmap; kind /ridmap/sub; \
         kind /mapped; kind /mapped/sub; kind /nonrec; kind /nonrec/sub; \
         test -e /nonrec/sub/inner && echo nonrec-has-inner || echo nonrec-without-inner",
    )?;
    let own = [(0, HOST_BASE, RANGE)];
    add_mounts(
        &mut spec,
        vec![
            bind("/idmap", &src, &["rbind", "idmap"]),
            bind("/ridmap", &src, &["rbind", "ridmap"]),
            // Mappings without either option follow the bind: recursive for rbind.
            mapped(bind("/mapped", &src, &["rbind"]), &own, &own),
            // A non-recursive bind does not take the submount at all.
            bind("/nonrec", &src, &["bind", "idmap"]),
        ],
    )?;
    let out = run_lines(&env, &id, &spec, "idmap vs ridmap", 16)?;
    assert_eq!(
        out,
        [
            "/idmap/top 0:0",
            "/idmap/sub/inner 65534:65534",
            "/ridmap/top 0:0",
            "/ridmap/sub/inner 0:0",
            "/mapped/top 0:0",
            "/mapped/sub/inner 0:0",
            "/nonrec/top 0:0",
            "/idmap idmapped",
            "/idmap/sub plain",
            "/ridmap idmapped",
            "/ridmap/sub idmapped",
            "/mapped idmapped",
            "/mapped/sub idmapped",
            "/nonrec idmapped",
            "/nonrec/sub unmounted",
            "nonrec-without-inner",
        ],
        "{flavor}: recursion of idmap, ridmap and mapped rbind into a submount"
    );
    assert_not_chowned(flavor, &src, &before)?;
    assert_clean(&env, &[sub.path()], "a container with recursive volumes")?;
    drop(sub);
    assert_clean(&env, &[], "unmounting the test's tmpfs")
}

#[test]
fn containerd16_idmap_maps_the_top_mount_ridmap_every_submount() -> Result<()> {
    recursion(Flavor::Containerd16)
}

#[test]
fn containerd2_idmap_maps_the_top_mount_ridmap_every_submount() -> Result<()> {
    recursion(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 6. Sources the container's root could not reach by path: 0700 of host root.
// ---------------------------------------------------------------------------------------------

fn private_sources(flavor: Flavor) -> Result<()> {
    let (env, rootfs) = env_and_rootfs(flavor)?;
    let parent = env.dir().join("private");
    make_dir(&parent, 0, 0, 0o700)?;
    let src = parent.join("vol");
    make_dir(&src, 0, 0, 0o700)?;
    let secret = src.join("secret");
    fs::write(&secret, "secret\n")?;
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600))?;
    let before = owners_below(&parent)?;

    // Idmapped, host root's 0700 directory is container root's; plain, it is the overflow
    // id's and stays closed to container root (no CAP_DAC_OVERRIDE over unmapped owners), but
    // it mounts: the shim opens every bind source on the host side.
    let id = unique_id("private");
    let mut spec = userns_spec(
        &env,
        &id,
        &rootfs,
        "stat -c '%n %u:%g %a' /idm /idm/secret /plain /idm-file; cat /idm/secret /idm-file; \
         kind /idm; kind /plain; kind /idm-file; kind /plain-file; \
         ls /plain >/dev/null 2>&1 && echo plain-listable || echo plain-closed",
    )?;
    add_mounts(
        &mut spec,
        vec![
            bind("/idm", &src, &["rbind", "idmap"]),
            bind("/plain", &src, &["rbind"]),
            bind("/idm-file", &secret, &["bind", "idmap"]),
            bind("/plain-file", &secret, &["bind"]),
        ],
    )?;
    let out = run_lines(&env, &id, &spec, "0700 sources", 11)?;
    assert_eq!(
        out,
        [
            "/idm 0:0 700",
            "/idm/secret 0:0 600",
            "/plain 65534:65534 700",
            "/idm-file 0:0 600",
            "secret",
            "secret",
            "/idm idmapped",
            "/plain plain",
            "/idm-file idmapped",
            "/plain-file plain",
            "plain-closed",
        ],
        "{flavor}: a 0700 source in a 0700 directory of host root"
    );
    assert_not_chowned(flavor, &parent, &before)?;
    assert_clean(&env, &[], "a container with 0700 sources")
}

#[test]
fn containerd16_private_sources_of_host_root_mount() -> Result<()> {
    private_sources(Flavor::Containerd16)
}

#[test]
fn containerd2_private_sources_of_host_root_mount() -> Result<()> {
    private_sources(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 7. Destinations through symlinks that point out of the rootfs stay in the rootfs.
// ---------------------------------------------------------------------------------------------

fn symlinked_destinations(flavor: Flavor) -> Result<()> {
    let (env, rootfs) = env_and_rootfs(flavor)?;
    let dir = env.dir().to_string_lossy().into_owned();
    let src = env.dir().join("vol-sym");
    make_source(&src, &[("marker", 0, 0)])?;

    // Followed on the host, these lead to env.dir()/escape-target, env.dir()/evil-target (both
    // absent) and env.dir()/host-existing (a host directory with a file of its own); inside the
    // rootfs they resolve to /escape-target, DIR/evil-target and DIR/host-existing there.
    let escape_target = env.dir().join("escape-target");
    let evil_target = env.dir().join("evil-target");
    let host_existing = env.dir().join("host-existing");
    make_source(&host_existing, &[("host-marker", 0, 0)])?;
    symlink("../escape-target", rootfs.join("escape"))?;
    symlink(&evil_target, rootfs.join("evil"))?;
    symlink(&host_existing, rootfs.join("evil-existing"))?;
    // A destination that climbs with `..`: at the rootfs's root `..` stays there. On the host
    // it would be /NAME.
    let dotdot = format!("usernsrs-dotdot-{}", std::process::id());
    let host_dotdot = Path::new("/").join(&dotdot);
    ensure!(
        !host_dotdot.exists(),
        "{} exists before the test",
        host_dotdot.display()
    );

    let id = unique_id("symlinks");
    let script = format!(
        "cat /escape/x/marker /escape-target/x/marker /evil/marker {dir}/evil-target/marker \
             /evil-existing/marker {dir}/host-existing/marker /{dotdot}/marker; \
         ls {dir}/host-existing; \
         awk '{{ print $5 }}' /proc/self/mountinfo | grep -x -e /escape-target/x \
             -e {dir}/evil-target -e {dir}/host-existing -e /{dotdot} | sort"
    );
    let mut spec = userns_spec(&env, &id, &rootfs, &script)?;
    add_mounts(
        &mut spec,
        vec![
            bind("/escape/x", &src, &["rbind", "idmap"]),
            bind("/evil", &src, &["rbind", "idmap"]),
            bind("/evil-existing", &src, &["rbind"]),
            bind(&format!("/../../../../{dotdot}"), &src, &["rbind", "idmap"]),
        ],
    )?;
    let run = env.create_and_start(&id, &spec);
    // Whatever happened, nothing may stay at host root.
    let dotdot_on_host = host_dotdot.exists();
    if dotdot_on_host {
        let _ = fs::remove_dir(&host_dotdot);
    }
    let run = run?;
    ensure!(
        run.status.success(),
        "{flavor}: symlinked destinations container failed: {}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    ensure!(
        !dotdot_on_host,
        "{flavor}: the destination /../../../../{dotdot} was created on the host at {}",
        host_dotdot.display()
    );
    // Seven cats and the listing of DIR/host-existing: the volume's marker every time.
    let mut expected: Vec<String> = vec!["marker".to_owned(); 8];
    let mut points = vec![
        "/escape-target/x".to_owned(),
        format!("{dir}/evil-target"),
        format!("{dir}/host-existing"),
        format!("/{dotdot}"),
    ];
    points.sort();
    expected.extend(points);
    assert_eq!(
        lines(&run.stdout),
        expected,
        "{flavor}: the volumes inside, at the destinations resolved within the rootfs \
         (7 markers, the listing of DIR/host-existing, the mount points); stderr:\n{}",
        run.stderr
    );

    // On the host: nothing created or mounted outside the rootfs; the mount points inside it.
    ensure!(
        !escape_target.exists() && !evil_target.exists(),
        "{flavor}: a mount point was created outside the rootfs: {} exists: {}, {} exists: {}",
        escape_target.display(),
        escape_target.exists(),
        evil_target.display(),
        evil_target.exists()
    );
    let listing: Vec<String> = fs::read_dir(&host_existing)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    assert_eq!(
        listing,
        ["host-marker"],
        "{flavor}: the host directory {}",
        host_existing.display()
    );
    let inside = |p: &str| rootfs.join(p.trim_start_matches('/'));
    for point in [
        inside("escape-target/x"),
        inside(&format!("{dir}/evil-target")),
        inside(&format!("{dir}/host-existing")),
        inside(&dotdot),
    ] {
        ensure!(
            point.is_dir(),
            "{flavor}: the mount point {} was not made inside the rootfs",
            point.display()
        );
    }
    let host_points: Vec<String> = mountinfo_lines()?
        .into_iter()
        .filter(|l| {
            [&escape_target, &evil_target, &host_existing, &host_dotdot]
                .iter()
                .any(|p| l.contains(&format!(" {} ", p.display())))
        })
        .collect();
    ensure!(
        host_points.is_empty(),
        "{flavor}: mounts on host paths the symlinks point to:\n{}",
        host_points.join("\n")
    );
    assert_clean(&env, &[], "a container with symlinked destinations")
}

#[test]
fn containerd16_symlinked_destinations_stay_in_the_rootfs() -> Result<()> {
    symlinked_destinations(Flavor::Containerd16)
}

#[test]
fn containerd2_symlinked_destinations_stay_in_the_rootfs() -> Result<()> {
    symlinked_destinations(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 8. A filesystem that cannot be idmapped: a clear error, and the way out works.
// ---------------------------------------------------------------------------------------------

fn unsupported_filesystem(flavor: Flavor) -> Result<()> {
    let (env, rootfs) = env_and_rootfs(flavor)?;
    let ram = HostMount::new("ramfs", &env.dir().join("ramfs-src"), "mode=0755")?;
    let src = ram.path().to_path_buf();
    fs::write(src.join("file"), "file\n")?;
    let before = owners_below(&src)?;
    let source = src.to_string_lossy().into_owned();
    let kernel = kernel_release()?;

    let mut failures = Failures::default();
    let id = unique_id("ramfs");
    let mut spec = userns_spec(&env, &id, &rootfs, "echo must-not-run")?;
    add_mounts(&mut spec, vec![bind("/ram", &src, &["rbind", "idmap"])])?;
    // ctr 1.6 prints the status code too: a host that cannot is FailedPrecondition.
    let mut needles = vec!["/ram", source.as_str(), "ramfs", kernel.as_str(), "Way out"];
    if flavor == Flavor::Containerd16 {
        needles.push("failed precondition");
    }
    let refused = expect_refused(&env, &id, &spec, "an idmapped ramfs", &needles);
    if let Some(err) = failures.check("an idmapped ramfs", refused) {
        eprintln!("{flavor}: the ramfs volume is refused with:\n{err}");
    }
    // Before Linux 6.3 a tmpfs cannot be idmapped either: the refusal names it and the kernel
    // it needs (on newer kernels the tmpfs cases of the recursion test run instead).
    let tmpfs = if kernel_at_least(6, 3)? {
        None
    } else {
        Some(HostMount::new(
            "tmpfs",
            &env.dir().join("tmpfs-src"),
            "mode=0755",
        )?)
    };
    if let Some(tmp) = &tmpfs {
        let id = unique_id("tmpfs-old-kernel");
        let mut spec = userns_spec(&env, &id, &rootfs, "echo must-not-run")?;
        add_mounts(
            &mut spec,
            vec![bind("/tmpfs", tmp.path(), &["rbind", "idmap"])],
        )?;
        let tmp_source = tmp.path().to_string_lossy().into_owned();
        let refused = expect_refused(
            &env,
            &id,
            &spec,
            "an idmapped tmpfs before Linux 6.3",
            &["/tmpfs", &tmp_source, "tmpfs", &kernel, "tmpfs 6.3+"],
        );
        failures.check("an idmapped tmpfs before Linux 6.3", refused);
    }

    // The way out the error names: no idmap. A plain bind of the same ramfs mounts, and host
    // root's file is the overflow id inside.
    let id = unique_id("ramfs-plain");
    let mut spec = userns_spec(&env, &id, &rootfs, "own /ram/file; kind /ram")?;
    add_mounts(&mut spec, vec![bind("/ram", &src, &["rbind"])])?;
    let way_out = run_lines(&env, &id, &spec, "a plain bind of a ramfs", 2).and_then(|out| {
        ensure!(
            out == ["/ram/file 65534:65534", "/ram plain"],
            "inside: {out:?}, expected the file as 65534:65534 on a plain mount"
        );
        Ok(())
    });
    failures.check("the way out: a plain bind of the ramfs", way_out);
    failures.check(
        "the ramfs on disk",
        assert_not_chowned(flavor, &src, &before),
    );
    failures.check(
        "with the ramfs still mounted",
        assert_clean(
            &env,
            &[Some(ram.path()), tmpfs.as_ref().map(HostMount::path)]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>(),
            "the ramfs volumes",
        ),
    );
    drop(ram);
    drop(tmpfs);
    failures.check(
        "after unmounting the ramfs",
        assert_clean(&env, &[], "unmounting the test's ramfs"),
    );
    failures.finish(flavor)
}

#[test]
fn containerd16_unsupported_filesystem_fails_naming_mount_fs_and_kernel() -> Result<()> {
    unsupported_filesystem(Flavor::Containerd16)
}

#[test]
fn containerd2_unsupported_filesystem_fails_naming_mount_fs_and_kernel() -> Result<()> {
    unsupported_filesystem(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 9. Specs refused at create, naming the mount.
// ---------------------------------------------------------------------------------------------

fn refused_mounts(flavor: Flavor) -> Result<()> {
    let (env, rootfs) = env_and_rootfs(flavor)?;
    let src = env.dir().join("vol-refused");
    make_source(&src, &[("f0", 0, 0)])?;
    let missing = env.dir().join("does-not-exist");
    let missing_s = missing.to_string_lossy().into_owned();
    let own = [(0, HOST_BASE, RANGE)];

    let cases: Vec<(&str, Value, bool, Vec<&str>)> = vec![
        (
            "a missing idmapped source",
            bind("/missing", &missing, &["rbind", "idmap"]),
            true,
            vec!["mount /missing", &missing_s, "No such file or directory"],
        ),
        (
            "a missing plain source",
            bind("/missing-plain", &missing, &["rbind"]),
            true,
            vec!["mount /missing-plain", &missing_s, "No such file or directory"],
        ),
        (
            "idmap on a tmpfs",
            json!({ "destination": "/t", "type": "tmpfs", "source": "tmpfs", "options": ["idmap"] }),
            true,
            vec!["mount /t: id-mapping is only possible for bind mounts, not type \"tmpfs\""],
        ),
        (
            "uidMappings without gidMappings",
            {
                let mut m = bind("/h", &src, &["rbind"]);
                m["uidMappings"] = ranges(&own);
                m
            },
            true,
            vec!["mount /h: uidMappings without gidMappings"],
        ),
        (
            "gidMappings without uidMappings",
            {
                let mut m = bind("/g", &src, &["rbind"]);
                m["gidMappings"] = ranges(&own);
                m
            },
            true,
            vec!["mount /g: gidMappings without uidMappings"],
        ),
        (
            "a mount mapping of size 0",
            mapped(bind("/z", &src, &["rbind"]), &[(0, 200000, 0)], &own),
            true,
            vec!["mount /z", "uidMappings: range 0:200000:0 has size 0"],
        ),
        (
            "idmap without a user namespace to take the mapping from",
            bind("/i", &src, &["rbind", "idmap"]),
            false,
            vec!["mount /i: idmap without uidMappings/gidMappings needs the container to have a user namespace"],
        ),
    ];
    let mut failures = Failures::default();
    for (what, mount, userns, needles) in cases {
        let id = unique_id("refused");
        let mut spec = if userns {
            userns_spec(&env, &id, &rootfs, "echo must-not-run")?
        } else {
            env.base_spec(&id, &rootfs, "echo must-not-run")?
        };
        add_mounts(&mut spec, vec![mount])?;
        failures.check(what, expect_refused(&env, &id, &spec, what, &needles));
    }
    failures.check(
        "the missing source",
        if missing.exists() {
            Err(anyhow!("{} was created", missing.display()))
        } else {
            Ok(())
        },
    );
    failures.check("at the end", assert_clean(&env, &[], "the refused mounts"));
    failures.finish(flavor)
}

#[test]
fn containerd16_bad_volume_mounts_are_refused_naming_the_mount() -> Result<()> {
    refused_mounts(Flavor::Containerd16)
}

#[test]
fn containerd2_bad_volume_mounts_are_refused_naming_the_mount() -> Result<()> {
    refused_mounts(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 10. No fd of the volume preparation reaches the container (runc's RLIMIT_NOFILE=20 test).
// ---------------------------------------------------------------------------------------------

fn no_fd_leak(flavor: Flavor) -> Result<()> {
    let (env, rootfs) = env_and_rootfs(flavor)?;
    let src = env.dir().join("vol-fds");
    make_source(&src, &[("f0", 0, 0)])?;
    let id = unique_id("fds");
    let mut spec = userns_spec(
        &env,
        &id,
        &rootfs,
        "ls /proc/self/fd; echo --; grep 'Max open files' /proc/self/limits; \
         awk '$6 ~ /idmapped/ && $5 ~ /^\\/v/ { print $5 }' /proc/self/mountinfo | sort; \
         echo --; ls -l /proc/self/fd",
    )?;
    spec["process"]["rlimits"] = json!([{ "type": "RLIMIT_NOFILE", "hard": 20, "soft": 20 }]);
    // Eight idmapped mounts: four with the container's mapping, four with mappings of their own
    // (a user namespace fd each in the helper), each a detached tree fd until attached.
    let mut mounts = Vec::new();
    for i in 0..4u32 {
        mounts.push(bind(&format!("/v{i}"), &src, &["rbind", "idmap"]));
        let m = [(0, 200000 + i * RANGE, RANGE)];
        mounts.push(mapped(
            bind(&format!("/v{}", i + 4), &src, &["rbind"]),
            &m,
            &m,
        ));
    }
    add_mounts(&mut spec, mounts)?;
    let run = env.create_and_start(&id, &spec)?;
    ensure!(
        run.status.success(),
        "{flavor}: the RLIMIT_NOFILE=20 container failed: {}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let out = lines(&run.stdout);
    let first = out
        .iter()
        .position(|l| l == "--")
        .ok_or_else(|| anyhow!("{flavor}: no separator in:\n{}", run.stdout))?;
    // 0 1 2 are stdio; 3 is the directory ls opened to list /proc/self/fd.
    assert_eq!(
        out[..first],
        ["0", "1", "2", "3"],
        "{flavor}: fds of the container process (ls -l below):\n{}",
        run.stdout
    );
    let mut expected = vec!["Max open files 20 20 files".to_owned()];
    expected.extend((0..8).map(|i| format!("/v{i}")));
    expected.push("--".to_owned());
    ensure!(
        out.len() > first + 10 && out[first + 1..first + 11] == expected[..],
        "{flavor}: expected the limit and eight idmapped mounts {expected:?}, got:\n{}",
        run.stdout
    );
    assert_clean(&env, &[], "a container with eight idmapped volumes")
}

#[test]
fn containerd16_no_fd_reaches_the_container_with_eight_idmapped_volumes() -> Result<()> {
    no_fd_leak(Flavor::Containerd16)
}

#[test]
fn containerd2_no_fd_reaches_the_container_with_eight_idmapped_volumes() -> Result<()> {
    no_fd_leak(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 11. `ctr run --mount ...,options=rbind:idmap` with `--uidmap/--gidmap`.
// ---------------------------------------------------------------------------------------------

fn ctr_run_mount(flavor: Flavor) -> Result<()> {
    let env = Env::start_in(flavor, NS)?;
    let src = env.dir().join("vol-ctr-run");
    make_source(&src, &[("root-file", 0, 0), ("app-file", 1000, 1000)])?;
    let before = owners_below(&src)?;
    let mount = format!(
        "type=bind,src={},dst=/vol,options=rbind:idmap",
        src.display()
    );
    let mut opts = vec!["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];
    // containerd 2.x idmaps the image layers (--remap-labels); 1.6's ctr chowns a copy of the
    // snapshot instead. The volume goes through the shim either way.
    if flavor == Flavor::Containerd2 {
        opts.push("--remap-labels");
    }
    opts.extend(["--mount", &mount]);
    let id = unique_id("ctr-run");
    let script = format!(
        "{SH_LIB}cat /proc/self/uid_map; own /vol/root-file /vol/app-file; kind /vol; \
         echo hi > /vol/by-root && own /vol/by-root; \
         touch /vol/by-app && chown 1000:1000 /vol/by-app && own /vol/by-app"
    );
    let out = env.run_ok(&opts, &id, &["/bin/sh", "-c", &script])?;
    assert_eq!(
        lines(&out),
        [
            "0 100000 65536",
            "/vol/root-file 0:0",
            "/vol/app-file 1000:1000",
            "/vol idmapped",
            "/vol/by-root 0:0",
            "/vol/by-app 1000:1000",
        ],
        "{flavor}: ctr run --mount {mount} {opts:?}"
    );
    assert_eq!(
        owner(&src.join("by-root"))?,
        (0, 0),
        "{flavor}: root's write on disk"
    );
    assert_eq!(
        owner(&src.join("by-app"))?,
        (1000, 1000),
        "{flavor}: the file chowned to 1000 inside, on disk"
    );
    assert_not_chowned(flavor, &src, &before)?;
    assert_clean(&env, &[], "ctr run --rm with an idmapped --mount")
}

#[test]
fn containerd16_ctr_run_mount_with_idmap_option() -> Result<()> {
    ctr_run_mount(Flavor::Containerd16)
}

#[test]
fn containerd2_ctr_run_mount_with_idmap_option() -> Result<()> {
    ctr_run_mount(Flavor::Containerd2)
}

// ---------------------------------------------------------------------------------------------
// 12. Options kept on an id-mapped mount: read-only, and the requested propagation.
// ---------------------------------------------------------------------------------------------

fn options_kept(flavor: Flavor) -> Result<()> {
    let (env, rootfs) = env_and_rootfs(flavor)?;
    let src = env.dir().join("vol-ro");
    make_source(&src, &[("f0", 0, 0)])?;
    let id = unique_id("rovol");
    // mountinfo field 7 onwards holds the optional fields (shared:N, master:N) up to "-".
    let mut spec = userns_spec(
        &env,
        &id,
        &rootfs,
        "own /ro/f0; kind /ro; \
         if touch /ro/new 2>/dev/null; then echo writable; else echo read-only; fi; \
         awk '$5 == \"/shared\" { for (i = 7; $i != \"-\"; i++) if ($i ~ /^shared:/) s = 1; \
              print (s ? \"shared\" : \"not shared\") }' /proc/self/mountinfo",
    )?;
    add_mounts(
        &mut spec,
        vec![
            bind("/ro", &src, &["rbind", "ro", "idmap"]),
            bind("/shared", &src, &["rbind", "idmap", "rshared"]),
        ],
    )?;
    let out = run_lines(&env, &id, &spec, "read-only and shared id-mapped mounts", 4)?;
    assert_eq!(
        out,
        ["/ro/f0 0:0", "/ro idmapped", "read-only", "shared"],
        "{flavor}: ro and rshared on id-mapped mounts"
    );
    ensure!(
        !src.join("new").exists(),
        "{flavor}: a write went through a read-only mount"
    );
    assert_clean(&env, &[], "read-only and shared id-mapped mounts")
}

#[test]
fn containerd16_idmapped_mounts_keep_read_only_and_propagation() -> Result<()> {
    options_kept(Flavor::Containerd16)
}

#[test]
fn containerd2_idmapped_mounts_keep_read_only_and_propagation() -> Result<()> {
    options_kept(Flavor::Containerd2)
}

/// The recursive options reach every mount of a bind (`rro` makes a submount read-only too,
/// where `ro` leaves it writable), and so does `linux.readonlyPaths`; a word that is no option
/// of a bind mount is refused naming the mount, not handed to the kernel as data it ignores.
/// `rro` was such a word once: the whole tree stayed writable.
fn recursive_options_reach_submounts(flavor: Flavor) -> Result<()> {
    let env = Env::start(flavor)?;
    let rootfs = env.dir().join("rootfs");
    unpack_busybox(&rootfs)?;
    let src = env.dir().join("rro-src");
    fs::create_dir_all(&src)?;
    let _sub = HostMount::new("tmpfs", &src.join("sub"), "size=1m,mode=0777")?;
    let probe = "for d in /data /data/sub; do \
                 if touch $d/probe 2>/dev/null; then echo $d writable; else echo $d read-only; fi; \
                 done";
    // The last case: `linux.readonlyPaths` makes the path read-only with its submounts.
    for (options, top, sub, readonly_path) in [
        (json!(["rbind", "ro"]), "read-only", "writable", false),
        (json!(["rbind", "rro"]), "read-only", "read-only", false),
        (
            json!(["rbind", "rro", "rrw"]),
            "writable",
            "writable",
            false,
        ),
        (json!(["rbind"]), "read-only", "read-only", true),
    ] {
        let id = unique_id("rro");
        let mut spec = env.base_spec(&id, &rootfs, probe)?;
        if readonly_path {
            spec["linux"]["readonlyPaths"] = json!(["/data"]);
        }
        spec["mounts"]
            .as_array_mut()
            .context("spec has mounts")?
            .push(
                json!({"destination": "/data", "type": "bind", "source": src, "options": options}),
            );
        let run = env.create_and_start(&id, &spec)?;
        let want = format!("/data {top}\n/data/sub {sub}\n");
        ensure!(
            run.status.success() && run.stdout == want,
            "{flavor}: options {options}: expected {want:?}; status {} stdout {:?} stderr {:?}",
            run.status,
            run.stdout,
            run.stderr
        );
        for f in [src.join("probe"), src.join("sub/probe")] {
            let _ = fs::remove_file(f);
        }
    }

    let id = unique_id("bogus-option");
    let mut spec = env.base_spec(&id, &rootfs, "echo must-not-run")?;
    spec["mounts"]
        .as_array_mut()
        .context("spec has mounts")?
        .push(json!({"destination": "/data", "type": "bind", "source": src, "options": ["rbind", "bogus=1"]}));
    let run = env.create_and_start(&id, &spec)?;
    ensure!(
        !run.status.success()
            && !run.stdout.contains("must-not-run")
            && run.stderr.contains("mount /data: option(s) \"bogus=1\""),
        "{flavor}: an unknown bind option must be refused naming it: status {} stdout {:?} stderr {:?}",
        run.status,
        run.stdout,
        run.stderr
    );
    env.assert_no_shim("the refused create")?;
    Ok(())
}

#[test]
fn containerd16_recursive_options_reach_submounts() -> Result<()> {
    recursive_options_reach_submounts(Flavor::Containerd16)
}

#[test]
fn containerd2_recursive_options_reach_submounts() -> Result<()> {
    recursive_options_reach_submounts(Flavor::Containerd2)
}

/// rootfsPropagation rshared (CRI's answer to a Bidirectional volume) keeps the container's
/// copy of the host's mounts peers of the host's shared ones. Detaching the old root after
/// pivot_root would then propagate its unmounts to the host: the shim makes the old root a
/// recursive slave first, as runc does. A shared mount of the test's own (with a submount)
/// stands for the host's; the host's `/` must not be shared, or a regression here would
/// unmount the machine's own mounts (hosts with systemd share `/`: run it in a VM there).
fn rshared_rootfs_leaves_the_hosts_shared_mounts_alone(flavor: Flavor) -> Result<()> {
    let root_shared = mountinfo_lines()?
        .iter()
        .any(|l| l.split(' ').nth(4) == Some("/") && l.contains(" shared:"));
    ensure!(
        !root_shared,
        "{flavor}: this host's / has shared propagation: the test could unmount the host's mounts \
         if the shim regressed; run it in a private mount namespace or a VM (make vm-test)"
    );
    let env = Env::start(flavor)?;
    let rootfs = env.dir().join("rootfs");
    unpack_busybox(&rootfs)?;
    let top = HostMount::new("tmpfs", &env.dir().join("shared-top"), "mode=0755")?;
    nix::mount::mount(
        None::<&str>,
        top.path(),
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )
    .context("make the test mount shared")?;
    let sub = HostMount::new("tmpfs", &top.path().join("sub"), "mode=0755")?;
    let id = unique_id("rshared-root");
    let mut spec = env.base_spec(&id, &rootfs, "echo ran")?;
    spec["linux"]["rootfsPropagation"] = json!("rshared");
    spec["mounts"]
        .as_array_mut()
        .context("spec has mounts")?
        .push(
            json!({"destination": "/shared", "type": "bind", "source": top.path(),
                     "options": ["rbind", "rshared"]}),
        );
    let run = env.create_and_start(&id, &spec)?;
    ensure!(
        run.status.success() && run.stdout.contains("ran"),
        "{flavor}: the container must run: {} {:?} {:?}",
        run.status,
        run.stdout,
        run.stderr
    );
    let under = mounts_under(top.path())?;
    ensure!(
        under.contains(&sub.path().to_path_buf()),
        "{flavor}: the host's shared submount {} was unmounted by the container's old root: {under:?}",
        sub.path().display()
    );
    Ok(())
}

#[test]
fn containerd16_rshared_rootfs_leaves_the_hosts_shared_mounts_alone() -> Result<()> {
    rshared_rootfs_leaves_the_hosts_shared_mounts_alone(Flavor::Containerd16)
}

#[test]
fn containerd2_rshared_rootfs_leaves_the_hosts_shared_mounts_alone() -> Result<()> {
    rshared_rootfs_leaves_the_hosts_shared_mounts_alone(Flavor::Containerd2)
}

/// A container that joins another's user namespace gets volumes idmapped with that namespace's
/// real mapping, whatever mapping its spec claims for it: a spec claiming 0:200000 for a
/// namespace that maps 0:100000 once got volumes showing host 200000 as its root.
fn joined_namespace_volumes_use_its_real_mapping(flavor: Flavor) -> Result<()> {
    let (env, rootfs) = env_and_rootfs(flavor)?;
    let src = env.dir().join("vol-joined");
    // An idmapped volume shows disk owners as the container's ids: on-disk 0 is the
    // container's root through the real mapping, and unmapped (65534) through the claimed one.
    make_source(&src, &[("disk-root", 0, 0), ("disk-1000", 1000, 1000)])?;
    let holder = unique_id("holder");
    let mut opts = vec!["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];
    if flavor == Flavor::Containerd2 {
        opts.push("--remap-labels");
    }
    let holder_pid = env.run_detached(&opts, &holder, &["/bin/sleep", "1000"])?;
    let result = (|| -> Result<()> {
        let id = unique_id("joiner");
        let mut spec = env.base_spec(
            &id,
            &rootfs,
            "stat -c '%n %u:%g' /data/disk-root /data/disk-1000",
        )?;
        spec["linux"]["namespaces"]
            .as_array_mut()
            .context("spec has linux.namespaces")?
            .push(json!({ "type": "user", "path": format!("/proc/{holder_pid}/ns/user") }));
        set_mapping(&mut spec, 200_000, RANGE);
        add_mounts(&mut spec, vec![bind("/data", &src, &["rbind", "idmap"])])?;
        let out = run_lines(
            &env,
            &id,
            &spec,
            "joined namespace with a claimed mapping",
            2,
        )?;
        assert_eq!(
            out,
            ["/data/disk-root 0:0", "/data/disk-1000 1000:1000"],
            "{flavor}: owners through the volume of a container in a joined namespace"
        );
        Ok(())
    })();
    env.kill_and_remove(&holder)?;
    result
}

#[test]
fn containerd16_joined_namespace_volumes_use_its_real_mapping() -> Result<()> {
    joined_namespace_volumes_use_its_real_mapping(Flavor::Containerd16)
}

#[test]
fn containerd2_joined_namespace_volumes_use_its_real_mapping() -> Result<()> {
    joined_namespace_volumes_use_its_real_mapping(Flavor::Containerd2)
}
