//! The blob's download, which needs no key, and its opening once the key broker's key has come.
//!
//! A pull downloads while the TEE's key pair and evidence are being made, so the blob is read
//! whole before its key is known: a v2 blob into [`WholeEnvelope`] (the ciphertext where its
//! plaintext will be, opened in place), a v1 blob as it is (it authenticates only as a whole
//! anyway). Either way the model is in memory once, as it was when the blob was decrypted as it
//! streamed in; and no byte of it reaches the engine before every check has passed.

use std::io::{self, Read};

use adyton_envelope::v2::{self, WholeEnvelope};
use adyton_envelope::{v1, Aes256Key, Format};
use zeroize::Zeroizing;

use crate::blob::{OpenError, MAX_MODEL_BYTES};

/// A downloaded blob, not yet authenticated.
#[derive(Debug)]
pub(super) enum Downloaded {
    /// A v2 envelope, its header's fields checked and its key id the expected one.
    V2(WholeEnvelope),
    /// A v1 envelope's bytes.
    V1(Vec<u8>),
}

/// Reads the whole blob; a v2 blob whose header names a key other than `expected_key_id` (an
/// empty key id names none), or whose plaintext is over [`MAX_MODEL_BYTES`], is refused before
/// its chunks are read.
pub(super) fn download(
    blob: &mut dyn Read,
    expected_key_id: Option<&str>,
) -> Result<Downloaded, OpenError> {
    let mut prefix = [0u8; Format::DETECT_LEN];
    let mut filled = 0;
    while filled < prefix.len() {
        match blob.read(&mut prefix[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(OpenError::Io(e)),
        }
    }
    let format = Format::detect(&prefix[..filled]).map_err(OpenError::Envelope)?;
    let mut chained = (&prefix[..filled]).chain(blob);
    match format {
        Format::V2 => {
            let (header, aad) = v2::Header::read_from(&mut chained).map_err(OpenError::Envelope)?;
            if let Some(expected) = expected_key_id {
                if !header.key_id.is_empty() && header.key_id != expected {
                    return Err(OpenError::KeyId {
                        found: header.key_id,
                        expected: expected.to_owned(),
                    });
                }
            }
            if header.plaintext_len > MAX_MODEL_BYTES {
                return Err(OpenError::TooLarge {
                    len: header.plaintext_len,
                });
            }
            WholeEnvelope::read_body(header, aad, &mut chained)
                .map(Downloaded::V2)
                .map_err(OpenError::Envelope)
        }
        Format::V1 => {
            let mut sealed = Vec::new();
            chained
                .take(MAX_MODEL_BYTES + 64)
                .read_to_end(&mut sealed)
                .map_err(OpenError::Io)?;
            Ok(Downloaded::V1(sealed))
        }
    }
}

impl Downloaded {
    /// Authenticates and decrypts the blob in place with `key` (for v2, with the plaintext
    /// SHA-256 of its header checked), returning the plaintext only if every check passed.
    pub(super) fn open(self, key: &Aes256Key) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        match self {
            Downloaded::V2(envelope) => envelope.open(key, v2::HashCheck::Verify),
            Downloaded::V1(sealed) => v1::open_owned(key, sealed),
        }
        .map_err(OpenError::Envelope)
    }
}
