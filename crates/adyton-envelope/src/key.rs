//! Symmetric key material: AES-256 keys that zeroize on drop and never print.

use std::fmt;

use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::{EnvelopeError, Result};

/// Length of an AES-256 key in bytes.
pub const AES256_KEY_LEN: usize = 32;

/// A 32-byte AES-256-GCM key.
///
/// It serves as a model key (the key that encrypts a model) and as a symmetric wrapping key (SWK,
/// the fresh key that carries a model key to a TEE). Its bytes are zeroized when it is dropped, and
/// its `Debug` output is redacted.
pub struct Aes256Key(Zeroizing<[u8; AES256_KEY_LEN]>);

impl Aes256Key {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; AES256_KEY_LEN]);
        fill_random(bytes.as_mut_slice())?;
        Ok(Self(bytes))
    }

    /// Takes a key from exactly 32 raw bytes, as CNAP's tools store it in a key file.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let array: [u8; AES256_KEY_LEN] =
            bytes.try_into().map_err(|_| EnvelopeError::BadKeyLength {
                expected: AES256_KEY_LEN,
                found: bytes.len(),
            })?;
        Ok(Self(Zeroizing::new(array)))
    }

    /// The raw key bytes. Callers must not log or persist them unencrypted.
    pub fn expose_secret(&self) -> &[u8; AES256_KEY_LEN] {
        &self.0
    }

    /// The key prepared for AES-256-GCM.
    pub(crate) fn aead_key(&self) -> Result<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, self.0.as_slice())
            .map(LessSafeKey::new)
            .map_err(|_| EnvelopeError::Crypto("AES-256-GCM refused a 32-byte key"))
    }
}

impl fmt::Debug for Aes256Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Aes256Key(<redacted>)")
    }
}

/// Fills `buf` from the operating system's random source.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| EnvelopeError::RandomSource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let key = Aes256Key::from_slice(&[0x41; 32]).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "Aes256Key(<redacted>)");
        assert!(!shown.contains("41") && !shown.contains('A'.to_string().repeat(2).as_str()));
    }

    #[test]
    fn generated_keys_differ() {
        let a = Aes256Key::generate().unwrap();
        let b = Aes256Key::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn wrong_length_is_refused() {
        for len in [0, 16, 31, 33, 64] {
            match Aes256Key::from_slice(&vec![0; len]) {
                Err(EnvelopeError::BadKeyLength {
                    expected: 32,
                    found,
                }) => assert_eq!(found, len),
                other => panic!("length {len}: unexpected {other:?}"),
            }
        }
    }
}
