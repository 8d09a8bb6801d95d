//! The test models, written once per test run by `scripts/make_test_models.py`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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
