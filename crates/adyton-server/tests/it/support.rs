//! What several test modules share: the test models, written once per test run by
//! `scripts/make_test_models.py`, and in-process calls of the router with their answers.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The interpreter from `PYTHON` (set by `scripts/test`), else the workspace's virtual
/// environment. The test suite's set-up installs the `onnx` package; a missing interpreter or
/// package is a failure, never a skip.
fn python() -> PathBuf {
    std::env::var_os("PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"))
}

/// The bytes of `<name>.onnx`. The models are generated on first use into a directory of this
/// process's own (so that concurrent test runs do not share files) and held in memory.
pub fn model(name: &str) -> Vec<u8> {
    static MODELS: OnceLock<HashMap<String, Vec<u8>>> = OnceLock::new();
    let models = MODELS.get_or_init(|| {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let interpreter = python();
        let out = Command::new(&interpreter)
            .arg(workspace_root().join("scripts/make_test_models.py"))
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", interpreter.display()));
        assert!(
            out.status.success(),
            "make_test_models.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
                (stem, fs::read(&path).unwrap())
            })
            .collect()
    });
    models
        .get(name)
        .unwrap_or_else(|| panic!("no test model {name}"))
        .clone()
}

/// A response of the router called in process, its body read.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `error` field of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap().to_owned()
    }
}

/// Calls `app` in process (no socket) and reads the whole answer.
pub async fn call(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn get(app: &Router, path: &str) -> Answer {
    call(app, Request::get(path).body(Body::empty()).unwrap()).await
}
