//! `v2::WholeEnvelope`: a v2 envelope read whole before its key is known, then opened in place.
//! It must accept exactly what the streaming reader accepts, give back the same plaintext, and give
//! back nothing at all when any check fails.

use adyton_envelope::v2::{self, HashCheck, WholeEnvelope, TAG_LEN};
use adyton_envelope::{Aes256Key, EnvelopeError};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::support::{chunk_offset, key, plaintext, read_v2, seal_v2};

const CHUNK: usize = 64;

fn read_whole(envelope: &[u8]) -> Result<WholeEnvelope, EnvelopeError> {
    let mut input = envelope;
    let (header, aad) = v2::Header::read_from(&mut input)?;
    WholeEnvelope::read_body(header, aad, &mut input)
}

fn open_whole(
    key: &Aes256Key,
    envelope: &[u8],
    hash_check: HashCheck,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    read_whole(envelope)?.open(key, hash_check)
}

#[test]
fn round_trips_at_every_chunk_boundary() {
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
        for check in [HashCheck::Verify, HashCheck::Skip] {
            let opened = open_whole(&key(1), &envelope, check).unwrap();
            assert_eq!(opened.as_slice(), plain.as_slice(), "length {len}");
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
        let opened = open_whole(&key, &hex(vector, "envelope_hex"), HashCheck::Verify)
            .unwrap_or_else(|e| panic!("{}: {e}", vector["name"]));
        assert_eq!(
            opened.as_slice(),
            hex(vector, "plaintext_hex"),
            "{}",
            vector["name"]
        );
    }
}

/// Every single-byte change anywhere in the envelope is refused, by the streaming reader and by
/// the whole one alike, and the whole one gives back nothing.
#[test]
fn every_flipped_byte_is_refused_and_nothing_is_released() {
    let plain = plaintext(3 * CHUNK + 10);
    let envelope = seal_v2(&key(1), &plain, CHUNK as u32);
    for at in 0..envelope.len() {
        let mut tampered = envelope.clone();
        tampered[at] ^= 0x20;
        let streaming = read_v2(&key(1), &tampered).1;
        let whole = open_whole(&key(1), &tampered, HashCheck::Verify);
        assert!(
            streaming.is_err(),
            "byte {at}: the streaming reader accepted it"
        );
        assert!(whole.is_err(), "byte {at}: the whole reader accepted it");
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
        let outcome = open_whole(&key(1), &tampered, HashCheck::Verify);
        assert!(
            matches!(outcome, Err(EnvelopeError::AuthenticationFailed { chunk: Some(c) }) if c == chunk),
            "chunk {chunk}: {outcome:?}"
        );
    }
}

#[test]
fn the_wrong_key_is_refused_at_the_first_chunk() {
    let envelope = seal_v2(&key(1), &plaintext(4 * CHUNK), CHUNK as u32);
    let outcome = open_whole(&key(2), &envelope, HashCheck::Verify);
    assert!(
        matches!(
            outcome,
            Err(EnvelopeError::AuthenticationFailed { chunk: Some(0) })
        ),
        "{outcome:?}"
    );
}

/// Truncation and trailing bytes are found while reading, before any key is needed.
#[test]
fn truncation_and_trailing_bytes_are_refused_while_reading() {
    let envelope = seal_v2(&key(1), &plaintext(4 * CHUNK), CHUNK as u32);
    let header_len = chunk_offset(&envelope, 0);
    for cut in [
        header_len,
        header_len + 1,
        chunk_offset(&envelope, 3),
        envelope.len() - 1,
        envelope.len() - TAG_LEN,
    ] {
        let outcome = read_whole(&envelope[..cut]);
        assert!(
            matches!(outcome, Err(EnvelopeError::Truncated { .. })),
            "cut at {cut}: {outcome:?}"
        );
    }
    let mut longer = envelope.clone();
    longer.push(0);
    let outcome = read_whole(&longer);
    assert!(
        matches!(outcome, Err(EnvelopeError::TrailingBytes { .. })),
        "{outcome:?}"
    );
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
    let mut input = Broken(&envelope[..envelope.len() / 2]);
    let (header, aad) = v2::Header::read_from(&mut input).unwrap();
    let outcome = WholeEnvelope::read_body(header, aad, &mut input);
    assert!(matches!(outcome, Err(EnvelopeError::Io(_))), "{outcome:?}");
}

/// A writer holding the key but recording a wrong hash: every chunk authenticates, and the hash
/// check still refuses the whole.
#[test]
fn a_wrong_plaintext_hash_is_refused() {
    let plain = plaintext(3 * CHUNK + 10);
    let (mut header, _) = v2::Header::parse(&seal_v2(&key(1), &plain, CHUNK as u32)).unwrap();
    header.plaintext_sha256 = [0xAB; 32];
    // The writer refuses a wrong hash, so the chunks are sealed with aws-lc directly.
    let envelope = seal_with_header(&[1; 32], &header, &plain);
    let outcome = open_whole(&key(1), &envelope, HashCheck::Verify);
    assert!(
        matches!(outcome, Err(EnvelopeError::PlaintextHashMismatch { .. })),
        "{outcome:?}"
    );
    let opened = open_whole(&key(1), &envelope, HashCheck::Skip).unwrap();
    assert_eq!(opened.as_slice(), plain.as_slice());
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
    let outcome = WholeEnvelope::read_body(header, aad, &mut &[0u8; 64][..]);
    assert!(
        matches!(outcome, Err(EnvelopeError::TooLargeForMemory { len }) if len == 1 << 55),
        "{outcome:?}"
    );
}
