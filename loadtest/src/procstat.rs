//! CPU time and memory of the server process, from `/proc` (Linux).

/// Clock ticks per second for `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// User + system CPU seconds used so far by `pid`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
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
        let (rss, hwm) = super::memory(pid).unwrap();
        assert!(rss > 0 && hwm >= rss);
        // The target dir's device, when it is a block device at all.
        if let Some((bytes, writes)) = super::device_writes(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))) {
            assert!(bytes > 0 && writes > 0);
        }
    }
}
