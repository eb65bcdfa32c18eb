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

fn from_base62(s: &str) -> Option<Vec<u8>> {
    let mut num: Vec<u8> = Vec::new();
    for c in s.bytes() {
        let d = DIGITS.iter().position(|&x| x == c)? as u32;
        let mut carry = d;
        for b in num.iter_mut().rev() {
            let acc = (*b as u32) * 62 + carry;
            *b = (acc & 0xff) as u8;
            carry = acc >> 8;
        }
        while carry > 0 {
            num.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
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
}
