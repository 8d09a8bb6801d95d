//! Known-answer vectors for envelope v2, made by the independent Python implementation in
//! `tests/reference/adyton_v2.py` (see `testdata/README.md`).

use adyton_envelope::v2::{self, HashCheck};
use adyton_envelope::Aes256Key;
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/envelope/v2-kat.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

fn bytes(vector: &Value, field: &str) -> Vec<u8> {
    hex::decode(vector[field].as_str().unwrap()).unwrap()
}

#[test]
fn there_are_vectors_for_every_chunk_boundary_case() {
    let names: Vec<String> = vectors()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.len() >= 7, "{names:?}");
    for expected in ["empty", "partial-last-chunk-40", "full-last-chunk-48"] {
        assert!(names.iter().any(|n| n == expected), "missing {expected}");
    }
}

#[test]
fn every_vector_decrypts_to_its_plaintext() {
    for vector in vectors() {
        let key = Aes256Key::from_slice(&bytes(&vector, "key_hex")).unwrap();
        let envelope = bytes(&vector, "envelope_hex");
        let mut out = Vec::new();
        let header = v2::decrypt(&key, &envelope[..], &mut out, HashCheck::Verify)
            .unwrap_or_else(|e| panic!("{}: {e}", vector["name"]));
        assert_eq!(out, bytes(&vector, "plaintext_hex"), "{}", vector["name"]);
        assert_eq!(header.key_id, vector["key_id"].as_str().unwrap());
        assert_eq!(
            header.content_type,
            vector["content_type"].as_str().unwrap()
        );
        assert_eq!(
            u64::from(header.chunk_size),
            vector["chunk_size"].as_u64().unwrap()
        );
    }
}

#[test]
fn encrypting_again_reproduces_every_vector_byte_for_byte() {
    for vector in vectors() {
        let key = Aes256Key::from_slice(&bytes(&vector, "key_hex")).unwrap();
        let plaintext = bytes(&vector, "plaintext_hex");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &plaintext);
        let header = v2::Header {
            chunk_size: vector["chunk_size"].as_u64().unwrap() as u32,
            plaintext_len: plaintext.len() as u64,
            plaintext_sha256: digest.as_ref().try_into().unwrap(),
            nonce_prefix: bytes(&vector, "nonce_prefix_hex").try_into().unwrap(),
            key_id: vector["key_id"].as_str().unwrap().into(),
            content_type: vector["content_type"].as_str().unwrap().into(),
        };
        let mut out = Vec::new();
        v2::encrypt(&key, header, &mut &plaintext[..], &mut out).unwrap();
        assert_eq!(
            hex::encode(out),
            vector["envelope_hex"].as_str().unwrap(),
            "{}",
            vector["name"]
        );
    }
}
