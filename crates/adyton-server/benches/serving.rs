//! The serving benchmark: every model of `scripts/fetch_models` on each engine in-process and
//! served by Adyton over attested TLS, side by side in one run (`docs/server.md`, "Benchmark").
//!
//! ```sh
//! cargo bench -p adyton-server --bench serving
//! ```
//!
//! For each model, with the inputs `tests/models/compare.py` builds (through
//! `tests/models/ort_timing.py --dump-inputs`), and for a 4 MiB identity model that isolates what
//! serving costs:
//! - onnxruntime in-process: the onnxruntime engine's `LoadedModel::run` (onnxruntime's defaults,
//!   intra-op spinning off), when its shared library is found (`ADYTON_ONNXRUNTIME_LIBRARY`, or the
//!   workspace's `.venv`);
//! - tract in-process: the tract engine's `LoadedModel::run` on the plan the server uses;
//! - Adyton served with each engine: the server's router on a real loopback socket, TLS 1.3 with the
//!   attested certificate of a SIM attester, and a client that verified the attestation at its
//!   handshake and sends binary-tensor infer requests over keep-alive HTTP/1.1 connections;
//! - Adyton served with dynamic batching (`max_batch_size` 8, `max_queue_delay_us` 2000,
//!   `preferred_batch_size` 4, so that each of the two workers runs a batch of 4 rows; tract then
//!   has plans of its own for batches of 4 and 8 rows), where the model has a batch dimension.
//!
//! A second table shows, for each model with a batch dimension (axis 0 dynamic) and each engine,
//! what batching can gain at most next to what it gains served, at 8 clients in rows per second:
//! in-process, 8 threads calling with one row each, one thread calling with 8 rows, and two
//! threads calling with 4 rows each (the ceiling is the better of the last two over the first);
//! served, without batching, with batches of up to 8 rows and no preferred size, and with batches
//! cut to 4.
//!
//! At 1 client, the columns are measured in turn, one call of each at a time, in an order that
//! changes every round through all orders, so that all see the same background load: p50 and p99.
//! At 8 clients, each column runs alone for a fixed time, 8 threads (in-process) or 8 connections
//! (served) calling back to back: requests per second, after a second untimed (plans for the
//! batch sizes a column sees are compiled then). The batching table's points are measured after
//! the main table's, in turn: a second untimed each, then every point for `ADYTON_BENCH_SECONDS`
//! in each of `ADYTON_BENCH_BATCHING_ROUNDS` rounds, medians. Served outputs are checked against
//! the same engine's in-process outputs before anything is timed.
//!
//! The server runs as `adyton server serve` does: a multi-threaded tokio runtime with a worker per
//! core, and an inference pool of one worker per core.
//!
//! Environment: `ADYTON_BENCH_ITERATIONS` (most latency samples per column, default 200),
//! `ADYTON_BENCH_LATENCY_SECONDS` (a model's latency phase stops after this long, with at least
//! 20 samples; default 40), `ADYTON_BENCH_SECONDS` (per throughput point, default 3),
//! `ADYTON_BENCH_BATCHING_ROUNDS` (default 3), `ADYTON_BENCH_MODELS` (comma-separated file
//! names or `identity`, default all), `PYTHON` (default `.venv/bin/python`). The models come
//! from `scripts/fetch_models`, which the benchmark runs (it fetches only what is missing).
//! Progress goes to stderr, the tables to stdout.

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
use adyton_server::batching::{check_batchable, BatchOptions, PreferredBatchSizes};
use adyton_server::http::{self, ServerState, Settings};
use adyton_server::repository::{Repository, Source};
use adyton_server::runtime::onnxruntime::{find_library, OnnxRuntimeEngine};
use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::{DataType, Engine, LoadOptions, LoadedModel, Tensor, TensorData};
use adyton_server::tls::AttestedIdentity;
use base64::Engine as _;
use zeroize::Zeroizing;

/// Inferences at once in the server, and the runtime's worker threads: one per core of the
/// 2-core machine the results are recorded on.
const WORKERS: usize = 2;
/// Clients of the throughput columns.
const CLIENTS: usize = 8;
const WARMUP: usize = 5;
/// The fewest latency samples per column, whatever the time cap.
const MIN_SAMPLES: usize = 20;
/// Elements of the identity model's input and output: 4 MiB of FP32 each way.
const IDENTITY_ELEMENTS: usize = 1 << 20;
/// The rows of the batch each worker runs at 8 clients.
const HALF: usize = CLIENTS / WORKERS;

/// Dynamic batching in the batched columns: up to one row per client, a first request waits up
/// to 2 ms for others, and batches are cut to [`HALF`] rows when more wait, so that each of the
/// two workers runs one (`preferred`), or not (the batching table's uncut column).
fn batching(preferred: bool) -> BatchOptions {
    let sizes: &[usize] = if preferred { &[HALF] } else { &[] };
    BatchOptions {
        max_batch_size: CLIENTS,
        max_queue_delay_us: 2000,
        preferred_batch_size: PreferredBatchSizes::new(sizes).unwrap(),
    }
}

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

/// Runs `scripts/fetch_models` for every model it lists; returns their paths.
fn fetch_models() -> Vec<PathBuf> {
    let script = workspace().join("scripts/fetch_models");
    eprintln!("bench: scripts/fetch_models");
    let out = Command::new(&script)
        .env("PYTHON", python())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/fetch_models failed; run `scripts/setup` then `scripts/fetch_models`:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| workspace().join(l.trim()))
        .collect()
}

/// A model and the inputs it is measured with.
struct Workload {
    label: String,
    onnx: Zeroizing<Vec<u8>>,
    inputs: Vec<(String, Tensor)>,
}

/// The inputs `tests/models/compare.py` builds for the model at `path`.
fn python_inputs(path: &Path) -> Vec<(String, Tensor)> {
    let script = workspace().join("tests/models/ort_timing.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(path)
        .arg("--dump-inputs")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    assert!(
        out.status.success(),
        "ort_timing.py --dump-inputs {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    dump["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|input| {
            let datatype = DataType::parse(input["datatype"].as_str().unwrap()).unwrap();
            let shape = input["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(input["data_base64"].as_str().unwrap())
                .unwrap();
            let tensor = Tensor::from_le_bytes(datatype, shape, Zeroizing::new(bytes)).unwrap();
            (input["name"].as_str().unwrap().to_owned(), tensor)
        })
        .collect()
}

/// How a model's input looks in the table: `input_ids INT64[1,128], ...`.
fn describe_inputs(inputs: &[(String, Tensor)]) -> String {
    inputs
        .iter()
        .map(|(name, t)| {
            let dims: Vec<String> = t.shape().iter().map(usize::to_string).collect();
            format!("{name} {}[{}]", t.datatype(), dims.join("x"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The protobuf fields of `onnx.proto` the identity model needs.
mod onnx {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
        varint(out, field << 3);
        varint(out, v);
    }

    fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        varint(out, (field << 3) | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    /// A `ValueInfoProto` of FP32: a size, or -1 for a dynamic dimension named `batch`.
    fn value_info(name: &str, dims: &[i64]) -> Vec<u8> {
        let mut shape = Vec::new();
        for &d in dims {
            let mut dim = Vec::new();
            if d < 0 {
                field_bytes(&mut dim, 2, b"batch");
            } else {
                field_varint(&mut dim, 1, d as u64);
            }
            field_bytes(&mut shape, 1, &dim);
        }
        let mut tensor = Vec::new();
        field_varint(&mut tensor, 1, 1);
        field_bytes(&mut tensor, 2, &shape);
        let mut ty = Vec::new();
        field_bytes(&mut ty, 1, &tensor);
        let mut v = Vec::new();
        field_bytes(&mut v, 1, name.as_bytes());
        field_bytes(&mut v, 2, &ty);
        v
    }

    /// `y = Identity(x)`, FP32 `[batch, width]`: the engine does next to nothing, so that what
    /// serving costs shows.
    pub fn identity(width: usize) -> Vec<u8> {
        let mut node = Vec::new();
        field_bytes(&mut node, 1, b"x");
        field_bytes(&mut node, 2, b"y");
        field_bytes(&mut node, 4, b"Identity");
        let mut graph = Vec::new();
        field_bytes(&mut graph, 1, &node);
        field_bytes(&mut graph, 2, b"identity");
        field_bytes(&mut graph, 11, &value_info("x", &[-1, width as i64]));
        field_bytes(&mut graph, 12, &value_info("y", &[-1, width as i64]));
        let mut opset = Vec::new();
        field_varint(&mut opset, 2, 13);
        let mut model = Vec::new();
        field_varint(&mut model, 1, 8);
        field_bytes(&mut model, 8, &opset);
        field_bytes(&mut model, 7, &graph);
        model
    }
}

fn identity_workload() -> Workload {
    let bytes: Vec<u8> = (0..IDENTITY_ELEMENTS)
        .flat_map(|i| ((i % 1000) as f32 / 1000.0).to_le_bytes())
        .collect();
    let tensor = Tensor::from_le_bytes(
        DataType::F32,
        vec![1, IDENTITY_ELEMENTS],
        Zeroizing::new(bytes),
    )
    .unwrap();
    Workload {
        label: "identity (4 MiB in and out)".to_owned(),
        onnx: Zeroizing::new(onnx::identity(IDENTITY_ELEMENTS)),
        inputs: vec![("x".to_owned(), tensor)],
    }
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

/// A whole infer request (head and body) for the model served as `name`.
fn infer_request(name: &str, inputs: &[(String, Tensor)]) -> Arc<Vec<u8>> {
    let (body, json_len) = infer_body(inputs);
    let head = format!(
        "POST /v2/models/{name}/infer HTTP/1.1\r\nHost: adyton\r\n\
         Inference-Header-Content-Length: {json_len}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = Vec::with_capacity(head.len() + body.len());
    request.extend_from_slice(head.as_bytes());
    request.extend_from_slice(&body);
    Arc::new(request)
}

/// The server: the router of `adyton server serve` behind attested TLS on 127.0.0.1, run on its
/// own tokio runtime.
struct Server {
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
}

/// A model to serve: its name, the loaded model, and its dynamic batching.
type ServedAs = (String, Arc<dyn LoadedModel>, Option<BatchOptions>);

/// Starts the server with `models`; returns it and, per model, whether it is served or why not
/// (a model without a batch dimension refused for batching, say).
fn start_server(
    identity: &AttestedIdentity,
    models: &[ServedAs],
) -> (Server, Vec<Result<(), String>>) {
    let repository = Arc::new(Repository::new(16));
    let inserted = models
        .iter()
        .map(|(name, model, batching)| {
            repository
                .insert_with(name, None, Arc::clone(model), Source::File, *batching)
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .collect();
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
    (Server { addr, runtime }, inserted)
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

/// One keep-alive HTTP/1.1 connection over TLS, attested at its handshake. Answers are read into
/// one buffer reused from request to request, so that the client costs little.
struct Connection {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
}

/// An answer: status, `Inference-Header-Content-Length` and where the body is in the buffer.
struct Answer {
    status: u16,
    json_len: Option<usize>,
    body: std::ops::Range<usize>,
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
            buffer: vec![0; 1 << 18],
            start: 0,
            end: 0,
        }
    }

    /// Sends a whole request and reads its answer.
    fn send(&mut self, request: &[u8]) -> Answer {
        self.tls.write_all(request).unwrap();
        self.tls.flush().unwrap();
        self.read_answer()
    }

    fn body(&self, answer: &Answer) -> &[u8] {
        &self.buffer[answer.body.clone()]
    }

    /// Reads one full answer: the head, then a `Content-Length` or chunked body.
    fn read_answer(&mut self) -> Answer {
        let head_len = loop {
            if let Some(at) = find(&self.buffer[self.start..self.end], b"\r\n\r\n") {
                break at + 4;
            }
            self.fill();
        };
        let head =
            String::from_utf8_lossy(&self.buffer[self.start..self.start + head_len]).into_owned();
        self.start += head_len;
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
            self.take(content_length.expect("Content-Length or chunked"))
        };
        Answer {
            status,
            json_len,
            body,
        }
    }

    /// A chunked body, its chunks moved together at the front of the buffer's unread part.
    fn read_chunked(&mut self) -> std::ops::Range<usize> {
        let mut body = Vec::new();
        loop {
            let line_len = loop {
                if let Some(at) = find(&self.buffer[self.start..self.end], b"\r\n") {
                    break at;
                }
                self.fill();
            };
            let size_text =
                String::from_utf8_lossy(&self.buffer[self.start..self.start + line_len])
                    .into_owned();
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).unwrap();
            self.start += line_len + 2;
            if size == 0 {
                // No trailers are sent: the last chunk is followed by an empty line.
                self.take(2);
                break;
            }
            let chunk = self.take(size);
            body.extend_from_slice(&self.buffer[chunk]);
            self.take(2);
        }
        // The chunks are copied out and back: a rare case, kept simple.
        self.compact();
        let length = body.len();
        let unread = self.end - self.start;
        if self.buffer.len() < length + unread {
            self.buffer.resize(length + unread, 0);
        }
        self.buffer.copy_within(self.start..self.end, length);
        self.buffer[..length].copy_from_slice(&body);
        self.start = length;
        self.end = length + unread;
        0..length
    }

    /// The next `length` bytes, read in as needed.
    fn take(&mut self, length: usize) -> std::ops::Range<usize> {
        while self.end - self.start < length {
            self.fill();
        }
        self.start += length;
        self.start - length..self.start
    }

    /// Moves the unread bytes to the front of the buffer.
    fn compact(&mut self) {
        self.buffer.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    fn fill(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buffer.len() - self.end < 1 << 16 {
            // Room at the front is reclaimed only when the buffer is full, so that bytes of an
            // answer still being taken stay where `take` said they were.
            self.buffer.resize(self.buffer.len() * 2, 0);
        }
        let n = self.tls.read(&mut self.buffer[self.end..]).unwrap();
        assert!(n > 0, "the server closed the connection");
        self.end += n;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The binary outputs of an answer, in order.
fn binary_outputs(connection: &Connection, answer: &Answer) -> Vec<(String, Vec<u8>)> {
    let body = connection.body(answer);
    assert_eq!(
        answer.status,
        200,
        "infer failed: {}",
        String::from_utf8_lossy(body)
    );
    let json_len = answer.json_len.expect("Inference-Header-Content-Length");
    let header: serde_json::Value = serde_json::from_slice(&body[..json_len]).unwrap();
    let mut offset = json_len;
    header["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|output| {
            let size = output["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
            let bytes = body[offset..offset + size].to_vec();
            offset += size;
            (output["name"].as_str().unwrap().to_owned(), bytes)
        })
        .collect()
}

/// Checks served outputs against in-process ones: equal bytes, or for FP32 a largest difference
/// under 1e-4 of the largest magnitude (an engine's threads may sum in another order).
fn check_same(label: &str, served: &[(String, Vec<u8>)], expected: &[Tensor]) {
    assert_eq!(served.len(), expected.len(), "{label}: output count");
    for ((name, bytes), tensor) in served.iter().zip(expected) {
        let TensorData::Fixed(expected) = tensor.data() else {
            panic!("{label}: output {name} is not fixed-size");
        };
        if bytes == &**expected {
            continue;
        }
        assert_eq!(tensor.datatype(), DataType::F32, "{label}: output {name}");
        assert_eq!(bytes.len(), expected.len(), "{label}: output {name}");
        let floats = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let (got, want) = (floats(bytes), floats(expected));
        let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst / scale < 1e-4,
            "{label}: output {name} differs from the in-process run ({})",
            worst / scale
        );
    }
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1].as_secs_f64() * 1000.0
}

#[derive(Clone, Copy)]
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

/// What a column calls: a loaded model in this process, or a model served by the server.
#[derive(Clone)]
enum Target {
    InProcess {
        model: Arc<dyn LoadedModel>,
        inputs: Vec<Tensor>,
    },
    Served {
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        request: Arc<Vec<u8>>,
    },
}

/// A target with what one caller needs: its own connection to the server.
enum Caller {
    InProcess {
        model: Arc<dyn LoadedModel>,
        inputs: Vec<Tensor>,
    },
    Served {
        connection: Box<Connection>,
        request: Arc<Vec<u8>>,
    },
}

impl Target {
    fn caller(&self) -> Caller {
        match self {
            Target::InProcess { model, inputs } => Caller::InProcess {
                model: Arc::clone(model),
                inputs: inputs.clone(),
            },
            Target::Served {
                addr,
                config,
                request,
            } => Caller::Served {
                connection: Box::new(Connection::open(*addr, Arc::clone(config))),
                request: Arc::clone(request),
            },
        }
    }
}

impl Caller {
    /// One inference, timed. The inputs' copy for an in-process run is made before the clock
    /// starts, as a server's request owns its tensors.
    fn call(&mut self) -> Duration {
        match self {
            Caller::InProcess { model, inputs } => {
                let inputs = inputs.clone();
                let started = Instant::now();
                let outputs = model.run(inputs).unwrap();
                let elapsed = started.elapsed();
                drop(outputs);
                elapsed
            }
            Caller::Served {
                connection,
                request,
            } => {
                let started = Instant::now();
                let answer = connection.send(request);
                let elapsed = started.elapsed();
                assert_eq!(
                    answer.status,
                    200,
                    "{}",
                    String::from_utf8_lossy(connection.body(&answer))
                );
                elapsed
            }
        }
    }
}

/// The `i`-th of the `n!` orders of `0..n` (taken modulo `n!`), from its Lehmer code: as `i`
/// counts up, every column comes first, and right after every other column, equally often, so
/// that no column always follows one that leaves the cores busy or the caches cold.
fn permutation(i: usize, n: usize) -> Vec<usize> {
    let count: usize = (1..=n).product();
    let mut code = i % count.max(1);
    let mut left: Vec<usize> = (0..n).collect();
    let mut order = Vec::with_capacity(n);
    for m in (1..=n).rev() {
        let f: usize = (1..m).product();
        order.push(left.remove(code / f));
        code %= f;
    }
    order
}

/// Requests per second with `clients` callers calling back to back for `seconds`, after a
/// second of the same, untimed (plans for the batch sizes a batched column sees are compiled
/// then, and connections warmed).
fn throughput(target: &Target, clients: usize, seconds: u64) -> f64 {
    run_clients(target, clients, 1);
    run_clients(target, clients, seconds)
}

fn run_clients(target: &Target, clients: usize, seconds: u64) -> f64 {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let mut caller = target.caller();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let deadline = Instant::now() + Duration::from_secs(seconds);
                let mut done = 0u64;
                while Instant::now() < deadline {
                    caller.call();
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

/// The columns of the table, in order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Column {
    OrtInProcess,
    TractInProcess,
    ServedTract,
    ServedOrt,
    ServedTractBatched,
    ServedOrtBatched,
}

impl Column {
    const LATENCY: [Column; 4] = [
        Column::OrtInProcess,
        Column::TractInProcess,
        Column::ServedTract,
        Column::ServedOrt,
    ];
    const THROUGHPUT: [Column; 6] = [
        Column::OrtInProcess,
        Column::TractInProcess,
        Column::ServedTract,
        Column::ServedTractBatched,
        Column::ServedOrt,
        Column::ServedOrtBatched,
    ];

    fn label(self) -> &'static str {
        match self {
            Column::OrtInProcess => "onnxruntime in-process",
            Column::TractInProcess => "tract in-process",
            Column::ServedTract => "Adyton + tract",
            Column::ServedOrt => "Adyton + onnxruntime",
            Column::ServedTractBatched => "Adyton + tract, batched",
            Column::ServedOrtBatched => "Adyton + onnxruntime, batched",
        }
    }
}

/// One cell: a figure, or why there is none.
enum Cell<T> {
    Value(T),
    Missing(String),
}

struct Row {
    label: String,
    inputs: String,
    plan: String,
    latency: Vec<(Column, Cell<Latency>)>,
    rates: Vec<(Column, Cell<f64>)>,
    batching: Vec<BatchingRow>,
}

impl Row {
    fn latency(&self, column: Column) -> Option<Latency> {
        self.latency.iter().find_map(|(c, cell)| match cell {
            Cell::Value(l) if *c == column => Some(*l),
            _ => None,
        })
    }
}

/// The loaded models of a workload, by engine.
struct Loaded {
    tract: Result<Arc<dyn LoadedModel>, String>,
    ort: Result<Arc<dyn LoadedModel>, String>,
}

fn load(engine: &dyn Engine, onnx: &[u8]) -> Result<Arc<dyn LoadedModel>, String> {
    engine.load(onnx).map_err(|e| e.to_string())
}

struct Bench {
    iterations: usize,
    latency_seconds: u64,
    seconds: u64,
    /// Rounds of the batching table.
    batching_rounds: usize,
    identity: AttestedIdentity,
    tract: TractEngine,
    ort: Result<OnnxRuntimeEngine, String>,
}

impl Bench {
    fn run(&self, workload: &Workload) -> Row {
        eprintln!("bench: {}: loading", workload.label);
        let loaded = Loaded {
            tract: load(&self.tract, &workload.onnx),
            ort: match &self.ort {
                Ok(engine) => load(engine, &workload.onnx),
                Err(reason) => Err(reason.clone()),
            },
        };
        let plan = match &loaded.tract {
            Ok(model) => model.plan().as_str().to_owned(),
            Err(_) => "does not load".to_owned(),
        };
        // As the server loads a model with preferred batch sizes: tract compiles plans of their
        // own for them (onnxruntime ignores the setting).
        let batch_options = LoadOptions {
            batch_sizes: vec![HALF, CLIENTS],
            ..LoadOptions::default()
        };
        let tract_batched = self
            .tract
            .load_with(&workload.onnx, &batch_options)
            .map_err(|e| e.to_string());
        let mut served: Vec<ServedAs> = Vec::new();
        for (engine, model, batched) in [
            ("tract", &loaded.tract, &tract_batched),
            ("onnxruntime", &loaded.ort, &loaded.ort),
        ] {
            if let (Ok(model), Ok(batched)) = (model, batched) {
                served.push((engine.to_owned(), Arc::clone(model), None));
                served.push((
                    format!("{engine}-batched"),
                    Arc::clone(batched),
                    Some(batching(true)),
                ));
                served.push((
                    format!("{engine}-uncut"),
                    Arc::clone(model),
                    Some(batching(false)),
                ));
            }
        }
        let (server, inserted) = start_server(&self.identity, &served);
        // A served name: its engine's model when the server took it, else why not.
        let serving = |name: &str, model: &Result<Arc<dyn LoadedModel>, String>| {
            let model = model.as_ref().map_err(Clone::clone)?;
            served
                .iter()
                .zip(&inserted)
                .find(|((n, _, _), _)| n == name)
                .map_or(Err(format!("{name} is not served")), |(_, r)| r.clone())?;
            Ok::<_, String>(Arc::clone(model))
        };
        let verifier = Arc::new(AttestedServerVerifier::new(
            // SIM evidence proves nothing; a policy naming SIM accepts it, as a development
            // client's would.
            Policy::from_toml("[sim]\n").unwrap(),
            Collateral::none(),
        ));
        let config = client_config(Arc::clone(&verifier)).unwrap();

        let tensors: Vec<Tensor> = workload.inputs.iter().map(|(_, t)| t.clone()).collect();
        let in_process = |model: &Result<Arc<dyn LoadedModel>, String>| match model {
            Ok(model) => Ok(Target::InProcess {
                model: Arc::clone(model),
                inputs: tensors.clone(),
            }),
            Err(reason) => Err(reason.clone()),
        };
        let served_as =
            |name: &str, model: &Result<Arc<dyn LoadedModel>, String>| match serving(name, model) {
                Ok(model) => {
                    // The server's answer must be the in-process answer.
                    let mut connection = Connection::open(server.addr, Arc::clone(&config));
                    let request = infer_request(name, &workload.inputs);
                    let answer = connection.send(&request);
                    let expected = model.run(tensors.clone()).unwrap();
                    check_same(
                        &format!("{} on {name}", workload.label),
                        &binary_outputs(&connection, &answer),
                        &expected,
                    );
                    Ok(Target::Served {
                        addr: server.addr,
                        config: Arc::clone(&config),
                        request,
                    })
                }
                Err(reason) => Err(reason.clone()),
            };
        let targets: Vec<(Column, Result<Target, String>)> = vec![
            (Column::OrtInProcess, in_process(&loaded.ort)),
            (Column::TractInProcess, in_process(&loaded.tract)),
            (Column::ServedTract, served_as("tract", &loaded.tract)),
            (Column::ServedOrt, served_as("onnxruntime", &loaded.ort)),
            (
                Column::ServedTractBatched,
                served_as("tract-batched", &tract_batched),
            ),
            (
                Column::ServedOrtBatched,
                served_as("onnxruntime-batched", &loaded.ort),
            ),
        ];
        let verified = verifier
            .verified()
            .expect("the server's attestation verified");
        assert_eq!(verified.claims.tee, TeeKind::Sim);
        assert_eq!(
            verified.certificate_sha256,
            self.identity.certificate_sha256()
        );
        let target = |column: Column| {
            targets
                .iter()
                .find(|(c, _)| *c == column)
                .map(|(_, t)| t.clone())
                .unwrap()
        };

        // 1 client: one call of each column in turn.
        let mut callers: Vec<(Column, Caller)> = Column::LATENCY
            .iter()
            .filter_map(|&c| Some((c, target(c).ok()?.caller())))
            .collect();
        eprintln!(
            "bench: {}: 1 client, {} columns in turn",
            workload.label,
            callers.len()
        );
        for _ in 0..WARMUP {
            for (_, caller) in &mut callers {
                caller.call();
            }
        }
        let mut samples: Vec<Vec<Duration>> = callers.iter().map(|_| Vec::new()).collect();
        let started = Instant::now();
        for i in 0..self.iterations {
            if i >= MIN_SAMPLES && started.elapsed().as_secs() >= self.latency_seconds {
                break;
            }
            for k in permutation(i, callers.len()) {
                samples[k].push(callers[k].1.call());
            }
        }
        let measured: Vec<(Column, Latency, usize)> = callers
            .iter()
            .zip(samples)
            .map(|((c, _), s)| (*c, s.len(), latency(s)))
            .map(|(c, n, l)| (c, l, n))
            .collect();
        drop(callers);
        let latency = Column::LATENCY
            .iter()
            .map(|&c| {
                let cell = match measured.iter().find(|(m, _, _)| *m == c) {
                    Some((_, l, _)) => Cell::Value(*l),
                    None => Cell::Missing(target(c).err().unwrap_or_default()),
                };
                (c, cell)
            })
            .collect();

        // 8 clients: each column alone.
        let rates = Column::THROUGHPUT
            .iter()
            .map(|&c| {
                let cell = match target(c) {
                    Ok(t) => {
                        eprintln!(
                            "bench: {}: {CLIENTS} clients, {}",
                            workload.label,
                            c.label()
                        );
                        Cell::Value(throughput(&t, CLIENTS, self.seconds))
                    }
                    Err(reason) => Cell::Missing(reason),
                };
                (c, cell)
            })
            .collect();
        // What batching can gain at most, and what it gains served, side by side.
        let mut batching_rows = Vec::new();
        for (engine, model, batched, served_name) in [
            ("tract", &loaded.tract, &tract_batched, "tract"),
            ("onnxruntime", &loaded.ort, &loaded.ort, "onnxruntime"),
        ] {
            let (Ok(model), Ok(batched)) = (model, batched) else {
                continue;
            };
            if check_batchable(model.signature()).is_err()
                || tensors.iter().any(|t| t.shape().first() != Some(&1))
            {
                continue;
            }
            let label = format!("{}, {engine}", workload.label);
            let in_process = |model: &Arc<dyn LoadedModel>, rows: usize| Target::InProcess {
                model: Arc::clone(model),
                inputs: tensors.iter().map(|t| repeat_rows(t, rows)).collect(),
            };
            let served_target = |name: &str| {
                served_as(name, &Ok(Arc::clone(model)))
                    .unwrap_or_else(|reason| panic!("{name}: {reason}"))
            };
            // (what, target, rows per call, callers), in the table's order.
            let points = [
                ("8 calls of 1 row", in_process(model, 1), 1, CLIENTS),
                ("1 call of 8 rows", in_process(batched, CLIENTS), CLIENTS, 1),
                (
                    "2 calls of 4 rows",
                    in_process(batched, HALF),
                    HALF,
                    WORKERS,
                ),
                ("served", served_target(served_name), 1, CLIENTS),
                (
                    "served, batched up to 8",
                    served_target(&format!("{served_name}-uncut")),
                    1,
                    CLIENTS,
                ),
                (
                    "served, batched by 4",
                    served_target(&format!("{served_name}-batched")),
                    1,
                    CLIENTS,
                ),
            ];
            // A second untimed each (plans compiled, connections warmed), then the points in
            // turn, round after round, so that all see the same background load: medians.
            eprintln!("bench: {label}: batching, {} points in turn", points.len());
            for (_, target, _, callers) in &points {
                run_clients(target, *callers, 1);
            }
            let mut samples: [Vec<f64>; 6] = Default::default();
            for round in 0..self.batching_rounds {
                eprintln!("bench: {label}: batching, round {}", round + 1);
                for ((_, target, rows, callers), samples) in points.iter().zip(&mut samples) {
                    samples.push(*rows as f64 * run_clients(target, *callers, self.seconds));
                }
            }
            let [one_row, eight_rows, halves, unbatched, uncut, cut] = samples.map(median);
            batching_rows.push(BatchingRow {
                label,
                one_row,
                eight_rows,
                halves,
                unbatched,
                uncut,
                cut,
            });
        }
        server.runtime.shutdown_background();
        let samples = measured.first().map_or(0, |(_, _, n)| *n);
        eprintln!("bench: {}: done ({samples} samples)", workload.label);
        Row {
            label: workload.label.clone(),
            inputs: describe_inputs(&workload.inputs),
            plan,
            latency,
            rates,
            batching: batching_rows,
        }
    }
}

/// The median of a column's rounds.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `tensor` (of one row) repeated to `rows` rows.
fn repeat_rows(tensor: &Tensor, rows: usize) -> Tensor {
    let TensorData::Fixed(bytes) = tensor.data() else {
        panic!("no BYTES inputs here");
    };
    let mut shape = tensor.shape().to_vec();
    shape[0] *= rows;
    Tensor::from_le_bytes(tensor.datatype(), shape, Zeroizing::new(bytes.repeat(rows))).unwrap()
}

/// One model on one engine at 8 clients, in rows per second: in-process as one row per call
/// (8 threads), as one call of 8 rows, and as two calls of 4 rows at once; served without
/// batching, with batches of up to 8 rows, and with batches cut to 4.
struct BatchingRow {
    label: String,
    one_row: f64,
    eight_rows: f64,
    halves: f64,
    unbatched: f64,
    uncut: f64,
    cut: f64,
}

fn print_table(rows: &[Row], bench: &Bench) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Serving benchmark: {cores} cores; 1 client: p50 / p99 in ms, up to {} samples per column \
         (at most {} s a model), columns in turn; {CLIENTS} clients: requests/s over {} s per \
         column; server: {WORKERS} inference workers.",
        bench.iterations, bench.latency_seconds, bench.seconds
    );
    println!();
    let mut header = vec![
        "model".to_owned(),
        "inputs".to_owned(),
        "tract plan".to_owned(),
    ];
    header.extend(
        Column::LATENCY
            .iter()
            .map(|c| format!("{}, 1 client", c.label())),
    );
    header.push("served / in-process p50 (tract, onnxruntime)".to_owned());
    header.extend(
        Column::THROUGHPUT
            .iter()
            .map(|c| format!("{}, {CLIENTS} clients", c.label())),
    );
    println!("| {} |", header.join(" | "));
    println!("|{}", " --- |".repeat(header.len()));
    let mut missing = Vec::new();
    for row in rows {
        let mut cells = vec![row.label.clone(), row.inputs.clone(), row.plan.clone()];
        let mut note = |reason: &str| {
            let first = reason.lines().next().unwrap_or("").to_owned();
            let index = match missing.iter().position(|m| *m == first) {
                Some(i) => i,
                None => {
                    missing.push(first);
                    missing.len() - 1
                }
            };
            format!("n/a [{}]", index + 1)
        };
        for (_, cell) in &row.latency {
            cells.push(match cell {
                Cell::Value(l) => format!("{:.2} / {:.2}", l.p50, l.p99),
                Cell::Missing(reason) => note(reason),
            });
        }
        let ratio = |served: Column, local: Column| match (row.latency(served), row.latency(local))
        {
            (Some(s), Some(l)) => format!("{:.2}×", s.p50 / l.p50),
            _ => "–".to_owned(),
        };
        cells.push(format!(
            "{}, {}",
            ratio(Column::ServedTract, Column::TractInProcess),
            ratio(Column::ServedOrt, Column::OrtInProcess)
        ));
        for (_, cell) in &row.rates {
            cells.push(match cell {
                Cell::Value(rate) => format!("{rate:.1}"),
                Cell::Missing(reason) => note(reason),
            });
        }
        println!("| {} |", cells.join(" | "));
    }
    if !missing.is_empty() {
        println!();
        for (i, reason) in missing.iter().enumerate() {
            println!("[{}] {reason}", i + 1);
        }
    }
    print_batching(rows, bench);
}

/// The second table: what batching can gain at most on each engine, next to what it gains
/// served.
fn print_batching(rows: &[Row], bench: &Bench) {
    let lines: Vec<&BatchingRow> = rows.iter().flat_map(|r| &r.batching).collect();
    if lines.is_empty() {
        return;
    }
    println!();
    println!(
        "Dynamic batching, {CLIENTS} clients, rows/s, medians of {} rounds of {} s per point, \
         the points in turn. In-process: {CLIENTS} threads calling with \
         1 row, 1 thread with {CLIENTS} rows, {WORKERS} threads with {HALF} rows (tract: plans \
         for {HALF} and {CLIENTS} rows); ceiling: the better batched figure over 1 row. Served: \
         without batching, batches of up to {CLIENTS} rows, and batches cut to {HALF} \
         (preferred_batch_size).",
        bench.batching_rounds, bench.seconds
    );
    println!();
    println!(
        "| model, engine | in-process, 1 row | {CLIENTS} rows | {WORKERS} × {HALF} rows | \
         ceiling | served | served, batched up to {CLIENTS} | served, batched by {HALF} | \
         best served batched / served |"
    );
    println!("|{}", " --- |".repeat(9));
    for line in lines {
        let best = line.uncut.max(line.cut);
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2}× | {:.1} | {:.1} | {:.1} | {:.2}× |",
            line.label,
            line.one_row,
            line.eight_rows,
            line.halves,
            line.eight_rows.max(line.halves) / line.one_row,
            line.unbatched,
            line.uncut,
            line.cut,
            best / line.unbatched,
        );
    }
}

fn main() {
    let iterations = env_number("ADYTON_BENCH_ITERATIONS", 200).max(1);
    let latency_seconds = env_number("ADYTON_BENCH_LATENCY_SECONDS", 40) as u64;
    let seconds = env_number("ADYTON_BENCH_SECONDS", 3) as u64;
    let only: Option<Vec<String>> = std::env::var("ADYTON_BENCH_MODELS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));

    let mut workloads = Vec::new();
    for path in fetch_models() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if !wanted(&file) {
            continue;
        }
        eprintln!("bench: {file}: inputs from tests/models/ort_timing.py");
        workloads.push(Workload {
            label: file.trim_end_matches(".onnx").to_owned(),
            onnx: Zeroizing::new(std::fs::read(&path).unwrap()),
            inputs: python_inputs(&path),
        });
    }
    if wanted("identity") {
        workloads.push(identity_workload());
    }

    let attester = SimAttester::from_seed([7; 32]).unwrap();
    let bench = Bench {
        iterations,
        latency_seconds,
        seconds,
        batching_rounds: env_number("ADYTON_BENCH_BATCHING_ROUNDS", 3).max(1),
        identity: AttestedIdentity::generate(&attester).unwrap(),
        tract: TractEngine::new(),
        ort: find_library()
            .ok_or_else(|| {
                "no onnxruntime library: set ADYTON_ONNXRUNTIME_LIBRARY or run scripts/setup"
                    .to_owned()
            })
            .and_then(|library| OnnxRuntimeEngine::new(&library).map_err(|e| e.to_string())),
    };
    let rows: Vec<Row> = workloads.iter().map(|w| bench.run(w)).collect();
    print_table(&rows, &bench);
}
