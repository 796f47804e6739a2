//! Undoing the host-side mounts of a container.
//!
//! Every host-side mount the helper makes lands at or under the bundle directory (invariant of
//! `runtime_core::rootfs`), so cleanup, whether from Delete or from the `delete` subcommand after
//! a crash, is: detach every mount at or under the bundle, deepest first. Nothing is ever removed
//! recursively: a mount that would not come off leaves its data untouched and is reported.

use std::io;
use std::path::{Path, PathBuf};
use usernsrs_runtime_core::mountinfo::unescape;

/// The mount points listed in `mountinfo` text that are `dir` or below it, deepest first.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Detaches every mount at or under `dir`. Returns the mount points still there afterwards.
pub fn unmount_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    // Stacked mounts on one point need one umount each; a few rounds cover them.
    for _ in 0..8 {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let targets = mounts_under(&info, dir);
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        for t in &targets {
            let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mounts_under(&info, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
40 22 0:50 / /run/b/c1/rootfs rw - overlay overlay rw
41 40 0:51 / /run/b/c1/rootfs/proc rw - proc proc rw
42 22 0:52 / /run/b/c10/rootfs rw - overlay overlay rw
43 22 0:53 / /run/b/c1/with\\040space rw - tmpfs tmpfs rw";

    #[test]
    fn lists_mounts_below_a_directory_deepest_first() {
        let found = mounts_under(INFO, Path::new("/run/b/c1"));
        assert_eq!(
            found,
            vec![
                PathBuf::from("/run/b/c1/rootfs/proc"),
                PathBuf::from("/run/b/c1/rootfs"),
                PathBuf::from("/run/b/c1/with space"),
            ]
        );
    }
}
