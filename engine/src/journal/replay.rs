//! Recovery: replays one shard's segments and returns what is still pending.
//!
//! Pending = accepted targets minus settled ones. Only record heads are
//! decoded; events stay on disk and are read back when their delivery runs,
//! so a large backlog costs a few dozen bytes of memory per delivery.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use super::codec::{self, Head};
use super::{list_segments, segment_path, JournalError, Loc, MAGIC};
use crate::model::NextStep;

/// A delivery that was accepted and not yet settled.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub loc: Loc,
    pub target: u16,
    pub destination_id: Arc<str>,
    pub attempt: u32,
    pub manual: bool,
    pub due_ms: i64,
}

#[derive(Debug, Default)]
pub struct Recovered {
    pub pending: Vec<Pending>,
    /// Pending deliveries per segment of their accept record.
    pub live: BTreeMap<u32, u64>,
    /// Deliveries accepted (or carried) into each segment, settled or not:
    /// with `live`, how much of a segment is still needed.
    pub born: BTreeMap<u32, u64>,
    /// Segments found, ascending.
    pub segments: Vec<u32>,
    /// Where each segment's readable records end.
    pub ends: BTreeMap<u32, u64>,
    /// Where new writes start: a fresh segment after every replayed one.
    pub next_segment: u32,
    /// Event ids accepted at or after the idempotency horizon, with the time.
    pub recent_ids: Vec<(String, i64)>,
    /// Manual retries: `(event id, destination id, attempt)`; they supersede
    /// scheduled retries with lower attempt numbers.
    pub manual: Vec<(String, String, u32)>,
    pub records: u64,
    /// Segments whose tail could not be read (a torn write after a crash, or
    /// corruption); records after that point are ignored.
    pub damaged: Vec<(u32, u64, String)>,
}

struct Entry {
    /// Index into the interned destination ids.
    destination: u32,
    attempt: u32,
    manual: bool,
    due_ms: i64,
}

/// Replays `dir`. `idempotency_since`: accepts at or after this time (ms)
/// are reported in `recent_ids`.
pub fn replay(dir: &Path, idempotency_since: i64) -> Result<Recovered, JournalError> {
    let mut recent = Vec::new();
    let mut out = replay_with(dir, idempotency_since, &mut |id, at| recent.push((id.to_string(), at)))?;
    out.recent_ids = recent;
    Ok(out)
}

/// Like [`replay`], handing each recent accept's `(event id, time)` to
/// `recent` instead of collecting them (a large journal would hold them all).
pub fn replay_with(
    dir: &Path,
    idempotency_since: i64,
    recent: &mut dyn FnMut(&str, i64),
) -> Result<Recovered, JournalError> {
    let segments = list_segments(dir).map_err(|e| super::io(dir, e))?;
    let mut out = Recovered {
        next_segment: segments.last().map_or(0, |s| s + 1),
        segments: segments.clone(),
        ..Default::default()
    };
    let mut pending: HashMap<(Loc, u16), Entry> = HashMap::new();
    let mut interned: HashMap<String, u32> = HashMap::new();
    let mut ids: Vec<Arc<str>> = Vec::new();
    let mut payload = Vec::new();
    for seg in segments {
        let path = segment_path(dir, seg);
        let file = std::fs::File::open(&path).map_err(|e| super::io(&path, e))?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        if r.read_exact(&mut magic).is_err() || &magic != MAGIC {
            out.damaged.push((seg, 0, "missing segment header".into()));
            continue;
        }
        let mut offset = MAGIC.len() as u64;
        loop {
            let mut head = [0u8; codec::FRAME_HEADER];
            match read_full(&mut r, &mut head) {
                Ok(0) => break,
                Ok(n) if n < head.len() => {
                    out.damaged.push((seg, offset, "truncated frame header".into()));
                    break;
                }
                Ok(_) => {}
                Err(e) => return Err(super::io(&path, e)),
            }
            // Zeros written ahead of the records: the clean end.
            if head == [0u8; codec::FRAME_HEADER] {
                break;
            }
            let (len, crc) = match codec::frame_header(&head) {
                Ok(x) => x,
                Err(e) => {
                    out.damaged.push((seg, offset, e.to_string()));
                    break;
                }
            };
            payload.resize(len, 0);
            match read_full(&mut r, &mut payload) {
                Ok(n) if n == len => {}
                Ok(_) => {
                    out.damaged.push((seg, offset, "truncated record".into()));
                    break;
                }
                Err(e) => return Err(super::io(&path, e)),
            }
            if let Err(e) = codec::verify(&payload, crc) {
                out.damaged.push((seg, offset, e.to_string()));
                break;
            }
            let loc = Loc::new(seg, offset);
            offset += (codec::FRAME_HEADER + len) as u64;
            out.records += 1;
            match codec::decode_head(&payload).map_err(|source| JournalError::Corrupt { loc, source })? {
                Head::Accept(a) => {
                    if a.accepted_at >= idempotency_since {
                        recent(&a.event_id, a.accepted_at);
                    }
                    *out.born.entry(seg).or_default() += a.targets.len() as u64;
                    for (i, t) in a.targets.into_iter().enumerate() {
                        // A carried target replaces the pair it was copied
                        // from (gone already if its segment was collected).
                        if let Some(from) = a.carried.get(i) {
                            pending.remove(from);
                        }
                        if t.manual {
                            out.manual
                                .push((a.event_id.clone(), t.destination_id.clone(), t.attempt));
                        }
                        let id = match interned.get(&t.destination_id) {
                            Some(id) => *id,
                            None => {
                                ids.push(Arc::from(t.destination_id.as_str()));
                                let id = (ids.len() - 1) as u32;
                                interned.insert(t.destination_id, id);
                                id
                            }
                        };
                        pending.insert(
                            (loc, i as u16),
                            Entry {
                                destination: id,
                                attempt: t.attempt,
                                manual: t.manual,
                                due_ms: t.due_ms,
                            },
                        );
                    }
                }
                Head::Settle {
                    accept,
                    target,
                    attempt_number,
                    next,
                } => {
                    let key = (accept, target);
                    // A settle of an older attempt than the one pending is stale.
                    if pending.get(&key).is_some_and(|e| e.attempt == attempt_number) {
                        match next {
                            NextStep::Done => {
                                pending.remove(&key);
                            }
                            NextStep::Retry { attempt, due_ms } => {
                                if let Some(e) = pending.get_mut(&key) {
                                    e.attempt = attempt;
                                    e.due_ms = due_ms;
                                    e.manual = false;
                                }
                            }
                        }
                    }
                }
            }
        }
        // Records end where the last good frame ends (zeros or damage follow).
        out.ends.insert(seg, offset);
    }
    drop(interned);
    let mut list = Vec::with_capacity(pending.len());
    list.extend(pending.into_iter().map(|((loc, target), e)| {
        *out.live.entry(loc.segment()).or_default() += 1;
        Pending {
            loc,
            target,
            destination_id: ids[e.destination as usize].clone(),
            attempt: e.attempt,
            manual: e.manual,
            due_ms: e.due_ms,
        }
    }));
    out.pending = list;
    // Newest first: the shard takes them from the back, so recovered work
    // resumes oldest first, in acceptance order.
    out.pending
        .sort_unstable_by_key(|p| std::cmp::Reverse((p.due_ms, p.loc, p.target)));
    Ok(out)
}

/// Reads until `buf` is full or the end; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
