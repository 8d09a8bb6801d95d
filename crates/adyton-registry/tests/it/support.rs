//! A registry served on 127.0.0.1 for the duration of a test, and test data.

use std::path::Path;
use std::sync::Arc;

use adyton_registry::blob::fs::FsStore;
use adyton_registry::blob::BlobStore;
use adyton_registry::http::{router, RegistryState, WriteToken};
use adyton_registry::Registry;

pub const TOKEN: &str = "registry-write-token";

/// A registry over a filesystem store, served until dropped.
pub struct TestServer {
    pub url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl TestServer {
    pub fn start(data_dir: &Path, max_blob_bytes: u64) -> Self {
        Self::start_with_store(Arc::new(FsStore::open(data_dir).unwrap()), max_blob_bytes)
    }

    /// A registry over `store`.
    pub fn start_with_store(store: Arc<dyn BlobStore>, max_blob_bytes: u64) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let registry = Registry::new(store, &url, max_blob_bytes);
        let state = Arc::new(RegistryState {
            registry,
            token: WriteToken::new(TOKEN),
        });
        runtime.spawn(async move {
            axum::serve(listener, router(state)).await.unwrap();
        });
        Self {
            url,
            runtime: Some(runtime),
        }
    }
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Names in `dir` and below that start with `.tmp-`: temporary files.
pub fn temp_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            found.push(name);
        } else if entry.path().is_dir() {
            found.extend(temp_files(&entry.path()));
        }
    }
    found
}
