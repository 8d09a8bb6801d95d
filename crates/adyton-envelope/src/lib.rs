//! Encrypted model envelopes and key wrapping for Adyton.
//!
//! - [`v1`]: the CNAP single-shot format, byte-compatible with the reference Python snippet.
//! - [`v2`]: Adyton's chunked streaming format (`docs/envelope-v2.md`).
//! - [`wrap`]: key wrapping as the key broker's transfer protocol uses it (RSA-OAEP, or HPKE to
//!   an EC P-384 key).
//! - [`sealed`]: small secrets sealed under a TEE sealing key, for an offline device's disk.
//! - [`Aes256Key`]: zeroizing key material with a redacted `Debug`.
//!
//! This crate knows bytes and cryptography only: it does no I/O beyond the `Read` and `Write`
//! values its callers hand it.

#![forbid(unsafe_code)]

mod error;
mod key;
mod read_ahead;
pub mod sealed;
pub mod v1;
pub mod v2;
mod whole;
pub mod wrap;

pub use error::{EnvelopeError, Result};
pub use key::{Aes256Key, AES256_KEY_LEN};

/// The envelope formats this crate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The CNAP single-shot format.
    V1,
    /// Adyton's chunked streaming format.
    V2,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::V1 => "v1",
            Format::V2 => "v2",
        })
    }
}

impl Format {
    /// Number of leading bytes [`Format::detect`] needs.
    pub const DETECT_LEN: usize = 8;

    /// Tells the format from an envelope's first bytes.
    ///
    /// A v2 envelope starts with `ADYTON`; a v1 envelope with the little-endian IV length 12. A v1
    /// header with a wrong tag length is still reported as v1, so that its reader can name the field.
    pub fn detect(prefix: &[u8]) -> Result<Format> {
        const V1_START: &[u8] = &[12, 0, 0, 0];
        if prefix.starts_with(v2::MAGIC) {
            return Ok(Format::V2);
        }
        if prefix.starts_with(V1_START) {
            return Ok(Format::V1);
        }
        if prefix.len() < v2::MAGIC.len()
            && (v2::MAGIC.starts_with(prefix) || V1_START.starts_with(prefix))
        {
            return Err(EnvelopeError::Truncated {
                what: "envelope header".into(),
                expected: Self::DETECT_LEN as u64,
                actual: prefix.len() as u64,
            });
        }
        Err(EnvelopeError::UnknownFormat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_both_formats() {
        assert_eq!(Format::detect(b"ADYTON\x02\x01").unwrap(), Format::V2);
        assert_eq!(
            Format::detect(&[12, 0, 0, 0, 16, 0, 0, 0, 9]).unwrap(),
            Format::V1
        );
        assert!(matches!(
            Format::detect(b"PK\x03\x04 zip"),
            Err(EnvelopeError::UnknownFormat)
        ));
        assert!(matches!(
            Format::detect(b"ADY"),
            Err(EnvelopeError::Truncated { .. })
        ));
        assert!(matches!(
            Format::detect(&[12, 0]),
            Err(EnvelopeError::Truncated { .. })
        ));
        assert!(matches!(
            Format::detect(b""),
            Err(EnvelopeError::Truncated { .. })
        ));
    }
}
