//! The trusted computing base: `adyton-server`'s normal dependency tree, as Cargo resolves it for
//! this host from the committed `Cargo.lock`, holds no store, key broker or registry crate. What
//! a client's policy pins is this binary's measurement, so code that never runs in the TEE must
//! not be linked into it.

use std::collections::BTreeSet;
use std::process::Command;

/// Crates that must never be in the TEE binary: the stores (PostgreSQL, redb), the key broker
/// and the registry with their own dependencies, the operator's binary, cloud SDKs.
const FORBIDDEN: &[&str] = &[
    "sqlx",
    "sqlx-*",
    "redb",
    "tokio-postgres",
    "postgres-*",
    "argon2",
    "object_store",
    "aws-sdk-*",
    "adyton",
    "adyton-kbs",
    "adyton-registry",
];

fn forbidden(name: &str) -> bool {
    FORBIDDEN
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *pattern,
        })
}

/// The crates of `cargo tree` output (`--prefix none`: one `name vX.Y.Z [(source)] [(*)]` a
/// line), as `(name, version)`: two versions of one crate count twice, as they are linked twice.
fn crates(tree: &str) -> BTreeSet<(String, String)> {
    tree.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

fn violations(crates: &BTreeSet<(String, String)>) -> Vec<&str> {
    let mut names: Vec<&str> = crates
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| forbidden(name))
        .collect();
    names.dedup();
    names
}

#[test]
fn the_server_links_no_store_key_broker_or_registry_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "adyton-server",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo tree failed: {stderr}");
    let crates = crates(&String::from_utf8(out.stdout).unwrap());
    let has = |name: &str| crates.iter().any(|(n, _)| n == name);
    assert!(has("adyton-server") && has("tract-onnx"), "{crates:?}");
    assert_eq!(violations(&crates), Vec::<&str>::new(), "in the TCB");
    println!(
        "adyton-server's normal dependency tree: {} crates (itself included; two versions of \
         one crate count twice)",
        crates.len()
    );
}

#[test]
fn the_check_finds_what_it_forbids() {
    let tree =
        "adyton-server v0.1.0 (/src)\nsqlx-core v0.8.6\naws-sdk-s3 v1.0.0\nredb v2.6.0 (*)\n\
                adyton v0.1.0 (/src)\nadyton-client v0.1.0 (/src)\nsqlite v1\nredb v2.6.0\n\
                redb v1.5.0\n";
    let crates = crates(tree);
    assert_eq!(
        crates.len(),
        8,
        "a crate seen again is one crate; two versions are two"
    );
    assert_eq!(
        violations(&crates),
        ["adyton", "aws-sdk-s3", "redb", "sqlx-core"]
    );
}
