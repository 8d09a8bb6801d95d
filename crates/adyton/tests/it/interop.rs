//! Interoperability with the reference Python code, in both directions:
//! - the CNAP single-shot format (`tests/reference/cnap_reference.py`);
//! - envelope v2 against an independent implementation of `docs/envelope-v2.md`;
//! - RSA-OAEP-SHA256 key wrapping against Python `cryptography`.

use std::fs;

use adyton_envelope::wrap::{self, ModulusOrder, TeeKeyPair, TeePublicKey};
use adyton_envelope::Aes256Key;

use crate::support::{adyton_err, adyton_ok, python, python_ok, random_bytes};

#[test]
fn cnap_reference_encrypts_and_adyton_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain = random_bytes(3 << 20);
    fs::write(d.join("model.onnx"), &plain).unwrap();
    fs::write(d.join("model.key"), random_bytes(32)).unwrap();
    python_ok(
        "cnap_reference.py",
        &["encrypt", "--key", "model.key", "model.onnx", "model.enc"],
        d,
    );
    adyton_ok(
        &[
            "model",
            "decrypt",
            "model.enc",
            "-o",
            "model.out",
            "--key",
            "model.key",
        ],
        d,
    );
    assert_eq!(fs::read(d.join("model.out")).unwrap(), plain);
}

#[test]
fn adyton_encrypts_v1_and_cnap_reference_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain = random_bytes(3 << 20);
    fs::write(d.join("model.onnx"), &plain).unwrap();
    adyton_ok(
        &[
            "model",
            "encrypt",
            "model.onnx",
            "-o",
            "model.enc",
            "--format",
            "v1",
            "--new-key",
            "model.key",
        ],
        d,
    );
    python_ok(
        "cnap_reference.py",
        &["decrypt", "--key", "model.key", "model.enc", "model.out"],
        d,
    );
    assert_eq!(fs::read(d.join("model.out")).unwrap(), plain);

    // The reference reader refuses the same file under another key, so the check above means
    // something.
    fs::write(d.join("other.key"), random_bytes(32)).unwrap();
    let out = python(
        "cnap_reference.py",
        &["decrypt", "--key", "other.key", "model.enc", "x"],
        d,
    );
    assert!(!out.status.success());
}

#[test]
fn v2_interoperates_with_the_independent_implementation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain = random_bytes((2 << 20) + 12_345);
    fs::write(d.join("model.onnx"), &plain).unwrap();

    adyton_ok(
        &[
            "model",
            "encrypt",
            "model.onnx",
            "-o",
            "a.enc",
            "--new-key",
            "k",
            "--chunk-size",
            "64K",
            "--key-id",
            "kbs-7",
        ],
        d,
    );
    python_ok(
        "adyton_v2.py",
        &["decrypt", "--key", "k", "a.enc", "a.out"],
        d,
    );
    assert_eq!(fs::read(d.join("a.out")).unwrap(), plain);

    python_ok(
        "adyton_v2.py",
        &[
            "encrypt",
            "--key",
            "k",
            "--chunk-size",
            "100000",
            "--key-id",
            "clé",
            "model.onnx",
            "b.enc",
        ],
        d,
    );
    adyton_ok(
        &["model", "decrypt", "b.enc", "-o", "b.out", "--key", "k"],
        d,
    );
    assert_eq!(fs::read(d.join("b.out")).unwrap(), plain);

    // A tampered file is refused by both implementations.
    let mut tampered = fs::read(d.join("b.enc")).unwrap();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x10;
    fs::write(d.join("c.enc"), &tampered).unwrap();
    let stderr = adyton_err(
        &["model", "decrypt", "c.enc", "-o", "c.out", "--key", "k"],
        d,
    );
    assert!(
        stderr.contains("authentication failed in chunk"),
        "{stderr}"
    );
    assert!(!python(
        "adyton_v2.py",
        &["decrypt", "--key", "k", "c.enc", "c.out"],
        d
    )
    .status
    .success());
}

#[test]
fn rsa_oaep_wrapping_matches_python_cryptography() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = Aes256Key::generate().unwrap();
    fs::write(d.join("swk"), key.expose_secret()).unwrap();

    for bits in ["2048", "3072", "4096"] {
        // Python holds the private key: Adyton wraps to its DER and raw public forms.
        python_ok(
            "cnap_reference.py",
            &[
                "rsa-generate",
                "--bits",
                bits,
                "--private",
                "priv.pem",
                "--public",
                "pub.der",
            ],
            d,
        );
        python_ok(
            "cnap_reference.py",
            &[
                "rsa-public-raw",
                "--public",
                "pub.der",
                "--order",
                "le",
                "pub.le",
            ],
            d,
        );
        let der = fs::read(d.join("pub.der")).unwrap();
        let raw_le = fs::read(d.join("pub.le")).unwrap();
        let from_der = TeePublicKey::from_user_data(&der, ModulusOrder::BigEndian).unwrap();
        let from_raw = TeePublicKey::from_user_data(&raw_le, ModulusOrder::LittleEndian).unwrap();
        assert_eq!(from_der.spki_der(), from_raw.spki_der());
        assert_eq!(from_der.bits().to_string(), bits);
        for (name, public) in [("der", &from_der), ("raw", &from_raw)] {
            fs::write(d.join("wrapped"), public.wrap_key(&key).unwrap()).unwrap();
            python_ok(
                "cnap_reference.py",
                &[
                    "rsa-unwrap",
                    "--private",
                    "priv.pem",
                    "wrapped",
                    "unwrapped",
                ],
                d,
            );
            assert_eq!(
                fs::read(d.join("unwrapped")).unwrap(),
                key.expose_secret(),
                "{bits} {name}"
            );
        }
    }

    // Adyton holds the private key: Python wraps to it and Adyton unwraps.
    let pair = TeeKeyPair::generate(3072).unwrap();
    fs::write(d.join("tee.der"), pair.public_key().unwrap().spki_der()).unwrap();
    python_ok(
        "cnap_reference.py",
        &["rsa-wrap", "--public", "tee.der", "--key", "swk", "wrapped"],
        d,
    );
    let unwrapped = pair
        .unwrap_key(&fs::read(d.join("wrapped")).unwrap())
        .unwrap();
    assert_eq!(unwrapped.expose_secret(), key.expose_secret());

    // The model key sealed under the SWK is a CNAP v1 envelope the reference reader opens.
    let model_key = Aes256Key::generate().unwrap();
    fs::write(
        d.join("model-key.enc"),
        wrap::seal_model_key(&key, &model_key).unwrap(),
    )
    .unwrap();
    python_ok(
        "cnap_reference.py",
        &["decrypt", "--key", "swk", "model-key.enc", "model-key"],
        d,
    );
    assert_eq!(
        fs::read(d.join("model-key")).unwrap(),
        model_key.expose_secret()
    );
}
