//! Ships log records (events and attempts) from the embedded store to an
//! external log store (PostgreSQL) in batches.
//!
//! The embedded store is the outbox: every record is already durable there
//! when it is accepted or attempted, and a cursor in the same database says
//! how far shipping got. If the log store is down, records simply wait on
//! disk and shipping resumes from the cursor when it returns; rewrites after a
//! crash are harmless because the log store's writes are idempotent.

use std::sync::Arc;
use std::time::Duration;

use crate::store::embedded::EmbeddedStore;
use crate::store::LogWriter;

/// Pause when there is nothing to ship.
const IDLE: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub fn spawn(source: Arc<EmbeddedStore>, sink: Arc<dyn LogWriter>, batch: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut ev, mut at) = loop {
            match source.log_cursor().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(error = %e, "log pipeline cannot read its cursor");
                    tokio::time::sleep(MAX_BACKOFF).await;
                }
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let b = match source.logs_after(ev, at, batch).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "log pipeline cannot read the embedded store");
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
            };
            if b.events.is_empty() && b.attempts.is_empty() {
                tokio::time::sleep(IDLE).await;
                continue;
            }
            let next_ev = b.events.last().map(|(s, _)| *s).unwrap_or(ev);
            let next_at = b.attempts.last().map(|(s, _)| *s).unwrap_or(at);
            let events: Vec<_> = b.events.into_iter().map(|(_, e)| Arc::new(e)).collect();
            let attempts: Vec<_> = b.attempts.into_iter().map(|(_, a)| a).collect();
            let n = events.len() + attempts.len();
            match sink.write_logs(events, attempts).await {
                Ok(()) => {
                    if backoff > Duration::from_millis(100) {
                        tracing::info!("log store reachable again; shipping resumed");
                    }
                    backoff = Duration::from_millis(100);
                    if let Err(e) = source.set_log_cursor(next_ev, next_at).await {
                        // The batch is shipped again later: writes are idempotent.
                        tracing::warn!(error = %e, "cannot save the log shipping cursor");
                        continue;
                    }
                    ev = next_ev;
                    at = next_at;
                    tracing::trace!(records = n, "log records shipped");
                }
                Err(e) => {
                    tracing::warn!(error = %e, records = n, retry_in_ms = backoff.as_millis() as u64,
                        "log store unavailable; records wait in the embedded store");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    })
}
