//! Parsing OCI mount options (`ro`, `nosuid`, `rbind`, `rprivate`, `mode=755`, ...) into the
//! flags, propagation and data string of `mount(2)`, the way runc reads them.

use serde::{Deserialize, Serialize};

/// `mount(2)` flags, as in `<sys/mount.h>` (kept here so this crate needs no libc).
pub mod flags {
    pub const RDONLY: u64 = 1;
    pub const NOSUID: u64 = 2;
    pub const NODEV: u64 = 4;
    pub const NOEXEC: u64 = 8;
    pub const SYNCHRONOUS: u64 = 16;
    pub const REMOUNT: u64 = 32;
    pub const MANDLOCK: u64 = 64;
    pub const DIRSYNC: u64 = 128;
    pub const NOSYMFOLLOW: u64 = 256;
    pub const NOATIME: u64 = 1024;
    pub const NODIRATIME: u64 = 2048;
    pub const BIND: u64 = 4096;
    pub const REC: u64 = 16384;
    pub const UNBINDABLE: u64 = 1 << 17;
    pub const PRIVATE: u64 = 1 << 18;
    pub const SLAVE: u64 = 1 << 19;
    pub const SHARED: u64 = 1 << 20;
    pub const RELATIME: u64 = 1 << 21;
    pub const STRICTATIME: u64 = 1 << 24;
    pub const LAZYTIME: u64 = 1 << 25;
}

/// `mount_setattr(2)` attributes (`MOUNT_ATTR_*` in `<linux/mount.h>`), for the recursive options.
pub mod attrs {
    pub const RDONLY: u64 = 0x1;
    pub const NOSUID: u64 = 0x2;
    pub const NODEV: u64 = 0x4;
    pub const NOEXEC: u64 = 0x8;
    /// The atime field: RELATIME (0), NOATIME or STRICTATIME.
    pub const ATIME: u64 = 0x70;
    pub const RELATIME: u64 = 0x0;
    pub const NOATIME: u64 = 0x10;
    pub const STRICTATIME: u64 = 0x20;
    pub const NODIRATIME: u64 = 0x80;
    pub const NOSYMFOLLOW: u64 = 0x0020_0000;
}

/// The recursive options (`rro`, `rnosuid`, ...): attributes set and cleared on the mount and
/// every mount below it, with `mount_setattr(AT_RECURSIVE)` (Linux 5.12+), as runc does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecursiveAttrs {
    pub set: u64,
    pub clear: u64,
}

impl RecursiveAttrs {
    pub fn is_empty(&self) -> bool {
        self.set == 0 && self.clear == 0
    }
}

/// `(clear, set)` for one recursive option, or `None` if `opt` is not one.
fn recursive_attr(opt: &str) -> Option<(u64, u64)> {
    use attrs::*;
    Some(match opt {
        "rro" => (0, RDONLY),
        "rrw" => (RDONLY, 0),
        "rnosuid" => (0, NOSUID),
        "rsuid" => (NOSUID, 0),
        "rnodev" => (0, NODEV),
        "rdev" => (NODEV, 0),
        "rnoexec" => (0, NOEXEC),
        "rexec" => (NOEXEC, 0),
        "rnodiratime" => (0, NODIRATIME),
        "rdiratime" => (NODIRATIME, 0),
        "rrelatime" => (ATIME, RELATIME),
        "rnorelatime" => (ATIME, 0),
        "rnoatime" => (ATIME, NOATIME),
        "ratime" => (ATIME, 0),
        "rstrictatime" => (ATIME, STRICTATIME),
        "rnostrictatime" => (ATIME, 0),
        "rnosymfollow" => (0, NOSYMFOLLOW),
        "rsymfollow" => (NOSYMFOLLOW, 0),
        _ => return None,
    })
}

/// What a list of options means for `mount(2)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountOptions {
    /// Flags for the mount call itself.
    pub flags: u64,
    /// Propagation flags, applied by a second call (`MS_PRIVATE | MS_REC`, ...).
    pub propagation: Vec<u64>,
    /// Filesystem-specific data (`mode=755,size=65536k`).
    pub data: String,
    /// `idmap` or `ridmap` was given.
    pub idmap: Option<IdmapOption>,
    /// `rro`, `rnosuid`, ...: applied to the whole tree after the mount.
    pub recursive: RecursiveAttrs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdmapOption {
    /// `idmap`: the top mount only.
    Idmap,
    /// `ridmap`: the mount and its submounts.
    Ridmap,
}

impl MountOptions {
    pub fn is_bind(&self) -> bool {
        self.flags & flags::BIND != 0
    }

    pub fn is_readonly(&self) -> bool {
        self.flags & flags::RDONLY != 0
    }
}

/// Parses `options`; unknown words go to the data string, as runc does. An empty word means
/// nothing (the kernel skips empty options in mount data too).
pub fn parse_mount_options<S: AsRef<str>>(options: &[S]) -> MountOptions {
    use flags::*;
    let mut out = MountOptions::default();
    let mut data = Vec::new();
    for opt in options {
        let opt = opt.as_ref();
        if opt.is_empty() {
            continue;
        }
        // (clear, flag)
        let flag = match opt {
            "defaults" => Some((false, 0)),
            "ro" => Some((false, RDONLY)),
            "rw" => Some((true, RDONLY)),
            "suid" => Some((true, NOSUID)),
            "nosuid" => Some((false, NOSUID)),
            "dev" => Some((true, NODEV)),
            "nodev" => Some((false, NODEV)),
            "exec" => Some((true, NOEXEC)),
            "noexec" => Some((false, NOEXEC)),
            "sync" => Some((false, SYNCHRONOUS)),
            "async" => Some((true, SYNCHRONOUS)),
            "dirsync" => Some((false, DIRSYNC)),
            "remount" => Some((false, REMOUNT)),
            "mand" => Some((false, MANDLOCK)),
            "nomand" => Some((true, MANDLOCK)),
            "atime" => Some((true, NOATIME)),
            "noatime" => Some((false, NOATIME)),
            "diratime" => Some((true, NODIRATIME)),
            "nodiratime" => Some((false, NODIRATIME)),
            "relatime" => Some((false, RELATIME)),
            "norelatime" => Some((true, RELATIME)),
            "strictatime" => Some((false, STRICTATIME)),
            "nostrictatime" => Some((true, STRICTATIME)),
            "lazytime" => Some((false, LAZYTIME)),
            "nolazytime" => Some((true, LAZYTIME)),
            "nosymfollow" => Some((false, NOSYMFOLLOW)),
            "bind" => Some((false, BIND)),
            "rbind" => Some((false, BIND | REC)),
            _ => None,
        };
        if let Some((clear, flag)) = flag {
            if clear {
                out.flags &= !flag;
            } else {
                out.flags |= flag;
            }
            continue;
        }
        let propagation = match opt {
            "private" => Some(PRIVATE),
            "rprivate" => Some(PRIVATE | REC),
            "shared" => Some(SHARED),
            "rshared" => Some(SHARED | REC),
            "slave" => Some(SLAVE),
            "rslave" => Some(SLAVE | REC),
            "unbindable" => Some(UNBINDABLE),
            "runbindable" => Some(UNBINDABLE | REC),
            _ => None,
        };
        if let Some(p) = propagation {
            out.propagation.push(p);
            continue;
        }
        if let Some((clear, set)) = recursive_attr(opt) {
            // A later option wins over an earlier one on the same bits.
            out.recursive.set = (out.recursive.set & !clear & !set) | set;
            out.recursive.clear = (out.recursive.clear & !set) | clear;
            continue;
        }
        match opt {
            "idmap" => out.idmap = Some(IdmapOption::Idmap),
            "ridmap" => out.idmap = Some(IdmapOption::Ridmap),
            _ => data.push(opt),
        }
    }
    out.data = data.join(",");
    out
}

#[cfg(test)]
mod tests {
    use super::flags::*;
    use super::*;

    #[test]
    fn splits_flags_propagation_and_data() {
        let o = parse_mount_options(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rprivate",
        ]);
        assert_eq!(o.flags, NOSUID | STRICTATIME);
        assert_eq!(o.propagation, vec![PRIVATE | REC]);
        assert_eq!(o.data, "mode=755,size=65536k");
    }

    #[test]
    fn later_options_win_and_rbind_is_recursive_bind() {
        let o = parse_mount_options(&["ro", "rw", "rbind"]);
        assert!(!o.is_readonly());
        assert!(o.is_bind());
        assert_eq!(o.flags & REC, REC);
    }

    #[test]
    fn recursive_options_become_attributes_and_later_ones_win() {
        use super::attrs;
        let o = parse_mount_options(&["rbind", "rro", "rnosuid", "rnoatime"]);
        assert_eq!(
            o.recursive.set,
            attrs::RDONLY | attrs::NOSUID | attrs::NOATIME
        );
        assert_eq!(o.recursive.clear, attrs::ATIME);
        assert_eq!(o.data, "", "recursive options are not mount data");
        let o = parse_mount_options(&["rro", "rrw", "rstrictatime"]);
        assert_eq!(o.recursive.set, attrs::STRICTATIME);
        assert_eq!(o.recursive.clear, attrs::RDONLY | attrs::ATIME);
        assert!(parse_mount_options(&["ro", "nosuid"]).recursive.is_empty());
    }

    #[test]
    fn empty_words_mean_nothing() {
        // Found by the property tests: ["bind", "", ""] had the data "," and was refused as a
        // bind with unknown words, while ["bind", ""] was taken.
        for words in [&["bind", ""][..], &["bind", "", ""], &["", "rbind", ""]] {
            assert_eq!(parse_mount_options(words).data, "", "{words:?}");
        }
        assert_eq!(
            parse_mount_options(&["", "mode=755", "", "size=1k"]).data,
            "mode=755,size=1k"
        );
    }

    #[test]
    fn recognises_idmap_options() {
        assert_eq!(
            parse_mount_options(&["bind", "idmap"]).idmap,
            Some(IdmapOption::Idmap)
        );
        assert_eq!(
            parse_mount_options(&["rbind", "ridmap"]).idmap,
            Some(IdmapOption::Ridmap)
        );
        assert_eq!(parse_mount_options(&["rbind"]).idmap, None);
    }
}
