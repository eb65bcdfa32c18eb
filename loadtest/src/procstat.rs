//! CPU time and memory of the server process, from `/proc` (Linux).

/// Clock ticks per second for `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// User + system CPU seconds used so far by `pid`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User + system CPU seconds used so far by each thread of `pid`: its
/// thread id and name (`comm`, which Linux cuts to 15 bytes).
pub fn thread_cpu(pid: u32) -> Vec<(u32, String, f64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
        Some((tid, comm(&stat)?.to_string(), stat_cpu(&stat)?))
    })
    .collect()
}

/// The command name (`comm`) of a `/proc/.../stat` line.
fn comm(stat: &str) -> Option<&str> {
    stat.get(stat.find('(')? + 1..stat.rfind(')')?)
}

/// The CPU seconds (utime + stime) of a `/proc/.../stat` line.
fn stat_cpu(stat: &str) -> Option<f64> {
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
}

/// What a server thread does, from its name (see the engine's thread names).
pub fn thread_role(name: &str) -> &'static str {
    const ROLES: [(&str, &str); 10] = [
        ("outrider-contro", "control runtime"),
        ("outrider-shard", "shards"),
        ("outrider-journa", "journal sync"),
        ("outrider-sqlite", "SQLite index writer"),
        ("outrider-ckpt", "SQLite checkpoint"),
        ("outrider-wback", "SQLite writeback"),
        ("outrider-index", "index follower"),
        ("lapin-io-loop", "RabbitMQ client I/O"),
        ("tokio-runtime-w", "other tokio runtimes"),
        ("tokio-rt-worker", "other tokio runtimes"),
    ];
    ROLES
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map_or("other", |(_, role)| role)
}

/// CPU seconds per thread role between two [`thread_cpu`] samples, most
/// first. A thread that ended between them is not in the second sample:
/// `total` (the process's own figure over the same window) less what the
/// threads account for is reported as `ended threads`.
pub fn cpu_by_role(before: &[(u32, String, f64)], after: &[(u32, String, f64)], total: f64) -> Vec<(String, f64)> {
    let mut roles = used_by_label(before, after, |name: &String| thread_role(name));
    let counted: f64 = roles.values().sum();
    if total - counted > 0.005 {
        roles.insert("ended threads", total - counted);
    }
    most_first(roles)
}

/// The local back-end servers a queue-mode run leans on, by process name
/// (`comm`): their CPU is spent on the server's behalf on the same cores, so
/// it belongs in what a delivery costs.
const BACK_ENDS: [(&str, &str); 5] = [
    ("redis-server", "Redis"),
    ("beam.smp", "RabbitMQ"),
    ("erl_child_setup", "RabbitMQ"),
    ("postgres", "PostgreSQL"),
    ("nats-server", "NATS"),
];

/// CPU seconds used so far by each running back-end process: pid, back end.
pub fn back_end_cpu() -> Vec<(u32, &'static str, f64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let name = comm(&stat)?;
        let back_end = BACK_ENDS.iter().find(|(c, _)| name == *c)?.1;
        Some((pid, back_end, stat_cpu(&stat)?))
    })
    .collect()
}

/// CPU seconds per back end between two [`back_end_cpu`] samples, most
/// first; a process that started between them counts whole (a new
/// PostgreSQL connection, say), one that ended is missing (its CPU is lost).
pub fn back_end_cpu_between(
    before: &[(u32, &'static str, f64)],
    after: &[(u32, &'static str, f64)],
) -> Vec<(String, f64)> {
    let mut by = used_by_label(before, after, |b: &&'static str| *b);
    by.retain(|_, s| *s > 0.0);
    most_first(by)
}

/// CPU seconds used between two samples of `(id, what, seconds so far)`,
/// summed by `label(what)`; an id missing from `before` counts whole.
fn used_by_label<T>(
    before: &[(u32, T, f64)],
    after: &[(u32, T, f64)],
    label: impl Fn(&T) -> &'static str,
) -> std::collections::BTreeMap<&'static str, f64> {
    let start: std::collections::HashMap<u32, f64> = before.iter().map(|(id, _, s)| (*id, *s)).collect();
    let mut by = std::collections::BTreeMap::new();
    for (id, what, s) in after {
        *by.entry(label(what)).or_default() += (s - start.get(id).copied().unwrap_or(0.0)).max(0.0);
    }
    by
}

fn most_first(by: std::collections::BTreeMap<&'static str, f64>) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = by.into_iter().map(|(k, s)| (k.to_string(), s)).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// `(bytes written, write requests)` completed so far by the block device
/// that holds `path` (`/sys/dev/block/<major>:<minor>/stat`): what the disk
/// really got, flushes of the page cache included. Whole-device counts, so
/// anything else writing to it shows too. `None` off a block device (tmpfs).
pub fn device_writes(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    // Linux's dev_t layout (glibc's gnu_dev_major / gnu_dev_minor).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    let f: Vec<u64> = stat.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // Fields 5 and 7 (1-based): writes completed, sectors (512 B) written.
    Some((f.get(6)? * 512, *f.get(4)?))
}

/// Two `kB` fields of `/proc/<pid>/status`, in bytes.
fn status_pair(pid: u32, a: &str, b: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field(a)?, field(b)?))
}

/// `(RssAnon, RssFile)` in bytes: heap versus file-backed pages (mmap).
pub fn rss_split(pid: u32) -> Option<(u64, u64)> {
    status_pair(pid, "RssAnon:", "RssFile:")
}

/// `(VmRSS, VmHWM)` in bytes.
pub fn memory(pid: u32) -> Option<(u64, u64)> {
    status_pair(pid, "VmRSS:", "VmHWM:")
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_self() {
        let pid = std::process::id();
        assert!(super::cpu_seconds(pid).is_some());
        let threads = super::thread_cpu(pid);
        assert!(!threads.is_empty());
        let (rss, hwm) = super::memory(pid).unwrap();
        assert!(rss > 0 && hwm >= rss);
        // The target dir's device, when it is a block device at all.
        if let Some((bytes, writes)) = super::device_writes(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))) {
            assert!(bytes > 0 && writes > 0);
        }
    }

    #[test]
    fn back_end_cpu_counts_new_processes_whole() {
        let before = [(10, "Redis", 1.0), (20, "PostgreSQL", 2.0)];
        let after = [
            (10, "Redis", 1.5),
            (20, "PostgreSQL", 2.25),
            (21, "PostgreSQL", 0.5),
            (30, "RabbitMQ", 0.0),
        ];
        assert_eq!(
            super::back_end_cpu_between(&before, &after),
            vec![("PostgreSQL".to_string(), 0.75), ("Redis".to_string(), 0.5)]
        );
    }

    #[test]
    fn cpu_is_summed_by_role_and_ended_threads_are_the_rest() {
        let t = |tid, name: &str, s| (tid, name.to_string(), s);
        let before = [
            t(1, "outrider-contro", 1.0),
            t(2, "outrider-shard-", 0.5),
            t(3, "gone", 0.2),
        ];
        let after = [
            t(1, "outrider-contro", 3.0),
            t(2, "outrider-shard-", 1.5),
            t(4, "outrider-shard-", 1.0),
            t(5, "outrider-sqlite", 0.25),
        ];
        let by_role = super::cpu_by_role(&before, &after, 5.0);
        assert_eq!(
            by_role,
            vec![
                ("control runtime".to_string(), 2.0),
                ("shards".to_string(), 2.0),
                ("ended threads".to_string(), 0.75),
                ("SQLite index writer".to_string(), 0.25),
            ]
        );
    }
}
