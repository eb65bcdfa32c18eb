//! Starts the kernel's writeback of the store's files early and in small
//! steps, so that the disk never gets them as one burst.
//!
//! The SQLite index commits without a sync (its rows are derived from the
//! synced journals), so its WAL pages wait in the page cache until a
//! checkpoint syncs the WAL and then the database file: megabytes at once,
//! every checkpoint. A shard's group commit that `fdatasync`s its journal
//! behind such a burst waits for the whole of it: that was the publish
//! latency tail (journal commits of 5–100 ms where the disk's own sync takes
//! 0.2 ms). Asking for writeback of what is dirty every few milliseconds
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: start, don't wait) keeps what a
//! journal sync can find queued ahead of it small. Durability is unchanged:
//! this only starts writes earlier; the checkpoint's syncs still decide what
//! is durable.
//!
//! With it, checkpoints fell behind the index writer in about half of the
//! runs at 6,000 deliveries/s (the WAL then grew to 1 GiB); the checkpoint
//! loop bounds the WAL since (`WAL_RESTART_FRAMES` in `embedded.rs`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often dirty pages are handed to the disk. Short enough that what
/// piles up between two calls (a few hundred KiB at full load) is written in
/// well under a millisecond.
const EVERY: Duration = Duration::from_millis(10);

/// Runs until `stop` is set, on a thread of its own (`outrider-wback`).
pub(super) fn spawn(files: Vec<PathBuf>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("outrider-wback".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EVERY);
                for path in &files {
                    // Opened each time: SQLite may delete and create the WAL
                    // again, and an old descriptor would name the old file.
                    if let Ok(file) = std::fs::File::open(path) {
                        start_writeback(&file);
                    }
                }
            }
        })
        .map(|_| ())
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: `file` is open for the whole call; the call reads no memory of
    // ours. Offset 0 and length 0 mean the whole file. A failure (an old
    // kernel, a file system without it) only loses the smoothing.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File) {}
