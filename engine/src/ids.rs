//! Identifier generation (events, destinations, attempts), the rules a
//! caller-chosen id must follow, and random secrets.

use rand::Rng;

const ALPHANUMERIC: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::rng().fill(&mut buf[..]);
    hex::encode(buf)
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    rand::rng().fill(&mut buf[..]);
    buf
}

pub fn random_alphanumeric(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHANUMERIC[rng.random_range(0..ALPHANUMERIC.len())] as char)
        .collect()
}

/// Generates ids in the configured style, with a verbatim prefix.
#[derive(Debug, Clone)]
pub struct IdGenerator {
    kind: IdGen,
}

impl IdGenerator {
    pub fn new(kind: IdGen) -> Self {
        Self { kind }
    }

    pub fn generate(&self, prefix: &str) -> String {
        let body = match self.kind {
            // The thread's CSPRNG, not a getrandom syscall per id (one per attempt).
            IdGen::UuidV4 => {
                let mut b = [0u8; 16];
                rand::rng().fill(&mut b);
                uuid::Builder::from_random_bytes(b).into_uuid().to_string()
            }
            IdGen::UuidV7 => uuid_v7(),
            IdGen::Nanoid => random_alphanumeric(26),
        };
        if prefix.is_empty() {
            body
        } else {
            format!("{prefix}{body}")
        }
    }
}

/// A UUIDv7 (RFC 9562): 48-bit Unix ms timestamp, version and variant bits, random rest.
fn uuid_v7() -> String {
    let ms = chrono::Utc::now().timestamp_millis() as u64;
    let mut b = [0u8; 16];
    rand::rng().fill(&mut b[6..]);
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).to_string()
}

/// The longest id a caller may choose (tenant, event, destination), in bytes.
pub const MAX_ID_LEN: usize = 255;

/// Why a caller-chosen id cannot be stored, as a validation message naming
/// `field`; `None` when it can. Ids travel into headers, queue attributes,
/// object keys and PostgreSQL TEXT columns (which refuse NUL): control
/// characters and unbounded lengths would break one of them far from the
/// request that sent them.
pub fn id_problem(field: &str, id: &str) -> Option<String> {
    if id.len() > MAX_ID_LEN {
        Some(format!("{field} must be at most {MAX_ID_LEN} bytes"))
    } else if id.chars().any(char::is_control) {
        Some(format!("{field} must not contain control characters"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles() {
        let v4 = IdGenerator::new(IdGen::UuidV4).generate("evt_");
        assert_eq!(v4.len(), 40);
        assert_eq!(&v4[18..19], "4", "{v4}");
        assert_ne!(v4, IdGenerator::new(IdGen::UuidV4).generate("evt_"));
        let v7 = IdGenerator::new(IdGen::UuidV7).generate("");
        assert_eq!(&v7[14..15], "7");
        let n = IdGenerator::new(IdGen::Nanoid).generate("");
        assert_eq!(n.len(), 26);
        assert!(n.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn chosen_ids_are_bounded_and_printable() {
        assert_eq!(id_problem("id", "evt_1.a-b:c/d é"), None);
        assert_eq!(id_problem("id", &"x".repeat(MAX_ID_LEN)), None);
        assert_eq!(
            id_problem("id", &"x".repeat(MAX_ID_LEN + 1)).as_deref(),
            Some("id must be at most 255 bytes")
        );
        for bad in ["a\u{0}b", "a\nb", "\u{7f}", "a\u{85}"] {
            assert_eq!(
                id_problem("tenant_id", bad).as_deref(),
                Some("tenant_id must not contain control characters"),
                "{bad:?}"
            );
        }
    }
}

/// How generated ids look (`IDGEN_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdGen {
    UuidV4,
    UuidV7,
    Nanoid,
}
