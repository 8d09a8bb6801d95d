//! The serving benchmark: what attested TLS and the Open Inference Protocol cost on top of the
//! engine, on real models (`docs/server.md`, "Benchmark").
//!
//! ```sh
//! cargo bench -p adyton-server --bench serving
//! ```
//!
//! For MiniLM-L3 (128 tokens) and the face embedding model, in one run:
//! - tract in-process: `LoadedModel::run` on the same loaded plan the server uses;
//! - Adyton: the server's router on a real loopback socket, TLS 1.3 with the attested certificate
//!   of a SIM attester, and a client that verified the attestation at its handshake and then
//!   sends binary-tensor infer requests over one keep-alive HTTP/1.1 connection;
//! - onnxruntime from Python with 2 intra-op threads (`tests/models/ort_timing.py`);
//! - Adyton's throughput with 1, 2 and 8 clients, each on its own keep-alive connection.
//!
//! tract and Adyton latencies are measured in turn, one run of each at a time, so that both see the
//! same background load.
//! The server runs as `adyton server serve` does: a multi-threaded tokio runtime with a worker per
//! core, and an inference pool of one worker per core.
//!
//! Environment: `ADYTON_BENCH_ITERATIONS` (latency samples per measure, default 300),
//! `ADYTON_BENCH_SECONDS` (per throughput point, default 5), `PYTHON` (default `.venv/bin/python`).
//! The models come from `scripts/fetch_models`, which the benchmark runs (it fetches only what is
//! missing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::{Collateral, Policy, TeeKind};
use adyton_client::attested_tls::{client_config, AttestedServerVerifier};
use adyton_server::http::{self, ServerState, Settings};
use adyton_server::repository::{Repository, Source};
use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::{DataType, Dim, Engine, LoadedModel, Tensor, TensorData};
use adyton_server::tls::AttestedIdentity;
use zeroize::Zeroizing;

/// Inferences at once in the server, and the runtime's worker threads: one per core of the
/// 2-core machine the results are recorded on.
const WORKERS: usize = 2;
const WARMUP: usize = 10;
const CONCURRENCY: [usize; 3] = [1, 2, 8];
/// The sequence length of the text model's inputs.
const TOKENS: usize = 128;

struct BenchModel {
    file: &'static str,
    name: &'static str,
    label: &'static str,
}

const MODELS: [BenchModel; 2] = [
    BenchModel {
        file: "paraphrase-MiniLM-L3-v2.onnx",
        name: "minilm",
        label: "MiniLM-L3 (128 tokens)",
    },
    BenchModel {
        file: "fr_feature.onnx",
        name: "face",
        label: "fr_feature (face embedding, 112x112)",
    },
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn python() -> PathBuf {
    std::env::var_os("PYTHON").map_or_else(|| workspace().join(".venv/bin/python"), PathBuf::from)
}

/// Runs `scripts/fetch_models` for the benchmark's models; returns their paths.
fn fetch_models() -> Vec<PathBuf> {
    let script = workspace().join("scripts/fetch_models");
    let out = Command::new(&script)
        .args(MODELS.iter().map(|m| m.file))
        .env("PYTHON", python())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/fetch_models failed; run `scripts/setup` then `scripts/fetch_models {}`:\n{}",
        MODELS.map(|m| m.file).join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    MODELS
        .iter()
        .map(|m| workspace().join("target/models").join(m.file))
        .collect()
}

/// Deterministic inputs for the model's declared inputs, as `tests/models/compare.py` makes them:
/// token ids of a BERT vocabulary with an all-ones attention mask, or floats uniform in [-1, 1)
/// for an image.
fn make_inputs(model: &dyn LoadedModel) -> Vec<(String, Tensor)> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    model
        .signature()
        .inputs
        .iter()
        .map(|spec| {
            let declared = spec.shape.as_ref().expect("a declared shape");
            let tensor = match spec.datatype {
                DataType::I64 => {
                    let shape = vec![1, TOKENS];
                    let values: Vec<i64> = (0..TOKENS)
                        .map(|i| match (spec.name.as_str(), i) {
                            ("attention_mask", _) => 1,
                            ("token_type_ids", _) => 0,
                            (_, 0) => 101,
                            (_, i) if i == TOKENS - 1 => 102,
                            _ => 1996 + (next() % (29612 - 1996)) as i64,
                        })
                        .collect();
                    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    Tensor::from_le_bytes(DataType::I64, shape, Zeroizing::new(bytes))
                }
                DataType::F32 => {
                    let shape: Vec<usize> = declared
                        .iter()
                        .map(|d| match d {
                            Dim::Fixed(n) => *n,
                            Dim::Dynamic => 1,
                        })
                        .collect();
                    let count: usize = shape.iter().product();
                    let bytes = (0..count)
                        .flat_map(|_| {
                            let unit = (next() >> 40) as f32 / (1u64 << 24) as f32;
                            (unit * 2.0 - 1.0).to_le_bytes()
                        })
                        .collect();
                    Tensor::from_le_bytes(DataType::F32, shape, Zeroizing::new(bytes))
                }
                other => panic!("input '{}': no generator for {other}", spec.name),
            };
            (spec.name.clone(), tensor.unwrap())
        })
        .collect()
}

/// The body of a binary-tensor infer request asking for every output in binary, and the length
/// of its JSON header.
fn infer_body(inputs: &[(String, Tensor)]) -> (Vec<u8>, usize) {
    let described: Vec<serde_json::Value> = inputs
        .iter()
        .map(|(name, tensor)| {
            serde_json::json!({
                "name": name,
                "shape": tensor.shape(),
                "datatype": tensor.datatype().as_str(),
                "parameters": {"binary_data_size": tensor.byte_len()},
            })
        })
        .collect();
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": described,
        "parameters": {"binary_data_output": true},
    }))
    .unwrap();
    let mut body = header.clone();
    for (_, tensor) in inputs {
        match tensor.data() {
            TensorData::Fixed(bytes) => body.extend_from_slice(bytes),
            TensorData::Bytes(_) => panic!("no BYTES inputs here"),
        }
    }
    (body, header.len())
}

/// The server: the router of `adyton server serve` behind attested TLS on 127.0.0.1, run on its
/// own tokio runtime.
struct Server {
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
}

fn start_server(identity: &AttestedIdentity, models: &[(&str, Arc<dyn LoadedModel>)]) -> Server {
    let repository = Arc::new(Repository::new(16));
    for (name, model) in models {
        repository
            .insert(name, None, Arc::clone(model), Source::File)
            .unwrap();
    }
    let settings = Settings {
        workers: WORKERS,
        queue: WORKERS * 16,
        ..Settings::default()
    };
    let state = Arc::new(ServerState::new(
        Arc::new(TractEngine::new()),
        repository,
        settings,
        None,
        None,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .unwrap();
    let config = identity.rustls_server_config();
    let addr = runtime.block_on(async {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener::new(tcp, addr, config);
        tokio::spawn(async move {
            axum::serve(listener, http::router(state)).await.unwrap();
        });
        addr
    });
    Server { addr, runtime }
}

/// A listener handing axum finished TLS connections, each handshake in its own task: a copy of
/// the binary's (`crates/adyton/src/net.rs`) without its shutdown and error reporting.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    addr: SocketAddr,
}

impl TlsListener {
    fn new(
        tcp: tokio::net::TcpListener,
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
    ) -> Self {
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((stream, peer)) = tcp.accept().await {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        Self { ready, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// One keep-alive HTTP/1.1 connection over TLS, attested at its handshake.
struct Connection {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buffer: Vec<u8>,
}

/// An answer: status, `Inference-Header-Content-Length` and the body.
struct Answer {
    status: u16,
    json_len: Option<usize>,
    body: Vec<u8>,
}

impl Connection {
    /// Connects and completes the handshake, which runs the attested verifier.
    fn open(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Connection {
        let name = rustls::pki_types::ServerName::try_from("adyton.invalid").unwrap();
        let client = rustls::ClientConnection::new(config, name).unwrap();
        let socket = TcpStream::connect(addr).unwrap();
        socket.set_nodelay(true).unwrap();
        let mut tls = rustls::StreamOwned::new(client, socket);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        Connection {
            tls,
            buffer: Vec::with_capacity(1 << 16),
        }
    }

    fn infer(&mut self, model: &str, body: &[u8], json_len: usize) -> Answer {
        let head = format!(
            "POST /v2/models/{model}/infer HTTP/1.1\r\nHost: adyton\r\n\
             Inference-Header-Content-Length: {json_len}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = Vec::with_capacity(head.len() + body.len());
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(body);
        self.tls.write_all(&request).unwrap();
        self.tls.flush().unwrap();
        self.read_answer()
    }

    /// Reads one full answer: the head, then a `Content-Length` or chunked body.
    fn read_answer(&mut self) -> Answer {
        let head_end = loop {
            if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                break at + 4;
            }
            self.fill();
        };
        let head = String::from_utf8(self.buffer[..head_end].to_vec()).unwrap();
        self.buffer.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .expect("an HTTP status line");
        let mut content_length = None;
        let mut chunked = false;
        let mut json_len = None;
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').expect("a header line");
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => content_length = Some(value.parse::<usize>().unwrap()),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "inference-header-content-length" => json_len = Some(value.parse().unwrap()),
                _ => {}
            }
        }
        let body = if chunked {
            self.read_chunked()
        } else {
            let length = content_length.expect("Content-Length or chunked");
            self.take(length)
        };
        Answer {
            status,
            json_len,
            body,
        }
    }

    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = find(&self.buffer, b"\r\n") {
                    break at;
                }
                self.fill();
            };
            let size_text = String::from_utf8(self.buffer[..line_end].to_vec()).unwrap();
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).unwrap();
            self.buffer.drain(..line_end + 2);
            if size == 0 {
                // No trailers are sent: the last chunk is followed by an empty line.
                self.take(2);
                return body;
            }
            body.extend_from_slice(&self.take(size));
            self.take(2);
        }
    }

    fn take(&mut self, length: usize) -> Vec<u8> {
        while self.buffer.len() < length {
            self.fill();
        }
        self.buffer.drain(..length).collect()
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 1 << 16];
        let n = self.tls.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed the connection");
        self.buffer.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The binary outputs of an answer, in order.
fn binary_outputs(answer: &Answer) -> Vec<(String, Vec<u8>)> {
    assert_eq!(
        answer.status,
        200,
        "infer failed: {}",
        String::from_utf8_lossy(&answer.body)
    );
    let json_len = answer.json_len.expect("Inference-Header-Content-Length");
    let header: serde_json::Value = serde_json::from_slice(&answer.body[..json_len]).unwrap();
    let mut offset = json_len;
    header["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|output| {
            let size = output["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
            let bytes = answer.body[offset..offset + size].to_vec();
            offset += size;
            (output["name"].as_str().unwrap().to_owned(), bytes)
        })
        .collect()
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1].as_secs_f64() * 1000.0
}

struct Latency {
    p50: f64,
    p99: f64,
}

fn latency(mut samples: Vec<Duration>) -> Latency {
    samples.sort();
    Latency {
        p50: percentile(&samples, 50.0),
        p99: percentile(&samples, 99.0),
    }
}

/// onnxruntime's p50 and p99 from `tests/models/ort_timing.py`, or why not.
fn onnxruntime(model: &Path, iterations: usize) -> Result<(Latency, String), String> {
    let script = workspace().join("tests/models/ort_timing.py");
    let out = Command::new(python())
        .arg(script)
        .arg(model)
        .args(["--iterations", &iterations.to_string(), "--threads", "2"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python().display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("ort_timing.py: {e}"))?;
    let number = |key: &str| {
        report[key]
            .as_f64()
            .ok_or(format!("ort_timing.py: no {key}"))
    };
    Ok((
        Latency {
            p50: number("p50_ms")?,
            p99: number("p99_ms")?,
        },
        report["onnxruntime"].as_str().unwrap_or("?").to_owned(),
    ))
}

/// Requests per second with `clients` connections sending back to back for `seconds`.
fn throughput(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    model: &str,
    body: &Arc<Vec<u8>>,
    json_len: usize,
    clients: usize,
    seconds: u64,
) -> f64 {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let mut connection = Connection::open(addr, Arc::clone(config));
            let barrier = Arc::clone(&barrier);
            let body = Arc::clone(body);
            let model = model.to_owned();
            std::thread::spawn(move || {
                barrier.wait();
                let deadline = Instant::now() + Duration::from_secs(seconds);
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let answer = connection.infer(&model, &body, json_len);
                    assert_eq!(answer.status, 200);
                    done += 1;
                }
                done
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let done: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    done as f64 / started.elapsed().as_secs_f64()
}

struct Row {
    label: &'static str,
    plan: &'static str,
    tract: Latency,
    adyton: Latency,
    onnxruntime: Result<(Latency, String), String>,
    rates: Vec<f64>,
}

fn main() {
    let iterations = env_number("ADYTON_BENCH_ITERATIONS", 300).max(1);
    let seconds = env_number("ADYTON_BENCH_SECONDS", 5) as u64;
    let paths = fetch_models();

    let engine = TractEngine::new();
    let loaded: Vec<Arc<dyn LoadedModel>> = paths
        .iter()
        .map(|path| engine.load(&std::fs::read(path).unwrap()).unwrap())
        .collect();

    let attester = SimAttester::from_seed([7; 32]).unwrap();
    let identity = AttestedIdentity::generate(&attester).unwrap();
    let named: Vec<(&str, Arc<dyn LoadedModel>)> = MODELS
        .iter()
        .zip(&loaded)
        .map(|(m, model)| (m.name, Arc::clone(model)))
        .collect();
    let server = start_server(&identity, &named);

    // SIM evidence proves nothing; a policy naming SIM accepts it, as a development client's would.
    let verifier = Arc::new(AttestedServerVerifier::new(
        Policy::from_toml("[sim]\n").unwrap(),
        Collateral::none(),
    ));
    let config = client_config(Arc::clone(&verifier)).unwrap();
    let mut connection = Connection::open(server.addr, Arc::clone(&config));
    let verified = verifier
        .verified()
        .expect("the server's attestation verified");
    assert_eq!(verified.claims.tee, TeeKind::Sim);
    assert_eq!(verified.certificate_sha256, identity.certificate_sha256());

    let mut rows = Vec::new();
    for ((bench, model), path) in MODELS.iter().zip(&loaded).zip(&paths) {
        let inputs = make_inputs(model.as_ref());
        let tensors: Vec<Tensor> = inputs.iter().map(|(_, t)| t.clone()).collect();
        let (body, json_len) = infer_body(&inputs);

        // The server's answer must be the in-process answer, byte for byte.
        let expected = model.run(tensors.clone()).unwrap();
        let answer = binary_outputs(&connection.infer(bench.name, &body, json_len));
        assert_eq!(answer.len(), expected.len());
        for ((name, bytes), tensor) in answer.iter().zip(&expected) {
            let TensorData::Fixed(expected) = tensor.data() else {
                panic!("output {name} is not fixed-size");
            };
            assert!(bytes == &**expected, "output {name} differs from tract's");
        }

        for _ in 0..WARMUP {
            model.run(tensors.clone()).unwrap();
            assert_eq!(connection.infer(bench.name, &body, json_len).status, 200);
        }
        // One tract run, then one request, in turn: both see the same background load.
        let (mut tract, mut adyton) = (Vec::new(), Vec::new());
        for _ in 0..iterations {
            let inputs = tensors.clone();
            let started = Instant::now();
            let outputs = model.run(inputs).unwrap();
            tract.push(started.elapsed());
            drop(outputs);

            let started = Instant::now();
            let answer = connection.infer(bench.name, &body, json_len);
            adyton.push(started.elapsed());
            assert_eq!(answer.status, 200);
        }
        let onnxruntime = onnxruntime(path, iterations);

        let body = Arc::new(body);
        let rates = CONCURRENCY
            .iter()
            .map(|&clients| {
                throughput(
                    server.addr,
                    &config,
                    bench.name,
                    &body,
                    json_len,
                    clients,
                    seconds,
                )
            })
            .collect();
        rows.push(Row {
            label: bench.label,
            plan: model.plan().as_str(),
            tract: latency(tract),
            adyton: latency(adyton),
            onnxruntime,
            rates,
        });
    }
    drop(connection);
    server.runtime.shutdown_background();

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Serving benchmark: {cores} cores, {} latency samples per column (p50 / p99 in ms), \
         throughput over {seconds} s per point; server: {WORKERS} inference workers.",
        iterations
    );
    println!();
    println!(
        "| model | tract plan | tract in-process | Adyton over attested TLS | Adyton p50 overhead \
         | onnxruntime (Python, 2 threads) | Adyton req/s, 1 client | 2 clients | 8 clients |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut worst_overhead = f64::MIN;
    for row in &rows {
        let overhead = (row.adyton.p50 / row.tract.p50 - 1.0) * 100.0;
        worst_overhead = worst_overhead.max(overhead);
        let ort = match &row.onnxruntime {
            Ok((l, version)) => format!("{:.2} / {:.2} ({version})", l.p50, l.p99),
            Err(reason) => format!("n/a: {}", reason.lines().last().unwrap_or("")),
        };
        println!(
            "| {} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:+.1}% | {} | {:.1} | {:.1} | {:.1} |",
            row.label,
            row.plan,
            row.tract.p50,
            row.tract.p99,
            row.adyton.p50,
            row.adyton.p99,
            overhead,
            ort,
            row.rates[0],
            row.rates[1],
            row.rates[2],
        );
    }
    println!();
    println!(
        "Target: Adyton p50 within 10% of in-process tract: {} (worst {worst_overhead:+.1}%).",
        if worst_overhead < 10.0 {
            "met"
        } else {
            "NOT met"
        }
    );
}
