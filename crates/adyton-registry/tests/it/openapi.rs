//! `GET /openapi.json`: the document is served, is OpenAPI 3.1, and documents exactly the routes
//! the router serves ([`ROUTES`]), each with its statuses and the `{"error"}` body.

use std::collections::BTreeSet;

use adyton_registry::http::{OPENAPI_JSON, ROUTES};
use serde_json::Value;

use crate::support::{TestServer, TOKEN};

const PATH: &str = "/openapi.json";
const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

fn document() -> Value {
    serde_json::from_str(OPENAPI_JSON).unwrap()
}

/// One request with no body and an optional token: status, `Content-Type`, body.
fn call(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Option<String>, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .allow_non_standard_methods(true)
        .build()
        .into();
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let mut answer = agent.run(request.body(()).unwrap()).unwrap();
    let content_type = answer
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = answer.body_mut().read_to_vec().unwrap_or_default();
    (answer.status().as_u16(), content_type, body)
}

/// Every `(METHOD, path)` the document describes.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for key in item.as_object().unwrap().keys() {
            let method = key.to_ascii_uppercase();
            if METHODS.contains(&method.as_str()) || ["OPTIONS", "TRACE"].contains(&&*method) {
                routes.insert((method, path.clone()));
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

fn is_write(doc: &Value, method: &str, path: &str) -> bool {
    let security = operation(doc, method, path)["security"].as_array().unwrap();
    !security.is_empty()
}

#[test]
fn the_document_is_served_as_openapi_3_1_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), 1 << 20);
    let (status, content_type, body) = call(&server.url, "GET", PATH, None);
    assert_eq!(status, 200);
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

#[test]
fn every_route_is_served_and_no_other_method_on_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), 1 << 20);
    let doc = document();
    let concrete = |path: &str| path.replace("{id}", "no-such-model");
    for &(method, path) in ROUTES {
        let (status, _, body) = call(&server.url, method, &concrete(path), None);
        let text = String::from_utf8_lossy(&body);
        assert!(
            status != 404 || path.contains("{id}"),
            "{method} {path}: {status} {text}"
        );
        assert_ne!(status, 405, "{method} {path}: {text}");
        let expected = if is_write(&doc, method, path) {
            // The token is checked before the id and the body.
            401
        } else if path.contains("{id}") {
            // An unknown model or blob: the registry's own 404, with its error body.
            404
        } else {
            200
        };
        assert_eq!(status, expected, "{method} {path}: {text}");
        if status == 404 && method != "HEAD" {
            let error: Value = serde_json::from_slice(&body).unwrap();
            assert!(error["error"].is_string(), "{method} {path}: {text}");
        }
        let responses = &operation(&doc, method, path)["responses"];
        assert!(
            responses.get(status.to_string()).is_some(),
            "{method} {path} answered {status}, which the document does not list"
        );
    }
    let paths: BTreeSet<&str> = ROUTES.iter().map(|&(_, p)| p).collect();
    for path in paths {
        for method in METHODS {
            let listed = ROUTES.contains(&(method, path))
                // axum answers HEAD wherever it answers GET.
                || (method == "HEAD" && ROUTES.contains(&("GET", path)));
            if listed {
                continue;
            }
            let (status, _, _) = call(&server.url, method, &concrete(path), Some(TOKEN));
            assert_eq!(status, 405, "{method} {path} is served but not in ROUTES");
        }
    }
    let (status, _, _) = call(&server.url, "GET", "/nothing-here", None);
    assert_eq!(status, 404);
}

#[test]
fn every_operation_documents_its_statuses_and_the_error_body() {
    let doc = document();
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    for &(method, path) in ROUTES {
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
        let write = !security.is_empty();
        assert_eq!(
            write,
            ["PUT", "DELETE"].contains(&method),
            "{name}: security"
        );
        if write {
            assert_eq!(security, &vec![serde_json::json!({ "bearerAuth": [] })]);
            assert!(statuses.contains("401"), "{name}: no 401");
            assert!(statuses.contains("500"), "{name}: no 500");
        }
        if method == "PUT" {
            assert!(statuses.contains("413"), "{name}: no 413");
            assert!(statuses.contains("507"), "{name}: no 507");
            assert!(op["requestBody"].is_object(), "{name}: no requestBody");
        }
        if path.contains("{id}") {
            // A bad id is 400, an unknown one 404 (a write on an unknown id may still succeed).
            assert!(statuses.contains("400"), "{name}: no 400");
            if method != "PUT" {
                assert!(statuses.contains("404"), "{name}: no 404");
            }
        }
        for (status, response) in responses {
            let response = resolve(&doc, response);
            assert!(response["description"].is_string(), "{name} {status}");
            if method != "HEAD" && (status.starts_with('4') || status.starts_with('5')) {
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(
                    resolve(&doc, schema),
                    &doc["components"]["schemas"]["Error"],
                    "{name} {status}: not the error body"
                );
            }
        }
    }
    // The id pattern is the registry's check.
    let id = &doc["paths"]["/models/{id}"]["parameters"][0]["schema"];
    let pattern = id["pattern"].as_str().unwrap();
    assert_eq!(pattern, "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$");
    // Model info refuses unknown fields, as the registry does.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["ModelInfoRequest"]["additionalProperties"], false);
}

/// The request example is model info the registry stores as it is.
#[test]
fn the_model_info_example_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), 1 << 20);
    let doc = document();
    let example = &operation(&doc, "PUT", "/models/{id}")["requestBody"]["content"]
        ["application/json"]["example"];
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut answer = agent
        .put(format!("{}/models/mlp-1", server.url))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send(serde_json::to_vec(example).unwrap())
        .unwrap();
    let status = answer.status().as_u16();
    let stored: Value = serde_json::from_slice(&answer.body_mut().read_to_vec().unwrap()).unwrap();
    assert_eq!(status, 200, "{stored}");
    for (field, value) in example.as_object().unwrap() {
        assert_eq!(&stored[field], value, "{field}");
    }
}

/// A refused upload (a wrong token) reaches a client still sending its body as a 401, not as a
/// reset connection: the registry reads a small body before refusing. (Found with schemathesis'
/// kind of traffic: a refusal sent before the body is read.)
#[test]
fn a_refused_upload_reaches_a_client_still_sending() {
    use std::io::{Read as _, Write as _};

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), 1 << 30);
    let addr = server.url.strip_prefix("http://").unwrap();
    // Under the drain limit (1 MiB), and far over what a socket buffers.
    let body_len = 768 << 10;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "PUT /blobs/refused HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer wrong\r\n\
         Content-Length: {body_len}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .write_all(&vec![0u8; body_len])
        .unwrap_or_else(|e| panic!("the body could not be sent: {e}"));
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("the answer could not be read: {e}"));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
}
