//! Why a node did not start. Each case names what the node was doing (the
//! setting, file or part) and keeps its cause; secrets never appear (a back
//! end's error names its setting, not the URL).

use std::path::PathBuf;

use crate::journal::JournalError;
use crate::queue::QueueError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A file or directory of the node: the data dir, its lock, the journal.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the directory's lock.
    #[error("{} is in use by another Outrider process ({setting} must be one per process)", dir.display())]
    InUse { dir: PathBuf, setting: &'static str },
    /// `OUTRIDER_JOURNAL_DIR` changed while the journal used before still
    /// holds segments: their deliveries would never be replayed.
    #[error(
        "the journal of this data dir is at {} and still holds segments, but OUTRIDER_JOURNAL_DIR is {}: \
         move the shard directories (0000, 0001, ...) there first, or set OUTRIDER_JOURNAL_DIR back \
         (a data dir copied together with its journal: delete {} once the copy's journal is in place)",
        previous.display(),
        configured.display(),
        marker.display()
    )]
    JournalMoved {
        previous: PathBuf,
        configured: PathBuf,
        marker: PathBuf,
    },
    /// A store named by `setting` (`POSTGRES_URL`, `REDIS_HOST`).
    #[error("{setting}: {source}")]
    Store {
        setting: &'static str,
        #[source]
        source: StoreError,
    },
    #[error("POSTGRES_URL: migrations failed: {0}")]
    Migrations(#[source] StoreError),
    /// A queue named by `setting` (`RABBITMQ_SERVER_URL`, `PUBLISH_AWS_SQS_REGION`, ...).
    #[error("{setting}: {source}")]
    Queue {
        setting: &'static str,
        #[source]
        source: QueueError,
    },
    /// A journal could not be replayed, opened or written.
    #[error("{what}: {source}")]
    Journal {
        what: &'static str,
        #[source]
        source: std::sync::Arc<JournalError>,
    },
    /// A replay thread died (a bug: it panicked).
    #[error("journal recovery failed: {0}")]
    Replay(&'static str),
    /// A thread of the node could not be started.
    #[error("cannot start {what}: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Settings the delivery side reads at start (the signing secret, the
    /// destinations' extra CA file).
    #[error("{0}")]
    Settings(String),
}

impl StartupError {
    pub(super) fn file(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StartupError::File { action, path, source }
    }

    pub(super) fn store(setting: &'static str) -> impl FnOnce(StoreError) -> Self {
        move |source| StartupError::Store { setting, source }
    }

    pub(super) fn queue(setting: &'static str) -> impl FnOnce(QueueError) -> Self {
        move |source| StartupError::Queue { setting, source }
    }

    pub(super) fn journal<E: Into<std::sync::Arc<JournalError>>>(what: &'static str) -> impl FnOnce(E) -> Self {
        move |source| StartupError::Journal {
            what,
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_case_names_what_the_node_was_doing() {
        let e = StartupError::file("create", "/data/x")(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(e.to_string().starts_with("cannot create /data/x: "), "{e}");
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
        let e = StartupError::InUse {
            dir: "/data".into(),
            setting: "OUTRIDER_DATA_DIR",
        };
        assert_eq!(
            e.to_string(),
            "/data is in use by another Outrider process (OUTRIDER_DATA_DIR must be one per process)"
        );
        let e = StartupError::store("REDIS_HOST")(StoreError::Unavailable("connection refused".into()));
        assert!(e.to_string().starts_with("REDIS_HOST: "), "{e}");
        assert!(e.to_string().contains("connection refused"), "{e}");
    }
}
