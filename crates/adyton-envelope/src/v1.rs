//! Envelope v1: the CNAP single-shot format, byte-compatible with the reference Python snippet.
//!
//! ```text
//! u32le iv_len (12) | u32le tag_len (16) | u32le data_len | iv | ciphertext | tag
//! ```
//!
//! `data_len` counts the ciphertext and the tag, because Python's `AESGCM.encrypt` appends the tag.
//! There is no associated data. The whole envelope must be in memory to be checked.

use aws_lc_rs::aead::{Aad, Nonce};
use zeroize::Zeroizing;

use crate::error::{EnvelopeError, Result};
use crate::key::{fill_random, Aes256Key};

/// Length of the fixed header (three u32 fields).
pub const HEADER_LEN: usize = 12;
/// The only IV length v1 accepts.
pub const IV_LEN: usize = 12;
/// The only tag length v1 accepts.
pub const TAG_LEN: usize = 16;
/// Header plus IV: where the ciphertext starts.
pub const PREFIX_LEN: usize = HEADER_LEN + IV_LEN;
/// The largest plaintext a v1 envelope can hold (`data_len` is a u32 that includes the tag).
pub const MAX_PLAINTEXT_LEN: u64 = u32::MAX as u64 - TAG_LEN as u64;

/// The validated layout of a v1 envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `data_len`: ciphertext plus tag.
    pub data_len: u32,
}

impl Layout {
    /// Length of the plaintext inside.
    pub fn plaintext_len(&self) -> u64 {
        u64::from(self.data_len) - TAG_LEN as u64
    }

    /// Length of the whole envelope.
    pub fn envelope_len(&self) -> u64 {
        PREFIX_LEN as u64 + u64::from(self.data_len)
    }
}

/// Checks the header of a v1 envelope against its total length, without a key.
///
/// `prefix` holds at least the first 12 bytes when available; `total_len` is the length of the
/// whole envelope (the file length). Each inconsistency has its own error.
pub fn check_layout(prefix: &[u8], total_len: u64) -> Result<Layout> {
    let header: &[u8; HEADER_LEN] = prefix
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| EnvelopeError::Truncated {
            what: "v1 header".into(),
            expected: HEADER_LEN as u64,
            actual: total_len.min(prefix.len() as u64),
        })?;
    let [iv_len, tag_len, data_len] = [0, 4, 8]
        .map(|at| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]));
    if iv_len as usize != IV_LEN {
        return Err(EnvelopeError::BadIvLength { found: iv_len });
    }
    if tag_len as usize != TAG_LEN {
        return Err(EnvelopeError::BadTagLength { found: tag_len });
    }
    if total_len < PREFIX_LEN as u64 {
        return Err(EnvelopeError::Truncated {
            what: "v1 header and IV".into(),
            expected: PREFIX_LEN as u64,
            actual: total_len,
        });
    }
    if (data_len as usize) < TAG_LEN {
        return Err(EnvelopeError::DataLengthTooSmall { declared: data_len });
    }
    let layout = Layout { data_len };
    let after_iv = total_len - PREFIX_LEN as u64;
    if after_iv < u64::from(data_len) {
        return Err(EnvelopeError::DataLengthMismatch {
            declared: data_len.into(),
            actual: after_iv,
        });
    }
    if after_iv > u64::from(data_len) {
        return Err(EnvelopeError::TrailingBytes {
            envelope_len: layout.envelope_len(),
            extra: Some(after_iv - u64::from(data_len)),
        });
    }
    Ok(layout)
}

/// Encrypts `plaintext` under `key` with a fresh random IV.
pub fn seal(key: &Aes256Key, plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut iv = [0u8; IV_LEN];
    fill_random(&mut iv)?;
    seal_with_iv(key, iv, plaintext)
}

/// Encrypts with a caller-chosen IV. Reusing an IV under one key destroys confidentiality, so only
/// [`seal`] (with a random IV) is public.
fn seal_with_iv(key: &Aes256Key, iv: [u8; IV_LEN], plaintext: &[u8]) -> Result<Vec<u8>> {
    let len = plaintext.len() as u64;
    if len > MAX_PLAINTEXT_LEN {
        return Err(EnvelopeError::PlaintextTooLarge { len });
    }
    // Fits: checked against MAX_PLAINTEXT_LEN just above.
    let data_len = (plaintext.len() + TAG_LEN) as u32;
    let mut out = Vec::with_capacity(PREFIX_LEN + data_len as usize);
    out.extend_from_slice(&(IV_LEN as u32).to_le_bytes());
    out.extend_from_slice(&(TAG_LEN as u32).to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&iv);
    out.extend_from_slice(plaintext);
    let tag = key
        .aead_key()?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::empty(),
            &mut out[PREFIX_LEN..],
        )
        .map_err(|_| EnvelopeError::Crypto("AES-256-GCM seal failed"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Checks and decrypts a v1 envelope held in memory.
pub fn open(key: &Aes256Key, envelope: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    open_owned(key, envelope.to_vec())
}

/// Checks and decrypts a v1 envelope in place, reusing its buffer for the plaintext so that a large
/// model is not held twice.
pub fn open_owned(key: &Aes256Key, envelope: Vec<u8>) -> Result<Zeroizing<Vec<u8>>> {
    // From here on the buffer may hold plaintext, so it is zeroized whatever happens.
    let mut buf = Zeroizing::new(envelope);
    let layout = check_layout(&buf, buf.len() as u64)?;
    let iv: [u8; IV_LEN] = buf[HEADER_LEN..PREFIX_LEN]
        .try_into()
        .map_err(|_| EnvelopeError::Crypto("IV slice"))?;
    let plaintext_len = key
        .aead_key()?
        .open_in_place(
            Nonce::assume_unique_for_key(iv),
            Aad::empty(),
            &mut buf[PREFIX_LEN..],
        )
        .map_err(|_| EnvelopeError::AuthenticationFailed { chunk: None })?
        .len();
    debug_assert_eq!(plaintext_len as u64, layout.plaintext_len());
    buf.copy_within(PREFIX_LEN..PREFIX_LEN + plaintext_len, 0);
    buf.truncate(plaintext_len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Aes256Key {
        Aes256Key::from_slice(&[7; 32]).unwrap()
    }

    #[test]
    fn round_trip() {
        for len in [0usize, 1, 15, 16, 17, 4096] {
            let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let envelope = seal(&key(), &plaintext).unwrap();
            assert_eq!(envelope.len(), PREFIX_LEN + len + TAG_LEN);
            assert_eq!(open(&key(), &envelope).unwrap().as_slice(), plaintext);
        }
    }

    #[test]
    fn header_fields_are_cnap_compatible() {
        let envelope = seal_with_iv(&key(), [1; 12], b"abc").unwrap();
        assert_eq!(&envelope[..12], &[12, 0, 0, 0, 16, 0, 0, 0, 19, 0, 0, 0]);
        assert_eq!(&envelope[12..24], &[1; 12]);
    }

    #[test]
    fn each_inconsistency_has_its_own_error() {
        let good = seal(&key(), b"hello model").unwrap();

        let e = open(&key(), &good[..5]).unwrap_err();
        assert!(matches!(e, EnvelopeError::Truncated { .. }), "{e}");

        let e = open(&key(), &good[..20]).unwrap_err();
        assert!(matches!(e, EnvelopeError::Truncated { .. }), "{e}");

        let e = open(&key(), &good[..good.len() - 1]).unwrap_err();
        assert!(matches!(e, EnvelopeError::DataLengthMismatch { .. }), "{e}");

        let mut long = good.clone();
        long.extend_from_slice(b"xy");
        let e = open(&key(), &long).unwrap_err();
        assert!(
            matches!(e, EnvelopeError::TrailingBytes { extra: Some(2), .. }),
            "{e}"
        );

        let mut bad_iv = good.clone();
        bad_iv[0] = 16;
        let e = open(&key(), &bad_iv).unwrap_err();
        assert!(matches!(e, EnvelopeError::BadIvLength { found: 16 }), "{e}");

        let mut bad_tag = good.clone();
        bad_tag[4] = 12;
        let e = open(&key(), &bad_tag).unwrap_err();
        assert!(
            matches!(e, EnvelopeError::BadTagLength { found: 12 }),
            "{e}"
        );

        let mut tiny = good[..PREFIX_LEN].to_vec();
        tiny[8..12].copy_from_slice(&3u32.to_le_bytes());
        tiny.extend_from_slice(&[0; 3]);
        let e = open(&key(), &tiny).unwrap_err();
        assert!(
            matches!(e, EnvelopeError::DataLengthTooSmall { declared: 3 }),
            "{e}"
        );

        let mut flipped = good.clone();
        flipped[PREFIX_LEN] ^= 1;
        let e = open(&key(), &flipped).unwrap_err();
        assert!(
            matches!(e, EnvelopeError::AuthenticationFailed { chunk: None }),
            "{e}"
        );

        let other = Aes256Key::from_slice(&[8; 32]).unwrap();
        let e = open(&other, &good).unwrap_err();
        assert!(
            matches!(e, EnvelopeError::AuthenticationFailed { chunk: None }),
            "{e}"
        );
    }
}
