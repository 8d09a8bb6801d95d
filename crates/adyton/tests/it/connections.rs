//! Bounded connections (`[connections]`, docs/kbs-config.md): a client that sends half its
//! headers, or stalls its body, is disconnected; beyond `max_connections` a connection is closed
//! at accept, and the service answers again once the held ones close. Over real sockets on
//! 127.0.0.1 against `adyton kbs serve`, which serves every service's connections the same way
//! (`net::serve`). No timing is asserted beyond "closed within a generous bound".

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{adyton_err, ServerProcess};

/// Far longer than any timeout the tests configure: reaching it means the server kept the
/// connection open.
const GENEROUS: Duration = Duration::from_secs(60);

fn start_kbs(dir: &Path, limits: &[&str]) -> (ServerProcess, String) {
    let mut args = vec!["--listen", "127.0.0.1:0", "--data-dir", "kbs"];
    args.extend_from_slice(limits);
    let mut command = ServerProcess::command(dir, &args);
    command.env("ADYTON_KBS_ADMIN_PASSWORD", "connections-test-password");
    let server = ServerProcess::start(command);
    let addr = server
        .url
        .strip_prefix("http://")
        .expect("plain HTTP")
        .to_owned();
    (server, addr)
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(GENEROUS)).unwrap();
    stream
}

/// Reads until the server closes the connection; returns what it sent. Panics if the
/// connection is still open after `GENEROUS`.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return received,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the connection is still open after {GENEROUS:?}")
            }
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// One request on a new connection; the answer's status line, or `None` if the connection was
/// closed without an answer.
fn status_line(addr: &str, path: &str) -> Option<String> {
    let mut stream = connect(addr);
    let request = format!("GET {path} HTTP/1.1\r\nHost: kbs\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return None;
    }
    let answer = read_until_closed(&mut stream);
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

#[test]
fn half_sent_headers_are_closed_after_the_header_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = start_kbs(tmp.path(), &["--header-timeout", "1s"]);
    let mut stream = connect(&addr);
    stream
        .write_all(b"GET /kbs/v1/openapi.json HTTP/1.1\r\nHost: kbs\r\nX-Slow: ")
        .unwrap();
    let answer = read_until_closed(&mut stream);
    // hyper closes without an answer; anything it might send is not a success.
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 2"),
        "{answer:?}"
    );
    // The service still answers others.
    let status = status_line(&addr, "/kbs/v1/openapi.json").expect("an answer");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

#[test]
fn a_kept_alive_connection_with_no_next_request_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = start_kbs(tmp.path(), &["--header-timeout", "1s"]);
    let mut stream = connect(&addr);
    stream
        .write_all(b"GET /kbs/v1/openapi.json HTTP/1.1\r\nHost: kbs\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut stream);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
}

#[test]
fn a_stalled_body_is_answered_4xx_and_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = start_kbs(
        tmp.path(),
        &["--body-timeout", "1s", "--header-timeout", "30s"],
    );
    let mut stream = connect(&addr);
    // 10 of the 1000 bytes announced, then nothing.
    stream
        .write_all(
            b"POST /kbs/v1/keys/some-key/transfer HTTP/1.1\r\nHost: kbs\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"quote\":",
        )
        .unwrap();
    let answer = read_until_closed(&mut stream);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    assert!(text.contains("\"error\""), "{text}");
}

#[test]
fn connections_beyond_the_cap_are_closed_at_accept() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = start_kbs(
        tmp.path(),
        &["--max-connections", "2", "--header-timeout", "60s"],
    );
    // Two connections hold both slots (the kernel hands them over in order, before the third).
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect(&addr)).collect();
    let mut third = connect(&addr);
    let sent = read_until_closed(&mut third);
    assert!(sent.is_empty(), "{sent:?}");

    // The held connections are served.
    held[0]
        .write_all(b"GET /kbs/v1/openapi.json HTTP/1.1\r\nHost: kbs\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut held[0]);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );

    // Once they close, new connections are served again (the slots come back as the server
    // notices the close, so a few attempts may still be refused).
    held.clear();
    let started = Instant::now();
    loop {
        if let Some(status) = status_line(&addr, "/kbs/v1/openapi.json") {
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
            break;
        }
        assert!(
            started.elapsed() < GENEROUS,
            "still refused after the held connections closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A connection from `source` (a loopback address other than 127.0.0.1 stands for another client).
fn connect_from(source: &str, addr: &str) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(addr.parse().unwrap()).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(GENEROUS)).unwrap();
    stream
}

#[test]
fn one_address_cannot_take_every_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = start_kbs(
        tmp.path(),
        &[
            "--max-connections-per-address",
            "2",
            "--header-timeout",
            "60s",
        ],
    );
    let _held: Vec<TcpStream> = (0..2).map(|_| connect_from("127.0.0.1", &addr)).collect();
    // A third connection from the same address is closed at accept, unanswered...
    let mut third = connect_from("127.0.0.1", &addr);
    third
        .write_all(b"GET /kbs/v1/openapi.json HTTP/1.1\r\nHost: kbs\r\nConnection: close\r\n\r\n")
        .unwrap_or(());
    assert!(read_until_closed(&mut third).is_empty());
    // ...while another client is served.
    let mut other = connect_from("127.0.0.2", &addr);
    other
        .write_all(b"GET /kbs/v1/openapi.json HTTP/1.1\r\nHost: kbs\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut other);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
}

#[test]
fn connection_settings_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let err = adyton_err(
        &[
            "kbs",
            "serve",
            "--data-dir",
            "kbs",
            "--max-connections",
            "0",
        ],
        d,
    );
    assert!(err.contains("max_connections"), "{err}");
    let err = adyton_err(
        &[
            "kbs",
            "serve",
            "--data-dir",
            "kbs",
            "--header-timeout",
            "0s",
        ],
        d,
    );
    assert!(err.contains("header_timeout"), "{err}");
    std::fs::write(
        d.join("registry.toml"),
        "data_dir = \"data\"\n[connections]\nbody_timeout = \"soon\"\n",
    )
    .unwrap();
    let err = adyton_err(&["registry", "serve", "--config", "registry.toml"], d);
    assert!(err.contains("body_timeout"), "{err}");
    std::fs::write(
        d.join("server.toml"),
        "listen = \"127.0.0.1:0\"\ntee = \"sim\"\n[connections]\nmax_conections = 5\n",
    )
    .unwrap();
    let err = adyton_err(&["server", "serve", "--config", "server.toml"], d);
    assert!(err.contains("max_conections"), "{err}");
}
