//! Refusals answered before a request's body is read reach the client over a real socket: the
//! server reads a small body first, so that a client still sending reads the answer rather than
//! a reset connection (found by schemathesis: a 400 for a bad `Inference-Header-Content-Length`
//! with an 18 KB body reached the client as a reset).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use adyton_server::http::{router, AdminToken, ServerState, Settings};
use adyton_server::repository::{Repository, Source};
use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::Engine;

use crate::support::model;

/// Under the server's drain limit (1 MiB), and far over what a socket buffers.
const BODY_LEN: usize = 768 << 10;

async fn serve() -> SocketAddr {
    let engine: Arc<dyn Engine> = Arc::new(TractEngine::new());
    let repository = Arc::new(Repository::new(8));
    let loaded = engine.load(&model("add")).unwrap();
    repository
        .insert("add", None, loaded, Source::File)
        .unwrap();
    let app = router(Arc::new(ServerState::new(
        engine,
        repository,
        Settings::default(),
        AdminToken::new("upload-token"),
        None,
    )));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Sends a request with a large body in full, then reads the answer's status line.
fn status_after_full_body(addr: SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head =
        format!("{head}Host: {addr}\r\nContent-Length: {BODY_LEN}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .write_all(&vec![b' '; BODY_LEN])
        .unwrap_or_else(|e| panic!("the body could not be sent: {e}"));
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("the answer could not be read: {e}"));
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refusals_reach_a_client_still_sending() {
    let addr = serve().await;
    let cases = [
        // Unknown model: 404 before the body is needed.
        ("POST /v2/models/nothing/infer HTTP/1.1\r\n", "404"),
        // A malformed binary-extension header: 400 before the body is needed.
        (
            "POST /v2/models/add/infer HTTP/1.1\r\nInference-Header-Content-Length: x\r\n",
            "400",
        ),
        // An upload with a wrong token: 401 before the model is read.
        (
            "POST /adyton/v1/models/mine HTTP/1.1\r\nAuthorization: Bearer wrong\r\n",
            "401",
        ),
        // An upload with a bad version or name: 400 before the model is read.
        (
            "POST /adyton/v1/models/mine?version=0 HTTP/1.1\r\nAuthorization: Bearer upload-token\r\n",
            "400",
        ),
        (
            "POST /adyton/v1/models/.mine HTTP/1.1\r\nAuthorization: Bearer upload-token\r\n",
            "400",
        ),
        // A pull on a server without a registry: 404 before the request is read.
        (
            "POST /adyton/v1/models/mine:pull HTTP/1.1\r\nAuthorization: Bearer upload-token\r\n",
            "404",
        ),
    ];
    for (head, status) in cases {
        let line = tokio::task::spawn_blocking(move || status_after_full_body(addr, head))
            .await
            .unwrap();
        assert!(
            line.starts_with("HTTP/1.1 ") && line.contains(status),
            "{head:?}: {line}"
        );
    }
}
