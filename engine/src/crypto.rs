//! Destination secrets at rest: a destination's credentials and the config
//! keys that carry secrets ([`SEALED_CONFIG_KEYS`]: a webhook's
//! `custom_headers` often holds an API token) are sealed together with
//! AES-256-GCM under a key derived from `AES_ENCRYPTION_SECRET` by
//! HKDF-SHA256, with the destination's id as associated data, so a sealed
//! blob copied onto another destination does not open.
//!
//! Records sealed before this format (Outpost's derivation: the 32 ASCII
//! bytes of the hex MD5 of the secret, no associated data, credentials only)
//! still open; the stores re-seal them in the current format when they load
//! them ([`Opened::legacy`]).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::string_map::StringMap;

/// Config keys whose values are sealed with the credentials and kept out of
/// the stored config.
pub const SEALED_CONFIG_KEYS: &[&str] = &["custom_headers"];

/// The current format's first bytes; older records start with their nonce.
const MAGIC: &[u8; 4] = b"ORS2";
const NONCE: usize = 12;
/// HKDF's salt and info: fixed, so one secret always gives the same key.
const HKDF_SALT: &[u8] = b"outrider/at-rest/v2";
const HKDF_INFO: &[u8] = b"destination secrets";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("credentials could not be decrypted (wrong AES_ENCRYPTION_SECRET?)")]
    Decrypt,
    #[error("credentials could not be encrypted")]
    Encrypt,
    #[error("sealed credentials are not readable: {0}")]
    Format(String),
}

#[derive(Clone)]
pub struct Cipher {
    /// The current key (HKDF-SHA256 of the secret).
    key: Aes256Gcm,
    /// Outpost's derivation, to open records sealed before the current format.
    legacy: Aes256Gcm,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

/// What a sealed destination record holds.
#[derive(Debug, Default, PartialEq)]
pub struct Opened {
    pub credentials: StringMap,
    /// The sealed config entries ([`SEALED_CONFIG_KEYS`]).
    pub config: StringMap,
    /// Sealed in the old format: the store should seal it again.
    pub legacy: bool,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    credentials: StringMap,
    #[serde(default)]
    config: StringMap,
}

impl Cipher {
    pub fn new(secret: &str) -> Self {
        let mut okm = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(HKDF_SALT), secret.as_bytes())
            .expand(HKDF_INFO, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let key = Aes256Gcm::new_from_slice(&okm).expect("32-byte key");
        let key_hex = hex::encode(Md5::digest(secret.as_bytes()));
        // 32 hex characters are exactly a 256-bit key.
        let legacy = Aes256Gcm::new_from_slice(key_hex.as_bytes()).expect("32-byte key");
        Self { key, legacy }
    }

    /// Seals a destination's credentials and the [`SEALED_CONFIG_KEYS`] of
    /// its config under its id.
    pub fn seal_destination(
        &self,
        id: &str,
        credentials: &StringMap,
        config: &StringMap,
    ) -> Result<Vec<u8>, CryptoError> {
        let mut sealed_config = StringMap::new();
        for k in SEALED_CONFIG_KEYS {
            if let Some(v) = config.get(k) {
                sealed_config.insert(k.to_string(), v.clone());
            }
        }
        let plain = serde_json::to_vec(&Sealed {
            credentials: credentials.clone(),
            config: sealed_config,
        })
        .map_err(|_| CryptoError::Encrypt)?;
        let nonce = crate::ids::random_bytes(NONCE);
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE + plain.len() + 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        let body = self
            .key
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad(id),
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        out.extend(body);
        Ok(out)
    }

    /// Opens what [`Self::seal_destination`] sealed for `id`, or a record in
    /// the old format (credentials only).
    pub fn open_destination(&self, id: &str, sealed: &[u8]) -> Result<Opened, CryptoError> {
        if let Some(rest) = sealed.strip_prefix(MAGIC).filter(|r| r.len() > NONCE) {
            let (nonce, body) = rest.split_at(NONCE);
            let opened = self.key.decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: &aad(id),
                },
            );
            if let Ok(plain) = opened {
                let s: Sealed = serde_json::from_slice(&plain).map_err(|e| CryptoError::Format(e.to_string()))?;
                return Ok(Opened {
                    credentials: s.credentials,
                    config: s.config,
                    legacy: false,
                });
            }
            // An old record whose random nonce began with the magic bytes
            // (one in 2^32) is tried the old way below.
        }
        let plain = self.decrypt_legacy(sealed)?;
        let credentials = serde_json::from_slice(&plain).map_err(|e| CryptoError::Format(e.to_string()))?;
        Ok(Opened {
            credentials,
            config: StringMap::new(),
            legacy: true,
        })
    }

    /// A record in the old format: `nonce || AES-256-GCM(md5-hex key)`.
    fn decrypt_legacy(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, body) = sealed.split_at(NONCE);
        self.legacy
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| CryptoError::Decrypt)
    }

    /// Seals in the old format, for tests of reading old records.
    #[cfg(test)]
    pub(crate) fn seal_legacy(&self, plain: &[u8]) -> Vec<u8> {
        let nonce = crate::ids::random_bytes(NONCE);
        let mut out = nonce.clone();
        out.extend(self.legacy.encrypt(Nonce::from_slice(&nonce), plain).expect("encrypt"));
        out
    }
}

fn aad(id: &str) -> Vec<u8> {
    let mut a = b"outrider destination ".to_vec();
    a.extend_from_slice(id.as_bytes());
    a
}

/// Moves the [`SEALED_CONFIG_KEYS`] out of a config about to be stored in
/// the clear.
pub fn without_sealed_keys(config: &StringMap) -> StringMap {
    let mut c = config.clone();
    for k in SEALED_CONFIG_KEYS {
        c.remove(k);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> StringMap {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn sealed_under_the_destination_id_with_the_secret_config() {
        let c = Cipher::new("s3cret");
        let creds = map(&[("secret", "whsec_x")]);
        let config = map(&[
            ("url", "https://x"),
            ("custom_headers", "{\"Authorization\":\"Bearer t\"}"),
        ]);
        let sealed = c.seal_destination("des_1", &creds, &config).unwrap();
        assert!(sealed.starts_with(MAGIC));
        let text = String::from_utf8_lossy(&sealed);
        assert!(!text.contains("whsec_x") && !text.contains("Bearer"));
        let o = c.open_destination("des_1", &sealed).unwrap();
        assert_eq!(
            o,
            Opened {
                credentials: creds,
                config: map(&[("custom_headers", "{\"Authorization\":\"Bearer t\"}")]),
                legacy: false
            }
        );
        // Copied onto another destination, or opened with another secret, it does not open.
        assert!(c.open_destination("des_2", &sealed).is_err());
        assert!(Cipher::new("other").open_destination("des_1", &sealed).is_err());
        assert_eq!(without_sealed_keys(&config), map(&[("url", "https://x")]));
    }

    #[test]
    fn records_sealed_the_old_way_still_open_and_say_so() {
        let c = Cipher::new("s3cret");
        let old = c.seal_legacy(b"{\"secret\":\"x\"}");
        let o = c.open_destination("des_1", &old).unwrap();
        assert_eq!((o.credentials, o.legacy), (map(&[("secret", "x")]), true));
        assert!(Cipher::new("other").open_destination("des_1", &old).is_err());
    }
}
