//! TDX and SNP evidence from the Confidential Containers attestation agent, for a server running in
//! a pod of a Kata/CoCo confidential VM, where the guest does not expose configfs-tsm to the
//! container.
//!
//! The agent (confidential-containers/guest-components) runs in the guest; its REST front end,
//! api-server-rest, answers in the pod at `http://127.0.0.1:8006` (loopback callers only):
//! `GET /aa/evidence?runtime_data=...` returns the evidence JSON of the guest's TEE, as the
//! agent's attesters write it:
//!
//! - TDX (`TdxEvidence`): `{"cc_eventlog": base64 or null, "quote": base64 of the DCAP quote}`;
//! - SEV-SNP (`SnpEvidence`): `{"attestation_report": <the serde form of the sev crate's
//!   AttestationReport>, "cert_chain": null or [{"cert_type": "VCEK", "data": [bytes]}, ...]}`;
//! - SGX under Occlum (`SgxDcapAttesterEvidence`): `{"quote": base64}`.
//!
//! The TEE is taken from the evidence: `attestation_report` means SNP, and a `quote`'s DCAP header
//! names SGX or TDX. The CC event log is not used: Adyton's TDX policies pin MRTD and RTMRs from
//! the quote itself.
//!
//! # Report data
//!
//! The agent does not hash runtime data: its TDX and SNP attesters put the bytes they are given
//! into the report data, zero-padded to 64 bytes, and refuse more than 64. The REST front end,
//! though, reads `runtime_data` as text (the percent-decoded query value as UTF-8, with invalid
//! sequences replaced), so arbitrary bytes do not survive it unless the request also says
//! `encoding=base64`, in which case the value is URL-safe base64 without padding, decoded to
//! bytes (api-server-rest's OpenAPI document). This attester sends its 64 bytes that way, so they
//! are used as they are, and checks that the evidence carries exactly them
//! ([`AttestError::ReportDataMismatch`] otherwise). An agent too old to know `encoding` answers
//! 405 (it allows one query parameter) or 500 (it reads the 86 characters of base64 as the runtime
//! data, more than 64 bytes): an error either way, never evidence over other report data.
//!
//! # SNP reports as JSON
//!
//! The agent serialises the report with the sev crate's serde derive, which has no reserved
//! fields; the signed 1184 bytes are rebuilt with the same crate (pinned in the workspace), whose
//! encoder writes the reserved fields as the zeros the SEV-SNP ABI requires. A report whose
//! reserved bytes were not zero, or a JSON layout of another sev version, fails verification or
//! parsing: it is never accepted as something else.

use std::fmt;
use std::io::Read;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::Deserialize;
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::CertTableEntry;
use sev::parser::ByteParser;

use crate::attester::Attester;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, MAX_EVIDENCE_LEN, REPORT_DATA_LEN};

/// Where api-server-rest answers inside a CoCo pod.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8006";

/// How long one evidence request may take: a TDX quote goes through the host's quote generation
/// service, which takes a few seconds on a busy host.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read: a quote or report with its certificates is a few KiB, written as
/// JSON numbers about four times that, and a CC event log up to a few hundred KiB.
pub const MAX_RESPONSE_LEN: usize = 1024 * 1024;

/// The report data of the request [`CocoAttester::open`] makes to learn the TEE: it binds nothing.
const PROBE_REPORT_DATA: &[u8] = b"adyton/coco-probe/v1";

/// DCAP quote header: `tee_type` (u32, little-endian) at offset 4.
const QUOTE_TEE_TYPE: std::ops::Range<usize> = 4..8;
const TEE_TYPE_SGX: u32 = 0;
const TEE_TYPE_TDX: u32 = 0x81;
/// An SGX quote's report data: after the 48-byte header, at offset 320 of the enclave report.
const SGX_REPORT_DATA_OFFSET: usize = 48 + 320;

/// Where the agent is and how long and large its answers may be.
#[derive(Clone, Debug)]
pub struct CocoOptions {
    /// The base URL of api-server-rest (`http://`, no path).
    pub url: String,
    /// The limit on one request, connection included.
    pub timeout: Duration,
    /// The largest answer accepted, in bytes.
    pub max_response_len: usize,
}

impl CocoOptions {
    /// The options for the agent at `url`, with the default timeout and size limit.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: DEFAULT_TIMEOUT,
            max_response_len: MAX_RESPONSE_LEN,
        }
    }
}

impl Default for CocoOptions {
    fn default() -> Self {
        Self::new(DEFAULT_URL)
    }
}

/// Evidence through the CoCo attestation agent's REST API.
pub struct CocoAttester {
    base: String,
    tee: TeeKind,
    agent: ureq::Agent,
    max_response_len: usize,
}

impl fmt::Debug for CocoAttester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CocoAttester")
            .field("url", &self.base)
            .field("tee", &self.tee)
            .finish_non_exhaustive()
    }
}

impl CocoAttester {
    /// Connects to the agent and asks it for evidence once, to learn the TEE it speaks for.
    pub fn open(options: &CocoOptions) -> Result<Self> {
        let base = base_url(&options.url)?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(options.timeout))
            .max_redirects(0)
            // The agent is on loopback: a proxy from the environment must not carry the request.
            .proxy(None)
            .user_agent(concat!("adyton-attest/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let mut attester = Self {
            base,
            tee: TeeKind::Tdx,
            agent,
            max_response_len: options.max_response_len,
        };
        let mut probe = [0u8; REPORT_DATA_LEN];
        probe[..PROBE_REPORT_DATA.len()].copy_from_slice(PROBE_REPORT_DATA);
        attester.tee = attester.request(&probe)?.tee;
        Ok(attester)
    }

    /// The agent's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn error(&self, reason: impl Into<String>) -> AttestError {
        AttestError::AttestationAgent {
            url: self.base.clone(),
            reason: reason.into(),
        }
    }

    /// Asks for evidence over `report_data` and checks that it carries it.
    fn request(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence> {
        let url = format!(
            "{}/aa/evidence?runtime_data={}&encoding=base64",
            self.base,
            URL_SAFE_NO_PAD.encode(report_data)
        );
        let mut response = self.agent.get(&url).call().map_err(|e| match e {
            ureq::Error::Timeout(_) => self.error("no answer within the time limit"),
            e => self.error(format!("request failed: {e}")),
        })?;
        let status = response.status();
        let limit = self.max_response_len as u64;
        // One byte more than the limit is read, to tell a body at the limit from a longer one.
        let mut body = Vec::new();
        response
            .body_mut()
            .with_config()
            .limit(limit + 1)
            .reader()
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.error(format!("reading the answer failed: {e}")))?;
        if body.len() as u64 > limit {
            return Err(self.error(format!("the answer exceeds the {limit}-byte limit")));
        }
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&body)
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            return Err(self.error(format!(
                "HTTP {status}{}{text}{}",
                if text.is_empty() { "" } else { " (" },
                if text.is_empty() { "" } else { ")" },
            )));
        }
        let evidence = parse_agent_evidence(&body).map_err(|e| self.error(e.to_string()))?;
        check_report_data(&evidence, report_data)?;
        Ok(evidence)
    }
}

impl Attester for CocoAttester {
    fn tee(&self) -> TeeKind {
        self.tee
    }

    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence> {
        let evidence = self.request(report_data)?;
        // The guest's TEE cannot change under a running pod; an agent that says otherwise is not
        // the one that was opened.
        if evidence.tee != self.tee {
            return Err(AttestError::WrongTee {
                expected: self.tee,
                found: evidence.tee,
            });
        }
        Ok(evidence)
    }
}

/// Checks that `url` is `http://host[:port]` and strips a trailing `/`. The agent speaks plain
/// HTTP on loopback; a path or query would be silently dropped, so it is refused.
fn base_url(url: &str) -> Result<String> {
    let bad = |why: &str| AttestError::AttestationAgent {
        url: url.chars().take(200).collect(),
        reason: format!("not a usable agent URL: {why}"),
    };
    let trimmed = url.trim().trim_end_matches('/');
    let Some(rest) = trimmed.strip_prefix("http://") else {
        return Err(bad(
            "it must start with http:// (api-server-rest speaks plain HTTP)",
        ));
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad(
            "expected http://HOST[:PORT], with no path, query or user",
        ));
    }
    let uri: std::result::Result<ureq::http::Uri, _> = trimmed.parse();
    if uri.is_err() {
        return Err(bad("it does not parse"));
    }
    Ok(trimmed.to_owned())
}

/// The agent's evidence JSON: TDX and SGX have `quote`, SNP has `attestation_report`.
#[derive(Deserialize)]
struct AgentEvidence {
    #[serde(default)]
    quote: Option<String>,
    #[serde(default)]
    attestation_report: Option<serde_json::Value>,
    #[serde(default)]
    cert_chain: Option<Vec<CertTableEntry>>,
}

/// Reads the evidence JSON the agent returns (see the module's documentation) into [`Evidence`].
/// The TEE is taken from the evidence itself.
pub fn parse_agent_evidence(body: &[u8]) -> Result<Evidence> {
    if body.len() > MAX_RESPONSE_LEN {
        return Err(AttestError::malformed(format!(
            "{} bytes of agent evidence, at most {MAX_RESPONSE_LEN} are accepted",
            body.len()
        )));
    }
    let doc: AgentEvidence = serde_json::from_slice(body)
        .map_err(|e| AttestError::malformed(format!("not the agent's evidence JSON: {e}")))?;
    match (doc.attestation_report, doc.quote) {
        (Some(report), None) => snp_evidence(report, doc.cert_chain),
        (None, Some(quote)) => quote_evidence(&quote),
        (Some(_), Some(_)) => Err(AttestError::malformed(
            "the agent's evidence has both `quote` and `attestation_report`",
        )),
        (None, None) => Err(AttestError::malformed(
            "the agent's evidence has neither `quote` (TDX, SGX) nor `attestation_report` \
             (SEV-SNP); other TEEs of the agent (Azure vTPM, CCA, IBM SE, CSV) are not supported",
        )),
    }
}

fn quote_evidence(quote: &str) -> Result<Evidence> {
    // Base64 is 4/3 of the bytes: refuse before decoding what could not fit.
    if quote.len() > MAX_EVIDENCE_LEN / 3 * 4 + 4 {
        return Err(AttestError::malformed("the agent's quote is too large"));
    }
    let quote = BASE64
        .decode(quote)
        .map_err(|e| AttestError::malformed(format!("the agent's quote is not base64: {e}")))?;
    let tee_type = quote
        .get(QUOTE_TEE_TYPE)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| AttestError::malformed("the agent's quote is shorter than its header"))?;
    let tee = match tee_type {
        TEE_TYPE_TDX => TeeKind::Tdx,
        TEE_TYPE_SGX => TeeKind::Sgx,
        other => {
            return Err(AttestError::malformed(format!(
                "the agent's quote has TEE type {other:#x}, neither SGX (0) nor TDX (0x81)"
            )))
        }
    };
    Ok(Evidence {
        tee,
        quote,
        certificates: None,
        gpus: Vec::new(),
    })
}

fn snp_evidence(
    report: serde_json::Value,
    cert_chain: Option<Vec<CertTableEntry>>,
) -> Result<Evidence> {
    let report: AttestationReport = serde_json::from_value(report).map_err(|e| {
        AttestError::malformed(format!(
            "the agent's attestation_report is not the sev crate's JSON form of an SNP report: {e}"
        ))
    })?;
    let quote = report
        .to_bytes()
        .map_err(|e| AttestError::malformed(format!("the agent's SNP report: {e}")))?
        .to_vec();
    let certificates = match cert_chain {
        Some(entries) if !entries.is_empty() => Some(cert_table(&entries)?),
        _ => None,
    };
    Ok(Evidence {
        tee: TeeKind::Snp,
        quote,
        certificates,
        gpus: Vec::new(),
    })
}

/// Writes certificates in the extended-report table form that configfs-tsm's `auxblob` has and
/// the SNP verifier reads (GHCB specification, "SNP Extended Guest Request"): entries of a GUID,
/// a u32 offset from the table's start and a u32 length, an all-zero entry, then the data.
fn cert_table(entries: &[CertTableEntry]) -> Result<Vec<u8>> {
    const ENTRY_LEN: usize = 24;
    let mut table = Vec::new();
    let mut offset = (entries.len() + 1) * ENTRY_LEN;
    for entry in entries {
        let guid = uuid_bytes(entry.cert_type.clone())?;
        let len = entry.data().len();
        let (Ok(offset32), Ok(len32)) = (u32::try_from(offset), u32::try_from(len)) else {
            return Err(AttestError::malformed(
                "the agent's certificates are too large",
            ));
        };
        table.extend_from_slice(&guid);
        table.extend_from_slice(&offset32.to_le_bytes());
        table.extend_from_slice(&len32.to_le_bytes());
        offset += len;
        if offset > MAX_EVIDENCE_LEN {
            return Err(AttestError::malformed(
                "the agent's certificates are too large",
            ));
        }
    }
    table.extend_from_slice(&[0u8; ENTRY_LEN]);
    for entry in entries {
        table.extend_from_slice(entry.data());
    }
    Ok(table)
}

/// The GUID of a certificate type in RFC 4122 byte order, as the table holds it.
fn uuid_bytes(cert_type: sev::firmware::host::CertType) -> Result<[u8; 16]> {
    let text = cert_type.to_string();
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    hex::decode(&hex)
        .ok()
        .and_then(|bytes| <[u8; 16]>::try_from(bytes.as_slice()).ok())
        .ok_or_else(|| AttestError::malformed(format!("certificate type `{text}` is not a GUID")))
}

/// Where the report data sits in evidence of each TEE.
fn report_data_of(evidence: &Evidence) -> Option<&[u8]> {
    let offset = match evidence.tee {
        TeeKind::Sgx => SGX_REPORT_DATA_OFFSET,
        tee => super::tsm::report_data_offset(tee, &evidence.quote),
    };
    evidence.quote.get(offset..offset + REPORT_DATA_LEN)
}

/// Checks that the agent's evidence carries `report_data`, so that an agent that hashed, padded
/// or replaced it is an error here, not a refusal at every verifier.
fn check_report_data(evidence: &Evidence, report_data: &[u8; REPORT_DATA_LEN]) -> Result<()> {
    let found = report_data_of(evidence).ok_or_else(|| {
        AttestError::malformed(format!(
            "the agent's {} evidence is too short to hold report data",
            evidence.tee
        ))
    })?;
    if found != report_data {
        return Err(AttestError::ReportDataMismatch {
            expected: hex::encode(report_data),
            found: hex::encode(found),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Against a local imitation of api-server-rest serving the recorded evidence of
    //! `testdata/`: a TDX quote (dcap-qvl's sample) and an SNP report with its VCEK (sev's). A
    //! recorded quote carries the report data it was made with, so the imitation can answer only
    //! that request truthfully; any other report data gets the same quote, which is what the
    //! binding check must refuse.

    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    use std::thread;

    use sev::firmware::host::CertType;

    use super::*;
    use crate::collateral::Collateral;
    use crate::verifier;

    const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/");
    /// 2025-01-01T00:00:00Z, inside the Milan VCEK's validity (`testdata/snp/README.md`).
    const SNP_NOW: u64 = 1_735_689_600;

    fn read(path: &str) -> Vec<u8> {
        std::fs::read(format!("{TESTDATA}{path}")).unwrap()
    }

    fn milan_report() -> Vec<u8> {
        hex::decode(
            String::from_utf8(read("snp/report_milan.hex"))
                .unwrap()
                .trim(),
        )
        .unwrap()
    }

    fn tdx_quote() -> Vec<u8> {
        read("dcap/tdx_quote")
    }

    /// What guest-components' TDX attester writes.
    fn tdx_json(quote: &[u8]) -> Vec<u8> {
        serde_json::json!({ "cc_eventlog": BASE64.encode(b"event log"), "quote": BASE64.encode(quote) })
            .to_string()
            .into_bytes()
    }

    /// What guest-components' SNP attester writes: the sev crate's serde form of the report.
    fn snp_json(report: &[u8], vcek: Option<Vec<u8>>) -> Vec<u8> {
        let report = AttestationReport::from_bytes(report).unwrap();
        let chain = vcek.map(|der| vec![CertTableEntry::new(CertType::VCEK, der)]);
        serde_json::json!({ "attestation_report": report, "cert_chain": chain })
            .to_string()
            .into_bytes()
    }

    fn report_data_at(quote: &[u8], offset: usize) -> [u8; REPORT_DATA_LEN] {
        quote[offset..offset + REPORT_DATA_LEN].try_into().unwrap()
    }

    /// One answer of the imitation.
    #[derive(Clone)]
    enum Answer {
        Evidence(Vec<u8>),
        Status(u16, &'static str),
        /// Never answers within any test's timeout.
        Hang,
    }

    /// An imitation of api-server-rest on 127.0.0.1: it serves `answer` to every request and
    /// records each request's target.
    struct Agent {
        url: String,
        targets: Arc<Mutex<Vec<String>>>,
    }

    impl Agent {
        fn start(answer: Answer) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let targets = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&targets);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    let answer = answer.clone();
                    let seen = Arc::clone(&seen);
                    thread::spawn(move || serve(stream, &answer, &seen));
                }
            });
            Self { url, targets }
        }

        fn options(&self) -> CocoOptions {
            CocoOptions {
                timeout: Duration::from_secs(5),
                ..CocoOptions::new(self.url.clone())
            }
        }

        fn last_target(&self) -> String {
            self.targets.lock().unwrap().last().cloned().unwrap()
        }
    }

    fn serve(stream: TcpStream, answer: &Answer, seen: &Mutex<Vec<String>>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        seen.lock()
            .unwrap()
            .push(line.split(' ').nth(1).unwrap_or_default().to_owned());
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                break;
            }
        }
        let (status, body) = match answer {
            Answer::Evidence(body) => (200, body.clone()),
            Answer::Status(status, text) => (*status, text.as_bytes().to_vec()),
            Answer::Hang => {
                thread::sleep(Duration::from_secs(30));
                return;
            }
        };
        let mut stream = stream;
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body);
    }

    #[test]
    fn tdx_evidence_through_the_agent_is_the_quote_and_names_tdx() {
        let quote = tdx_quote();
        let agent = Agent::start(Answer::Evidence(tdx_json(&quote)));
        // The recorded quote's own report data is the one request it answers truthfully.
        let bound = report_data_at(
            &quote,
            super::super::tsm::report_data_offset(TeeKind::Tdx, &quote),
        );
        let err = CocoAttester::open(&agent.options()).unwrap_err();
        assert!(
            matches!(err, AttestError::ReportDataMismatch { .. }),
            "{err}"
        );
        let attester = CocoAttester {
            tee: TeeKind::Tdx,
            ..opened_without_probe(&agent)
        };
        let evidence = attester.evidence(&bound).unwrap();
        assert_eq!(evidence.tee, TeeKind::Tdx);
        assert_eq!(evidence.quote, quote);
        assert_eq!(evidence.certificates, None);
        // The 64 bytes went as URL-safe base64 with encoding=base64, so the agent uses them as is.
        assert_eq!(
            agent.last_target(),
            format!(
                "/aa/evidence?runtime_data={}&encoding=base64",
                URL_SAFE_NO_PAD.encode(bound)
            )
        );
    }

    /// An attester on `agent` made without `open`'s probe, whose report data no recorded quote
    /// carries.
    fn opened_without_probe(agent: &Agent) -> CocoAttester {
        CocoAttester {
            base: agent.url.clone(),
            tee: TeeKind::Snp,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(5)))
                .proxy(None)
                .build()
                .new_agent(),
            max_response_len: MAX_RESPONSE_LEN,
        }
    }

    #[test]
    fn tdx_evidence_over_other_report_data_is_a_mismatch() {
        let quote = tdx_quote();
        let agent = Agent::start(Answer::Evidence(tdx_json(&quote)));
        let attester = CocoAttester {
            tee: TeeKind::Tdx,
            ..opened_without_probe(&agent)
        };
        let mut other = report_data_at(
            &quote,
            super::super::tsm::report_data_offset(TeeKind::Tdx, &quote),
        );
        other[63] ^= 1;
        let err = attester.evidence(&other).unwrap_err();
        assert!(
            matches!(err, AttestError::ReportDataMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn snp_evidence_through_the_agent_rebuilds_the_signed_report_and_verifies() {
        let report = milan_report();
        let vcek = read("snp/vcek_milan.der");
        let agent = Agent::start(Answer::Evidence(snp_json(&report, Some(vcek.clone()))));
        let attester = opened_without_probe(&agent);
        let evidence = attester.evidence(&report_data_at(&report, 0x50)).unwrap();
        assert_eq!(evidence.tee, TeeKind::Snp);
        // The JSON form has no reserved fields; the rebuilt bytes are the signed ones all the same.
        assert_eq!(evidence.quote, report);
        let table =
            crate::verifier::snp::parse_cert_table(evidence.certificates.as_deref().unwrap())
                .unwrap();
        assert_eq!(table, vec![(CertType::VCEK, vcek.as_slice())]);
        // With no collateral of its own, the verifier finds the VCEK in the table the agent sent.
        let claims = verifier::verify(&evidence, &Collateral::default(), SNP_NOW).unwrap();
        claims
            .expect_report_data(&report_data_at(&report, 0x50))
            .unwrap();
    }

    #[test]
    fn snp_evidence_without_certificates_has_none() {
        let report = milan_report();
        let evidence = parse_agent_evidence(&snp_json(&report, None)).unwrap();
        assert_eq!((evidence.tee, evidence.certificates), (TeeKind::Snp, None));
        assert_eq!(evidence.quote, report);
    }

    #[test]
    fn a_changed_field_of_the_snp_json_fails_verification() {
        let report = milan_report();
        let vcek = read("snp/vcek_milan.der");
        let mut doc: serde_json::Value =
            serde_json::from_slice(&snp_json(&report, Some(vcek))).unwrap();
        doc["attestation_report"]["guest_svn"] = serde_json::json!(7);
        let evidence = parse_agent_evidence(doc.to_string().as_bytes()).unwrap();
        let err = verifier::verify(&evidence, &Collateral::default(), SNP_NOW).unwrap_err();
        assert!(matches!(err, AttestError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn the_tee_of_a_quote_comes_from_its_header() {
        let sgx = read("dcap/sgx_quote");
        let evidence = parse_agent_evidence(
            &serde_json::json!({ "quote": BASE64.encode(&sgx) })
                .to_string()
                .into_bytes(),
        )
        .unwrap();
        assert_eq!(evidence.tee, TeeKind::Sgx);
        // "Hello, world!" padded with zeros (`testdata/dcap/README.md`).
        assert_eq!(&report_data_of(&evidence).unwrap()[..13], b"Hello, world!");
        let mut other = tdx_quote();
        other[4] = 0x42;
        let err = parse_agent_evidence(&tdx_json(&other)).unwrap_err();
        assert!(err.to_string().contains("TEE type 0x42"), "{err}");
    }

    #[test]
    fn bad_evidence_json_is_refused_with_a_reason() {
        let cases: [(&[u8], &str); 7] = [
            (b"not json", "not the agent's evidence JSON"),
            (b"[1, 2]", "not the agent's evidence JSON"),
            (b"{}", "neither `quote`"),
            (br#"{"tpm_quote": {}}"#, "neither `quote`"),
            (br#"{"quote": "%%%"}"#, "not base64"),
            (br#"{"quote": "AAAA"}"#, "shorter than its header"),
            (
                br#"{"attestation_report": {"version": 2}}"#,
                "sev crate's JSON form",
            ),
        ];
        for (body, expected) in cases {
            let err = parse_agent_evidence(body).unwrap_err();
            assert!(
                matches!(err, AttestError::MalformedEvidence { .. }),
                "{err}"
            );
            assert!(err.to_string().contains(expected), "{err} lacks {expected}");
        }
        let both = serde_json::json!({ "quote": "AAAA", "attestation_report": {} });
        let err = parse_agent_evidence(both.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("both"), "{err}");
    }

    #[test]
    fn agent_errors_are_errors_of_the_agent() {
        let agent = Agent::start(Answer::Status(
            500,
            "TDX Attester: Report data must be no more than 64 bytes",
        ));
        let err = CocoAttester::open(&agent.options()).unwrap_err();
        let AttestError::AttestationAgent { url, reason } = &err else {
            panic!("{err}")
        };
        assert_eq!(url, &agent.url);
        assert!(
            reason.contains("HTTP 500") && reason.contains("no more than 64"),
            "{reason}"
        );
        // An agent too old for encoding=base64 allows one query parameter.
        let agent = Agent::start(Answer::Status(405, ""));
        let err = CocoAttester::open(&agent.options()).unwrap_err();
        assert!(err.to_string().contains("HTTP 405"), "{err}");
        let agent = Agent::start(Answer::Evidence(b"{\"quote\": 5}".to_vec()));
        let err = CocoAttester::open(&agent.options()).unwrap_err();
        assert!(matches!(err, AttestError::AttestationAgent { .. }), "{err}");
    }

    #[test]
    fn an_oversized_answer_is_refused() {
        let mut body = tdx_json(&tdx_quote());
        body.resize(MAX_RESPONSE_LEN + 10, b' ');
        let agent = Agent::start(Answer::Evidence(body));
        let err = CocoAttester::open(&agent.options()).unwrap_err();
        assert!(
            err.to_string().contains("exceeds the 1048576-byte limit"),
            "{err}"
        );
        let small = CocoOptions {
            max_response_len: 1000,
            ..agent.options()
        };
        let err = CocoAttester::open(&small).unwrap_err();
        assert!(
            err.to_string().contains("exceeds the 1000-byte limit"),
            "{err}"
        );
    }

    #[test]
    fn a_silent_agent_times_out() {
        let agent = Agent::start(Answer::Hang);
        let options = CocoOptions {
            timeout: Duration::from_millis(300),
            ..agent.options()
        };
        let start = std::time::Instant::now();
        let err = CocoAttester::open(&options).unwrap_err();
        assert!(err.to_string().contains("no answer within"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn nothing_listening_is_an_error_of_the_agent() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err =
            CocoAttester::open(&CocoOptions::new(format!("http://127.0.0.1:{port}"))).unwrap_err();
        assert!(matches!(err, AttestError::AttestationAgent { .. }), "{err}");
    }

    #[test]
    fn agent_urls_are_checked() {
        assert_eq!(
            base_url("http://127.0.0.1:8006/").unwrap(),
            "http://127.0.0.1:8006"
        );
        for bad in [
            "https://127.0.0.1:8006",
            "127.0.0.1:8006",
            "http://",
            "http://h/aa",
            "http://u@h",
            "http://h?x",
        ] {
            let err = base_url(bad).unwrap_err();
            assert!(
                matches!(err, AttestError::AttestationAgent { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn coco_is_a_choice_and_auto_never_makes_it() {
        assert_eq!(
            "coco".parse::<super::super::TeeChoice>().unwrap(),
            super::super::TeeChoice::Coco
        );
        assert_eq!(
            "CoCo".parse::<super::super::TeeChoice>().unwrap(),
            super::super::TeeChoice::Coco
        );
        // `auto` looks for local interfaces only: nothing here is asked over the network.
        let missing = std::path::PathBuf::from("/nonexistent/adyton");
        let paths = super::super::AttesterPaths {
            gramine: missing.clone(),
            tsm_report: missing.clone(),
            sim_key: missing.clone(),
            sev_guest: missing.clone(),
            tpm: missing.clone(),
            nsm: missing,
            coco: CocoOptions::new("http://192.0.2.1:1"),
        };
        assert_eq!(super::super::detect(&paths), None);
        // Offline mode needs a sealing key, which the agent does not give.
        let err = crate::seal::sealer_for(super::super::TeeChoice::Coco, &paths).unwrap_err();
        assert!(
            matches!(&err, AttestError::AttestationAgent { reason, .. } if reason.contains("not sealing keys")),
            "{err}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever the agent answers is evidence or an error, never a panic.
        #[test]
        fn any_answer_is_evidence_or_an_error(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
        ) {
            let _ = parse_agent_evidence(&body);
        }

        /// The same for the real answers with a few bytes changed, which keeps most of them JSON.
        #[test]
        fn a_changed_real_answer_is_evidence_or_an_error(
            snp in proptest::bool::ANY,
            edits in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..4),
        ) {
            let mut body = if snp {
                snp_json(&milan_report(), Some(read("snp/vcek_milan.der")))
            } else {
                tdx_json(&tdx_quote())
            };
            for (at, byte) in edits {
                let at = at % body.len();
                body[at] = byte;
            }
            let _ = parse_agent_evidence(&body);
        }
    }
}
