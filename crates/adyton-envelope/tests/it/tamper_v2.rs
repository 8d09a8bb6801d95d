//! Every change to a v2 envelope in the list is detected before any plaintext of the
//! affected chunk is released.

use adyton_envelope::v2::{self, HashCheck, TAG_LEN};
use adyton_envelope::EnvelopeError;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::support::{chunk_offset, key, plaintext, read_v2, seal_v2};

const CHUNK: usize = 64;

/// Four full chunks of 64 bytes.
fn fixture() -> (Vec<u8>, Vec<u8>) {
    let plain = plaintext(4 * CHUNK);
    let envelope = seal_v2(&key(1), &plain, CHUNK as u32);
    (plain, envelope)
}

fn chunk_range(envelope: &[u8], index: u64) -> std::ops::Range<usize> {
    let start = chunk_offset(envelope, index);
    start..start + CHUNK + TAG_LEN
}

#[test]
fn intact_envelope_decrypts() {
    let (plain, envelope) = fixture();
    let (released, outcome) = read_v2(&key(1), &envelope);
    outcome.unwrap();
    assert_eq!(released, plain);
}

#[test]
fn missing_last_chunk_is_truncation() {
    let (plain, envelope) = fixture();
    let cut = chunk_offset(&envelope, 3);
    let (released, outcome) = read_v2(&key(1), &envelope[..cut]);
    assert!(
        matches!(&outcome, Err(EnvelopeError::Truncated { actual: 0, .. })),
        "{outcome:?}"
    );
    assert_eq!(released, plain[..3 * CHUNK]);
}

#[test]
fn chunk_cut_short_is_truncation() {
    let (plain, envelope) = fixture();
    let (released, outcome) = read_v2(&key(1), &envelope[..envelope.len() - 5]);
    assert!(
        matches!(outcome, Err(EnvelopeError::Truncated { .. })),
        "{outcome:?}"
    );
    assert_eq!(released, plain[..3 * CHUNK]);
}

#[test]
fn header_cut_short_is_truncation() {
    let (_, envelope) = fixture();
    for len in [0, 5, 11, 40, 67, 70] {
        let (released, outcome) = read_v2(&key(1), &envelope[..len]);
        assert!(released.is_empty());
        assert!(
            matches!(outcome, Err(EnvelopeError::Truncated { .. })),
            "length {len}: {outcome:?}"
        );
    }
}

#[test]
fn reordered_chunks_are_refused() {
    let (plain, mut envelope) = fixture();
    let (one, two) = (chunk_range(&envelope, 1), chunk_range(&envelope, 2));
    let saved = envelope[one.clone()].to_vec();
    envelope.copy_within(two.clone(), one.start);
    envelope[two].copy_from_slice(&saved);
    let (released, outcome) = read_v2(&key(1), &envelope);
    assert!(
        matches!(
            outcome,
            Err(EnvelopeError::AuthenticationFailed { chunk: Some(1) })
        ),
        "{outcome:?}"
    );
    assert_eq!(released, plain[..CHUNK]);
}

#[test]
fn dropped_chunk_is_refused() {
    let (plain, mut envelope) = fixture();
    envelope.drain(chunk_range(&envelope, 1));
    let (released, outcome) = read_v2(&key(1), &envelope);
    assert!(
        matches!(
            outcome,
            Err(EnvelopeError::AuthenticationFailed { chunk: Some(1) })
        ),
        "{outcome:?}"
    );
    assert_eq!(released, plain[..CHUNK]);
}

#[test]
fn duplicated_chunk_is_refused() {
    let (plain, mut envelope) = fixture();
    let first = envelope[chunk_range(&envelope, 0)].to_vec();
    let at = chunk_offset(&envelope, 1);
    envelope.splice(at..at, first);
    let (released, outcome) = read_v2(&key(1), &envelope);
    assert!(
        matches!(
            outcome,
            Err(EnvelopeError::AuthenticationFailed { chunk: Some(1) })
        ),
        "{outcome:?}"
    );
    assert_eq!(released, plain[..CHUNK]);
}

#[test]
fn duplicated_last_chunk_is_trailing_bytes() {
    let (plain, mut envelope) = fixture();
    let last = envelope[chunk_range(&envelope, 3)].to_vec();
    envelope.extend_from_slice(&last);
    let (released, outcome) = read_v2(&key(1), &envelope);
    assert!(
        matches!(outcome, Err(EnvelopeError::TrailingBytes { .. })),
        "{outcome:?}"
    );
    // The last chunk is held back until the end of input is confirmed.
    assert_eq!(released, plain[..3 * CHUNK]);
}

#[test]
fn appended_byte_is_trailing_bytes() {
    let (plain, mut envelope) = fixture();
    envelope.push(0);
    let (released, outcome) = read_v2(&key(1), &envelope);
    assert!(
        matches!(outcome, Err(EnvelopeError::TrailingBytes { .. })),
        "{outcome:?}"
    );
    assert_eq!(released, plain[..3 * CHUNK]);
}

/// Each header field, changed to another valid value, makes chunk 0 fail before anything is
/// released.
#[test]
fn every_header_field_is_authenticated() {
    let (_, envelope) = fixture();
    // Offsets from docs/envelope-v2.md; key id "key-1" starts at 66, the content type at 73.
    let edits: [(&str, usize, u8); 7] = [
        ("chunk_size", 12, 0x01),
        ("plaintext_len", 16, 0x01),
        ("plaintext_sha256", 24, 0x01),
        ("plaintext_sha256 last byte", 55, 0x80),
        ("nonce_prefix", 56, 0x01),
        ("key_id", 66, 0x01),
        ("content_type", 73, 0x01),
    ];
    for (field, offset, mask) in edits {
        let mut tampered = envelope.clone();
        tampered[offset] ^= mask;
        let (released, outcome) = read_v2(&key(1), &tampered);
        assert!(released.is_empty(), "{field}: plaintext released");
        assert!(
            matches!(
                outcome,
                Err(EnvelopeError::AuthenticationFailed { chunk: Some(0) })
                    | Err(EnvelopeError::Truncated { .. })
            ),
            "{field}: {outcome:?}"
        );
    }
}

#[test]
fn structurally_bad_headers_have_their_own_errors() {
    let (_, envelope) = fixture();
    type Expect = fn(&EnvelopeError) -> bool;
    let cases: [(usize, u8, Expect); 6] = [
        (0, b'X', |e| matches!(e, EnvelopeError::BadMagic)),
        (6, 3, |e| {
            matches!(e, EnvelopeError::UnsupportedVersion { found: 3 })
        }),
        (7, 2, |e| {
            matches!(e, EnvelopeError::UnsupportedAlgorithm { found: 2 })
        }),
        (8, 0xFF, |e| {
            matches!(e, EnvelopeError::BadHeaderLength { .. })
        }),
        (63, 1, |e| {
            matches!(e, EnvelopeError::ReservedFlags { found: 1 })
        }),
        (15, 0x10, |e| {
            matches!(e, EnvelopeError::BadChunkSize { .. })
        }),
    ];
    for (offset, value, expected) in cases {
        let mut bad = envelope.clone();
        bad[offset] = value;
        let (released, outcome) = read_v2(&key(1), &bad);
        assert!(released.is_empty());
        let err = outcome.unwrap_err();
        assert!(expected(&err), "offset {offset}: {err}");
    }
    // A key id that is not UTF-8.
    let mut bad = envelope.clone();
    bad[66] = 0xFF;
    assert!(matches!(
        read_v2(&key(1), &bad).1,
        Err(EnvelopeError::FieldNotUtf8 { field: "key id" })
    ));
    // A length field larger than the limit.
    let mut bad = envelope;
    bad[65] = 1;
    assert!(matches!(
        read_v2(&key(1), &bad).1,
        Err(EnvelopeError::FieldTooLong {
            field: "key id",
            ..
        })
    ));
}

#[test]
fn flipped_ciphertext_or_tag_bit_is_refused_in_its_chunk() {
    let (plain, envelope) = fixture();
    for (chunk, within) in [
        (0u64, 0usize),
        (1, 17),
        (2, CHUNK + 3),
        (3, CHUNK + TAG_LEN - 1),
    ] {
        let mut tampered = envelope.clone();
        tampered[chunk_offset(&envelope, chunk) + within] ^= 0x04;
        let (released, outcome) = read_v2(&key(1), &tampered);
        assert!(
            matches!(outcome, Err(EnvelopeError::AuthenticationFailed { chunk: Some(c) }) if c == chunk),
            "chunk {chunk}: {outcome:?}"
        );
        assert_eq!(released, plain[..chunk as usize * CHUNK]);
    }
}

#[test]
fn wrong_key_is_refused_at_the_first_chunk() {
    let (_, envelope) = fixture();
    let (released, outcome) = read_v2(&key(2), &envelope);
    assert!(released.is_empty());
    assert!(matches!(
        outcome,
        Err(EnvelopeError::AuthenticationFailed { chunk: Some(0) })
    ));
}

#[test]
fn a_failed_stream_does_not_go_on() {
    let (_, mut envelope) = fixture();
    let at = chunk_offset(&envelope, 1);
    envelope[at] ^= 1;
    let mut decryptor = v2::Decryptor::new(&envelope[..], &key(1), HashCheck::Verify).unwrap();
    assert!(decryptor.next_chunk().unwrap().is_some());
    assert!(decryptor.next_chunk().is_err());
    assert!(matches!(
        decryptor.next_chunk(),
        Err(EnvelopeError::StreamFailed)
    ));
}

/// Seals chunks by hand, as a writer holding the key but recording a wrong hash would.
fn seal_with_wrong_hash(plain: &[u8]) -> Vec<u8> {
    let header = v2::Header {
        chunk_size: CHUNK as u32,
        plaintext_len: plain.len() as u64,
        plaintext_sha256: [0xAB; 32],
        nonce_prefix: [9; 7],
        key_id: String::new(),
        content_type: String::new(),
    };
    let aad = header.encode().unwrap();
    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[1; 32]).unwrap());
    let mut out = aad.clone();
    let chunks: Vec<&[u8]> = plain.chunks(CHUNK).collect();
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

#[test]
fn wrong_plaintext_hash_is_caught_before_the_last_chunk() {
    let plain = plaintext(3 * CHUNK + 10);
    let envelope = seal_with_wrong_hash(&plain);
    let (released, outcome) = read_v2(&key(1), &envelope);
    assert!(
        matches!(outcome, Err(EnvelopeError::PlaintextHashMismatch { .. })),
        "{outcome:?}"
    );
    assert_eq!(released, plain[..3 * CHUNK]);

    // Skipping the check releases everything: every chunk authenticated.
    let mut out = Vec::new();
    v2::decrypt(&key(1), &envelope[..], &mut out, HashCheck::Skip).unwrap();
    assert_eq!(out, plain);
}

#[test]
fn writer_refuses_wrong_length_or_hash() {
    use std::io::Write;
    let plain = plaintext(100);
    let options = v2::EncryptOptions::default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &plain);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());

    let header = options.header_for(100, hash).unwrap();
    let mut writer = v2::Encryptor::new(Vec::new(), &key(1), header).unwrap();
    writer.write_all(&plain[..99]).unwrap();
    assert!(matches!(
        writer.finish(),
        Err(EnvelopeError::PlaintextLengthMismatch {
            declared: 100,
            written: 99
        })
    ));

    let header = options.header_for(100, hash).unwrap();
    let mut writer = v2::Encryptor::new(Vec::new(), &key(1), header).unwrap();
    assert!(writer.write_all(&plaintext(101)).is_err());

    let header = options.header_for(100, [0; 32]).unwrap();
    let mut writer = v2::Encryptor::new(Vec::new(), &key(1), header).unwrap();
    writer.write_all(&plain).unwrap();
    assert!(matches!(
        writer.finish(),
        Err(EnvelopeError::PlaintextHashMismatch { .. })
    ));
}

#[test]
fn read_ahead_gives_the_reader_back_and_stops_when_dropped() {
    let plain = plaintext(50 * CHUNK);
    let envelope = seal_v2(&key(1), &plain, CHUNK as u32);
    let cursor = || std::io::Cursor::new(envelope.clone());

    let mut decryptor =
        v2::Decryptor::with_read_ahead(cursor(), &key(1), HashCheck::Verify).unwrap();
    assert_eq!(decryptor.next_chunk().unwrap().unwrap(), &plain[..CHUNK]);
    let reader = decryptor.into_inner().unwrap();
    // The thread read ahead, but never past the envelope.
    assert!(reader.position() > chunk_offset(&envelope, 1) as u64);
    assert!(reader.position() <= envelope.len() as u64);

    // Dropped mid-stream, the decryptor does not wait for or leak a blocked thread.
    let mut decryptor =
        v2::Decryptor::with_read_ahead(cursor(), &key(1), HashCheck::Verify).unwrap();
    decryptor.next_chunk().unwrap();
    drop(decryptor);
}
