//! Identifier generation (events, destinations, attempts) and random secrets.

use rand::Rng;

use crate::config::IdGen;

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
}
