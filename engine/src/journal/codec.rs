//! The journal's record format.
//!
//! A frame is `len: u32 LE | crc32(payload): u32 LE | payload`. The payload
//! starts with a kind byte. Integers are little-endian, strings are
//! `len: u32 | UTF-8 bytes`, optional strings carry a presence byte first.
//! In an accept record the event's data comes last, so recovery can read the
//! destinations of a record without touching its (large) payload.

use std::sync::Arc;

use crate::model::{Attempt, AttemptStatus, Event, NextStep, StringMap};

use super::Loc;

pub const FRAME_HEADER: usize = 8;
const KIND_ACCEPT: u8 = 1;
const KIND_SETTLE: u8 = 2;
/// An accept record carried forward from an older segment (compaction): an
/// accept whose targets replace, in the same record, the `(accept, target)`
/// pairs they were copied from. One record, so a crash cannot leave both the
/// copy and the original pending, nor neither.
const KIND_CARRY: u8 = 3;
/// [`KIND_ACCEPT`] and [`KIND_CARRY`] with the event's sub-millisecond
/// nanoseconds after its time (`Event::time_ns`). The older kinds are still
/// read (as 0 ns); these are written. A build older than these kinds cannot
/// read a journal written by this one: downgrading needs a drained node.
const KIND_ACCEPT_NS: u8 = 4;
const KIND_CARRY_NS: u8 = 5;
/// A frame longer than this is corruption, not a record.
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("record truncated")]
    Truncated,
    #[error("checksum mismatch")]
    Checksum,
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("invalid UTF-8 in a record")]
    Utf8,
    #[error("frame length {0} out of range")]
    Length(usize),
}

/// One destination of an accept record: where the delivery stands.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptTarget {
    pub destination_id: String,
    pub attempt: u32,
    pub manual: bool,
    /// Unix ms; `<= now` means at once.
    pub due_ms: i64,
}

/// What a settle record says about one `(accept record, target)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settle {
    pub accept: Loc,
    pub target: u16,
    /// The attempt number that ran (a settle of an older number is stale).
    pub attempt_number: u32,
    pub next: NextStep,
    /// `None` when nothing was attempted (destination deleted or disabled).
    pub attempt: Option<Attempt>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Accept {
        accepted_at: i64,
        /// Whether the index should store the event (false for a manual
        /// retry of an event that is already there).
        index_event: bool,
        event: Arc<Event>,
        targets: Vec<AcceptTarget>,
    },
    Settle(Box<Settle>),
}

/// An accept record read without its payload: what recovery needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptHead {
    pub accepted_at: i64,
    pub event_id: String,
    pub manual_any: bool,
    pub targets: Vec<AcceptTarget>,
    /// For a carried accept: the `(accept, target)` each target replaces.
    pub carried: Vec<(Loc, u16)>,
}

/// A record as recovery sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Head {
    Accept(AcceptHead),
    Settle {
        accept: Loc,
        target: u16,
        attempt_number: u32,
        next: NextStep,
    },
}

struct W<'a>(&'a mut Vec<u8>);

impl W<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }
}

struct R<'a> {
    b: &'a [u8],
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.b.len() < n {
            return Err(CodecError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(self.u64()? as i64)
    }
    fn str(&mut self) -> Result<&'a str, CodecError> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| CodecError::Utf8)
    }
    fn string(&mut self) -> Result<String, CodecError> {
        self.str().map(String::from)
    }
    fn opt(&mut self) -> Result<Option<String>, CodecError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.string().map(Some),
        }
    }
    fn skip_str(&mut self) -> Result<(), CodecError> {
        let n = self.u32()? as usize;
        self.take(n).map(|_| ())
    }
}

/// An attempt borrowed from wherever its parts live (no copies to encode it).
#[derive(Debug, Clone, Copy)]
pub struct AttemptRef<'a> {
    pub id: &'a str,
    pub tenant_id: &'a str,
    pub event_id: &'a str,
    pub destination_id: &'a str,
    pub destination_type: &'a str,
    pub topic: &'a str,
    pub attempt_number: u32,
    pub manual: bool,
    pub status: AttemptStatus,
    pub time: i64,
    pub code: Option<&'a str>,
    pub response_data: Option<&'a serde_json::Value>,
}

impl<'a> AttemptRef<'a> {
    pub fn of(a: &'a Attempt) -> Self {
        AttemptRef {
            id: &a.id,
            tenant_id: &a.tenant_id,
            event_id: &a.event_id,
            destination_id: &a.destination_id,
            destination_type: &a.destination_type,
            topic: &a.topic,
            attempt_number: a.attempt_number,
            manual: a.manual,
            status: a.status,
            time: a.time,
            code: a.code.as_deref(),
            response_data: a.response_data.as_ref(),
        }
    }

    pub fn to_owned(self) -> Attempt {
        Attempt {
            id: self.id.into(),
            tenant_id: self.tenant_id.into(),
            event_id: self.event_id.into(),
            destination_id: self.destination_id.into(),
            destination_type: self.destination_type.into(),
            attempt_number: self.attempt_number,
            manual: self.manual,
            status: self.status,
            time: self.time,
            code: self.code.map(String::from),
            response_data: self.response_data.cloned(),
            topic: self.topic.into(),
        }
    }
}

/// Frames a payload written by `body`; returns the frame's length.
fn frame(out: &mut Vec<u8>, body: impl FnOnce(&mut W<'_>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    body(&mut W(out));
    let len = out.len() - start - FRAME_HEADER;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    len + FRAME_HEADER
}

/// Appends a framed accept record to `out`; returns the frame's length.
pub fn encode_accept(
    accepted_at: i64,
    index_event: bool,
    event: &Event,
    targets: &[AcceptTarget],
    out: &mut Vec<u8>,
) -> usize {
    frame(out, |w| {
        w.u8(KIND_ACCEPT_NS);
        accept_body(w, accepted_at, index_event, event, targets);
    })
}

/// Appends a framed carried accept: `targets[i]` replaces `from[i]`. The
/// event is not indexed again.
pub fn encode_carry(
    accepted_at: i64,
    event: &Event,
    targets: &[AcceptTarget],
    from: &[(Loc, u16)],
    out: &mut Vec<u8>,
) -> usize {
    debug_assert_eq!(targets.len(), from.len());
    frame(out, |w| {
        w.u8(KIND_CARRY_NS);
        w.u16(from.len() as u16);
        for (loc, target) in from {
            w.u64(loc.0);
            w.u16(*target);
        }
        accept_body(w, accepted_at, false, event, targets);
    })
}

fn accept_body(w: &mut W<'_>, accepted_at: i64, index_event: bool, event: &Event, targets: &[AcceptTarget]) {
    {
        w.i64(accepted_at);
        w.u8(index_event as u8);
        w.str(&event.id);
        w.str(&event.tenant_id);
        w.opt(event.destination_id.as_deref());
        w.str(&event.topic);
        w.u8(event.eligible_for_retry as u8);
        w.i64(event.time);
        w.u32(event.time_ns);
        w.u32(event.metadata.len() as u32);
        for (k, v) in event.metadata.iter() {
            w.str(k);
            w.str(v);
        }
        w.u32(event.matched_destination_ids.len() as u32);
        for d in &event.matched_destination_ids {
            w.str(d);
        }
        w.u16(targets.len() as u16);
        for t in targets {
            w.str(&t.destination_id);
            w.u32(t.attempt);
            w.u8(t.manual as u8);
            w.i64(t.due_ms);
        }
        w.str(&event.data);
    }
}

/// Appends a framed settle record to `out`; returns the frame's length.
pub fn encode_settle(
    accept: Loc,
    target: u16,
    attempt_number: u32,
    next: &NextStep,
    attempt: Option<AttemptRef<'_>>,
    out: &mut Vec<u8>,
) -> usize {
    frame(out, |w| {
        w.u8(KIND_SETTLE);
        w.u64(accept.0);
        w.u16(target);
        w.u32(attempt_number);
        match *next {
            NextStep::Done => w.u8(0),
            NextStep::Retry { attempt, due_ms } => {
                w.u8(1);
                w.u32(attempt);
                w.i64(due_ms);
            }
        }
        match attempt {
            None => w.u8(0),
            Some(a) => {
                w.u8(1);
                w.str(a.id);
                w.str(a.tenant_id);
                w.str(a.event_id);
                w.str(a.destination_id);
                w.str(a.destination_type);
                w.str(a.topic);
                w.u32(a.attempt_number);
                w.u8(a.manual as u8);
                w.u8((a.status == AttemptStatus::Success) as u8);
                w.i64(a.time);
                w.opt(a.code);
                match a.response_data {
                    None => w.u8(0),
                    Some(v) => {
                        w.u8(1);
                        // Serialised straight into the frame, length patched after.
                        let at = w.0.len();
                        w.u32(0);
                        let _ = serde_json::to_writer(&mut *w.0, v);
                        let n = (w.0.len() - at - 4) as u32;
                        w.0[at..at + 4].copy_from_slice(&n.to_le_bytes());
                    }
                }
            }
        }
    })
}

/// Appends one framed record to `out`; returns the frame's length.
pub fn encode(rec: &Record, out: &mut Vec<u8>) -> usize {
    match rec {
        Record::Accept {
            accepted_at,
            index_event,
            event,
            targets,
        } => encode_accept(*accepted_at, *index_event, event, targets, out),
        Record::Settle(s) => encode_settle(
            s.accept,
            s.target,
            s.attempt_number,
            &s.next,
            s.attempt.as_ref().map(AttemptRef::of),
            out,
        ),
    }
}

/// Reads a frame header: the payload length and checksum.
pub fn frame_header(b: &[u8]) -> Result<(usize, u32), CodecError> {
    if b.len() < FRAME_HEADER {
        return Err(CodecError::Truncated);
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if len == 0 || len > MAX_FRAME {
        return Err(CodecError::Length(len));
    }
    Ok((len, crc))
}

/// Checks a payload against its frame's checksum.
pub fn verify(payload: &[u8], crc: u32) -> Result<(), CodecError> {
    if crc32fast::hash(payload) == crc {
        Ok(())
    } else {
        Err(CodecError::Checksum)
    }
}

/// Decodes one whole framed record (as [`encode_settle`] and the other
/// encoders write it), checking its length and checksum.
pub fn decode_framed(b: &[u8]) -> Result<Record, CodecError> {
    let (len, crc) = frame_header(b)?;
    let payload = &b[FRAME_HEADER..];
    if payload.len() != len {
        return Err(CodecError::Length(payload.len()));
    }
    verify(payload, crc)?;
    decode(payload)
}

/// `with_ns`: the record is of a `*_NS` kind.
fn accept_head(r: &mut R<'_>, with_ns: bool) -> Result<(i64, bool, Event, Vec<AcceptTarget>), CodecError> {
    let accepted_at = r.i64()?;
    let index_event = r.u8()? != 0;
    let id = r.string()?;
    let tenant_id = r.string()?;
    let destination_id = r.opt()?;
    let topic = r.string()?;
    let eligible_for_retry = r.u8()? != 0;
    let time = r.i64()?;
    let time_ns = if with_ns { r.u32()? % 1_000_000 } else { 0 };
    let n = r.u32()? as usize;
    let mut metadata = StringMap::new();
    for _ in 0..n {
        let k = r.string()?;
        let v = r.string()?;
        metadata.insert(k, v);
    }
    let n = r.u32()? as usize;
    let mut matched = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        matched.push(r.string()?);
    }
    let targets = targets(r)?;
    let event = Event {
        id,
        tenant_id,
        destination_id,
        topic,
        eligible_for_retry,
        time,
        time_ns,
        metadata,
        data: Arc::from(""),
        matched_destination_ids: matched,
    };
    Ok((accepted_at, index_event, event, targets))
}

fn targets(r: &mut R<'_>) -> Result<Vec<AcceptTarget>, CodecError> {
    let n = r.u16()? as usize;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(AcceptTarget {
            destination_id: r.string()?,
            attempt: r.u32()?,
            manual: r.u8()? != 0,
            due_ms: r.i64()?,
        });
    }
    Ok(v)
}

fn carried(r: &mut R<'_>) -> Result<Vec<(Loc, u16)>, CodecError> {
    let n = r.u16()? as usize;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push((Loc(r.u64()?), r.u16()?));
    }
    Ok(v)
}

fn next_step(r: &mut R<'_>) -> Result<NextStep, CodecError> {
    Ok(match r.u8()? {
        0 => NextStep::Done,
        _ => NextStep::Retry {
            attempt: r.u32()?,
            due_ms: r.i64()?,
        },
    })
}

/// Decodes a verified payload completely.
pub fn decode(payload: &[u8]) -> Result<Record, CodecError> {
    let mut r = R { b: payload };
    let kind = r.u8()?;
    if matches!(kind, KIND_CARRY | KIND_CARRY_NS) {
        carried(&mut r)?;
    }
    match kind {
        KIND_ACCEPT | KIND_CARRY | KIND_ACCEPT_NS | KIND_CARRY_NS => {
            let with_ns = matches!(kind, KIND_ACCEPT_NS | KIND_CARRY_NS);
            let (accepted_at, index_event, mut event, targets) = accept_head(&mut r, with_ns)?;
            event.data = Arc::from(r.str()?);
            Ok(Record::Accept {
                accepted_at,
                index_event,
                event: Arc::new(event),
                targets,
            })
        }
        KIND_SETTLE => {
            let accept = Loc(r.u64()?);
            let target = r.u16()?;
            let attempt_number = r.u32()?;
            let next = next_step(&mut r)?;
            let attempt = match r.u8()? {
                0 => None,
                _ => Some(Attempt {
                    id: r.string()?,
                    tenant_id: r.string()?,
                    event_id: r.string()?,
                    destination_id: r.string()?,
                    destination_type: r.string()?,
                    topic: r.string()?,
                    attempt_number: r.u32()?,
                    manual: r.u8()? != 0,
                    status: if r.u8()? != 0 {
                        AttemptStatus::Success
                    } else {
                        AttemptStatus::Failed
                    },
                    time: r.i64()?,
                    code: r.opt()?,
                    response_data: match r.opt()? {
                        None => None,
                        Some(s) => serde_json::from_str(&s).ok(),
                    },
                }),
            };
            Ok(Record::Settle(Box::new(Settle {
                accept,
                target,
                attempt_number,
                next,
                attempt,
            })))
        }
        k => Err(CodecError::Kind(k)),
    }
}

/// Decodes only what recovery needs (no event payload, no attempt body).
pub fn decode_head(payload: &[u8]) -> Result<Head, CodecError> {
    let mut r = R { b: payload };
    let kind = r.u8()?;
    let carried = if matches!(kind, KIND_CARRY | KIND_CARRY_NS) {
        carried(&mut r)?
    } else {
        Vec::new()
    };
    match kind {
        KIND_ACCEPT | KIND_CARRY | KIND_ACCEPT_NS | KIND_CARRY_NS => {
            let with_ns = matches!(kind, KIND_ACCEPT_NS | KIND_CARRY_NS);
            let accepted_at = r.i64()?;
            let _index = r.u8()?;
            let event_id = r.string()?;
            r.skip_str()?; // tenant
            if r.u8()? != 0 {
                r.skip_str()?; // destination_id
            }
            r.skip_str()?; // topic
            r.take(1 + 8 + if with_ns { 4 } else { 0 })?; // eligible, time[, time_ns]
            let n = r.u32()? as usize;
            for _ in 0..2 * n {
                r.skip_str()?;
            }
            let n = r.u32()? as usize;
            for _ in 0..n {
                r.skip_str()?;
            }
            let targets = targets(&mut r)?;
            Ok(Head::Accept(AcceptHead {
                accepted_at,
                event_id,
                manual_any: targets.iter().any(|t| t.manual),
                targets,
                carried,
            }))
        }
        KIND_SETTLE => Ok(Head::Settle {
            accept: Loc(r.u64()?),
            target: r.u16()?,
            attempt_number: r.u32()?,
            next: next_step(&mut r)?,
        }),
        k => Err(CodecError::Kind(k)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn event(id: &str) -> Arc<Event> {
        let mut md = StringMap::new();
        md.insert("k".into(), "v".into());
        Arc::new(Event {
            id: id.into(),
            tenant_id: "t1".into(),
            destination_id: Some("d9".into()),
            topic: "user.created".into(),
            eligible_for_retry: true,
            time: 1_700_000_000_123,
            time_ns: 456_789,
            metadata: md,
            data: Arc::from("{\"a\":1}"),
            matched_destination_ids: vec!["d1".into(), "d2".into()],
        })
    }

    /// An accept record as builds before `KIND_ACCEPT_NS` wrote it: no
    /// nanoseconds after the time. It still reads, as 0 ns.
    #[test]
    fn accept_records_of_the_older_kind_still_read() {
        let e = event("e1");
        let targets = vec![AcceptTarget {
            destination_id: "d1".into(),
            attempt: 1,
            manual: false,
            due_ms: 5,
        }];
        let mut buf = Vec::new();
        encode_accept(42, true, &e, &targets, &mut buf);
        let mut payload = frame_payload(&buf).to_vec();
        assert_eq!(payload[0], KIND_ACCEPT_NS);
        // kind, accepted_at, index, id, tenant, Some(destination_id), topic, eligible, time
        let at = 1 + 8 + 1 + (4 + 2) + (4 + 2) + (1 + 4 + 2) + (4 + 12) + 1 + 8;
        assert_eq!(&payload[at..at + 4], &456_789u32.to_le_bytes());
        payload.drain(at..at + 4);
        payload[0] = KIND_ACCEPT;
        let mut old = Vec::new();
        old.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        old.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        old.extend_from_slice(&payload);
        let mut want = (*e).clone();
        want.time_ns = 0;
        assert_eq!(
            decode(frame_payload(&old)).unwrap(),
            Record::Accept {
                accepted_at: 42,
                index_event: true,
                event: Arc::new(want),
                targets,
            }
        );
        match decode_head(frame_payload(&old)).unwrap() {
            Head::Accept(h) => assert_eq!((h.accepted_at, h.event_id.as_str(), h.targets.len()), (42, "e1", 1)),
            h => panic!("{h:?}"),
        }
    }

    fn frame_payload(buf: &[u8]) -> &[u8] {
        let (len, crc) = frame_header(buf).unwrap();
        let p = &buf[FRAME_HEADER..FRAME_HEADER + len];
        verify(p, crc).unwrap();
        p
    }

    #[test]
    fn accept_and_settle_round_trip() {
        let accept = Record::Accept {
            accepted_at: 42,
            index_event: true,
            event: event("e1"),
            targets: vec![AcceptTarget {
                destination_id: "d1".into(),
                attempt: 3,
                manual: true,
                due_ms: 99,
            }],
        };
        let mut buf = Vec::new();
        let n = encode(&accept, &mut buf);
        assert_eq!(n, buf.len());
        assert_eq!(decode(frame_payload(&buf)).unwrap(), accept);
        match decode_head(frame_payload(&buf)).unwrap() {
            Head::Accept(h) => {
                assert_eq!((h.accepted_at, h.event_id.as_str(), h.manual_any), (42, "e1", true));
                assert_eq!(h.targets.len(), 1);
            }
            h => panic!("{h:?}"),
        }
        let settle = Record::Settle(Box::new(Settle {
            accept: Loc::new(7, 4096),
            target: 1,
            attempt_number: 2,
            next: NextStep::Retry {
                attempt: 3,
                due_ms: 1234,
            },
            attempt: Some(Attempt {
                id: "a1".into(),
                tenant_id: "t1".into(),
                event_id: "e1".into(),
                destination_id: "d1".into(),
                destination_type: "webhook".into(),
                attempt_number: 2,
                manual: false,
                status: AttemptStatus::Failed,
                time: 5,
                code: Some("500".into()),
                // A float that serde_json reads back one ulp off unless its
                // float_roundtrip parsing is on (found by the journal_record
                // fuzz target).
                response_data: Some(serde_json::json!({"status": 500, "body": "x", "n": 5.555555555555556e41})),
                topic: "user.created".into(),
            }),
        }));
        let mut buf = Vec::new();
        encode(&settle, &mut buf);
        assert_eq!(decode(frame_payload(&buf)).unwrap(), settle);
    }

    #[test]
    fn a_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        encode(
            &Record::Accept {
                accepted_at: 1,
                index_event: true,
                event: event("e1"),
                targets: vec![],
            },
            &mut buf,
        );
        let last = buf.len() - 1;
        buf[last] ^= 1;
        let (len, crc) = frame_header(&buf).unwrap();
        assert_eq!(
            verify(&buf[FRAME_HEADER..FRAME_HEADER + len], crc),
            Err(CodecError::Checksum)
        );
    }
}
