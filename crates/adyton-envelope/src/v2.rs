//! Envelope v2: chunked streaming AES-256-GCM, Adyton's own format.
//!
//! The byte layout, the nonce construction and the reasons for each check are specified in
//! `docs/envelope-v2.md`; this module implements that document and nothing else.

use std::io::{self, Read, Write};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use aws_lc_rs::digest::{Context, SHA256};
use zeroize::Zeroizing;

use crate::error::{EnvelopeError, Result};
use crate::key::{fill_random, Aes256Key};
use crate::read_ahead::ReadAhead;
pub use crate::whole::{KeyPoll, KeySource, WholeEnvelope};

/// The first six bytes of every v2 envelope.
pub const MAGIC: &[u8; 6] = b"ADYTON";
/// The format version this module reads and writes.
pub const VERSION: u8 = 2;
/// Algorithm byte for AES-256-GCM.
pub const ALGORITHM_AES_256_GCM: u8 = 1;
/// Length of the fixed part of the header, before the two strings' bytes.
pub const FIXED_HEADER_LEN: usize = 68;
/// Longest key id or content type.
pub const MAX_FIELD_LEN: usize = 255;
/// Longest possible header.
pub const MAX_HEADER_LEN: usize = FIXED_HEADER_LEN + 2 * MAX_FIELD_LEN;
/// Smallest chunk size.
pub const MIN_CHUNK_SIZE: u32 = 16;
/// Largest chunk size: it bounds what a hostile header can make a reader allocate.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Chunk size used when the caller does not choose one.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Length of the random nonce prefix.
pub const NONCE_PREFIX_LEN: usize = 7;
/// Length of the AES-GCM tag after every chunk.
pub const TAG_LEN: usize = 16;
/// Content type recorded for ONNX models.
pub const CONTENT_TYPE_ONNX: &str = "application/x-onnx";

const MAX_CHUNKS: u64 = 1 << 32;

/// The fields of a v2 header. Every field is authenticated by every chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Length of the whole plaintext.
    pub plaintext_len: u64,
    /// SHA-256 of the whole plaintext.
    pub plaintext_sha256: [u8; 32],
    /// Per-file random nonce prefix.
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// The key broker's id of the key; empty when unknown.
    pub key_id: String,
    /// Media type of the plaintext.
    pub content_type: String,
}

impl Header {
    /// Number of chunks: at least one, even for an empty plaintext.
    pub fn chunk_count(&self) -> u64 {
        self.plaintext_len
            .div_ceil(u64::from(self.chunk_size))
            .max(1)
    }

    /// Length of the encoded header.
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER_LEN + self.key_id.len() + self.content_type.len()
    }

    /// Length of the whole envelope: header, ciphertext and one tag per chunk.
    pub fn envelope_len(&self) -> u64 {
        self.encoded_len() as u64 + self.plaintext_len + TAG_LEN as u64 * self.chunk_count()
    }

    /// Plaintext length of chunk `index`.
    pub(crate) fn chunk_plaintext_len(&self, index: u64) -> usize {
        let before = index * u64::from(self.chunk_size);
        // Both operands are at most chunk_size (<= 16 MiB), so this fits in usize.
        (self.plaintext_len - before).min(u64::from(self.chunk_size)) as usize
    }

    /// Checks every field against the limits of the format.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(EnvelopeError::BadChunkSize {
                found: self.chunk_size,
                min: MIN_CHUNK_SIZE,
                max: MAX_CHUNK_SIZE,
            });
        }
        for (field, value) in [
            ("key id", &self.key_id),
            ("content type", &self.content_type),
        ] {
            if value.len() > MAX_FIELD_LEN {
                return Err(EnvelopeError::FieldTooLong {
                    field,
                    len: value.len(),
                    max: MAX_FIELD_LEN,
                });
            }
        }
        if self.chunk_count() > MAX_CHUNKS {
            return Err(EnvelopeError::TooManyChunks {
                plaintext_len: self.plaintext_len,
                chunk_size: self.chunk_size,
            });
        }
        Ok(())
    }

    /// Encodes the header after validating it.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(ALGORITHM_AES_256_GCM);
        // At most MAX_HEADER_LEN, checked by validate().
        out.extend_from_slice(&(self.encoded_len() as u32).to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.plaintext_len.to_le_bytes());
        out.extend_from_slice(&self.plaintext_sha256);
        out.extend_from_slice(&self.nonce_prefix);
        out.push(0); // flags
        for value in [&self.key_id, &self.content_type] {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        debug_assert_eq!(out.len(), self.encoded_len());
        Ok(out)
    }

    /// Parses and checks a header from the start of `bytes`. Returns the header and its length.
    ///
    /// This reads no key: the header is not authenticated until the first chunk opens.
    pub fn parse(bytes: &[u8]) -> Result<(Header, usize)> {
        let mut reader = bytes;
        let (header, raw) = Header::read_from(&mut reader)?;
        Ok((header, raw.len()))
    }

    /// Reads and checks a header from a stream, returning it with its exact bytes (the AAD).
    ///
    /// Reads no further than the header's end.
    pub fn read_from(reader: &mut impl Read) -> Result<(Header, Vec<u8>)> {
        let mut raw = vec![0u8; 12];
        read_exact_or_truncated(reader, &mut raw, "v2 header")?;
        if &raw[..6] != MAGIC {
            return Err(EnvelopeError::BadMagic);
        }
        if raw[6] != VERSION {
            return Err(EnvelopeError::UnsupportedVersion { found: raw[6] });
        }
        if raw[7] != ALGORITHM_AES_256_GCM {
            return Err(EnvelopeError::UnsupportedAlgorithm { found: raw[7] });
        }
        let header_len = le_u32(&raw[8..12]);
        if !(FIXED_HEADER_LEN as u32..=MAX_HEADER_LEN as u32).contains(&header_len) {
            // The fields are not read yet: name the nearest length the format allows.
            let nearest = if header_len < FIXED_HEADER_LEN as u32 {
                FIXED_HEADER_LEN
            } else {
                MAX_HEADER_LEN
            };
            return Err(EnvelopeError::BadHeaderLength {
                declared: header_len,
                expected: nearest as u64,
            });
        }
        // Up to and including key_id_len.
        raw.resize(66, 0);
        read_exact_or_truncated(reader, &mut raw[12..], "v2 header")?;
        let key_id_len = le_u16(&raw[64..66]);
        check_field_len("key id", key_id_len)?;
        // The key id and content_type_len.
        raw.resize(66 + key_id_len + 2, 0);
        read_exact_or_truncated(reader, &mut raw[66..], "v2 header")?;
        let key_id_end = 66 + key_id_len;
        let content_type_len = le_u16(&raw[key_id_end..key_id_end + 2]);
        check_field_len("content type", content_type_len)?;
        let expected_len = FIXED_HEADER_LEN + key_id_len + content_type_len;
        if header_len as usize != expected_len {
            return Err(EnvelopeError::BadHeaderLength {
                declared: header_len,
                expected: expected_len as u64,
            });
        }
        raw.resize(expected_len, 0);
        read_exact_or_truncated(reader, &mut raw[key_id_end + 2..], "v2 header")?;

        let flags = raw[63];
        if flags != 0 {
            return Err(EnvelopeError::ReservedFlags { found: flags });
        }
        let utf8 = |field: &'static str, bytes: &[u8]| {
            String::from_utf8(bytes.to_vec()).map_err(|_| EnvelopeError::FieldNotUtf8 { field })
        };
        let header = Header {
            chunk_size: le_u32(&raw[12..16]),
            plaintext_len: u64::from_le_bytes(array(&raw[16..24])),
            plaintext_sha256: array(&raw[24..56]),
            nonce_prefix: array(&raw[56..63]),
            key_id: utf8("key id", &raw[66..key_id_end])?,
            content_type: utf8("content type", &raw[key_id_end + 2..])?,
        };
        header.validate()?;
        Ok((header, raw))
    }

    pub(crate) fn nonce(&self, index: u64) -> Nonce {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        // validate() bounds the chunk count by 2^32, so every index fits in a u32.
        nonce[NONCE_PREFIX_LEN..NONCE_LEN - 1].copy_from_slice(&(index as u32).to_be_bytes());
        nonce[NONCE_LEN - 1] = u8::from(index + 1 == self.chunk_count());
        Nonce::assume_unique_for_key(nonce)
    }
}

fn check_field_len(field: &'static str, len: usize) -> Result<()> {
    if len > MAX_FIELD_LEN {
        return Err(EnvelopeError::FieldTooLong {
            field,
            len,
            max: MAX_FIELD_LEN,
        });
    }
    Ok(())
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(array(bytes))
}

fn le_u16(bytes: &[u8]) -> usize {
    u16::from_le_bytes(array(bytes)).into()
}

/// Copies a slice whose length the caller has fixed into an array.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
pub(crate) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn read_exact_or_truncated(reader: &mut impl Read, buf: &mut [u8], what: &str) -> Result<()> {
    let got = read_full(reader, buf)?;
    if got < buf.len() {
        return Err(EnvelopeError::Truncated {
            what: what.into(),
            expected: buf.len() as u64,
            actual: got as u64,
        });
    }
    Ok(())
}

/// Options for a new v2 envelope.
#[derive(Clone, Debug)]
pub struct EncryptOptions {
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// The key broker's id of the key.
    pub key_id: String,
    /// Media type of the plaintext.
    pub content_type: String,
}

impl Default for EncryptOptions {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            key_id: String::new(),
            content_type: "application/octet-stream".into(),
        }
    }
}

impl EncryptOptions {
    /// Builds the header for a plaintext of known length and hash, with a fresh nonce prefix.
    pub fn header_for(&self, plaintext_len: u64, plaintext_sha256: [u8; 32]) -> Result<Header> {
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        fill_random(&mut nonce_prefix)?;
        let header = Header {
            chunk_size: self.chunk_size,
            plaintext_len,
            plaintext_sha256,
            nonce_prefix,
            key_id: self.key_id.clone(),
            content_type: self.content_type.clone(),
        };
        header.validate()?;
        Ok(header)
    }
}

/// Streams plaintext into a v2 envelope.
///
/// The header, which declares the plaintext's length and SHA-256, is written first; then every
/// `chunk_size` bytes written become one sealed chunk. [`Encryptor::finish`] checks that exactly the
/// declared bytes, with the declared hash, were written, and seals the last chunk only then. Memory
/// use is one chunk.
pub struct Encryptor<W: Write> {
    inner: W,
    key: LessSafeKey,
    header: Header,
    aad: Vec<u8>,
    buf: Zeroizing<Vec<u8>>,
    chunk_index: u64,
    written: u64,
    hasher: Context,
}

impl<W: Write> std::fmt::Debug for Encryptor<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("header", &self.header)
            .field("chunk_index", &self.chunk_index)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Encryptor<W> {
    /// Writes the header to `inner` and returns a writer for the plaintext.
    pub fn new(mut inner: W, key: &Aes256Key, header: Header) -> Result<Self> {
        let aad = header.encode()?;
        inner.write_all(&aad)?;
        let capacity = header.chunk_size as usize + TAG_LEN;
        Ok(Self {
            inner,
            key: key.aead_key()?,
            header,
            aad,
            buf: Zeroizing::new(Vec::with_capacity(capacity)),
            chunk_index: 0,
            written: 0,
            hasher: Context::new(&SHA256),
        })
    }

    /// The header being written.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn seal_buffered_chunk(&mut self) -> Result<()> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                self.header.nonce(self.chunk_index),
                Aad::from(self.aad.as_slice()),
                self.buf.as_mut_slice(),
            )
            .map_err(|_| EnvelopeError::Crypto("AES-256-GCM seal failed"))?;
        self.buf.extend_from_slice(tag.as_ref());
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.chunk_index += 1;
        Ok(())
    }

    fn is_last_chunk(&self) -> bool {
        self.chunk_index + 1 == self.header.chunk_count()
    }

    /// Checks the plaintext's length and hash against the header, seals the last chunk, flushes,
    /// and returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        if self.written != self.header.plaintext_len {
            return Err(EnvelopeError::PlaintextLengthMismatch {
                declared: self.header.plaintext_len,
                written: self.written,
            });
        }
        let digest = self.hasher.clone().finish();
        if digest.as_ref() != self.header.plaintext_sha256 {
            return Err(EnvelopeError::PlaintextHashMismatch {
                declared: hex_string(&self.header.plaintext_sha256),
                actual: hex_string(digest.as_ref()),
            });
        }
        self.seal_buffered_chunk()?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let remaining = self.header.plaintext_len - self.written;
        if data.len() as u64 > remaining {
            return Err(EnvelopeError::PlaintextLengthMismatch {
                declared: self.header.plaintext_len,
                written: self.written + data.len() as u64,
            }
            .into_io());
        }
        let chunk_size = self.header.chunk_size as usize;
        let mut rest = data;
        while !rest.is_empty() {
            if self.buf.len() == chunk_size {
                // A full buffer is sealed only once more data proves it is not the last chunk.
                self.seal_buffered_chunk().map_err(EnvelopeError::into_io)?;
            }
            let take = (chunk_size - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            self.hasher.update(&rest[..take]);
            rest = &rest[take..];
        }
        self.written += data.len() as u64;
        if self.buf.len() == chunk_size && !self.is_last_chunk() {
            self.seal_buffered_chunk().map_err(EnvelopeError::into_io)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Whether a [`Decryptor`] also checks the plaintext's SHA-256 against the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HashCheck {
    /// Check it before the last chunk is released (the default).
    #[default]
    Verify,
    /// Rely on the AEAD alone. Every chunk already authenticates the header; see
    /// `docs/envelope-v2.md` for what the hash check adds and what it costs.
    Skip,
}

/// Streams a v2 envelope back to plaintext, one authenticated chunk at a time.
///
/// Memory use is one chunk ([`Decryptor::new`]), or three with a read-ahead thread
/// ([`Decryptor::with_read_ahead`]). A chunk's plaintext is released only after its tag verifies; the last
/// chunk only after the end of input and (unless skipped) the plaintext hash are checked. After an
/// error, the decryptor refuses to go on.
pub struct Decryptor<R: Read> {
    source: Source<R>,
    key: LessSafeKey,
    header: Header,
    aad: Vec<u8>,
    hash_check: HashCheck,
    hasher: Context,
    buf: Zeroizing<Vec<u8>>,
    /// Plaintext of the current chunk is `buf[pos..plain_len]`.
    pos: usize,
    plain_len: usize,
    next_chunk: u64,
    state: State,
}

/// Where sealed chunks come from.
enum Source<R> {
    /// Read on the decrypting thread.
    Direct(R),
    /// Read ahead on a thread of their own.
    ReadAhead(ReadAhead<R>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Done,
    Failed,
}

impl<R: Read> std::fmt::Debug for Decryptor<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("header", &self.header)
            .field("next_chunk", &self.next_chunk)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Decryptor<R> {
    /// Reads the header from `inner` and prepares to decrypt with `key`, reading chunks on the
    /// calling thread.
    ///
    /// The header is authenticated only when the first chunk opens.
    pub fn new(mut inner: R, key: &Aes256Key, hash_check: HashCheck) -> Result<Self> {
        let (header, aad) = Header::read_from(&mut inner)?;
        Self::with_source(Source::Direct(inner), key, header, aad, hash_check)
    }

    fn with_source(
        source: Source<R>,
        key: &Aes256Key,
        header: Header,
        aad: Vec<u8>,
        hash_check: HashCheck,
    ) -> Result<Self> {
        let capacity = header.chunk_size as usize + TAG_LEN;
        Ok(Self {
            source,
            key: key.aead_key()?,
            header,
            aad,
            hash_check,
            hasher: Context::new(&SHA256),
            buf: Zeroizing::new(vec![0u8; capacity]),
            pos: 0,
            plain_len: 0,
            next_chunk: 0,
            state: State::Running,
        })
    }

    /// The header. Before the first chunk has opened, it is not yet authenticated.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Authenticates and returns the next chunk's plaintext, or `None` after the last chunk.
    pub fn next_chunk(&mut self) -> Result<Option<&[u8]>> {
        match self.state {
            State::Done => return Ok(None),
            State::Failed => return Err(EnvelopeError::StreamFailed),
            State::Running => {}
        }
        match self.open_next_chunk() {
            Ok(len) => {
                self.pos = len;
                self.plain_len = len;
                Ok(Some(&self.buf[..len]))
            }
            Err(err) => {
                self.state = State::Failed;
                // Nothing of a chunk that failed may leak through a later read.
                self.pos = 0;
                self.plain_len = 0;
                Err(err)
            }
        }
    }

    fn open_next_chunk(&mut self) -> Result<usize> {
        let index = self.next_chunk;
        let plain_len = self.header.chunk_plaintext_len(index);
        let sealed_len = plain_len + TAG_LEN;
        let got = match &mut self.source {
            Source::Direct(reader) => read_full(reader, &mut self.buf[..sealed_len])?,
            Source::ReadAhead(read_ahead) => read_ahead.next_into(&mut self.buf)?,
        };
        let sealed = &mut self.buf[..sealed_len];
        if got < sealed_len {
            return Err(EnvelopeError::Truncated {
                what: format!("chunk {index} of {}", self.header.chunk_count()),
                expected: sealed_len as u64,
                actual: got as u64,
            });
        }
        let opened = self
            .key
            .open_in_place(
                self.header.nonce(index),
                Aad::from(self.aad.as_slice()),
                sealed,
            )
            .map_err(|_| EnvelopeError::AuthenticationFailed { chunk: Some(index) })?;
        if self.hash_check == HashCheck::Verify {
            self.hasher.update(opened);
        }
        self.next_chunk += 1;
        if self.next_chunk == self.header.chunk_count() {
            self.check_end()?;
            self.state = State::Done;
        }
        Ok(plain_len)
    }

    /// Runs the end-of-stream checks before the last chunk is released.
    fn check_end(&mut self) -> Result<()> {
        let trailing = match &mut self.source {
            Source::Direct(reader) => read_full(reader, &mut [0u8; 1])? != 0,
            Source::ReadAhead(read_ahead) => read_ahead.has_trailing_bytes()?,
        };
        if trailing {
            return Err(EnvelopeError::TrailingBytes {
                envelope_len: self.header.envelope_len(),
                extra: None,
            });
        }
        if self.hash_check == HashCheck::Verify {
            let digest = self.hasher.clone().finish();
            if digest.as_ref() != self.header.plaintext_sha256 {
                return Err(EnvelopeError::PlaintextHashMismatch {
                    declared: hex_string(&self.header.plaintext_sha256),
                    actual: hex_string(digest.as_ref()),
                });
            }
        }
        Ok(())
    }

    /// Decrypts everything that remains into `out`; returns the number of plaintext bytes written.
    pub fn copy_to(&mut self, out: &mut impl Write) -> Result<u64> {
        let mut total = 0u64;
        // Bytes already released to Read callers go first.
        if self.pos < self.plain_len {
            out.write_all(&self.buf[self.pos..self.plain_len])?;
            total += (self.plain_len - self.pos) as u64;
            self.pos = self.plain_len;
        }
        while let Some(chunk) = self.next_chunk()? {
            out.write_all(chunk)?;
            total += chunk.len() as u64;
        }
        Ok(total)
    }

    /// Returns the inner reader (`None` if a read-ahead thread panicked).
    pub fn into_inner(self) -> Option<R> {
        match self.source {
            Source::Direct(reader) => Some(reader),
            Source::ReadAhead(read_ahead) => read_ahead.into_inner(),
        }
    }
}

impl<R: Read + Send + 'static> Decryptor<R> {
    /// Like [`Decryptor::new`], but a thread reads each chunk while the previous one is being
    /// decrypted, so that reading and decryption overlap. At most three chunks are in memory.
    pub fn with_read_ahead(mut inner: R, key: &Aes256Key, hash_check: HashCheck) -> Result<Self> {
        let (header, aad) = Header::read_from(&mut inner)?;
        let read_ahead = ReadAhead::start(inner, header.clone())?;
        Self::with_source(Source::ReadAhead(read_ahead), key, header, aad, hash_check)
    }
}

impl<R: Read> Read for Decryptor<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        // next_chunk() marks the chunk it returns as consumed; a Read caller starts at its front.
        while self.pos >= self.plain_len {
            match self.next_chunk() {
                Ok(Some(_)) => self.pos = 0,
                Ok(None) => return Ok(0),
                Err(e) => return Err(e.into_io()),
            }
        }
        let n = out.len().min(self.plain_len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Hashes a stream with SHA-256 and counts its bytes.
pub fn sha256_stream(reader: &mut impl Read) -> Result<(u64, [u8; 32])> {
    let mut hasher = Context::new(&SHA256);
    let mut buf = Zeroizing::new(vec![0u8; 1 << 16]);
    let mut len = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, array(hasher.finish().as_ref())))
}

/// Encrypts everything `plaintext` yields into a v2 envelope on `out`.
///
/// The header needs the plaintext's hash before the first chunk, so the caller supplies the length
/// and hash (for example from [`sha256_stream`] in a first pass over a file).
pub fn encrypt(
    key: &Aes256Key,
    header: Header,
    plaintext: &mut impl Read,
    out: impl Write,
) -> Result<Header> {
    let mut encryptor = Encryptor::new(out, key, header)?;
    let mut buf = Zeroizing::new(vec![0u8; encryptor.header.chunk_size as usize]);
    loop {
        let n = match plaintext.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        encryptor
            .write_all(&buf[..n])
            .map_err(EnvelopeError::from_io)?;
    }
    let header = encryptor.header.clone();
    encryptor.finish()?;
    Ok(header)
}

/// Decrypts a whole v2 envelope from `input` into `out`; returns its header.
pub fn decrypt(
    key: &Aes256Key,
    input: impl Read,
    out: &mut impl Write,
    hash_check: HashCheck,
) -> Result<Header> {
    let mut decryptor = Decryptor::new(input, key, hash_check)?;
    decryptor.copy_to(out)?;
    Ok(decryptor.header)
}

/// Encrypts an in-memory plaintext into an in-memory envelope.
pub fn seal(key: &Aes256Key, plaintext: &[u8], options: &EncryptOptions) -> Result<Vec<u8>> {
    let digest = aws_lc_rs::digest::digest(&SHA256, plaintext);
    let header = options.header_for(plaintext.len() as u64, array(digest.as_ref()))?;
    let mut out = Vec::with_capacity(usize::try_from(header.envelope_len()).unwrap_or(0));
    encrypt(key, header, &mut &plaintext[..], &mut out)?;
    Ok(out)
}

/// Decrypts an in-memory envelope, verifying the plaintext hash.
pub fn open(key: &Aes256Key, envelope: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::new());
    decrypt(key, envelope, &mut *out, HashCheck::Verify)?;
    Ok(out)
}

pub(crate) fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
