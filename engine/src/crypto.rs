//! Credentials at rest: AES-256-GCM with a key derived from
//! `AES_ENCRYPTION_SECRET` the way Outpost derives it (the 32 ASCII bytes of
//! the hex MD5 of the secret), a random 96-bit nonce prepended to the sealed bytes.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use md5::{Digest, Md5};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("credentials could not be decrypted (wrong AES_ENCRYPTION_SECRET?)")]
    Decrypt,
    #[error("credentials could not be encrypted")]
    Encrypt,
}

#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

impl Cipher {
    pub fn new(secret: &str) -> Self {
        let key_hex = hex::encode(Md5::digest(secret.as_bytes()));
        // 32 hex characters are exactly a 256-bit key.
        let aead = Aes256Gcm::new_from_slice(key_hex.as_bytes()).expect("32-byte key");
        Self { aead }
    }

    pub fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes = crate::ids::random_bytes(12);
        let nonce = Nonce::from_slice(&nonce_bytes);
        let mut out = nonce_bytes.clone();
        out.extend(self.aead.encrypt(nonce, plain).map_err(|_| CryptoError::Encrypt)?);
        Ok(out)
    }

    pub fn decrypt(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 12 {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, body) = sealed.split_at(12);
        self.aead
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let c = Cipher::new("s3cret");
        let sealed = c.encrypt(b"{\"secret\":\"x\"}").unwrap();
        assert_ne!(&sealed[12..], b"{\"secret\":\"x\"}");
        assert_eq!(c.decrypt(&sealed).unwrap(), b"{\"secret\":\"x\"}");
        assert!(Cipher::new("other").decrypt(&sealed).is_err());
    }
}
