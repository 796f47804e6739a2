//! `/proc/<pid>/mountinfo`, parsed (proc(5)): the one parser the other modules use.
//!
//! Paths and options are unescaped (the kernel writes space, tab, newline and backslash as
//! `\040`, `\011`, `\012` and `\134`). A line that does not have the documented shape is an
//! error, not skipped: a half-read mount table would make callers miss mounts.

use std::path::PathBuf;

/// One mount, as a line of mountinfo describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    /// `major:minor` of the filesystem.
    pub dev: String,
    /// The directory of the filesystem that is the root of this mount.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub mount_options: Vec<String>,
    /// Optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    pub super_options: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("mountinfo line {line}: {reason}: {text:?}")]
pub struct MountInfoError {
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

/// Undoes the kernel's octal escapes (`\NNN`).
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let Some(d) = octal {
            let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn options(field: &str) -> Vec<String> {
    field.split(',').map(unescape).collect()
}

/// Parses a whole mountinfo text.
///
/// Lines end at `\n` only: the kernel does not escape `\r`, which a path or an option may end
/// with (`str::lines` would drop it from the last field).
pub fn parse(text: &str) -> Result<Vec<MountEntry>, MountInfoError> {
    text.split('\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(n, l)| parse_line(n + 1, l))
        .collect()
}

fn parse_line(line: usize, text: &str) -> Result<MountEntry, MountInfoError> {
    let err = |reason| MountInfoError {
        line,
        reason,
        text: text.to_string(),
    };
    let fields: Vec<&str> = text.split(' ').collect();
    let sep = fields
        .iter()
        .position(|f| *f == "-")
        .ok_or_else(|| err("no ' - ' separator"))?;
    if sep < 6 || fields.len() < sep + 4 {
        return Err(err("too few fields"));
    }
    let number = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| err("mount id is not a number"))
    };
    Ok(MountEntry {
        id: number(fields[0])?,
        parent: number(fields[1])?,
        dev: fields[2].to_string(),
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        mount_options: options(fields[5]),
        optional: fields[6..sep].iter().map(|s| s.to_string()).collect(),
        fstype: unescape(fields[sep + 1]),
        source: unescape(fields[sep + 2]),
        super_options: options(fields[sep + 3]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SAMPLE: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 master:3 - cgroup cgroup rw,cpu
77 31 0:40 /a\\040b /mnt/with\\040space\\134x ro,nosuid - ext4 /dev/vda1 rw
";

    #[test]
    fn parses_fields_optional_tags_and_escapes() {
        let m = parse(SAMPLE).expect("parse");
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mount_point, Path::new("/sys/fs/cgroup"));
        assert_eq!(m[0].fstype, "tmpfs");
        assert_eq!(m[0].super_options, ["rw", "mode=755"]);
        assert_eq!(m[1].optional, ["shared:9", "master:3"]);
        assert_eq!(m[1].super_options, ["rw", "cpu"]);
        assert_eq!((m[1].id, m[1].parent), (32, 31));
        assert_eq!(m[2].root, Path::new("/a b"));
        assert_eq!(m[2].mount_point, Path::new("/mnt/with space\\x"));
        assert_eq!(m[2].mount_options, ["ro", "nosuid"]);
        assert_eq!(m[2].source, "/dev/vda1");
    }

    #[test]
    fn refuses_a_line_without_the_separator_or_fields() {
        let e = parse("1 2 0:3 / /x rw shared:1 tmpfs tmpfs rw").expect_err("no separator");
        assert_eq!(e.reason, "no ' - ' separator");
        let e = parse("1 2 0:3 / /x - tmpfs").expect_err("short");
        assert_eq!(e.line, 1);
    }

    #[test]
    fn a_carriage_return_ending_a_line_is_kept() {
        // Found by the property tests (shrunk input): `lines()` dropped it from the super
        // options, the last field.
        let m = parse("1 0 0:1 / / rw - ext4 /dev/x rw,opt\r\n").expect("parse");
        assert_eq!(m[0].super_options, ["rw", "opt\r"]);
    }

    #[test]
    fn unescape_leaves_other_backslashes() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("a\\9zz"), "a\\9zz");
        assert_eq!(unescape("end\\04"), "end\\04");
        assert_eq!(unescape("\\011\\012\\134"), "\t\n\\");
    }
}
