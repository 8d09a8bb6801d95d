//! `GET /kbs/v1/openapi.json`: the document is served, is OpenAPI 3.1, and documents exactly the
//! routes the router serves ([`ROUTES`]), each with its statuses and the `{"error"}` body.

use std::collections::BTreeSet;
use std::sync::Arc;

use adyton_attest::Collateral;
use adyton_kbs::admin::{AdminAuth, AdminUsers};
use adyton_kbs::http::{router, router_with_admin, KbsState, MemoryAudit, OPENAPI_JSON, ROUTES};
use adyton_kbs::master_key::MasterKey;
use adyton_kbs::store::redb::RedbStore;
use adyton_kbs::transfer::Broker;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

const PATH: &str = "/kbs/v1/openapi.json";
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn clock() -> u64 {
    1_800_000_000
}

/// A router with no operators: every admin request is 401.
fn app() -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("kbs.redb")).unwrap();
    let (master, _) = MasterKey::load_or_generate(dir.path()).unwrap();
    let broker = Broker::new(Arc::new(store), master, Collateral::none()).unwrap();
    let state = KbsState::new(broker, Arc::new(MemoryAudit::default()), clock);
    (dir, router(Arc::new(state)))
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

/// Every `(METHOD, path)` the document describes.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for key in item.as_object().unwrap().keys() {
            let method = key.to_ascii_uppercase();
            if METHODS.contains(&method.as_str())
                || ["HEAD", "OPTIONS", "TRACE"].contains(&&*method)
            {
                routes.insert((method, path.clone()));
            }
        }
    }
    routes
}

fn served() -> BTreeSet<(String, String)> {
    let routes: BTreeSet<_> = ROUTES
        .iter()
        .map(|&(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    assert_eq!(routes.len(), ROUTES.len(), "ROUTES lists a route twice");
    routes
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    &doc["paths"][path][method.to_ascii_lowercase()]
}

/// Follows a local `$ref`, once.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').unwrap();
            doc.pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {reference}"))
        }
        None => value,
    }
}

fn is_admin(doc: &Value, method: &str, path: &str) -> bool {
    let security = operation(doc, method, path)["security"].as_array().unwrap();
    !security.is_empty()
}

/// A concrete request path for a templated route.
fn concrete(path: &str) -> String {
    path.replace("{id}", "some-id")
}

#[tokio::test]
async fn the_document_is_served_as_openapi_3_1_json() {
    let (_dir, app) = app();
    let (status, content_type, body) = call(&app, "GET", PATH).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let doc: Value = serde_json::from_slice(&body).unwrap();
    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1"), "openapi is {version}");
    assert_eq!(doc, document());
}

#[test]
fn the_document_describes_exactly_the_routes_served() {
    let doc = document();
    let documented = documented(&doc);
    let served = served();
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
    let (_dir, app) = app();
    let doc = document();
    for &(method, path) in ROUTES {
        let (status, _, body) = call(&app, method, &concrete(path)).await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {status} {text}"
        );
        let expected = if is_admin(&doc, method, path) {
            // Authentication comes before the body and the id: no token, 401.
            StatusCode::UNAUTHORIZED
        } else if path == "/kbs/v1/token" {
            // An empty body is malformed JSON.
            StatusCode::BAD_REQUEST
        } else {
            // The document, and the nonce flow for an empty transfer body.
            StatusCode::OK
        };
        assert_eq!(status, expected, "{method} {path}: {text}");
        let responses = &operation(&doc, method, path)["responses"];
        assert!(
            responses.get(status.as_str()).is_some(),
            "{method} {path} answered {status}, which the document does not list"
        );
    }
    // The methods not listed for a path are refused by the router, not served.
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
    // And a path not listed is not served at all.
    let (status, _, _) = call(&app, "GET", "/kbs/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[test]
fn every_operation_documents_its_statuses_and_the_error_body() {
    let doc = document();
    let schemes = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(schemes["type"], "http");
    assert_eq!(schemes["scheme"], "bearer");
    for &(method, path) in ROUTES {
        let op = operation(&doc, method, path);
        let name = format!("{method} {path}");
        let responses = op["responses"].as_object().unwrap();
        let statuses: BTreeSet<&str> = responses.keys().map(String::as_str).collect();
        assert!(
            statuses.iter().any(|s| s.starts_with('2')),
            "{name}: no success status"
        );
        let security = op["security"].as_array().unwrap_or_else(|| {
            panic!("{name}: no `security` (use [] for an unauthenticated route)")
        });
        let admin = !security.is_empty();
        let unauthenticated = ["/kbs/v1/keys/{id}/transfer", "/kbs/v1/token", PATH];
        assert_eq!(admin, !unauthenticated.contains(&path), "{name}: security");
        if admin {
            assert_eq!(security, &vec![serde_json::json!({ "bearerAuth": [] })]);
            assert!(statuses.contains("401"), "{name}: no 401");
        }
        if path != PATH {
            assert!(statuses.contains("500"), "{name}: no 500");
        }
        if method == "POST" {
            // A body: malformed JSON is 400, a body over 1 MiB 413.
            assert!(statuses.contains("400"), "{name}: no 400");
            assert!(statuses.contains("413"), "{name}: no 413");
            assert!(op["requestBody"].is_object(), "{name}: no requestBody");
        }
        if path.contains("{id}") {
            assert!(statuses.contains("404"), "{name}: no 404");
        }
        for (status, response) in responses {
            let response = resolve(&doc, response);
            assert!(response["description"].is_string(), "{name} {status}");
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(
                    resolve(&doc, schema),
                    &doc["components"]["schemas"]["Error"],
                    "{name} {status}: not the error body"
                );
            }
        }
    }
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], serde_json::json!(["error"]));
    assert_eq!(error["properties"]["error"]["type"], "string");
    // The statuses the code can give, where the document must list them.
    let expect = [
        (
            "POST",
            "/kbs/v1/keys/{id}/transfer",
            &["200", "400", "403", "404", "413", "500"][..],
        ),
        (
            "POST",
            "/kbs/v1/keys/{id}/offline-transfer",
            &["200", "400", "401", "403", "404", "413", "500"],
        ),
        (
            "POST",
            "/kbs/v1/token",
            &["200", "400", "401", "413", "429", "500"],
        ),
        (
            "DELETE",
            "/kbs/v1/key-transfer-policies/{id}",
            &["204", "401", "404", "409", "500"],
        ),
        ("DELETE", "/kbs/v1/keys/{id}", &["204", "401", "404", "500"]),
        (
            "POST",
            "/kbs/v1/key-transfer-policies",
            &["201", "400", "401", "413", "500"],
        ),
        (
            "POST",
            "/kbs/v1/keys",
            &["201", "400", "401", "404", "413", "500"],
        ),
    ];
    for (method, path, statuses) in expect {
        let responses = &operation(&doc, method, path)["responses"];
        for status in statuses {
            assert!(
                responses.get(*status).is_some(),
                "{method} {path}: no {status}"
            );
        }
    }
}

/// The request examples of one operation: `example` and every `examples.*.value`, by name.
fn request_examples(doc: &Value, method: &str, path: &str) -> Vec<(String, Value)> {
    let media = &operation(doc, method, path)["requestBody"]["content"]["application/json"];
    let mut examples = Vec::new();
    if let Some(example) = media.get("example") {
        examples.push(("example".to_owned(), example.clone()));
    }
    if let Some(named) = media.get("examples").and_then(Value::as_object) {
        for (name, example) in named {
            let example = resolve(doc, example);
            examples.push((name.clone(), example["value"].clone()));
        }
    }
    examples
}

async fn post_json(
    app: &Router,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(Method::POST).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Every request example in the document is one the broker accepts: the login example logs in (as
/// the operator it names), the policy examples create policies, the key examples create keys
/// (under a policy the examples created: its id is the server's), and the transfer example gets a
/// nonce.
#[tokio::test]
async fn every_request_example_is_accepted() {
    let doc = document();
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("kbs.redb")).unwrap();
    let (master, _) = MasterKey::load_or_generate(dir.path()).unwrap();
    let broker = Broker::new(Arc::new(store), master, Collateral::none()).unwrap();
    let state = KbsState::new(broker, Arc::new(MemoryAudit::default()), clock);
    let logins = request_examples(&doc, "POST", "/kbs/v1/token");
    assert!(!logins.is_empty(), "no login example");
    let login = &logins[0].1;
    let users = AdminUsers::with_password(
        login["username"].as_str().unwrap(),
        login["password"].as_str().unwrap(),
    )
    .unwrap();
    let app = router_with_admin(Arc::new(state), Arc::new(AdminAuth::new(users)));

    let mut token = String::new();
    for (name, example) in &logins {
        let (status, reply) = post_json(&app, "/kbs/v1/token", None, example).await;
        assert_eq!(status, StatusCode::OK, "login example {name}: {reply}");
        token = reply["token"].as_str().unwrap().to_owned();
    }

    let mut policy_id = None;
    let policies = request_examples(&doc, "POST", "/kbs/v1/key-transfer-policies");
    assert!(policies.len() >= 2, "policy examples: {policies:?}");
    for (name, example) in &policies {
        let (status, reply) =
            post_json(&app, "/kbs/v1/key-transfer-policies", Some(&token), example).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "policy example {name}: {reply}"
        );
        assert_eq!(reply["attestation_type"], example["attestation_type"]);
        policy_id = Some(reply["id"].as_str().unwrap().to_owned());
    }

    let keys = request_examples(&doc, "POST", "/kbs/v1/keys");
    assert!(!keys.is_empty(), "no key example");
    for (name, example) in &keys {
        let mut example = example.clone();
        example["transfer_policy_id"] = Value::String(policy_id.clone().unwrap());
        let (status, reply) = post_json(&app, "/kbs/v1/keys", Some(&token), &example).await;
        assert_eq!(status, StatusCode::CREATED, "key example {name}: {reply}");
    }

    let transfers = request_examples(&doc, "POST", "/kbs/v1/keys/{id}/transfer");
    assert!(!transfers.is_empty(), "no transfer example");
    for (name, example) in &transfers {
        let (status, reply) = post_json(&app, "/kbs/v1/keys/some-id/transfer", None, example).await;
        assert_eq!(status, StatusCode::OK, "transfer example {name}: {reply}");
        assert!(reply["nonce"].is_string(), "{reply}");
    }

    // No operation with a body is left out of the examples, except the offline transfer, whose
    // body is a device's signed evidence and cannot be a fixed example.
    for &(method, path) in ROUTES {
        if method == "POST" && path != "/kbs/v1/keys/{id}/offline-transfer" {
            assert!(
                !request_examples(&doc, method, path).is_empty(),
                "{method} {path}: no request example"
            );
        }
    }
}

/// The schemas refuse what the broker refuses: spot checks of the constraints the broker enforces.
#[test]
fn the_schemas_constrain_what_the_broker_checks() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let base64 = &schemas["Base64"];
    assert_eq!(base64["contentEncoding"], "base64");
    let pattern = base64["pattern"].as_str().unwrap();
    assert!(
        pattern.starts_with('^') && pattern.ends_with('$'),
        "{pattern}"
    );
    // `quote` is a non-empty base64 string: `null` is not a string.
    let quote = &schemas["TransferRequest"]["properties"]["quote"];
    assert_eq!(quote["allOf"][0]["$ref"], "#/components/schemas/Base64");
    assert!(quote["minLength"].as_u64().unwrap() > 0);
    // The offline transfer's body refuses unknown fields, as the broker does; policies too.
    assert_eq!(schemas["ProvisionRequest"]["additionalProperties"], false);
    for variant in schemas["PolicyRequest"]["oneOf"].as_array().unwrap() {
        assert_eq!(variant["additionalProperties"], false);
        assert_eq!(variant["properties"]["require_nonce"]["type"], "boolean");
        assert_eq!(variant["properties"]["require_nonce"]["default"], false);
        let table = resolve(
            &doc,
            &variant["properties"][variant["required"][1].as_str().unwrap()],
        );
        assert_eq!(table["additionalProperties"], false);
    }
    assert_eq!(
        schemas["LoginRequest"]["properties"]["username"]["maxLength"],
        128
    );
    // Busy and rate-limited logins say when to come back.
    let token = &operation(&doc, "POST", "/kbs/v1/token")["responses"];
    for status in ["429", "503"] {
        assert!(
            token[status]["headers"]["Retry-After"].is_object(),
            "token {status}: no Retry-After"
        );
    }
    // Every operation that writes the store documents a full disk.
    for (method, path) in [
        ("POST", "/kbs/v1/key-transfer-policies"),
        ("DELETE", "/kbs/v1/key-transfer-policies/{id}"),
        ("POST", "/kbs/v1/keys"),
        ("DELETE", "/kbs/v1/keys/{id}"),
    ] {
        assert!(
            operation(&doc, method, path)["responses"]["507"].is_object(),
            "{method} {path}: no 507"
        );
    }
}
