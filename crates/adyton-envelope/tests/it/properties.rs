//! Property tests: round trips, and single-bit flips anywhere.

use std::io::Read;

use adyton_envelope::v2::{self, HashCheck, TAG_LEN};
use adyton_envelope::{v1, EnvelopeError};
use proptest::prelude::*;

use crate::support::{key, read_v2, seal_v2};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn v1_round_trip(plain in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let envelope = v1::seal(&key(3), &plain).unwrap();
        let opened = v1::open(&key(3), &envelope).unwrap();
        prop_assert_eq!(opened.as_slice(), &plain[..]);
    }

    #[test]
    fn v1_single_bit_flip_is_refused(
        plain in proptest::collection::vec(any::<u8>(), 0..512),
        position in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut envelope = v1::seal(&key(3), &plain).unwrap();
        let at = position.index(envelope.len());
        envelope[at] ^= 1 << bit;
        prop_assert!(v1::open(&key(3), &envelope).is_err());
    }

    #[test]
    fn v2_round_trip(
        plain in proptest::collection::vec(any::<u8>(), 0..4096),
        chunk_size in 16u32..700,
        read_size in 1usize..1000,
    ) {
        let envelope = seal_v2(&key(4), &plain, chunk_size);
        let (header, _) = v2::Header::parse(&envelope).unwrap();
        prop_assert_eq!(envelope.len() as u64, header.envelope_len());

        let mut decryptor = v2::Decryptor::new(&envelope[..], &key(4), HashCheck::Verify).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; read_size];
        loop {
            let n = decryptor.read(&mut buf).unwrap();
            if n == 0 { break; }
            out.extend_from_slice(&buf[..n]);
        }
        prop_assert_eq!(out, plain);
    }

    /// A flip in the header releases nothing; a flip in chunk i releases exactly chunks 0..i.
    #[test]
    fn v2_single_bit_flip_is_refused_before_its_chunk(
        plain in proptest::collection::vec(any::<u8>(), 0..2048),
        chunk_size in 16u32..300,
        position in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut envelope = seal_v2(&key(5), &plain, chunk_size);
        let (_, header_len) = v2::Header::parse(&envelope).unwrap();
        let at = position.index(envelope.len());
        envelope[at] ^= 1 << bit;
        let (released, outcome) = read_v2(&key(5), &envelope);
        prop_assert!(outcome.is_err());
        let allowed = if at < header_len {
            0
        } else {
            (at - header_len) / (chunk_size as usize + TAG_LEN) * chunk_size as usize
        };
        prop_assert_eq!(&released[..], &plain[..allowed.min(plain.len())]);
        if at >= header_len {
            let chunk = ((at - header_len) / (chunk_size as usize + TAG_LEN)) as u64;
            let is_auth = matches!(outcome, Err(EnvelopeError::AuthenticationFailed { chunk: Some(c) }) if c == chunk);
            prop_assert!(is_auth);
        }
    }

    /// Header parsing never panics, whatever the bytes.
    #[test]
    fn v2_header_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = v2::Header::parse(&bytes);
        let mut with_magic = b"ADYTON\x02\x01".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = v2::Header::parse(&with_magic);
    }
}
