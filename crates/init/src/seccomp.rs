//! `linux.seccomp`: the OCI profile compiled to BPF (with seccompiler) and installed last.
//!
//! A seccompiler filter has one on-match and one on-mismatch action, an OCI profile has one
//! action per syscall rule. The profile becomes one filter per action: the default action's
//! complement first (the syscalls the profile names, matched to Allow, everything else to the
//! default), then one filter per other action (its syscalls matched to it, everything else
//! allowed). The kernel runs every filter and keeps the most restrictive answer, and among equal
//! ones the most recently installed, so each syscall gets the action of its own rule.
//!
//! Syscall names this architecture does not have are skipped, as libseccomp does; only the
//! native architecture is filtered (another architecture's syscalls are refused by the filter's
//! architecture check).

use crate::InitError;
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::str::FromStr;

fn fail(msg: String) -> InitError {
    InitError::Container(format!("linux.seccomp: {msg}"))
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, InitError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        other => return Err(fail(format!("action {other:?} is not supported"))),
    })
}

fn condition(arg: &oci_spec::runtime::LinuxSeccompArg) -> Result<SeccompCondition, InitError> {
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
        LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
        LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
        LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
        LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
        LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
        LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(arg.value()),
    };
    let value = match arg.op() {
        LinuxSeccompOperator::ScmpCmpMaskedEq => arg.value_two().unwrap_or(0),
        _ => arg.value(),
    };
    let index =
        u8::try_from(arg.index()).map_err(|_| fail(format!("argument index {}", arg.index())))?;
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| fail(format!("argument {}: {e}", arg.index())))
}

fn syscall_number(name: &str) -> Option<i64> {
    syscalls::Sysno::from_str(name)
        .ok()
        .map(|s| i64::from(s.id()))
}

/// Per syscall number: `None` matches unconditionally, `Some` any of the argument rules.
type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;

/// Adds `names` with `conditions` (none: unconditional) to `rules`.
fn add(
    rules: &mut Rules,
    names: &[String],
    conditions: &[SeccompCondition],
) -> Result<(), InitError> {
    for name in names {
        let Some(nr) = syscall_number(name) else {
            continue;
        };
        if conditions.is_empty() {
            // Unconditional wins over any condition.
            rules.insert(nr, None);
            continue;
        }
        let rule =
            SeccompRule::new(conditions.to_vec()).map_err(|e| fail(format!("{name}: {e}")))?;
        // An unconditional entry already there (None) stays unconditional.
        if let Some(list) = rules.entry(nr).or_insert_with(|| Some(Vec::new())) {
            list.push(rule);
        }
    }
    Ok(())
}

/// The BPF programs for `profile`, in installation order.
pub(crate) fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, InitError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| fail(format!("architecture: {e}")))?;
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut groups: Vec<(SeccompAction, Rules)> = Vec::new();
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let conditions = rule
            .args()
            .iter()
            .flatten()
            .map(condition)
            .collect::<Result<Vec<_>, _>>()?;
        let i = match groups.iter().position(|(a, _)| *a == act) {
            Some(i) => i,
            None => {
                groups.push((act.clone(), Rules::new()));
                groups.len() - 1
            }
        };
        add(&mut groups[i].1, rule.names(), &conditions)?;
    }
    let build = |rules: Rules,
                 mismatch: SeccompAction,
                 matched: SeccompAction|
     -> Result<BpfProgram, InitError> {
        let rules = rules
            .into_iter()
            .map(|(nr, r)| (nr, r.unwrap_or_default()))
            .collect();
        let filter =
            SeccompFilter::new(rules, mismatch, matched, arch).map_err(|e| fail(e.to_string()))?;
        BpfProgram::try_from(filter).map_err(|e| fail(e.to_string()))
    };
    let mut programs = Vec::new();
    // The allowed syscalls against a restrictive default first.
    let allow = groups
        .iter()
        .position(|(a, _)| *a == SeccompAction::Allow)
        .map(|i| groups.remove(i));
    if default != SeccompAction::Allow {
        let rules = allow.map(|(_, r)| r).unwrap_or_default();
        programs.push(build(rules, default.clone(), SeccompAction::Allow)?);
    }
    for (act, rules) in groups {
        if rules.is_empty() {
            continue;
        }
        programs.push(build(rules, SeccompAction::Allow, act)?);
    }
    Ok(programs)
}

/// Installs `programs` on this thread (before exec, so the container process inherits them).
pub(crate) fn install(programs: &[BpfProgram]) -> Result<(), InitError> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| fail(format!("install the filter: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("profile")
    }

    #[test]
    fn compiles_an_allow_list_with_conditions_and_errno_rules() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
                "syscalls":[
                  {"names":["read","write","no_such_syscall"],"action":"SCMP_ACT_ALLOW"},
                  {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                   "args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
                  {"names":["sethostname"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
        );
        let programs = compile(&p).expect("compile");
        assert_eq!(programs.len(), 2, "the allow list, then the errno rule");
        assert!(programs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn an_allow_default_with_a_deny_list_is_one_filter() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(compile(&p).expect("compile").len(), 1);
    }

    #[test]
    fn refuses_notify() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["mount"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        let err = compile(&p).expect_err("notify");
        assert!(err.to_string().contains("not supported"), "{err}");
    }
}
