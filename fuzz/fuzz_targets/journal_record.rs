//! A journal segment read back after a crash may hold any bytes: decoding
//! must fail cleanly, and what decodes must encode and decode to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use outrider_engine::journal::codec;

fuzz_target!(|data: &[u8]| {
    let _ = codec::frame_header(data);
    let _ = codec::decode_head(data);
    if let Ok(record) = codec::decode(data) {
        let mut framed = Vec::new();
        codec::encode(&record, &mut framed);
        let (len, crc) = codec::frame_header(&framed).expect("our own frame");
        let start = framed.len() - len;
        let payload = &framed[start..];
        codec::verify(payload, crc).expect("our own checksum");
        assert_eq!(codec::decode(payload).expect("our own record"), record);
    }
});
