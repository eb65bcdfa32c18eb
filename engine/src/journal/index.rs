//! The index follower: reads every shard's committed journal records and
//! writes the queryable rows (events, attempts) into the embedded store in
//! large transactions, off the delivery path. Its position per shard is
//! stored in the same transaction as the rows, so after a crash it resumes
//! exactly where its last commit ended (rows are written idempotently anyway).

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::codec::{self, Record};
use super::{list_segments, segment_path, Loc, Progress, MAGIC};
use crate::model::{Attempt, Event};
use crate::store::embedded::EmbeddedStore;

/// Bytes read per step from one shard's journal.
const CHUNK: usize = 4 * 1024 * 1024;
/// Rows per index transaction, at most.
const MAX_ROWS: usize = 8192;
/// Under load, the follower waits this long after a transaction so the
/// next one is larger (fewer B-tree pages rewritten per row).
const BATCH_PAUSE: Duration = Duration::from_millis(20);
/// A transaction at least this large counts as "under load".
const LOADED_ROWS: usize = 128;
/// After a smaller transaction the follower still waits this long: a
/// trickle of events otherwise took one transaction each, and each commit
/// rewrites the same few pages (at 1,000 publishes/s the server spent 36 %
/// less CPU and wrote 69 % less to disk with this pause). The first records
/// after a quiet spell are still written at once.
const LIGHT_PAUSE: Duration = Duration::from_millis(10);
/// Index transactions are not synced one by one (they can be rebuilt from
/// the journals); this often, one is synced, and only positions covered by
/// a synced transaction let the shards delete journal segments.
const SYNC_EVERY: Duration = Duration::from_secs(2);

/// One shard's journal, as the index follows it.
pub struct Followed {
    pub shard: usize,
    pub dir: PathBuf,
    pub progress: Arc<Progress>,
}

struct Cursor {
    f: Followed,
    at: Loc,
    /// Committed in the index (maybe not synced yet).
    written: Loc,
    file: Option<(u32, std::fs::File)>,
    buf: Vec<u8>,
}

/// Starts the follower thread. It stops when `stop` is set.
pub fn spawn(
    store: Arc<EmbeddedStore>,
    shards: Vec<Followed>,
    wake: flume::Receiver<()>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("outrider-index".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "index follower cannot start");
                    return;
                }
            };
            rt.block_on(follow(store, shards, wake, stop));
        })
}

async fn follow(store: Arc<EmbeddedStore>, shards: Vec<Followed>, wake: flume::Receiver<()>, stop: Arc<AtomicBool>) {
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let saved = loop {
        match store.journal_cursors().await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "index follower cannot read its position; retrying");
                backoff.wait().await;
            }
        }
    };
    let mut cursors: Vec<Cursor> = shards
        .into_iter()
        .map(|f| {
            let first = || {
                let first = list_segments(&f.dir).ok().and_then(|v| v.first().copied()).unwrap_or(0);
                Loc::new(first, MAGIC.len() as u64)
            };
            let durable = Loc(f.progress.durable.load(Ordering::Acquire));
            // A position past the journal's end means the journal was
            // replaced (removed by hand, say): follow the new one from its start.
            let at = match saved.get(&f.shard).copied().map(Loc) {
                Some(at) if at <= durable => at,
                _ => first(),
            };
            f.progress.indexed.store(at.0, Ordering::Release);
            Cursor {
                written: at,
                f,
                at,
                file: None,
                buf: Vec::new(),
            }
        })
        .collect();
    backoff.reset();
    let mut last_sync = std::time::Instant::now();
    let mut unsynced = false;
    while !stop.load(Ordering::Acquire) {
        let mut events: Vec<Arc<Event>> = Vec::new();
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut moved = Vec::new();
        for c in cursors.iter_mut() {
            let before = c.at;
            if let Err(e) = c.read(&mut events, &mut attempts) {
                tracing::error!(shard = c.f.shard, error = %e, "index follower cannot read a journal");
            }
            if c.at != before {
                moved.push((c.f.shard, c.at.0));
            }
        }
        let sync = unsynced && last_sync.elapsed() >= SYNC_EVERY;
        if moved.is_empty() && !sync {
            let _ = wake.recv_timeout(Duration::from_millis(50));
            continue;
        }
        let rows = events.len() + attempts.len();
        match store.index(events, attempts, moved.clone(), sync).await {
            Ok(()) => {
                backoff.reset();
                for c in cursors.iter_mut() {
                    c.written = c.at;
                }
                if sync {
                    for c in &cursors {
                        c.f.progress.indexed.store(c.written.0, Ordering::Release);
                    }
                    last_sync = std::time::Instant::now();
                    unsynced = false;
                } else {
                    unsynced = true;
                }
                let pause = if rows >= LOADED_ROWS { BATCH_PAUSE } else { LIGHT_PAUSE };
                tokio::time::sleep(pause).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write the event/attempt index; retrying");
                // Read the same records again next time.
                for c in cursors.iter_mut() {
                    c.at = c.written;
                    c.file = None;
                }
                backoff.wait().await;
            }
        }
    }
}

impl Cursor {
    /// Reads committed records after `at` into the row lists.
    fn read(&mut self, events: &mut Vec<Arc<Event>>, attempts: &mut Vec<Attempt>) -> std::io::Result<()> {
        let durable = Loc(self.f.progress.durable.load(Ordering::Acquire));
        while events.len() + attempts.len() < MAX_ROWS && self.at < durable {
            let seg = self.at.segment();
            if self.file.as_ref().is_none_or(|(s, _)| *s != seg) {
                match std::fs::File::open(segment_path(&self.f.dir, seg)) {
                    Ok(f) => self.file = Some((seg, f)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if !self.next_segment()? {
                            return Ok(());
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some((_, file)) = &self.file else { return Ok(()) };
            // In the segment being written, stop at the durable end; older
            // segments are read to their end.
            let limit = if seg == durable.segment() {
                (durable.offset() - self.at.offset()) as usize
            } else {
                usize::MAX
            };
            let want = limit.min(self.buf.len().max(CHUNK));
            self.buf.resize(want, 0);
            let n = read_at_most(file, &mut self.buf, self.at.offset())?;
            let mut pos = 0usize;
            let mut progressed = false;
            while pos + codec::FRAME_HEADER <= n {
                let Ok((len, crc)) = codec::frame_header(&self.buf[pos..n]) else {
                    break;
                };
                if pos + codec::FRAME_HEADER + len > n {
                    if pos == 0 && n == self.buf.len() {
                        // One record larger than the chunk: read it whole next time.
                        self.buf.resize(codec::FRAME_HEADER + len, 0);
                        progressed = true;
                    }
                    break;
                }
                let payload = &self.buf[pos + codec::FRAME_HEADER..pos + codec::FRAME_HEADER + len];
                if codec::verify(payload, crc).is_err() {
                    break;
                }
                match codec::decode(payload) {
                    Ok(Record::Accept { index_event, event, .. }) => {
                        if index_event {
                            events.push(event);
                        }
                    }
                    Ok(Record::Settle(s)) => {
                        if let Some(a) = s.attempt {
                            attempts.push(a);
                        }
                    }
                    Err(e) => {
                        tracing::error!(shard = self.f.shard, error = %e, "skipping an undecodable journal record")
                    }
                }
                pos += codec::FRAME_HEADER + len;
                progressed = true;
            }
            self.at = Loc::new(seg, self.at.offset() + pos as u64);
            if !progressed {
                if seg < durable.segment() {
                    // End of a closed segment (or its damaged tail): go on.
                    if !self.next_segment()? {
                        return Ok(());
                    }
                } else {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Moves to the first segment after the current one; false if none yet.
    fn next_segment(&mut self) -> std::io::Result<bool> {
        let cur = self.at.segment();
        let next = list_segments(&self.f.dir)?.into_iter().find(|s| *s > cur);
        match next {
            Some(s) => {
                self.at = Loc::new(s, MAGIC.len() as u64);
                self.file = None;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

fn read_at_most(f: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
