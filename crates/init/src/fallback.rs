//! The opt-in slow path for a rootfs that cannot be idmapped (`slow_chown = true` in the shim's
//! runtime options): a view of the rootfs owned by the mapped ids, without touching the original.
//!
//! The view is an overlay whose lower layers are the original directories and whose upper layer
//! lives under the bundle (`usernsrs-fallback/`), mounted with `metacopy=on` for this mount
//! only (the host-wide default is left alone). Every entry is then chowned through the overlay:
//! each chown copies up the inode's metadata alone, never the data. The cost is one inode per
//! file and a chown per file at create; Delete removes the whole upper layer.

use crate::InitError;
use nix::mount::{mount, MsFlags};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use usernsrs_runtime_core::UserMapping;

/// The directory under the bundle that holds the fallback's upper and work directories.
pub const FALLBACK_DIR: &str = "usernsrs-fallback";

/// Mounts at `target` an overlay of `lowers` (topmost first) whose every entry is owned by the
/// host ids `mapping` gives its on-disk owner; `state` receives the upper and work directories.
/// Returns how many entries were chowned.
pub(crate) fn chowned_view(
    lowers: &[PathBuf],
    mapping: &UserMapping,
    state: &Path,
    target: &Path,
) -> Result<u64, InitError> {
    let upper = state.join("upper");
    let work = state.join("work");
    for dir in [&upper, &work, &target.to_path_buf()] {
        fs::create_dir_all(dir).map_err(InitError::io(format!("create {}", dir.display())))?;
    }
    let lowerdir: Vec<String> = lowers
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={},metacopy=on",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| InitError::Mount {
        what: "overlay for the chown fallback (metacopy=on)".into(),
        target: target.to_path_buf(),
        err: e.into(),
    })?;
    // The view was just mounted: nothing is mounted below it, so the walk stays inside it.
    let mut count = 0;
    chown_tree(target, mapping, &mut count)?;
    Ok(count)
}

fn remap(map: &usernsrs_runtime_core::IdMap, id: u32) -> u32 {
    // Ids the container cannot see stay as they are (they show as the overflow id inside).
    map.to_host(id).unwrap_or(id)
}

fn chown_tree(path: &Path, mapping: &UserMapping, count: &mut u64) -> Result<(), InitError> {
    let md =
        fs::symlink_metadata(path).map_err(InitError::io(format!("stat {}", path.display())))?;
    let (uid, gid) = (remap(&mapping.uid, md.uid()), remap(&mapping.gid, md.gid()));
    if (uid, gid) != (md.uid(), md.gid()) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(InitError::io(format!("chown {}", path.display())))?;
        *count += 1;
        // chown clears set-user-id and set-group-id bits; put them back.
        if !md.file_type().is_symlink() && md.mode() & 0o6000 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(md.mode() & 0o7777))
                .map_err(InitError::io(format!("chmod {}", path.display())))?;
        }
    }
    if md.is_dir() {
        for entry in
            fs::read_dir(path).map_err(InitError::io(format!("read {}", path.display())))?
        {
            let entry = entry.map_err(InitError::io(format!("read {}", path.display())))?;
            chown_tree(&entry.path(), mapping, count)?;
        }
    }
    Ok(())
}
