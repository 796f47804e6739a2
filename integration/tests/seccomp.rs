//! `linux.seccomp` end to end, through containerd: the profile's filter, the container's
//! no_new_privs as `process.noNewPrivileges` says, i386 and x32 syscalls filtered by their own
//! tables, every action, `defaultErrnoRet` and runc's -ENOSYS stub, the filter flags, and what
//! is refused (by field name, leaving nothing behind).
//!
//! The syscalls are made by probes: tiny static ELF executables written by [`probe`] into the
//! container's root.path, each making one syscall with fixed arguments and exiting with its
//! errno (0 when it succeeds), so that `$?` in the container's shell tells what the filter did:
//! the profile's errno, 38 (ENOSYS), or 159 (128 + SIGSYS: killed or trapped). An i386 probe
//! is an ELF32 program using `int 0x80`; an x32 syscall is an x86_64 `syscall` with bit 30 set
//! in its number. This kernel has no x32 ABI (CONFIG_X86_X32_ABI), so an x32 syscall the filter
//! lets through fails with ENOSYS; one it denies fails with the profile's errno.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use usernsrs_integration::{mounts_under, Flavor};

use common::{
    add_user_namespace, set_mapping, unique_id, unpack_busybox, CreateStart, Env, NOT_APPLICABLE,
};

const NS: &str = "seccomp-test";
/// The errno the test profiles give: ENOMSG, which nothing here returns on its own.
const DENIED: i32 = 42;
const ENOSYS: i32 = 38;
/// `$?` of a process killed by (or not handling) SIGSYS.
const SIGSYS_STATUS: i32 = 128 + 31;
const X32_BIT: u32 = 0x4000_0000;

// Syscall numbers: x86_64 (x32 adds X32_BIT) and i386.
const X86_64_GETPID: u32 = 39;
const X86_64_GETEUID: u32 = 107;
const X86_64_GETPGID: u32 = 121;
const X86_64_GETSID: u32 = 124;
const X86_64_PERSONALITY: u32 = 135;
const X86_64_SCHED_GETSCHEDULER: u32 = 145;
const X86_64_SCHED_GET_PRIORITY_MAX: u32 = 146;
const X86_64_SCHED_GET_PRIORITY_MIN: u32 = 147;
const X86_64_ACCT: u32 = 163;
const X86_64_UNSHARE: u32 = 272;
const I386_GETPID: u32 = 20;
const I386_SCHED_GETSCHEDULER: u32 = 157;

/// What a probe exits with: the syscall's errno (0 if it succeeded), or its result itself.
#[derive(Clone, Copy)]
enum Report {
    Errno,
    Value,
}

/// A static ELF executable with one loadable segment holding the headers and `code`, entered at
/// the first byte of `code`.
fn elf(wide: bool, code: &[u8]) -> Vec<u8> {
    let (base, ehsize, phsize): (u64, usize, usize) = if wide {
        (0x40_0000, 64, 56)
    } else {
        (0x0804_8000, 52, 32)
    };
    let entry = base + (ehsize + phsize) as u64;
    let size = (ehsize + phsize + code.len()) as u64;
    let mut out = vec![0x7f, b'E', b'L', b'F', if wide { 2 } else { 1 }, 1, 1, 0];
    out.resize(16, 0);
    let half = |out: &mut Vec<u8>, v: u16| out.extend(v.to_le_bytes());
    let word = |out: &mut Vec<u8>, v: u32| out.extend(v.to_le_bytes());
    // An address or an offset: 8 bytes in ELF64, 4 in ELF32.
    let addr = |out: &mut Vec<u8>, v: u64| {
        if wide {
            out.extend(v.to_le_bytes())
        } else {
            out.extend((v as u32).to_le_bytes())
        }
    };
    half(&mut out, 2); // ET_EXEC
    half(&mut out, if wide { 62 } else { 3 }); // EM_X86_64, EM_386
    word(&mut out, 1); // EV_CURRENT
    addr(&mut out, entry);
    addr(&mut out, ehsize as u64); // e_phoff
    addr(&mut out, 0); // e_shoff
    word(&mut out, 0); // e_flags
    half(&mut out, ehsize as u16);
    half(&mut out, phsize as u16);
    half(&mut out, 1); // e_phnum
    half(&mut out, 0); // e_shentsize
    half(&mut out, 0); // e_shnum
    half(&mut out, 0); // e_shstrndx
    word(&mut out, 1); // PT_LOAD
    if wide {
        word(&mut out, 5); // p_flags (R+X) comes second in ELF64
    }
    addr(&mut out, 0); // p_offset
    addr(&mut out, base); // p_vaddr
    addr(&mut out, base); // p_paddr
    addr(&mut out, size); // p_filesz
    addr(&mut out, size); // p_memsz
    if !wide {
        word(&mut out, 5); // p_flags
    }
    addr(&mut out, 0x1000); // p_align
    assert_eq!(out.len(), ehsize + phsize, "ELF headers");
    out.extend_from_slice(code);
    out
}

/// The code of a probe (hand-assembled; the assembly is in the comments).
fn probe_code(wide: bool, nr: u32, args: [u64; 3], report: Report) -> Vec<u8> {
    let mut c = Vec::new();
    c.push(0xb8); // mov $nr, %eax
    c.extend(nr.to_le_bytes());
    if wide {
        for (prefix, arg) in [[0x48, 0xbf], [0x48, 0xbe], [0x48, 0xba]].iter().zip(args) {
            c.extend(prefix); // movabs $arg, %rdi / %rsi / %rdx
            c.extend(arg.to_le_bytes());
        }
        c.extend([0x0f, 0x05]); // syscall
        if let Report::Errno = report {
            c.extend([0x48, 0xf7, 0xd8]); // neg %rax
            c.extend([0x48, 0x3d, 0xff, 0x0f, 0x00, 0x00]); // cmp $4095, %rax
            c.extend([0x76, 0x02]); // jbe 1f (an errno)
            c.extend([0x31, 0xc0]); // xor %eax, %eax (success)
        }
        c.extend([0x89, 0xc7]); // 1: mov %eax, %edi
        c.extend([0xb8, 0x3c, 0x00, 0x00, 0x00]); // mov $60 (exit), %eax
        c.extend([0x0f, 0x05]); // syscall
    } else {
        for (opcode, arg) in [0xbb, 0xb9, 0xba].into_iter().zip(args) {
            c.push(opcode); // mov $arg, %ebx / %ecx / %edx
            c.extend((arg as u32).to_le_bytes());
        }
        c.extend([0xcd, 0x80]); // int $0x80
        if let Report::Errno = report {
            c.extend([0xf7, 0xd8]); // neg %eax
            c.extend([0x3d, 0xff, 0x0f, 0x00, 0x00]); // cmp $4095, %eax
            c.extend([0x76, 0x02]); // jbe 1f
            c.extend([0x31, 0xc0]); // xor %eax, %eax
        }
        c.extend([0x89, 0xc3]); // 1: mov %eax, %ebx
        c.extend([0xb8, 0x01, 0x00, 0x00, 0x00]); // mov $1 (exit), %eax
        c.extend([0xcd, 0x80]); // int $0x80
    }
    c
}

/// Writes the probe `name` into `rootfs/probe/` with `mode`.
fn probe(
    rootfs: &Path,
    name: &str,
    wide: bool,
    nr: u32,
    args: [u64; 3],
    report: Report,
    mode: u32,
) -> Result<()> {
    let dir = rootfs.join("probe");
    fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    fs::write(&path, elf(wide, &probe_code(wide, nr, args, report)))
        .with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// The probes' shell lines: `NAME=$?` for each.
fn run_probes(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("/probe/{n}; echo {n}=$?"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `NAME=VALUE` lines of `out`.
fn results(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Fails (as not applicable) unless this kernel runs i386 executables, checked by running an
/// i386 probe on the host, outside any filter.
fn require_ia32(dir: &Path) -> Result<()> {
    probe(
        dir,
        "ia32-check",
        false,
        I386_GETPID,
        [0; 3],
        Report::Errno,
        0o755,
    )?;
    let status = std::process::Command::new(dir.join("probe/ia32-check")).status();
    match status {
        Ok(s) if s.code() == Some(0) => Ok(()),
        other => {
            println!(
                "{NOT_APPLICABLE} this kernel does not run i386 executables \
                 (CONFIG_IA32_EMULATION, ia32_emulation=): {other:?}"
            );
            bail!("this kernel does not run i386 executables: {other:?}")
        }
    }
}

fn require_x86_64() -> Result<()> {
    if std::env::consts::ARCH != "x86_64" {
        println!(
            "{NOT_APPLICABLE} the probes are x86_64 and i386 code; this is {}",
            std::env::consts::ARCH
        );
        bail!("the probes are x86_64 and i386 code");
    }
    Ok(())
}

/// A root.path spec in a user namespace `0 100000 65536` running `script`, with `seccomp` as
/// `linux.seccomp` and `nnp` as `process.noNewPrivileges`.
fn spec(
    env: &Env,
    id: &str,
    root: &Path,
    script: &str,
    seccomp: Value,
    nnp: bool,
) -> Result<Value> {
    let mut spec = env.base_spec(id, root, script)?;
    add_user_namespace(&mut spec)?;
    set_mapping(&mut spec, 100_000, 65_536);
    spec["linux"]["seccomp"] = seccomp;
    spec["process"]["noNewPrivileges"] = json!(nnp);
    Ok(spec)
}

fn describe(run: &CreateStart) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        run.status, run.stdout, run.stderr
    )
}

/// Runs `spec` to its end, which must be a success; the `NAME=VALUE` lines it printed.
fn run_ok(env: &Env, id: &str, spec: &Value) -> Result<std::collections::BTreeMap<String, String>> {
    let run = env.create_and_start(id, spec)?;
    ensure!(
        run.status.success(),
        "{}: container {id} failed: {}",
        env.flavor(),
        describe(&run)
    );
    Ok(results(&run.stdout))
}

fn expect(
    got: &std::collections::BTreeMap<String, String>,
    want: &[(&str, &str)],
    what: &str,
) -> Result<()> {
    for (key, value) in want {
        ensure!(
            got.get(*key).map(String::as_str) == Some(*value),
            "{what}: {key} should be {value}, got {:?} (all: {got:?})",
            got.get(*key)
        );
    }
    Ok(())
}

/// A profile that allows everything but what `deny` names, which fails with [`DENIED`].
fn deny_list(architectures: &[&str], deny: &[&str]) -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures,
        "syscalls": [{"names": deny, "action": "SCMP_ACT_ERRNO", "errnoRet": DENIED}]
    })
}

const STATUS_LINES: &str = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -d ' \\t' \
                            | tr ':' '='";

// ---------------------------------------------------------------------------------------------
// 1. no_new_privs is the spec's, with a profile.
// ---------------------------------------------------------------------------------------------

/// With a profile and `noNewPrivileges` false, the container's process (and an exec'd one) has
/// no_new_privs unset and a setuid-root binary raises its euid, while the profile still
/// applies; with `noNewPrivileges` true, no_new_privs is set and setuid does nothing.
fn no_new_privileges_follows_the_spec(flavor: Flavor) -> Result<()> {
    require_x86_64()?;
    let env = Env::start_in(flavor, NS)?;
    let rootfs = env.dir().join("rootfs-nnp");
    unpack_busybox(&rootfs)?;
    // Owned by 0:0 on disk, so by container root through the idmapped rootfs.
    probe(
        &rootfs,
        "euid",
        true,
        X86_64_GETEUID,
        [0; 3],
        Report::Value,
        0o4755,
    )?;
    probe(
        &rootfs,
        "denied",
        true,
        X86_64_SCHED_GETSCHEDULER,
        [0; 3],
        Report::Errno,
        0o755,
    )?;
    let profile = deny_list(&["SCMP_ARCH_X86_64"], &["sched_getscheduler"]);
    let script = format!("{STATUS_LINES}; {}", run_probes(&["euid", "denied"]));
    for (nnp, want_nnp, want_euid) in [(false, "0", "0"), (true, "1", "232")] {
        let id = unique_id(&format!("nnp-{nnp}"));
        let mut spec = spec(&env, &id, &rootfs, &script, profile.clone(), nnp)?;
        spec["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        let got = run_ok(&env, &id, &spec)?;
        expect(
            &got,
            &[
                ("NoNewPrivs", want_nnp),
                ("Seccomp", "2"),
                // 232: uid 1000 modulo 256, the euid unchanged by the setuid bit.
                ("euid", want_euid),
                ("denied", "42"),
            ],
            &format!("{flavor}: noNewPrivileges {nnp}"),
        )?;
    }

    // An exec'd process follows its own process spec the same way.
    let id = unique_id("nnp-exec");
    let spec = spec(&env, &id, &rootfs, "sleep 600", profile, false)?;
    env.start_detached(&id, &spec)?;
    let fifo = env.fifo_dir();
    let exec = env.ctr(&[
        "task",
        "exec",
        "--fifo-dir",
        &fifo,
        "--exec-id",
        "status",
        &id,
        "sh",
        "-c",
        &script,
    ]);
    env.kill_and_remove(&id)?;
    let exec = exec?;
    let got = results(&String::from_utf8_lossy(&exec.stdout));
    expect(
        &got,
        &[("NoNewPrivs", "0"), ("Seccomp", "2"), ("denied", "42")],
        &format!("{flavor}: exec with noNewPrivileges false"),
    )?;
    Ok(())
}

#[test]
fn containerd2_no_new_privileges_follows_the_spec_with_a_profile() -> Result<()> {
    no_new_privileges_follows_the_spec(Flavor::Containerd2)
}

#[test]
fn containerd16_no_new_privileges_follows_the_spec_with_a_profile() -> Result<()> {
    no_new_privileges_follows_the_spec(Flavor::Containerd16)
}

/// containerd's default profile (what `ctr run --seccomp` and CRI's RuntimeDefault give):
/// allow-listing, x86_64, x86 and x32, conditional rules.
fn containerd_default_profile(env: &Env) -> Result<Value> {
    let id = unique_id("default-profile");
    env.ctr_ok(&["containers", "create", "--seccomp", &env.image, &id])?;
    let spec = env.ctr_ok(&["containers", "info", "--spec", &id]);
    env.ctr_ok(&["containers", "rm", &id])?;
    let spec: Value = serde_json::from_str(&spec?).context("`ctr c info --spec` is not JSON")?;
    let profile = spec["linux"]["seccomp"].clone();
    ensure!(
        profile["defaultAction"] == json!("SCMP_ACT_ERRNO")
            && profile["architectures"]
                .as_array()
                .is_some_and(|a| a.contains(&json!("SCMP_ARCH_X86"))),
        "unexpected default profile from containerd: {profile}"
    );
    Ok(profile)
}

/// A Kubernetes pod's container with RuntimeDefault and privilege escalation allowed gets
/// containerd's default profile and `noNewPrivileges` false: it starts (everything the shim
/// does after installing the filter early is allowed), setuid works, the profile denies what it
/// does not list (unshare without CAP_SYS_ADMIN), i386 syscalls are filtered (the profile lists
/// SCMP_ARCH_X86), and syscalls newer than the profile get ENOSYS (runc's stub).
#[test]
fn containerd2_default_profile_without_no_new_privileges() -> Result<()> {
    require_x86_64()?;
    let env = Env::start_in(Flavor::Containerd2, NS)?;
    let rootfs = env.dir().join("rootfs-default");
    unpack_busybox(&rootfs)?;
    require_ia32(&rootfs)?;
    probe(
        &rootfs,
        "euid",
        true,
        X86_64_GETEUID,
        [0; 3],
        Report::Value,
        0o4755,
    )?;
    probe(
        &rootfs,
        "unshare",
        true,
        X86_64_UNSHARE,
        [0; 3],
        Report::Errno,
        0o755,
    )?;
    probe(
        &rootfs,
        "i386-getpid",
        false,
        I386_GETPID,
        [0; 3],
        Report::Errno,
        0o755,
    )?;
    probe(&rootfs, "newer", true, 999, [0; 3], Report::Errno, 0o755)?;
    let profile = containerd_default_profile(&env)?;
    let id = unique_id("default");
    let script = format!(
        "{STATUS_LINES}; {}",
        run_probes(&["euid", "unshare", "i386-getpid", "newer"])
    );
    let mut spec = spec(&env, &id, &rootfs, &script, profile, false)?;
    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    let got = run_ok(&env, &id, &spec)?;
    expect(
        &got,
        &[
            ("NoNewPrivs", "0"),
            ("Seccomp", "2"),
            ("euid", "0"),
            ("unshare", "1"),
            ("i386-getpid", "0"),
            ("newer", "38"),
        ],
        "containerd's default profile, noNewPrivileges false",
    )
}

// ---------------------------------------------------------------------------------------------
// 2. Architectures.
// ---------------------------------------------------------------------------------------------

/// i386 syscalls are allowed and denied by their own table when SCMP_ARCH_X86 is listed and
/// killed when it is not; an x32 number of a denied syscall is denied when SCMP_ARCH_X32 is
/// listed and killed when it is not: it never gets past a deny list.
#[test]
fn containerd2_i386_and_x32_syscalls_are_filtered_by_their_own_tables() -> Result<()> {
    require_x86_64()?;
    let env = Env::start_in(Flavor::Containerd2, NS)?;
    let rootfs = env.dir().join("rootfs-arches");
    unpack_busybox(&rootfs)?;
    require_ia32(&rootfs)?;
    let probes: [(&str, bool, u32); 6] = [
        ("i386-getpid", false, I386_GETPID),
        ("i386-denied", false, I386_SCHED_GETSCHEDULER),
        ("x86_64-getpid", true, X86_64_GETPID),
        ("x86_64-denied", true, X86_64_SCHED_GETSCHEDULER),
        ("x32-getpid", true, X86_64_GETPID | X32_BIT),
        ("x32-denied", true, X86_64_SCHED_GETSCHEDULER | X32_BIT),
    ];
    for (name, wide, nr) in probes {
        probe(&rootfs, name, wide, nr, [0; 3], Report::Errno, 0o755)?;
    }
    let names: Vec<&str> = probes.iter().map(|p| p.0).collect();
    let script = run_probes(&names);
    let all = deny_list(
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        &["sched_getscheduler"],
    );
    let id = unique_id("arches-all");
    let got = run_ok(&env, &id, &spec(&env, &id, &rootfs, &script, all, true)?)?;
    expect(
        &got,
        &[
            ("i386-getpid", "0"),
            ("i386-denied", "42"),
            ("x86_64-getpid", "0"),
            ("x86_64-denied", "42"),
            ("x32-denied", "42"),
        ],
        "SCMP_ARCH_X86_64, SCMP_ARCH_X86, SCMP_ARCH_X32 listed",
    )?;
    let x32 = got.get("x32-getpid").map(String::as_str);
    ensure!(
        matches!(x32, Some("0") | Some("38")),
        "an allowed x32 syscall must reach the kernel (0, or ENOSYS without an x32 ABI): {got:?}"
    );

    let native = deny_list(&["SCMP_ARCH_X86_64"], &["sched_getscheduler"]);
    let id = unique_id("arches-native");
    let got = run_ok(&env, &id, &spec(&env, &id, &rootfs, &script, native, true)?)?;
    let killed = SIGSYS_STATUS.to_string();
    expect(
        &got,
        &[
            ("i386-getpid", &killed),
            ("i386-denied", &killed),
            ("x86_64-getpid", "0"),
            ("x86_64-denied", "42"),
            ("x32-getpid", &killed),
            ("x32-denied", &killed),
        ],
        "only SCMP_ARCH_X86_64 listed",
    )
}

// ---------------------------------------------------------------------------------------------
// 3. Actions, errno values, flags.
// ---------------------------------------------------------------------------------------------

/// Every action does what the kernel's action does, `errnoRet` and `defaultErrnoRet` are the
/// errnos returned, and the filter flags reach the kernel.
#[test]
fn containerd2_actions_errnos_and_flags_are_applied() -> Result<()> {
    require_x86_64()?;
    let env = Env::start_in(Flavor::Containerd2, NS)?;
    let rootfs = env.dir().join("rootfs-actions");
    unpack_busybox(&rootfs)?;
    let probes: [(&str, u32, [u64; 3]); 6] = [
        ("errno", X86_64_SCHED_GETSCHEDULER, [0; 3]),
        ("kill-process", X86_64_SCHED_GET_PRIORITY_MAX, [0; 3]),
        ("trap", X86_64_SCHED_GET_PRIORITY_MIN, [0; 3]),
        ("trace", X86_64_GETSID, [0; 3]),
        ("log", X86_64_GETPGID, [0; 3]),
        ("kill-thread", X86_64_PERSONALITY, [0xffff_ffff, 0, 0]),
    ];
    for (name, nr, args) in probes {
        probe(&rootfs, name, true, nr, args, Report::Errno, 0o755)?;
    }
    let names: Vec<&str> = probes.iter().map(|p| p.0).collect();
    let script = run_probes(&names);
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                  "SECCOMP_FILTER_FLAG_TSYNC"],
        "syscalls": [
            {"names": ["sched_getscheduler"], "action": "SCMP_ACT_ERRNO", "errnoRet": DENIED},
            {"names": ["sched_get_priority_max"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["sched_get_priority_min"], "action": "SCMP_ACT_TRAP"},
            // Without a tracer the kernel fails a TRACE syscall with ENOSYS.
            {"names": ["getsid"], "action": "SCMP_ACT_TRACE", "errnoRet": 5},
            {"names": ["getpgid"], "action": "SCMP_ACT_LOG"},
            {"names": ["personality"], "action": "SCMP_ACT_KILL_THREAD",
             "args": [{"index": 0, "value": 4294967295u64, "op": "SCMP_CMP_EQ"}]}
        ]
    });
    let id = unique_id("actions");
    let got = run_ok(
        &env,
        &id,
        &spec(&env, &id, &rootfs, &script, profile, true)?,
    )?;
    let killed = SIGSYS_STATUS.to_string();
    expect(
        &got,
        &[
            ("errno", "42"),
            ("kill-process", &killed),
            ("trap", &killed),
            ("trace", &ENOSYS.to_string()),
            ("log", "0"),
            ("kill-thread", &killed),
        ],
        "one syscall per action",
    )?;

    // A deny-by-default profile (containerd's) with its default errno changed: an unlisted
    // syscall gets that errno, one newer than every listed syscall ENOSYS.
    probe(
        &rootfs,
        "acct",
        true,
        X86_64_ACCT,
        [0; 3],
        Report::Errno,
        0o755,
    )?;
    probe(&rootfs, "newer", true, 999, [0; 3], Report::Errno, 0o755)?;
    let mut profile = containerd_default_profile(&env)?;
    profile["defaultErrnoRet"] = json!(DENIED);
    let id = unique_id("default-errno");
    let script = run_probes(&["acct", "newer"]);
    let got = run_ok(
        &env,
        &id,
        &spec(&env, &id, &rootfs, &script, profile, true)?,
    )?;
    expect(
        &got,
        &[("acct", "42"), ("newer", "38")],
        "defaultErrnoRet and runc's -ENOSYS stub",
    )
}

// ---------------------------------------------------------------------------------------------
// 4. Refusals.
// ---------------------------------------------------------------------------------------------

/// What the shim cannot do is refused at create, naming the field, and leaves nothing behind.
#[test]
fn containerd2_unsupported_profiles_are_refused_naming_the_field() -> Result<()> {
    let env = Env::start_in(Flavor::Containerd2, NS)?;
    let rootfs = env.dir().join("rootfs-refused");
    unpack_busybox(&rootfs)?;
    let allow = |extra: Value| {
        let mut p = json!({"defaultAction": "SCMP_ACT_ALLOW"});
        if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        p
    };
    for (profile, needle) in [
        (
            allow(json!({"flags": ["SECCOMP_FILTER_FLAG_NO_SUCH"]})),
            "linux.seccomp.flags[0]: unknown flag \"SECCOMP_FILTER_FLAG_NO_SUCH\"",
        ),
        (
            allow(json!({"flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]})),
            "linux.seccomp.flags: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV applies only to \
             SCMP_ACT_NOTIFY",
        ),
        (
            allow(json!({"syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]})),
            "linux.seccomp.syscalls[0].action is SCMP_ACT_NOTIFY",
        ),
        (
            allow(json!({"listenerPath": "/run/seccomp-agent.sock"})),
            "linux.seccomp.listenerPath is set",
        ),
        (
            allow(
                json!({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                       "errnoRet": 5000}]}),
            ),
            "linux.seccomp.syscalls[0].errnoRet 5000 is out of range",
        ),
    ] {
        let id = unique_id("refused");
        let run = env.create_and_start(&id, &spec(&env, &id, &rootfs, "true", profile, true)?)?;
        ensure!(
            !run.status.success() && run.stderr.contains(needle),
            "should fail saying {needle:?}: {}",
            describe(&run)
        );
        let left = mounts_under(env.dir())?;
        ensure!(left.is_empty(), "after refusing {id}: mounts left {left:?}");
        ensure!(
            !env.bundle(&id).exists(),
            "after refusing {id}: bundle {} left",
            env.bundle(&id).display()
        );
        for hierarchy in fs::read_dir("/sys/fs/cgroup")?.flatten() {
            let cgroup = hierarchy.path().join(NS).join(&id);
            ensure!(
                !cgroup.exists(),
                "after refusing {id}: cgroup {} left",
                cgroup.display()
            );
        }
    }
    env.assert_no_shim("the refused profiles")
}
