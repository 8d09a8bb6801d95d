//! Sealed bytes: the round trip, and every change refused with its own error.

use adyton_envelope::sealed::{self, MAGIC, NONCE_LEN, OVERHEAD, TAG_LEN};
use adyton_envelope::EnvelopeError;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::support::{key, plaintext};

const AAD: &[u8] = b"adyton/model-key/v1 model=resnet50";

fn fixture() -> (Vec<u8>, Vec<u8>) {
    let plain = plaintext(100);
    let sealed = sealed::seal(&key(1), AAD, &plain).unwrap();
    (plain, sealed)
}

fn assert_authentication_failed(result: Result<zeroize::Zeroizing<Vec<u8>>, EnvelopeError>) {
    assert!(
        matches!(
            result,
            Err(EnvelopeError::AuthenticationFailed { chunk: None })
        ),
        "{result:?}"
    );
}

#[test]
fn round_trip() {
    for len in [0, 1, 32, 1000] {
        let plain = plaintext(len);
        let sealed = sealed::seal(&key(1), AAD, &plain).unwrap();
        assert_eq!(sealed.len(), OVERHEAD + len);
        assert_eq!(&sealed[..MAGIC.len()], b"ADYSEAL1");
        assert_eq!(*sealed::unseal(&key(1), AAD, &sealed).unwrap(), plain);
    }
    // An empty aad is an aad like any other.
    let sealed = sealed::seal(&key(1), b"", b"secret").unwrap();
    assert_eq!(&*sealed::unseal(&key(1), b"", &sealed).unwrap(), b"secret");
}

#[test]
fn layout_matches_an_independent_aes_gcm() {
    let (plain, sealed) = fixture();
    let nonce: [u8; NONCE_LEN] = sealed[8..8 + NONCE_LEN].try_into().unwrap();
    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[1; 32]).unwrap());
    let mut aad = MAGIC.to_vec();
    aad.extend_from_slice(AAD);
    let mut body = sealed[8 + NONCE_LEN..].to_vec();
    let opened = aead
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_slice()),
            &mut body,
        )
        .unwrap();
    assert_eq!(opened, &plain[..]);
    assert_eq!(sealed.len() - 8 - NONCE_LEN - plain.len(), TAG_LEN);
}

#[test]
fn nonces_are_fresh() {
    let a = sealed::seal(&key(1), AAD, b"same").unwrap();
    let b = sealed::seal(&key(1), AAD, b"same").unwrap();
    assert_ne!(a[8..8 + NONCE_LEN], b[8..8 + NONCE_LEN]);
    assert_ne!(a, b);
}

#[test]
fn wrong_key_is_refused() {
    let (_, sealed) = fixture();
    assert_authentication_failed(sealed::unseal(&key(2), AAD, &sealed));
}

#[test]
fn wrong_aad_is_refused() {
    let (_, sealed) = fixture();
    assert_authentication_failed(sealed::unseal(&key(1), b"another model", &sealed));
    assert_authentication_failed(sealed::unseal(&key(1), b"", &sealed));
    assert_authentication_failed(sealed::unseal(&key(1), &AAD[..AAD.len() - 1], &sealed));
}

#[test]
fn flipped_byte_anywhere_after_the_magic_is_refused() {
    let (_, sealed) = fixture();
    for index in MAGIC.len()..sealed.len() {
        for bit in [0x01, 0x80] {
            let mut tampered = sealed.clone();
            tampered[index] ^= bit;
            assert_authentication_failed(sealed::unseal(&key(1), AAD, &tampered));
        }
    }
}

#[test]
fn flipped_byte_in_the_magic_is_wrong_magic() {
    let (_, sealed) = fixture();
    for index in 0..MAGIC.len() {
        let mut tampered = sealed.clone();
        tampered[index] ^= 0x01;
        let result = sealed::unseal(&key(1), AAD, &tampered);
        assert!(
            matches!(result, Err(EnvelopeError::BadSealedMagic)),
            "{result:?}"
        );
    }
}

#[test]
fn wrong_magic_is_refused() {
    let (_, sealed) = fixture();
    // A v2 envelope, and other bytes, are not sealed bytes.
    let mut v2 = b"ADYTON\x02\x01".to_vec();
    v2.extend_from_slice(&sealed[8..]);
    let mut older = b"ADYSEAL0".to_vec();
    older.extend_from_slice(&sealed[8..]);
    for input in [v2.as_slice(), older.as_slice(), b"PK\x03\x04", b"X"] {
        let result = sealed::unseal(&key(1), AAD, input);
        assert!(
            matches!(result, Err(EnvelopeError::BadSealedMagic)),
            "{result:?}"
        );
    }
}

#[test]
fn truncation_is_refused() {
    let (_, sealed) = fixture();
    // Too short for magic, nonce and tag: truncated, with the lengths.
    for len in [0, 3, MAGIC.len(), MAGIC.len() + NONCE_LEN, OVERHEAD - 1] {
        let result = sealed::unseal(&key(1), AAD, &sealed[..len]);
        match result {
            Err(EnvelopeError::Truncated {
                expected, actual, ..
            }) => {
                assert_eq!(expected, OVERHEAD as u64);
                assert_eq!(actual, len as u64);
            }
            other => panic!("{len}: {other:?}"),
        }
    }
    // Long enough to parse but cut: the tag no longer verifies.
    for len in [OVERHEAD, sealed.len() - TAG_LEN, sealed.len() - 1] {
        assert_authentication_failed(sealed::unseal(&key(1), AAD, &sealed[..len]));
    }
    // Bytes appended are refused as well.
    let mut longer = sealed.clone();
    longer.push(0);
    assert_authentication_failed(sealed::unseal(&key(1), AAD, &longer));
}

#[test]
fn errors_name_the_problem() {
    assert!(EnvelopeError::BadSealedMagic
        .to_string()
        .contains("not Adyton sealed bytes"));
}
