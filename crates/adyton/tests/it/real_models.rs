//! Real models from registry packages, served by `adyton server serve` and compared with
//! onnxruntime (`tests/models/compare.py`, `docs/server.md`, "Real models").
//!
//! Every model `scripts/fetch_models` knows runs here, on both engines, with no setting of its
//! own: the server takes each as its package ships it. Two of them leave dimensions open that
//! tract can resolve only with concrete shapes (PaddleOCR's recognizer, `x` [N, 3, ?, W], and its
//! detector, `x` [N, 3, H, W], which runs at two page sizes on one server); the server compiles a
//! plan per shape the requests bring. `compare.py` prints the engine and the plan each model ran
//! with, and the tests check both.
//!
//! Why all of them, on both engines, in the debug build that `cargo test` makes: measured on the
//! 2-core machine, the thirteen tests here take 52 s of wall time with two test threads, the
//! models already fetched. The onnxruntime engine runs the library from the `onnxruntime` wheel,
//! an optimised build whatever this crate's profile, so its six take 2 to 4 s each. tract,
//! compiled without optimisation here (dependencies keep `opt-level` 0 in the dev profile), is
//! slower, yet its longest, the detector at two page sizes, takes 17 s. A fresh clone first
//! downloads each package once (about 210 MB in all, the largest the int8 model's 68 MB wheel)
//! and keeps the models in `target/models/`. Leaving a model or an engine out would leave out
//! exactly what this suite is for: a model that loads on one engine and not the other, or only
//! with a setting. The release build's figures (`docs/server.md`) come from the same script:
//!
//! ```sh
//! cargo build --release -p adyton
//! .venv/bin/python tests/models/compare.py --engine tract          # all six, fetched if missing
//! .venv/bin/python tests/models/compare.py --engine onnxruntime
//! ```
//!
//! `quantization_errors_beyond_the_noise_floor_fail` proves that the int8 model's tolerance,
//! which `compare.py` derives from onnxruntime's own noise floor, still catches a wrong
//! quantization: the same graph with every zero point off by one fails it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::support::ServerProcess;

/// The engines of `adyton server serve --engine`.
#[derive(Clone, Copy, Debug)]
enum Engine {
    Tract,
    OnnxRuntime,
}

impl Engine {
    fn as_str(self) -> &'static str {
        match self {
            Engine::Tract => "tract",
            Engine::OnnxRuntime => "onnxruntime",
        }
    }
}

/// The plans the tract engine reports (`runtime::Plan::as_str`).
const TRACT_PLANS: [&str; 4] = [
    "optimized",
    "optimized-per-shape",
    "decluttered",
    "value-info-ignored",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn interpreter() -> String {
    crate::support::python_interpreter()
}

/// Fetches `model` (once: tests run in parallel, and two models share one package) and returns
/// its path.
fn fetch(model: &str) -> PathBuf {
    static FETCHING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = FETCHING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
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
    PathBuf::from(path.trim())
}

/// Runs `compare.py` on `model` with this build's binary and `engine`; returns its output, having
/// checked that the model passed, that every row ran on `engine`, and that each row has every
/// fragment of `expected` (output shapes, most often).
fn compare(model: &str, engine: Engine, expected: &[&str]) -> String {
    fetch(model);
    let out = Command::new(interpreter())
        .arg(workspace().join("tests/models/compare.py"))
        .args(["--adyton", env!("CARGO_BIN_EXE_adyton")])
        .args(["--engine", engine.as_str(), model])
        .output()
        .expect("the Python interpreter runs");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "compare.py failed (it needs onnx, onnxruntime and tritonclient: \
         pip install -r tests/requirements.txt):\n{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains(&format!("{model}: pass")), "{printed}");
    assert!(printed.contains("1 passed, 0 failed"), "{printed}");
    let rows: Vec<&str> = printed
        .lines()
        .filter(|l| l.starts_with(&format!("| {model} |")))
        .collect();
    assert!(!rows.is_empty(), "no table row:\n{printed}");
    for row in &rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | model | inputs | engine | plan | outputs | error | tolerance | result |
        assert_eq!(cells[3], engine.as_str(), "{row}");
        match engine {
            Engine::Tract => assert!(TRACT_PLANS.contains(&cells[4]), "{row}"),
            Engine::OnnxRuntime => assert_eq!(cells[4], "onnxruntime", "{row}"),
        }
        assert_eq!(cells[8], "pass", "{row}");
    }
    for fragment in expected {
        assert!(printed.contains(fragment), "no '{fragment}' in:\n{printed}");
    }
    printed
}

/// One test per engine for each model, named `real_models::<model>::on_<engine>`.
macro_rules! real_model {
    ($module:ident, $file:literal, [$($expected:literal),* $(,)?]) => {
        mod $module {
            use super::{compare, Engine};

            #[test]
            fn on_tract() {
                compare($file, Engine::Tract, &[$($expected),*]);
            }

            #[test]
            fn on_onnxruntime() {
                compare($file, Engine::OnnxRuntime, &[$($expected),*]);
            }
        }
    };
}

// Text embedding, BERT with 3 layers; integer outputs (token ids passed through) compared exactly.
real_model!(
    minilm,
    "paraphrase-MiniLM-L3-v2.onnx",
    ["461 [1, 384] float32", "output [1, 128] int64"]
);

// ResNet-50 image classifier, NHWC; tract's optimiser has failed on it before.
real_model!(open_nsfw, "open_nsfw.onnx", ["4195 [1, 2] float32"]);

// Face embedding, the smallest.
real_model!(face, "fr_feature.onnx", ["output [1, 512] float32"]);

// Text-line recognizer: `x` [N, 3, ?, W], its height unknown to the graph; 40 time steps come
// out of a line 320 wide.
real_model!(
    ocr_recognizer,
    "ch_PP-OCRv4_rec_infer.onnx",
    ["softmax_11.tmp_0 [1, 40, 6625] float32"]
);

// Text detector: `x` [N, 3, H, W] with H and W free, at two page sizes on one server; the
// probability map has the page's size.
real_model!(
    ocr_detector,
    "ch_PP-OCRv4_det_infer.onnx",
    [
        "x [1, 3, 640, 640]",
        "sigmoid_0.tmp_0 [1, 1, 640, 640] float32",
        "x [1, 3, 480, 800]",
        "sigmoid_0.tmp_0 [1, 1, 480, 800] float32",
    ]
);

// T5 encoder dynamically quantized to int8 (DynamicQuantizeLinear, MatMulInteger).
real_model!(
    t5_int8,
    "flan-t5-small-encoder-int8.onnx",
    ["last_hidden_state [1, 128, 512] float32"]
);

/// Writes `model` with every DynamicQuantizeLinear's zero point, as MatMulInteger reads it, one
/// higher than the one it quantized with: a wrong quantization that still runs.
fn with_zero_points_off_by_one(model: &Path, out: &Path) {
    const SCRIPT: &str = r#"
import sys
import onnx
from onnx import TensorProto, helper, numpy_helper
import numpy as np

model = onnx.load(sys.argv[1])
graph = model.graph
graph.initializer.append(numpy_helper.from_array(np.array(1, dtype=np.int32), "off_by_one"))
nodes = []
for node in graph.node:
    nodes.append(node)
    if node.op_type == "DynamicQuantizeLinear":
        zero_point = node.output[2]
        node.output[2] = zero_point + "/exact"
        nodes.append(helper.make_node("Cast", [zero_point + "/exact"], [zero_point + "/i32"], to=TensorProto.INT32))
        nodes.append(helper.make_node("Add", [zero_point + "/i32", "off_by_one"], [zero_point + "/wrong"]))
        nodes.append(helper.make_node("Cast", [zero_point + "/wrong"], [zero_point], to=TensorProto.UINT8))
if len(nodes) == len(graph.node):
    sys.exit("no DynamicQuantizeLinear in the model")
del graph.node[:]
graph.node.extend(nodes)
onnx.save(model, sys.argv[2])
"#;
    let done = Command::new(interpreter())
        .args(["-c", SCRIPT])
        .arg(model)
        .arg(out)
        .output()
        .expect("the Python interpreter runs");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

#[test]
fn quantization_errors_beyond_the_noise_floor_fail() {
    let model = fetch("flan-t5-small-encoder-int8.onnx");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let altered = d.join("altered.onnx");
    with_zero_points_off_by_one(&model, &altered);

    // The altered graph, served on the onnxruntime engine (quick in a debug build), against the
    // pristine one in onnxruntime.
    let mut command = Command::new(env!("CARGO_BIN_EXE_adyton"));
    command
        .current_dir(d)
        .args(["server", "serve", "--listen", "127.0.0.1:0", "--tee", "sim"])
        .args(["--sim-key", "sim.key", "--certificate-out", "server.pem"])
        .args(["--engine", "onnxruntime", "--model"])
        .arg(format!("t5={}", altered.display()));
    if std::env::var_os("ADYTON_ONNXRUNTIME_LIBRARY").is_none() {
        command.env("ADYTON_ONNXRUNTIME_LIBRARY", onnxruntime_library());
    }
    let server = ServerProcess::start(command);
    let out = Command::new(interpreter())
        .arg(workspace().join("tests/models/compare.py"))
        .args(["--server", server.url.trim_start_matches("https://")])
        .arg("--cert")
        .arg(d.join("server.pem"))
        .args(["--served-name", "t5"])
        .arg(&model)
        .output()
        .expect("the Python interpreter runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{printed}");
    assert!(
        printed.contains("flan-t5-small-encoder-int8.onnx: FAIL")
            && printed.contains("output last_hidden_state: relative error"),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The onnxruntime library of the project's Python environment (`scripts/onnxruntime_library`).
fn onnxruntime_library() -> String {
    let out = Command::new(workspace().join("scripts/onnxruntime_library"))
        .env("PYTHON", interpreter())
        .output()
        .expect("scripts/onnxruntime_library runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
