//! A v2 envelope read whole into memory, each chunk opened in place as soon as its key is there.
//!
//! A pull downloads the blob while the key broker's key is still on its way, and the key may come
//! before the download ends or after. Each chunk's ciphertext is read straight to where its
//! plaintext will be in one buffer, so that opening decrypts in place: no copy of the model beyond
//! the bytes read, no compaction. Between chunks the reader asks its [`KeySource`], without
//! blocking, whether the key has come. Chunks read before it are held, with their tags, until it
//! comes; then they are opened at once (the catch-up), and each further chunk as it lands. A key
//! that comes only after the last chunk is waited for, and opens them all. AES-GCM runs on the
//! reading thread and the plaintext SHA-256 on a second one, fed every chunk in order once its tag
//! has verified, so that the two overlap.
//!
//! The checks are those of the streaming reader (`docs/envelope-v2.md`, "Reading"): the header's,
//! the exact length of every chunk, no trailing byte, every tag, and (unless skipped) the plaintext
//! hash. Nothing of the plaintext leaves [`WholeEnvelope::read_and_open`] unless all of them pass;
//! on any failure, or when the key does not come, the buffer, which may hold decrypted chunks, is
//! zeroized as it is dropped. The input is always read to its end before a chunk's refusal is
//! reported, so that a truncated or broken input is reported as such whenever the key came: the
//! same failure as when the whole envelope was read before any chunk was opened.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::mpsc;

use aws_lc_rs::aead::{Aad, LessSafeKey};
use aws_lc_rs::digest::{Context, SHA256};
use zeroize::Zeroizing;

use crate::error::{EnvelopeError, Result};
use crate::key::Aes256Key;
use crate::v2::{hex_string, read_full, HashCheck, Header, TAG_LEN};

/// What a [`KeySource`] answers between chunks.
pub enum KeyPoll {
    /// The key has not come yet: read on.
    Pending,
    /// The key: open the chunks read so far, then each one as it lands.
    Ready(Aes256Key),
    /// The key will not come: stop reading.
    NotComing,
}

impl std::fmt::Debug for KeyPoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyPoll::Pending => "Pending",
            KeyPoll::Ready(_) => "Ready(..)",
            KeyPoll::NotComing => "NotComing",
        })
    }
}

/// Where [`WholeEnvelope::read_and_open`] gets its key while it reads.
pub trait KeySource {
    /// Asked before each chunk is read, until it gives the key or says it will not come. It must
    /// not block: the download goes on meanwhile.
    fn poll(&mut self) -> KeyPoll;

    /// Told once every chunk has been read and the input has ended, with the plaintext bytes
    /// already opened by then (all of them when the key came during the download).
    fn input_ended(&mut self, opened_bytes: u64) {
        let _ = opened_bytes;
    }

    /// Asked once the input has ended if the key has not come: blocks until it comes (`Some`) or
    /// will not (`None`).
    fn wait(&mut self) -> Option<Aes256Key>;
}

/// A whole v2 envelope in memory, its header read and not yet authenticated, and a buffer as long
/// as its plaintext.
pub struct WholeEnvelope {
    header: Header,
    aad: Vec<u8>,
    body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for WholeEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WholeEnvelope")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl WholeEnvelope {
    /// Checks `header`, whose exact bytes are `aad` (as [`Header::read_from`] returns them), and
    /// allocates the buffer for its plaintext.
    ///
    /// The buffer is as long as the header's `plaintext_len`: the caller bounds it first. A length
    /// the allocator cannot give is [`EnvelopeError::TooLargeForMemory`].
    pub fn new(header: Header, aad: Vec<u8>) -> Result<Self> {
        header.validate()?;
        let too_large = || EnvelopeError::TooLargeForMemory {
            len: header.plaintext_len,
        };
        let len = usize::try_from(header.plaintext_len).map_err(|_| too_large())?;
        // The header is not authenticated yet: a length the allocator cannot give must be an
        // error, and `vec![0; len]` would abort. try_reserve_exact() asks the allocator the same
        // question without aborting; its answer released, the buffer is allocated zeroed, which
        // the system allocator gives for a large buffer as fresh pages it does not write. So the
        // pages cost nothing until the download fills them, and they are not written twice.
        Vec::<u8>::new()
            .try_reserve_exact(len)
            .map_err(|_| too_large())?;
        let body = Zeroizing::new(vec![0u8; len]);
        Ok(Self { header, aad, body })
    }

    /// The header, not yet authenticated.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Reads the chunks that the header announces from `reader`, positioned just after the
    /// header, then checks that the input ends there; opens every chunk in place with the key
    /// from `keys` as soon as both are there and, unless skipped, checks the plaintext SHA-256.
    ///
    /// Returns the plaintext only if every check passed, and `None` if `keys` said the key will
    /// not come. A read error is [`EnvelopeError::Io`]; input that ends early is
    /// [`EnvelopeError::Truncated`], and input that goes on is [`EnvelopeError::TrailingBytes`];
    /// these are reported before a chunk's [`EnvelopeError::AuthenticationFailed`], since the
    /// input is read to its end first.
    pub fn read_and_open(
        self,
        reader: &mut impl Read,
        hash_check: HashCheck,
        keys: &mut dyn KeySource,
    ) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let WholeEnvelope {
            header,
            aad,
            mut body,
        } = self;
        let mut reading = Reading {
            header: &header,
            aad: &aad,
            key: None,
            waiting: VecDeque::new(),
            refused: None,
            opened: 0,
            opened_bytes: 0,
        };
        // An empty plaintext is still one (empty) chunk, which chunks_mut() does not yield.
        let mut empty = [0u8; 0];
        let chunks: Box<dyn Iterator<Item = &mut [u8]>> = if body.is_empty() {
            Box::new(std::iter::once(&mut empty[..]))
        } else {
            Box::new(body.chunks_mut(header.chunk_size as usize))
        };
        let opened = match hash_check {
            HashCheck::Skip => reading.run(reader, chunks, keys, &mut |_| {})?,
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
                            // The hasher gets a chunk only after its tag verified, in order. A
                            // send fails only if the hasher panicked, which join() reports.
                            let result = reading.run(reader, chunks, keys, &mut |chunk| {
                                let _ = to_hasher.send(chunk);
                            });
                            drop(to_hasher);
                            let digest = hasher.join().map_err(|_| {
                                EnvelopeError::Crypto("the SHA-256 thread panicked")
                            })?;
                            result.map(|opened| opened.then(|| array(digest.as_ref())))
                        }
                        // No thread to spare: hash on this one, after each chunk opens.
                        Err(_) => {
                            let mut hasher = Context::new(&SHA256);
                            let opened = reading
                                .run(reader, chunks, keys, &mut |chunk| hasher.update(chunk))?;
                            Ok(opened.then(|| array(hasher.finish().as_ref())))
                        }
                    }
                })?;
                match digest {
                    Some(digest) if digest != header.plaintext_sha256 => {
                        return Err(EnvelopeError::PlaintextHashMismatch {
                            declared: hex_string(&header.plaintext_sha256),
                            actual: hex_string(&digest),
                        });
                    }
                    digest => digest.is_some(),
                }
            }
        };
        Ok(opened.then(|| std::mem::take(&mut body)))
    }
}

/// A chunk read before its key came, with its index and tag.
type Waiting<'a> = (u64, &'a mut [u8], [u8; TAG_LEN]);

/// The state of one [`WholeEnvelope::read_and_open`].
struct Reading<'a> {
    header: &'a Header,
    aad: &'a [u8],
    key: Option<LessSafeKey>,
    /// Chunks read before the key came, in order.
    waiting: VecDeque<Waiting<'a>>,
    /// The first chunk that did not open, reported once the input has been read to its end.
    refused: Option<EnvelopeError>,
    opened: u64,
    opened_bytes: u64,
}

impl<'a> Reading<'a> {
    /// Reads `chunks` in place from `reader`, opening each as soon as it and the key are there,
    /// and handing each to `opened` once its tag has verified. Returns whether every chunk
    /// opened (`false`: the key will not come).
    fn run(
        &mut self,
        reader: &mut impl Read,
        mut chunks: impl Iterator<Item = &'a mut [u8]>,
        keys: &mut dyn KeySource,
        opened: &mut dyn FnMut(&'a [u8]),
    ) -> Result<bool> {
        let count = self.header.chunk_count();
        for index in 0..count {
            if self.key.is_none() {
                match keys.poll() {
                    KeyPoll::Pending => {}
                    KeyPoll::Ready(key) => self.key_came(&key, opened)?,
                    KeyPoll::NotComing => return Ok(false),
                }
            }
            // new() made the buffer as long as the header's plaintext, so this holds.
            let chunk = chunks.next().ok_or(EnvelopeError::Crypto(
                "the buffer does not match the header",
            ))?;
            let plain_len = chunk.len();
            let truncated = |got: usize| EnvelopeError::Truncated {
                what: format!("chunk {index} of {count}"),
                expected: (plain_len + TAG_LEN) as u64,
                actual: got as u64,
            };
            let got = read_full(reader, chunk)?;
            if got < plain_len {
                return Err(truncated(got));
            }
            let mut tag = [0u8; TAG_LEN];
            let got = read_full(reader, &mut tag)?;
            if got < TAG_LEN {
                return Err(truncated(plain_len + got));
            }
            if self.key.is_some() {
                self.open(index, chunk, &tag, opened);
            } else {
                self.waiting.push_back((index, chunk, tag));
            }
        }
        if read_full(reader, &mut [0u8; 1])? != 0 {
            return Err(EnvelopeError::TrailingBytes {
                envelope_len: self.header.envelope_len(),
                extra: None,
            });
        }
        keys.input_ended(self.opened_bytes);
        if self.key.is_none() {
            match keys.wait() {
                Some(key) => self.key_came(&key, opened)?,
                None => return Ok(false),
            }
        }
        if let Some(refused) = self.refused.take() {
            return Err(refused);
        }
        if self.opened != count {
            return Err(EnvelopeError::Crypto(
                "the chunks opened do not match the header",
            ));
        }
        Ok(true)
    }

    /// Takes the key and opens the chunks read before it came (the catch-up).
    fn key_came(&mut self, key: &Aes256Key, opened: &mut dyn FnMut(&'a [u8])) -> Result<()> {
        self.key = Some(key.aead_key()?);
        while let Some((index, chunk, tag)) = self.waiting.pop_front() {
            self.open(index, chunk, &tag, opened);
        }
        Ok(())
    }

    /// Opens chunk `index` in place and hands it to `opened`; after a chunk has been refused, no
    /// further chunk is opened.
    fn open(
        &mut self,
        index: u64,
        chunk: &'a mut [u8],
        tag: &[u8; TAG_LEN],
        opened: &mut dyn FnMut(&'a [u8]),
    ) {
        let Some(key) = &self.key else { return };
        if self.refused.is_some() {
            return;
        }
        let aad = Aad::from(self.aad);
        match key.open_in_place_separate_tag(self.header.nonce(index), aad, tag, chunk) {
            Ok(plaintext) => {
                self.opened += 1;
                self.opened_bytes += plaintext.len() as u64;
                opened(plaintext);
            }
            Err(_) => {
                self.refused = Some(EnvelopeError::AuthenticationFailed { chunk: Some(index) })
            }
        }
    }
}

fn array(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(bytes);
    out
}
