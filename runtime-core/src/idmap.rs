//! Id mappings: the `linux.uidMappings`/`gidMappings` of a spec, and the `uidmap=`/`gidmap=`
//! options containerd's snapshotters put on rootfs mounts.
//!
//! Invariant: an [`IdMap`] that exists has passed [`IdMap::new`]: at least one range, no range of
//! size 0, no range past 2^32-1 on either side, no two ranges overlapping on either side, and at
//! most [`MAX_RANGES`] ranges (the kernel's limit for `uid_map`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// The most ranges a `uid_map` may hold (Linux 4.15+).
pub const MAX_RANGES: usize = 340;

/// One range: `size` ids starting at `container_id` inside are `host_id..` outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// A validated list of ranges for one kind of id (uid or gid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap(Vec<IdMapping>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdMapError {
    #[error("{field} is empty")]
    Empty { field: String },
    #[error("{field} has {count} ranges, the kernel takes at most {MAX_RANGES}")]
    TooMany { field: String, count: usize },
    #[error("{field}: range {range} has size 0")]
    ZeroSize { field: String, range: IdMapping },
    #[error("{field}: range {range} goes past id 4294967294")]
    Overflow { field: String, range: IdMapping },
    #[error("{field}: {side} ids of ranges {a} and {b} overlap")]
    Overlap {
        field: String,
        side: &'static str,
        a: IdMapping,
        b: IdMapping,
    },
    #[error("{field}: cannot parse {text:?} as containerID:hostID:size")]
    Syntax { field: String, text: String },
}

impl fmt::Display for IdMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.container_id, self.host_id, self.size)
    }
}

impl IdMapping {
    /// End (exclusive) of the range on the container side, without overflow.
    fn container_end(&self) -> u64 {
        u64::from(self.container_id) + u64::from(self.size)
    }

    fn host_end(&self) -> u64 {
        u64::from(self.host_id) + u64::from(self.size)
    }
}

impl IdMap {
    /// Validates `ranges`; `field` names them in errors (e.g. `linux.uidMappings`).
    pub fn new(field: &str, ranges: Vec<IdMapping>) -> Result<Self, IdMapError> {
        let field = field.to_string();
        if ranges.is_empty() {
            return Err(IdMapError::Empty { field });
        }
        if ranges.len() > MAX_RANGES {
            let count = ranges.len();
            return Err(IdMapError::TooMany { field, count });
        }
        // The kernel refuses first + count that wraps in 32 bits, and id 2^32-1 is (uid_t)-1.
        const LIMIT: u64 = u32::MAX as u64;
        for &range in &ranges {
            if range.size == 0 {
                return Err(IdMapError::ZeroSize { field, range });
            }
            if range.container_end() > LIMIT || range.host_end() > LIMIT {
                return Err(IdMapError::Overflow { field, range });
            }
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                let overlap =
                    |a0: u32, a1: u64, b0: u32, b1: u64| u64::from(a0) < b1 && u64::from(b0) < a1;
                if overlap(
                    a.container_id,
                    a.container_end(),
                    b.container_id,
                    b.container_end(),
                ) {
                    let (a, b) = (*a, *b);
                    return Err(IdMapError::Overlap {
                        field,
                        side: "container",
                        a,
                        b,
                    });
                }
                if overlap(a.host_id, a.host_end(), b.host_id, b.host_end()) {
                    let (a, b) = (*a, *b);
                    return Err(IdMapError::Overlap {
                        field,
                        side: "host",
                        a,
                        b,
                    });
                }
            }
        }
        Ok(Self(ranges))
    }

    /// Parses containerd's label and mount option form: `0:100000:65536[,1:2:3...]`.
    pub fn parse_containerd(field: &str, text: &str) -> Result<Self, IdMapError> {
        let syntax = || IdMapError::Syntax {
            field: field.to_string(),
            text: text.to_string(),
        };
        let ranges = text
            .split(',')
            .map(|part| {
                let mut numbers = part.split(':').map(|n| n.trim().parse::<u32>());
                match (
                    numbers.next(),
                    numbers.next(),
                    numbers.next(),
                    numbers.next(),
                ) {
                    (Some(Ok(container_id)), Some(Ok(host_id)), Some(Ok(size)), None) => {
                        Ok(IdMapping {
                            container_id,
                            host_id,
                            size,
                        })
                    }
                    _ => Err(syntax()),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(field, ranges)
    }

    pub fn ranges(&self) -> &[IdMapping] {
        &self.0
    }

    /// The host id that container id `id` maps to, if it is mapped.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        self.0
            .iter()
            .find(|r| id >= r.container_id && u64::from(id) < r.container_end())
            .map(|r| r.host_id + (id - r.container_id))
    }

    /// Whether host id `id` lies in one of the ranges' host side.
    pub fn covers_host(&self, id: u32) -> bool {
        self.0
            .iter()
            .any(|r| id >= r.host_id && u64::from(id) < r.host_end())
    }

    /// The text written to `/proc/<pid>/uid_map` or `gid_map`.
    pub fn proc_format(&self) -> String {
        self.0
            .iter()
            .map(|r| format!("{} {} {}\n", r.container_id, r.host_id, r.size))
            .collect()
    }
}

impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "[{}]", parts.join(","))
    }
}

/// The uid and gid maps of one user namespace or idmapped mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserMapping {
    pub uid: IdMap,
    pub gid: IdMap,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(container_id: u32, host_id: u32, size: u32) -> IdMapping {
        IdMapping {
            container_id,
            host_id,
            size,
        }
    }

    #[test]
    fn accepts_multi_range_map_and_translates_ids() {
        let map = IdMap::new("uid", vec![m(0, 100000, 1000), m(1000, 300000, 10)]).expect("valid");
        assert_eq!(map.to_host(0), Some(100000));
        assert_eq!(map.to_host(999), Some(100999));
        assert_eq!(map.to_host(1005), Some(300005));
        assert_eq!(map.to_host(1010), None);
        assert!(map.covers_host(300009));
        assert!(!map.covers_host(300010));
        assert_eq!(map.proc_format(), "0 100000 1000\n1000 300000 10\n");
    }

    #[test]
    fn rejects_empty_and_zero_size() {
        assert_eq!(
            IdMap::new("linux.uidMappings", vec![]),
            Err(IdMapError::Empty {
                field: "linux.uidMappings".into()
            })
        );
        let err = IdMap::new("linux.uidMappings", vec![m(0, 1, 0)]).expect_err("size 0");
        assert_eq!(err.to_string(), "linux.uidMappings: range 0:1:0 has size 0");
    }

    #[test]
    fn rejects_ranges_past_u32() {
        let err = IdMap::new("f", vec![m(0, u32::MAX - 10, 11)]).expect_err("host past");
        assert!(matches!(err, IdMapError::Overflow { .. }), "{err}");
        let err = IdMap::new("f", vec![m(u32::MAX - 1, 0, 2)]).expect_err("container past");
        assert!(matches!(err, IdMapError::Overflow { .. }), "{err}");
        IdMap::new("f", vec![m(0, u32::MAX - 10, 10)]).expect("ends at 2^32-1 exclusive");
    }

    #[test]
    fn rejects_overlapping_container_ranges() {
        let err = IdMap::new("f", vec![m(0, 1000, 10), m(5, 5000, 10)]).expect_err("overlap");
        assert_eq!(
            err.to_string(),
            "f: container ids of ranges 0:1000:10 and 5:5000:10 overlap"
        );
    }

    #[test]
    fn rejects_overlapping_host_ranges() {
        let err = IdMap::new("f", vec![m(0, 1000, 10), m(100, 1009, 10)]).expect_err("overlap");
        assert!(
            matches!(err, IdMapError::Overlap { side: "host", .. }),
            "{err}"
        );
        IdMap::new("f", vec![m(0, 1000, 10), m(100, 1010, 10)]).expect("adjacent is fine");
    }

    #[test]
    fn parses_containerd_option_form() {
        let map = IdMap::parse_containerd("uidmap", "0:100000:65536").expect("valid");
        assert_eq!(map.ranges(), &[m(0, 100000, 65536)]);
        let map = IdMap::parse_containerd("uidmap", "0:1000:1,1:100000:65535").expect("valid");
        assert_eq!(map.ranges().len(), 2);
        for bad in ["", "0:1", "0:1:2:3", "a:b:c", "0:1:2,"] {
            let err = IdMap::parse_containerd("uidmap", bad).expect_err(bad);
            assert!(matches!(err, IdMapError::Syntax { .. }), "{bad}: {err}");
        }
    }
}
