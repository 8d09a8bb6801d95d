//! The Python SDK's test suite (`python/tests`), run against this build's `adyton` binary, so
//! that `cargo test` covers the SDK: attestation, upload, predict against onnxruntime, every
//! exception type, keyword-only arguments and `encrypt_model`. The SDK must be installed in the
//! interpreter `PYTHON` names (`scripts/setup` installs it into `.venv`).

use std::path::Path;
use std::process::Command;

#[test]
fn python_sdk_test_suite_passes() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let interpreter = crate::support::python_interpreter();
    let installed = Command::new(&interpreter)
        .args(["-c", "import adyton"])
        .output()
        .expect("the Python interpreter runs");
    assert!(
        installed.status.success(),
        "{interpreter} cannot import the SDK (run scripts/setup, which installs it into .venv, \
         and set PYTHON=.venv/bin/python): {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let out = Command::new(&interpreter)
        .args([
            "-m",
            "pytest",
            "python/tests",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .env("ADYTON_BIN", env!("CARGO_BIN_EXE_adyton"))
        .env("PYTHON", &interpreter)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&workspace)
        .output()
        .expect("pytest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the SDK's tests failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed"), "pytest ran no test:\n{stdout}");
}
