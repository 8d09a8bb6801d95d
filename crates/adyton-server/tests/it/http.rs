//! The HTTP API in process (no sockets: the router is called directly), with the tract engine and
//! the test models: the Open Inference Protocol over JSON and binary tensors, bad input, upload and
//! delete, admission control, and metrics.

use std::sync::{Arc, Barrier};

use adyton_server::batching::{BatchOptions, PreferredBatchSizes};
use adyton_server::http::{router, AdminToken, ServerState, Settings};
use adyton_server::repository::{Pending, Repository, Source};
use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::{
    DataType, Dim, Engine, EngineError, LoadedModel, Plan, PlanStats, Signature, Tensor,
    TensorData, TensorSpec,
};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};

use crate::support::{call, get, model, Answer};

const TOKEN: &str = "correct horse battery staple";

fn state_with(models: &[(&str, &str)], settings: Settings) -> Arc<ServerState> {
    let engine: Arc<dyn Engine> = Arc::new(TractEngine::new());
    let repository = Arc::new(Repository::new(32));
    for (name, file) in models {
        let loaded = engine.load(&model(file)).unwrap();
        repository.insert(name, None, loaded, Source::File).unwrap();
    }
    Arc::new(ServerState::new(
        engine,
        repository,
        settings,
        AdminToken::new(TOKEN),
        None,
    ))
}

fn app(models: &[(&str, &str)]) -> Router {
    router(state_with(models, Settings::default()))
}

/// A POST with no `Content-Type`, as tritonclient sends it.
async fn post(app: &Router, path: &str, body: impl Into<Body>) -> Answer {
    call(app, Request::post(path).body(body.into()).unwrap()).await
}

async fn post_binary(app: &Router, path: &str, header: &Value, binary: &[u8]) -> Answer {
    let header = serde_json::to_vec(header).unwrap();
    let mut body = header.clone();
    body.extend_from_slice(binary);
    let request = Request::post(path)
        .header("Inference-Header-Content-Length", header.len())
        .body(Body::from(body))
        .unwrap();
    call(app, request).await
}

/// Splits a binary-extension response into its JSON part and binary part.
fn split_binary(answer: &Answer) -> (Value, Vec<u8>) {
    let n: usize = answer.headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (
        serde_json::from_slice(&answer.body[..n]).unwrap(),
        answer.body[n..].to_vec(),
    )
}

#[tokio::test]
async fn health_and_server_metadata_have_json_bodies() {
    let app = app(&[("add", "add")]);
    let live = get(&app, "/v2/health/live").await;
    assert_eq!(
        (live.status, live.json()),
        (StatusCode::OK, json!({"live": true}))
    );
    let ready = get(&app, "/v2/health/ready").await;
    assert_eq!(
        (ready.status, ready.json()),
        (StatusCode::OK, json!({"ready": true}))
    );
    let meta = get(&app, "/v2").await.json();
    assert_eq!(meta["name"], "adyton");
    let extensions: Vec<&str> = meta["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(extensions.contains(&"binary_tensor_data"), "{extensions:?}");
    let unknown = get(&app, "/v3/nothing").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(!unknown.error().is_empty());
}

#[tokio::test]
async fn readiness_waits_for_every_model_and_shows_failures() {
    let state = state_with(&[("add", "add")], Settings::default());
    // A pull configured at start, as `serve` sets it up (one over the API does not count:
    // `limits::a_failed_pull_over_the_api_changes_only_that_models_readiness`).
    state
        .repository
        .set_pending("pulled", Pending::Loading)
        .unwrap();
    state.repository.mark_configured();
    let app = router(Arc::clone(&state));
    let ready = get(&app, "/v2/health/ready").await;
    assert_eq!(
        (ready.status, ready.json()),
        (StatusCode::SERVICE_UNAVAILABLE, json!({"ready": false}))
    );
    let model_ready = get(&app, "/v2/models/pulled/ready").await;
    assert_eq!(model_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(model_ready.json()["ready"], false);
    state
        .repository
        .set_pending(
            "pulled",
            Pending::Failed {
                reason: "the key broker denied the key".into(),
            },
        )
        .unwrap();
    let meta = get(&app, "/v2/models/pulled").await.json();
    assert_eq!(meta["state"], "UNAVAILABLE");
    assert!(meta["reason"].as_str().unwrap().contains("denied"));
    let infer = post(&app, "/v2/models/pulled/infer", "{}").await;
    assert_eq!(infer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(infer.error().contains("denied"), "{}", infer.error());
    // The other model serves on.
    assert_eq!(
        get(&app, "/v2/models/add/ready").await.json()["ready"],
        true
    );
}

#[tokio::test]
async fn model_metadata_comes_from_the_graph() {
    let app = app(&[("dyn", "dynamic_batch"), ("multi", "multi_io")]);
    let meta = get(&app, "/v2/models/dyn").await;
    assert_eq!(meta.status, StatusCode::OK);
    let meta = meta.json();
    assert_eq!(meta["name"], "dyn");
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(
        meta["inputs"],
        json!([{"name": "x", "datatype": "FP32", "shape": [-1, 4]}])
    );
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 2]));
    let versioned = get(&app, "/v2/models/multi/versions/1").await.json();
    assert_eq!(
        versioned["inputs"][1],
        json!({"name": "y", "datatype": "INT64", "shape": [3]})
    );
    assert_eq!(
        get(&app, "/v2/models/multi/versions/2").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, "/v2/models/nope").await.status,
        StatusCode::NOT_FOUND
    );
    let list = get(&app, "/v2/models").await.json();
    let names: Vec<&str> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dyn", "multi"]);
}

#[tokio::test]
async fn json_infer_accepts_flat_and_nested_data_and_echoes_the_id() {
    let app = app(&[("add", "add")]);
    for data in [json!([[1.0, 2.0, 3.0]]), json!([1.0, 2.0, 3.0])] {
        let request = json!({
            "id": "req-42",
            "some_future_field": {"ignored": true},
            "inputs": [
                {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": data},
                {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [10, 20, 30.5]},
            ],
        });
        let answer = post(&app, "/v2/models/add/infer", request.to_string()).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let out = answer.json();
        assert_eq!(out["id"], "req-42");
        assert_eq!(out["model_name"], "add");
        assert_eq!(out["model_version"], "1");
        assert_eq!(
            out["outputs"],
            json!([{"name": "sum", "datatype": "FP32", "shape": [1, 3], "data": [11.0, 22.0, 33.5]}])
        );
        assert!(answer.headers.contains_key("x-request-id"));
    }
}

#[tokio::test]
async fn binary_infer_with_binary_and_json_outputs() {
    let app = app(&[("multi", "multi_io")]);
    let x: Vec<u8> = [1.0f32, -2.0, 3.5, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let y: Vec<u8> = [7i64, -8, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({
        "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": x.len()}},
            {"name": "y", "shape": [3], "datatype": "INT64", "parameters": {"binary_data_size": y.len()}},
        ],
        "outputs": [
            {"name": "y_plus_1", "parameters": {"binary_data": true}},
            {"name": "x_times_2", "parameters": {"binary_data": false}},
        ],
    });
    let answer = post_binary(&app, "/v2/models/multi/infer", &header, &[x, y].concat()).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let (json_part, binary) = split_binary(&answer);
    let outputs = json_part["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    assert_eq!(outputs[0]["name"], "y_plus_1");
    assert_eq!(outputs[0]["parameters"]["binary_data_size"], 24);
    let y1: Vec<i64> = binary
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(y1, [8, -7, 10]);
    assert_eq!(outputs[1]["data"], json!([2.0, -4.0, 7.0, 8.0]));

    // binary_data_output for every output.
    let header = json!({
        "parameters": {"binary_data_output": true},
        "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 1, 1, 1]},
            {"name": "y", "shape": [3], "datatype": "INT64", "data": [0, 0, 0]},
        ],
    });
    let answer = post(&app, "/v2/models/multi/infer", header.to_string()).await;
    let (json_part, binary) = split_binary(&answer);
    let sizes: usize = json_part["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["parameters"]["binary_data_size"].as_u64().unwrap() as usize)
        .sum();
    assert_eq!(sizes, binary.len());
}

/// The JSON elements and little-endian bytes of a 2x3 identity test for each type.
fn sample(datatype: DataType) -> (Value, Vec<u8>) {
    match datatype {
        DataType::Bool => (
            json!([true, false, true, true, false, false]),
            vec![1, 0, 1, 1, 0, 0],
        ),
        DataType::U8 => (json!([0, 1, 2, 3, 254, 255]), vec![0, 1, 2, 3, 254, 255]),
        DataType::I8 => (
            json!([-128, -1, 0, 1, 2, 127]),
            [-128i8, -1, 0, 1, 2, 127]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DataType::U16 => (
            json!([0, 1, 2, 3, 4, 65535]),
            [0u16, 1, 2, 3, 4, 65535]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DataType::I16 => (
            json!([-32768, -1, 0, 1, 2, 32767]),
            [-32768i16, -1, 0, 1, 2, 32767]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DataType::U32 => (
            json!([0, 1, 2, 3, 4, 4294967295u32]),
            [0u32, 1, 2, 3, 4, u32::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DataType::I32 => (
            json!([-2147483648i32, -1, 0, 1, 2, 2147483647]),
            [i32::MIN, -1, 0, 1, 2, i32::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DataType::U64 => (
            json!([0, 1, 2, 3, 4, u64::MAX]),
            [0u64, 1, 2, 3, 4, u64::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DataType::I64 => (
            json!([i64::MIN, -1, 0, 1, 2, i64::MAX]),
            [i64::MIN, -1, 0, 1, 2, i64::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DataType::F16 => (
            json!([0.5, -1.0, 2.0, 0.0, 1024.0, -0.25]),
            [0.5f32, -1.0, 2.0, 0.0, 1024.0, -0.25]
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        ),
        DataType::F32 => (
            json!([0.5, -1.0, 2.0, 0.0, 1e30, -0.25]),
            [0.5f32, -1.0, 2.0, 0.0, 1e30, -0.25]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DataType::F64 => (
            json!([0.5, -1.0, 2.0, 0.0, 1e300, -0.25]),
            [0.5f64, -1.0, 2.0, 0.0, 1e300, -0.25]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DataType::Bytes => unreachable!(),
    }
}

fn identity_file(datatype: DataType) -> &'static str {
    match datatype {
        DataType::Bool => "identity_bool",
        DataType::U8 => "identity_uint8",
        DataType::U16 => "identity_uint16",
        DataType::U32 => "identity_uint32",
        DataType::U64 => "identity_uint64",
        DataType::I8 => "identity_int8",
        DataType::I16 => "identity_int16",
        DataType::I32 => "identity_int32",
        DataType::I64 => "identity_int64",
        DataType::F16 => "identity_fp16",
        DataType::F32 => "identity_fp32",
        DataType::F64 => "identity_fp64",
        DataType::Bytes => "identity_string",
    }
}

#[tokio::test]
async fn every_data_type_round_trips_over_json_and_binary() {
    let fixed: Vec<DataType> = DataType::ALL
        .into_iter()
        .filter(|d| *d != DataType::Bytes)
        .collect();
    let names: Vec<(String, &str)> = fixed
        .iter()
        .map(|d| (d.as_str().to_lowercase(), identity_file(*d)))
        .collect();
    let models: Vec<(&str, &str)> = names.iter().map(|(n, f)| (n.as_str(), *f)).collect();
    let app = app(&models);
    for datatype in fixed {
        let name = datatype.as_str().to_lowercase();
        let (elements, bytes) = sample(datatype);
        let path = format!("/v2/models/{name}/infer");
        let request = json!({"inputs": [{"name": "x", "shape": [2, 3], "datatype": datatype.as_str(), "data": elements}]});
        let answer = post(&app, &path, request.to_string()).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{datatype}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let out = &answer.json()["outputs"][0];
        assert_eq!(out["datatype"], datatype.as_str());
        assert_eq!(out["shape"], json!([2, 3]));
        assert_eq!(out["data"], elements, "{datatype} over JSON");

        let header = json!({
            "inputs": [{"name": "x", "shape": [2, 3], "datatype": datatype.as_str(), "parameters": {"binary_data_size": bytes.len()}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": true}}],
        });
        let answer = post_binary(&app, &path, &header, &bytes).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{datatype}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let (_, binary) = split_binary(&answer);
        assert_eq!(binary, bytes, "{datatype} over binary");
    }
}

#[tokio::test]
async fn bytes_are_refused_by_a_model_that_takes_numbers() {
    let app = app(&[("add", "add")]);
    let request = json!({"inputs": [
        {"name": "a", "shape": [1, 3], "datatype": "BYTES", "data": ["x", "y", "z"]},
        {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
    ]});
    let answer = post(&app, "/v2/models/add/infer", request.to_string()).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.error().contains("'a'") && answer.error().contains("FP32"),
        "{}",
        answer.error()
    );
}

#[tokio::test]
async fn bad_inputs_are_400s_that_name_the_input_and_the_server_serves_on() {
    let app = app(&[("add", "add")]);
    let b = json!({"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]});
    let cases = [
        (
            json!({"inputs": [{"name": "a", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}, b]}),
            "'a' must be FP32",
        ),
        (
            json!({"inputs": [{"name": "a", "shape": [3, 1], "datatype": "FP32", "data": [1, 2, 3]}, b]}),
            "'a' dimension 0",
        ),
        (
            json!({"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}, b]}),
            "'a' must have 2 dimensions",
        ),
        (json!({"inputs": [b]}), "'a' is missing"),
        (
            json!({"inputs": [{"name": "c", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}, b]}),
            "'c' is not an input",
        ),
        (
            json!({"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}, b]}),
            "'a'",
        ),
        (
            json!({"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}, b], "outputs": [{"name": "nope"}]}),
            "output 'nope'",
        ),
    ];
    for (request, needle) in cases {
        let answer = post(&app, "/v2/models/add/infer", request.to_string()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{request}");
        assert!(
            answer.error().contains(needle),
            "{needle}: {}",
            answer.error()
        );
    }
    for garbage in [&b"{\"inputs\": [{\"name\""[..], b"not json", b""] {
        let answer = post(&app, "/v2/models/add/infer", garbage.to_vec()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{garbage:?}");
    }
    // A binary length that disagrees with the header.
    let header = json!({"inputs": [
        {"name": "a", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
        b,
    ]});
    let short = post_binary(&app, "/v2/models/add/infer", &header, &[0u8; 8]).await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    assert!(
        short.error().contains("binary_data_size"),
        "{}",
        short.error()
    );
    let long = post_binary(&app, "/v2/models/add/infer", &header, &[0u8; 16]).await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST);
    let bad_header = call(
        &app,
        Request::post("/v2/models/add/infer")
            .header("Inference-Header-Content-Length", "many")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(bad_header.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        post(&app, "/v2/models/nope/infer", "{}").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(&app, "/v2/models/add/versions/9/infer", "{}")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Still serving.
    let ok = json!({"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}, b]});
    assert_eq!(
        post(&app, "/v2/models/add/infer", ok.to_string())
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn oversized_bodies_and_tensors_are_refused() {
    let settings = Settings {
        max_infer_body: 1024,
        ..Settings::default()
    };
    let app = router(state_with(&[("add", "add")], settings));
    let big = post(&app, "/v2/models/add/infer", vec![b' '; 2048]).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(big.error().contains("1024"), "{}", big.error());
    let app = self::app(&[("dyn", "dynamic_batch")]);
    let huge =
        json!({"inputs": [{"name": "x", "shape": [1 << 30, 4], "datatype": "FP32", "data": [1]}]});
    let answer = post(&app, "/v2/models/dyn/infer", huge.to_string()).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.error().contains("elements"), "{}", answer.error());
}

#[tokio::test]
async fn dynamic_batches_run() {
    let app = app(&[("dyn", "dynamic_batch")]);
    for batch in [1usize, 3, 8] {
        let x: Vec<f32> = (0..batch * 4).map(|i| i as f32).collect();
        let request =
            json!({"inputs": [{"name": "x", "shape": [batch, 4], "datatype": "FP32", "data": x}]});
        let answer = post(&app, "/v2/models/dyn/infer", request.to_string()).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let out = &answer.json()["outputs"][0];
        assert_eq!(out["shape"], json!([batch, 2]));
        // y = x @ [[1,0],[0,1],[1,1],[2,-1]] + [0.5, -1]
        let row0 = [x[0] + x[2] + 2.0 * x[3] + 0.5, x[1] + x[2] - x[3] - 1.0];
        assert_eq!(out["data"][0].as_f64().unwrap() as f32, row0[0]);
        assert_eq!(out["data"][1].as_f64().unwrap() as f32, row0[1]);
    }
}

fn bearer(request: axum::http::request::Builder, token: &str) -> axum::http::request::Builder {
    request.header("Authorization", format!("Bearer {token}"))
}

#[tokio::test]
async fn upload_and_delete_need_the_token() {
    let app = app(&[]);
    let add = model("add");
    let anonymous = post(&app, "/adyton/v1/models/mine", add.clone()).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let wrong = call(
        &app,
        bearer(Request::post("/adyton/v1/models/mine"), "guess")
            .body(Body::from(add.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(&app, "/v2/models/mine").await.status,
        StatusCode::NOT_FOUND
    );

    let created = call(
        &app,
        bearer(Request::post("/adyton/v1/models/mine"), TOKEN)
            .body(Body::from(add.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(created.json()["version"], "1");
    let again = call(
        &app,
        bearer(Request::post("/adyton/v1/models/mine"), TOKEN)
            .body(Body::from(add))
            .unwrap(),
    )
    .await;
    assert_eq!(again.json()["version"], "2");
    assert_eq!(
        get(&app, "/v2/models/mine").await.json()["versions"],
        json!(["1", "2"])
    );

    let not_onnx = call(
        &app,
        bearer(Request::post("/adyton/v1/models/junk"), TOKEN)
            .body(Body::from("this is not a model"))
            .unwrap(),
    )
    .await;
    assert!(not_onnx.status.is_client_error(), "{}", not_onnx.status);
    assert!(
        not_onnx.error().contains("cannot be loaded"),
        "{}",
        not_onnx.error()
    );
    let unloadable = call(
        &app,
        bearer(Request::post("/adyton/v1/models/det"), TOKEN)
            .body(Body::from(model("unsupported_op")))
            .unwrap(),
    )
    .await;
    assert!(unloadable.status.is_client_error());
    let bad_name = call(
        &app,
        bearer(Request::post("/adyton/v1/models/..x"), TOKEN)
            .body(Body::from("x"))
            .unwrap(),
    )
    .await;
    assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);

    let delete_anonymous = call(
        &app,
        Request::delete("/adyton/v1/models/mine")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(delete_anonymous.status, StatusCode::UNAUTHORIZED);
    let deleted = call(
        &app,
        bearer(Request::delete("/adyton/v1/models/mine"), TOKEN)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        get(&app, "/v2/models/mine").await.status,
        StatusCode::NOT_FOUND
    );
    let twice = call(
        &app,
        bearer(Request::delete("/adyton/v1/models/mine"), TOKEN)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(twice.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn uploads_over_the_limit_are_413() {
    let settings = Settings {
        max_upload: 100,
        ..Settings::default()
    };
    let app = router(state_with(&[], settings));
    let answer = call(
        &app,
        bearer(Request::post("/adyton/v1/models/big"), TOKEN)
            .body(Body::from(model("add")))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_delete_and_infer_of_one_model_at_once_keep_state_whole() {
    let app = app(&[]);
    let add = model("add");
    let request = json!({"inputs": [
        {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
        {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [1, 1, 1]},
    ]})
    .to_string();
    let mut tasks = Vec::new();
    for worker in 0..6 {
        let app = app.clone();
        let add = add.clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..15 {
                let answer = match worker % 3 {
                    0 => {
                        call(
                            &app,
                            bearer(Request::post("/adyton/v1/models/m"), TOKEN)
                                .body(Body::from(add.clone()))
                                .unwrap(),
                        )
                        .await
                    }
                    1 => {
                        call(
                            &app,
                            bearer(Request::delete("/adyton/v1/models/m"), TOKEN)
                                .body(Body::empty())
                                .unwrap(),
                        )
                        .await
                    }
                    _ => post(&app, "/v2/models/m/infer", request.clone()).await,
                };
                if answer.status == StatusCode::OK && worker % 3 == 2 {
                    assert_eq!(answer.json()["outputs"][0]["data"], json!([2.0, 3.0, 4.0]));
                }
                statuses.push(answer.status);
            }
            statuses
        }));
    }
    for task in tasks {
        for status in task.await.unwrap() {
            assert!(
                [
                    StatusCode::OK,
                    StatusCode::CREATED,
                    StatusCode::NOT_FOUND,
                    StatusCode::INSUFFICIENT_STORAGE
                ]
                .contains(&status),
                "unexpected {status}"
            );
        }
    }
    // The listing and the model agree at the end.
    let list = get(&app, "/v2/models").await.json();
    for m in list["models"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        assert_eq!(
            get(&app, &format!("/v2/models/{name}")).await.status,
            StatusCode::OK
        );
    }
}

/// A model whose `run` waits at a barrier, to hold the only worker busy.
#[derive(Debug)]
struct Blocking {
    signature: Signature,
    entered: Arc<Barrier>,
    release: Arc<Barrier>,
}

impl LoadedModel for Blocking {
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn plan(&self) -> Plan {
        Plan::Optimized
    }
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
        self.entered.wait();
        self.release.wait();
        Ok(inputs)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_answers_503_with_retry_after() {
    let entered = Arc::new(Barrier::new(2));
    let release = Arc::new(Barrier::new(2));
    let spec = TensorSpec {
        name: "x".into(),
        datatype: DataType::F32,
        shape: Some(vec![Dim::Fixed(1)]),
    };
    let model = Blocking {
        signature: Signature {
            inputs: vec![spec.clone()],
            outputs: vec![spec],
        },
        entered: Arc::clone(&entered),
        release: Arc::clone(&release),
    };
    let engine: Arc<dyn Engine> = Arc::new(TractEngine::new());
    let repository = Arc::new(Repository::new(4));
    repository
        .insert("slow", None, Arc::new(model), Source::File)
        .unwrap();
    let settings = Settings {
        workers: 1,
        queue: 0,
        retry_after_secs: 2,
        ..Settings::default()
    };
    let state = Arc::new(ServerState::new(engine, repository, settings, None, None));
    let app = router(Arc::clone(&state));
    let body = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
        .to_string();
    let first = {
        let app = app.clone();
        let body = body.clone();
        tokio::spawn(async move { post(&app, "/v2/models/slow/infer", body).await })
    };
    let waiter = Arc::clone(&entered);
    tokio::task::spawn_blocking(move || waiter.wait())
        .await
        .unwrap();
    // The one worker is busy and there is no queue.
    let refused = post(&app, "/v2/models/slow/infer", body.clone()).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["retry-after"], "2");
    assert!(refused.error().contains("busy"), "{}", refused.error());
    let releaser = Arc::clone(&release);
    tokio::task::spawn_blocking(move || releaser.wait())
        .await
        .unwrap();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    let metrics = String::from_utf8(get(&app, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(
            "nv_inference_request_failure{model=\"slow\",reason=\"QUEUE_FULL\",version=\"1\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("nv_inference_request_success{model=\"slow\",version=\"1\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_count_successes_failures_and_inferences() {
    let app = app(&[("dyn", "dynamic_batch")]);
    let good = json!({"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": vec![0.0; 12]}]});
    let bad = json!({"inputs": [{"name": "x", "shape": [3, 5], "datatype": "FP32", "data": vec![0.0; 15]}]});
    post(&app, "/v2/models/dyn/infer", good.to_string()).await;
    post(&app, "/v2/models/dyn/infer", good.to_string()).await;
    post(&app, "/v2/models/dyn/infer", bad.to_string()).await;
    let answer = get(&app, "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    for needle in [
        "nv_inference_request_success{model=\"dyn\",version=\"1\"} 2",
        "nv_inference_count{model=\"dyn\",version=\"1\"} 6",
        "nv_inference_request_failure{model=\"dyn\",reason=\"REJECTED\",version=\"1\"} 1",
        "nv_inference_queue_duration_us{model=\"dyn\",version=\"1\"}",
        "adyton_inference_request_duration_seconds_count{model=\"dyn\",version=\"1\"} 3",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    // Nothing of the tensors leaks into the metrics.
    assert!(!text.contains("0.0,"));
}

#[test]
fn admin_token_debug_is_redacted() {
    let token = AdminToken::new(TOKEN).unwrap();
    assert!(!format!("{token:?}").contains("horse"));
    assert!(AdminToken::new("  \n").is_none());
}

/// A fake model whose answer depends on its input's first value: 1 refuses the shape, 2 is busy,
/// 3 panics, anything else is echoed. It reports a plan cache, as an engine with plans per shape
/// does.
#[derive(Debug)]
struct Scripted {
    signature: Signature,
}

impl Scripted {
    fn new() -> Scripted {
        let spec = |name: &str| TensorSpec {
            name: name.to_owned(),
            datatype: DataType::F32,
            shape: Some(vec![Dim::Dynamic, Dim::Dynamic]),
        };
        Scripted {
            signature: Signature {
                inputs: vec![spec("x")],
                outputs: vec![spec("y")],
            },
        }
    }
}

impl LoadedModel for Scripted {
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn plan(&self) -> Plan {
        Plan::PerShape
    }
    fn plan_stats(&self) -> PlanStats {
        PlanStats {
            compiled: 3,
            hits: 5,
            refusals: 1,
            compile_seconds: 0.25,
            cached_plans: 2,
            cached_bytes: 1024,
            ..PlanStats::default()
        }
    }
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
        let TensorData::Fixed(bytes) = inputs[0].data() else {
            unreachable!("FP32 input");
        };
        let first = f32::from_le_bytes(bytes[..4].try_into().unwrap());
        match first as i32 {
            1 => Err(EngineError::Shape {
                name: "x".into(),
                shape: inputs[0].shape().to_vec(),
                reason: "no plan can be built for it".into(),
            }),
            2 => Err(EngineError::Busy {
                reason: "8 plans were compiled in the last minute, the model's limit".into(),
                retry_after_secs: 7,
            }),
            3 => panic!("the fake engine panics"),
            _ => Ok(inputs),
        }
    }
}

fn scripted_app(batching: Option<BatchOptions>) -> Router {
    let engine: Arc<dyn Engine> = Arc::new(TractEngine::new());
    let repository = Arc::new(Repository::new(4));
    repository
        .insert_with(
            "scripted",
            None,
            Arc::new(Scripted::new()),
            Source::File,
            batching,
        )
        .unwrap();
    router(Arc::new(ServerState::new(
        engine,
        repository,
        Settings::default(),
        None,
        None,
    )))
}

fn scripted_request(first: f32) -> String {
    json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [first, 0.5]}]})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_refusals_are_400_and_429_and_a_panic_fails_its_request_alone() {
    for batching in [
        None,
        Some(BatchOptions {
            max_batch_size: 4,
            max_queue_delay_us: 0,
            preferred_batch_size: PreferredBatchSizes::NONE,
        }),
    ] {
        let app = scripted_app(batching);
        let path = "/v2/models/scripted/infer";
        let shape = post(&app, path, scripted_request(1.0)).await;
        assert_eq!(shape.status, StatusCode::BAD_REQUEST, "{batching:?}");
        assert!(
            shape.error().contains("input 'x'") && shape.error().contains("no plan"),
            "{}",
            shape.error()
        );
        let busy = post(&app, path, scripted_request(2.0)).await;
        assert_eq!(busy.status, StatusCode::TOO_MANY_REQUESTS, "{batching:?}");
        assert_eq!(busy.headers["retry-after"], "7");
        assert!(busy.error().contains("last minute"), "{}", busy.error());
        let panicked = post(&app, path, scripted_request(3.0)).await;
        assert_eq!(panicked.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !panicked.error().contains("fake engine"),
            "{}",
            panicked.error()
        );
        // The model and the server serve on.
        let fine = post(&app, path, scripted_request(4.0)).await;
        assert_eq!(
            fine.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&fine.body)
        );
        assert_eq!(fine.json()["outputs"][0]["data"], json!([4.0, 0.5]));
        let text = String::from_utf8(get(&app, "/metrics").await.body.to_vec()).unwrap();
        for needle in [
            "nv_inference_request_failure{model=\"scripted\",reason=\"BACKEND\",version=\"1\"} 1",
            "nv_inference_request_failure{model=\"scripted\",reason=\"REJECTED\",version=\"1\"} 2",
            "nv_inference_exec_count{model=\"scripted\",version=\"1\"} 4",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_metrics_show_the_engine_the_plan_cache_and_batching() {
    let batching = BatchOptions {
        max_batch_size: 8,
        max_queue_delay_us: 500,
        preferred_batch_size: PreferredBatchSizes::NONE,
    };
    let app = scripted_app(Some(batching));
    let meta = get(&app, "/v2/models/scripted").await.json();
    let parameters = &meta["parameters"];
    assert_eq!(parameters["engine"], "tract");
    assert_eq!(parameters["plan"], "optimized-per-shape");
    assert_eq!(parameters["plan_cache"]["compiled"], 3);
    assert_eq!(parameters["plan_cache"]["cached_bytes"], 1024);
    assert_eq!(
        parameters["batching"],
        json!({"max_batch_size": 8, "max_queue_delay_us": 500})
    );
    let plain = app_with_add();
    assert_eq!(
        get(&plain, "/v2/models/add").await.json()["parameters"]["batching"],
        Value::Null
    );
    // Concurrent requests through the batcher each get their own answer.
    let answers: Vec<_> = (0..6)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                post(
                    &app,
                    "/v2/models/scripted/infer",
                    scripted_request(10.0 + i as f32),
                )
                .await
            })
        })
        .collect();
    for (i, answer) in answers.into_iter().enumerate() {
        let answer = answer.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.json()["outputs"][0]["data"][0],
            json!(10.0 + i as f64)
        );
    }
    let text = String::from_utf8(get(&app, "/metrics").await.body.to_vec()).unwrap();
    for needle in [
        "nv_inference_count{model=\"scripted\",version=\"1\"} 6",
        "adyton_inference_batch_size_count{model=\"scripted\",version=\"1\"}",
        "adyton_model_info{engine=\"tract\",model=\"scripted\",plan=\"optimized-per-shape\",version=\"1\"} 1",
        "adyton_plan_cache_compiled_total{model=\"scripted\",version=\"1\"} 3",
        "adyton_plan_cache_hits_total{model=\"scripted\",version=\"1\"} 5",
        "adyton_plan_cache_refusals_total{model=\"scripted\",version=\"1\"} 1",
        "adyton_plan_cache_compile_seconds_total{model=\"scripted\",version=\"1\"} 0.25",
        "adyton_plan_cache_plans{model=\"scripted\",version=\"1\"} 2",
        "adyton_plan_cache_bytes{model=\"scripted\",version=\"1\"} 1024",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
}

fn app_with_add() -> Router {
    app(&[("add", "add")])
}

#[test]
fn batching_is_refused_for_a_model_without_a_batch_dimension() {
    let engine = TractEngine::new();
    let loaded = engine.load(&model("add")).unwrap();
    let e = Repository::new(4)
        .insert_with(
            "add",
            None,
            loaded,
            Source::File,
            Some(BatchOptions {
                max_batch_size: 4,
                max_queue_delay_us: 0,
                preferred_batch_size: PreferredBatchSizes::NONE,
            }),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model 'add'") && e.contains("batch dimension"),
        "{e}"
    );
}

/// A batched model whose first run waits at two barriers, to hold the only worker busy.
#[derive(Debug)]
struct FirstRunBlocks {
    inner: Scripted,
    first: std::sync::atomic::AtomicBool,
    entered: Arc<Barrier>,
    release: Arc<Barrier>,
}

impl LoadedModel for FirstRunBlocks {
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn plan(&self) -> Plan {
        Plan::Optimized
    }
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
        if self.first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.entered.wait();
            self.release.wait();
        }
        self.inner.run(inputs)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_deleted_while_requests_wait_in_its_batcher_answers_them() {
    let (entered, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let model = FirstRunBlocks {
        inner: Scripted::new(),
        first: true.into(),
        entered: Arc::clone(&entered),
        release: Arc::clone(&release),
    };
    let repository = Arc::new(Repository::new(4));
    let batching = BatchOptions {
        max_batch_size: 4,
        max_queue_delay_us: 0,
        preferred_batch_size: PreferredBatchSizes::NONE,
    };
    repository
        .insert_with("gated", None, Arc::new(model), Source::File, Some(batching))
        .unwrap();
    let settings = Settings {
        workers: 1,
        ..Settings::default()
    };
    let engine: Arc<dyn Engine> = Arc::new(TractEngine::new());
    let state = Arc::new(ServerState::new(engine, repository, settings, None, None));
    let app = router(Arc::clone(&state));
    let send = |first: f32| {
        let app = app.clone();
        tokio::spawn(
            async move { post(&app, "/v2/models/gated/infer", scripted_request(first)).await },
        )
    };
    let running = send(10.0);
    let waiter = Arc::clone(&entered);
    tokio::task::spawn_blocking(move || waiter.wait())
        .await
        .unwrap();
    // The only worker is busy: these wait in the batcher while the model is deleted.
    let waiting: Vec<_> = [11.0, 12.0].into_iter().map(send).collect();
    tokio::task::yield_now().await;
    assert!(state.repository.remove("gated"));
    let releaser = Arc::clone(&release);
    tokio::task::spawn_blocking(move || releaser.wait())
        .await
        .unwrap();
    assert_eq!(running.await.unwrap().status, StatusCode::OK);
    for (answer, first) in waiting.into_iter().zip([11.0, 12.0]) {
        let answer = answer.await.unwrap();
        // Answered either way: its rows if it reached the batcher before the delete, else 404.
        match answer.status {
            StatusCode::OK => assert_eq!(answer.json()["outputs"][0]["data"][0], json!(first)),
            status => assert_eq!(status, StatusCode::NOT_FOUND),
        }
    }
    assert_eq!(
        post(&app, "/v2/models/gated/infer", scripted_request(1.0))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}
