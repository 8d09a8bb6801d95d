//! The one error type of the envelope crate.

use std::io;

/// Everything that can go wrong while reading, writing or unwrapping envelopes and keys.
///
/// Security outcomes (authentication, truncation, trailing bytes, header tampering) are variants of
/// their own so that callers and tests can tell them apart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The input ended before a complete structure was read.
    #[error("truncated: {what} needs {expected} bytes, only {actual} are present")]
    Truncated {
        /// What was being read ("v1 header", "chunk 3", ...).
        what: String,
        /// Bytes that were needed.
        expected: u64,
        /// Bytes that were present.
        actual: u64,
    },

    /// The input goes on after the point where the envelope ends.
    #[error("trailing bytes: the envelope ends at byte {envelope_len} but the input goes on{}",
        extra.map(|n| format!(" for {n} more bytes")).unwrap_or_default())]
    TrailingBytes {
        /// Length of the envelope as its header declares it.
        envelope_len: u64,
        /// How many extra bytes follow, when known.
        extra: Option<u64>,
    },

    /// A v1 header declares an IV length other than 12.
    #[error("bad IV length: the v1 header declares {found} bytes, AES-256-GCM uses 12")]
    BadIvLength {
        /// The declared length.
        found: u32,
    },

    /// A v1 header declares a tag length other than 16.
    #[error("bad tag length: the v1 header declares {found} bytes, AES-256-GCM uses 16")]
    BadTagLength {
        /// The declared length.
        found: u32,
    },

    /// A v1 header's `data_len` disagrees with the length of the file.
    #[error(
        "data length mismatch: the v1 header declares {declared} bytes of ciphertext and tag, \
         the input holds {actual} after the IV"
    )]
    DataLengthMismatch {
        /// `data_len` from the header.
        declared: u64,
        /// Bytes actually present after the IV.
        actual: u64,
    },

    /// A v1 header's `data_len` is too small to hold even the 16-byte tag.
    #[error(
        "data length too small: the v1 header declares {declared} bytes, less than the 16-byte tag"
    )]
    DataLengthTooSmall {
        /// `data_len` from the header.
        declared: u32,
    },

    /// The AEAD tag did not verify: the key is wrong, or the ciphertext, tag or header was changed.
    #[error("authentication failed{}: wrong key, or the ciphertext or its header was altered",
        chunk.map(|c| format!(" in chunk {c}")).unwrap_or_default())]
    AuthenticationFailed {
        /// The v2 chunk that failed; `None` for single-shot (v1) envelopes.
        chunk: Option<u64>,
    },

    /// The input starts with neither a v1 nor a v2 header.
    #[error("unknown format: neither an Adyton v2 envelope nor a v1 (CNAP) envelope")]
    UnknownFormat,

    /// A v2 header's magic bytes are wrong.
    #[error("bad magic: not an Adyton v2 envelope")]
    BadMagic,

    /// Sealed bytes do not start with `ADYSEAL1`.
    #[error("bad magic: not Adyton sealed bytes (they start with ADYSEAL1)")]
    BadSealedMagic,

    /// A v2 header's version is not 2.
    #[error("unsupported envelope version {found}, this build reads version 2")]
    UnsupportedVersion {
        /// The declared version.
        found: u8,
    },

    /// A v2 header names an unknown cipher.
    #[error("unsupported algorithm {found}, this build knows 1 (AES-256-GCM)")]
    UnsupportedAlgorithm {
        /// The declared algorithm byte.
        found: u8,
    },

    /// A v2 header sets reserved flag bits.
    #[error("reserved flags set: {found:#04x}")]
    ReservedFlags {
        /// The flags byte.
        found: u8,
    },

    /// A v2 header's chunk size is out of range.
    #[error("bad chunk size {found}: it must be between {min} and {max} bytes")]
    BadChunkSize {
        /// The declared chunk size.
        found: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },

    /// A v2 header's `header_len` disagrees with its own fields.
    #[error("bad header length: declared {declared} bytes, the fields take {expected}")]
    BadHeaderLength {
        /// `header_len` from the header.
        declared: u32,
        /// Length implied by the fields.
        expected: u64,
    },

    /// A v2 header string field is too long.
    #[error("{field} is {len} bytes long, at most {max} are allowed")]
    FieldTooLong {
        /// The field's name.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A v2 header string field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    FieldNotUtf8 {
        /// The field's name.
        field: &'static str,
    },

    /// The plaintext is too long for the chunk size (more than 2^32 chunks).
    #[error("too many chunks: {plaintext_len} bytes in chunks of {chunk_size} exceed 2^32 chunks")]
    TooManyChunks {
        /// Declared plaintext length.
        plaintext_len: u64,
        /// Declared chunk size.
        chunk_size: u32,
    },

    /// The plaintext is too long for a v1 envelope (its `data_len` is a u32).
    #[error("plaintext of {len} bytes is too large for a v1 envelope (at most 4 GiB - 17 bytes); use v2")]
    PlaintextTooLarge {
        /// The plaintext length.
        len: u64,
    },

    /// A v2 writer was given a different number of bytes than its header declares.
    #[error(
        "plaintext length mismatch: the header declares {declared} bytes, {written} were written"
    )]
    PlaintextLengthMismatch {
        /// Declared plaintext length.
        declared: u64,
        /// Bytes actually written (so far).
        written: u64,
    },

    /// The plaintext's SHA-256 differs from the one in the (authenticated) header.
    #[error("plaintext SHA-256 mismatch: the header declares {declared}, the plaintext hashes to {actual}")]
    PlaintextHashMismatch {
        /// Hex of the declared hash.
        declared: String,
        /// Hex of the computed hash.
        actual: String,
    },

    /// A v2 header announces more plaintext than this machine can hold in memory.
    #[error("the envelope announces {len} bytes of plaintext, more than can be held in memory")]
    TooLargeForMemory {
        /// The plaintext length in the header.
        len: u64,
    },

    /// Key material has the wrong length.
    #[error("bad key length: expected {expected} bytes, found {found}")]
    BadKeyLength {
        /// Expected length.
        expected: usize,
        /// Found length.
        found: usize,
    },

    /// A transfer public key (RSA or EC P-384) could not be read, or is of an unsupported kind.
    #[error("bad transfer public key: {reason}")]
    BadPublicKey {
        /// Why it was refused.
        reason: String,
    },

    /// A transfer private key could not be read or exported.
    #[error("bad transfer private key: {reason}")]
    BadPrivateKey {
        /// Why it was refused.
        reason: String,
    },

    /// An RSA key's size is outside 2048..=4096 bits.
    #[error("unsupported RSA key size: {bits} bits, 2048 to 4096 are accepted")]
    UnsupportedKeySize {
        /// The key's modulus length in bits.
        bits: usize,
    },

    /// RSA-OAEP or HPKE decryption failed: the wrapped key was made for another key pair or was
    /// altered.
    #[error("unwrapping failed: the wrapped key was made for another key pair, or was altered")]
    UnwrapFailed,

    /// The operating system's random source failed.
    #[error("the operating system's random source failed")]
    RandomSource,

    /// The crypto library failed in a way no input explains.
    #[error("crypto library failure: {0}")]
    Crypto(&'static str),

    /// A stream that already failed was used again.
    #[error("the stream already failed and its first error was reported; it cannot go on")]
    StreamFailed,

    /// Reading or writing failed.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
}

impl EnvelopeError {
    /// Wraps this error in an [`io::Error`] so that it can pass through `Read` and `Write`.
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            EnvelopeError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }

    /// Recovers an envelope error from an [`io::Error`] made by [`EnvelopeError::into_io`], or wraps
    /// a plain I/O error.
    pub fn from_io(err: io::Error) -> Self {
        if err
            .get_ref()
            .is_some_and(|inner| inner.is::<EnvelopeError>())
        {
            match err
                .into_inner()
                .map(|inner| inner.downcast::<EnvelopeError>())
            {
                Some(Ok(envelope)) => *envelope,
                // Unreachable in practice: the check above saw an EnvelopeError.
                _ => EnvelopeError::Crypto("lost error context"),
            }
        } else {
            EnvelopeError::Io(err)
        }
    }
}

impl From<io::Error> for EnvelopeError {
    fn from(err: io::Error) -> Self {
        EnvelopeError::from_io(err)
    }
}

/// The result type of this crate.
pub type Result<T, E = EnvelopeError> = std::result::Result<T, E>;
