//! The use cases of [`Server`] without HTTP: each one's result, and each of its refusals as the
//! [`ServerError`] variant a test can name.

use std::time::Duration;

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::Evidence;
use adyton_envelope::wrap::{TeePublicKey, TransferKeyKind, WrappedKey};
use zeroize::Zeroizing;

use super::*;
use crate::protocol::{EncodedResponse, InferRequest, RequestedOutput};
use crate::pull::{Backoff, FetchError, KeyBroker, ModelInfo, Registry};
use crate::runtime::{DataType, EngineError, LoadedModel, Plan, Signature, Tensor, TensorSpec};

const TOKEN: &str = "a token of some length";

/// A model of one input `x` and one output `y`, both `F32[-1, 2]`, that answers its input, except
/// for a first element of 2.0 (the engine is busy) and 3.0 (it fails).
#[derive(Debug)]
struct Echo(Signature);

impl Echo {
    fn new() -> Echo {
        let spec = |name: &str| TensorSpec {
            name: name.to_owned(),
            datatype: DataType::F32,
            shape: Some(vec![Dim::Dynamic, Dim::Fixed(2)]),
        };
        Echo(Signature {
            inputs: vec![spec("x")],
            outputs: vec![spec("y")],
        })
    }
}

impl LoadedModel for Echo {
    fn signature(&self) -> &Signature {
        &self.0
    }

    fn plan(&self) -> Plan {
        Plan::Optimized
    }

    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
        let first = inputs[0].data();
        let first = match first {
            crate::runtime::TensorData::Fixed(bytes) => {
                f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
            }
            crate::runtime::TensorData::Bytes(_) => 0.0,
        };
        match first {
            2.0 => Err(EngineError::Busy {
                reason: "too many plans compiled in the last minute".to_owned(),
                retry_after_secs: 7,
            }),
            3.0 => Err(EngineError::Run {
                reason: "the engine's own words".to_owned(),
            }),
            _ => Ok(inputs),
        }
    }
}

/// An engine that loads the bytes `echo` as [`Echo`], and nothing else.
#[derive(Debug)]
struct EchoEngine;

impl Engine for EchoEngine {
    fn load_with(
        &self,
        onnx: &[u8],
        _options: &LoadOptions,
    ) -> Result<Arc<dyn LoadedModel>, EngineError> {
        if onnx == b"echo" {
            Ok(Arc::new(Echo::new()))
        } else {
            Err(EngineError::Load {
                reason: "not a model".to_owned(),
            })
        }
    }
}

/// Evidence that is the nonce in hexadecimal; a nonce of zeros makes the TEE fail.
#[derive(Debug)]
struct NonceEvidence;

impl FreshEvidence for NonceEvidence {
    fn evidence_for_nonce(&self, nonce: &[u8]) -> Result<String, FreshEvidenceError> {
        if nonce.len() != 4 {
            return Err(FreshEvidenceError::BadNonce(
                "the nonce must be 4 bytes".to_owned(),
            ));
        }
        if nonce.iter().all(|&b| b == 0) {
            return Err(FreshEvidenceError::Tee("the device is gone".to_owned()));
        }
        Ok(hex::encode(nonce))
    }
}

/// A registry that knows no model.
#[derive(Debug)]
struct EmptyRegistry;

impl Registry for EmptyRegistry {
    fn info(&self, model_id: &str) -> Result<ModelInfo, FetchError> {
        Err(FetchError::Permanent(format!("no model {model_id}")))
    }

    fn open_blob(&self, _url: &str) -> Result<Box<dyn std::io::Read + Send>, FetchError> {
        Err(FetchError::Permanent("no blob".to_owned()))
    }
}

/// A key broker that refuses everything.
#[derive(Debug)]
struct NoBroker;

impl KeyBroker for NoBroker {
    fn transfer(
        &self,
        _url: &str,
        _evidence: &Evidence,
        _public_key: &TeePublicKey,
    ) -> Result<WrappedKey, FetchError> {
        Err(FetchError::Denied("refused".to_owned()))
    }
}

fn puller() -> Arc<Puller> {
    Arc::new(Puller {
        attester: Arc::new(SimAttester::with_measurement([7; 32], [0x42; 48]).unwrap()),
        engine: Arc::new(EchoEngine),
        registry: Arc::new(EmptyRegistry),
        key_broker: Arc::new(NoBroker),
        backoff: Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
            attempts: 1,
        },
        transfer_key: TransferKeyKind::default(),
    })
}

/// A server with the model `echo` loaded from a file, the token, evidence and pulls.
fn server_with(settings: Settings) -> Server {
    let repository = Arc::new(Repository::new(4));
    repository
        .insert("echo", None, Arc::new(Echo::new()), Source::File)
        .unwrap();
    Server::new(
        Arc::new(EchoEngine),
        repository,
        settings,
        AdminToken::new(TOKEN),
        Some(Arc::new(NonceEvidence)),
    )
    .with_puller(puller())
}

fn server() -> Server {
    server_with(Settings::default())
}

/// A server with nothing optional: no token, no evidence, no pulls.
fn bare_server() -> Server {
    Server::new(
        Arc::new(EchoEngine),
        Arc::new(Repository::new(4)),
        Settings::default(),
        None,
        None,
    )
}

fn admin(server: &Server) -> Admin {
    server.authorize(Some(TOKEN)).unwrap()
}

fn rows(values: &[f32]) -> Tensor {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_le_bytes(
        DataType::F32,
        vec![values.len() / 2, 2],
        Zeroizing::new(bytes),
    )
    .unwrap()
}

fn request(input: &str, values: &[f32]) -> InferRequest {
    InferRequest {
        id: Some("r1".to_owned()),
        inputs: vec![(input.to_owned(), rows(values))],
        outputs: Vec::new(),
        binary_output: false,
    }
}

async fn infer(server: &Server, request: InferRequest) -> Result<EncodedResponse, ServerError> {
    let inference = server.begin_inference("echo", None)?;
    server.infer(inference, request).await
}

fn failures(server: &Server, reason: &str) -> String {
    let needle = format!(
        "nv_inference_request_failure{{model=\"echo\",reason=\"{reason}\",version=\"1\"}} "
    );
    server
        .metrics_text()
        .lines()
        .find_map(|line| line.strip_prefix(&needle).map(str::to_owned))
        .unwrap_or_else(|| "0".to_owned())
}

#[test]
fn admin_use_cases_need_the_token() {
    let server = server();
    assert!(server.admin_enabled().is_ok());
    assert!(matches!(
        server.authorize(None),
        Err(ServerError::MissingToken)
    ));
    assert!(matches!(
        server.authorize(Some("a token of some lengtH")),
        Err(ServerError::InvalidToken)
    ));
    assert!(matches!(
        server.authorize(Some("")),
        Err(ServerError::InvalidToken)
    ));
    assert!(server.authorize(Some(TOKEN)).is_ok());
    // Without a token configured, nothing is accepted, not even an empty one.
    let bare = bare_server();
    assert!(matches!(
        bare.admin_enabled(),
        Err(ServerError::AdminDisabled)
    ));
    for presented in [None, Some(""), Some(TOKEN)] {
        assert!(matches!(
            bare.authorize(presented),
            Err(ServerError::AdminDisabled)
        ));
    }
}

#[test]
fn metadata_and_readiness_refuse_unknown_models_and_versions() {
    let server = server();
    assert!(server.ready());
    match server.metadata("echo", None).unwrap() {
        ModelMetadata::Served { model, versions } => {
            assert_eq!((model.name.as_str(), model.version), ("echo", 1));
            assert_eq!(versions, vec![1]);
        }
        other => panic!("{other:?}"),
    }
    assert!(server.model_ready("echo", Some("1")).unwrap());
    assert!(matches!(
        server.metadata("nope", None),
        Err(ServerError::Repository(
            RepositoryError::UnknownModel { .. }
        ))
    ));
    assert!(matches!(
        server.model_ready("echo", Some("2")),
        Err(ServerError::Repository(
            RepositoryError::UnknownVersion { .. }
        ))
    ));
    // A model loading has its state for metadata, and is not ready; a version of it is unknown.
    server
        .repository
        .set_pending("later", Pending::Loading)
        .unwrap();
    assert!(matches!(
        server.metadata("later", None),
        Ok(ModelMetadata::Pending(Summary {
            pending: Some(Pending::Loading),
            ..
        }))
    ));
    assert!(!server.model_ready("later", None).unwrap());
    assert!(matches!(
        server.metadata("later", Some("1")),
        Err(ServerError::Repository(
            RepositoryError::UnknownVersion { .. }
        ))
    ));
    // Added after the server was made: its own readiness only.
    assert!(server.ready());
    assert_eq!(server.models().len(), 2);
}

#[test]
fn a_model_the_server_started_with_and_still_loading_makes_it_unready() {
    let repository = Arc::new(Repository::new(4));
    repository.set_pending("m", Pending::Loading).unwrap();
    let server = Server::new(
        Arc::new(EchoEngine),
        Arc::clone(&repository),
        Settings::default(),
        None,
        None,
    );
    assert!(!server.ready());
    repository
        .insert("m", None, Arc::new(Echo::new()), Source::File)
        .unwrap();
    assert!(server.ready());
}

#[tokio::test]
async fn evidence_refuses_a_server_without_identity_and_bad_nonces() {
    // No identity: refused before the nonce is looked at.
    assert!(matches!(
        bare_server().evidence(None).await,
        Err(ServerError::NoAttestation)
    ));
    let server = server();
    let refused = |e: Result<String, ServerError>| match e {
        Err(ServerError::BadNonce { reason }) => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refused(server.evidence(None).await),
        "the query needs nonce=HEX"
    );
    assert_eq!(
        refused(server.evidence(Some("0g")).await),
        "nonce must be hexadecimal"
    );
    assert_eq!(
        refused(server.evidence(Some("0102")).await),
        "the nonce must be 4 bytes"
    );
    assert!(matches!(
        server.evidence(Some("00000000")).await,
        Err(ServerError::Evidence { reason }) if reason == "the device is gone"
    ));
    assert_eq!(server.evidence(Some("0a0B0c0d")).await.unwrap(), "0a0b0c0d");
}

#[tokio::test]
async fn upload_refuses_bad_targets_models_that_do_not_load_and_taken_versions() {
    let server = server();
    let admin = admin(&server);
    for name in ["", ".hidden", "a/b", &"n".repeat(129)] {
        assert!(
            matches!(
                server.upload_target(name, None),
                Err(ServerError::Repository(RepositoryError::BadName))
            ),
            "{name}"
        );
    }
    for version in ["0", "-1", "x", "1.5", ""] {
        assert!(
            matches!(
                server.upload_target("m", Some(version)),
                Err(ServerError::BadVersion)
            ),
            "{version}"
        );
    }
    let model = |bytes: &[u8]| ZeroizedBytes::new(Zeroizing::new(bytes.to_vec()));
    let target = server.upload_target("m", Some("3")).unwrap();
    assert!(matches!(
        server.upload(&admin, target.clone(), model(b"junk")).await,
        Err(ServerError::Load(EngineError::Load { .. }))
    ));
    let served = server
        .upload(&admin, target.clone(), model(b"echo"))
        .await
        .unwrap();
    assert_eq!((served.version, &served.source), (3, &Source::Upload));
    assert!(matches!(
        server.upload(&admin, target, model(b"echo")).await,
        Err(ServerError::Repository(RepositoryError::VersionExists {
            version: 3,
            ..
        }))
    ));
}

#[tokio::test]
async fn upload_refuses_a_model_past_the_servers_capacity() {
    let server = server();
    let admin = admin(&server);
    for i in 0..3 {
        let target = server.upload_target(&format!("m{i}"), None).unwrap();
        let model = ZeroizedBytes::new(Zeroizing::new(b"echo".to_vec()));
        server.upload(&admin, target, model).await.unwrap();
    }
    let target = server.upload_target("one-too-many", None).unwrap();
    let model = ZeroizedBytes::new(Zeroizing::new(b"echo".to_vec()));
    assert!(matches!(
        server.upload(&admin, target, model).await,
        Err(ServerError::Repository(RepositoryError::Full { .. }))
    ));
}

#[test]
fn pull_refuses_bad_targets_ids_shapes_and_a_pull_under_way() {
    assert!(matches!(
        bare_server().pull_target("m"),
        Err(ServerError::PullsDisabled)
    ));
    let server = server();
    let admin = admin(&server);
    assert!(matches!(
        server.pull_target("../m"),
        Err(ServerError::Repository(RepositoryError::BadName))
    ));
    let pull = |model_id: &str, shapes: &[(&str, Vec<i64>)]| PullRequest {
        model_id: model_id.to_owned(),
        input_shapes: shapes
            .iter()
            .map(|(name, dims)| ((*name).to_owned(), dims.clone()))
            .collect(),
    };
    let refused = |request: PullRequest| {
        let target = server.pull_target("m").unwrap();
        server.pull(&admin, target, request).unwrap_err()
    };
    assert!(matches!(
        refused(pull("no/slash", &[])),
        ServerError::BadModelId
    ));
    let too_many: Vec<(String, Vec<i64>)> = (0..=MAX_SHAPED_INPUTS)
        .map(|i| (format!("x{i}"), vec![1]))
        .collect();
    let too_many: Vec<(&str, Vec<i64>)> = too_many
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect();
    for (shapes, says) in [
        (too_many, "names 65 inputs"),
        (vec![("x", vec![1; MAX_SHAPE_RANK + 1])], "17 dimensions"),
        (vec![("x", vec![1, -2])], "has -2"),
    ] {
        match refused(pull("m1", &shapes)) {
            ServerError::BadInputShapes { reason } => assert!(reason.contains(says), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
    // Nothing was started by a refusal.
    assert!(server.repository.summary("m").is_none());
    server
        .repository
        .set_pending("busy", Pending::Loading)
        .unwrap();
    let target = server.pull_target("busy").unwrap();
    assert!(matches!(
        server.pull(&admin, target, pull("m1", &[])),
        Err(ServerError::PullInProgress { name }) if name == "busy"
    ));
}

#[test]
fn a_pull_started_shows_as_loading_or_failed() {
    let server = server();
    let target = server.pull_target("pulled").unwrap();
    let started = server
        .pull(&admin(&server), target, pull_request("m1"))
        .unwrap();
    assert_eq!(
        started,
        PullStarted {
            name: "pulled".to_owned(),
            model_id: "m1".to_owned(),
        }
    );
    // The registry knows no model: the pull fails for good, and says why.
    assert!(matches!(
        server.metadata("pulled", None),
        Ok(ModelMetadata::Pending(_))
    ));
    assert!(!server.model_ready("pulled", None).unwrap());
}

fn pull_request(model_id: &str) -> PullRequest {
    PullRequest {
        model_id: model_id.to_owned(),
        input_shapes: BTreeMap::new(),
    }
}

#[test]
fn delete_refuses_an_unknown_model() {
    let server = server();
    let admin = admin(&server);
    assert!(matches!(
        server.delete(&admin, "nope"),
        Err(ServerError::Repository(
            RepositoryError::UnknownModel { .. }
        ))
    ));
    server.delete(&admin, "echo").unwrap();
    assert!(matches!(
        server.delete(&admin, "echo"),
        Err(ServerError::Repository(
            RepositoryError::UnknownModel { .. }
        ))
    ));
}

#[tokio::test]
async fn inference_answers_and_counts_its_success() {
    let server = server();
    let encoded = infer(&server, request("x", &[1.0, 0.5])).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&encoded.body).unwrap();
    assert_eq!(json["id"], "r1");
    assert_eq!(json["outputs"][0]["name"], "y");
    assert_eq!(json["outputs"][0]["data"], serde_json::json!([1.0, 0.5]));
    assert!(server
        .metrics_text()
        .contains("nv_inference_request_success{model=\"echo\",version=\"1\"} 1"));
}

#[tokio::test]
async fn inference_refuses_unknown_models_outputs_and_inputs_and_counts_the_refusals() {
    let server = server();
    assert!(matches!(
        server.begin_inference("nope", None),
        Err(ServerError::Repository(
            RepositoryError::UnknownModel { .. }
        ))
    ));
    assert!(matches!(
        server.begin_inference("echo", Some("9")),
        Err(ServerError::Repository(
            RepositoryError::UnknownVersion { .. }
        ))
    ));
    let mut asks_for_z = request("x", &[1.0, 0.5]);
    asks_for_z.outputs = vec![RequestedOutput {
        name: "z".to_owned(),
        binary: None,
    }];
    match infer(&server, asks_for_z).await {
        Err(ServerError::UnknownOutput { name, outputs }) => {
            assert_eq!((name.as_str(), outputs.as_str()), ("z", "y"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        infer(&server, request("w", &[1.0, 0.5])).await,
        Err(ServerError::Input(_))
    ));
    // A refusal found while the body is read is counted the same way.
    let inference = server.begin_inference("echo", None).unwrap();
    let e = server.refuse(&inference, ServerError::bad_request("bad body"));
    assert!(matches!(e, ServerError::BadRequest { .. }));
    assert_eq!(failures(&server, "REJECTED"), "3");
}

#[tokio::test]
async fn inference_refuses_outputs_over_the_limits() {
    let server = server_with(Settings {
        max_json_response: 64,
        ..Settings::default()
    });
    assert!(matches!(
        infer(&server, request("x", &[1.0; 8])).await,
        Err(ServerError::OutputLimit(_))
    ));
    assert_eq!(failures(&server, "REJECTED"), "1");
}

#[tokio::test]
async fn inference_sorts_the_engines_refusals_from_its_failures() {
    let server = server();
    assert!(matches!(
        infer(&server, request("x", &[2.0, 0.0])).await,
        Err(ServerError::Engine(EngineError::Busy {
            retry_after_secs: 7,
            ..
        }))
    ));
    assert!(matches!(
        infer(&server, request("x", &[3.0, 0.0])).await,
        Err(ServerError::Engine(EngineError::Run { .. }))
    ));
    assert_eq!(failures(&server, "REJECTED"), "1");
    assert_eq!(failures(&server, "BACKEND"), "1");
}

#[tokio::test]
async fn inference_past_the_admission_limit_is_told_to_come_back() {
    let server = server_with(Settings {
        workers: 1,
        queue: 0,
        retry_after_secs: 3,
        ..Settings::default()
    });
    let held = Arc::clone(&server.admitted).try_acquire_owned().unwrap();
    assert!(matches!(
        infer(&server, request("x", &[1.0, 0.5])).await,
        Err(ServerError::Busy {
            retry_after_secs: 3
        })
    ));
    assert_eq!(failures(&server, "QUEUE_FULL"), "1");
    drop(held);
    assert!(infer(&server, request("x", &[1.0, 0.5])).await.is_ok());
}

#[tokio::test]
async fn inference_on_closed_workers_is_refused() {
    let server = server();
    server.running.close();
    assert!(matches!(
        infer(&server, request("x", &[1.0, 0.5])).await,
        Err(ServerError::ShuttingDown)
    ));
    assert_eq!(failures(&server, "QUEUE_FULL"), "1");
}
