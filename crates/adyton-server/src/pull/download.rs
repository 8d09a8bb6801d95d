//! The blob's download, decrypted in place as it lands once the key broker's key has come.
//!
//! A pull downloads while its key thread makes the TEE's key pair and evidence, asks the key broker
//! and unwraps the key, so the key comes at some point of the download, or after it. A v2 blob is
//! read into [`WholeEnvelope`], each chunk's ciphertext where its plaintext will be: the chunks
//! read before the key came are opened as soon as it comes, and each further chunk as it lands, the
//! plaintext SHA-256 following in order on a second thread. A v1 blob is read whole and opened once
//! the key has come (it authenticates only as a whole anyway). Either way the model is in memory
//! once, and no byte of it reaches the engine before every check has passed: every tag, the end of
//! the input, the length and the hash. A failure, or a key that does not come, zeroizes the buffer.
//!
//! The key thread speaks to the download through a [`KeyMessage`] channel, which the download asks
//! between chunks without blocking. If the key will not come, the download stops at once when the
//! key thread failed before the download's own failures would be reported (making the evidence),
//! and reads on to its end otherwise (the transfer or the unwrap failed), so that a broken or
//! altered blob is still reported first, as it was when the key was asked for only after the
//! download. It never waits for a key thread that has ended: the channel then disconnects.

use std::io::Read;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use adyton_envelope::v2::{self, KeyPoll, KeySource, WholeEnvelope};
use adyton_envelope::{v1, Aes256Key, Format};
use zeroize::Zeroizing;

use crate::blob::{self, OpenError};

/// What the key thread tells the download.
pub(super) enum KeyMessage {
    /// The model's key, released and unwrapped.
    Released(Aes256Key),
    /// The key will not come. With `stop_download`, the download stops at its next chunk (its
    /// failure would be reported after the key thread's); without, it reads on to its end.
    NotComing {
        /// Whether the download stops at once.
        stop_download: bool,
    },
}

/// A blob downloaded and opened, every check passed, with when its steps ended.
pub(super) struct Opened {
    /// The plaintext.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// When the download ended (the end of the input checked).
    pub ended: Instant,
    /// When the key came to the download.
    pub key_came: Instant,
    /// Plaintext bytes decrypted before the download ended.
    pub decrypted_in_download: u64,
}

/// Downloads the blob, opening it with the key that comes on `keys`. A v2 blob whose header names
/// a key other than `expected_key_id` (an empty key id names none), or whose plaintext is over
/// [`blob::MAX_MODEL_BYTES`], is refused before its chunks are read. Returns `None` if the key
/// did not come.
pub(super) fn download(
    blob: &mut dyn Read,
    expected_key_id: Option<&str>,
    keys: Receiver<KeyMessage>,
) -> Result<Option<Opened>, OpenError> {
    let mut keys = KeyArrival {
        keys,
        reading_on: false,
        ended: None,
        key_came: None,
        decrypted_in_download: 0,
    };
    let (format, mut blob) = blob::read_format_prefix(blob)?;
    let plaintext = match format {
        Format::V2 => {
            let (header, aad) = v2::Header::read_from(&mut blob).map_err(OpenError::Envelope)?;
            blob::check_header(&header, expected_key_id)?;
            WholeEnvelope::new(header, aad)
                .and_then(|whole| whole.read_and_open(&mut blob, v2::HashCheck::Verify, &mut keys))
                .map_err(OpenError::Envelope)?
        }
        Format::V1 => {
            let sealed = blob::read_v1(&mut blob)?;
            keys.input_ended(0);
            match keys.wait() {
                Some(key) => Some(v1::open_owned(&key, sealed).map_err(OpenError::Envelope)?),
                None => None,
            }
        }
    };
    Ok(plaintext.map(|plaintext| {
        let now = Instant::now();
        Opened {
            plaintext,
            ended: keys.ended.unwrap_or(now),
            key_came: keys.key_came.unwrap_or(now),
            decrypted_in_download: keys.decrypted_in_download,
        }
    }))
}

/// The download's end of the key channel, noting when the download ended and when the key came.
struct KeyArrival {
    keys: Receiver<KeyMessage>,
    /// The key will not come, and the download reads on to its end.
    reading_on: bool,
    ended: Option<Instant>,
    key_came: Option<Instant>,
    decrypted_in_download: u64,
}

impl KeyArrival {
    fn came(&mut self, key: Aes256Key) -> Aes256Key {
        self.key_came = Some(Instant::now());
        key
    }
}

impl KeySource for KeyArrival {
    fn poll(&mut self) -> KeyPoll {
        if self.reading_on {
            return KeyPoll::Pending;
        }
        match self.keys.try_recv() {
            Ok(KeyMessage::Released(key)) => KeyPoll::Ready(self.came(key)),
            Ok(KeyMessage::NotComing {
                stop_download: false,
            }) => {
                self.reading_on = true;
                KeyPoll::Pending
            }
            // A key thread that ended without a word (it panicked) sends nothing more either.
            Ok(KeyMessage::NotComing {
                stop_download: true,
            })
            | Err(TryRecvError::Disconnected) => KeyPoll::NotComing,
            Err(TryRecvError::Empty) => KeyPoll::Pending,
        }
    }

    fn input_ended(&mut self, opened_bytes: u64) {
        self.ended = Some(Instant::now());
        self.decrypted_in_download = opened_bytes;
    }

    fn wait(&mut self) -> Option<Aes256Key> {
        if self.reading_on {
            return None;
        }
        // recv() ends once the key thread has sent its word or ended.
        match self.keys.recv() {
            Ok(KeyMessage::Released(key)) => Some(self.came(key)),
            Ok(KeyMessage::NotComing { .. }) | Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::sync::mpsc::{self, Sender};

    use adyton_envelope::EnvelopeError;

    use super::*;

    const CHUNK: usize = 64;
    const CHUNKS: usize = 8;

    fn key() -> Aes256Key {
        Aes256Key::from_slice(&[9; 32]).unwrap()
    }

    fn plaintext() -> Vec<u8> {
        (0..CHUNKS * CHUNK - 3).map(|i| (i % 251) as u8).collect()
    }

    fn v2_blob(plaintext: &[u8]) -> Vec<u8> {
        let options = v2::EncryptOptions {
            chunk_size: CHUNK as u32,
            key_id: "k1".into(),
            ..Default::default()
        };
        v2::seal(&key(), plaintext, &options).unwrap()
    }

    /// Where chunk `index` starts in a blob made by [`v2_blob`].
    fn chunk_offset(blob: &[u8], index: usize) -> usize {
        let (_, header_len) = v2::Header::parse(blob).unwrap();
        header_len + index * (CHUNK + v2::TAG_LEN)
    }

    /// A blob that plays the key thread: once `at` bytes have been read, it sends `message` (or,
    /// with `None`, hangs up), as a key thread would while the download goes on.
    struct Blob {
        inner: Cursor<Vec<u8>>,
        at: usize,
        message: Option<Option<KeyMessage>>,
        keys: Option<Sender<KeyMessage>>,
    }

    impl Blob {
        fn new(
            blob: Vec<u8>,
            at: usize,
            message: Option<KeyMessage>,
            keys: Sender<KeyMessage>,
        ) -> Self {
            Blob {
                inner: Cursor::new(blob),
                at,
                message: Some(message),
                keys: Some(keys),
            }
        }
    }

    impl Read for Blob {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            // Reads stop at `at`, so that the message goes out exactly there.
            let position = self.inner.position() as usize;
            let limit = if position < self.at {
                self.at - position
            } else {
                buf.len()
            };
            let len = buf.len().min(limit);
            let n = self.inner.read(&mut buf[..len])?;
            if self.inner.position() as usize >= self.at {
                match self.message.take() {
                    Some(Some(message)) => {
                        if let Some(keys) = &self.keys {
                            keys.send(message).unwrap();
                        }
                    }
                    Some(None) => self.keys = None,
                    None => {}
                }
            }
            Ok(n)
        }
    }

    fn run(
        blob: Vec<u8>,
        at: usize,
        message: Option<KeyMessage>,
    ) -> (Result<Option<Opened>, OpenError>, usize) {
        let (to_download, keys) = mpsc::channel();
        let mut blob = Blob::new(blob, at, message, to_download);
        let outcome = download(&mut blob, Some("k1"), keys);
        (outcome, blob.inner.position() as usize)
    }

    /// A key there before the download starts opens every chunk as it lands: all of the
    /// plaintext is decrypted when the download ends, and no time is left waiting for the key.
    #[test]
    fn a_key_there_first_decrypts_everything_during_the_download() {
        let blob = v2_blob(&plaintext());
        let (to_download, keys) = mpsc::channel();
        to_download.send(KeyMessage::Released(key())).unwrap();
        let opened = download(&mut Cursor::new(blob), Some("k1"), keys)
            .unwrap()
            .unwrap();
        assert_eq!(opened.plaintext.as_slice(), plaintext().as_slice());
        assert_eq!(opened.decrypted_in_download, plaintext().len() as u64);
        assert!(opened.key_came <= opened.ended);
    }

    /// A key that comes part-way opens the chunks read before it (the catch-up), then the rest
    /// as they land: everything is decrypted by the end of the download.
    #[test]
    fn a_key_that_comes_part_way_catches_up() {
        let blob = v2_blob(&plaintext());
        for chunk in [1, CHUNKS / 2, CHUNKS - 1] {
            let at = chunk_offset(&blob, chunk);
            let (outcome, read) = run(blob.clone(), at, Some(KeyMessage::Released(key())));
            let opened = outcome.unwrap().unwrap();
            assert_eq!(
                opened.plaintext.as_slice(),
                plaintext().as_slice(),
                "{chunk}"
            );
            assert_eq!(
                opened.decrypted_in_download,
                plaintext().len() as u64,
                "{chunk}"
            );
            assert!(opened.key_came <= opened.ended, "{chunk}");
            assert_eq!(read, blob.len());
        }
    }

    /// A key that comes once the whole blob has been read opens it all then.
    #[test]
    fn a_key_that_comes_after_the_end_opens_everything_then() {
        let blob = v2_blob(&plaintext());
        let len = blob.len();
        let (outcome, _) = run(blob, len, Some(KeyMessage::Released(key())));
        let opened = outcome.unwrap().unwrap();
        assert_eq!(opened.plaintext.as_slice(), plaintext().as_slice());
        assert_eq!(opened.decrypted_in_download, 0);
        assert!(opened.key_came >= opened.ended);
    }

    /// A v1 blob is read whole, then opened once the key has come, wherever it came.
    #[test]
    fn a_v1_blob_opens_whole_once_the_key_has_come() {
        let blob = v1::seal(&key(), &plaintext()).unwrap();
        for at in [0, blob.len() / 2, blob.len()] {
            let (outcome, _) = run(blob.clone(), at, Some(KeyMessage::Released(key())));
            let opened = outcome.unwrap().unwrap();
            assert_eq!(opened.plaintext.as_slice(), plaintext().as_slice(), "{at}");
            assert_eq!(opened.decrypted_in_download, 0);
        }
    }

    /// The key thread failing while the download goes on: when its failure comes before the
    /// download's (the evidence), or when it ends without a word, the download stops at the next
    /// chunk; otherwise it reads on to the end; either way no key is waited for and nothing is
    /// given back.
    #[test]
    fn a_key_that_will_not_come_stops_the_download_without_waiting() {
        let blob = v2_blob(&plaintext());
        let at = chunk_offset(&blob, 2) + 5;
        let stop = || {
            Some(KeyMessage::NotComing {
                stop_download: true,
            })
        };
        for (case, message, stops) in [
            ("evidence failed", stop(), true),
            ("key thread gone", None, true),
            (
                "transfer refused",
                Some(KeyMessage::NotComing {
                    stop_download: false,
                }),
                false,
            ),
        ] {
            let (outcome, read) = run(blob.clone(), at, message);
            assert!(matches!(outcome, Ok(None)), "{case}");
            if stops {
                assert_eq!(read, chunk_offset(&blob, 3), "{case}: read on");
            } else {
                assert_eq!(read, blob.len(), "{case}: stopped");
            }
        }
        let v1_blob = v1::seal(&key(), &plaintext()).unwrap();
        let (outcome, _) = run(v1_blob, 10, stop());
        assert!(matches!(outcome, Ok(None)));
    }

    /// A chunk altered in transit, with the key there from the start, is refused, and nothing
    /// is given back; a blob also cut short is refused as truncated, as when the key comes last.
    #[test]
    fn a_tampered_chunk_with_an_early_key_is_refused() {
        let mut blob = v2_blob(&plaintext());
        let at = chunk_offset(&blob, 3) + 1;
        blob[at] ^= 0x10;
        let (outcome, read) = run(blob.clone(), 0, Some(KeyMessage::Released(key())));
        assert!(
            matches!(
                outcome,
                Err(OpenError::Envelope(EnvelopeError::AuthenticationFailed {
                    chunk: Some(3)
                }))
            ),
            "{:?}",
            outcome.map(|o| o.map(|o| o.decrypted_in_download))
        );
        assert_eq!(read, blob.len());
        blob.pop();
        let (outcome, _) = run(blob, 0, Some(KeyMessage::Released(key())));
        assert!(
            matches!(
                outcome,
                Err(OpenError::Envelope(EnvelopeError::Truncated { .. }))
            ),
            "{:?}",
            outcome.map(|o| o.map(|o| o.decrypted_in_download))
        );
    }

    /// A blob under another key id, or too large, is refused from its header: no chunk is read.
    #[test]
    fn a_header_naming_another_key_is_refused_before_any_chunk() {
        let blob = v2_blob(&plaintext());
        let (to_download, keys) = mpsc::channel();
        to_download.send(KeyMessage::Released(key())).unwrap();
        let mut reader = Cursor::new(blob.clone());
        let outcome = download(&mut reader, Some("k2"), keys);
        assert!(
            matches!(outcome, Err(OpenError::KeyId { ref found, ref expected }) if found == "k1" && expected == "k2"),
            "{:?}",
            outcome.map(|o| o.map(|o| o.decrypted_in_download))
        );
        assert_eq!(reader.position() as usize, chunk_offset(&blob, 0));
    }
}
