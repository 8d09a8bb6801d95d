//! Helpers shared by the test modules.

use std::io::Read;

use adyton_envelope::v2::{self, EncryptOptions};
use adyton_envelope::{Aes256Key, EnvelopeError};

pub fn key(byte: u8) -> Aes256Key {
    Aes256Key::from_slice(&[byte; 32]).unwrap()
}

pub fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

pub fn seal_v2(key: &Aes256Key, plaintext: &[u8], chunk_size: u32) -> Vec<u8> {
    let options = EncryptOptions {
        chunk_size,
        key_id: "key-1".into(),
        content_type: "application/x-onnx".into(),
    };
    v2::seal(key, plaintext, &options).unwrap()
}

/// Decrypts through the `Read` interface, returning what was released before the outcome.
///
/// Runs both chunk sources (direct and read-ahead) and insists that they behave the same.
pub fn read_v2(key: &Aes256Key, envelope: &[u8]) -> (Vec<u8>, Result<(), EnvelopeError>) {
    let direct = drain(v2::Decryptor::new(envelope, key, v2::HashCheck::Verify));
    let ahead = drain(v2::Decryptor::with_read_ahead(
        std::io::Cursor::new(envelope.to_vec()),
        key,
        v2::HashCheck::Verify,
    ));
    assert_eq!(direct.0, ahead.0, "read-ahead released different plaintext");
    assert_eq!(
        format!("{:?}", direct.1),
        format!("{:?}", ahead.1),
        "read-ahead ended differently"
    );
    direct
}

fn drain<R: Read>(
    decryptor: Result<v2::Decryptor<R>, EnvelopeError>,
) -> (Vec<u8>, Result<(), EnvelopeError>) {
    let mut released = Vec::new();
    let outcome = match decryptor {
        Ok(mut decryptor) => {
            let mut buf = [0u8; 100];
            loop {
                match decryptor.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => released.extend_from_slice(&buf[..n]),
                    Err(e) => break Err(EnvelopeError::from_io(e)),
                }
            }
        }
        Err(e) => Err(e),
    };
    (released, outcome)
}

/// Offset where chunk `index` starts in an envelope.
pub fn chunk_offset(envelope: &[u8], index: u64) -> usize {
    let (header, header_len) = v2::Header::parse(envelope).unwrap();
    header_len + index as usize * (header.chunk_size as usize + v2::TAG_LEN)
}
