//! Real models from registry packages, served by `adyton server serve` and compared with
//! onnxruntime (`tests/models/compare.py`, `docs/server.md`, "Real models").
//!
//! Two of the real models run here, to keep the suite fast: the smallest, `fr_feature.onnx`
//! (4.9 MB, npm `faceplugin-face-recognition-js@0.0.1`), and PaddleOCR's recognizer,
//! `ch_PP-OCRv4_rec_infer.onnx` (10.9 MB, PyPI `rapidocr-onnxruntime==1.4.4`), which loads only
//! with its input's shape given (`--input-shape`, passed by `compare.py`). `scripts/fetch_models`
//! fetches each from its registry once and keeps it in `target/models/`; `compare.py` runs the
//! others too.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The smallest of the models `scripts/fetch_models` knows.
const SMALLEST: &str = "fr_feature.onnx";

/// PaddleOCR v4's text-line recognizer, whose input height the graph leaves unknown.
const OCR: &str = "ch_PP-OCRv4_rec_infer.onnx";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn interpreter() -> String {
    crate::support::python_interpreter()
}

/// Fetches `model` and runs `compare.py` on it with this build's binary; returns its output.
fn compare(model: &str) -> String {
    let fetched = Command::new(workspace().join("scripts/fetch_models"))
        .arg(model)
        .env("PYTHON", interpreter())
        .output()
        .expect("scripts/fetch_models runs");
    assert!(
        fetched.status.success(),
        "scripts/fetch_models {model} failed (its registry must be reachable):\n{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let path = String::from_utf8(fetched.stdout).unwrap();
    assert!(path.trim().ends_with(model), "{path}");

    let out = Command::new(interpreter())
        .arg(workspace().join("tests/models/compare.py"))
        .args(["--adyton", env!("CARGO_BIN_EXE_adyton"), model])
        .output()
        .expect("the Python interpreter runs");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "compare.py failed (it needs onnxruntime and tritonclient: \
         pip install -r tests/requirements.txt):\n{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains(&format!("{model}: pass")), "{printed}");
    assert!(printed.contains("1 passed, 0 failed"), "{printed}");
    printed
}

#[test]
fn the_smallest_real_model_matches_onnxruntime_through_the_server() {
    compare(SMALLEST);
}

#[test]
fn the_ocr_model_served_with_its_input_shape_matches_onnxruntime() {
    let printed = compare(OCR);
    // The table shows the signature's output shape, fixed by the input's: 40 time steps.
    assert!(
        printed.contains("softmax_11.tmp_0 [1, 40, 6625] float32"),
        "{printed}"
    );
}
