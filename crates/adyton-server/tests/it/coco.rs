//! `serve --tee coco`: the server asks the Confidential Containers attestation agent for its
//! evidence. A local imitation of the agent serves the recorded TDX quote of `testdata/`, whose
//! report data is not what the server asks for: the server must refuse to start, naming the
//! mismatch, rather than serve a certificate whose evidence binds something else.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

const BINARY: &str = env!("CARGO_BIN_EXE_adyton-server");
const TDX_QUOTE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/dcap/tdx_quote");

/// An imitation of api-server-rest answering every request with `body`; its URL.
fn agent(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    url
}

/// Runs `serve` with `args` and returns its stderr once it exits, failing if it does not exit
/// within a minute (a server that started) or exits successfully.
fn serve_fails(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            assert!(!status.success(), "serve {args:?} succeeded: {stderr}");
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve {args:?} did not exit: it started without usable evidence");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn coco_evidence_over_other_report_data_stops_the_start() {
    let quote = std::fs::read(TDX_QUOTE).unwrap();
    let body = serde_json::json!({ "cc_eventlog": null, "quote": BASE64.encode(quote) });
    let url = agent(body.to_string().into_bytes());
    let stderr = serve_fails(&["--tee", "coco", "--coco-url", &url]);
    assert!(stderr.contains("report data mismatch"), "{stderr}");
}

#[test]
fn coco_without_an_agent_stops_the_start_naming_it() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let stderr = serve_fails(&["--tee", "coco", "--coco-url", &url]);
    assert!(
        stderr.contains(&format!("attestation agent at {url}")),
        "{stderr}"
    );
}

#[test]
fn coco_evidence_of_an_unsupported_tee_stops_the_start() {
    // The agent's unsigned sample evidence (a Kata guest without a hardware TEE) is not evidence.
    let url = agent(br#"{"svn": "1", "report_data": "eHh4eA=="}"#.to_vec());
    let stderr = serve_fails(&["--tee", "coco", "--coco-url", &url]);
    assert!(stderr.contains("neither `quote`"), "{stderr}");
}
