//! `v2::WholeEnvelope`: a v2 envelope read whole, each chunk opened in place once its key is there
//! (before the first chunk, part-way through, or only after the end). It must accept exactly what
//! the streaming reader accepts, give back the same plaintext whenever the key comes, and give back
//! nothing at all when any check fails or the key does not come.

use std::io::Read;

use adyton_envelope::v2::{self, HashCheck, KeyPoll, KeySource, WholeEnvelope, TAG_LEN};
use adyton_envelope::{Aes256Key, EnvelopeError};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::support::{chunk_offset, key, plaintext, read_v2, seal_v2};

const CHUNK: usize = 64;

/// When the key comes to the reader.
#[derive(Clone, Copy, Debug)]
enum Arrival {
    /// At its `n`-th poll: 0 is before the first chunk is read, `n` before chunk `n` is. If the
    /// reader never polls that often, when it waits.
    Poll(usize),
    /// Only when the reader waits for it, once the input has ended.
    AfterEnd,
    /// Never: at its `n`-th poll, the reader is told the key will not come.
    NotComingAt(usize),
    /// Never: polls find nothing, and the wait ends without a key.
    Never,
}

/// Every arrival that brings the key, for a body of `chunks` chunks.
fn arrivals(chunks: usize) -> Vec<Arrival> {
    let mut all = vec![Arrival::Poll(0), Arrival::Poll(1), Arrival::AfterEnd];
    if chunks > 2 {
        all.push(Arrival::Poll(chunks / 2));
        all.push(Arrival::Poll(chunks - 1));
    }
    all
}

/// A key source that gives `key` at `arrival`, recording what the reader told it.
struct Keys {
    key: Option<Aes256Key>,
    arrival: Arrival,
    polls: usize,
    polls_after_key: usize,
    ended_with: Option<u64>,
    waited: bool,
}

impl Keys {
    fn new(key: Aes256Key, arrival: Arrival) -> Self {
        Keys {
            key: Some(key),
            arrival,
            polls: 0,
            polls_after_key: 0,
            ended_with: None,
            waited: false,
        }
    }
}

impl KeySource for Keys {
    fn poll(&mut self) -> KeyPoll {
        let poll = self.polls;
        self.polls += 1;
        if self.key.is_none() {
            self.polls_after_key += 1;
        }
        match self.arrival {
            Arrival::Poll(at) if poll >= at => {
                self.key.take().map_or(KeyPoll::Pending, KeyPoll::Ready)
            }
            Arrival::NotComingAt(at) if poll >= at => KeyPoll::NotComing,
            _ => KeyPoll::Pending,
        }
    }

    fn input_ended(&mut self, opened_bytes: u64) {
        assert!(self.ended_with.is_none(), "the input ended twice");
        self.ended_with = Some(opened_bytes);
    }

    fn wait(&mut self) -> Option<Aes256Key> {
        assert!(!self.waited, "waited twice");
        assert!(self.ended_with.is_some(), "waited before the input ended");
        self.waited = true;
        match self.arrival {
            Arrival::Poll(_) | Arrival::AfterEnd => self.key.take(),
            Arrival::NotComingAt(_) | Arrival::Never => None,
        }
    }
}

/// A reader that counts the bytes taken from it.
struct Counting<'a> {
    inner: &'a [u8],
    read: usize,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n;
        Ok(n)
    }
}

/// What [`WholeEnvelope::read_and_open`] gives back.
type Outcome = Result<Option<Zeroizing<Vec<u8>>>, EnvelopeError>;

/// Reads `envelope` whole with `keys`, returning the outcome and the bytes read.
fn read_with(envelope: &[u8], hash_check: HashCheck, keys: &mut Keys) -> (Outcome, usize) {
    let mut input = Counting {
        inner: envelope,
        read: 0,
    };
    let outcome = v2::Header::read_from(&mut input)
        .and_then(|(header, aad)| WholeEnvelope::new(header, aad))
        .and_then(|whole| whole.read_and_open(&mut input, hash_check, keys));
    assert_eq!(keys.polls_after_key, 0, "polled after the key came");
    (outcome, input.read)
}

fn copy(key: &Aes256Key) -> Aes256Key {
    Aes256Key::from_slice(key.expose_secret()).unwrap()
}

/// Opens `envelope` with `key` arriving at `arrival`.
fn open_whole(
    key: &Aes256Key,
    envelope: &[u8],
    hash_check: HashCheck,
    arrival: Arrival,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let mut keys = Keys::new(copy(key), arrival);
    read_with(envelope, hash_check, &mut keys)
        .0
        .map(|opened| opened.expect("the key came, so the envelope was opened"))
}

#[test]
fn round_trips_at_every_chunk_boundary_whenever_the_key_comes() {
    for len in [
        0,
        1,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        4 * CHUNK,
        4 * CHUNK + 7,
        100 * CHUNK + 3,
    ] {
        let plain = plaintext(len);
        let envelope = seal_v2(&key(1), &plain, CHUNK as u32);
        let chunks = len.div_ceil(CHUNK).max(1);
        for arrival in arrivals(chunks) {
            for check in [HashCheck::Verify, HashCheck::Skip] {
                let mut keys = Keys::new(key(1), arrival);
                let (outcome, read) = read_with(&envelope, check, &mut keys);
                let opened = outcome.unwrap().unwrap();
                assert_eq!(opened.as_slice(), plain.as_slice(), "{len} {arrival:?}");
                assert_eq!(read, envelope.len(), "{len} {arrival:?}");
                // A key that came while chunks were still to be read opened every chunk before
                // the input ended (those read before it came included); one that came after had
                // nothing opened then.
                let during = matches!(arrival, Arrival::Poll(at) if at < chunks);
                let expected = if during { len as u64 } else { 0 };
                assert_eq!(keys.ended_with, Some(expected), "{len} {arrival:?}");
                assert_eq!(keys.waited, !during, "{len} {arrival:?}");
            }
        }
    }
}

#[test]
fn every_known_answer_vector_opens() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/envelope/v2-kat.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let hex = |v: &Value, field: &str| hex::decode(v[field].as_str().unwrap()).unwrap();
    for vector in doc["vectors"].as_array().unwrap() {
        let key = Aes256Key::from_slice(&hex(vector, "key_hex")).unwrap();
        for arrival in [Arrival::Poll(0), Arrival::AfterEnd] {
            let envelope = hex(vector, "envelope_hex");
            let opened = open_whole(&key, &envelope, HashCheck::Verify, arrival)
                .unwrap_or_else(|e| panic!("{} {arrival:?}: {e}", vector["name"]));
            assert_eq!(
                opened.as_slice(),
                hex(vector, "plaintext_hex"),
                "{} {arrival:?}",
                vector["name"]
            );
        }
    }
}

/// Every single-byte change anywhere in the envelope is refused, by the streaming reader and by
/// the whole one alike, whenever the key comes, and the whole one gives back nothing.
#[test]
fn every_flipped_byte_is_refused_and_nothing_is_released() {
    let plain = plaintext(3 * CHUNK + 10);
    let envelope = seal_v2(&key(1), &plain, CHUNK as u32);
    for at in 0..envelope.len() {
        let mut tampered = envelope.clone();
        tampered[at] ^= 0x20;
        let streaming = read_v2(&key(1), &tampered).1;
        assert!(
            streaming.is_err(),
            "byte {at}: the streaming reader accepted it"
        );
        for arrival in [Arrival::Poll(0), Arrival::Poll(2), Arrival::AfterEnd] {
            let whole = open_whole(&key(1), &tampered, HashCheck::Verify, arrival);
            assert!(
                whole.is_err(),
                "byte {at} {arrival:?}: the whole reader accepted it"
            );
        }
    }
}

#[test]
fn a_flipped_bit_names_its_chunk() {
    let plain = plaintext(4 * CHUNK);
    let envelope = seal_v2(&key(1), &plain, CHUNK as u32);
    for (chunk, within) in [
        (0u64, 0usize),
        (1, 17),
        (2, CHUNK + 3),
        (3, CHUNK + TAG_LEN - 1),
    ] {
        let mut tampered = envelope.clone();
        tampered[chunk_offset(&envelope, chunk) + within] ^= 0x04;
        for arrival in arrivals(4) {
            let outcome = open_whole(&key(1), &tampered, HashCheck::Verify, arrival);
            assert!(
                matches!(outcome, Err(EnvelopeError::AuthenticationFailed { chunk: Some(c) }) if c == chunk),
                "chunk {chunk} {arrival:?}: {outcome:?}"
            );
        }
    }
}

/// A chunk refused while the download goes on (the key came first) is reported only once the
/// input has been read to its end, so that a broken or truncated input is reported as such, as it
/// is when the key comes after the end; either way no plaintext is given back.
#[test]
fn a_tampered_chunk_with_an_early_key_is_refused_after_the_input_is_read() {
    let plain = plaintext(6 * CHUNK);
    let envelope = seal_v2(&key(1), &plain, CHUNK as u32);
    let mut tampered = envelope.clone();
    tampered[chunk_offset(&envelope, 1) + 5] ^= 0x01;
    let mut keys = Keys::new(key(1), Arrival::Poll(0));
    let (outcome, read) = read_with(&tampered, HashCheck::Verify, &mut keys);
    assert!(
        matches!(
            outcome,
            Err(EnvelopeError::AuthenticationFailed { chunk: Some(1) })
        ),
        "{outcome:?}"
    );
    assert_eq!(read, tampered.len(), "the input was read to its end");
    // Chunk 0 had opened when the input ended; nothing after the refused chunk was.
    assert_eq!(keys.ended_with, Some(CHUNK as u64));

    let cut = &tampered[..tampered.len() - 1];
    for arrival in [Arrival::Poll(0), Arrival::AfterEnd] {
        let outcome = open_whole(&key(1), cut, HashCheck::Verify, arrival);
        assert!(
            matches!(outcome, Err(EnvelopeError::Truncated { .. })),
            "{arrival:?}: {outcome:?}"
        );
    }
}

#[test]
fn the_wrong_key_is_refused_at_the_first_chunk() {
    let envelope = seal_v2(&key(1), &plaintext(4 * CHUNK), CHUNK as u32);
    for arrival in arrivals(4) {
        let outcome = open_whole(&key(2), &envelope, HashCheck::Verify, arrival);
        assert!(
            matches!(
                outcome,
                Err(EnvelopeError::AuthenticationFailed { chunk: Some(0) })
            ),
            "{arrival:?}: {outcome:?}"
        );
    }
}

/// Truncation and trailing bytes are found while reading, before any key is needed, and also
/// when the key came first.
#[test]
fn truncation_and_trailing_bytes_are_refused_while_reading() {
    let envelope = seal_v2(&key(1), &plaintext(4 * CHUNK), CHUNK as u32);
    let header_len = chunk_offset(&envelope, 0);
    let mut longer = envelope.clone();
    longer.push(0);
    let cases: Vec<(&[u8], bool)> = vec![
        (&envelope[..header_len], true),
        (&envelope[..header_len + 1], true),
        (&envelope[..chunk_offset(&envelope, 3)], true),
        (&envelope[..envelope.len() - 1], true),
        (&envelope[..envelope.len() - TAG_LEN], true),
        (&longer, false),
    ];
    for (input, truncated) in cases {
        for arrival in [Arrival::Never, Arrival::Poll(0), Arrival::Poll(2)] {
            let mut keys = Keys::new(key(1), arrival);
            let (outcome, _) = read_with(input, HashCheck::Verify, &mut keys);
            let what = format!("{} bytes, {arrival:?}: {outcome:?}", input.len());
            if truncated {
                assert!(
                    matches!(outcome, Err(EnvelopeError::Truncated { .. })),
                    "{what}"
                );
            } else {
                assert!(
                    matches!(outcome, Err(EnvelopeError::TrailingBytes { .. })),
                    "{what}"
                );
            }
            assert!(!keys.waited, "{what}: waited for a key");
            assert_eq!(keys.ended_with, None, "{what}: the input was said to end");
        }
    }
}

#[test]
fn a_read_error_is_an_io_error() {
    struct Broken<'a>(&'a [u8]);
    impl std::io::Read for Broken<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset",
                ));
            }
            let n = buf.len().min(self.0.len()).min(50);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let envelope = seal_v2(&key(1), &plaintext(4 * CHUNK), CHUNK as u32);
    for arrival in [Arrival::Poll(0), Arrival::AfterEnd] {
        let mut input = Broken(&envelope[..envelope.len() / 2]);
        let (header, aad) = v2::Header::read_from(&mut input).unwrap();
        let mut keys = Keys::new(key(1), arrival);
        let outcome = WholeEnvelope::new(header, aad).unwrap().read_and_open(
            &mut input,
            HashCheck::Verify,
            &mut keys,
        );
        assert!(
            matches!(outcome, Err(EnvelopeError::Io(_))),
            "{arrival:?}: {outcome:?}"
        );
    }
}

/// A key that will not come stops the reading at the next chunk, or once the input has ended when
/// the wait ends without it: no plaintext, and no error of the envelope's.
#[test]
fn a_key_that_does_not_come_stops_the_reading() {
    let envelope = seal_v2(&key(1), &plaintext(6 * CHUNK + 5), CHUNK as u32);
    for at in [0u64, 1, 3, 6] {
        let mut keys = Keys::new(key(1), Arrival::NotComingAt(at as usize));
        let (outcome, read) = read_with(&envelope, HashCheck::Verify, &mut keys);
        assert!(matches!(outcome, Ok(None)), "at {at}: {outcome:?}");
        assert_eq!(read, chunk_offset(&envelope, at), "at {at}: read on");
        assert!(!keys.waited && keys.ended_with.is_none(), "at {at}");
    }
    let mut keys = Keys::new(key(1), Arrival::Never);
    let (outcome, read) = read_with(&envelope, HashCheck::Verify, &mut keys);
    assert!(matches!(outcome, Ok(None)), "{outcome:?}");
    assert_eq!(read, envelope.len());
    assert!(keys.waited);
    assert_eq!(keys.ended_with, Some(0));
}

/// A writer holding the key but recording a wrong hash: every chunk authenticates, and the hash
/// check still refuses the whole, whenever the key comes.
#[test]
fn a_wrong_plaintext_hash_is_refused() {
    let plain = plaintext(3 * CHUNK + 10);
    let (mut header, _) = v2::Header::parse(&seal_v2(&key(1), &plain, CHUNK as u32)).unwrap();
    header.plaintext_sha256 = [0xAB; 32];
    // The writer refuses a wrong hash, so the chunks are sealed with aws-lc directly.
    let envelope = seal_with_header(&[1; 32], &header, &plain);
    for arrival in arrivals(4) {
        let outcome = open_whole(&key(1), &envelope, HashCheck::Verify, arrival);
        assert!(
            matches!(outcome, Err(EnvelopeError::PlaintextHashMismatch { .. })),
            "{arrival:?}: {outcome:?}"
        );
        let opened = open_whole(&key(1), &envelope, HashCheck::Skip, arrival).unwrap();
        assert_eq!(opened.as_slice(), plain.as_slice());
    }
}

fn seal_with_header(key: &[u8; 32], header: &v2::Header, plain: &[u8]) -> Vec<u8> {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let aad = header.encode().unwrap();
    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let mut out = aad.clone();
    let chunks: Vec<&[u8]> = plain.chunks(header.chunk_size as usize).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut nonce = [0u8; 12];
        nonce[..7].copy_from_slice(&header.nonce_prefix);
        nonce[7..11].copy_from_slice(&(i as u32).to_be_bytes());
        nonce[11] = u8::from(i + 1 == chunks.len());
        let mut data = chunk.to_vec();
        aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad[..]),
            &mut data,
        )
        .unwrap();
        out.extend_from_slice(&data);
    }
    out
}

/// A header is not authenticated before its chunks open: a length no allocator can give is an
/// error, not an abort.
#[test]
fn a_plaintext_length_beyond_memory_is_an_error() {
    let header = v2::Header {
        chunk_size: v2::MAX_CHUNK_SIZE,
        plaintext_len: 1 << 55,
        plaintext_sha256: [0; 32],
        nonce_prefix: [0; 7],
        key_id: String::new(),
        content_type: String::new(),
    };
    let aad = header.encode().unwrap();
    let outcome = WholeEnvelope::new(header, aad);
    assert!(
        matches!(outcome, Err(EnvelopeError::TooLargeForMemory { len }) if len == 1 << 55),
        "{outcome:?}"
    );
}
