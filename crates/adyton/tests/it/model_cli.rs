//! How `adyton model` behaves on disk: atomic outputs, key files, clear errors.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::support::{adyton, adyton_err, adyton_ok, leftovers, random_bytes};

#[test]
fn round_trips_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain = random_bytes(1_000_003);
    fs::write(d.join("m.onnx"), &plain).unwrap();
    adyton_ok(
        &[
            "model",
            "encrypt",
            "m.onnx",
            "-o",
            "m.v2",
            "--new-key",
            "m.key",
        ],
        d,
    );
    adyton_ok(
        &[
            "model", "encrypt", "m.onnx", "-o", "m.v1", "--key", "m.key", "--format", "v1",
        ],
        d,
    );
    for name in ["m.v1", "m.v2"] {
        let out = format!("{name}.out");
        adyton_ok(&["model", "decrypt", name, "-o", &out, "--key", "m.key"], d);
        assert_eq!(fs::read(d.join(&out)).unwrap(), plain);
    }
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
}

#[test]
fn new_key_file_is_private_and_32_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("m.onnx"), b"tiny model").unwrap();
    adyton_ok(
        &[
            "model",
            "encrypt",
            "m.onnx",
            "-o",
            "m.enc",
            "--new-key",
            "m.key",
        ],
        d,
    );
    let meta = fs::metadata(d.join("m.key")).unwrap();
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn existing_outputs_are_never_overwritten_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("m.onnx"), b"model bytes").unwrap();
    fs::write(d.join("m.enc"), b"precious").unwrap();
    fs::write(d.join("m.key"), b"also precious").unwrap();

    let stderr = adyton_err(
        &[
            "model",
            "encrypt",
            "m.onnx",
            "-o",
            "m.enc",
            "--new-key",
            "n.key",
        ],
        d,
    );
    assert!(
        stderr.contains("m.enc already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(
        !d.join("n.key").exists(),
        "a refused run must not leave a key behind"
    );

    let stderr = adyton_err(
        &[
            "model",
            "encrypt",
            "m.onnx",
            "-o",
            "x.enc",
            "--new-key",
            "m.key",
        ],
        d,
    );
    assert!(stderr.contains("m.key already exists"), "{stderr}");
    assert_eq!(fs::read(d.join("m.enc")).unwrap(), b"precious");
    assert_eq!(fs::read(d.join("m.key")).unwrap(), b"also precious");
    assert!(!d.join("x.enc").exists());

    adyton_ok(
        &[
            "model",
            "encrypt",
            "m.onnx",
            "-o",
            "m.enc",
            "--new-key",
            "m.key",
            "--force",
        ],
        d,
    );
    adyton_ok(
        &[
            "model", "decrypt", "m.enc", "-o", "m.onnx", "--key", "m.key", "--force",
        ],
        d,
    );
    assert_eq!(fs::read(d.join("m.onnx")).unwrap(), b"model bytes");
}

#[test]
fn failed_decrypt_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain = random_bytes(300_000);
    fs::write(d.join("m.onnx"), &plain).unwrap();
    adyton_ok(
        &[
            "model",
            "encrypt",
            "m.onnx",
            "-o",
            "m.enc",
            "--new-key",
            "m.key",
            "--chunk-size",
            "4K",
        ],
        d,
    );
    let mut envelope = fs::read(d.join("m.enc")).unwrap();
    let last = envelope.len() - 3;
    envelope[last] ^= 1;
    fs::write(d.join("bad.enc"), &envelope).unwrap();

    let stderr = adyton_err(
        &["model", "decrypt", "bad.enc", "-o", "out", "--key", "m.key"],
        d,
    );
    assert!(
        stderr.contains("bad.enc") && stderr.contains("authentication failed"),
        "{stderr}"
    );
    assert!(!d.join("out").exists());
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
}

#[test]
fn errors_name_the_file_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("m.onnx"), b"model").unwrap();
    fs::write(d.join("short.key"), [1u8; 16]).unwrap();
    fs::write(d.join("good.key"), [1u8; 32]).unwrap();
    fs::write(d.join("junk.enc"), b"this is not an envelope at all").unwrap();

    let stderr = adyton_err(
        &[
            "model",
            "encrypt",
            "m.onnx",
            "-o",
            "o",
            "--key",
            "short.key",
        ],
        d,
    );
    assert!(
        stderr.contains("short.key") && stderr.contains("holds 16 bytes"),
        "{stderr}"
    );

    let stderr = adyton_err(
        &[
            "model",
            "encrypt",
            "missing.onnx",
            "-o",
            "o",
            "--key",
            "good.key",
        ],
        d,
    );
    assert!(stderr.contains("missing.onnx"), "{stderr}");

    let stderr = adyton_err(
        &[
            "model", "decrypt", "junk.enc", "-o", "o", "--key", "good.key",
        ],
        d,
    );
    assert!(
        stderr.contains("junk.enc") && stderr.contains("unknown format"),
        "{stderr}"
    );

    let stderr = adyton_err(&["model", "inspect", "junk.enc"], d);
    assert!(stderr.contains("junk.enc"), "{stderr}");

    let stderr = adyton_err(
        &[
            "model",
            "encrypt",
            "m.onnx",
            "-o",
            "o",
            "--key",
            "good.key",
            "--chunk-size",
            "8",
        ],
        d,
    );
    assert!(stderr.contains("bad chunk size 8"), "{stderr}");

    // Exactly one of --key and --new-key.
    let out = adyton(&["model", "encrypt", "m.onnx", "-o", "o"], d);
    assert_eq!(out.status.code(), Some(2));
    let out = adyton(
        &[
            "model",
            "encrypt",
            "m.onnx",
            "-o",
            "o",
            "--key",
            "a",
            "--new-key",
            "b",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
}

#[test]
fn v1_errors_are_distinct_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("m.onnx"), random_bytes(1000)).unwrap();
    adyton_ok(
        &[
            "model",
            "encrypt",
            "m.onnx",
            "-o",
            "m.enc",
            "--new-key",
            "k",
            "--format",
            "v1",
        ],
        d,
    );
    let good = fs::read(d.join("m.enc")).unwrap();

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 1].to_vec(), "data length mismatch"),
        ([good.clone(), vec![0]].concat(), "trailing bytes"),
        (
            [&[12, 0, 0, 0, 8, 0, 0, 0][..], &good[8..]].concat(),
            "bad tag length",
        ),
        (good[..18].to_vec(), "truncated"),
    ];
    for (bytes, expected) in cases {
        fs::write(d.join("bad.enc"), &bytes).unwrap();
        let stderr = adyton_err(&["model", "decrypt", "bad.enc", "-o", "o", "--key", "k"], d);
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in {stderr}"
        );
    }
    fs::write(d.join("wrong.key"), [9u8; 32]).unwrap();
    let stderr = adyton_err(
        &["model", "decrypt", "m.enc", "-o", "o", "--key", "wrong.key"],
        d,
    );
    assert!(stderr.contains("authentication failed"), "{stderr}");
}

#[test]
fn inspect_reads_the_header_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("m.onnx"), random_bytes(70_000)).unwrap();
    adyton_ok(
        &[
            "model",
            "encrypt",
            "m.onnx",
            "-o",
            "m.enc",
            "--new-key",
            "k",
            "--key-id",
            "kbs-42",
            "--chunk-size",
            "16K",
        ],
        d,
    );
    let out = adyton_ok(&["model", "inspect", "m.enc", "--json"], d);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["format"], "v2");
    assert_eq!(report["key_id"], "kbs-42");
    assert_eq!(report["content_type"], "application/x-onnx");
    assert_eq!(report["plaintext_len"], 70_000);
    assert_eq!(report["chunk_count"], 5);
    assert_eq!(report["valid_length"], true);

    let text = String::from_utf8(adyton_ok(&["model", "inspect", "m.enc"], d).stdout).unwrap();
    assert!(
        text.contains("kbs-42") && text.contains("5 of 16.0 KiB"),
        "{text}"
    );

    let envelope = fs::read(d.join("m.enc")).unwrap();
    fs::write(d.join("cut.enc"), &envelope[..envelope.len() - 10]).unwrap();
    let out = adyton(&["model", "inspect", "cut.enc", "--json"], d);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid_length"], false);
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
}

#[test]
fn key_never_appears_in_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("m.onnx"), b"model").unwrap();
    let out = adyton_ok(
        &[
            "model",
            "encrypt",
            "m.onnx",
            "-o",
            "m.enc",
            "--new-key",
            "k",
        ],
        d,
    );
    let key = hex::encode(fs::read(d.join("k")).unwrap());
    let inspect = adyton_ok(&["model", "inspect", "m.enc"], d);
    for stream in [&out.stdout, &out.stderr, &inspect.stdout, &inspect.stderr] {
        let text = String::from_utf8_lossy(stream);
        assert!(!text.contains(&key), "key leaked: {text}");
    }
}
