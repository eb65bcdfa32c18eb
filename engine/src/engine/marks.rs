//! Queue mode: done marks Redis did not take when their task's outcome was
//! committed, or a publish's idempotency key once its tasks were on the
//! queue (Redis down or restarting at that moment).
//!
//! A task's done mark is what makes a node ack, and not attempt, a stale
//! copy of a task whose outcome is already committed: its broker message
//! handed out again after a lost ack, or its entry in the shared schedule
//! sent again after its lease because the retry poller could not clear it.
//! Without the mark such a copy runs the attempt again, possibly after the
//! task's own retries, under the older attempt number.
//!
//! A publish's confirmed idempotency key plays the same part for a
//! publisher's retry of an event id already accepted (left unconfirmed, the
//! claim expires after its 5 s lease and the retry is delivered again).
//!
//! So a mark that cannot be written is not dropped: it is kept in memory and
//! appended (and synced) to `<data dir>/unwritten-done-marks` before the
//! task's message is acked (or the publish answered), and written to Redis as soon as Redis answers,
//! also after a restart (the file is read at start). Until then this node
//! refuses copies of those tasks (and publishes of those ids) on its own. A copy reaching another node
//! before Redis answers this one again is still attempted: the retry
//! schedule's lease (30 s) is the usual distance to such a copy, and this
//! node writes its marks within a second of Redis answering.
//!
//! The file holds one JSON line per mark, `["<key>", "<value>", <expires at,
//! ms>]`, and
//! is emptied once every mark in it is written. A torn last line (a crash
//! mid-append) is skipped: its task's message was not acked yet.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::store::redis::RedisEntityStore;
use crate::timefmt::now_ms;

const FILE: &str = "unwritten-done-marks";
/// Between tries while Redis does not answer.
const RETRY: Duration = Duration::from_secs(1);
/// Marks written per Redis round trip.
const BATCH: usize = 500;

pub(crate) struct UnwrittenMarks {
    path: PathBuf,
    /// Mark key → its value and when it expires (ms since the epoch).
    keys: Mutex<HashMap<String, (String, i64)>>,
    /// `keys.len()`, read without the lock on every task and publish.
    count: AtomicUsize,
    /// Appends, and the truncation once all are written, one at a time.
    file: Mutex<()>,
    wake: tokio::sync::Notify,
}

impl UnwrittenMarks {
    /// Reads the marks a previous run could not write (expired ones are
    /// dropped: Redis would have dropped them by now).
    pub(crate) fn open(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join(FILE);
        let mut keys = HashMap::new();
        match std::fs::File::open(&path) {
            Ok(f) => {
                let now = now_ms();
                for line in std::io::BufReader::new(f).lines() {
                    let line = line?;
                    match serde_json::from_str::<(String, String, i64)>(&line) {
                        Ok((key, value, until)) if until > now => {
                            keys.insert(key, (value, until));
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, path = %path.display(),
                            "skipping an unreadable line of the unwritten done marks (a write cut by a crash)"),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if !keys.is_empty() {
            tracing::info!(
                marks = keys.len(),
                "done marks a previous run could not write to Redis; writing them"
            );
        }
        Ok(Self {
            path,
            count: AtomicUsize::new(keys.len()),
            keys: Mutex::new(keys),
            file: Mutex::new(()),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Whether this mark is kept here, not in Redis yet.
    pub(crate) fn contains(&self, key: &str) -> bool {
        !self.is_empty() && self.keys.lock().contains_key(key)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count.load(Ordering::Relaxed) == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Keeps a mark Redis refused until it is written; returns once it is on
    /// disk (an error there is logged: the mark is still kept in memory).
    pub(crate) async fn keep(self: &Arc<Self>, key: String, value: &str, ttl_ms: i64) {
        let until = now_ms() + ttl_ms.max(1);
        let line = match serde_json::to_string(&(&key, value, until)) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a done mark");
                return;
            }
        };
        {
            let mut keys = self.keys.lock();
            keys.insert(key, (value.to_string(), until));
            self.count.store(keys.len(), Ordering::Relaxed);
        }
        self.wake.notify_one();
        let me = self.clone();
        let appended = tokio::task::spawn_blocking(move || me.append(&line)).await;
        match appended {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, path = %self.path.display(),
                "cannot keep a done mark on disk; it is kept in memory until Redis answers"),
            Err(e) => tracing::error!(error = %e, "done mark append did not run"),
        }
    }

    fn append(&self, line: &str) -> std::io::Result<()> {
        let _file = self.file.lock();
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_data()
    }

    /// Empties the file when every mark is written. The emptiness check
    /// runs under the file lock, so a mark kept meanwhile is appended after
    /// the truncation, never lost to it.
    fn truncate_if_done(&self) -> std::io::Result<()> {
        let _file = self.file.lock();
        if !self.keys.lock().is_empty() {
            return Ok(());
        }
        match std::fs::OpenOptions::new().write(true).open(&self.path) {
            Ok(f) => {
                if f.metadata()?.len() > 0 {
                    f.set_len(0)?;
                    f.sync_data()?;
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes the kept marks whenever there are some and Redis answers.
    pub(crate) async fn run(self: Arc<Self>, redis: Arc<RedisEntityStore>) {
        loop {
            let batch: Vec<(String, String, i64)> = {
                let keys = self.keys.lock();
                keys.iter()
                    .take(BATCH)
                    .map(|(k, (v, u))| (k.clone(), v.clone(), *u))
                    .collect()
            };
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            let now = now_ms();
            let live: Vec<(&str, &str, i64)> = batch
                .iter()
                .filter(|(_, _, until)| *until > now)
                .map(|(k, v, until)| (k.as_str(), v.as_str(), until - now))
                .collect();
            match redis.set_marks(&live).await {
                Ok(()) => {
                    {
                        let mut keys = self.keys.lock();
                        for (k, _, _) in &batch {
                            keys.remove(k);
                        }
                        self.count.store(keys.len(), Ordering::Relaxed);
                    }
                    tracing::info!(marks = batch.len(), "wrote done marks Redis missed before");
                    let me = self.clone();
                    match tokio::task::spawn_blocking(move || me.truncate_if_done()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, path = %self.path.display(),
                            "cannot empty the unwritten done marks file; its marks are written again at the next start"),
                        Err(e) => tracing::warn!(error = %e, "done mark file truncation did not run"),
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, marks = batch.len(), "done marks still not written; trying again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kept_marks_survive_a_restart_and_are_written_once_redis_answers() {
        let redis = Arc::new(crate::store::redis::tests::store().await);
        let dir = tempfile::tempdir().unwrap();
        let k1 = redis.task_key_of(&format!("ev-{}", now_ms()), "d1", 2, false);
        let k2 = redis.task_key_of(&format!("ev-{}", now_ms()), "d1", 3, true);
        let marks = Arc::new(UnwrittenMarks::open(dir.path()).unwrap());
        marks.keep(k1.clone(), "1", 60_000).await;
        marks.keep(k2.clone(), "1", 60_000).await;
        assert!(marks.contains(&k1) && marks.contains(&k2));
        assert!(!marks.contains("another"));
        // A crash now: the next run reads both back, and a torn last line is skipped.
        drop(marks);
        let path = dir.path().join(FILE);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"[\"torn")
            .unwrap();
        let marks = Arc::new(UnwrittenMarks::open(dir.path()).unwrap());
        assert_eq!(marks.len(), 2);
        assert!(marks.contains(&k1) && marks.contains(&k2));
        assert!(!redis.task_done(&k1).await.unwrap());
        let writer = tokio::spawn(marks.clone().run(redis.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !marks.is_empty() {
            assert!(std::time::Instant::now() < deadline, "marks not written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(redis.task_done(&k1).await.unwrap());
        assert!(redis.task_done(&k2).await.unwrap());
        assert!(!marks.contains(&k1));
        // Emptied once all are written: a restart has nothing to write.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&path).unwrap().len() > 0 {
            assert!(std::time::Instant::now() < deadline, "file not emptied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(UnwrittenMarks::open(dir.path()).unwrap().len(), 0);
        // A mark kept later is written too (the writer waits, it does not stop).
        let k3 = redis.task_key_of(&format!("ev-{}", now_ms()), "d2", 1, false);
        marks.keep(k3.clone(), "1", 60_000).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !redis.task_done(&k3).await.unwrap() {
            assert!(std::time::Instant::now() < deadline, "later mark not written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writer.abort();
    }

    #[tokio::test]
    async fn expired_marks_are_not_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let past = now_ms() - 1;
        let future = now_ms() + 60_000;
        let text = format!("[\"old\",\"1\",{past}]\n[\"new\",\"done\",{future}]\n");
        std::fs::write(dir.path().join(FILE), text).unwrap();
        let marks = UnwrittenMarks::open(dir.path()).unwrap();
        assert_eq!(marks.len(), 1);
        assert!(marks.contains("new") && !marks.contains("old"));
    }
}
