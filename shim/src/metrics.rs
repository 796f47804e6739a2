//! The container's cgroup usage in containerd's metrics types: `io.containerd.cgroups.v1.Metrics`
//! when the host's memory controller is v1 (as containerd-shim-runc-v2 reports on hybrid hosts),
//! `io.containerd.cgroups.v2.Metrics` otherwise. `ctr task metrics` and CRI stats decode these.

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageDyn;
use usernsrs_init::cgroup::Usage;

fn stat(u: &Usage, key: &str) -> u64 {
    u.memory_stat
        .iter()
        .find(|(k, _)| k == key)
        .map_or(0, |(_, v)| *v)
}

fn to_v1(u: &Usage) -> v1::Metrics {
    let s = |k| stat(u, k);
    v1::Metrics {
        pids: Some(v1::PidsStat {
            current: u.pids_current,
            limit: u.pids_limit,
            ..Default::default()
        })
        .into(),
        cpu: Some(v1::CPUStat {
            usage: Some(v1::CPUUsage {
                total: u.cpu_total_ns,
                kernel: u.cpu_kernel_ns,
                user: u.cpu_user_ns,
                ..Default::default()
            })
            .into(),
            throttling: Some(v1::Throttle {
                periods: u.cpu_periods,
                throttled_periods: u.cpu_throttled_periods,
                throttled_time: u.cpu_throttled_ns,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        memory: Some(v1::MemoryStat {
            cache: s("cache"),
            rss: s("rss"),
            rss_huge: s("rss_huge"),
            mapped_file: s("mapped_file"),
            dirty: s("dirty"),
            writeback: s("writeback"),
            pg_pg_in: s("pgpgin"),
            pg_pg_out: s("pgpgout"),
            pg_fault: s("pgfault"),
            pg_maj_fault: s("pgmajfault"),
            inactive_anon: s("inactive_anon"),
            active_anon: s("active_anon"),
            inactive_file: s("inactive_file"),
            active_file: s("active_file"),
            unevictable: s("unevictable"),
            hierarchical_memory_limit: s("hierarchical_memory_limit"),
            total_cache: s("total_cache"),
            total_rss: s("total_rss"),
            total_inactive_file: s("total_inactive_file"),
            total_active_file: s("total_active_file"),
            usage: Some(v1::MemoryEntry {
                usage: u.memory_usage,
                limit: u.memory_limit,
                max: u.memory_max_usage,
                failcnt: u.memory_failcnt,
                ..Default::default()
            })
            .into(),
            kernel: Some(v1::MemoryEntry {
                usage: u.memory_kernel_usage,
                ..Default::default()
            })
            .into(),
            swap: Some(v1::MemoryEntry {
                usage: u.memory_swap_usage,
                limit: u.memory_swap_limit,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        memory_oom_control: Some(v1::MemoryOomControl {
            oom_kill: u.oom_kills,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

fn to_v2(u: &Usage) -> v2::Metrics {
    let s = |k| stat(u, k);
    v2::Metrics {
        pids: Some(v2::PidsStat {
            current: u.pids_current,
            limit: u.pids_limit,
            ..Default::default()
        })
        .into(),
        cpu: Some(v2::CPUStat {
            usage_usec: u.cpu_total_ns / 1000,
            user_usec: u.cpu_user_ns / 1000,
            system_usec: u.cpu_kernel_ns / 1000,
            nr_periods: u.cpu_periods,
            nr_throttled: u.cpu_throttled_periods,
            throttled_usec: u.cpu_throttled_ns / 1000,
            ..Default::default()
        })
        .into(),
        memory: Some(v2::MemoryStat {
            anon: s("anon"),
            file: s("file"),
            shmem: s("shmem"),
            inactive_file: s("inactive_file"),
            active_file: s("active_file"),
            pgfault: s("pgfault"),
            pgmajfault: s("pgmajfault"),
            usage: u.memory_usage,
            usage_limit: u.memory_limit,
            max_usage: u.memory_max_usage,
            swap_usage: u.memory_swap_usage,
            ..Default::default()
        })
        .into(),
        memory_events: Some(v2::MemoryEvents {
            oom_kill: u.oom_kills,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// The metrics of `u` as the `Any` a StatsResponse carries.
pub fn to_any(u: &Usage) -> anyhow::Result<Any> {
    let msg: Box<dyn MessageDyn> = if u.v1 {
        Box::new(to_v1(u))
    } else {
        Box::new(to_v2(u))
    };
    Ok(containerd_shim::util::convert_to_any(msg)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_usage_is_reported_as_cgroups_v1_metrics() {
        let u = Usage {
            v1: true,
            memory_usage: 4096,
            memory_limit: 1 << 20,
            memory_stat: vec![("rss".into(), 512)],
            pids_current: 3,
            ..Default::default()
        };
        let any = to_any(&u).expect("encode");
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m: v1::Metrics =
            containerd_shim::protos::protobuf::Message::parse_from_bytes(&any.value)
                .expect("decode");
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.usage.limit, 1 << 20);
        assert_eq!(m.memory.rss, 512);
        assert_eq!(m.pids.current, 3);
    }

    #[test]
    fn v2_usage_is_reported_as_cgroups_v2_metrics() {
        let u = Usage {
            cpu_total_ns: 5_000_000,
            ..Default::default()
        };
        let any = to_any(&u).expect("encode");
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m: v2::Metrics =
            containerd_shim::protos::protobuf::Message::parse_from_bytes(&any.value)
                .expect("decode");
        assert_eq!(m.cpu.usage_usec, 5000);
    }
}
