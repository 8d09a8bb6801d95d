//! The server's bounds on what a request can make it do, in process: outputs checked before they
//! are encoded, the model load budget, readiness that only configured models change, and framing
//! headers that must be given once.

use std::sync::Arc;
use std::time::Duration;

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::Evidence;
use adyton_envelope::wrap::{TeePublicKey, TransferKeyKind, WrappedKey};
use adyton_server::http::{router, AdminToken, ServerState, Settings};
use adyton_server::protocol::Limits;
use adyton_server::pull::{Backoff, FetchError, KeyBroker, ModelInfo, Puller, Registry};
use adyton_server::repository::{Pending, Repository, Source};
use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::{DataType, Engine, EngineError, Tensor};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::onnx;
use crate::support::{call, get, model, Answer};

const TOKEN: &str = "correct horse battery staple";

fn state(engine: TractEngine, settings: Settings) -> ServerState {
    let engine: Arc<dyn Engine> = Arc::new(engine);
    let repository = Arc::new(Repository::new(8));
    let outer = engine.load(&onnx::outer_sum()).unwrap();
    repository
        .insert("outer", None, outer, Source::File)
        .unwrap();
    ServerState::new(engine, repository, settings, AdminToken::new(TOKEN), None)
}

fn app(settings: Settings) -> Router {
    router(Arc::new(state(TractEngine::new(), settings)))
}

/// An infer request to `outer` for an output of `shape`, with request-wide `parameters`.
fn outer_request([n, m]: [usize; 2], parameters: Value) -> Request<Body> {
    let body = json!({
        "parameters": parameters,
        "inputs": [
            {"name": "a", "shape": [n, 1], "datatype": "FP32", "data": vec![0.25; n]},
            {"name": "b", "shape": [1, m], "datatype": "FP32", "data": vec![0.25; m]},
        ],
    });
    Request::post("/v2/models/outer/infer")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

#[tokio::test]
async fn an_output_over_the_element_limit_is_refused_before_encoding() {
    let settings = Settings {
        limits: Limits {
            max_elements: 1000,
            max_total_elements: 4000,
        },
        ..Settings::default()
    };
    let app = app(settings);
    let small = call(&app, outer_request([2, 3], json!({}))).await;
    assert_eq!(small.status, StatusCode::OK);
    assert_eq!(small.json()["outputs"][0]["data"], json!(vec![0.5; 6]));
    // Inputs of 200 elements ask for 10,000: the output is refused,
    // in JSON and in binary alike.
    for parameters in [json!({}), json!({"binary_data_output": true})] {
        let big = call(&app, outer_request([100, 100], parameters)).await;
        assert_eq!(big.status, StatusCode::UNPROCESSABLE_ENTITY);
        let e = big.error();
        assert!(
            e.contains("output 'y'") && e.contains("10000 elements") && e.contains("1000"),
            "{e}"
        );
        assert!(e.contains("max_tensor_elements"), "{e}");
    }
    let metrics = String::from_utf8(get(&app, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("nv_inference_request_failure"),
        "{metrics}"
    );
}

#[test]
fn the_engine_refuses_an_output_over_the_element_limit_before_copying_it_out() {
    let model = TractEngine::new().load(&onnx::outer_sum()).unwrap();
    let vector = |shape: Vec<usize>| {
        let bytes = vec![0u8; 4 * shape.iter().product::<usize>()];
        Tensor::from_le_bytes(DataType::F32, shape, Zeroizing::new(bytes)).unwrap()
    };
    let inputs = || vec![vector(vec![100, 1]), vector(vec![1, 100])];
    let e = model.run_bounded(inputs(), 9999).unwrap_err();
    assert!(
        matches!(&e, EngineError::OutputTooLarge { name, elements: 10_000, limit: 9999 } if name == "y"),
        "{e:?}"
    );
    assert_eq!(
        model.run_bounded(inputs(), 10_000).unwrap()[0].len(),
        10_000
    );
}

#[tokio::test]
async fn outputs_over_the_byte_limit_are_refused() {
    let settings = Settings {
        max_infer_body: 20_000,
        ..Settings::default()
    };
    let app = app(settings);
    // 10,000 FP32 elements take 40,000 bytes as binary data.
    let big = call(
        &app,
        outer_request([100, 100], json!({"binary_data_output": true})),
    )
    .await;
    assert_eq!(big.status, StatusCode::UNPROCESSABLE_ENTITY);
    let e = big.error();
    assert!(
        e.contains("40000 bytes") && e.contains("'y'") && e.contains("max_request_bytes"),
        "{e}"
    );
    let fits = call(
        &app,
        outer_request([50, 100], json!({"binary_data_output": true})),
    )
    .await;
    assert_eq!(fits.status, StatusCode::OK);
    assert_eq!(fits.body.len() - header_length(&fits), 20_000);
}

fn header_length(answer: &Answer) -> usize {
    answer.headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_json_response_over_its_bound_is_refused_with_the_binary_extension_suggested() {
    let settings = Settings {
        max_json_response: 64 << 10,
        ..Settings::default()
    };
    let app = app(settings);
    // 10,000 FP32 elements could take 200,000 bytes as JSON.
    let json_answer = call(&app, outer_request([100, 100], json!({}))).await;
    assert_eq!(json_answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    let e = json_answer.error();
    assert!(
        e.contains("max_json_response_bytes")
            && e.contains("65536")
            && e.contains("binary_data_output")
            && e.contains("\"binary_data\": true"),
        "{e}"
    );
    // The same output in binary is sent: the bound is on JSON, not on the tensor.
    let binary = call(
        &app,
        outer_request([100, 100], json!({"binary_data_output": true})),
    )
    .await;
    assert_eq!(binary.status, StatusCode::OK);
    assert_eq!(binary.body.len() - header_length(&binary), 40_000);
    // A JSON response under the bound is sent, and is under it.
    let fits = call(&app, outer_request([30, 100], json!({}))).await;
    assert_eq!(fits.status, StatusCode::OK);
    assert!(fits.body.len() <= 64 << 10);
}

#[test]
fn the_constant_of_shape_model_is_refused_by_the_load_budget_at_once() {
    let bytes = onnx::constant_of_shape(16384);
    assert!(bytes.len() < 200, "{} bytes", bytes.len());
    let engine = TractEngine::new().with_load_budget(512 << 20);
    let Err(e) = engine.load(&bytes) else {
        panic!("a model of 1 GiB of constants loaded under a budget of 512 MiB");
    };
    assert!(matches!(e, EngineError::OverBudget { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "model constants need 1.0 GiB, over the load budget of 512.0 MiB (the largest: node 'y' \
         (ConstantOfShape) [16384, 16384] FLOAT, 1.0 GiB)"
    );
    // A small one of the same graph loads under the same budget, as do the test models.
    engine.load(&onnx::constant_of_shape(64)).unwrap();
    engine.load(&model("add")).unwrap();
    engine.load(&model("dynamic_batch")).unwrap();
}

#[tokio::test]
async fn an_upload_over_the_load_budget_is_refused_with_the_reason() {
    let app = router(Arc::new(state(
        TractEngine::new().with_load_budget(512 << 20),
        Settings::default(),
    )));
    let upload = |name: &str, bytes: Vec<u8>| {
        Request::post(format!("/adyton/v1/models/{name}"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .body(Body::from(bytes))
            .unwrap()
    };
    let refused = call(&app, upload("big", onnx::constant_of_shape(16384))).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let e = refused.error();
    assert!(
        e.contains("model constants need 1.0 GiB, over the load budget of 512.0 MiB"),
        "{e}"
    );
    // The failed upload leaves no trace: the server stays ready, the name unknown.
    assert_eq!(get(&app, "/v2/health/ready").await.status, StatusCode::OK);
    assert_eq!(
        get(&app, "/v2/models/big/ready").await.status,
        StatusCode::NOT_FOUND
    );
    let accepted = call(&app, upload("add", model("add"))).await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.error());
}

/// A registry that knows no model.
#[derive(Debug)]
struct EmptyRegistry;

impl Registry for EmptyRegistry {
    fn info(&self, model_id: &str) -> Result<ModelInfo, FetchError> {
        Err(FetchError::Permanent(format!(
            "HTTP 404: no model {model_id}"
        )))
    }

    fn open_blob(&self, _url: &str) -> Result<Box<dyn std::io::Read + Send>, FetchError> {
        Err(FetchError::Permanent("HTTP 404".into()))
    }
}

/// A key broker that refuses everything (never reached here).
#[derive(Debug)]
struct NoBroker;

impl KeyBroker for NoBroker {
    fn transfer(
        &self,
        _url: &str,
        _evidence: &Evidence,
        _public_key: &TeePublicKey,
    ) -> Result<WrappedKey, FetchError> {
        Err(FetchError::Denied("HTTP 403".into()))
    }
}

fn puller(engine: Arc<dyn Engine>) -> Arc<Puller> {
    Arc::new(Puller {
        attester: Arc::new(SimAttester::with_measurement([7; 32], [0x42; 48]).unwrap()),
        engine,
        registry: Arc::new(EmptyRegistry),
        key_broker: Arc::new(NoBroker),
        backoff: Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
            attempts: 2,
        },
        transfer_key: TransferKeyKind::default(),
    })
}

/// Waits until a model is no longer loading, and returns its metadata.
async fn settled(app: &Router, name: &str) -> Value {
    loop {
        let meta = get(app, &format!("/v2/models/{name}")).await.json();
        if meta["state"] != "LOADING" {
            return meta;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_failed_pull_over_the_api_changes_only_that_models_readiness() {
    let state = state(TractEngine::new(), Settings::default());
    let puller = puller(Arc::clone(&state.engine));
    let app = router(Arc::new(state.with_puller(puller)));
    assert_eq!(get(&app, "/v2/health/ready").await.status, StatusCode::OK);
    let pull = call(
        &app,
        Request::post("/adyton/v1/models/unknown:pull")
            .header("Authorization", format!("Bearer {TOKEN}"))
            .body(Body::from(r#"{"model_id": "no-such-model"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(pull.status, StatusCode::ACCEPTED);
    let meta = settled(&app, "unknown").await;
    assert_eq!(meta["state"], "UNAVAILABLE");
    assert!(
        meta["reason"].as_str().unwrap().contains("HTTP 404"),
        "{meta}"
    );
    // The model is not ready; the server, whose configured model serves, is.
    let model_ready = get(&app, "/v2/models/unknown/ready").await;
    assert_eq!(model_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(model_ready.json()["ready"], false);
    let ready = get(&app, "/v2/health/ready").await;
    assert_eq!(
        (ready.status, ready.json()),
        (StatusCode::OK, json!({"ready": true}))
    );
    let listed = get(&app, "/v2/models").await.json();
    assert_eq!(listed["models"].as_array().unwrap().len(), 2, "{listed}");
}

#[tokio::test]
async fn a_configured_model_that_failed_makes_the_server_unready() {
    let engine: Arc<dyn Engine> = Arc::new(TractEngine::new());
    let repository = Arc::new(Repository::new(8));
    // As `serve` does for a pull configured at start that failed.
    repository
        .set_pending(
            "configured",
            Pending::Failed {
                reason: "HTTP 404: no model m1".into(),
            },
        )
        .unwrap();
    let state = ServerState::new(
        engine,
        Arc::clone(&repository),
        Settings::default(),
        AdminToken::new(TOKEN),
        None,
    );
    let app = router(Arc::new(state));
    let ready = get(&app, "/v2/health/ready").await;
    assert_eq!(
        (ready.status, ready.json()),
        (StatusCode::SERVICE_UNAVAILABLE, json!({"ready": false}))
    );
    // Once it loads (a retried pull, say), the server is ready.
    let add = TractEngine::new().load(&model("add")).unwrap();
    repository
        .insert("configured", None, add, Source::File)
        .unwrap();
    assert_eq!(get(&app, "/v2/health/ready").await.status, StatusCode::OK);
}

fn binary_request(header_lengths: &[&str], content_lengths: &[&str]) -> Request<Body> {
    let header = br#"{"inputs":[{"name":"a","shape":[1,1],"datatype":"FP32","parameters":{"binary_data_size":4}},{"name":"b","shape":[1,1],"datatype":"FP32","data":[1]}]}"#;
    let mut body = header.to_vec();
    body.extend_from_slice(&1.5f32.to_le_bytes());
    let mut request = Request::post("/v2/models/outer/infer");
    for value in header_lengths {
        let value = value.replace("N", &header.len().to_string());
        request = request.header("Inference-Header-Content-Length", value);
    }
    for value in content_lengths {
        let value = value.replace("N", &body.len().to_string());
        request = request.header("Content-Length", value);
    }
    request.body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn framing_headers_are_given_once_and_hold_one_byte_count() {
    let app = app(Settings::default());
    let once = call(&app, binary_request(&["N"], &["N"])).await;
    assert_eq!(once.status, StatusCode::OK, "{}", once.error());
    assert_eq!(once.json()["outputs"][0]["data"], json!([2.5]));
    for (header_lengths, content_lengths, named) in [
        (
            &["N", "N"][..],
            &["N"][..],
            "Inference-Header-Content-Length",
        ),
        (&["N", "0"], &[], "Inference-Header-Content-Length"),
        (&["N, N"], &[], "Inference-Header-Content-Length"),
        (&["+N"], &[], "Inference-Header-Content-Length"),
        (&["N N"], &[], "Inference-Header-Content-Length"),
        (&[""], &[], "Inference-Header-Content-Length"),
        (&["N"], &["N", "N"], "Content-Length"),
        (&["N"], &["N, N"], "Content-Length"),
    ] {
        let refused = call(&app, binary_request(header_lengths, content_lengths)).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{header_lengths:?} {content_lengths:?}"
        );
        let e = refused.error();
        assert!(
            e.starts_with(&format!("the {named} header")),
            "{header_lengths:?} {content_lengths:?}: {e}"
        );
    }
}

#[tokio::test]
async fn a_duplicated_authorization_header_is_refused() {
    let app = app(Settings::default());
    let request = Request::delete("/adyton/v1/models/outer")
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Authorization", "Bearer wrong")
        .body(Body::empty())
        .unwrap();
    let refused = call(&app, request).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused
            .error()
            .contains("Authorization header is given more than once"),
        "{}",
        refused.error()
    );
    assert_eq!(
        get(&app, "/v2/models/outer/ready").await.status,
        StatusCode::OK
    );
}
