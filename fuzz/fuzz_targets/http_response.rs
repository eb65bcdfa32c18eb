//! A webhook endpoint's answer is tenant-controlled bytes: the response
//! reader must never panic, hang or keep more body than its cap, however the
//! bytes are split across reads.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use outrider_engine::http_client::codec::{ResponseReader, Step};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let cap = data[0] as usize * 16;
    let keep = data[1] & 1 == 1;
    let rest = &data[2..];
    let split = (data[1] as usize).min(rest.len());
    let mut reader = ResponseReader::new(cap).keeping_headers(keep);
    let mut buf = BytesMut::new();
    let mut done = false;
    for piece in [&rest[..split], &rest[split..]] {
        buf.extend_from_slice(piece);
        match reader.feed(&mut buf) {
            Ok(Step::Done) => {
                done = true;
                break;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
    if !done && !matches!(reader.eof(), Ok(Step::Done)) {
        return;
    }
    let parsed = reader.finish(buf.len());
    if cap > 0 {
        assert!(parsed.body.len() <= cap);
    }
    assert!(parsed.headers.len() <= outrider_engine::http_client::codec::MAX_KEPT_HEADERS);
});
