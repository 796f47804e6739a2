//! Which `linux.sysctl` keys a container may set.
//!
//! The helper writes sysctls through the container's own `/proc/sys`, but most of them are not
//! namespaced: `vm.swappiness` written there changes the host. As runc does, a key is accepted
//! only when the namespace that owns it is the container's own:
//! - `kernel.msgmax`, `kernel.msgmnb`, `kernel.msgmni`, `kernel.sem`, `kernel.shmall`,
//!   `kernel.shmmax`, `kernel.shmmni`, `kernel.shm_rmid_forced`, `fs.mqueue.*`: an IPC namespace;
//! - `net.*`: a network namespace;
//! - `kernel.hostname`, `kernel.domainname`: a UTS namespace;
//! - `user.*`: a user namespace.
//!
//! Every other key is refused, and so is a key that is not a plain dotted name (a path such as
//! `/proc/sys/vm/swappiness`, `..`, an empty component): it would otherwise be turned into a
//! path under `/proc/sys` that means something else.

/// The namespaces a container gets that are not the host's (new, or joined by path).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnNamespaces {
    pub ipc: bool,
    pub network: bool,
    pub uts: bool,
    pub user: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SysctlError {
    #[error("linux.sysctl {key:?}: not a sysctl name (dotted, as in net.ipv4.ip_forward)")]
    BadKey { key: String },
    #[error(
        "linux.sysctl {key:?}: belongs to the {namespace} namespace, which the container shares \
         with the host; add a {namespace} namespace to linux.namespaces or drop the key"
    )]
    HostNamespace {
        key: String,
        namespace: &'static str,
    },
    #[error(
        "linux.sysctl {key:?}: not namespaced by the kernel, so setting it would change the host"
    )]
    NotNamespaced { key: String },
}

const IPC_KEYS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// The namespace that owns `key`, if any.
fn owner(key: &str) -> Option<&'static str> {
    if IPC_KEYS.contains(&key) || key.starts_with("fs.mqueue.") {
        Some("ipc")
    } else if key.starts_with("net.") {
        Some("network")
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some("uts")
    } else if key.starts_with("user.") {
        Some("user")
    } else {
        None
    }
}

/// Accepts `key` when the container owns the namespace it belongs to.
pub fn check_sysctl(key: &str, own: OwnNamespaces) -> Result<(), SysctlError> {
    let plain = !key.is_empty()
        && key
            .split('.')
            .all(|c| !c.is_empty() && !c.contains(['/', '\0']) && c != "..");
    if !plain {
        return Err(SysctlError::BadKey { key: key.into() });
    }
    let namespace = owner(key).ok_or_else(|| SysctlError::NotNamespaced { key: key.into() })?;
    let owned = match namespace {
        "ipc" => own.ipc,
        "network" => own.network,
        "uts" => own.uts,
        _ => own.user,
    };
    if owned {
        Ok(())
    } else {
        Err(SysctlError::HostNamespace {
            key: key.into(),
            namespace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: OwnNamespaces = OwnNamespaces {
        ipc: true,
        network: true,
        uts: true,
        user: true,
    };

    #[test]
    fn refuses_keys_the_kernel_does_not_namespace() {
        for key in [
            "vm.swappiness",
            "kernel.panic",
            "fs.file-max",
            "kernel.msgmaxx",
        ] {
            assert_eq!(
                check_sysctl(key, ALL),
                Err(SysctlError::NotNamespaced { key: key.into() }),
                "{key}"
            );
        }
    }

    #[test]
    fn refuses_keys_written_as_paths() {
        for key in [
            "/proc/sys/vm/swappiness",
            "net/ipv4/ip_forward",
            "net..x",
            "",
            "net.",
            "..",
        ] {
            assert_eq!(
                check_sysctl(key, ALL),
                Err(SysctlError::BadKey { key: key.into() }),
                "{key:?}"
            );
        }
    }

    #[test]
    fn accepts_namespaced_keys_only_with_their_namespace() {
        let cases = [
            ("kernel.shmmax", "ipc"),
            ("fs.mqueue.msg_max", "ipc"),
            ("net.ipv4.ip_forward", "network"),
            ("kernel.hostname", "uts"),
            ("kernel.domainname", "uts"),
            ("user.max_user_namespaces", "user"),
        ];
        for (key, namespace) in cases {
            assert_eq!(check_sysctl(key, ALL), Ok(()), "{key}");
            let mut without = ALL;
            match namespace {
                "ipc" => without.ipc = false,
                "network" => without.network = false,
                "uts" => without.uts = false,
                _ => without.user = false,
            }
            assert_eq!(
                check_sysctl(key, without),
                Err(SysctlError::HostNamespace {
                    key: key.into(),
                    namespace
                }),
                "{key} without its namespace"
            );
        }
    }

    #[test]
    fn refusals_name_the_field_and_the_key() {
        let err = check_sysctl("vm.swappiness", ALL).expect_err("refused");
        assert!(
            err.to_string()
                .starts_with("linux.sysctl \"vm.swappiness\""),
            "{err}"
        );
    }
}
