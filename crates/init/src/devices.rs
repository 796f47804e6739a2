//! Device access rules: the typed form of `linux.resources.devices` plus the runtime's default
//! allow list, written as v1 `devices.allow`/`devices.deny` lines or compiled into a cgroup v2
//! eBPF device program.
//!
//! Semantics (those of the v1 devices controller and of runc's eBPF emulation): everything is
//! denied unless a rule allows it, and for each access bit (mknod, read, write) the LAST rule
//! that matches the device and names that bit decides. A request (one `open(O_RDWR)` asks for
//! read and write at once) is allowed only when every bit it asks for is allowed.
//!
//! The program walks the rules from last to first keeping, in r6, the access bits not yet
//! decided: an allow rule clears its bits (all cleared: return 1), a deny rule that names an
//! undecided bit returns 0; falling off the end returns 0. It reads only
//! `struct bpf_cgroup_dev_ctx` (include/uapi/linux/bpf.h) and calls no helpers.

use usernsrs_sys::bpf::BpfInsn;

/// What kind of device a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    All,
    Char,
    Block,
}

/// Access bits as the kernel passes them to a device program (BPF_DEVCG_ACC_*,
/// include/uapi/linux/bpf.h).
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;
/// Device types (BPF_DEVCG_DEV_*, include/uapi/linux/bpf.h).
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;

/// One device rule. `None` major or minor is the wildcard `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// ACC_* bits.
    pub access: u32,
}

/// Why a device rule of the spec cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("linux.resources.devices[{index}].access {access:?}: only the letters r, w and m")]
    Access { index: usize, access: String },
    #[error("linux.resources.devices[{index}].{field} {value}: not a device number")]
    Number {
        index: usize,
        field: &'static str,
        value: i64,
    },
}

impl DeviceRule {
    const fn char(major: u32, minor: Option<u32>, access: u32) -> Self {
        DeviceRule {
            allow: true,
            kind: DeviceKind::Char,
            major: Some(major),
            minor,
            access,
        }
    }

    /// The rule of `linux.resources.devices[index]`.
    pub fn from_spec(
        index: usize,
        d: &oci_spec::runtime::LinuxDeviceCgroup,
    ) -> Result<Self, DeviceError> {
        use oci_spec::runtime::LinuxDeviceType as T;
        let kind = match d.typ() {
            None | Some(T::A) => DeviceKind::All,
            Some(T::B) => DeviceKind::Block,
            // c, u (unbuffered char) and p (fifo, never filtered by the kernel) as runc does.
            Some(_) => DeviceKind::Char,
        };
        let text = d.access().clone().unwrap_or_else(|| "rwm".into());
        let mut access = 0;
        for ch in text.chars() {
            access |= match ch {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => {
                    return Err(DeviceError::Access {
                        index,
                        access: text,
                    })
                }
            };
        }
        let number = |field: &'static str, v: Option<i64>| match v {
            None | Some(-1) => Ok(None),
            // Device numbers are 12-bit majors and 20-bit minors: they fit an eBPF immediate.
            Some(n) if (0..=i32::MAX as i64).contains(&n) => Ok(Some(n as u32)),
            Some(value) => Err(DeviceError::Number {
                index,
                field,
                value,
            }),
        };
        let (major, minor) = if kind == DeviceKind::All {
            (None, None)
        } else {
            (number("major", d.major())?, number("minor", d.minor())?)
        };
        Ok(DeviceRule {
            allow: d.allow(),
            kind,
            major,
            minor,
            access,
        })
    }

    /// The allow rule for a device node the spec lists in `linux.devices`.
    pub fn for_node(d: &oci_spec::runtime::LinuxDevice) -> Self {
        let kind = match d.typ() {
            oci_spec::runtime::LinuxDeviceType::B => DeviceKind::Block,
            _ => DeviceKind::Char,
        };
        let num = |n: i64| u32::try_from(n).ok();
        DeviceRule {
            allow: true,
            kind,
            major: num(d.major()),
            minor: num(d.minor()),
            access: ACC_READ | ACC_WRITE | ACC_MKNOD,
        }
    }

    /// The v1 `devices.allow`/`devices.deny` line: `c 1:3 rwm`.
    pub fn v1_line(&self) -> String {
        let kind = match self.kind {
            DeviceKind::All => "a",
            DeviceKind::Char => "c",
            DeviceKind::Block => "b",
        };
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let mut access = String::new();
        for (bit, ch) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(ch);
            }
        }
        format!("{kind} {}:{} {access}", num(self.major), num(self.minor))
    }
}

const RWM: u32 = ACC_READ | ACC_WRITE | ACC_MKNOD;

/// Devices every container may use whatever its rules deny, after runc's default list
/// (libcontainer/specconv `AllowedDevices`): mknod of any node (opening it is what the rules
/// decide), the nodes the shim provides in /dev, the console, the pty multiplexer and the ptys,
/// and /dev/net/tun.
pub const DEFAULT_ALLOWED: [DeviceRule; 12] = [
    DeviceRule {
        allow: true,
        kind: DeviceKind::Char,
        major: None,
        minor: None,
        access: ACC_MKNOD,
    },
    DeviceRule {
        allow: true,
        kind: DeviceKind::Block,
        major: None,
        minor: None,
        access: ACC_MKNOD,
    },
    DeviceRule::char(1, Some(3), RWM),    // null
    DeviceRule::char(1, Some(5), RWM),    // zero
    DeviceRule::char(1, Some(7), RWM),    // full
    DeviceRule::char(1, Some(8), RWM),    // random
    DeviceRule::char(1, Some(9), RWM),    // urandom
    DeviceRule::char(5, Some(0), RWM),    // tty
    DeviceRule::char(5, Some(1), RWM),    // console
    DeviceRule::char(5, Some(2), RWM),    // ptmx
    DeviceRule::char(136, None, RWM),     // pts
    DeviceRule::char(10, Some(200), RWM), // net/tun
];

/// The license the program is loaded under: device programs call no GPL-only helper.
pub const LICENSE: &std::ffi::CStr = c"Apache-2.0";

// Opcodes, include/uapi/linux/bpf_common.h and bpf.h.
const BPF_LDX: u8 = 0x01;
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_AND: u8 = 0x50;
const BPF_RSH: u8 = 0x70;
const BPF_MOV: u8 = 0xb0;
const BPF_JA: u8 = 0x00;
const BPF_JSET: u8 = 0x40;
const BPF_JNE: u8 = 0x50;
const BPF_EXIT: u8 = 0x90;

const LDXW: u8 = BPF_LDX | BPF_W | BPF_MEM;
const AND32: u8 = BPF_ALU | BPF_AND | BPF_K;
const RSH32: u8 = BPF_ALU | BPF_RSH | BPF_K;
const MOV64: u8 = BPF_ALU64 | BPF_MOV | BPF_K;
const JNE: u8 = BPF_JMP | BPF_JNE | BPF_K;
const JSET: u8 = BPF_JMP | BPF_JSET | BPF_K;
const JA: u8 = BPF_JMP | BPF_JA;
const EXIT: u8 = BPF_JMP | BPF_EXIT;

// Registers: r1 the context; r2 device type, r4 major, r5 minor, r6 undecided access bits.
const R0: u8 = 0;
const R1: u8 = 1;
const TYPE: u8 = 2;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;
const PENDING: u8 = 6;

fn ret(value: i32) -> [BpfInsn; 2] {
    [
        BpfInsn::new(MOV64, R0, 0, 0, value),
        BpfInsn::new(EXIT, 0, 0, 0, 0),
    ]
}

/// The device program for `rules` (in spec order: the last match wins, default deny).
pub fn program(rules: &[DeviceRule]) -> Vec<BpfInsn> {
    let mut insns = vec![
        // struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
        BpfInsn::new(LDXW, TYPE, R1, 0, 0),
        BpfInsn::new(AND32, TYPE, 0, 0, 0xffff),
        BpfInsn::new(LDXW, PENDING, R1, 0, 0),
        BpfInsn::new(RSH32, PENDING, 0, 0, 16),
        BpfInsn::new(LDXW, MAJOR, R1, 4, 0),
        BpfInsn::new(LDXW, MINOR, R1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        if rule.access == 0 {
            continue;
        }
        // The matching tests jump past the rule's action when the device is not its.
        let mut tests = Vec::new();
        match rule.kind {
            DeviceKind::All => {}
            DeviceKind::Char => tests.push((TYPE, DEV_CHAR)),
            DeviceKind::Block => tests.push((TYPE, DEV_BLOCK)),
        }
        if rule.kind != DeviceKind::All {
            if let Some(major) = rule.major {
                tests.push((MAJOR, major));
            }
            if let Some(minor) = rule.minor {
                tests.push((MINOR, minor));
            }
        }
        let action: Vec<BpfInsn> = if rule.allow {
            // The rule allows its bits; all decided: allow.
            let mut a = vec![
                BpfInsn::new(AND32, PENDING, 0, 0, !(rule.access as i32)),
                BpfInsn::new(JNE, PENDING, 0, 2, 0),
            ];
            a.extend(ret(1));
            a
        } else {
            // The rule denies a bit nobody later allowed: deny.
            let mut a = vec![
                BpfInsn::new(JSET, PENDING, 0, 1, rule.access as i32),
                BpfInsn::new(JA, 0, 0, 2, 0),
            ];
            a.extend(ret(0));
            a
        };
        let n = tests.len();
        for (i, (reg, value)) in tests.into_iter().enumerate() {
            let skip = (n - 1 - i + action.len()) as i16;
            insns.push(BpfInsn::new(JNE, reg, 0, skip, value as i32));
        }
        insns.extend(action);
    }
    insns.extend(ret(0));
    insns
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `prog` over a `bpf_cgroup_dev_ctx`, for the opcodes [`program`] emits; panics on
    /// anything else, on a jump out of the program and on a read outside the context.
    fn run(prog: &[BpfInsn], kind: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [kind | (access << 16), major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = prog[pc];
            let (dst, src) = (i.dst() as usize, i.src() as usize);
            let imm = i.imm as i64 as u64;
            let mut next = pc + 1;
            let jump = |cond: bool| {
                if cond {
                    (pc as i64 + 1 + i.off as i64) as usize
                } else {
                    pc + 1
                }
            };
            match i.code {
                LDXW => {
                    assert_eq!(src, 1, "loads only from the context");
                    let off = i.off as usize;
                    assert!(off % 4 == 0 && off < 12, "context read at {off}");
                    r[dst] = ctx[off / 4] as u64;
                }
                AND32 => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                RSH32 => r[dst] = ((r[dst] as u32) >> (i.imm as u32)) as u64,
                MOV64 => r[dst] = imm,
                JNE => next = jump(r[dst] != imm),
                JSET => next = jump(r[dst] & imm != 0),
                JA => next = jump(true),
                EXIT => return r[R0 as usize],
                other => panic!("opcode {other:#x} at {pc}"),
            }
            assert!(next < prog.len(), "jump out of the program at {pc}");
            pc = next;
        }
        panic!("program did not exit");
    }

    fn rule(
        allow: bool,
        kind: DeviceKind,
        major: Option<u32>,
        minor: Option<u32>,
        access: u32,
    ) -> DeviceRule {
        DeviceRule {
            allow,
            kind,
            major,
            minor,
            access,
        }
    }

    /// The rules a container from `ctr run` or CRI gets: the spec's deny-all, then the
    /// defaults.
    fn container_rules() -> Vec<DeviceRule> {
        let mut rules = vec![rule(false, DeviceKind::All, None, None, RWM)];
        rules.extend(DEFAULT_ALLOWED);
        rules
    }

    #[test]
    fn default_rules_allow_the_dev_nodes_and_deny_block_devices() {
        let prog = program(&container_rules());
        let cases = [
            // (type, access, major, minor, allowed)
            (DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3, 1), // /dev/null rw
            (DEV_CHAR, ACC_READ, 1, 9, 1),             // urandom
            (DEV_CHAR, ACC_READ | ACC_WRITE, 136, 7, 1), // a pty
            (DEV_CHAR, ACC_READ | ACC_WRITE, 5, 2, 1), // ptmx
            (DEV_CHAR, ACC_READ | ACC_WRITE, 10, 200, 1), // tun
            (DEV_BLOCK, ACC_MKNOD, 254, 0, 1),         // mknod of a disk node
            (DEV_BLOCK, ACC_READ, 254, 0, 0),          // reading it
            (DEV_BLOCK, ACC_WRITE, 8, 0, 0),
            (DEV_CHAR, ACC_READ, 1, 1, 0),             // /dev/mem
            (DEV_CHAR, ACC_READ | ACC_MKNOD, 1, 1, 0), // mknod alone would pass, read not
            (DEV_CHAR, ACC_READ, 10, 229, 0),          // fuse: not in the defaults
            (DEV_BLOCK, ACC_READ, 1, 3, 0),            // block 1:3 is not /dev/null
        ];
        for (kind, access, major, minor, want) in cases {
            assert_eq!(
                run(&prog, kind, access, major, minor),
                want,
                "type {kind} access {access} {major}:{minor}"
            );
        }
    }

    #[test]
    fn last_matching_rule_wins_per_access_bit() {
        let rules = [
            rule(true, DeviceKind::All, None, None, RWM),
            rule(false, DeviceKind::Char, Some(1), Some(3), ACC_WRITE),
            rule(true, DeviceKind::Block, Some(8), None, ACC_READ),
            rule(false, DeviceKind::Block, Some(8), Some(1), ACC_READ),
        ];
        let prog = program(&rules);
        // A later deny of write only: read still allowed, read+write not.
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 1, 3), 1);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3), 0);
        assert_eq!(run(&prog, DEV_CHAR, ACC_WRITE, 1, 3), 0);
        // The last rule denies 8:1 reads; 8:2 falls back to the allow-all.
        assert_eq!(run(&prog, DEV_BLOCK, ACC_READ, 8, 1), 0);
        assert_eq!(run(&prog, DEV_BLOCK, ACC_WRITE, 8, 1), 1);
        assert_eq!(run(&prog, DEV_BLOCK, ACC_READ | ACC_WRITE, 8, 2), 1);
    }

    #[test]
    fn allow_needs_every_requested_bit() {
        let prog = program(&[
            rule(true, DeviceKind::Char, Some(4), None, ACC_READ),
            rule(true, DeviceKind::Char, Some(4), Some(1), ACC_WRITE),
        ]);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 4, 0), 1);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ | ACC_WRITE, 4, 0), 0);
        // Two rules together grant read (any minor) and write (minor 1).
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ | ACC_WRITE, 4, 1), 1);
        assert_eq!(run(&prog, DEV_CHAR, ACC_MKNOD, 4, 1), 0);
    }

    #[test]
    fn no_rules_denies_everything() {
        let prog = program(&[]);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 1, 3), 0);
        assert_eq!(prog.len(), 8);
    }

    #[test]
    fn spec_rules_parse_and_print_in_v1_form() {
        let d: oci_spec::runtime::LinuxDeviceCgroup = serde_json::from_str(
            r#"{"allow": true, "type": "b", "major": 8, "minor": -1, "access": "rm"}"#,
        )
        .expect("rule");
        let r = DeviceRule::from_spec(0, &d).expect("valid");
        assert_eq!(r.v1_line(), "b 8:* rm");
        let all: oci_spec::runtime::LinuxDeviceCgroup =
            serde_json::from_str(r#"{"allow": false, "access": "rwm"}"#).expect("rule");
        assert_eq!(
            DeviceRule::from_spec(0, &all).expect("valid").v1_line(),
            "a *:* rwm"
        );
        let bad: oci_spec::runtime::LinuxDeviceCgroup =
            serde_json::from_str(r#"{"allow": true, "type": "c", "access": "rx"}"#).expect("rule");
        let err = DeviceRule::from_spec(3, &bad).expect_err("x is no access");
        assert!(
            err.to_string()
                .contains("linux.resources.devices[3].access"),
            "{err}"
        );
    }
}
