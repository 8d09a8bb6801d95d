//! Sealed bytes: a small secret (a model key) encrypted under a TEE sealing key, to be stored on
//! an offline device's disk.
//!
//! Layout: `"ADYSEAL1"` | 12-byte random nonce | AES-256-GCM ciphertext | 16-byte tag. The GCM
//! additional data is the magic followed by the caller's `aad`, so that the magic is
//! authenticated and a sealed value cannot be moved to a place that expects another `aad`.

use aws_lc_rs::aead::{Aad, Nonce, NONCE_LEN as GCM_NONCE_LEN};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{EnvelopeError, Result};
use crate::key::{fill_random, Aes256Key};

/// The first eight bytes of sealed bytes.
pub const MAGIC: &[u8; 8] = b"ADYSEAL1";

/// Length of the random nonce.
pub const NONCE_LEN: usize = 12;

/// Length of the AES-256-GCM tag.
pub const TAG_LEN: usize = 16;

/// Bytes that sealing adds to the plaintext: magic, nonce and tag.
pub const OVERHEAD: usize = MAGIC.len() + NONCE_LEN + TAG_LEN;

const _: () = assert!(NONCE_LEN == GCM_NONCE_LEN);

fn full_aad(aad: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(MAGIC.len() + aad.len());
    full.extend_from_slice(MAGIC);
    full.extend_from_slice(aad);
    full
}

/// Seals `plaintext` under `key`, bound to `aad`: `"ADYSEAL1"` | 12-byte random nonce |
/// AES-256-GCM ciphertext | 16-byte tag, where the GCM additional data is the magic followed by
/// `aad`.
pub fn seal(key: &Aes256Key, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    // Allocated once at its final size, so that no reallocation leaves a copy of the plaintext.
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let sealed = key.aead_key().and_then(|aead| {
        let body = out.get_mut(MAGIC.len() + NONCE_LEN..).unwrap_or_default();
        aead.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(full_aad(aad).as_slice()),
            body,
        )
        .map_err(|_| EnvelopeError::Crypto("AES-256-GCM refused to seal (plaintext too long?)"))
    });
    match sealed {
        Ok(tag) => {
            out.extend_from_slice(tag.as_ref());
            Ok(out)
        }
        Err(e) => {
            // The buffer may still hold plaintext.
            out.zeroize();
            Err(e)
        }
    }
}

/// Opens bytes made by [`seal`] with the same `key` and `aad`.
///
/// Errors: [`EnvelopeError::BadSealedMagic`] when the input does not start with the magic,
/// [`EnvelopeError::Truncated`] when it is too short to hold the magic, nonce and tag, and
/// [`EnvelopeError::AuthenticationFailed`] when the key or `aad` is wrong or any byte was changed
/// or cut off.
pub fn unseal(key: &Aes256Key, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let magic_len = sealed.len().min(MAGIC.len());
    if sealed.get(..magic_len) != MAGIC.get(..magic_len) {
        return Err(EnvelopeError::BadSealedMagic);
    }
    if sealed.len() < OVERHEAD {
        return Err(EnvelopeError::Truncated {
            what: "sealed bytes".into(),
            expected: OVERHEAD as u64,
            actual: sealed.len() as u64,
        });
    }
    let (header, body) = sealed.split_at(MAGIC.len() + NONCE_LEN);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(header.get(MAGIC.len()..).unwrap_or_default());
    // Zeroizing from the start: a failed open may leave partly decrypted bytes behind.
    let mut buffer = Zeroizing::new(body.to_vec());
    let plaintext_len = key
        .aead_key()?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(full_aad(aad).as_slice()),
            buffer.as_mut_slice(),
        )
        .map_err(|_| EnvelopeError::AuthenticationFailed { chunk: None })?
        .len();
    buffer.truncate(plaintext_len);
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_magic_nonce_ciphertext_tag() {
        let key = Aes256Key::from_slice(&[7; 32]).unwrap();
        let sealed = seal(&key, b"aad", b"secret").unwrap();
        assert_eq!(sealed.len(), OVERHEAD + 6);
        assert_eq!(&sealed[..8], MAGIC);
        assert_eq!(&*unseal(&key, b"aad", &sealed).unwrap(), b"secret");
    }
}
