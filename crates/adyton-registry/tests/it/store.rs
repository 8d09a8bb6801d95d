//! One suite of blob store tests, written against `&dyn BlobStore`, run for the filesystem store
//! and for the S3 store.
//!
//! The S3 server comes from `ADYTON_TEST_S3_ENDPOINT` (`eval "$(./scripts/moto start)"` runs one);
//! each test uses a bucket of its own. Without the variable the S3 tests say "skipped" and pass,
//! unless `ADYTON_REQUIRE_S3=1` (as in `scripts/test`), when they fail.

use std::sync::atomic::{AtomicU32, Ordering};

use adyton_registry::blob::fs::FsStore;
use adyton_registry::blob::s3::{S3Config, S3Store};
use adyton_registry::blob::{BlobStore, ByteStream};
use adyton_registry::BlobError;
use bytes::Bytes;
use futures_util::StreamExt as _;

use crate::support::{random_bytes, temp_files};

const ENDPOINT_ENV: &str = "ADYTON_TEST_S3_ENDPOINT";
const REQUIRE_ENV: &str = "ADYTON_REQUIRE_S3";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `data` in chunks of `chunk` bytes, as a request body would come.
fn chunks(data: &[u8], chunk: usize) -> ByteStream {
    let parts: Vec<Result<Bytes, BlobError>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(parts).boxed()
}

/// `data`, then a failure: an upload interrupted halfway.
fn interrupted(data: &[u8]) -> ByteStream {
    let mut parts: Vec<Result<Bytes, BlobError>> = data
        .chunks(64 << 10)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    parts.push(Err(BlobError::Interrupted {
        reason: "the client went away".to_owned(),
    }));
    futures_util::stream::iter(parts).boxed()
}

async fn read_all(
    store: &dyn BlobStore,
    key: &str,
    range: Option<std::ops::Range<u64>>,
) -> (u64, Vec<u8>) {
    let read = store.get(key, range).await.unwrap();
    let mut out = Vec::new();
    let mut stream = read.stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    (read.total, out)
}

/// The suite. Each backend runs it on an empty store.
async fn suite(store: &dyn BlobStore) {
    // A multi-MiB object in small chunks (over S3's part size, so several parts).
    let data = random_bytes(10 << 20 | 12345, 1);
    let written = store
        .put("blobs/big", chunks(&data, 100_000), false)
        .await
        .unwrap();
    assert_eq!(written, data.len() as u64);
    assert_eq!(store.head("blobs/big").await.unwrap(), data.len() as u64);
    let (total, whole) = read_all(store, "blobs/big", None).await;
    assert_eq!(total, data.len() as u64);
    assert!(whole == data, "the object read back differs");
    let range = 8_000_000u64..9_500_001;
    let (total, part) = read_all(store, "blobs/big", Some(range.clone())).await;
    assert_eq!(total, data.len() as u64);
    assert!(part == data[range.start as usize..range.end as usize]);
    let (_, empty) = read_all(store, "blobs/big", Some(5..5)).await;
    assert!(empty.is_empty());

    // Immutable unless asked: no overwrite, and the old object stays whole.
    let err = store
        .put("blobs/big", chunks(b"other", 2), false)
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::AlreadyExists { .. }), "{err}");
    assert_eq!(store.head("blobs/big").await.unwrap(), data.len() as u64);
    store
        .put_bytes("info/m.json", Bytes::from_static(b"{\"v\":1}"), true)
        .await
        .unwrap();
    store
        .put_bytes("info/m.json", Bytes::from_static(b"{\"v\":2}"), true)
        .await
        .unwrap();
    assert_eq!(
        store.get_bytes("info/m.json", 100).await.unwrap(),
        b"{\"v\":2}"
    );
    assert!(matches!(
        store.get_bytes("info/m.json", 3).await,
        Err(BlobError::TooLarge { .. })
    ));

    // An interrupted write leaves nothing.
    let err = store
        .put("blobs/cut", interrupted(&data[..3 << 20]), false)
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::Interrupted { .. }), "{err}");
    assert!(matches!(
        store.head("blobs/cut").await,
        Err(BlobError::NotFound { .. })
    ));
    // And one over a limit (the registry's stream reports it) the same.
    let over: ByteStream = futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"abc")),
        Err(BlobError::TooLarge { limit: 2 }),
    ])
    .boxed();
    assert!(matches!(
        store.put("blobs/over", over, false).await,
        Err(BlobError::TooLarge { limit: 2 })
    ));

    // Listing: one directory, in key order, without temporary files.
    store
        .put_bytes("blobs/a-small", Bytes::from_static(b"xyz"), false)
        .await
        .unwrap();
    let listed = store.list("blobs").await.unwrap();
    let keys: Vec<(&str, u64)> = listed.iter().map(|e| (e.key.as_str(), e.size)).collect();
    assert_eq!(
        keys,
        [("blobs/a-small", 3), ("blobs/big", data.len() as u64)]
    );
    assert!(store.list("nothing-here").await.unwrap().is_empty());

    // Missing objects and bad keys.
    assert!(matches!(
        store.get("blobs/none", None).await,
        Err(BlobError::NotFound { .. })
    ));
    for bad in ["../x", "blobs/.tmp-1", "/abs", "a b"] {
        assert!(
            matches!(store.head(bad).await, Err(BlobError::InvalidKey { .. })),
            "{bad}"
        );
    }

    // Delete.
    assert!(store.delete("blobs/big").await.unwrap());
    assert!(matches!(
        store.head("blobs/big").await,
        Err(BlobError::NotFound { .. })
    ));
    let listed = store.list("blobs").await.unwrap();
    assert_eq!(listed.len(), 1);
}

#[test]
fn fs_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(&dir.path().join("store")).unwrap();
    runtime().block_on(suite(&store));
    assert!(
        temp_files(dir.path()).is_empty(),
        "{:?}",
        temp_files(dir.path())
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("store/blobs/a-small"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn fs_store_removes_the_temporary_file_of_a_cancelled_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(FsStore::open(dir.path()).unwrap());
    let rt = runtime();
    // A body that sends one chunk and then never ends; the write is cancelled midway.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BlobError>>(1);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed();
    let task = {
        let store = store.clone();
        rt.spawn(async move { store.put("blobs/slow", body, false).await })
    };
    rt.block_on(async {
        tx.send(Ok(Bytes::from(vec![7u8; 1 << 20]))).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(temp_files(dir.path()).len(), 1, "the write is under way");
        task.abort();
        let _ = task.await;
    });
    assert!(
        temp_files(dir.path()).is_empty(),
        "{:?}",
        temp_files(dir.path())
    );
    assert!(!dir.path().join("blobs/slow").exists());
    drop(tx);
}

#[test]
fn fs_store_removes_stale_temporary_files_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let outside = dir.path().join("outside");
    std::fs::write(&outside, b"not the store's").unwrap();
    {
        let store = FsStore::open(&root).unwrap();
        runtime().block_on(async {
            store
                .put_bytes("blobs/m1", Bytes::from_static(b"blob"), false)
                .await
                .unwrap();
            store
                .put_bytes("info/m1.json", Bytes::from_static(b"{}"), true)
                .await
                .unwrap();
        });
    }
    // What a crash in the middle of writes leaves, at every level keys make.
    for stale in [
        ".tmp-0123456789abcdef01234567",
        "blobs/.tmp-aaaaaaaaaaaaaaaaaaaaaaaa",
        "blobs/.tmp-bbbbbbbbbbbbbbbbbbbbbbbb",
        "info/.tmp-cccccccccccccccccccccccc",
        "blob-meta/.tmp-dddddddddddddddddddddddd",
    ] {
        let path = root.join(stale);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
    }
    // A link is neither followed nor removed.
    std::os::unix::fs::symlink(&outside, root.join("blobs/.tmp-link")).unwrap();
    assert_eq!(temp_files(&root).len(), 6);

    let store = FsStore::open(&root).unwrap();
    assert_eq!(temp_files(&root), vec![".tmp-link".to_owned()]);
    assert_eq!(std::fs::read(&outside).unwrap(), b"not the store's");
    runtime().block_on(async {
        assert_eq!(store.get_bytes("blobs/m1", 100).await.unwrap(), b"blob");
        assert_eq!(store.get_bytes("info/m1.json", 100).await.unwrap(), b"{}");
        assert_eq!(store.list("blobs").await.unwrap().len(), 1);
    });
}

#[test]
fn fs_store_refuses_a_second_store_on_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = FsStore::open(dir.path()).unwrap();
    // The second would remove the first's temporary files, under uploads in progress.
    match FsStore::open(dir.path()) {
        Err(BlobError::Config { reason }) => {
            assert!(reason.contains("another registry"), "{reason}")
        }
        other => panic!("a second store: unexpected {other:?}"),
    }
    drop(first);
    FsStore::open(dir.path()).unwrap();
}

/// The endpoint, or `None` (after saying so) when the S3 tests are to be skipped.
fn s3_endpoint() -> Option<String> {
    match std::env::var(ENDPOINT_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") => panic!(
            "{ENDPOINT_ENV} is not set, and {REQUIRE_ENV}=1 requires the S3 tests: start a \
             server with `eval \"$(./scripts/moto start)\"`"
        ),
        _ => {
            eprintln!("skipped: {ENDPOINT_ENV} is not set");
            None
        }
    }
}

/// A fresh bucket on the test server, and a store over it.
fn s3_store(endpoint: &str) -> S3Store {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let bucket = format!(
        "adyton-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    // moto accepts any credentials; the store insists on having some.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let answer = ureq::put(&format!("{endpoint}/{bucket}"))
        .send_empty()
        .unwrap();
    assert!(answer.status().is_success());
    S3Store::open(&S3Config {
        endpoint: Some(endpoint.to_owned()),
        bucket,
        region: Some("us-east-1".to_owned()),
        allow_http: true,
    })
    .unwrap()
}

#[test]
fn s3_store_passes_the_suite() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let store = s3_store(&endpoint);
    runtime().block_on(suite(&store));
}
