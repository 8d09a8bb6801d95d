//! Opening an encrypted model blob into memory, for the puller (flow B) and the offline device
//! (flow D): a v2 blob chunk by chunk with its authenticated plaintext SHA-256 checked, a v1 blob
//! whole, into one zeroized buffer. The plaintext never touches disk.

use std::fmt;
use std::io::{self, Read};

use adyton_envelope::{v1, v2, Aes256Key, EnvelopeError, Format};
use zeroize::Zeroizing;

/// The largest model decrypted into memory.
pub const MAX_MODEL_BYTES: u64 = 8 << 30;

/// Why a blob did not open.
#[derive(Debug)]
pub enum OpenError {
    /// Reading the blob failed (a broken download, a disk error).
    Io(io::Error),
    /// The envelope refused it: not an envelope, altered, truncated, or not this key's.
    Envelope(EnvelopeError),
    /// The v2 header names another key.
    KeyId {
        /// The key id in the header.
        found: String,
        /// The key id expected.
        expected: String,
    },
    /// Its plaintext is over [`MAX_MODEL_BYTES`].
    TooLarge {
        /// The plaintext length in the header.
        len: u64,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Io(e) => write!(f, "reading the blob failed: {e}"),
            OpenError::Envelope(e) => write!(f, "{e}"),
            OpenError::KeyId { found, expected } => {
                write!(
                    f,
                    "the blob is encrypted under key '{found}', not '{expected}'"
                )
            }
            OpenError::TooLarge { len } => write!(
                f,
                "the model is {len} bytes, over the limit of {MAX_MODEL_BYTES}"
            ),
        }
    }
}

impl std::error::Error for OpenError {}

/// Decrypts `blob` with `key`; a v2 blob whose header names a key other than `expected_key_id` is
/// refused (an empty key id in the header names none).
pub fn open(
    blob: &mut dyn Read,
    key: &Aes256Key,
    expected_key_id: Option<&str>,
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let (format, mut blob) = read_format_prefix(blob)?;
    match format {
        Format::V2 => {
            let mut decryptor = v2::Decryptor::new(&mut blob, key, v2::HashCheck::Verify)
                .map_err(OpenError::Envelope)?;
            check_header(decryptor.header(), expected_key_id)?;
            let capacity = usize::try_from(decryptor.header().plaintext_len).unwrap_or(0);
            let mut plaintext = Zeroizing::new(Vec::with_capacity(capacity));
            while let Some(chunk) = decryptor.next_chunk().map_err(OpenError::Envelope)? {
                plaintext.extend_from_slice(chunk);
            }
            Ok(plaintext)
        }
        Format::V1 => v1::open_owned(key, read_v1(&mut blob)?).map_err(OpenError::Envelope),
    }
}

/// Reads the first bytes of `blob`, as many as [`Format::detect`] needs, and tells its format;
/// returns it with a reader that gives those bytes back, then the rest of `blob`.
pub(crate) fn read_format_prefix<R: Read>(mut blob: R) -> Result<(Format, impl Read), OpenError> {
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
    let prefix = io::Cursor::new(prefix).take(filled as u64);
    Ok((format, prefix.chain(blob)))
}

/// Refuses a v2 header, before any chunk is read, that names a key other than `expected_key_id`
/// (an empty key id names none) or announces a plaintext over [`MAX_MODEL_BYTES`].
pub(crate) fn check_header(
    header: &v2::Header,
    expected_key_id: Option<&str>,
) -> Result<(), OpenError> {
    if let Some(expected) = expected_key_id {
        if !header.key_id.is_empty() && header.key_id != expected {
            return Err(OpenError::KeyId {
                found: header.key_id.clone(),
                expected: expected.to_owned(),
            });
        }
    }
    if header.plaintext_len > MAX_MODEL_BYTES {
        return Err(OpenError::TooLarge {
            len: header.plaintext_len,
        });
    }
    Ok(())
}

/// Reads a v1 blob whole: v1 authenticates the whole blob at once, so it is opened in place once
/// read. Reading stops past the largest model, whose blob then fails its authentication.
pub(crate) fn read_v1(blob: &mut impl Read) -> Result<Vec<u8>, OpenError> {
    let mut sealed = Vec::new();
    blob.take(MAX_MODEL_BYTES + 64)
        .read_to_end(&mut sealed)
        .map_err(OpenError::Io)?;
    Ok(sealed)
}
