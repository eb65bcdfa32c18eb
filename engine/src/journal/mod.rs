//! The per-shard journal: where a shard makes its deliveries durable.
//!
//! Each shard appends to its own append-only, checksummed log under
//! `<data dir>/journal/<shard>/`: an *accept* record when a delivery is taken
//! on (the event and the shard's destinations for it), a *settle* record when
//! an attempt ends (the attempt, and whether a retry follows: its number and
//! due time), and a *carry* record when compaction copies a still-pending
//! delivery forward. Pending deliveries are the accepted ones not yet settled;
//! recovery replays the segments of every shard in parallel to find them.
//!
//! Writes are group-committed: the shard encodes records into a buffer on its
//! own thread and hands batches to its journal's sync thread, which writes
//! every batch it has and calls `fdatasync` once for all of them. A waiter is
//! told only after the sync that covers its record, so "committed" means on
//! disk — except with `OUTRIDER_EMBEDDED_SYNCHRONOUS=normal`, where the sync
//! is skipped and "committed" means written (it survives a process crash,
//! not a power loss). Nothing here is shared between shards.
//!
//! ## What replay needs, and when a segment may go
//!
//! A settle or carry record only ever refers to an accept (or carry) record
//! written *before* it. Replay reads segments in order, so it needs, for every
//! pending delivery, its accept record and every later record about it. Hence:
//!
//! 1. Segments are deleted as a **prefix** only: segment `s` goes once no
//!    delivery whose accept record is in `s` *or any earlier kept segment*
//!    is pending, and the index has read past it. Deleting a segment that
//!    holds settles of an accept kept in an older segment would bring that
//!    delivery back to life on replay (re-sent, retry count reset) — the bug
//!    the prefix rule closes. A deleted settle can only refer to an accept
//!    in the same deleted prefix.
//! 2. So that one old pending delivery (a long retry) does not pin every
//!    segment after it, the shard **carries** the pending deliveries of its
//!    oldest needed segment forward into the current one, in one carry record
//!    per accept (event, attempt number, due time, and the pair each replaces),
//!    whenever the segments kept hold more than twice what the pending
//!    deliveries need and the oldest is at least half settled (or the kept
//!    segments are more than four times the need), at most 4,096 deliveries
//!    a second. A carry record both adds the copy and removes the
//!    original, so no crash can leave both or neither. The old segment's
//!    deliveries count as gone only once the carry is committed.
//!
//! Disk use then follows the live backlog, whatever the age of the oldest
//! retry: at most about four times what it needs plus four segments (twice
//! plus two once the oldest kept segment is half settled), where "need" is
//! counted in deliveries per segment, not bytes. Segments rotate at `OUTRIDER_JOURNAL_SEGMENT_BYTES`
//! (default [`SEGMENT_BYTES`]).

pub mod codec;
pub mod index;
pub mod replay;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

pub use codec::{AcceptTarget, Record, Settle};

use crate::model::NextStep;

/// Segment files start with this magic.
pub const MAGIC: &[u8; 8] = b"ORJNL001";
/// A segment is closed once it holds about this many bytes.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The sync thread keeps at least this many bytes of zeros ahead of the
/// records, writing this many more each time, so most `fdatasync`s find the
/// file's size unchanged and have no metadata to commit (an append-only file
/// would make every one of them a file-system journal commit). A header of
/// zeros reads as the end of the records. Small steps: the commit that
/// writes a step also flushes it, and with 4 MiB steps those commits took
/// 10 ms and more (with the journal alone on its disk at 10,000 publishes/s:
/// 38-40 commits over 5 ms in 10 s, against 9-14 with 256 KiB steps).
const ZEROED_AHEAD: u64 = 256 * 1024;
/// What a zeroing step writes (one static buffer, not one allocation per step).
static ZEROS: [u8; ZEROED_AHEAD as usize] = [0; ZEROED_AHEAD as usize];
const OFFSET_BITS: u32 = 40;

/// Where a record starts: segment number and byte offset, packed in a u64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Loc(pub u64);

impl Loc {
    pub fn new(segment: u32, offset: u64) -> Self {
        Loc(((segment as u64) << OFFSET_BITS) | (offset & ((1 << OFFSET_BITS) - 1)))
    }
    pub fn segment(self) -> u32 {
        (self.0 >> OFFSET_BITS) as u32
    }
    pub fn offset(self) -> u64 {
        self.0 & ((1 << OFFSET_BITS) - 1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O error in {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal record at {loc:?} is unreadable: {source}")]
    Corrupt {
        loc: Loc,
        #[source]
        source: codec::CodecError,
    },
    /// An earlier write failed: later records cannot be trusted to follow it.
    #[error("the journal failed earlier and accepts no more writes")]
    Failed,
    #[error("the journal's sync thread stopped")]
    Closed,
}

fn io(path: &Path, source: std::io::Error) -> JournalError {
    JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn shard_dir(root: &Path, shard: usize) -> PathBuf {
    root.join(format!("{shard:04}"))
}

pub fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:010}.log"))
}

/// Segment numbers present in a shard's directory, ascending.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".log").and_then(|s| s.parse::<u32>().ok()) {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Positions shared between a shard's journal, its sync thread and the index.
#[derive(Debug, Default)]
pub struct Progress {
    /// End of what is committed (fsync'ed, or only written when syncs are off).
    pub durable: AtomicU64,
    /// How far the index has stored records.
    pub indexed: AtomicU64,
    /// Set by tests to hold commits back (fault injection).
    pub hold: AtomicBool,
    /// A write or sync failed: the journal takes no more records.
    pub failed: AtomicBool,
    /// Group commits made (one write + `fdatasync` each), the commit requests
    /// and bytes they carried, and how long each took (`GET /metrics`).
    pub commits: AtomicU64,
    pub commit_requests: AtomicU64,
    pub commit_bytes: AtomicU64,
    pub commit_latency: crate::latency::Histogram,
}

type Waiter = oneshot::Sender<Result<(), Arc<JournalError>>>;

struct Batch {
    segment: u32,
    /// The segment size limit, so the sync thread zeroes no further ahead.
    segment_bytes: u64,
    bytes: Vec<u8>,
    waiters: Vec<Waiter>,
}

/// The shard's side of its journal: appends records and asks for commits.
/// Lives on the shard's thread (not `Sync`-shared).
pub struct Journal {
    dir: PathBuf,
    segment_bytes: u64,
    segment: u32,
    offset: u64,
    buf: Vec<u8>,
    waiters: Vec<Waiter>,
    tx: flume::Sender<Batch>,
    /// Emptied buffers the sync thread hands back, so a batch allocates nothing.
    spare: flume::Receiver<Vec<u8>>,
    failed: Arc<AtomicBool>,
    pub progress: Arc<Progress>,
}

impl Journal {
    /// Opens a shard's journal for writing, starting a new segment after
    /// `last_segment` (recovery never appends to a segment it replayed).
    /// `wake` is poked after every commit (the index follows it).
    pub fn open(
        dir: &Path,
        next_segment: u32,
        fsync: bool,
        progress: Arc<Progress>,
        wake: Option<flume::Sender<()>>,
    ) -> Result<Journal, JournalError> {
        Self::open_with_sync(dir, next_segment, fsync, File::sync_data, progress, wake)
    }

    fn open_with_sync(
        dir: &Path,
        next_segment: u32,
        fsync: bool,
        sync_data: SyncFn,
        progress: Arc<Progress>,
        wake: Option<flume::Sender<()>>,
    ) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let first = create_segment(dir, next_segment)?;
        progress
            .durable
            .store(Loc::new(next_segment, MAGIC.len() as u64).0, Ordering::Release);
        let (tx, rx) = flume::unbounded();
        let (spare_tx, spare) = flume::bounded(8);
        let failed = Arc::new(AtomicBool::new(false));
        let sync = Syncer {
            spare: spare_tx,
            dir: dir.to_path_buf(),
            file: first,
            segment: next_segment,
            offset: MAGIC.len() as u64,
            zeroed_to: MAGIC.len() as u64,
            fsync,
            sync_data,
            failed: failed.clone(),
            progress: progress.clone(),
            wake,
        };
        std::thread::Builder::new()
            .name(format!(
                "outrider-journal-{}",
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ))
            .spawn(move || sync.run(rx))
            .map_err(|e| io(dir, e))?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            segment_bytes: SEGMENT_BYTES,
            segment: next_segment,
            offset: MAGIC.len() as u64,
            buf: Vec::with_capacity(64 * 1024),
            waiters: Vec::new(),
            tx,
            spare,
            failed,
            progress,
        })
    }

    /// Rotates segments at `bytes` instead of [`SEGMENT_BYTES`].
    pub fn with_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes.max(MAGIC.len() as u64 + 1);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment being written.
    pub fn current_segment(&self) -> u32 {
        self.segment
    }

    /// Encodes a record into the pending batch; returns where it will be.
    pub fn append(&mut self, rec: &Record) -> Loc {
        self.append_with(|buf| codec::encode(rec, buf))
    }

    /// Appends a settle record that closes a delivery without an attempt
    /// (moved elsewhere, or nothing to deliver to).
    pub fn append_closed(&mut self, accept: Loc, target: u16, attempt_number: u32) -> Loc {
        self.append_with(|buf| codec::encode_settle(accept, target, attempt_number, &NextStep::Done, None, buf))
    }

    /// Appends a record that `encode` frames into the batch (see
    /// [`codec::encode_accept`], [`codec::encode_settle`]).
    pub fn append_with(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> usize) -> Loc {
        let before = self.buf.len();
        let len = encode(&mut self.buf) as u64;
        if self.offset + len > self.segment_bytes && self.offset > MAGIC.len() as u64 {
            // Rotate: what came before goes to the old segment, this record
            // opens the next one.
            let tail = self.buf.split_off(before);
            self.flush();
            self.segment += 1;
            self.offset = MAGIC.len() as u64;
            self.buf = tail;
        }
        let loc = Loc::new(self.segment, self.offset);
        self.offset += len;
        loc
    }

    /// A future that resolves once everything appended so far is on disk.
    /// The batch leaves at the next [`Journal::flush`].
    pub fn commit(&mut self) -> oneshot::Receiver<Result<(), Arc<JournalError>>> {
        let (tx, rx) = oneshot::channel();
        if self.failed.load(Ordering::Acquire) {
            let _ = tx.send(Err(Arc::new(JournalError::Failed)));
        } else {
            self.waiters.push(tx);
        }
        rx
    }

    /// Hands the pending batch to the sync thread.
    pub fn flush(&mut self) {
        if self.buf.is_empty() && self.waiters.is_empty() {
            return;
        }
        let next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(64 * 1024));
        let batch = Batch {
            segment: self.segment,
            segment_bytes: self.segment_bytes,
            bytes: std::mem::replace(&mut self.buf, next),
            waiters: std::mem::take(&mut self.waiters),
        };
        if let Err(flume::SendError(b)) = self.tx.send(batch) {
            for w in b.waiters {
                let _ = w.send(Err(Arc::new(JournalError::Closed)));
            }
        }
    }
}

fn create_segment(dir: &Path, segment: u32) -> Result<File, JournalError> {
    let path = segment_path(dir, segment);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    f.write_all(MAGIC).map_err(|e| io(&path, e))?;
    // The new name must survive a crash too.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(f)
}

struct Syncer {
    spare: flume::Sender<Vec<u8>>,
    dir: PathBuf,
    file: File,
    segment: u32,
    offset: u64,
    /// Bytes of the file already written (records, then zeros).
    zeroed_to: u64,
    fsync: bool,
    /// `File::sync_data` (`fdatasync`); a test wraps it to see that commits
    /// wait for it.
    sync_data: SyncFn,
    failed: Arc<AtomicBool>,
    progress: Arc<Progress>,
    wake: Option<flume::Sender<()>>,
}

type SyncFn = fn(&File) -> std::io::Result<()>;

impl Syncer {
    fn run(mut self, rx: flume::Receiver<Batch>) {
        while let Ok(first) = rx.recv() {
            let mut batches = vec![first];
            while let Ok(b) = rx.try_recv() {
                batches.push(b);
            }
            while self.progress.hold.load(Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let started = std::time::Instant::now();
            let mut bytes_written = 0u64;
            let mut waiters = Vec::new();
            let mut result = if self.failed.load(Ordering::Acquire) {
                Err(JournalError::Failed)
            } else {
                Ok(())
            };
            for b in batches {
                waiters.extend(b.waiters);
                bytes_written += b.bytes.len() as u64;
                if result.is_ok() {
                    result = self.write(b.segment, b.segment_bytes, &b.bytes);
                }
                let mut bytes = b.bytes;
                if bytes.capacity() <= 1 << 20 {
                    bytes.clear();
                    let _ = self.spare.try_send(bytes);
                }
            }
            if result.is_ok() && self.fsync {
                let path = segment_path(&self.dir, self.segment);
                result = (self.sync_data)(&self.file).map_err(|e| io(&path, e));
            }
            match result {
                Ok(()) => {
                    let p = &self.progress;
                    p.commits.fetch_add(1, Ordering::Relaxed);
                    p.commit_requests.fetch_add(waiters.len() as u64, Ordering::Relaxed);
                    p.commit_bytes.fetch_add(bytes_written, Ordering::Relaxed);
                    p.commit_latency.observe(started.elapsed());
                    self.progress
                        .durable
                        .store(Loc::new(self.segment, self.offset).0, Ordering::Release);
                    for w in waiters {
                        let _ = w.send(Ok(()));
                    }
                    if let Some(wake) = &self.wake {
                        let _ = wake.try_send(());
                    }
                }
                Err(e) => {
                    if !matches!(e, JournalError::Failed) {
                        tracing::error!(error = %e, "journal write failed; this shard accepts no more work");
                    }
                    self.failed.store(true, Ordering::Release);
                    self.progress.failed.store(true, Ordering::Release);
                    let e = Arc::new(e);
                    for w in waiters {
                        let _ = w.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    fn write(&mut self, segment: u32, segment_bytes: u64, bytes: &[u8]) -> Result<(), JournalError> {
        if segment != self.segment {
            // The closed segment is synced before the next one gets records,
            // so "durable" never skips a hole.
            let path = segment_path(&self.dir, self.segment);
            if self.fsync {
                (self.sync_data)(&self.file).map_err(|e| io(&path, e))?;
            }
            self.file = create_segment(&self.dir, segment)?;
            self.segment = segment;
            self.offset = MAGIC.len() as u64;
            self.zeroed_to = MAGIC.len() as u64;
        }
        use std::os::unix::fs::FileExt;
        let path = segment_path(&self.dir, self.segment);
        let end = self.offset + bytes.len() as u64;
        if end + ZEROED_AHEAD > self.zeroed_to {
            // Not past the segment's size: small test segments stay small.
            let upto = (end.max(self.zeroed_to) + ZEROED_AHEAD).min(segment_bytes.max(end));
            let mut at = self.zeroed_to.max(end);
            while at < upto {
                let n = ((upto - at) as usize).min(ZEROS.len());
                self.file.write_all_at(&ZEROS[..n], at).map_err(|e| io(&path, e))?;
                at += n as u64;
            }
            self.zeroed_to = self.zeroed_to.max(upto);
        }
        self.file.write_all_at(bytes, self.offset).map_err(|e| io(&path, e))?;
        self.offset = end;
        Ok(())
    }
}

/// Reads records back by location (events of retries and recovered
/// deliveries are not kept in memory). Keeps one open file per segment.
#[derive(Default)]
pub struct Reader {
    files: std::collections::HashMap<u32, File>,
}

impl Reader {
    pub fn read(&mut self, dir: &Path, loc: Loc) -> Result<Record, JournalError> {
        use std::os::unix::fs::FileExt;
        let seg = loc.segment();
        let path = segment_path(dir, seg);
        let f = match self.files.entry(seg) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(File::open(&path).map_err(|e| io(&path, e))?),
        };
        let mut head = [0u8; codec::FRAME_HEADER];
        f.read_exact_at(&mut head, loc.offset()).map_err(|e| io(&path, e))?;
        let (len, crc) = codec::frame_header(&head).map_err(|source| JournalError::Corrupt { loc, source })?;
        let mut payload = vec![0u8; len];
        f.read_exact_at(&mut payload, loc.offset() + codec::FRAME_HEADER as u64)
            .map_err(|e| io(&path, e))?;
        codec::verify(&payload, crc).map_err(|source| JournalError::Corrupt { loc, source })?;
        codec::decode(&payload).map_err(|source| JournalError::Corrupt { loc, source })
    }

    /// Closes a segment's file (before it is deleted).
    pub fn forget(&mut self, segment: u32) {
        self.files.remove(&segment);
    }
}

#[cfg(test)]
mod tests {
    use super::codec::tests::event;
    use super::*;

    fn accept(id: &str, dests: &[&str]) -> Record {
        Record::Accept {
            accepted_at: 1_000,
            index_event: true,
            event: event(id),
            targets: dests
                .iter()
                .map(|d| AcceptTarget {
                    destination_id: d.to_string(),
                    attempt: 1,
                    manual: false,
                    due_ms: 0,
                })
                .collect(),
        }
    }

    fn settle(at: Loc, target: u16, n: u32, next: NextStep) -> Record {
        Record::Settle(Box::new(Settle {
            accept: at,
            target,
            attempt_number: n,
            next,
            attempt: None,
        }))
    }

    async fn commit(j: &mut Journal) {
        let c = j.commit();
        j.flush();
        c.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn pending_is_accepted_minus_settled_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(Progress::default());
        let mut j = Journal::open(dir.path(), 0, true, p.clone(), None)
            .unwrap()
            .with_segment_bytes(1024);
        let mut locs = Vec::new();
        for i in 0..40 {
            locs.push(j.append(&accept(&format!("e{i}"), &["d1", "d2"])));
        }
        assert!(j.current_segment() > 3, "rotated: {}", j.current_segment());
        // e0..e29 delivered to both; e30..e39: d1 retried, d2 done.
        for (i, at) in locs.iter().enumerate() {
            if i < 30 {
                j.append(&settle(*at, 0, 1, NextStep::Done));
            } else {
                j.append(&settle(
                    *at,
                    0,
                    1,
                    NextStep::Retry {
                        attempt: 2,
                        due_ms: 5_000,
                    },
                ));
            }
            j.append(&settle(*at, 1, 1, NextStep::Done));
        }
        // A stale settle (attempt 1 again) must not remove the retry.
        j.append(&settle(locs[35], 0, 1, NextStep::Done));
        commit(&mut j).await;
        assert_eq!(Loc(p.durable.load(Ordering::Acquire)).segment(), j.current_segment());
        drop(j);
        let r = replay::replay(dir.path(), 0).unwrap();
        assert_eq!(r.records, 40 + 80 + 1);
        assert!(r.damaged.is_empty(), "{:?}", r.damaged);
        let mut pending: Vec<_> = r
            .pending
            .iter()
            .map(|p| (p.loc, p.target, p.attempt, p.due_ms))
            .collect();
        pending.sort();
        let want: Vec<_> = locs[30..].iter().map(|l| (*l, 0u16, 2u32, 5_000i64)).collect();
        assert_eq!(pending, want);
        assert_eq!(r.live.values().sum::<u64>(), 10);
        assert_eq!(r.recent_ids.len(), 40);
        assert!(r.next_segment > *r.segments.last().unwrap());
        // Events come back from disk intact.
        let mut reader = Reader::default();
        match reader.read(dir.path(), locs[33]).unwrap() {
            Record::Accept { event: e, .. } => assert_eq!(*e, *event("e33")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_torn_tail_is_ignored_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(Progress::default());
        let mut j = Journal::open(dir.path(), 0, true, p.clone(), None).unwrap();
        j.append(&accept("e1", &["d1"]));
        j.append(&accept("e2", &["d1"]));
        commit(&mut j).await;
        drop(j);
        let path = segment_path(dir.path(), 0);
        let end = Loc(p.durable.load(Ordering::Acquire)).offset();
        assert!(std::fs::metadata(&path).unwrap().len() > end, "zeros are written ahead");
        assert_eq!(
            replay::replay(dir.path(), 0).unwrap().damaged,
            vec![],
            "zeros read as a clean end"
        );
        // Cut the second record short, as a crash mid-write would (the rest
        // of it stays zeros).
        {
            use std::os::unix::fs::FileExt;
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&[0u8; 5], end - 5).unwrap();
        }
        let r = replay::replay(dir.path(), 0).unwrap();
        assert_eq!(r.pending.len(), 1);
        assert_eq!(r.damaged.len(), 1);
        // A flipped byte inside a record is caught by its checksum.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len() + 20] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let r = replay::replay(dir.path(), 0).unwrap();
        assert_eq!(r.pending.len(), 0);
        assert!(r.damaged[0].2.contains("checksum"), "{:?}", r.damaged);
    }

    #[tokio::test]
    async fn a_carried_accept_replaces_its_original_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(Progress::default());
        let mut j = Journal::open(dir.path(), 0, true, p.clone(), None)
            .unwrap()
            .with_segment_bytes(1024);
        let a = j.append(&accept("e1", &["d1", "d2"]));
        j.append(&settle(
            a,
            1,
            1,
            NextStep::Retry {
                attempt: 2,
                due_ms: 9_000,
            },
        ));
        for i in 0..20 {
            j.append(&accept(&format!("x{i}"), &["d3"]));
        }
        // Carry d2's retry (attempt 2, due 9 s) forward; d1 stays.
        let target = AcceptTarget {
            destination_id: "d2".into(),
            attempt: 2,
            manual: false,
            due_ms: 9_000,
        };
        let c = j.append_with(|buf| codec::encode_carry(1_000, &event("e1"), &[target], &[(a, 1)], buf));
        assert!(c.segment() > a.segment());
        commit(&mut j).await;
        let pending = |dir: &Path| {
            let r = replay::replay(dir, 0).unwrap();
            let mut v: Vec<_> = r
                .pending
                .iter()
                .filter(|p| p.destination_id.as_ref() != "d3")
                .map(|p| (p.loc, p.target, p.destination_id.to_string(), p.attempt, p.due_ms))
                .collect();
            v.sort();
            v
        };
        let want = vec![(a, 0, "d1".to_string(), 1, 0), (c, 0, "d2".to_string(), 2, 9_000)];
        assert_eq!(pending(dir.path()), want);
        // The copy's event reads back whole, and is not indexed twice.
        match Reader::default().read(dir.path(), c).unwrap() {
            Record::Accept {
                event: e, index_event, ..
            } => {
                assert_eq!(*e, *event("e1"));
                assert!(!index_event);
            }
            other => panic!("{other:?}"),
        }
        // Once the original's segment is gone, the copy alone stands.
        std::fs::remove_file(segment_path(dir.path(), 0)).unwrap();
        let r = pending(dir.path());
        assert_eq!(r, vec![(c, 0, "d2".to_string(), 2, 9_000)]);
    }

    /// `fdatasync` calls seen by [`counting_sync`] (this test's journal only).
    static SYNCS: AtomicU64 = AtomicU64::new(0);

    fn counting_sync(f: &File) -> std::io::Result<()> {
        // Slow, so a commit that did not wait for it would be seen.
        std::thread::sleep(std::time::Duration::from_millis(50));
        f.sync_data()?;
        SYNCS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    #[tokio::test]
    async fn every_commit_waits_for_an_fdatasync_that_covers_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(Progress::default());
        let mut j = Journal::open_with_sync(dir.path(), 0, true, counting_sync, p.clone(), None)
            .unwrap()
            .with_segment_bytes(1024);
        for i in 0..30 {
            let before = SYNCS.load(Ordering::SeqCst);
            // Large enough that some commits cross a segment boundary.
            j.append(&accept(&format!("e{i}"), &["d1", "d2", "d3"]));
            commit(&mut j).await;
            assert!(
                SYNCS.load(Ordering::SeqCst) > before,
                "commit {i} resolved without an fdatasync after its write"
            );
        }
        assert!(j.current_segment() > 0, "the test crosses segments");
    }

    #[tokio::test]
    async fn a_commit_resolves_only_after_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(Progress::default());
        let mut j = Journal::open(dir.path(), 0, true, p.clone(), None).unwrap();
        let start = Loc(p.durable.load(Ordering::Acquire));
        p.hold.store(true, Ordering::Release);
        j.append(&accept("e1", &["d1"]));
        let mut c = j.commit();
        j.flush();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(c.try_recv().is_err(), "committed while the sync was held");
        assert_eq!(Loc(p.durable.load(Ordering::Acquire)), start);
        p.hold.store(false, Ordering::Release);
        c.await.unwrap().unwrap();
        assert!(Loc(p.durable.load(Ordering::Acquire)) > start);
    }
}
