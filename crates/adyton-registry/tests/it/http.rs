//! The HTTP API over a real socket: uploads and downloads with ureq and the blocking client,
//! ranges, resumption through a proxy that cuts the connection, tokens, ids, limits, atomicity.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adyton_client::{ClientError, ModelInfo, RegistryClient, RetryPolicy, Token};
use adyton_registry::blob::fs::FsStore;
use adyton_registry::blob::{BlobEntry, BlobRead, BlobStore, ByteStream};
use adyton_registry::BlobError;
use futures_util::StreamExt as _;

use crate::support::{random_bytes, temp_files, TestServer, TOKEN};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
}

fn token() -> Token {
    Token::new(TOKEN)
}

/// GET with optional headers: status, headers of interest, body.
fn get(url: &str, range: Option<&str>) -> (u16, Option<String>, Option<String>, Vec<u8>) {
    let mut request = agent().get(url);
    if let Some(range) = range {
        request = request.header("Range", range);
    }
    let mut answer = request.call().unwrap();
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let content_range = header("content-range");
    let accept_ranges = header("accept-ranges");
    let body = answer
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap();
    (answer.status().as_u16(), content_range, accept_ranges, body)
}

fn status_of(result: Result<impl std::fmt::Debug, ClientError>) -> Option<u16> {
    result.unwrap_err().status()
}

#[test]
fn blobs_stream_up_and_down_with_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), 1 << 30);
    let client = RegistryClient::new(&server.url).unwrap();
    let data = random_bytes(6 << 20 | 777, 2);

    let mut seen = Vec::new();
    let summary = client
        .upload_blob(&token(), "m1", &data[..], |sent| seen.push(sent))
        .unwrap();
    assert_eq!(summary.size, data.len() as u64);
    assert_eq!(summary.url, format!("{}/blobs/m1", server.url));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data);
    assert_eq!(summary.sha256, hex::encode(digest.as_ref()));
    assert_eq!(seen.last().copied(), Some(data.len() as u64));
    assert!(seen.len() > 2, "progress is reported as the upload goes");

    // Whole.
    let (status, range, accept, body) = get(&summary.url, None);
    assert_eq!(
        (status, range, accept.as_deref()),
        (200, None, Some("bytes"))
    );
    assert!(body == data);
    let mut out = Vec::new();
    assert_eq!(
        client.download_blob("m1", &mut out).unwrap(),
        data.len() as u64
    );
    assert!(out == data);

    // Ranges.
    let len = data.len();
    let (status, range, _, body) = get(&summary.url, Some("bytes=100-199"));
    assert_eq!(status, 206);
    assert_eq!(range.unwrap(), format!("bytes 100-199/{len}"));
    assert!(body == data[100..200]);
    let (status, range, _, body) = get(&summary.url, Some("bytes=-10"));
    assert_eq!(
        (status, range.unwrap()),
        (206, format!("bytes {}-{}/{len}", len - 10, len - 1))
    );
    assert!(body == data[len - 10..]);
    let (status, _, _, body) = get(&summary.url, Some(&format!("bytes={}-", len - 5)));
    assert_eq!(status, 206);
    assert!(body == data[len - 5..]);
    let (status, range, _, body) = get(&summary.url, Some(&format!("bytes={len}-")));
    assert_eq!((status, range.unwrap()), (416, format!("bytes */{len}")));
    assert!(String::from_utf8_lossy(&body).contains("\"error\""));
    let (status, _, _, body) = get(&summary.url, Some("bytes=0-1,5-6"));
    assert_eq!((status, body.len()), (200, len));

    // HEAD.
    let answer = agent().head(&summary.url).call().unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(
        answer
            .headers()
            .get("content-length")
            .unwrap()
            .to_str()
            .unwrap(),
        len.to_string()
    );

    // Blobs are immutable.
    assert_eq!(
        status_of(client.upload_blob(&token(), "m1", &b"x"[..], |_| {})),
        Some(409)
    );
}

#[test]
fn model_info_is_cnap_shaped_and_writes_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), 1 << 20);
    let client = RegistryClient::new(&server.url).unwrap();
    let info = ModelInfo {
        id: "m2".to_owned(),
        framework: Some("onnx".to_owned()),
        encrypted: Some(true),
        key_id: Some("k1".to_owned()),
        kbs_url: Some("http://kbs/kbs/v1/keys/k1/transfer".to_owned()),
        ..ModelInfo::default()
    };
    // No blob yet and no url: 409.
    assert_eq!(status_of(client.put_info(&token(), &info)), Some(409));
    client
        .upload_blob(&token(), "m2", &b"ciphertext"[..], |_| {})
        .unwrap();
    let stored = client.put_info(&token(), &info).unwrap();
    assert_eq!(
        stored.url.as_deref(),
        Some(format!("{}/blobs/m2", server.url).as_str())
    );
    assert_eq!(stored.blob_size, Some(10));
    assert!(stored.blob_sha256.is_some());
    assert_eq!(client.get_info("m2").unwrap(), stored);
    assert_eq!(client.list().unwrap(), vec![stored.clone()]);

    // CNAP's fields, all present, in the raw JSON.
    let (status, _, _, body) = get(&format!("{}/models/m2", server.url), None);
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for field in [
        "id",
        "framework",
        "target",
        "url",
        "name",
        "version",
        "dtype",
        "encrypted",
        "kbs",
        "kbs_url",
        "key_id",
    ] {
        assert!(json.get(field).is_some(), "{field} missing: {json}");
    }

    // Unknown fields and an id that differs from the path: 400.
    let put = |body: &str, auth: Option<&str>| {
        let mut request = agent().put(&format!("{}/models/m2", server.url));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        request.send(body).unwrap().status().as_u16()
    };
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(put(r#"{"id":"m2","colour":"red"}"#, Some(&bearer)), 400);
    assert_eq!(put(r#"{"id":"other"}"#, Some(&bearer)), 400);
    assert_eq!(put("not json", Some(&bearer)), 400);
    // No token, a wrong one: 401, for every write.
    assert_eq!(put("{}", None), 401);
    assert_eq!(put("{}", Some("Bearer wrong")), 401);
    let wrong = Token::new("wrong");
    assert_eq!(status_of(client.put_info(&wrong, &info)), Some(401));
    assert_eq!(status_of(client.delete(&wrong, "m2")), Some(401));
    let err = client
        .upload_blob(&wrong, "m3", &b"x"[..], |_| {})
        .unwrap_err();
    // The server answers 401 before reading the body; the client may see the answer or, still
    // sending, a closed connection. Either way nothing is stored (checked below).
    assert!(
        err.status() == Some(401) || matches!(err, ClientError::Transport { .. }),
        "{err}"
    );
    assert!(
        agent()
            .head(&format!("{}/blobs/m3", server.url))
            .call()
            .unwrap()
            .status()
            .as_u16()
            == 404
    );

    // Bad ids: 400; unknown ones: 404.
    let (status, _, _, _) = get(&format!("{}/models/.hidden", server.url), None);
    assert_eq!(status, 400);
    let (status, _, _, _) = get(&format!("{}/blobs/a%20b", server.url), None);
    assert_eq!(status, 400);
    assert_eq!(status_of(client.get_info("nope")), Some(404));
    let (status, _, _, _) = get(&format!("{}/blobs/nope", server.url), None);
    assert_eq!(status, 404);

    // Delete removes the info and the blob.
    client.delete(&token(), "m2").unwrap();
    assert_eq!(status_of(client.get_info("m2")), Some(404));
    let (status, _, _, _) = get(&format!("{}/blobs/m2", server.url), None);
    assert_eq!(status, 404);
    assert_eq!(status_of(client.delete(&token(), "m2")), Some(404));
    let (status, _, _, body) = get(&format!("{}/healthz", server.url), None);
    assert_eq!((status, body), (200, br#"{"status":"ok"}"#.to_vec()));
}

#[test]
fn oversized_and_aborted_uploads_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), 1 << 20);
    let client = RegistryClient::new(&server.url).unwrap();
    let data = random_bytes(3 << 20, 3);

    // Chunked (no Content-Length): refused when the count passes the limit.
    let err = client
        .upload_blob(&token(), "big", &data[..], |_| {})
        .unwrap_err();
    // The server may answer 413 before the client has sent everything, or reset the connection.
    assert!(
        err.status() == Some(413) || matches!(err, ClientError::Transport { .. }),
        "{err}"
    );
    // With Content-Length: refused before the body is read.
    let addr = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "PUT /blobs/big HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\n\r\n",
        data.len()
    )
    .unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");
    drop(stream);
    let (status, _, _, _) = get(&format!("{}/blobs/big", server.url), None);
    assert_eq!(status, 404);

    // A client that goes away halfway through its body.
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "PUT /blobs/cut HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 900000\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&data[..400_000]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(stream);
    std::thread::sleep(Duration::from_millis(500));
    let (status, _, _, _) = get(&format!("{}/blobs/cut", server.url), None);
    assert_eq!(status, 404);
    assert!(
        temp_files(dir.path()).is_empty(),
        "{:?}",
        temp_files(dir.path())
    );
    assert!(client.list().unwrap().is_empty());
}

/// A TCP proxy to `target` whose first connection forwards only `cut_after` bytes of the answer
/// and then closes; later connections pass everything. Returns its address.
fn cutting_proxy(target: String, cut_after: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(mut client) = client else { return };
            let mut server = TcpStream::connect(&target).unwrap();
            let limit = if n == 0 { cut_after } else { usize::MAX };
            let mut client_in = client.try_clone().unwrap();
            let mut server_out = server.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_in, &mut server_out);
            });
            std::thread::spawn(move || {
                let mut sent = 0usize;
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    let n = match server.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let n = n.min(limit - sent);
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                    if sent >= limit {
                        break;
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn a_download_cut_halfway_resumes_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), 1 << 30);
    let direct = RegistryClient::new(&server.url).unwrap();
    let data = random_bytes(4 << 20, 4);
    direct
        .upload_blob(&token(), "resume", &data[..], |_| {})
        .unwrap();

    let proxy = cutting_proxy(server.url.trim_start_matches("http://").to_owned(), 2 << 20);
    let client = RegistryClient::new(&format!("http://{proxy}"))
        .unwrap()
        .with_retry(RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        });
    let mut out = Vec::new();
    let total = client.download_blob("resume", &mut out).unwrap();
    assert_eq!(total, data.len() as u64);
    assert!(out == data, "the resumed download differs");

    // The streaming reader does the same.
    let proxy = cutting_proxy(server.url.trim_start_matches("http://").to_owned(), 1 << 20);
    let client = RegistryClient::new(&format!("http://{proxy}")).unwrap();
    let mut reader = client
        .blob_reader(&format!("http://{proxy}/blobs/resume"))
        .unwrap();
    assert_eq!(reader.total(), Some(data.len() as u64));
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    assert!(out == data);
}

#[test]
fn a_download_that_keeps_failing_gives_up() {
    // A server that sends 10 bytes of a 1000-byte body once, and then only headers: no progress
    // after the first resumption.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let request = String::from_utf8_lossy(&buf).to_ascii_lowercase();
            let start: Option<u64> = request
                .split("range: bytes=")
                .nth(1)
                .and_then(|rest| rest.split('-').next())
                .and_then(|n| n.parse().ok());
            let head = match start {
                Some(start) => format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-999/1000\r\n\
                     Content-Length: {}\r\n\r\n",
                    1000 - start
                ),
                None => "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_owned(),
            };
            let _ = stream.write_all(head.as_bytes());
            if start.is_none() {
                let _ = stream.write_all(&[0u8; 10]);
            }
        }
    });
    let client = RegistryClient::new(&format!("http://{addr}"))
        .unwrap()
        .with_retry(RetryPolicy {
            max_retries: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        });
    let err = client.download_blob("x", &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("gave up"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// A full disk: 507, nothing half-stored, and service again once space is freed

/// A filesystem store whose writes fail as on a full disk (`ENOSPC`, after the body is read)
/// for the keys that start with the prefix set in `full`.
#[derive(Debug)]
struct FillableStore {
    inner: FsStore,
    full: Mutex<Option<&'static str>>,
}

impl FillableStore {
    fn fill(&self, prefix: Option<&'static str>) {
        *self.full.lock().unwrap() = prefix;
    }
}

#[async_trait::async_trait]
impl BlobStore for FillableStore {
    async fn put(
        &self,
        key: &str,
        mut data: ByteStream,
        overwrite: bool,
    ) -> Result<u64, BlobError> {
        let full = *self.full.lock().unwrap();
        if full.is_some_and(|prefix| key.starts_with(prefix)) {
            while let Some(chunk) = data.next().await {
                chunk?;
            }
            return Err(BlobError::Io {
                what: "cannot write",
                path: format!("/srv/registry/{key}"),
                source: std::io::Error::from_raw_os_error(28),
            });
        }
        self.inner.put(key, data, overwrite).await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<BlobRead, BlobError> {
        self.inner.get(key, range).await
    }

    async fn head(&self, key: &str) -> Result<u64, BlobError> {
        self.inner.head(key).await
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobEntry>, BlobError> {
        self.inner.list(prefix).await
    }
}

/// PUT with the token: status and body.
fn put(url: &str, body: &[u8]) -> (u16, String) {
    let mut answer = agent()
        .put(url)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    let text = answer.body_mut().read_to_string().unwrap();
    (answer.status().as_u16(), text)
}

const FULL: &str = r#"{"error":"the registry's storage is full; retry once space is freed"}"#;

#[test]
fn a_full_disk_is_507_and_the_registry_serves_again_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FillableStore {
        inner: FsStore::open(dir.path()).unwrap(),
        full: Mutex::new(None),
    });
    let server = TestServer::start_with_store(store.clone(), 1 << 20);
    let blob_url = |id: &str| format!("{}/blobs/{id}", server.url);
    let info_url = |id: &str| format!("{}/models/{id}", server.url);
    assert_eq!(put(&blob_url("m-ok"), b"ciphertext").0, 201);
    assert_eq!(put(&info_url("m-ok"), b"{}").0, 200);

    store.fill(Some(""));
    assert_eq!(
        put(&blob_url("m-full"), b"ciphertext"),
        (507, FULL.to_owned())
    );
    assert_eq!(
        put(&info_url("m-ok"), br#"{"name": "new"}"#),
        (507, FULL.to_owned())
    );
    // Reads go on.
    let (status, _, _, body) = get(&blob_url("m-ok"), None);
    assert_eq!((status, body), (200, b"ciphertext".to_vec()));
    assert_eq!(get(&format!("{}/models", server.url), None).0, 200);

    // The blob fits, its record does not: the blob is removed too, so that the id is free.
    store.fill(Some("blob-meta/"));
    assert_eq!(
        put(&blob_url("m-half"), b"ciphertext"),
        (507, FULL.to_owned())
    );
    assert_eq!(get(&blob_url("m-half"), None).0, 404);

    // Space is freed: the same requests succeed, with no restart.
    store.fill(None);
    assert_eq!(put(&blob_url("m-full"), b"ciphertext").0, 201);
    assert_eq!(put(&blob_url("m-half"), b"ciphertext").0, 201);
    let (status, text) = put(&info_url("m-ok"), br#"{"name": "new"}"#);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""name":"new""#), "{text}");
    let (status, _, _, body) = get(&format!("{}/models", server.url), None);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        temp_files(dir.path()).is_empty(),
        "{:?}",
        temp_files(dir.path())
    );
}
