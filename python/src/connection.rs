//! `adyton.connect` and `adyton.Connection`: one attested connection to an inference server.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use adyton_attest::gpu::GpuVerifier;
use adyton_attest::provider::{CollateralProvider, ProviderConfig};
use adyton_attest::{Collateral, Policy};
use adyton_client::{ClientError, ConnectOptions, ServerClient, TensorMetadata, Token};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyDict, PyString};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::errors::{client_error, input_error, AdytonError, PolicyError};
use crate::pyjson::to_python;
use crate::tensors;

/// Connects to an Adyton inference server and verifies its attestation.
///
/// The TLS handshake carries the server's evidence; it is verified in Rust against `policy`
/// before any request is sent, and a server that fails is refused with `AttestationError` (no
/// genuine evidence bound to its key) or `PolicyError` (genuine, but not what the policy
/// accepts). Every later request goes to the same verified key.
///
/// `policy` is a path (`str` or `os.PathLike`) to a TOML policy file, or the TOML text itself
/// (a `str` holding a newline, `[` or `=`). `token` is the upload token, needed by
/// `upload_model` and `delete_model`. Collateral for SGX, TDX and SNP evidence comes from
/// `collateral` (a path to a collateral bundle, JSON), `pccs_url` (a PCCS or Intel's PCS, for SGX
/// and TDX), `kds_url` (AMD's KDS, for SNP evidence that does not carry its VCEK), with fetched
/// collateral also kept in `collateral_cache_dir`; connections with the same settings share one
/// cache. When none of these has the collateral of the server's evidence, the server's own is
/// fetched (`GET /adyton/v1/collateral`) and used: it adds no trust, since its signatures are
/// checked up to Intel's or AMD's root; `server_collateral=False` turns that off. Under a policy
/// with `[nvidia_gpu]`, the GPUs attached to the server's evidence are verified against NVIDIA's
/// pinned roots and the RIMs they carry or that `gpu_rims` (a directory of NVIDIA reference
/// integrity manifests) holds. `timeout` bounds each request, in seconds.
#[pyfunction]
#[pyo3(signature = (
    url, *, policy, token=None, collateral=None, pccs_url=None, kds_url=None,
    collateral_cache_dir=None, server_collateral=true, fresh_evidence=true, gpu_rims=None,
    timeout=60.0
))]
#[allow(clippy::too_many_arguments)]
pub fn connect(
    py: Python<'_>,
    url: String,
    policy: &Bound<'_, PyAny>,
    token: Option<String>,
    collateral: Option<PathBuf>,
    pccs_url: Option<String>,
    kds_url: Option<String>,
    collateral_cache_dir: Option<PathBuf>,
    server_collateral: bool,
    fresh_evidence: bool,
    gpu_rims: Option<PathBuf>,
    timeout: f64,
) -> PyResult<Connection> {
    let policy = read_policy(policy)?;
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(input_error(format!(
            "timeout must be a positive number of seconds, not {timeout}"
        )));
    }
    let sources = CollateralSources {
        bundle: collateral,
        pccs_url,
        kds_url,
        cache_dir: collateral_cache_dir,
    };
    let options = ConnectOptions {
        collateral: provider_for(sources)?,
        token: token.map(Token::new),
        fresh_evidence,
        server_collateral,
        gpus: gpu_rims.map(|dir| gpu_verifier(&dir)).transpose()?,
        timeout: Duration::from_secs_f64(timeout),
    };
    let connected = py.detach(|| ServerClient::connect(&url, policy, options));
    let client = connected.map_err(|err| client_error(py, &err))?;

    let verified = client.verified();
    let mut claims = serde_json::to_value(&verified.claims)
        .map_err(|err| AdytonError::new_err(format!("cannot represent the claims: {err}")))?;
    if let Value::Object(map) = &mut claims {
        map.insert(
            "measurement".into(),
            verified.claims.primary_measurement().into(),
        );
        map.insert(
            "tcb_status".into(),
            verified.claims.tcb_status.name().into(),
        );
        map.insert(
            "certificate_sha256".into(),
            hex::encode(verified.certificate_sha256).into(),
        );
    }
    let certificate_pem = client.certificate_pem();
    Ok(Connection {
        url,
        claims,
        certificate_pem,
        client: Mutex::new(Some(Arc::new(client))),
        signatures: Mutex::new(HashMap::new()),
    })
}

/// NVIDIA's pinned roots and the RIMs in `dir`, each verified against NVIDIA's RIM root when a
/// GPU's report is checked against it.
fn gpu_verifier(dir: &Path) -> PyResult<Arc<GpuVerifier>> {
    let verifier = GpuVerifier::new()
        .and_then(|verifier| verifier.with_rim_dir(dir))
        .map_err(|err| input_error(format!("gpu_rims {}: {err}", dir.display())))?;
    Ok(Arc::new(verifier))
}

/// A path or TOML text, parsed into a policy. A policy is never guessed: a value that is neither
/// is refused.
fn read_policy(policy: &Bound<'_, PyAny>) -> PyResult<Policy> {
    if let Ok(text) = policy.cast::<PyString>() {
        let text = text.to_cow()?;
        if text.contains(['\n', '[', '=']) {
            return Policy::from_toml(&text)
                .map_err(|err| PolicyError::new_err(format!("the policy text is invalid: {err}")));
        }
        return read_policy_file(Path::new(&*text));
    }
    match policy.extract::<PathBuf>() {
        Ok(path) => read_policy_file(&path),
        Err(_) => Err(PyTypeError::new_err(format!(
            "policy must be a path to a TOML policy file or the TOML text, not {}",
            tensors::type_name(policy)
        ))),
    }
}

fn read_policy_file(path: &Path) -> PyResult<Policy> {
    Policy::from_file(path).map_err(|err| {
        PolicyError::new_err(format!("cannot use the policy {}: {err}", path.display()))
    })
}

/// The collateral settings of a `connect` call; connections with equal settings share one
/// provider, and so its cache and its single-flight fetches.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CollateralSources {
    bundle: Option<PathBuf>,
    pccs_url: Option<String>,
    kds_url: Option<String>,
    cache_dir: Option<PathBuf>,
}

/// Most providers kept for reuse; a program talks to few kinds of servers.
const MAX_PROVIDERS: usize = 16;

fn provider_for(sources: CollateralSources) -> PyResult<Arc<CollateralProvider>> {
    static PROVIDERS: OnceLock<Mutex<HashMap<CollateralSources, Arc<CollateralProvider>>>> =
        OnceLock::new();
    let providers = PROVIDERS.get_or_init(Default::default);
    let network = sources.pccs_url.is_some() || sources.kds_url.is_some();
    if network {
        let known = providers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(provider) = known.get(&sources) {
            return Ok(provider.clone());
        }
    }
    let mut config = ProviderConfig::new();
    if let Some(path) = &sources.bundle {
        config = config.with_bundle(read_collateral(path)?, path.display().to_string());
    }
    if let Some(url) = &sources.pccs_url {
        config = config.with_pccs_url(url);
    }
    if let Some(url) = &sources.kds_url {
        config = config.with_kds_url(url);
    }
    if let Some(dir) = &sources.cache_dir {
        config = config.with_cache_dir(dir);
    }
    let provider = Arc::new(
        CollateralProvider::new(config)
            .map_err(|err| input_error(format!("cannot use the collateral settings: {err}")))?,
    );
    // A bundle alone is read again by each connection, so that a replaced file is seen.
    if network {
        let mut known = providers.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= MAX_PROVIDERS {
            known.clear();
        }
        known.insert(sources, provider.clone());
    }
    Ok(provider)
}

fn read_collateral(path: &Path) -> PyResult<Collateral> {
    let bytes = std::fs::read(path)?;
    Collateral::from_json(&bytes).map_err(|err| {
        input_error(format!(
            "{} is not a collateral bundle: {err}",
            path.display()
        ))
    })
}

/// An attested connection to an inference server, made by `adyton.connect`.
///
/// Use it as a context manager (`with adyton.connect(...) as c:`), or call `close()`. Methods
/// release the GIL while they wait for the server, so threads may share one connection.
#[pyclass(module = "adyton", frozen)]
pub struct Connection {
    url: String,
    /// The verified claims, as `claims` returns them.
    claims: Value,
    certificate_pem: String,
    /// `None` once closed.
    client: Mutex<Option<Arc<ServerClient>>>,
    /// The declared inputs of the models predicted with, to check inputs before sending them.
    /// An entry is dropped when its model is uploaded or deleted here, or when the server
    /// refuses a request for it.
    signatures: Mutex<HashMap<String, Arc<Vec<TensorMetadata>>>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("closed", &self.client().is_err())
            .finish_non_exhaustive()
    }
}

impl Connection {
    fn client(&self) -> PyResult<Arc<ServerClient>> {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| AdytonError::new_err("the connection is closed"))
    }

    fn forget_signature(&self, model: &str) {
        self.signatures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(model);
    }

    fn signature(&self, py: Python<'_>, model: &str) -> PyResult<Arc<Vec<TensorMetadata>>> {
        if let Some(known) = self
            .signatures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
        {
            return Ok(Arc::clone(known));
        }
        let client = self.client()?;
        let metadata = py
            .detach(|| client.model_metadata(model))
            .map_err(|err| client_error(py, &err))?;
        let inputs = Arc::new(metadata.inputs);
        self.signatures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(model.to_owned(), Arc::clone(&inputs));
        Ok(inputs)
    }
}

#[pymethods]
impl Connection {
    /// What the verified evidence proved, as a dict: `tee` ("SGX", "TDX", "SNP" or "SIM"),
    /// `measurement` (hex), `tcb_status`, `debug`, `insecure` (true for SIM, which proves
    /// nothing about hardware), `advisory_ids`, `report_data`, the collateral dates, `details`
    /// (the TEE-specific measurements) and `certificate_sha256` (hex, of the verified TLS
    /// certificate).
    #[getter]
    fn claims<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.claims)
    }

    /// The verified server certificate (PEM), to pin in clients that cannot verify attestation.
    #[getter]
    fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The server's URL.
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.client().is_err()
    }

    /// The server's metadata (`GET /v2`): name, version, extensions.
    fn server_metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let value = py
            .detach(|| client.server_metadata())
            .map_err(|err| client_error(py, &err))?;
        to_python(py, &value)
    }

    /// A model's metadata: `name`, `versions`, and its `inputs` and `outputs`, each a list of
    /// `{"name", "datatype", "shape"}` with -1 for a dynamic dimension.
    fn model_metadata<'py>(&self, py: Python<'py>, model: &str) -> PyResult<Bound<'py, PyDict>> {
        let client = self.client()?;
        let metadata = py
            .detach(|| client.model_metadata(model))
            .map_err(|err| client_error(py, &err))?;
        let tensors = |list: &[TensorMetadata]| -> PyResult<Vec<Bound<'py, PyDict>>> {
            list.iter()
                .map(|t| {
                    let dict = PyDict::new(py);
                    dict.set_item("name", &t.name)?;
                    dict.set_item("datatype", &t.datatype)?;
                    dict.set_item("shape", t.shape.clone())?;
                    Ok(dict)
                })
                .collect()
        };
        let dict = PyDict::new(py);
        dict.set_item("name", &metadata.name)?;
        dict.set_item("versions", metadata.versions.clone())?;
        dict.set_item("inputs", tensors(&metadata.inputs)?)?;
        dict.set_item("outputs", tensors(&metadata.outputs)?)?;
        self.signatures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(model.to_owned(), Arc::new(metadata.inputs));
        Ok(dict)
    }

    /// Uploads a plaintext ONNX model over the attested connection (confidential upload) and
    /// returns the server's answer (name, version, signature). `model` is a path or the model's
    /// bytes; `name` is keyword-only. Needs the connection's token.
    #[pyo3(signature = (model, *, name))]
    fn upload_model<'py>(
        &self,
        py: Python<'py>,
        model: &Bound<'py, PyAny>,
        name: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let source = if let Ok(bytes) = model.extract::<PyBackedBytes>() {
            ModelSource::Bytes(bytes)
        } else if let Ok(path) = model.extract::<PathBuf>() {
            ModelSource::File(path)
        } else {
            return Err(PyTypeError::new_err(format!(
                "model must be a path or bytes, not {}",
                tensors::type_name(model)
            )));
        };
        self.forget_signature(&name);
        let answer = py.detach(|| -> Result<Result<Value, ClientError>, std::io::Error> {
            Ok(match &source {
                ModelSource::Bytes(bytes) => client.upload_model(&name, bytes),
                ModelSource::File(path) => {
                    let bytes = Zeroizing::new(std::fs::read(path)?);
                    client.upload_model(&name, &bytes)
                }
            })
        })?;
        let value = answer.map_err(|err| client_error(py, &err))?;
        to_python(py, &value)
    }

    /// Runs the model on `inputs`, a dict from input name to numpy array, and returns a dict
    /// from output name to numpy array.
    ///
    /// Inputs are checked against the model's declared inputs first (names, dtypes, ranks, fixed
    /// dimensions), and a mismatch raises `InputError` before anything is sent.
    fn predict<'py>(
        &self,
        py: Python<'py>,
        model: &str,
        inputs: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let Ok(inputs) = inputs.cast::<PyDict>() else {
            return Err(input_error(format!(
                "inputs must be a dict from each input's name to a numpy array, such as \
                 {{\"x\": array}}, not {}",
                tensors::type_name(inputs)
            )));
        };
        let mut encoded = Vec::with_capacity(inputs.len());
        for (name, value) in inputs.iter() {
            let Ok(name) = name.cast::<PyString>() else {
                return Err(input_error(format!(
                    "input names must be str, not {}",
                    tensors::type_name(&name)
                )));
            };
            encoded.push(tensors::encode(&name.to_cow()?, &value)?);
        }
        let declared = self.signature(py, model)?;
        let ordered = tensors::check_against(model, &declared, encoded)?;
        let client = self.client()?;
        let outputs = py.detach(|| client.infer(model, &ordered));
        let outputs = outputs.map_err(|err| {
            if err.status().is_some() {
                self.forget_signature(model);
            }
            client_error(py, &err)
        })?;
        let dict = PyDict::new(py);
        for output in &outputs {
            dict.set_item(&output.name, tensors::decode(py, output)?)?;
        }
        Ok(dict)
    }

    /// Removes every version of a model from the server. Needs the connection's token.
    fn delete_model(&self, py: Python<'_>, model: &str) -> PyResult<()> {
        let client = self.client()?;
        self.forget_signature(model);
        py.detach(|| client.delete_model(model))
            .map_err(|err| client_error(py, &err))
    }

    /// Closes the connection. Later calls raise `AdytonError`; closing twice is allowed.
    fn close(&self) {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (_exc_type=None, _exc_value=None, _traceback=None))]
    fn __exit__(
        &self,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc_value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        let field = |name: &str| match self.claims.get(name) {
            Some(Value::String(s)) => s.clone(),
            _ => "?".into(),
        };
        let state = if self.closed() { " closed" } else { "" };
        format!(
            "<adyton.Connection {} tee={} measurement={}{state}>",
            self.url,
            field("tee"),
            field("measurement"),
        )
    }
}

/// Where an uploaded model's bytes come from.
enum ModelSource {
    Bytes(PyBackedBytes),
    File(PathBuf),
}
