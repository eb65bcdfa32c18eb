//! Sans-IO HTTP/1.1 for the one exchange a delivery needs: a `POST` request
//! written into a buffer, and a response read from whatever bytes arrive.
//! A webhook needs only the status and a capped body, so this is all the
//! protocol the shard speaks; it costs about two thirds of hyper's CPU per
//! request (`../shared/research/runtime.md`: 5.6 vs 8.2 µs).
//!
//! Limits: a response head of at most [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`]
//! headers; `Content-Length`, `chunked` and close-delimited bodies; 1xx
//! interim responses skipped; no pipelining (a connection is reused only when
//! a response ended exactly where the bytes did).

use std::borrow::Cow;
use std::io::Write as _;

use bytes::{Buf, Bytes, BytesMut};

/// A response head larger than this is refused.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers per response head, at most.
pub const MAX_HEADERS: usize = 100;
/// A chunk-size line or a trailer line longer than this is refused.
const MAX_LINE: usize = 4096;
/// Bytes of trailers, at most.
const MAX_TRAILERS: usize = 16 * 1024;

/// Header names the client writes itself: the message framing is ours, so a
/// caller's value for one of these is dropped rather than sent twice.
const FRAMING: &[&str] = &["host", "content-length", "transfer-encoding", "connection"];

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("malformed chunked body")]
    Chunked,
    #[error("unexpected 101 Switching Protocols")]
    Upgrade,
    #[error("connection closed before the response was complete")]
    Incomplete,
}

/// Request headers of one attempt, validated as they are added. When a name
/// is given twice, the later value is the one sent.
#[derive(Debug, Default)]
pub struct Headers<'a> {
    list: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

/// `token` characters (RFC 9110 §5.6.2).
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible characters, spaces, tabs and obs-text; no CR, LF or other controls.
fn valid_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

impl<'a> Headers<'a> {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            list: Vec::with_capacity(n),
        }
    }

    /// Adds a header; an invalid name or value (a CR or LF that would split
    /// the request, say) is refused and `false` returned.
    pub fn insert(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) -> bool {
        let (name, value) = (name.into(), value.into());
        if !valid_name(&name) || !valid_value(&value) {
            return false;
        }
        self.list.push((name, value));
        true
    }

    /// The value that would be sent for `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.list
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The headers that will be sent, in order, later duplicates winning.
    pub fn effective(&self) -> impl Iterator<Item = (&str, &str)> {
        self.list.iter().enumerate().filter_map(move |(i, (n, v))| {
            let overridden = self.list[i + 1..].iter().any(|(m, _)| m.eq_ignore_ascii_case(n));
            let framing = FRAMING.iter().any(|f| f.eq_ignore_ascii_case(n));
            (!overridden && !framing).then_some((n.as_ref(), v.as_ref()))
        })
    }
}

/// Writes a `POST` request head (everything up to the body) into `out`.
/// Names are sent lower-case, as hyper did.
pub fn write_post_head(out: &mut Vec<u8>, path: &str, authority: &str, headers: &Headers<'_>, body_len: usize) {
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in headers.effective() {
        out.extend(n.bytes().map(|b| b.to_ascii_lowercase()));
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Writing into a Vec cannot fail.
    let _ = write!(out, "content-length: {body_len}\r\n\r\n");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers(usize),
    UntilClose,
    Done,
}

/// Whether the response is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    NeedMore,
    Done,
}

/// `Retry-After`'s value as a wait: delta-seconds, or an HTTP date (a date
/// in the past is no wait). Anything else is ignored.
pub fn parse_retry_after(v: &str) -> Option<std::time::Duration> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Absurd values saturate; the retry schedule caps the wait anyway.
        return Some(std::time::Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub status: u16,
    /// The body, up to the cap; empty when truncated.
    pub body: Bytes,
    /// The body was larger than the cap and was not kept.
    pub truncated: bool,
    /// The connection may carry another request.
    pub reusable: bool,
    /// `Retry-After`, as a wait from now (delta-seconds or an HTTP date).
    pub retry_after: Option<std::time::Duration>,
    /// `Location` (at most [`MAX_LOCATION`] bytes), so a redirect that
    /// fails an attempt says where the endpoint moved.
    pub location: Option<String>,
    /// Every header, as received, when the reader was asked to keep them
    /// (at most [`MAX_KEPT_HEADERS`] and [`MAX_KEPT_HEADER_BYTES`]).
    pub headers: Vec<(String, String)>,
}

/// The longest `Location` kept; a longer one is cut at a character boundary.
pub const MAX_LOCATION: usize = 2048;
/// Bounds on the headers kept: an endpoint cannot make an attempt's record large.
pub const MAX_KEPT_HEADERS: usize = 64;
pub const MAX_KEPT_HEADER_BYTES: usize = 8192;

/// Reads one response from the bytes of a connection, as they arrive.
#[derive(Debug)]
pub struct ResponseReader {
    cap: usize,
    state: State,
    status: u16,
    keep_alive: bool,
    body: BytesMut,
    truncated: bool,
    retry_after: Option<std::time::Duration>,
    location: Option<String>,
    /// `Some` when headers are kept.
    headers: Option<Vec<(String, String)>>,
}

impl ResponseReader {
    /// `cap`: body bytes kept at most (0 = unlimited).
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            state: State::Head,
            status: 0,
            keep_alive: true,
            body: BytesMut::new(),
            truncated: false,
            retry_after: None,
            location: None,
            headers: None,
        }
    }

    /// Keeps the response's headers too (only Hookdeck's result shows them:
    /// the webhook path does not pay for it).
    pub fn keeping_headers(mut self, keep: bool) -> Self {
        self.headers = keep.then(Vec::new);
        self
    }

    /// Consumes what it can from the front of `buf`.
    pub fn feed(&mut self, buf: &mut BytesMut) -> Result<Step, CodecError> {
        loop {
            match self.state {
                State::Done => return Ok(Step::Done),
                State::Head => {
                    if !self.head(buf)? {
                        return Ok(Step::NeedMore);
                    }
                }
                State::Fixed(left) => {
                    if left == 0 {
                        self.state = State::Done;
                        continue;
                    }
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    self.keep(buf, n);
                    if self.state != State::Done {
                        self.state = State::Fixed(left - n as u64);
                    }
                }
                State::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            State::Trailers(0)
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_LINE => return Err(CodecError::Chunked),
                    Ok(httparse::Status::Partial) => return Ok(Step::NeedMore),
                    Err(_) => return Err(CodecError::Chunked),
                },
                State::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    self.keep(buf, n);
                    if self.state != State::Done {
                        let left = left - n as u64;
                        self.state = if left == 0 {
                            State::ChunkEnd
                        } else {
                            State::ChunkData(left)
                        };
                    }
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(CodecError::Chunked);
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() > MAX_LINE {
                            return Err(CodecError::Chunked);
                        }
                        return Ok(Step::NeedMore);
                    };
                    let seen = seen + end + 2;
                    if seen > MAX_TRAILERS {
                        return Err(CodecError::Chunked);
                    }
                    buf.advance(end + 2);
                    self.state = if end == 0 { State::Done } else { State::Trailers(seen) };
                }
                State::UntilClose => {
                    let n = buf.len();
                    if n == 0 {
                        return Ok(Step::NeedMore);
                    }
                    self.keep(buf, n);
                    if self.state == State::Done {
                        continue;
                    }
                    return Ok(Step::NeedMore);
                }
            }
        }
    }

    /// The peer closed the connection: a close-delimited body ends here;
    /// anything else was cut short.
    pub fn eof(&mut self) -> Result<Step, CodecError> {
        match self.state {
            State::Done => Ok(Step::Done),
            State::UntilClose => {
                self.state = State::Done;
                Ok(Step::Done)
            }
            _ => Err(CodecError::Incomplete),
        }
    }

    /// The response, once [`Step::Done`] was returned. `leftover`: bytes
    /// after it (a connection with any is not reused).
    pub fn finish(self, leftover: usize) -> Parsed {
        Parsed {
            status: self.status,
            body: if self.truncated {
                Bytes::new()
            } else {
                self.body.freeze()
            },
            truncated: self.truncated,
            reusable: self.keep_alive && !self.truncated && leftover == 0 && self.state == State::Done,
            retry_after: self.retry_after,
            location: self.location,
            headers: self.headers.unwrap_or_default(),
        }
    }

    /// Takes `n` body bytes; past the cap the body is dropped and reading
    /// stops (the connection is then closed, not drained).
    fn keep(&mut self, buf: &mut BytesMut, n: usize) {
        if self.cap > 0 && self.body.len() + n > self.cap {
            self.truncated = true;
            self.keep_alive = false;
            self.body = BytesMut::new();
            buf.advance(n);
            self.state = State::Done;
            return;
        }
        if self.body.is_empty() {
            // The common case, one read holding the whole body: no copy.
            self.body = buf.split_to(n);
        } else {
            self.body.extend_from_slice(&buf[..n]);
            buf.advance(n);
        }
    }

    /// Parses a head; `false` when more bytes are needed.
    fn head(&mut self, buf: &mut BytesMut) -> Result<bool, CodecError> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        let used = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => return Err(CodecError::HeadTooLarge),
            Ok(httparse::Status::Partial) => return Ok(false),
            Err(e) => return Err(CodecError::Head(e)),
        };
        let status = resp.code.unwrap_or(0);
        if status == 101 {
            return Err(CodecError::Upgrade);
        }
        if (100..200).contains(&status) {
            // An interim response (100 Continue, 103 Early Hints): the real one follows.
            buf.advance(used);
            return Ok(true);
        }
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut other_coding = false;
        let mut keep_alive = resp.version == Some(1);
        if let Some(kept) = &mut self.headers {
            // An interim (1xx) head's headers are not the response's.
            kept.clear();
            let mut bytes = 0;
            for h in resp.headers.iter().take(MAX_KEPT_HEADERS) {
                bytes += h.name.len() + h.value.len();
                if bytes > MAX_KEPT_HEADER_BYTES {
                    break;
                }
                kept.push((h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()));
            }
        }
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .map_err(|_| CodecError::ContentLength)?
                    .trim();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CodecError::ContentLength);
                }
                let n: u64 = v.parse().map_err(|_| CodecError::ContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(CodecError::ContentLength);
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Only the last coding decides whether the body is chunked.
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
                chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
                other_coding = !chunked;
            } else if h.name.eq_ignore_ascii_case("retry-after") {
                self.retry_after = std::str::from_utf8(h.value).ok().and_then(parse_retry_after);
            } else if h.name.eq_ignore_ascii_case("location") {
                let v = String::from_utf8_lossy(h.value);
                let mut end = v.len().min(MAX_LOCATION);
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                self.location = Some(v[..end].to_string());
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|b| *b == b',') {
                    let t = token.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") && resp.version == Some(0) {
                        keep_alive = true;
                    }
                }
            }
        }
        buf.advance(used);
        self.status = status;
        self.keep_alive = keep_alive;
        self.state = if status == 204 || status == 304 {
            State::Done
        } else if chunked {
            State::ChunkSize
        } else if other_coding {
            self.keep_alive = false;
            State::UntilClose
        } else if let Some(n) = length {
            if self.cap > 0 && n > self.cap as u64 {
                self.truncated = true;
                self.keep_alive = false;
                State::Done
            } else {
                self.body.reserve(n as usize);
                State::Fixed(n)
            }
        } else {
            self.keep_alive = false;
            State::UntilClose
        };
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Feeds `input` in the given pieces; `eof` after the last.
    fn read(cap: usize, pieces: &[&[u8]], eof: bool) -> Result<(Parsed, usize), CodecError> {
        let mut r = ResponseReader::new(cap);
        let mut buf = BytesMut::new();
        for p in pieces {
            buf.extend_from_slice(p);
            if r.feed(&mut buf)? == Step::Done {
                let left = buf.len();
                return Ok((r.finish(left), left));
            }
        }
        if eof && r.eof()? == Step::Done {
            return Ok((r.finish(buf.len()), buf.len()));
        }
        Err(CodecError::Incomplete)
    }

    fn whole(cap: usize, input: &str) -> Result<Parsed, CodecError> {
        read(cap, &[input.as_bytes()], false).map(|(p, _)| p)
    }

    #[test]
    fn headers_are_kept_only_when_asked_and_within_bounds() {
        let input = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Id: a\r\nX-Id: b\r\n\r\n";
        assert!(whole(0, input).unwrap().headers.is_empty());
        let mut r = ResponseReader::new(0).keeping_headers(true);
        let mut buf = BytesMut::from(input);
        assert_eq!(r.feed(&mut buf).unwrap(), Step::Done);
        let kept = r.finish(0).headers;
        let want: Vec<(String, String)> = [("Content-Length", "0"), ("X-Id", "a"), ("X-Id", "b")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(kept, want);
        // A huge header is not kept (nor any after it): the record stays small.
        let big = format!(
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nX-Big: {}\r\nX-C: 3\r\nContent-Length: 0\r\n\r\n",
            "v".repeat(MAX_KEPT_HEADER_BYTES)
        );
        let mut r = ResponseReader::new(0).keeping_headers(true);
        let mut buf = BytesMut::from(big.as_str());
        assert_eq!(r.feed(&mut buf).unwrap(), Step::Done);
        let kept = r.finish(0).headers;
        assert_eq!(kept, vec![("X-A".to_string(), "1".to_string())]);
    }

    #[test]
    fn content_length_body() {
        let p = whole(0, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!(
            (p.status, &p.body[..], p.truncated, p.reusable),
            (200, &b"hello"[..], false, true)
        );
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let p = whole(
            0,
            "HTTP/1.1 500 Oops\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!((p.status, &p.body[..], p.reusable), (500, &b"hello!"[..], true));
    }

    #[test]
    fn close_delimited_body_ends_at_eof_and_is_not_reused() {
        let (p, _) = read(0, &[b"HTTP/1.1 200 OK\r\n\r\nab", b"cd"], true).unwrap();
        assert_eq!((&p.body[..], p.reusable), (&b"abcd"[..], false));
        // A chunked body cut short is an error, not a short body.
        let e = read(
            0,
            &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"],
            true,
        );
        assert_eq!(e.unwrap_err(), CodecError::Incomplete);
    }

    #[test]
    fn interim_responses_are_skipped_and_no_body_statuses_end_at_the_head() {
        let p = whole(0, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((p.status, p.body.len(), p.reusable), (204, 0, true));
        assert_eq!(
            whole(0, "HTTP/1.1 101 Switching Protocols\r\n\r\n").unwrap_err(),
            CodecError::Upgrade
        );
    }

    #[test]
    fn connection_close_and_http_1_0_are_not_reused() {
        let p = whole(0, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(!p.reusable);
        let p = whole(0, "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(!p.reusable);
        let p = whole(
            0,
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert!(p.reusable);
        // Bytes after the response (a server that answered twice): not reused.
        let (p, left) = read(0, &[b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP"], false).unwrap();
        assert_eq!((left, p.reusable), (4, false));
    }

    #[test]
    fn bodies_over_the_cap_are_dropped() {
        let p = whole(4, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!((p.truncated, p.body.len(), p.reusable), (true, 0, false));
        let p = whole(
            4,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((p.truncated, p.body.len()), (true, 0));
        let p = whole(4, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd").unwrap();
        assert_eq!((p.truncated, &p.body[..]), (false, &b"abcd"[..]));
    }

    #[test]
    fn malformed_responses_are_errors() {
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXX",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(whole(0, bad).is_err(), "{bad:?} was accepted");
        }
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(whole(0, &huge).unwrap_err(), CodecError::HeadTooLarge);
    }

    /// Every response split at random points reads the same as in one piece.
    #[test]
    fn any_split_of_the_bytes_reads_the_same() {
        let cases = [
            "HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: b\r\n\r\nhello world",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 502 Bad\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n2;x=y\r\nab\r\n0\r\nT: v\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for case in cases {
            let want = whole(0, case).unwrap();
            let bytes = case.as_bytes();
            for _ in 0..300 {
                let mut cuts: Vec<usize> = (0..rng.random_range(1..6))
                    .map(|_| rng.random_range(0..bytes.len()))
                    .collect();
                cuts.sort_unstable();
                let mut pieces = Vec::new();
                let mut at = 0;
                for c in cuts {
                    pieces.push(&bytes[at..c]);
                    at = c;
                }
                pieces.push(&bytes[at..]);
                let (got, _) = read(0, &pieces, false).unwrap();
                assert_eq!(got, want, "{case:?} split as {pieces:?}");
            }
        }
    }

    /// Random bytes never panic the reader.
    #[test]
    fn garbage_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let seeds: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 ",
        ];
        for _ in 0..2000 {
            let mut input = seeds[rng.random_range(0..seeds.len())].to_vec();
            for _ in 0..rng.random_range(0..64) {
                input.push(
                    *b"0123456789abcdefX\r\n;: "
                        .get(rng.random_range(0..23))
                        .unwrap_or(&b'x'),
                );
            }
            let mut r = ResponseReader::new(8);
            let mut buf = BytesMut::from(&input[..]);
            let _ = r.feed(&mut buf);
            let _ = r.eof();
        }
    }

    #[test]
    fn request_head_drops_framing_headers_and_keeps_the_later_duplicate() {
        let mut h = Headers::default();
        assert!(h.insert("Content-Type", "application/json"));
        assert!(h.insert("x-a", "1"));
        assert!(h.insert("Content-Length", "999"));
        assert!(h.insert("X-A", "2"));
        assert!(!h.insert("x-bad", "a\r\nx-injected: 1"));
        assert!(!h.insert("bad name", "v"));
        let mut out = Vec::new();
        write_post_head(&mut out, "/hook?x=1", "example.com:8080", &h, 12);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /hook?x=1 HTTP/1.1\r\nhost: example.com:8080\r\ncontent-type: application/json\r\nx-a: 2\r\ncontent-length: 12\r\n\r\n"
        );
        assert_eq!(h.get("x-A"), Some("2"));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        use std::time::{Duration, SystemTime};
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&soon).unwrap();
        assert!(d > Duration::from_secs(27) && d <= Duration::from_secs(30), "{d:?}");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        for bad in ["", "-1", "1.5", "soon"] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
        let mut r = ResponseReader::new(0);
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n"[..]);
        assert_eq!(r.feed(&mut buf).unwrap(), Step::Done);
        assert_eq!(r.finish(0).retry_after, Some(Duration::from_secs(7)));
    }
}
