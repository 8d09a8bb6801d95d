//! A local imitation of Intel's PCS (or a PCCS) and of AMD's KDS, for tests.
//!
//! A small HTTP/1.1 server on 127.0.0.1 (std `TcpListener`, one thread per connection, and
//! rustls for HTTPS) serves the collateral that dcap-qvl recorded with its sample quotes, split
//! into the PCCS v4 responses it came from, and the VCEK and AMD chain that the `sev` crate ships
//! (`testdata/pccs/README.md`). It records every request target, so that tests can tell a cache
//! hit from a fetch, and can be slowed down, so that concurrent requests overlap. Nothing here
//! reaches beyond 127.0.0.1.
//!
//! The KBS's tests include this file too (`#[path]`), so that there is one imitation.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dcap_qvl::QuoteCollateralV3;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub fn testdata_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/pccs")
        .join(name)
}

pub fn testdata(name: &str) -> Vec<u8> {
    let path = testdata_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The local server.

#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with these headers and body.
    Ok(Vec<(String, String)>, Vec<u8>),
    /// This status, with a short body.
    Status(u16),
    /// Read the request, then close the connection without answering.
    Close,
    /// Read the request, then say nothing until the server stops (at most 10 s).
    Hang,
    /// Wait this long, then answer as the inner reply says.
    Delayed(Duration, Box<Reply>),
}

pub type Routes = Arc<Mutex<HashMap<String, Reply>>>;

pub struct Server {
    addr: SocketAddr,
    tls: bool,
    routes: Routes,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(routes: HashMap<String, Reply>) -> Self {
        Self::spawn(routes, None)
    }

    pub fn start_tls(routes: HashMap<String, Reply>) -> Self {
        let certs = CertificateDer::pem_slice_iter(&testdata("tls/server.pem"))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(&testdata("tls/server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Self::spawn(routes, Some(Arc::new(config)))
    }

    pub fn spawn(routes: HashMap<String, Reply>, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let routes: Routes = Arc::new(Mutex::new(routes));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let is_tls = tls.is_some();
        let accept_thread = {
            let (routes, requests, stop) = (routes.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (routes, requests, stop) = (routes.clone(), requests.clone(), stop.clone());
                    let tls = tls.clone();
                    std::thread::spawn(move || {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                        match tls {
                            None => serve(stream, &routes, &requests, &stop),
                            Some(config) => {
                                let conn = rustls::ServerConnection::new(config).unwrap();
                                let stream = rustls::StreamOwned::new(conn, stream);
                                serve(stream, &routes, &requests, &stop);
                            }
                        }
                    });
                }
            })
        };
        Self {
            addr,
            tls: is_tls,
            routes,
            requests,
            stop,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    pub fn set(&self, target: &str, reply: Reply) {
        self.routes.lock().unwrap().insert(target.to_owned(), reply);
    }

    /// Delays every reply by `delay`, so that requests made at about the same time overlap.
    pub fn slow_down(&self, delay: Duration) {
        for reply in self.routes.lock().unwrap().values_mut() {
            *reply = Reply::Delayed(delay, Box::new(reply.clone()));
        }
    }

    /// How many requests asked for `target`.
    pub fn count(&self, target: &str) -> usize {
        self.requests().iter().filter(|r| *r == target).count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag and drops the listener.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn serve(
    mut stream: impl Read + Write,
    routes: &Routes,
    requests: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    let Some(target) = read_request_target(&mut stream) else {
        return;
    };
    requests.lock().unwrap().push(target.clone());
    let reply = routes.lock().unwrap().get(&target).cloned();
    let mut reply = reply.unwrap_or(Reply::Status(404));
    while let Reply::Delayed(delay, inner) = reply {
        std::thread::sleep(delay);
        reply = *inner;
    }
    let (status, headers, body) = match reply {
        Reply::Ok(headers, body) => (200, headers, body),
        Reply::Status(status) => (status, Vec::new(), b"no such collateral\n".to_vec()),
        Reply::Close => return,
        Reply::Delayed(..) => unreachable!("unwrapped above"),
        Reply::Hang => {
            let until = Instant::now() + Duration::from_secs(10);
            while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in &headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // The client may hang up early (the size limit test); that is not the server's failure.
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&body))
        .and_then(|()| stream.flush());
}

/// The target of `GET <target> HTTP/1.1`, once the whole request head has arrived.
pub fn read_request_target(stream: &mut impl Read) -> Option<String> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 || head.len() > 16 * 1024 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&head).lines().next()?.to_owned();
    let mut parts = line.split_whitespace();
    (parts.next()? == "GET").then_some(())?;
    parts.next().map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------
// Recorded collateral as PCCS responses.

/// One of dcap-qvl's samples: the quote, its recorded collateral, and where a PCCS serves it.
pub struct Sample {
    pub quote: Vec<u8>,
    pub recorded: QuoteCollateralV3,
    pub tee: &'static str,
    /// The PCK CA of the quote's PCK certificate (the issuer of the recorded PCK CRL).
    pub ca: &'static str,
}

impl Sample {
    pub fn sgx() -> Self {
        Self::load("sgx_quote", "sgx_quote_collateral.json", "sgx", "processor")
    }

    pub fn tdx() -> Self {
        Self::load("tdx_quote", "tdx_quote_collateral.json", "tdx", "platform")
    }

    pub fn load(quote: &str, json: &str, tee: &'static str, ca: &'static str) -> Self {
        Self {
            quote: testdata(quote),
            recorded: serde_json::from_slice(&testdata(json)).unwrap(),
            tee,
            ca,
        }
    }

    pub fn fmspc(&self) -> String {
        let tcb_info: serde_json::Value = serde_json::from_str(&self.recorded.tcb_info).unwrap();
        tcb_info["fmspc"].as_str().unwrap().to_owned()
    }

    pub fn pck_crl_path(&self) -> String {
        format!("/sgx/certification/v4/pckcrl?ca={}&encoding=der", self.ca)
    }

    pub fn tcb_path(&self) -> String {
        format!("/{}/certification/v4/tcb?fmspc={}", self.tee, self.fmspc())
    }

    pub fn qe_identity_path(&self) -> String {
        format!("/{}/certification/v4/qe/identity", self.tee)
    }

    pub fn root_ca_crl_path(&self) -> &'static str {
        "/sgx/certification/v4/rootcacrl"
    }

    pub fn paths(&self) -> Vec<String> {
        vec![
            self.pck_crl_path(),
            self.tcb_path(),
            self.qe_identity_path(),
            self.root_ca_crl_path().to_owned(),
        ]
    }

    /// The PCCS responses that the recorded collateral was assembled from.
    ///
    /// SGX is served as a current PCCS does (`TCB-Info-Issuer-Chain`, root CA CRL in hex); TDX as
    /// an older one does (`SGX-TCB-Info-Issuer-Chain`, root CA CRL in DER), so both are covered.
    pub fn routes(&self) -> HashMap<String, Reply> {
        let c = &self.recorded;
        let chain =
            |name: &str, pem: &str| vec![(name.to_owned(), urlencoding::encode(pem).into())];
        let tcb_header = if self.tee == "sgx" {
            "TCB-Info-Issuer-Chain"
        } else {
            "SGX-TCB-Info-Issuer-Chain"
        };
        let root_ca_crl = if self.tee == "sgx" {
            hex::encode(&c.root_ca_crl).into_bytes()
        } else {
            c.root_ca_crl.clone()
        };
        HashMap::from([
            (
                self.pck_crl_path(),
                Reply::Ok(
                    chain("SGX-PCK-CRL-Issuer-Chain", &c.pck_crl_issuer_chain),
                    c.pck_crl.clone(),
                ),
            ),
            (
                self.tcb_path(),
                Reply::Ok(
                    chain(tcb_header, &c.tcb_info_issuer_chain),
                    signed_json("tcbInfo", &c.tcb_info, &c.tcb_info_signature),
                ),
            ),
            (
                self.qe_identity_path(),
                Reply::Ok(
                    chain(
                        "SGX-Enclave-Identity-Issuer-Chain",
                        &c.qe_identity_issuer_chain,
                    ),
                    signed_json("enclaveIdentity", &c.qe_identity, &c.qe_identity_signature),
                ),
            ),
            (
                self.root_ca_crl_path().to_owned(),
                Reply::Ok(Vec::new(), root_ca_crl),
            ),
        ])
    }
}

/// A PCS body: the signed object as Intel serves it, and the hex signature.
pub fn signed_json(key: &str, object: &str, signature: &[u8]) -> Vec<u8> {
    format!(
        r#"{{"{key}":{object},"signature":"{}"}}"#,
        hex::encode(signature)
    )
    .into_bytes()
}

pub fn milan_report() -> Vec<u8> {
    // The sev crate stores the report as one line of upper-case hex.
    let text = String::from_utf8(testdata("report_milan.hex")).unwrap();
    hex::decode(text.trim()).unwrap()
}

pub fn kds_routes(
    product: &str,
    vcek_path: &str,
    vcek: &str,
    chain: &str,
) -> HashMap<String, Reply> {
    HashMap::from([
        (vcek_path.to_owned(), Reply::Ok(Vec::new(), testdata(vcek))),
        (
            format!("/vcek/v1/{product}/cert_chain"),
            Reply::Ok(Vec::new(), testdata(chain)),
        ),
    ])
}
