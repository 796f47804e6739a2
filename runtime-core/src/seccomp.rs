//! `linux.seccomp`: an OCI seccomp profile compiled to one classic BPF program that does what
//! runc (with libseccomp and its own -ENOSYS stub) makes of the same profile. Pure code: the
//! helper installs the program (`usernsrs-init`), the kernel runs it.
//!
//! What the program does with a syscall, in order (it reads `nr`, `arch` and `args` of the
//! kernel's `struct seccomp_data`):
//! 1. `arch` picks a section. The native architecture always has one (libseccomp's
//!    `seccomp_init` adds it whatever `architectures` says), and so has every architecture of
//!    `architectures` that this kernel can run: on x86_64 SCMP_ARCH_X86 (32-bit binaries and
//!    `int 0x80`) and SCMP_ARCH_X32, on aarch64 SCMP_ARCH_ARM. Any other `arch` gets
//!    libseccomp's default bad-architecture action, SCMP_ACT_KILL, which runc leaves alone: the
//!    thread is killed (SECCOMP_RET_KILL_THREAD). So does an i386 syscall when SCMP_ARCH_X86 is
//!    not listed. Listed architectures that cannot occur on this kernel (SCMP_ARCH_S390X on
//!    x86_64) are accepted and need no section, as their syscalls never reach the filter.
//! 2. x32 syscalls arrive with AUDIT_ARCH_X86_64 and bit 30 (0x40000000) set in `nr`. With
//!    SCMP_ARCH_X32 listed they are matched against x32's own table (36 syscalls have other
//!    numbers there, 512 to 547); without it any `nr` with bit 30 set gets the bad-architecture
//!    action, except -1 (a tracer skipping the syscall), which gets the default action, as
//!    libseccomp does. An x32 number for a denied syscall never slips past a deny list.
//! 3. runc's -ENOSYS stub: unless the default action lets syscalls through (ALLOW, LOG, TRACE),
//!    a syscall numbered above every syscall the profile names for its architecture fails with
//!    ENOSYS, so that programs fall back from syscalls newer than the profile (as glibc does from
//!    clone3) instead of failing on the default EPERM. The stub is checked before step 2's x32
//!    rule, as in runc, which shows for numbers with bit 31 but not bit 30 set.
//! 4. The rules for the syscall, else the default action.
//!
//! The rules, as runc and libseccomp read them:
//! - a name is looked up in each architecture's table (the `syscalls` crate's tables; x32's
//!   renumbering from the kernel's `syscall_64.tbl`; ARM's private syscalls such as `set_tls`;
//!   `newfstatat` on aarch64; `listns`, newer than the crate). A name an architecture does not
//!   have is skipped for that architecture, as libseccomp does (runc logs it at debug level);
//! - a rule whose action is the default action is dropped (runc), though its names still count
//!   for step 3;
//! - the conditions of a rule must all hold; when a rule has two conditions on one argument, each
//!   of its conditions is a rule of its own instead, as runc does;
//! - an unconditional rule for a syscall wins over its conditional rules, and the first
//!   unconditional rule over later ones (libseccomp); conditional rules are tried in profile
//!   order and the first that holds decides (libseccomp refuses two overlapping conditional
//!   rules with different actions, EEXIST; here the earlier one wins);
//! - arguments compare as unsigned 64-bit numbers, in two 32-bit halves, on 64-bit
//!   architectures; on 32-bit ones (x86, x32 and arm, as libseccomp sizes them) only the low 32
//!   bits, against the rule's value truncated to 32 bits. SCMP_CMP_MASKED_EQ is
//!   `arg & value == valueTwo & value`; a masked comparison with a zero mask always holds and is
//!   dropped;
//! - on x86, the socket and SysV IPC syscalls also match in their multiplexed form,
//!   `socketcall(2)` or `ipc(2)` with argument 0 equal to the call number (which replaces the
//!   rule's own condition on argument 0; its other conditions are kept), as libseccomp does: an
//!   i386 process cannot get past a rule on `socket` by calling socketcall.
//!
//! The program is a binary search over the syscall numbers (consecutive numbers with the same
//! plain action share one interval), so a syscall costs about ten comparisons, and every path
//! ends in a return; the kernel's action cache still sees the syscalls it allows regardless of
//! their arguments.

use oci_spec::runtime::{Arch as OciArch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use oci_spec::runtime::{LinuxSeccompFilterFlag, LinuxSyscall};
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

/// The kernel's limit on the length of a classic BPF program (BPF_MAXINSNS).
pub const MAX_INSTRUCTIONS: usize = 4096;

/// `flags` of `seccomp(SECCOMP_SET_MODE_FILTER, ...)`, include/uapi/linux/seccomp.h.
pub const SECCOMP_FILTER_FLAG_TSYNC: u32 = 1 << 0;
pub const SECCOMP_FILTER_FLAG_LOG: u32 = 1 << 1;
pub const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u32 = 1 << 2;

/// The actions a profile may use, as runc's `features` names them (SCMP_ACT_NOTIFY is not one:
/// it needs a seccomp agent, which usernsrs does not run).
pub const ACTIONS: [&str; 8] = [
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];

/// The argument comparisons, as runc's `features` names them.
pub const OPERATORS: [&str; 7] = [
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];

/// The filter flags the runtime-spec defines (and runc knows), in runc's order.
pub const KNOWN_FLAGS: [&str; 4] = [
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
];

/// The flags usernsrs passes to the kernel, with their bits; WAIT_KILLABLE_RECV is known but
/// refused (it applies to SCMP_ACT_NOTIFY only). Whether the running kernel has each is for the
/// caller to probe.
pub const APPLICABLE_FLAGS: [(&str, u32); 3] = [
    ("SECCOMP_FILTER_FLAG_TSYNC", SECCOMP_FILTER_FLAG_TSYNC),
    (
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        SECCOMP_FILTER_FLAG_SPEC_ALLOW,
    ),
    ("SECCOMP_FILTER_FLAG_LOG", SECCOMP_FILTER_FLAG_LOG),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error(
        "{field} is SCMP_ACT_NOTIFY, which usernsrs does not support (it runs no seccomp agent)"
    )]
    Notify { field: String },
    #[error(
        "linux.seccomp.{field} is set, but usernsrs does not support SCMP_ACT_NOTIFY (it runs no \
         seccomp agent)"
    )]
    Listener { field: &'static str },
    #[error(
        "linux.seccomp.flags: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV applies only to \
         SCMP_ACT_NOTIFY, which usernsrs does not support"
    )]
    WaitKillableRecv,
    #[error("{field} {value} is out of range: an errno is 0 to 4095")]
    Errno { field: String, value: u32 },
    #[error("{field} {value} is out of range: SCMP_ACT_TRACE hands the tracer 0 to 65535")]
    TraceData { field: String, value: u32 },
    #[error("{field} {value} is out of range: a syscall has arguments 0 to 5")]
    ArgIndex { field: String, value: usize },
    #[error("{field} is empty: not a syscall name")]
    EmptyName { field: String },
    #[error("{field}: unknown {what} {value:?}")]
    UnknownName {
        field: String,
        what: &'static str,
        value: String,
    },
    #[error(
        "linux.seccomp compiles to {count} BPF instructions, more than the kernel's limit of \
         {MAX_INSTRUCTIONS}"
    )]
    TooLong { count: usize },
    #[error(
        "linux.seccomp: seccomp filters are not supported on {0}: usernsrs has the syscall \
         tables of x86_64 and aarch64"
    )]
    NativeArch(&'static str),
}

/// An architecture whose syscalls the filter can tell apart. x32 is x86_64's other ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    X86_64,
    X86,
    X32,
    Aarch64,
    Arm,
}

// AUDIT_ARCH_*, include/uapi/linux/audit.h: the ELF machine, 64BIT (0x80000000), LE (0x40000000).
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
/// `__X32_SYSCALL_BIT`, arch/x86/include/uapi/asm/unistd.h.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const ENOSYS: u16 = 38;
const EPERM: u16 = 1;

impl Arch {
    pub const ALL: [Arch; 5] = [Arch::X86_64, Arch::X86, Arch::X32, Arch::Aarch64, Arch::Arm];

    /// The architecture this binary runs on.
    pub fn native() -> Result<Arch, SeccompError> {
        if cfg!(target_arch = "x86_64") {
            Ok(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Ok(Arch::Aarch64)
        } else {
            Err(SeccompError::NativeArch(std::env::consts::ARCH))
        }
    }

    pub fn oci_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "SCMP_ARCH_X86_64",
            Arch::X86 => "SCMP_ARCH_X86",
            Arch::X32 => "SCMP_ARCH_X32",
            Arch::Aarch64 => "SCMP_ARCH_AARCH64",
            Arch::Arm => "SCMP_ARCH_ARM",
        }
    }

    /// `seccomp_data.arch` of this architecture's syscalls.
    fn audit(self) -> u32 {
        match self {
            Arch::X86_64 | Arch::X32 => AUDIT_ARCH_X86_64,
            Arch::X86 => AUDIT_ARCH_I386,
            Arch::Aarch64 => AUDIT_ARCH_AARCH64,
            Arch::Arm => AUDIT_ARCH_ARM,
        }
    }

    /// Whether arguments compare on all 64 bits (libseccomp's ARCH_SIZE_64).
    fn wide(self) -> bool {
        matches!(self, Arch::X86_64 | Arch::Aarch64)
    }

    /// Whether a kernel of architecture `native` runs syscalls of this one.
    pub fn runs_on(self, native: Arch) -> bool {
        match native {
            Arch::X86_64 => matches!(self, Arch::X86_64 | Arch::X86 | Arch::X32),
            Arch::Aarch64 => matches!(self, Arch::Aarch64 | Arch::Arm),
            other => self == other,
        }
    }

    /// The architecture an OCI name means here; `None` for one without a table here (which
    /// cannot occur on a kernel of a native architecture usernsrs supports).
    fn from_oci(arch: OciArch, native: Arch) -> Option<Arch> {
        match arch {
            OciArch::ScmpArchNative => Some(native),
            OciArch::ScmpArchX86_64 => Some(Arch::X86_64),
            OciArch::ScmpArchX86 => Some(Arch::X86),
            OciArch::ScmpArchX32 => Some(Arch::X32),
            OciArch::ScmpArchAarch64 => Some(Arch::Aarch64),
            OciArch::ScmpArchArm => Some(Arch::Arm),
            _ => None,
        }
    }

    /// The syscall number of `name` on this architecture (x32's with bit 30 set).
    pub fn number(self, name: &str) -> Option<u32> {
        let table = |id: i32| u32::try_from(id).ok();
        let newer = || {
            NEWER_THAN_TABLES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|e| e.1)
        };
        match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::from_str(name)
                .ok()
                .and_then(|s| table(s.id()))
                .or_else(newer),
            Arch::X86 => syscalls::x86::Sysno::from_str(name)
                .ok()
                .and_then(|s| table(s.id()))
                .or_else(newer),
            Arch::X32 => {
                if X86_64_ONLY.contains(&name) {
                    return None;
                }
                X32_RENUMBERED
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|e| e.1)
                    .or_else(|| Arch::X86_64.number(name))
                    .map(|nr| nr | X32_SYSCALL_BIT)
            }
            Arch::Aarch64 => {
                if name == "newfstatat" {
                    // libseccomp's (and glibc's) name for what the generic table calls fstatat.
                    return Some(79);
                }
                if name.ends_with("time64") {
                    // The crate's generic table has the 32-bit time64 syscalls (403-423), which
                    // a 64-bit kernel does not: libseccomp does not resolve them on aarch64.
                    return None;
                }
                syscalls::aarch64::Sysno::from_str(name)
                    .ok()
                    .and_then(|s| table(s.id()))
                    .or_else(newer)
            }
            Arch::Arm => syscalls::arm::Sysno::from_str(name)
                .ok()
                .and_then(|s| table(s.id()))
                .or_else(|| ARM_PRIVATE.iter().find(|(n, _)| *n == name).map(|e| e.1))
                .or_else(newer),
        }
    }

    /// Where a rule on `name` applies on this architecture: the direct syscall and, on x86, the
    /// multiplexed socketcall/ipc form with its call number.
    fn targets(self, name: &str) -> Vec<Target> {
        let mut out = Vec::new();
        if self == Arch::X86 {
            let muxed = SOCKETCALLS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|&(_, call)| (X86_NR_SOCKETCALL, call))
                .or_else(|| {
                    IPC_CALLS
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|&(_, call)| (X86_NR_IPC, call))
                });
            if let Some((nr, call)) = muxed {
                out.push(Target {
                    nr,
                    call: Some(call),
                });
            }
        }
        if let Some(nr) = self.number(name) {
            out.push(Target { nr, call: None });
        }
        out
    }
}

/// Syscalls newer than the `syscalls` crate's tables: one number on x86, x86_64 (x32 adds bit
/// 30), arm and aarch64 alike (kernel 6.19's syscall tables).
const NEWER_THAN_TABLES: [(&str, u32); 1] = [("listns", 470)];

/// x86_64 syscalls the x32 ABI does not have: the "64" entries of the kernel's
/// arch/x86/entry/syscalls/syscall_64.tbl without an "x32" counterpart.
const X86_64_ONLY: [&str; 12] = [
    "uselib",
    "_sysctl",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "nfsservctl",
    "set_thread_area",
    "get_thread_area",
    "epoll_ctl_old",
    "epoll_wait_old",
    "vserver",
    "map_shadow_stack",
];

/// x32's own numbers (before bit 30) for the syscalls whose x86_64 entry is "64" only: the "x32"
/// entries 512-547 of syscall_64.tbl.
const X32_RENUMBERED: [(&str, u32); 36] = [
    ("rt_sigaction", 512),
    ("rt_sigreturn", 513),
    ("ioctl", 514),
    ("readv", 515),
    ("writev", 516),
    ("recvfrom", 517),
    ("sendmsg", 518),
    ("recvmsg", 519),
    ("execve", 520),
    ("ptrace", 521),
    ("rt_sigpending", 522),
    ("rt_sigtimedwait", 523),
    ("rt_sigqueueinfo", 524),
    ("sigaltstack", 525),
    ("timer_create", 526),
    ("mq_notify", 527),
    ("kexec_load", 528),
    ("waitid", 529),
    ("set_robust_list", 530),
    ("get_robust_list", 531),
    ("vmsplice", 532),
    ("move_pages", 533),
    ("preadv", 534),
    ("pwritev", 535),
    ("rt_tgsigqueueinfo", 536),
    ("recvmmsg", 537),
    ("sendmmsg", 538),
    ("process_vm_readv", 539),
    ("process_vm_writev", 540),
    ("setsockopt", 541),
    ("getsockopt", 542),
    ("io_setup", 543),
    ("io_submit", 544),
    ("execveat", 545),
    ("preadv2", 546),
    ("pwritev2", 547),
];

/// ARM's private syscalls, `__ARM_NR_BASE` (0x0f0000) plus their number,
/// arch/arm/include/uapi/asm/unistd.h.
const ARM_PRIVATE: [(&str, u32); 6] = [
    ("breakpoint", 0x0f_0001),
    ("cacheflush", 0x0f_0002),
    ("usr26", 0x0f_0003),
    ("usr32", 0x0f_0004),
    ("set_tls", 0x0f_0005),
    ("get_tls", 0x0f_0006),
];

const X86_NR_SOCKETCALL: u32 = 102;
const X86_NR_IPC: u32 = 117;

/// `socketcall(2)` call numbers, SYS_* of include/uapi/linux/net.h.
const SOCKETCALLS: [(&str, u32); 20] = [
    ("socket", 1),
    ("bind", 2),
    ("connect", 3),
    ("listen", 4),
    ("accept", 5),
    ("getsockname", 6),
    ("getpeername", 7),
    ("socketpair", 8),
    ("send", 9),
    ("recv", 10),
    ("sendto", 11),
    ("recvfrom", 12),
    ("shutdown", 13),
    ("setsockopt", 14),
    ("getsockopt", 15),
    ("sendmsg", 16),
    ("recvmsg", 17),
    ("accept4", 18),
    ("recvmmsg", 19),
    ("sendmmsg", 20),
];

/// `ipc(2)` call numbers, include/uapi/linux/ipc.h.
const IPC_CALLS: [(&str, u32); 12] = [
    ("semop", 1),
    ("semget", 2),
    ("semctl", 3),
    ("semtimedop", 4),
    ("msgsnd", 11),
    ("msgrcv", 12),
    ("msgget", 13),
    ("msgctl", 14),
    ("shmat", 21),
    ("shmdt", 22),
    ("shmget", 23),
    ("shmctl", 24),
];

/// Where a rule applies: syscall `nr`, and with `call` only when argument 0 is that call
/// number (x86's socketcall and ipc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    nr: u32,
    call: Option<u32>,
}

/// What the kernel does with a syscall, SECCOMP_RET_* of include/uapi/linux/seccomp.h.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    KillProcess,
    KillThread,
    Trap,
    Errno(u16),
    Trace(u16),
    Log,
    Allow,
}

impl Action {
    /// The filter's return value.
    pub fn ret(self) -> u32 {
        match self {
            Action::KillProcess => 0x8000_0000,
            Action::KillThread => 0x0000_0000,
            Action::Trap => 0x0003_0000,
            Action::Errno(errno) => 0x0005_0000 | u32::from(errno),
            Action::Trace(data) => 0x7ff0_0000 | u32::from(data),
            Action::Log => 0x7ffc_0000,
            Action::Allow => 0x7fff_0000,
        }
    }

    /// runc's "allow actions": with one of them as the default there is no -ENOSYS stub.
    fn lets_through(self) -> bool {
        matches!(self, Action::Allow | Action::Log | Action::Trace(_))
    }

    /// The OCI action with its `errnoRet`; `field` names the action in errors.
    fn from_oci(
        action: LinuxSeccompAction,
        errno_ret: Option<u32>,
        field: &str,
        errno_field: &str,
    ) -> Result<Action, SeccompError> {
        Ok(match action {
            LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
                Action::KillThread
            }
            LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
            LinuxSeccompAction::ScmpActTrap => Action::Trap,
            LinuxSeccompAction::ScmpActErrno => match errno_ret {
                None => Action::Errno(EPERM),
                Some(value) if value <= 4095 => Action::Errno(value as u16),
                Some(value) => {
                    return Err(SeccompError::Errno {
                        field: errno_field.to_string(),
                        value,
                    })
                }
            },
            LinuxSeccompAction::ScmpActTrace => match errno_ret {
                // runc's default message for the tracer is EPERM too.
                None => Action::Trace(EPERM),
                Some(value) => {
                    Action::Trace(u16::try_from(value).map_err(|_| SeccompError::TraceData {
                        field: errno_field.to_string(),
                        value,
                    })?)
                }
            },
            LinuxSeccompAction::ScmpActLog => Action::Log,
            LinuxSeccompAction::ScmpActAllow => Action::Allow,
            LinuxSeccompAction::ScmpActNotify => {
                return Err(SeccompError::Notify {
                    field: field.to_string(),
                })
            }
        })
    }
}

/// One argument comparison of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cond {
    index: u8,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: u64,
}

impl Cond {
    /// A masked comparison with no bit in the mask (in the compared width) always holds.
    fn always_holds(&self, wide: bool) -> bool {
        self.op == LinuxSeccompOperator::ScmpCmpMaskedEq
            && if wide {
                self.value == 0
            } else {
                self.value as u32 == 0
            }
    }
}

/// A profile rule after validation: its names, action and the alternatives of conditions
/// (one set unless runc's split applies; an empty set is unconditional).
struct Rule {
    names: Vec<String>,
    action: Action,
    alternatives: Vec<Vec<Cond>>,
}

fn rule_from_oci(i: usize, rule: &LinuxSyscall) -> Result<Rule, SeccompError> {
    let field = format!("linux.seccomp.syscalls[{i}]");
    let action = Action::from_oci(
        rule.action(),
        rule.errno_ret(),
        &format!("{field}.action"),
        &format!("{field}.errnoRet"),
    )?;
    for (j, name) in rule.names().iter().enumerate() {
        if name.is_empty() {
            return Err(SeccompError::EmptyName {
                field: format!("{field}.names[{j}]"),
            });
        }
    }
    let mut conds = Vec::new();
    for (j, arg) in rule.args().iter().flatten().enumerate() {
        let index = u8::try_from(arg.index())
            .ok()
            .filter(|&i| i < 6)
            .ok_or_else(|| SeccompError::ArgIndex {
                field: format!("{field}.args[{j}].index"),
                value: arg.index(),
            })?;
        conds.push(Cond {
            index,
            op: arg.op(),
            value: arg.value(),
            value_two: arg.value_two().unwrap_or(0),
        });
    }
    let repeated = (0..6u8).any(|i| conds.iter().filter(|c| c.index == i).count() > 1);
    let alternatives = if repeated {
        conds.into_iter().map(|c| vec![c]).collect()
    } else {
        vec![conds]
    };
    Ok(Rule {
        names: rule.names().clone(),
        action,
        alternatives,
    })
}

/// One classic BPF instruction, `struct sock_filter` of include/uapi/linux/filter.h.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// The opcodes the program uses, include/uapi/linux/bpf_common.h: BPF_LD|BPF_W|BPF_ABS (0x00,
// 0x00, 0x20), BPF_ALU|BPF_AND|BPF_K, BPF_JMP|BPF_JA, BPF_JMP|BPF_JEQ/JGT/JGE|BPF_K, BPF_RET|BPF_K.
const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x04 | 0x50;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x05 | 0x10;
const JMP_JGT_K: u16 = 0x05 | 0x20;
const JMP_JGE_K: u16 = 0x05 | 0x30;
const RET_K: u16 = 0x06;

// Offsets in `struct seccomp_data`: nr, arch, instruction_pointer, args[6] (little-endian).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const fn arg_low(index: u8) -> u32 {
    16 + 8 * index as u32
}

fn stmt(code: u16, k: u32) -> Instruction {
    Instruction {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// What a filter needs: the program and the `seccomp(2)` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub program: Vec<Instruction>,
    pub flags: u32,
}

impl Filter {
    /// The names of the flags, for messages.
    pub fn flag_names(&self) -> Vec<&'static str> {
        APPLICABLE_FLAGS
            .iter()
            .filter(|(_, bit)| self.flags & bit != 0)
            .map(|(name, _)| *name)
            .collect()
    }
}

/// Compiles `profile` for a kernel of architecture `native`.
pub fn compile(profile: &LinuxSeccomp, native: Arch) -> Result<Filter, SeccompError> {
    if profile.listener_path().is_some() {
        return Err(SeccompError::Listener {
            field: "listenerPath",
        });
    }
    if profile.listener_metadata().is_some() {
        return Err(SeccompError::Listener {
            field: "listenerMetadata",
        });
    }
    let mut flags = 0;
    for flag in profile.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(SeccompError::WaitKillableRecv)
            }
        };
    }
    let default = Action::from_oci(
        profile.default_action(),
        profile.default_errno_ret(),
        "linux.seccomp.defaultAction",
        "linux.seccomp.defaultErrnoRet",
    )?;
    let rules = profile
        .syscalls()
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule_from_oci(i, r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut arches = BTreeSet::from([native]);
    arches.extend(
        profile
            .architectures()
            .iter()
            .flatten()
            .filter_map(|a| Arch::from_oci(*a, native))
            .filter(|a| a.runs_on(native)),
    );

    let stub = !default.lets_through();
    let mut sections: Vec<(u32, Vec<Instruction>)> = Vec::new();
    // The native architecture's section first: its syscalls are the common case.
    let mut tokens: Vec<u32> = vec![native.audit()];
    for a in &arches {
        if !tokens.contains(&a.audit()) {
            tokens.push(a.audit());
        }
    }
    for token in tokens {
        let abis: Vec<Arch> = arches
            .iter()
            .copied()
            .filter(|a| a.audit() == token)
            .collect();
        let mut points = BTreeMap::new();
        let mut max = BTreeMap::new();
        for &abi in &abis {
            let (p, m) = abi_rules(abi, &rules, default);
            points.extend(p);
            max.insert(abi, m);
        }
        let background = if token == AUDIT_ARCH_X86_64 {
            x86_64_background(
                abis.contains(&Arch::X32),
                max.get(&Arch::X86_64).copied().flatten(),
                max.get(&Arch::X32).copied().flatten(),
                stub,
                default,
            )
        } else {
            let m = abis.first().and_then(|a| max.get(a)).copied().flatten();
            split_at_max(0, u32::MAX, m, stub, default)
        };
        let intervals = intervals(&background, points);
        let mut code = vec![stmt(LD_W_ABS, DATA_NR)];
        code.extend(search(&intervals));
        sections.push((token, code));
    }

    // Dispatch on the architecture: a check and a long jump per section, then the
    // bad-architecture action.
    let head = 1 + 2 * sections.len() + 1;
    let mut program = vec![stmt(LD_W_ABS, DATA_ARCH)];
    let mut start = head;
    for (token, code) in &sections {
        program.push(Instruction {
            code: JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: *token,
        });
        let next = program.len() + 1;
        program.push(stmt(JMP_JA, jump(start - next)));
        start += code.len();
    }
    program.push(stmt(RET_K, Action::KillThread.ret()));
    for (_, code) in sections {
        program.extend(code);
    }
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLong {
            count: program.len(),
        });
    }
    Ok(Filter { program, flags })
}

/// A JA offset; programs are at most [`MAX_INSTRUCTIONS`] long, far below `u32::MAX`.
fn jump(offset: usize) -> u32 {
    u32::try_from(offset).expect("a program shorter than 2^32 instructions")
}

/// What a syscall number leads to: a constant verdict, or conditional rules tried in order
/// before `fallback`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Leaf {
    Ret(u32),
    Rules {
        rules: Vec<(Vec<Cond>, Action)>,
        fallback: u32,
        wide: bool,
    },
}

/// The rules of `abi`: per syscall number its leaf, and the largest number the profile names
/// for it (for the -ENOSYS stub; rules dropped for having the default action count too, as in
/// runc).
fn abi_rules(abi: Arch, rules: &[Rule], default: Action) -> (BTreeMap<u32, Leaf>, Option<u32>) {
    #[derive(Default)]
    struct Entry {
        unconditional: Option<Action>,
        conditional: Vec<(Vec<Cond>, Action)>,
    }
    let wide = abi.wide();
    let mut entries: BTreeMap<u32, Entry> = BTreeMap::new();
    let mut max = None;
    for rule in rules {
        for name in &rule.names {
            if let Some(nr) = abi.number(name) {
                max = max.max(Some(nr));
            }
            if rule.action == default {
                continue;
            }
            for target in abi.targets(name) {
                for alternative in &rule.alternatives {
                    let mut conds: Vec<Cond> = match target.call {
                        None => alternative.clone(),
                        Some(call) => std::iter::once(Cond {
                            index: 0,
                            op: LinuxSeccompOperator::ScmpCmpEq,
                            value: u64::from(call),
                            value_two: 0,
                        })
                        .chain(alternative.iter().copied().filter(|c| c.index != 0))
                        .collect(),
                    };
                    conds.retain(|c| !c.always_holds(wide));
                    let entry = entries.entry(target.nr).or_default();
                    if entry.unconditional.is_some() {
                        continue;
                    }
                    if conds.is_empty() {
                        entry.unconditional = Some(rule.action);
                    } else {
                        entry.conditional.push((conds, rule.action));
                    }
                }
            }
        }
    }
    let leaves = entries
        .into_iter()
        .map(|(nr, e)| {
            let leaf = match e.unconditional {
                Some(action) => Leaf::Ret(action.ret()),
                None => Leaf::Rules {
                    rules: e.conditional,
                    fallback: default.ret(),
                    wide,
                },
            };
            (nr, leaf)
        })
        .collect();
    (leaves, max)
}

/// `[start, end]` with the default verdict up to `max` and, with the -ENOSYS stub, ENOSYS above.
fn split_at_max(
    start: u32,
    end: u32,
    max: Option<u32>,
    stub: bool,
    default: Action,
) -> Vec<(u32, u32, u32)> {
    match max {
        Some(m) if stub && m < end => {
            let mut out = Vec::new();
            let above = if m >= start {
                out.push((start, m, default.ret()));
                m + 1
            } else {
                start
            };
            out.push((above, end, Action::Errno(ENOSYS).ret()));
            out
        }
        _ => vec![(start, end, default.ret())],
    }
}

/// The verdicts of AUDIT_ARCH_X86_64 syscalls before their rules, by range of `nr`: x86_64
/// numbers, x32 numbers (bit 30), and the rest, as runc's stub and then libseccomp's ABI check
/// treat them (see the module header).
fn x86_64_background(
    x32: bool,
    max_64: Option<u32>,
    max_x32: Option<u32>,
    stub: bool,
    default: Action,
) -> Vec<(u32, u32, u32)> {
    let enosys = Action::Errno(ENOSYS).ret();
    let bad = Action::KillThread.ret();
    let stub_64 = stub && max_64.is_some();
    let stub_x32 = stub && max_x32.is_some();
    let mut out = split_at_max(0, 0x3fff_ffff, max_64, stub, default);
    if x32 {
        out.extend(split_at_max(
            0x4000_0000,
            0x7fff_ffff,
            max_x32,
            stub,
            default,
        ));
        out.push((
            0x8000_0000,
            0xbfff_ffff,
            if stub_64 { enosys } else { default.ret() },
        ));
        out.push((
            0xc000_0000,
            0xffff_ffff,
            if stub_x32 { enosys } else { default.ret() },
        ));
    } else {
        out.push((0x4000_0000, 0x7fff_ffff, bad));
        out.push((0x8000_0000, 0xbfff_ffff, if stub_64 { enosys } else { bad }));
        out.push((0xc000_0000, 0xffff_fffe, bad));
        out.push((0xffff_ffff, 0xffff_ffff, default.ret()));
    }
    out
}

/// Sorted intervals covering every `nr`, each given by its first number: the `background`
/// verdicts (contiguous, from 0 to `u32::MAX`) with each syscall's own leaf laid over them, and
/// neighbours with the same constant verdict merged.
fn intervals(background: &[(u32, u32, u32)], mut points: BTreeMap<u32, Leaf>) -> Vec<(u32, Leaf)> {
    let mut out: Vec<(u32, Leaf)> = Vec::new();
    let mut push = |start: u32, leaf: Leaf| match out.last() {
        Some((_, last)) if *last == leaf && matches!(leaf, Leaf::Ret(_)) => {}
        _ => out.push((start, leaf)),
    };
    for &(start, end, ret) in background {
        let mut next = Some(start);
        let inside: Vec<u32> = points.range(start..=end).map(|(nr, _)| *nr).collect();
        for nr in inside {
            let leaf = points.remove(&nr).expect("the number was just listed");
            if let Some(n) = next.filter(|&n| n < nr) {
                push(n, Leaf::Ret(ret));
            }
            push(nr, leaf);
            next = nr.checked_add(1);
        }
        if let Some(n) = next.filter(|&n| n <= end) {
            push(n, Leaf::Ret(ret));
        }
    }
    out
}

/// A binary search over `intervals` (A holds `nr`): every path ends in the return of the
/// interval `nr` falls in.
fn search(intervals: &[(u32, Leaf)]) -> Vec<Instruction> {
    if let [(_, leaf)] = intervals {
        return leaf_code(leaf);
    }
    let mid = intervals.len() / 2;
    let left = search(&intervals[..mid]);
    let right = search(&intervals[mid..]);
    let pivot = intervals[mid].0;
    let mut out = Vec::with_capacity(left.len() + right.len() + 2);
    match u8::try_from(left.len()) {
        Ok(jt) => out.push(Instruction {
            code: JMP_JGE_K,
            jt,
            jf: 0,
            k: pivot,
        }),
        Err(_) => {
            out.push(Instruction {
                code: JMP_JGE_K,
                jt: 0,
                jf: 1,
                k: pivot,
            });
            out.push(stmt(JMP_JA, jump(left.len())));
        }
    }
    out.extend(left);
    out.extend(right);
    out
}

fn leaf_code(leaf: &Leaf) -> Vec<Instruction> {
    match leaf {
        Leaf::Ret(ret) => vec![stmt(RET_K, *ret)],
        Leaf::Rules {
            rules,
            fallback,
            wide,
        } => {
            let mut out = Vec::new();
            for (conds, action) in rules {
                out.extend(rule_code(conds, *action, *wide));
            }
            out.push(stmt(RET_K, *fallback));
            out
        }
    }
}

/// Where a comparison's jump goes: the next instruction, past the comparison (it holds), or
/// past the rule (it does not).
#[derive(Clone, Copy)]
enum To {
    Next,
    Holds,
    Fails,
}

/// The conditions of one rule, then the return of its action; a failed condition jumps past
/// that return, to the next rule.
fn rule_code(conds: &[Cond], action: Action, wide: bool) -> Vec<Instruction> {
    let mut tail = vec![stmt(RET_K, action.ret())];
    for cond in conds.iter().rev() {
        let mut code = cond_code(cond, wide, tail.len());
        code.extend(tail);
        tail = code;
    }
    tail
}

/// The comparison `cond`, followed by `rest` instructions up to the failure target.
fn cond_code(cond: &Cond, wide: bool, rest: usize) -> Vec<Instruction> {
    use LinuxSeccompOperator::*;
    let low = arg_low(cond.index);
    let high = low + 4;
    let (vl, vh) = (cond.value as u32, (cond.value >> 32) as u32);
    let ld = |off| (LD_W_ABS, off, To::Next, To::Next);
    let mut ops: Vec<(u16, u32, To, To)> = Vec::new();
    match (cond.op, wide) {
        (ScmpCmpEq, true) => ops.extend([
            ld(high),
            (JMP_JEQ_K, vh, To::Next, To::Fails),
            ld(low),
            (JMP_JEQ_K, vl, To::Next, To::Fails),
        ]),
        (ScmpCmpNe, true) => ops.extend([
            ld(high),
            (JMP_JEQ_K, vh, To::Next, To::Holds),
            ld(low),
            (JMP_JEQ_K, vl, To::Fails, To::Next),
        ]),
        (ScmpCmpGt, true) | (ScmpCmpGe, true) => ops.extend([
            ld(high),
            (JMP_JGT_K, vh, To::Holds, To::Next),
            (JMP_JEQ_K, vh, To::Next, To::Fails),
            ld(low),
            (
                if cond.op == ScmpCmpGt {
                    JMP_JGT_K
                } else {
                    JMP_JGE_K
                },
                vl,
                To::Next,
                To::Fails,
            ),
        ]),
        (ScmpCmpLt, true) | (ScmpCmpLe, true) => ops.extend([
            ld(high),
            (JMP_JGT_K, vh, To::Fails, To::Next),
            (JMP_JEQ_K, vh, To::Next, To::Holds),
            ld(low),
            (
                if cond.op == ScmpCmpLt {
                    JMP_JGE_K
                } else {
                    JMP_JGT_K
                },
                vl,
                To::Fails,
                To::Next,
            ),
        ]),
        (ScmpCmpEq, false) => ops.extend([ld(low), (JMP_JEQ_K, vl, To::Next, To::Fails)]),
        (ScmpCmpNe, false) => ops.extend([ld(low), (JMP_JEQ_K, vl, To::Fails, To::Next)]),
        (ScmpCmpGt, false) => ops.extend([ld(low), (JMP_JGT_K, vl, To::Next, To::Fails)]),
        (ScmpCmpGe, false) => ops.extend([ld(low), (JMP_JGE_K, vl, To::Next, To::Fails)]),
        (ScmpCmpLt, false) => ops.extend([ld(low), (JMP_JGE_K, vl, To::Fails, To::Next)]),
        (ScmpCmpLe, false) => ops.extend([ld(low), (JMP_JGT_K, vl, To::Fails, To::Next)]),
        (ScmpCmpMaskedEq, _) => {
            let mask = cond.value;
            let datum = cond.value_two & mask;
            let mut half = |off, m: u32, d: u32| {
                if m != 0 {
                    ops.extend([
                        ld(off),
                        (ALU_AND_K, m, To::Next, To::Next),
                        (JMP_JEQ_K, d, To::Next, To::Fails),
                    ]);
                }
            };
            if wide {
                half(high, (mask >> 32) as u32, (datum >> 32) as u32);
            }
            half(low, mask as u32, datum as u32);
        }
    }
    let len = ops.len();
    ops.iter()
        .enumerate()
        .map(|(i, &(code, k, jt, jf))| {
            let offset = |to| match to {
                To::Next => 0,
                To::Holds => len - 1 - i,
                To::Fails => len - 1 - i + rest,
            };
            Instruction {
                code,
                jt: u8::try_from(offset(jt))
                    .expect("a rule has at most 6 conditions of at most 6 instructions"),
                jf: u8::try_from(offset(jf))
                    .expect("a rule has at most 6 conditions of at most 6 instructions"),
                k,
            }
        })
        .collect()
}

/// The first name in the raw spec's `linux.seccomp` that oci-spec would refuse to parse, as an
/// error naming its field: the spec parser's own message names neither field nor value well.
pub fn check_names(spec: &serde_json::Value) -> Result<(), SeccompError> {
    use serde_json::Value;
    let Some(seccomp) = spec.get("linux").and_then(|l| l.get("seccomp")) else {
        return Ok(());
    };
    fn known<T: serde::de::DeserializeOwned>(v: &Value) -> bool {
        serde_json::from_value::<T>(v.clone()).is_ok()
    }
    let unknown = |field: String, what, v: &Value| SeccompError::UnknownName {
        field,
        what,
        value: v.as_str().map_or_else(|| v.to_string(), str::to_string),
    };
    if let Some(v) = seccomp.get("defaultAction") {
        if !known::<LinuxSeccompAction>(v) {
            return Err(unknown("linux.seccomp.defaultAction".into(), "action", v));
        }
    }
    for (i, v) in seccomp
        .get("architectures")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !known::<OciArch>(v) {
            return Err(unknown(
                format!("linux.seccomp.architectures[{i}]"),
                "architecture",
                v,
            ));
        }
    }
    for (i, v) in seccomp
        .get("flags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !known::<LinuxSeccompFilterFlag>(v) {
            return Err(unknown(format!("linux.seccomp.flags[{i}]"), "flag", v));
        }
    }
    for (i, rule) in seccomp
        .get("syscalls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(v) = rule.get("action") {
            if !known::<LinuxSeccompAction>(v) {
                return Err(unknown(
                    format!("linux.seccomp.syscalls[{i}].action"),
                    "action",
                    v,
                ));
            }
        }
        for (j, arg) in rule
            .get("args")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(v) = arg.get("op") {
                if !known::<LinuxSeccompOperator>(v) {
                    return Err(unknown(
                        format!("linux.seccomp.syscalls[{i}].args[{j}].op"),
                        "operator",
                        v,
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxSeccompArg;

    /// The part of `struct seccomp_data` a filter reads.
    #[derive(Debug, Clone, Copy)]
    struct Data {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    const AUDIT_ARCH_PPC64LE: u32 = 0xc000_0015;
    const BAD_ARCH: u32 = 0;
    const ENOSYS_RET: u32 = 0x0005_0000 | 38;

    fn word(d: &Data, off: u32) -> u32 {
        match off {
            0 => d.nr,
            4 => d.arch,
            8 | 12 => 0x5eed,
            16..=63 => {
                let arg = d.args[((off - 16) / 8) as usize];
                if (off - 16) % 8 == 0 {
                    arg as u32
                } else {
                    (arg >> 32) as u32
                }
            }
            _ => panic!("load of offset {off}, outside seccomp_data"),
        }
    }

    /// What the kernel's checker (`seccomp_check_filter`, `bpf_check_classic`) requires, and
    /// that only the opcodes this module emits appear.
    fn check_program(program: &[Instruction]) {
        assert!(!program.is_empty() && program.len() <= MAX_INSTRUCTIONS);
        for (i, ins) in program.iter().enumerate() {
            let target = |off: u32| {
                assert!(
                    i + 1 + (off as usize) < program.len(),
                    "jump out of the program at {i}: {ins:?}"
                )
            };
            match ins.code {
                LD_W_ABS => assert!(ins.k % 4 == 0 && ins.k < 64, "load at {i}: {ins:?}"),
                ALU_AND_K | RET_K => {}
                JMP_JA => target(ins.k),
                JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                    target(u32::from(ins.jt));
                    target(u32::from(ins.jf));
                }
                other => panic!("opcode {other:#x} at {i}"),
            }
        }
        assert_eq!(
            program.last().map(|i| i.code),
            Some(RET_K),
            "last is a return"
        );
    }

    /// A classic BPF interpreter for the instructions above.
    fn run(program: &[Instruction], d: &Data) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let ins = program[pc];
            pc += 1;
            match ins.code {
                LD_W_ABS => a = word(d, ins.k),
                ALU_AND_K => a &= ins.k,
                JMP_JA => pc += ins.k as usize,
                JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                    let taken = match ins.code {
                        JMP_JEQ_K => a == ins.k,
                        JMP_JGT_K => a > ins.k,
                        _ => a >= ins.k,
                    };
                    pc += usize::from(if taken { ins.jt } else { ins.jf });
                }
                RET_K => return ins.k,
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Action {
        Action::from_oci(a, errno, "action", "errnoRet").expect("a valid action")
    }

    fn listed_arches(p: &LinuxSeccomp, native: Arch) -> Vec<Arch> {
        let mut arches = vec![native];
        for a in p.architectures().iter().flatten() {
            if let Some(a) = Arch::from_oci(*a, native).filter(|a| a.runs_on(native)) {
                if !arches.contains(&a) {
                    arches.push(a);
                }
            }
        }
        arches
    }

    /// The profile as runc runs it, written the way runc and libseccomp describe it: first
    /// runc's -ENOSYS stub, then libseccomp's architecture and x32 checks, then the rules,
    /// with the arguments compared as whole numbers. Name lookups are done once.
    struct Model<'a> {
        p: &'a LinuxSeccomp,
        default: Action,
        arches: Vec<Arch>,
        targets: std::collections::HashMap<(Arch, &'a str), Vec<Target>>,
        max: std::collections::HashMap<Arch, Option<u32>>,
    }

    impl<'a> Model<'a> {
        fn new(p: &'a LinuxSeccomp, native: Arch) -> Self {
            let names: Vec<&str> = p
                .syscalls()
                .iter()
                .flatten()
                .flat_map(|r| r.names())
                .map(String::as_str)
                .collect();
            let mut targets = std::collections::HashMap::new();
            let mut max = std::collections::HashMap::new();
            for abi in Arch::ALL {
                for &n in &names {
                    targets.insert((abi, n), abi.targets(n));
                }
                max.insert(abi, names.iter().filter_map(|n| abi.number(n)).max());
            }
            Model {
                p,
                default: action(p.default_action(), p.default_errno_ret()),
                arches: listed_arches(p, native),
                targets,
                max,
            }
        }

        fn verdict(&self, d: &Data) -> u32 {
            let abi_of_nr = match d.arch {
                AUDIT_ARCH_X86_64 if d.nr & X32_SYSCALL_BIT != 0 => Some(Arch::X32),
                AUDIT_ARCH_X86_64 => Some(Arch::X86_64),
                AUDIT_ARCH_I386 => Some(Arch::X86),
                AUDIT_ARCH_AARCH64 => Some(Arch::Aarch64),
                AUDIT_ARCH_ARM => Some(Arch::Arm),
                _ => None,
            };
            // 1. runc's stub.
            if !matches!(self.default, Action::Allow | Action::Log | Action::Trace(_)) {
                if let Some(abi) = abi_of_nr.filter(|a| self.arches.contains(a)) {
                    if self.max[&abi].is_some_and(|m| d.nr > m) {
                        return ENOSYS_RET;
                    }
                }
            }
            // 2. libseccomp: architecture, x32.
            let Some(&first) = self.arches.iter().find(|a| a.audit() == d.arch) else {
                return BAD_ARCH;
            };
            let abi = if d.arch == AUDIT_ARCH_X86_64 {
                if self.arches.contains(&Arch::X32) {
                    abi_of_nr.expect("x86_64 syscalls have an ABI")
                } else if d.nr >= X32_SYSCALL_BIT && d.nr != u32::MAX {
                    return BAD_ARCH;
                } else {
                    Arch::X86_64
                }
            } else {
                first
            };
            // 3. The rules.
            let wide = abi.wide();
            let mut unconditional = None;
            let mut conditional: Vec<(Vec<LinuxSeccompArg>, Action)> = Vec::new();
            for rule in self.p.syscalls().iter().flatten() {
                let act = action(rule.action(), rule.errno_ret());
                if act == self.default {
                    continue;
                }
                for name in rule.names() {
                    for target in self.targets[&(abi, name.as_str())]
                        .iter()
                        .filter(|t| t.nr == d.nr)
                    {
                        let args: Vec<LinuxSeccompArg> = rule.args().clone().unwrap_or_default();
                        let split = args
                            .iter()
                            .any(|a| args.iter().filter(|b| b.index() == a.index()).count() > 1);
                        let alternatives: Vec<Vec<LinuxSeccompArg>> = if split {
                            args.iter().map(|a| vec![*a]).collect()
                        } else {
                            vec![args]
                        };
                        for alternative in &alternatives {
                            let mut conds: Vec<LinuxSeccompArg> = Vec::new();
                            if let Some(call) = target.call {
                                conds.push(arg(0, LinuxSeccompOperator::ScmpCmpEq, call.into(), 0));
                                conds.extend(alternative.iter().filter(|a| a.index() != 0));
                            } else {
                                conds.extend(alternative.iter());
                            }
                            conds.retain(|c| {
                                let mask = if wide {
                                    c.value()
                                } else {
                                    c.value() & 0xffff_ffff
                                };
                                !(c.op() == LinuxSeccompOperator::ScmpCmpMaskedEq && mask == 0)
                            });
                            if conds.is_empty() {
                                unconditional = unconditional.or(Some(act));
                            } else {
                                conditional.push((conds, act));
                            }
                        }
                    }
                }
            }
            if let Some(act) = unconditional {
                return act.ret();
            }
            conditional
                .iter()
                .find(|(conds, _)| conds.iter().all(|c| holds(c, wide, &d.args)))
                .map_or(self.default.ret(), |(_, act)| act.ret())
        }
    }

    fn holds(c: &LinuxSeccompArg, wide: bool, args: &[u64; 6]) -> bool {
        let cut = |x: u64| if wide { x } else { x & 0xffff_ffff };
        let (a, v, v2) = (
            cut(args[c.index()]),
            cut(c.value()),
            cut(c.value_two().unwrap_or(0)),
        );
        use LinuxSeccompOperator::*;
        match c.op() {
            ScmpCmpEq => a == v,
            ScmpCmpNe => a != v,
            ScmpCmpLt => a < v,
            ScmpCmpLe => a <= v,
            ScmpCmpGt => a > v,
            ScmpCmpGe => a >= v,
            ScmpCmpMaskedEq => a & v == v2 & v,
        }
    }

    fn arg(index: usize, op: LinuxSeccompOperator, value: u64, value_two: u64) -> LinuxSeccompArg {
        serde_json::from_value(serde_json::json!({
            "index": index, "op": op, "value": value, "valueTwo": value_two
        }))
        .expect("an argument")
    }

    /// xorshift64*, for reproducible arguments.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// Arguments that satisfy every condition of `conds` (where one can).
    fn satisfying(conds: &[LinuxSeccompArg], base: [u64; 6]) -> [u64; 6] {
        let mut args = base;
        for c in conds {
            let (v, v2) = (c.value(), c.value_two().unwrap_or(0));
            use LinuxSeccompOperator::*;
            args[c.index()] = match c.op() {
                ScmpCmpEq | ScmpCmpGe | ScmpCmpLe => v,
                ScmpCmpNe | ScmpCmpGt => v.wrapping_add(1),
                ScmpCmpLt => v.wrapping_sub(1),
                ScmpCmpMaskedEq => (v2 & v) | (base[c.index()] & !v),
            };
        }
        args
    }

    /// Syscalls of every architecture, around every boundary the program has, with arguments
    /// around every value the rules of that syscall compare with.
    fn inputs(p: &LinuxSeccomp) -> Vec<Data> {
        let tokens = [
            AUDIT_ARCH_X86_64,
            AUDIT_ARCH_I386,
            AUDIT_ARCH_AARCH64,
            AUDIT_ARCH_ARM,
            AUDIT_ARCH_PPC64LE,
            0,
        ];
        let mut nrs: BTreeSet<u32> = (0..=600).collect();
        nrs.extend((0..=600).map(|n| n | X32_SYSCALL_BIT));
        nrs.extend(0x0f_0000..=0x0f_0010);
        nrs.extend([
            0x3fff_ffff,
            0x4000_0000,
            0x7fff_ffff,
            0x8000_0000,
            0x8000_0001,
            0xbfff_ffff,
            0xc000_0000,
            0xc000_0001,
            0xffff_fffe,
            0xffff_ffff,
        ]);
        // The rules that may apply to each number, on any architecture.
        let mut ruled: BTreeMap<u32, Vec<&LinuxSyscall>> = BTreeMap::new();
        for r in p.syscalls().iter().flatten() {
            let mut hit = BTreeSet::new();
            for abi in Arch::ALL {
                for n in r.names() {
                    hit.extend(abi.targets(n).iter().map(|t| t.nr));
                }
            }
            for nr in hit {
                ruled.entry(nr).or_default().push(r);
            }
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut out = Vec::new();
        for arch in tokens {
            for &nr in &nrs {
                out.push(Data {
                    nr,
                    arch,
                    args: [0; 6],
                });
                let Some(rules) = ruled.get(&nr) else {
                    continue;
                };
                let args: Vec<LinuxSeccompArg> = rules
                    .iter()
                    .flat_map(|r| r.args().iter().flatten().copied())
                    .collect();
                let mut values: BTreeSet<u64> =
                    BTreeSet::from([0, 1, 0xffff_ffff, 0x1_0000_0000, 1 << 63, u64::MAX]);
                for c in &args {
                    for v in [c.value(), c.value_two().unwrap_or(0)] {
                        values.extend([
                            v,
                            v.wrapping_add(1),
                            v.wrapping_sub(1),
                            v ^ (1 << 32),
                            v ^ (1 << 63),
                            v & 0xffff_ffff,
                            v | 0xffff_ffff_0000_0000,
                        ]);
                    }
                }
                let values: Vec<u64> = values.into_iter().collect();
                let mut indexes: BTreeSet<usize> = args.iter().map(|a| a.index()).collect();
                indexes.extend([0, 5]);
                let random = |rng: &mut Rng| {
                    let mut a = [0u64; 6];
                    for x in &mut a {
                        let r = rng.next();
                        *x = if r % 3 == 0 {
                            r
                        } else {
                            values[(r as usize / 3) % values.len()]
                        };
                    }
                    a
                };
                let mut bases = vec![[0; 6], random(&mut rng), random(&mut rng)];
                for r in rules {
                    let args = r.args().clone().unwrap_or_default();
                    bases.push(satisfying(&args, random(&mut rng)));
                    for a in &args {
                        bases.push(satisfying(std::slice::from_ref(a), random(&mut rng)));
                    }
                }
                for base in bases {
                    out.push(Data {
                        nr,
                        arch,
                        args: base,
                    });
                    for &i in &indexes {
                        for &v in &values {
                            let mut args = base;
                            args[i] = v;
                            out.push(Data { nr, arch, args });
                        }
                    }
                }
            }
        }
        out
    }

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).expect("a profile")
    }

    /// Compiles `p` for `native` and checks the program against the model on every input.
    fn agrees_with_model(p: &LinuxSeccomp, native: Arch) -> Filter {
        let filter = compile(p, native).expect("compile");
        check_program(&filter.program);
        let model = Model::new(p, native);
        let mut checked = 0;
        for d in inputs(p) {
            let (got, want) = (run(&filter.program, &d), model.verdict(&d));
            assert_eq!(
                got, want,
                "nr {:#x} arch {:#x} args {:x?}: program {got:#x}, model {want:#x}",
                d.nr, d.arch, d.args
            );
            checked += 1;
        }
        assert!(checked > 7_000, "only {checked} inputs");
        filter
    }

    fn verdict(filter: &Filter, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        run(&filter.program, &Data { nr, arch, args })
    }

    use serde_json::json;

    /// An allow list like containerd's default profile: every operator, 64-bit values with
    /// either half deciding, runc's split of two conditions on one argument, rules after and
    /// before unconditional ones, every action, names some architectures lack.
    fn allow_list() -> serde_json::Value {
        json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["read", "write", "close", "exit", "exit_group", "getpid", "brk",
                           "socketcall", "ioctl", "set_thread_area", "send", "no_such_syscall",
                           "rt_sigaction", "fstat", "mmap", "_llseek"],
                 "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 4294967295u64, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288u64, "valueTwo": 0,
                           "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["kill"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"},
                          {"index": 1, "value": 15, "op": "SCMP_CMP_EQ"}]},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"},
                          {"index": 1, "value": 3, "op": "SCMP_CMP_LE"}]},
                {"names": ["lseek"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 1, "value": 4294967301u64, "op": "SCMP_CMP_GT"}]},
                {"names": ["pread64"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 2, "value": 4294967301u64, "op": "SCMP_CMP_GE"}]},
                {"names": ["pwrite64"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 3, "value": 4294967301u64, "op": "SCMP_CMP_LT"}]},
                {"names": ["mprotect"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 2, "value": 4294967301u64, "op": "SCMP_CMP_LE"}]},
                {"names": ["madvise"], "action": "SCMP_ACT_LOG",
                 "args": [{"index": 5, "value": 18446744069414584320u64,
                           "valueTwo": 18446744073709551615u64, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["setns"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 1, "value": 255, "valueTwo": 7951,
                           "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["mount"], "action": "SCMP_ACT_KILL"},
                {"names": ["umount2"], "action": "SCMP_ACT_TRAP"},
                {"names": ["reboot"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
                {"names": ["syslog"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["acct"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["acct"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["acct"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["fchmod"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 1, "value": 511, "op": "SCMP_CMP_LT"}]},
                {"names": ["fchmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
                 "args": [{"index": 1, "value": 0, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["fchmod"], "action": "SCMP_ACT_KILL_THREAD"}
            ]
        })
    }

    #[test]
    fn allow_list_agrees_with_runc_and_libseccomp() {
        let f = agrees_with_model(&profile(allow_list()), Arch::X86_64);
        let x86_64 =
            |name: &str, args| verdict(&f, AUDIT_ARCH_X86_64, nr(Arch::X86_64, name), args);
        assert_eq!(x86_64("read", [0; 6]), Action::Allow.ret());
        assert_eq!(x86_64("chdir", [0; 6]), Action::Errno(1).ret());
        assert_eq!(x86_64("clone3", [0; 6]), Action::Errno(38).ret());
        assert_eq!(
            x86_64("personality", [8, 0, 0, 0, 0, 0]),
            Action::Allow.ret()
        );
        assert_eq!(
            x86_64("personality", [9, 0, 0, 0, 0, 0]),
            Action::Errno(1).ret()
        );
        // EQ 0xffffffff on a 64-bit architecture: the high half must be 0.
        assert_eq!(
            x86_64("personality", [0x1_ffff_ffff, 0, 0, 0, 0, 0]),
            Action::Errno(1).ret()
        );
        // runc's split: two conditions on argument 1 are alternatives.
        assert_eq!(x86_64("kill", [1, 15, 0, 0, 0, 0]), Action::Allow.ret());
        assert_eq!(x86_64("kill", [1, 10, 0, 0, 0, 0]), Action::Errno(1).ret());
        // Conditions on two arguments must both hold.
        assert_eq!(x86_64("socket", [1, 3, 0, 0, 0, 0]), Action::Allow.ret());
        assert_eq!(
            x86_64("socket", [40, 3, 0, 0, 0, 0]),
            Action::Errno(1).ret()
        );
        assert_eq!(x86_64("socket", [1, 4, 0, 0, 0, 0]), Action::Errno(1).ret());
        // The unconditional ALLOW for acct wins over the conditional ERRNO before it and the
        // unconditional KILL after it.
        assert_eq!(x86_64("acct", [0; 6]), Action::Allow.ret());
        // A mask of zero always holds: that rule is unconditional and wins.
        assert_eq!(
            x86_64("fchmod", [0, 0o777, 0, 0, 0, 0]),
            Action::Errno(22).ret()
        );
        // Newer than anything the profile names: ENOSYS, from runc's stub.
        assert_eq!(verdict(&f, AUDIT_ARCH_X86_64, 999, [0; 6]), ENOSYS_RET);
    }

    fn nr(arch: Arch, name: &str) -> u32 {
        arch.number(name)
            .unwrap_or_else(|| panic!("{name} on {arch:?}"))
    }

    #[test]
    fn comparisons_use_both_halves_on_64_bit_and_the_low_half_on_32_bit_arches() {
        let f = agrees_with_model(&profile(allow_list()), Arch::X86_64);
        let v = 0x1_0000_0005u64;
        for (name, index, holds, fails) in [
            ("lseek", 1, [v + 1, 0x2_0000_0000], [v, 0xffff_ffff]),
            ("pread64", 2, [v, 0x2_0000_0000], [v - 1, 6]),
            ("pwrite64", 3, [v - 1, 0xffff_ffff], [v, 0x2_0000_0000]),
            ("mprotect", 2, [v, 0x6], [v + 1, 0x2_0000_0000]),
        ] {
            for (args, want) in holds
                .iter()
                .map(|&a| (a, Action::Allow))
                .chain(fails.iter().map(|&a| (a, Action::Errno(1))))
            {
                let mut all = [0; 6];
                all[index] = args;
                assert_eq!(
                    verdict(&f, AUDIT_ARCH_X86_64, nr(Arch::X86_64, name), all),
                    want.ret(),
                    "{name} arg{index} = {args:#x} on x86_64"
                );
            }
        }
        // i386: the value is cut to 5, the argument to its low half.
        let mut all = [0; 6];
        all[1] = 0x7_0000_0006;
        assert_eq!(
            verdict(&f, AUDIT_ARCH_I386, nr(Arch::X86, "lseek"), all),
            Action::Allow.ret()
        );
        all[1] = 0x7_0000_0005;
        assert_eq!(
            verdict(&f, AUDIT_ARCH_I386, nr(Arch::X86, "lseek"), all),
            Action::Errno(1).ret()
        );
        // MASKED_EQ on the high half only: madvise's sixth argument.
        let madvise = nr(Arch::X86_64, "madvise");
        assert_eq!(
            verdict(
                &f,
                AUDIT_ARCH_X86_64,
                madvise,
                [0, 0, 0, 0, 0, 0xffff_ffff_0000_1234]
            ),
            Action::Log.ret()
        );
        assert_eq!(
            verdict(
                &f,
                AUDIT_ARCH_X86_64,
                madvise,
                [0, 0, 0, 0, 0, 0xfffe_ffff_0000_1234]
            ),
            Action::Errno(1).ret()
        );
        // The datum is masked too: setns's 0x1f0f under mask 0xff means 0x0f.
        let setns = nr(Arch::X86_64, "setns");
        assert_eq!(
            verdict(&f, AUDIT_ARCH_X86_64, setns, [0, 0x30f, 0, 0, 0, 0]),
            Action::Allow.ret()
        );
        // On i386 that mask has no low bit: the rule always holds.
        assert_eq!(
            verdict(&f, AUDIT_ARCH_I386, nr(Arch::X86, "madvise"), [0; 6]),
            Action::Log.ret()
        );
    }

    #[test]
    fn x32_syscalls_use_their_own_numbers_and_never_bypass_a_deny_list() {
        let deny = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["sethostname", "ioctl"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 42}]
        });
        let f = agrees_with_model(&profile(deny.clone()), Arch::X86_64);
        let errno = Action::Errno(42).ret();
        assert_eq!(verdict(&f, AUDIT_ARCH_X86_64, 170, [0; 6]), errno);
        assert_eq!(
            verdict(&f, AUDIT_ARCH_X86_64, 170 | X32_SYSCALL_BIT, [0; 6]),
            errno
        );
        // x32's ioctl is 514, not x86_64's 16 (which is rt_sigreturn's x32 slot... unused).
        assert_eq!(
            verdict(&f, AUDIT_ARCH_X86_64, 514 | X32_SYSCALL_BIT, [0; 6]),
            errno
        );
        assert_eq!(
            verdict(&f, AUDIT_ARCH_X86_64, 16 | X32_SYSCALL_BIT, [0; 6]),
            Action::Allow.ret()
        );
        assert_eq!(verdict(&f, AUDIT_ARCH_I386, 74, [0; 6]), errno);

        // Without SCMP_ARCH_X32, every x32 number is refused with the bad-architecture action,
        // and so is every i386 syscall without SCMP_ARCH_X86; -1 gets the default action.
        let mut only_native = deny;
        only_native["architectures"] = json!(["SCMP_ARCH_X86_64"]);
        let f = agrees_with_model(&profile(only_native), Arch::X86_64);
        for nr in [170, 39, 0x3fff] {
            assert_eq!(
                verdict(&f, AUDIT_ARCH_X86_64, nr | X32_SYSCALL_BIT, [0; 6]),
                BAD_ARCH
            );
        }
        assert_eq!(
            verdict(&f, AUDIT_ARCH_X86_64, 0x8000_0000, [0; 6]),
            BAD_ARCH
        );
        assert_eq!(
            verdict(&f, AUDIT_ARCH_X86_64, u32::MAX, [0; 6]),
            Action::Allow.ret()
        );
        assert_eq!(verdict(&f, AUDIT_ARCH_I386, 20, [0; 6]), BAD_ARCH);
        assert_eq!(
            verdict(&f, AUDIT_ARCH_X86_64, 39, [0; 6]),
            Action::Allow.ret()
        );
    }

    #[test]
    fn x86_socket_rules_also_match_the_socketcall_form() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97,
                 "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]},
                {"names": ["send", "msgget"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
            ]
        }));
        let f = agrees_with_model(&p, Arch::X86_64);
        let i386 = |nr, a0| verdict(&f, AUDIT_ARCH_I386, nr, [a0, 0, 0, 0, 0, 0]);
        // The direct socket syscall with its condition.
        assert_eq!(i386(359, 40), Action::Errno(97).ret());
        assert_eq!(i386(359, 2), Action::Allow.ret());
        // socketcall(SYS_SOCKET, args): the family is in memory, so only the call matches.
        assert_eq!(i386(102, 1), Action::Errno(97).ret());
        assert_eq!(i386(102, 3), Action::Allow.ret());
        // send has no direct syscall on x86; msgget is ipc(MSGGET) or its own syscall.
        assert_eq!(i386(102, 9), Action::Errno(13).ret());
        assert_eq!(i386(117, 13), Action::Errno(13).ret());
        assert_eq!(i386(nr(Arch::X86, "msgget"), 0), Action::Errno(13).ret());
        assert_eq!(i386(117, 12), Action::Allow.ret());
    }

    #[test]
    fn the_enosys_stub_covers_numbers_above_the_profiles_per_architecture() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_KILL_PROCESS",
            "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["read", "openat", "uselib"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["getrandom"], "action": "SCMP_ACT_KILL_PROCESS"}
            ]
        }));
        let f = agrees_with_model(&p, Arch::X86_64);
        let getrandom = nr(Arch::X86_64, "getrandom");
        // getrandom's rule has the default action and is dropped, but it is the largest
        // number named: only above it is ENOSYS.
        assert_eq!(
            verdict(&f, AUDIT_ARCH_X86_64, getrandom, [0; 6]),
            0x8000_0000
        );
        assert_eq!(
            verdict(&f, AUDIT_ARCH_X86_64, getrandom + 1, [0; 6]),
            ENOSYS_RET
        );
        let x32_max = nr(Arch::X32, "getrandom");
        assert_eq!(
            verdict(&f, AUDIT_ARCH_X86_64, x32_max + 1, [0; 6]),
            ENOSYS_RET
        );
        assert_eq!(
            verdict(&f, AUDIT_ARCH_I386, nr(Arch::X86, "getrandom") + 1, [0; 6]),
            ENOSYS_RET
        );
        // Under an allowing default there is no stub.
        let mut allowing = serde_json::to_value(&p).expect("json");
        allowing["defaultAction"] = json!("SCMP_ACT_LOG");
        let f = agrees_with_model(&profile(allowing), Arch::X86_64);
        assert_eq!(
            verdict(&f, AUDIT_ARCH_X86_64, getrandom + 1, [0; 6]),
            Action::Log.ret()
        );
    }

    #[test]
    fn aarch64_filters_arm_with_its_private_syscalls() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["set_tls", "cacheflush", "newfstatat", "clock_gettime64", "openat",
                           "listns"],
                 "action": "SCMP_ACT_ALLOW"},
                {"names": ["getpid"], "action": "SCMP_ACT_TRACE",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_GE"}]}
            ]
        }));
        let f = agrees_with_model(&p, Arch::Aarch64);
        assert_eq!(
            verdict(&f, AUDIT_ARCH_ARM, 0x0f_0005, [0; 6]),
            Action::Allow.ret()
        );
        assert_eq!(
            verdict(&f, AUDIT_ARCH_AARCH64, 79, [0; 6]),
            Action::Allow.ret()
        );
        assert_eq!(
            verdict(&f, AUDIT_ARCH_AARCH64, 470, [0; 6]),
            Action::Allow.ret()
        );
        // x86 cannot run on aarch64: no section, bad architecture.
        assert_eq!(verdict(&f, AUDIT_ARCH_I386, 20, [0; 6]), BAD_ARCH);
        assert_eq!(verdict(&f, AUDIT_ARCH_X86_64, 39, [0; 6]), BAD_ARCH);
    }

    #[test]
    fn other_profiles_agree_with_the_model() {
        for (native, p) in [
            // Default KILL_PROCESS, native only.
            (
                Arch::X86_64,
                json!({"defaultAction": "SCMP_ACT_KILL_PROCESS",
                       "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}),
            ),
            // No rules at all, x86 listed.
            (
                Arch::X86_64,
                json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"]}),
            ),
            // X32 without X86, default TRACE; arches that cannot occur here are accepted.
            (
                Arch::X86_64,
                json!({"defaultAction": "SCMP_ACT_TRACE", "defaultErrnoRet": 3,
                       "architectures": ["SCMP_ARCH_X32", "SCMP_ARCH_S390X", "SCMP_ARCH_NATIVE"],
                       "syscalls": [{"names": ["ioctl"], "action": "SCMP_ACT_ERRNO",
                                     "args": [{"index": 1, "value": 21505, "op": "SCMP_CMP_EQ"}]}]}),
            ),
            // x32 with only names x32 lacks: no stub for x32.
            (
                Arch::X86_64,
                json!({"defaultAction": "SCMP_ACT_ERRNO",
                       "architectures": ["SCMP_ARCH_X32"],
                       "syscalls": [{"names": ["uselib", "get_thread_area"],
                                     "action": "SCMP_ACT_ALLOW"}]}),
            ),
            (Arch::Aarch64, allow_list()),
        ] {
            agrees_with_model(&profile(p), native);
        }
    }

    #[test]
    fn syscall_numbers_follow_each_architectures_table() {
        assert_eq!(Arch::X86_64.number("getpid"), Some(39));
        assert_eq!(Arch::X86.number("getpid"), Some(20));
        assert_eq!(Arch::X32.number("getpid"), Some(39 | X32_SYSCALL_BIT));
        assert_eq!(Arch::X32.number("execve"), Some(520 | X32_SYSCALL_BIT));
        assert_eq!(Arch::X32.number("set_thread_area"), None);
        assert_eq!(Arch::X86_64.number("set_thread_area"), Some(205));
        assert_eq!(Arch::X86.number("socket"), Some(359));
        assert_eq!(Arch::X86.number("socketcall"), Some(102));
        assert_eq!(Arch::X86_64.number("socketcall"), None);
        assert_eq!(Arch::Aarch64.number("getpid"), Some(172));
        assert_eq!(Arch::Aarch64.number("newfstatat"), Some(79));
        assert_eq!(Arch::Aarch64.number("clock_gettime64"), None);
        assert_eq!(Arch::Arm.number("getpid"), Some(20));
        assert_eq!(Arch::Arm.number("set_tls"), Some(0x0f_0005));
        assert_eq!(Arch::X86_64.number("listns"), Some(470));
        assert_eq!(Arch::X86_64.number("no_such_syscall"), None);
        // Every renumbered x32 syscall exists on x86_64 under the same name.
        for (name, _) in X32_RENUMBERED {
            assert!(Arch::X86_64.number(name).is_some(), "{name}");
        }
    }

    #[test]
    fn a_profile_allowing_every_syscall_fits_the_kernels_limit() {
        let mut names: BTreeSet<String> = BTreeSet::new();
        names.extend(syscalls::x86_64::Sysno::iter().map(|s| s.name().to_string()));
        names.extend(syscalls::x86::Sysno::iter().map(|s| s.name().to_string()));
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": names, "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
            ]
        }));
        let f = compile(&p, Arch::X86_64).expect("compile");
        check_program(&f.program);
        // Contiguous allowed numbers share intervals: far below the limit.
        eprintln!("every syscall allowed: {} instructions", f.program.len());
        assert!(f.program.len() < 400, "{} instructions", f.program.len());
    }

    #[test]
    fn too_many_conditions_are_refused_naming_the_limit() {
        let rules: Vec<serde_json::Value> = (0..1000u64)
            .map(|v| {
                json!({"names": ["ioctl"], "action": "SCMP_ACT_ALLOW",
                       "args": [{"index": 1, "value": v << 32 | v, "op": "SCMP_CMP_EQ"}]})
            })
            .collect();
        let p = profile(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules}));
        let err = compile(&p, Arch::X86_64).expect_err("too long");
        assert!(matches!(err, SeccompError::TooLong { count } if count > MAX_INSTRUCTIONS));
        assert!(err.to_string().contains("4096"), "{err}");
    }

    #[test]
    fn flags_map_to_the_kernels_bits_and_wait_killable_recv_is_refused() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                      "SECCOMP_FILTER_FLAG_TSYNC"]
        }));
        let f = compile(&p, Arch::X86_64).expect("compile");
        assert_eq!(f.flags, 0b111);
        assert_eq!(
            f.flag_names(),
            [
                "SECCOMP_FILTER_FLAG_TSYNC",
                "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                "SECCOMP_FILTER_FLAG_LOG"
            ]
        );
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
        }));
        let err = compile(&p, Arch::X86_64).expect_err("refused");
        assert!(
            err.to_string().starts_with("linux.seccomp.flags: "),
            "{err}"
        );
    }

    #[test]
    fn refuses_what_it_cannot_do_naming_the_field() {
        for (p, field) in [
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW",
                       "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}),
                "linux.seccomp.syscalls[0].action is SCMP_ACT_NOTIFY",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_NOTIFY"}),
                "linux.seccomp.defaultAction is SCMP_ACT_NOTIFY",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}),
                "linux.seccomp.listenerPath is set",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerMetadata": "x"}),
                "linux.seccomp.listenerMetadata is set",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 4096}),
                "linux.seccomp.defaultErrnoRet 4096 is out of range",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW",
                       "syscalls": [{"names": ["read"], "action": "SCMP_ACT_TRACE",
                                     "errnoRet": 65536}]}),
                "linux.seccomp.syscalls[0].errnoRet 65536 is out of range",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW",
                       "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO"},
                                    {"names": ["write"], "action": "SCMP_ACT_ERRNO",
                                     "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}),
                "linux.seccomp.syscalls[1].args[0].index 6 is out of range",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW",
                       "syscalls": [{"names": ["read", ""], "action": "SCMP_ACT_ERRNO"}]}),
                "linux.seccomp.syscalls[0].names[1] is empty",
            ),
        ] {
            let err = compile(&profile(p), Arch::X86_64).expect_err(field);
            assert!(err.to_string().starts_with(field), "{err} (want {field})");
        }
    }

    #[test]
    fn unknown_names_in_the_raw_spec_are_refused_naming_the_field() {
        for (seccomp, want) in [
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NEW"]}),
                "linux.seccomp.flags[0]: unknown flag \"SECCOMP_FILTER_FLAG_NEW\"",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}),
                "linux.seccomp.architectures[0]: unknown architecture \"SCMP_ARCH_VAX\"",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_MAYBE"}),
                "linux.seccomp.defaultAction: unknown action \"SCMP_ACT_MAYBE\"",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW",
                       "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                     "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_IN"}]}]}),
                "linux.seccomp.syscalls[0].args[0].op: unknown operator \"SCMP_CMP_IN\"",
            ),
        ] {
            let spec = json!({"linux": {"seccomp": seccomp}});
            let err = check_names(&spec).expect_err(want);
            assert_eq!(err.to_string(), want);
        }
        let good = json!({"linux": {"seccomp": allow_list()}});
        check_names(&good).expect("a valid profile");
        check_names(&json!({"linux": {}})).expect("no profile");
    }
}
