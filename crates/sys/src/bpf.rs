//! The `bpf(2)` calls a cgroup v2 device filter needs: load a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program, attach it to a cgroup directory, list and detach the programs attached there.
//!
//! cgroup v2 has no `devices.allow`: the kernel runs the eBPF programs attached to a task's
//! cgroup (and, for `BPF_F_ALLOW_MULTI`, its ancestors') on every device open and mknod. An
//! attached program is held by the cgroup itself, so the fds returned here may be closed as soon
//! as the program is attached; removing the cgroup detaches and frees it.
//!
//! The `bpf_attr` layouts are declared here only as far as these commands read them; the
//! kernel accepts a shorter `attr` (it treats missing trailing fields as zero).
//! libc has `SYS_bpf` but none of the eBPF constants: they are defined below, from
//! `include/uapi/linux/bpf.h`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

// enum bpf_cmd, include/uapi/linux/bpf.h.
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_PROG_QUERY: libc::c_int = 16;
// enum bpf_prog_type, include/uapi/linux/bpf.h.
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
// enum bpf_attach_type, include/uapi/linux/bpf.h.
const BPF_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`, include/uapi/linux/bpf.h: several programs on one cgroup, all of which
/// (and those of the ancestors attached the same way) must allow an access.
pub const BPF_F_ALLOW_MULTI: u32 = 1 << 1;

/// One eBPF instruction, `struct bpf_insn` of include/uapi/linux/bpf.h: 8 bytes, the two
/// register numbers packed in one byte (destination in the low nibble on little-endian, which
/// is what `regs` holds as built by [`BpfInsn::new`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    /// `dst_reg:4` (low nibble) and `src_reg:4` (high nibble).
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl BpfInsn {
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        BpfInsn {
            code,
            regs: (dst & 0x0f) | ((src & 0x0f) << 4),
            off,
            imm,
        }
    }

    pub const fn dst(&self) -> u8 {
        self.regs & 0x0f
    }

    pub const fn src(&self) -> u8 {
        self.regs >> 4
    }
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH`/`BPF_PROG_DETACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The `BPF_PROG_QUERY` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// The `BPF_PROG_GET_FD_BY_ID` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// The `BPF_OBJ_GET_INFO_BY_FD` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The name our device programs are loaded with (`bpf_prog_info.name`, 16 bytes at most): what
/// tells them apart from programs someone else attached to a cgroup.
pub const PROGRAM_NAME: &str = "usernsrs";

/// `bpf(cmd, attr, sizeof attr)`.
///
/// # Safety
/// `attr` must be the `bpf_attr` layout the kernel expects for `cmd`, and every pointer stored
/// in it must point to memory that is valid (and, for buffers the kernel fills, writable) for
/// the length stored next to it, for the duration of the call.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: upheld by the caller (see above); `attr` is a live, exclusively borrowed value
    // of exactly `size_of::<T>()` bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Why a program did not load: the error, and the verifier's log when it gave one.
#[derive(Debug, thiserror::Error)]
#[error("load the cgroup device program ({insns} instructions){}", log_suffix(.log))]
pub struct LoadError {
    pub insns: usize,
    pub log: String,
    #[source]
    pub err: io::Error,
}

fn log_suffix(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("; verifier log: {}", log.trim())
    }
}

/// Loads `insns` as a `BPF_PROG_TYPE_CGROUP_DEVICE` program under `license`.
///
/// Device programs call no kernel helpers, so the license need not be GPL-compatible (the
/// verifier checks it only for GPL-only helpers). On failure the load is retried once with
/// the verifier log on, so the error says why.
pub fn load_device_program(insns: &[BpfInsn], license: &CStr) -> Result<OwnedFd, LoadError> {
    load_named_device_program(insns, license, PROGRAM_NAME)
}

/// [`load_device_program`] under another `name` (at most 15 bytes: `[A-Za-z0-9_.]`), as a
/// cgroup's other owner would load theirs.
pub fn load_named_device_program(
    insns: &[BpfInsn],
    license: &CStr,
    name: &str,
) -> Result<OwnedFd, LoadError> {
    let name = &name.as_bytes()[..name.len().min(15)];
    let load = |log: Option<&mut Vec<u8>>| -> io::Result<OwnedFd> {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            expected_attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        attr.prog_name[..name.len()].copy_from_slice(name);
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = buf.len() as u32;
            attr.log_buf = buf.as_mut_ptr() as u64;
        }
        // SAFETY: `attr` is the BPF_PROG_LOAD layout; `insns` (insn_cnt 8-byte `bpf_insn`s),
        // the NUL-terminated `license` and the optional log buffer (log_size writable bytes)
        // are all borrowed for the whole call and outlive it.
        let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) }?;
        // SAFETY: on success BPF_PROG_LOAD returns a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    };
    match load(None) {
        Ok(fd) => Ok(fd),
        Err(err) => {
            let mut buf = vec![0u8; 64 * 1024];
            let log = match load(Some(&mut buf)) {
                // Loaded the second time: the first failure was transient; use it.
                Ok(fd) => return Ok(fd),
                Err(_) => {
                    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
                    String::from_utf8_lossy(&buf[..end]).into_owned()
                }
            };
            Err(LoadError {
                insns: insns.len(),
                log,
                err,
            })
        }
    }
}

/// Attaches the device program `prog` to the cgroup directory `cgroup` with `flags`
/// (`BPF_F_ALLOW_MULTI` or 0).
pub fn attach_device_program(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    flags: u32,
) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: flags,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is the BPF_PROG_ATTACH layout and holds no pointers; the two fds are
    // borrowed, so open, for the call.
    unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }.map(drop)
}

/// Detaches the device program `prog` from the cgroup directory `cgroup`.
pub fn detach_device_program(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_PROG_DETACH layout and holds no pointers; the two fds are
    // borrowed, so open, for the call.
    unsafe { bpf(BPF_PROG_DETACH, &mut attr) }.map(drop)
}

/// The ids of the device programs attached to the cgroup directory `cgroup` itself (not
/// those inherited from ancestors).
pub fn attached_device_programs(cgroup: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    // The kernel caps a cgroup's programs per attach type at 64 (BPF_CGROUP_MAX_PROGS).
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_PROG_QUERY layout; `prog_ids` points to `prog_cnt` writable
    // u32s in `ids`, which lives past the call.
    unsafe { bpf(BPF_PROG_QUERY, &mut attr) }?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// The name of the loaded program `prog` (`bpf_prog_info.name`, NUL-padded to 16 bytes at
/// offset 64 of the info, include/uapi/linux/bpf.h).
pub fn program_name(prog: BorrowedFd<'_>) -> io::Result<String> {
    let mut info = [0u8; 256];
    let mut attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` is the BPF_OBJ_GET_INFO_BY_FD layout; `info` points to `info_len`
    // writable bytes in `info`, which outlives the call; the kernel writes at most that many.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    let name = &info[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// An fd for the loaded program with id `id`.
pub fn program_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdAttr {
        prog_id: id,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_PROG_GET_FD_BY_ID layout and holds no pointers.
    let fd = unsafe { bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) }?;
    // SAFETY: on success the call returns a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_uapi_offsets() {
        // Offsets of union bpf_attr's members in include/uapi/linux/bpf.h.
        assert_eq!(std::mem::size_of::<BpfInsn>(), 8);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(QueryAttr, prog_ids), 16);
        assert_eq!(std::mem::offset_of!(QueryAttr, prog_cnt), 24);
        assert_eq!(std::mem::offset_of!(AttachAttr, replace_bpf_fd), 16);
    }

    #[test]
    fn packs_registers_destination_low() {
        let insn = BpfInsn::new(0x61, 2, 1, 4, 0);
        assert_eq!((insn.dst(), insn.src(), insn.regs), (2, 1, 0x12));
    }
}
