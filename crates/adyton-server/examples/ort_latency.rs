//! Times the onnxruntime engine in-process on one model, as `tests/models/ort_timing.py` times
//! onnxruntime from Python, so that the two can be compared: the same inputs, one session,
//! onnxruntime's default intra-op threads (or `--threads N`), spinning off.
//!
//! ```text
//! tests/models/ort_timing.py MODEL.onnx --dump-inputs > inputs.json
//! cargo run --release -p adyton-server --example ort_latency -- MODEL.onnx inputs.json \
//!     [ITERATIONS] [--threads N] [--sessions N] [--clients N]
//! ```
//!
//! Prints one JSON object: {"engine", "threads", "sessions", "load_ms", "model_rss_mib" (the
//! resident memory the load added), "rss_after_runs_mib", "clients", "iterations",
//! "requests_per_second", "p50_ms", "p99_ms"}. The
//! library is `find_library()`'s (ADYTON_ONNXRUNTIME_LIBRARY, else the workspace's .venv).

use std::process::ExitCode;
use std::time::Instant;

use adyton_server::runtime::onnxruntime::{find_library, OnnxRuntimeEngine};
use adyton_server::runtime::{check_inputs, DataType, Engine, LoadOptions, Tensor};
use base64::Engine as _;
use zeroize::Zeroizing;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ort_latency: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let threads = flag(&mut args, "--threads")?.filter(|&t| t > 0);
    let sessions = flag(&mut args, "--sessions")?.unwrap_or(1);
    let clients = flag(&mut args, "--clients")?.unwrap_or(1).max(1);
    let [model_path, inputs_path, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: ort_latency MODEL.onnx INPUTS.json [ITERATIONS] [--threads N] [--sessions N] \
             [--clients N]"
                .into(),
        );
    };
    let iterations: usize = match rest.first() {
        Some(n) => n.parse().map_err(|_| format!("not a count: {n}"))?,
        None => 300,
    };

    let library = find_library().ok_or("no onnxruntime library: run scripts/setup")?;
    let engine = OnnxRuntimeEngine::new(&library)
        .map_err(|e| e.to_string())?
        .with_sessions(sessions);
    let bytes = Zeroizing::new(std::fs::read(model_path).map_err(|e| e.to_string())?);
    let options = LoadOptions {
        threads,
        ..LoadOptions::default()
    };
    let rss_before = rss_mib();
    let started = Instant::now();
    let model = engine
        .load_with(&bytes, &options)
        .map_err(|e| e.to_string())?;
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let rss_loaded = rss_mib();

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(inputs_path).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let named = json["inputs"]
        .as_array()
        .ok_or("no inputs in the JSON")?
        .iter()
        .map(|input| {
            let name = input["name"].as_str().ok_or("an input without a name")?;
            let datatype = input["datatype"]
                .as_str()
                .and_then(DataType::parse)
                .ok_or("an input without a data type")?;
            let shape = input["shape"]
                .as_array()
                .ok_or("an input without a shape")?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
                .ok_or("a bad dimension")?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(
                    input["data_base64"]
                        .as_str()
                        .ok_or("an input without data")?,
                )
                .map_err(|e| e.to_string())?;
            let tensor = Tensor::from_le_bytes(datatype, shape, Zeroizing::new(data))
                .map_err(|e| e.to_string())?;
            Ok((name.to_owned(), tensor))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let inputs = check_inputs(model.signature(), named).map_err(|e| e.to_string())?;

    for _ in 0..10 {
        model.run(inputs.clone()).map_err(|e| e.to_string())?;
    }
    // `clients` threads share the iterations, each running one request after another.
    let started_all = Instant::now();
    let per_client = iterations.div_ceil(clients);
    let mut samples = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let mut samples = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        // The clone is the request's tensors, which the server owns too; it is
                        // outside the timing.
                        let batch = inputs.clone();
                        let started = Instant::now();
                        let outputs = model.run(batch).map_err(|e| e.to_string())?;
                        samples.push(started.elapsed().as_secs_f64() * 1000.0);
                        drop(outputs);
                    }
                    Ok::<Vec<f64>, String>(samples)
                })
            })
            .collect();
        workers.into_iter().try_fold(Vec::new(), |mut all, worker| {
            all.extend(worker.join().map_err(|_| "a client panicked")??);
            Ok::<Vec<f64>, String>(all)
        })
    })?;
    // Counts far below 2^52 convert exactly.
    #[allow(clippy::cast_precision_loss)]
    let requests_per_second = samples.len() as f64 / started_all.elapsed().as_secs_f64();
    samples.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        // Nearest rank, as ort_timing.py computes it.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((p / 100.0 * samples.len() as f64).ceil() as usize).max(1);
        samples[rank - 1]
    };
    println!(
        "{}",
        serde_json::json!({
            "engine": "onnxruntime (adyton, ort)",
            "threads": threads.unwrap_or(0),
            "sessions": sessions,
            "load_ms": load_ms,
            "model_rss_mib": rss_loaded - rss_before,
            "rss_after_runs_mib": rss_mib(),
            "clients": clients,
            "iterations": samples.len(),
            "requests_per_second": requests_per_second,
            "p50_ms": percentile(50.0),
            "p99_ms": percentile(99.0),
        })
    );
    Ok(())
}

/// `NAME N` taken out of `args`, if there.
fn flag(args: &mut Vec<String>, name: &str) -> Result<Option<usize>, String> {
    let Some(at) = args.iter().position(|a| a == name) else {
        return Ok(None);
    };
    let value = args
        .get(at + 1)
        .and_then(|v| v.parse::<usize>().ok())
        .ok_or_else(|| format!("{name} takes a number"))?;
    args.drain(at..at + 2);
    Ok(Some(value))
}

/// This process's resident memory, in MiB (Linux), or 0.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
