//! Opaque, versioned seek cursors: `"<resource>v01:<position>"`, read as a
//! big-endian number and written in base 62 (`0-9a-zA-Z`), as Outpost does.

use crate::error::ApiError;

const DIGITS: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const VERSION: &str = "01";

fn to_base62(bytes: &[u8]) -> String {
    let mut num: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
    let mut out = Vec::new();
    while !num.is_empty() {
        let mut rem: u32 = 0;
        let mut next = Vec::with_capacity(num.len());
        for &b in &num {
            let acc = (rem << 8) | b as u32;
            let q = acc / 62;
            rem = acc % 62;
            if !(next.is_empty() && q == 0) {
                next.push(q as u8);
            }
        }
        out.push(DIGITS[rem as usize]);
        num = next;
    }
    if out.is_empty() {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The longest cursor we write: a 3-letter resource, the version, a
/// millisecond time and an id of at most `MAX_ID_LEN` bytes come to about
/// 290 bytes, 390 base-62 digits. Longer input is refused before any
/// arithmetic: base conversion costs (digits x bytes), so an unbounded
/// cursor would let one request burn CPU quadratically in its length.
pub const MAX_CURSOR_LEN: usize = 512;

/// Each character's digit value, or 0xff.
const VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 62 {
        t[DIGITS[i] as usize] = i as u8;
        i += 1;
    }
    t
};

fn from_base62(s: &str) -> Option<Vec<u8>> {
    if s.len() > MAX_CURSOR_LEN {
        return None;
    }
    // Little-endian bytes; ten digits (62^10 < 2^60) folded in per pass.
    let mut num: Vec<u8> = Vec::with_capacity(s.len());
    for chunk in s.as_bytes().chunks(10) {
        let mut mul: u64 = 1;
        let mut add: u64 = 0;
        for &c in chunk {
            let d = VALUE[c as usize];
            if d == 0xff {
                return None;
            }
            mul *= 62;
            add = add * 62 + d as u64;
        }
        let mut carry = add as u128;
        for b in num.iter_mut() {
            let acc = (*b as u128) * mul as u128 + carry;
            *b = (acc & 0xff) as u8;
            carry = acc >> 8;
        }
        while carry > 0 {
            num.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    num.reverse();
    Some(num)
}

pub fn encode(resource: &str, position: &str) -> String {
    to_base62(format!("{resource}v{VERSION}:{position}").as_bytes())
}

pub fn decode(resource: &str, cursor: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::bad_request("invalid cursor");
    let bytes = from_base62(cursor).ok_or_else(invalid)?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let rest = text
        .strip_prefix(resource)
        .and_then(|r| r.strip_prefix('v'))
        .ok_or_else(invalid)?;
    let (version, position) = rest.split_once(':').ok_or_else(invalid)?;
    if version != VERSION {
        return Err(ApiError::bad_request(format!(
            "cursor version mismatch: expected version {VERSION}"
        )));
    }
    Ok(position.to_string())
}

/// `<ms>::<id>` positions used by events, attempts and tenants.
pub fn encode_seek(resource: &str, time_ms: i64, id: &str) -> String {
    encode(resource, &format!("{time_ms}::{id}"))
}

pub fn decode_seek(resource: &str, cursor: &str) -> Result<(i64, String), ApiError> {
    let pos = decode(resource, cursor)?;
    let (ms, id) = pos
        .split_once("::")
        .ok_or_else(|| ApiError::bad_request("invalid cursor"))?;
    let ms = ms.parse().map_err(|_| ApiError::bad_request("invalid cursor"))?;
    Ok((ms, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = encode_seek("evt", 1_704_067_200_000, "evt_123");
        assert!(c.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(decode_seek("evt", &c).unwrap(), (1_704_067_200_000, "evt_123".into()));
        assert!(decode_seek("att", &c).is_err());
        assert!(decode("evt", "!!").is_err());
        let v2 = to_base62(b"evtv02:1::x");
        assert!(decode("evt", &v2).unwrap_err().to_string().contains("version"));
    }

    #[test]
    fn base62_known_value() {
        // 0x0100 = 256 = 4*62 + 8
        assert_eq!(to_base62(&[1, 0]), "48");
        assert_eq!(from_base62("48").unwrap(), vec![1, 0]);
    }

    #[test]
    fn long_or_foreign_cursors_are_refused_cheaply() {
        let longest = encode("evt", &format!("{}::{}", i64::MAX, "x".repeat(255)));
        assert!(longest.len() <= MAX_CURSOR_LEN, "{}", longest.len());
        assert_eq!(decode_seek("evt", &longest).unwrap().1, "x".repeat(255));
        let started = std::time::Instant::now();
        assert!(decode("evt", &"z".repeat(1_000_000)).is_err());
        assert!(decode("evt", &"z".repeat(MAX_CURSOR_LEN)).is_err());
        assert!(
            started.elapsed() < std::time::Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
        assert!(decode("evt", "abc-").is_err());
        assert!(decode("evt", "é").is_err());
    }
}
