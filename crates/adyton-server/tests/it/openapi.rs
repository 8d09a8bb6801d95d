//! `GET /adyton/v1/openapi.json`: the document is served, is OpenAPI 3.1, and documents exactly
//! the routes the router serves ([`ROUTES`]), each with its statuses and the `{"error"}` body.

use std::collections::BTreeSet;
use std::sync::Arc;

use adyton_server::http::{
    router, AdminToken, FreshEvidence, FreshEvidenceError, ServerState, Settings, OPENAPI_JSON,
    ROUTES,
};
use adyton_server::repository::{Repository, Source};
use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::Engine;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::support::model;

const PATH: &str = "/adyton/v1/openapi.json";
const PULL_PATH: &str = "/adyton/v1/models/{name}:pull";
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Evidence that is only a marker: the route is what is tested here.
#[derive(Debug)]
struct MarkerEvidence;

impl FreshEvidence for MarkerEvidence {
    fn evidence_for_nonce(&self, nonce: &[u8]) -> Result<String, FreshEvidenceError> {
        Ok(format!(r#"{{"nonce_len": {}}}"#, nonce.len()))
    }
}

/// The router with the model `add` (version 1), a token and an attestation source.
fn app() -> Router {
    let engine: Arc<dyn Engine> = Arc::new(TractEngine::new());
    let repository = Arc::new(Repository::new(8));
    let loaded = engine.load(&model("add")).unwrap();
    repository
        .insert("add", None, loaded, Source::File)
        .unwrap();
    router(Arc::new(ServerState::new(
        engine,
        repository,
        Settings::default(),
        AdminToken::new("upload-token"),
        Some(Arc::new(MarkerEvidence)),
    )))
}

async fn call(app: &Router, method: &str, path: &str) -> (StatusCode, Option<String>, Vec<u8>) {
    let request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, bytes.to_vec())
}

fn document() -> Value {
    serde_json::from_str(OPENAPI_JSON).unwrap()
}

/// Every `(METHOD, path)` the document describes, with the pull's own path mapped to the route
/// that serves it (the `:pull` suffix is part of the `{name}` segment for the router).
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let route = if path == PULL_PATH {
            "/adyton/v1/models/{name}"
        } else {
            path.as_str()
        };
        for key in item.as_object().unwrap().keys() {
            let method = key.to_ascii_uppercase();
            if METHODS.contains(&method.as_str())
                || ["HEAD", "OPTIONS", "TRACE"].contains(&&*method)
            {
                routes.insert((method, route.to_owned()));
            }
        }
    }
    routes
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    &doc["paths"][path][method.to_ascii_lowercase()]
}

/// Follows a local `$ref`, once.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => doc
            .pointer(reference.strip_prefix('#').unwrap())
            .unwrap_or_else(|| panic!("dangling $ref {reference}")),
        None => value,
    }
}

fn concrete(path: &str) -> String {
    path.replace("{name}", "add").replace("{version}", "1")
}

#[tokio::test]
async fn the_document_is_served_as_openapi_3_1_json() {
    let (status, content_type, body) = call(&app(), "GET", PATH).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(doc, document());
}

#[test]
fn the_document_describes_exactly_the_routes_served() {
    let documented = documented(&document());
    let served: BTreeSet<_> = ROUTES
        .iter()
        .map(|&(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    assert_eq!(served.len(), ROUTES.len(), "ROUTES lists a route twice");
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not in ROUTES"
    );
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in ROUTES but not documented"
    );
}

#[tokio::test]
async fn every_route_is_served_and_no_other_method_on_its_path() {
    let app = app();
    let doc = document();
    let mut operations: Vec<(&str, &str)> = ROUTES.to_vec();
    operations.push(("POST", PULL_PATH));
    for (method, path) in operations {
        let (status, _, body) = call(&app, method, &concrete(path)).await;
        let text = String::from_utf8_lossy(&body);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !text.contains("no such endpoint"),
            "{method} {path}: {text}"
        );
        let expected = if !operation(&doc, method, path)["security"]
            .as_array()
            .unwrap()
            .is_empty()
        {
            // The token is checked first.
            StatusCode::UNAUTHORIZED
        } else if method == "POST" || path == "/adyton/v1/attestation" {
            // An empty infer body is not an infer request; no nonce is no nonce.
            StatusCode::BAD_REQUEST
        } else if path == "/adyton/v1/collateral" {
            // This server has no collateral source.
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(status, expected, "{method} {path}: {text}");
        let responses = &operation(&doc, method, path)["responses"];
        assert!(
            responses.get(status.as_str()).is_some(),
            "{method} {path} answered {status}, which the document does not list"
        );
    }
    let paths: BTreeSet<&str> = ROUTES.iter().map(|&(_, p)| p).collect();
    for path in paths {
        for method in METHODS {
            if ROUTES.contains(&(method, path)) {
                continue;
            }
            let (status, _, _) = call(&app, method, &concrete(path)).await;
            assert_eq!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is served but not in ROUTES"
            );
        }
    }
    let (status, _, body) = call(&app, "GET", "/adyton/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert!(error["error"].is_string());
}

#[test]
fn every_operation_documents_its_statuses_and_the_error_body() {
    let doc = document();
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    let mut operations: Vec<(&str, &str)> = ROUTES.to_vec();
    operations.push(("POST", PULL_PATH));
    for (method, path) in operations {
        let op = operation(&doc, method, path);
        let name = format!("{method} {path}");
        let responses = op["responses"].as_object().unwrap();
        let statuses: BTreeSet<&str> = responses.keys().map(String::as_str).collect();
        assert!(
            statuses.iter().any(|s| s.starts_with('2')),
            "{name}: no success"
        );
        let security = op["security"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no `security` (use [] for a public route)"));
        let admin = !security.is_empty();
        assert_eq!(
            admin,
            path.starts_with("/adyton/v1/models"),
            "{name}: security"
        );
        if admin {
            assert_eq!(security, &vec![serde_json::json!({ "bearerAuth": [] })]);
            for status in ["401", "403"] {
                assert!(statuses.contains(status), "{name}: no {status}");
            }
        }
        if method == "POST" {
            for status in ["400", "413"] {
                assert!(statuses.contains(status), "{name}: no {status}");
            }
            assert!(op["requestBody"].is_object(), "{name}: no requestBody");
        }
        if path.contains("/infer") {
            for status in ["404", "422", "500", "503"] {
                assert!(statuses.contains(status), "{name}: no {status}");
            }
        }
        for (status, response) in responses {
            let response = resolve(&doc, response);
            assert!(response["description"].is_string(), "{name} {status}");
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/json"]["schema"];
                let schema = resolve(&doc, schema);
                // Readiness answers its own body with 503; everything else is the error body.
                if !path.ends_with("ready") {
                    assert_eq!(
                        schema, &doc["components"]["schemas"]["Error"],
                        "{name} {status}: not the error body"
                    );
                }
            }
        }
    }
}
