//! A v2 envelope read whole into memory before its key is known, then opened in place.
//!
//! A pull downloads the blob while the key broker's key is still on its way (the TEE's key pair
//! and evidence take longer than the download). Each chunk's ciphertext is read straight to where
//! its plaintext will be in one buffer, and its tag aside, so that opening decrypts in place: no
//! copy of the model beyond the bytes read, no compaction, and the buffer's pages are touched
//! during the download rather than after the key arrives. Opening runs AES-GCM on the calling
//! thread and the plaintext SHA-256 on a second one, a chunk behind, so that the two overlap.
//!
//! The checks are those of the streaming reader (`docs/envelope-v2.md`, "Reading"): the header's,
//! the exact length of every chunk, no trailing byte, every tag, and (unless skipped) the plaintext
//! hash. Nothing of the plaintext leaves [`WholeEnvelope::open`] unless all of them pass; on any
//! failure the buffer, which may hold partly decrypted chunks, is zeroized as it is dropped.

use std::io::Read;
use std::sync::mpsc;

use aws_lc_rs::aead::{Aad, LessSafeKey};
use aws_lc_rs::digest::{Context, SHA256};
use zeroize::Zeroizing;

use crate::error::{EnvelopeError, Result};
use crate::key::Aes256Key;
use crate::v2::{hex_string, read_full, HashCheck, Header, TAG_LEN};

/// A whole v2 envelope in memory, not yet authenticated: its header, the ciphertext of every chunk
/// at its plaintext offset, and the tags.
pub struct WholeEnvelope {
    header: Header,
    aad: Vec<u8>,
    body: Zeroizing<Vec<u8>>,
    tags: Vec<[u8; TAG_LEN]>,
}

impl std::fmt::Debug for WholeEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WholeEnvelope")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl WholeEnvelope {
    /// Reads the chunks that `header` announces from `reader`, positioned just after the header
    /// whose exact bytes are `aad` (as [`Header::read_from`] returns them), then checks that the
    /// input ends there.
    ///
    /// The buffer is as long as the header's `plaintext_len`: the caller bounds it first. A read
    /// error is [`EnvelopeError::Io`]; input that ends early is [`EnvelopeError::Truncated`], and
    /// input that goes on is [`EnvelopeError::TrailingBytes`].
    pub fn read_body(header: Header, aad: Vec<u8>, reader: &mut impl Read) -> Result<Self> {
        header.validate()?;
        let len = usize::try_from(header.plaintext_len).map_err(|_| {
            EnvelopeError::TooLargeForMemory {
                len: header.plaintext_len,
            }
        })?;
        // The header is not authenticated yet: a length the allocator cannot give is an error,
        // not an abort. Reserved pages cost nothing until the bytes that fill them arrive, and
        // nothing is reallocated (or left behind unzeroized) as they do.
        let mut body = Zeroizing::new(Vec::new());
        body.try_reserve_exact(len)
            .map_err(|_| EnvelopeError::TooLargeForMemory {
                len: header.plaintext_len,
            })?;
        let count = header.chunk_count();
        // Filled as chunks arrive, so a truncated envelope cannot make it grow past them.
        let mut tags = Vec::new();
        for index in 0..count {
            let plain_len = header.chunk_plaintext_len(index);
            let truncated = |got: usize| EnvelopeError::Truncated {
                what: format!("chunk {index} of {count}"),
                expected: (plain_len + TAG_LEN) as u64,
                actual: got as u64,
            };
            // read_to_end() reads into the reserved capacity directly, with no zero-fill first.
            let before = body.len();
            reader
                .by_ref()
                .take(plain_len as u64)
                .read_to_end(&mut body)?;
            let got = body.len() - before;
            if got < plain_len {
                return Err(truncated(got));
            }
            let mut tag = [0u8; TAG_LEN];
            let got = read_full(reader, &mut tag)?;
            if got < TAG_LEN {
                return Err(truncated(plain_len + got));
            }
            tags.push(tag);
        }
        if read_full(reader, &mut [0u8; 1])? != 0 {
            return Err(EnvelopeError::TrailingBytes {
                envelope_len: header.envelope_len(),
                extra: None,
            });
        }
        Ok(Self {
            header,
            aad,
            body,
            tags,
        })
    }

    /// The header, not yet authenticated.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Opens every chunk in place with `key` and, unless skipped, checks the plaintext SHA-256;
    /// returns the plaintext only if every check passed.
    pub fn open(mut self, key: &Aes256Key, hash_check: HashCheck) -> Result<Zeroizing<Vec<u8>>> {
        let key = key.aead_key()?;
        let opener = Opener {
            key: &key,
            header: &self.header,
            aad: &self.aad,
            tags: &self.tags,
        };
        // An empty plaintext is still one (empty) chunk, which chunks_mut() does not yield.
        let mut empty = [0u8; 0];
        let chunks: Box<dyn Iterator<Item = &mut [u8]>> = if self.body.is_empty() {
            Box::new(std::iter::once(&mut empty[..]))
        } else {
            Box::new(self.body.chunks_mut(self.header.chunk_size as usize))
        };
        match hash_check {
            HashCheck::Skip => opener.open_all(chunks, |_| {})?,
            HashCheck::Verify => {
                let digest = std::thread::scope(|scope| {
                    let (to_hasher, opened) = mpsc::channel::<&[u8]>();
                    let hasher = std::thread::Builder::new()
                        .name("adyton-sha256".into())
                        .spawn_scoped(scope, move || {
                            let mut hasher = Context::new(&SHA256);
                            for chunk in opened {
                                hasher.update(chunk);
                            }
                            hasher.finish()
                        });
                    match hasher {
                        Ok(hasher) => {
                            // The hasher gets a chunk only after its tag verified. A send fails
                            // only if the hasher panicked, which join() reports.
                            let result = opener.open_all(chunks, |chunk| {
                                let _ = to_hasher.send(chunk);
                            });
                            drop(to_hasher);
                            let digest = hasher.join().map_err(|_| {
                                EnvelopeError::Crypto("the SHA-256 thread panicked")
                            })?;
                            result.map(|()| array(digest.as_ref()))
                        }
                        // No thread to spare: hash on this one, after each chunk opens.
                        Err(_) => {
                            let mut hasher = Context::new(&SHA256);
                            opener.open_all(chunks, |chunk| hasher.update(chunk))?;
                            Ok(array(hasher.finish().as_ref()))
                        }
                    }
                })?;
                if digest != self.header.plaintext_sha256 {
                    return Err(EnvelopeError::PlaintextHashMismatch {
                        declared: hex_string(&self.header.plaintext_sha256),
                        actual: hex_string(&digest),
                    });
                }
            }
        }
        Ok(std::mem::take(&mut self.body))
    }
}

/// What opening a chunk needs, apart from the chunk.
struct Opener<'a> {
    key: &'a LessSafeKey,
    header: &'a Header,
    aad: &'a [u8],
    tags: &'a [[u8; TAG_LEN]],
}

impl Opener<'_> {
    /// Opens `chunks` in order, handing each to `opened` once its tag has verified; stops at the
    /// first that does not.
    fn open_all<'b>(
        &self,
        chunks: impl Iterator<Item = &'b mut [u8]>,
        mut opened: impl FnMut(&'b [u8]),
    ) -> Result<()> {
        let mut count = 0u64;
        for (index, (chunk, tag)) in (0u64..).zip(chunks.zip(self.tags)) {
            self.key
                .open_in_place_separate_tag(
                    self.header.nonce(index),
                    Aad::from(self.aad),
                    tag,
                    chunk,
                )
                .map_err(|_| EnvelopeError::AuthenticationFailed { chunk: Some(index) })?;
            opened(chunk);
            count += 1;
        }
        // read_body() read one tag per chunk; this holds unless the buffer was built otherwise.
        if count != self.header.chunk_count() {
            return Err(EnvelopeError::Crypto(
                "the chunks and tags do not match the header",
            ));
        }
        Ok(())
    }
}

fn array(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(bytes);
    out
}
