//! Azure confidential VMs: the HCL report from the vTPM and a vTPM quote over the report data.
//!
//! The evidence is the container of [`crate::verifier::azure`]. The vTPM is reached through the
//! [`Vtpm`] trait, which tests fake; [`TpmDevice`] speaks the TPM 2.0 command protocol to the
//! kernel's resource manager (`/dev/tpmrm0`) directly. Three commands are all it needs
//! (`TPM2_NV_Read`, `TPM2_Quote`, `TPM2_PCR_Read`, plus `TPM2_NV_ReadPublic` for the NV index's
//! size), each with an empty password session, so a fixed marshalling of about a hundred lines
//! replaces a C TPM software stack (`tss-esapi` needs `libtss2`) inside the TEE binary.
//!
//! For TDX, the HCL report holds a TD report, which only this machine can check; Azure's IMDS
//! turns it into a TD quote ([`TdQuoteSource`], [`ImdsTdQuote`]).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::attester::Attester;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, REPORT_DATA_LEN};
use crate::verifier::azure::{
    parse_quote_message, pcr_digest, quote_nonce, AzureEvidence, HardwareReportType, HclReport,
    TpmQuote, AK_HANDLE, FORMAT, HCL_REPORT_NV_INDEX, MAX_HCL_REPORT_LEN,
};

/// The PCRs every quote covers: all 24 of the SHA-256 bank.
pub const QUOTED_PCRS: [u8; 24] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
];

/// How often a quote is retaken when a PCR changed between the quote and the PCR read.
const QUOTE_ATTEMPTS: usize = 3;

/// A quote as the TPM returns it: the marshalled `TPMS_ATTEST` and the bare RSA signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawQuote {
    /// `TPMS_ATTEST`.
    pub message: Vec<u8>,
    /// The signature of `TPMT_SIGNATURE` (RSASSA).
    pub signature: Vec<u8>,
}

/// The vTPM operations the attester needs.
pub trait Vtpm: Send + Sync + fmt::Debug {
    /// The whole contents of an NV index (owner authorisation, empty password).
    fn read_nv(&self, index: u32) -> Result<Vec<u8>>;

    /// A quote with the key at `ak_handle` over `pcrs` (SHA-256 bank), with `qualifying_data`.
    fn quote(&self, ak_handle: u32, qualifying_data: &[u8], pcrs: &[u8]) -> Result<RawQuote>;

    /// The SHA-256 values of `pcrs`.
    fn read_pcrs(&self, pcrs: &[u8]) -> Result<BTreeMap<u8, [u8; 32]>>;
}

/// Turns a TD report into a TD quote.
pub trait TdQuoteSource: Send + Sync + fmt::Debug {
    /// The TD quote of `td_report` (1024 bytes).
    fn td_quote(&self, td_report: &[u8]) -> Result<Vec<u8>>;
}

/// Evidence from an Azure confidential VM.
#[derive(Debug)]
pub struct AzureAttester {
    tee: TeeKind,
    vtpm: Box<dyn Vtpm>,
    td_quotes: Option<Box<dyn TdQuoteSource>>,
}

impl AzureAttester {
    /// The attester of `tee` (AZURE-SNP or AZURE-TDX) on the TPM device at `tpm` (normally
    /// `/dev/tpmrm0`), checked by reading the HCL report once. TDX quotes come from Azure's IMDS.
    pub fn open(tpm: &Path, tee: TeeKind) -> Result<Self> {
        let device = TpmDevice::open(tpm, tee)?;
        let td_quotes: Option<Box<dyn TdQuoteSource>> = match tee {
            TeeKind::AzureTdx => Some(Box::new(ImdsTdQuote::default())),
            _ => None,
        };
        let attester = Self::new(tee, Box::new(device), td_quotes)?;
        attester.hcl_report()?;
        Ok(attester)
    }

    /// Which Azure TEE the vTPM at `tpm` speaks for, for `auto` detection: AZURE-SNP or
    /// AZURE-TDX after the hardware report in its HCL report. Fails on a machine without a TPM
    /// or whose TPM has no HCL report (every machine that is not an Azure confidential VM).
    pub fn probe(tpm: &Path) -> Result<TeeKind> {
        let device = TpmDevice::open(tpm, TeeKind::AzureSnp)?;
        Self::probe_vtpm(&device)
    }

    /// [`AzureAttester::probe`] over any vTPM.
    pub fn probe_vtpm(vtpm: &dyn Vtpm) -> Result<TeeKind> {
        let bytes = vtpm.read_nv(HCL_REPORT_NV_INDEX)?;
        Ok(match HclReport::parse(&bytes)?.report_type {
            HardwareReportType::Snp => TeeKind::AzureSnp,
            HardwareReportType::Tdx => TeeKind::AzureTdx,
        })
    }

    /// An attester over any vTPM and TD quote source (tests pass fakes). AZURE-TDX needs a TD
    /// quote source.
    pub fn new(
        tee: TeeKind,
        vtpm: Box<dyn Vtpm>,
        td_quotes: Option<Box<dyn TdQuoteSource>>,
    ) -> Result<Self> {
        match (tee, &td_quotes) {
            (TeeKind::AzureSnp, _) | (TeeKind::AzureTdx, Some(_)) => Ok(Self {
                tee,
                vtpm,
                td_quotes,
            }),
            (TeeKind::AzureTdx, None) => Err(AttestError::TeeUnavailable {
                tee,
                reason: "no source of TD quotes".into(),
            }),
            (other, _) => Err(AttestError::WrongTee {
                expected: TeeKind::AzureSnp,
                found: other,
            }),
        }
    }

    /// The HCL report, checked to carry this TEE's hardware report.
    fn hcl_report(&self) -> Result<Vec<u8>> {
        let bytes = self.vtpm.read_nv(HCL_REPORT_NV_INDEX)?;
        let hcl = HclReport::parse(&bytes)?;
        let expected = match self.tee {
            TeeKind::AzureTdx => HardwareReportType::Tdx,
            _ => HardwareReportType::Snp,
        };
        if hcl.report_type != expected {
            return Err(AttestError::TeeUnavailable {
                tee: self.tee,
                reason: format!(
                    "the vTPM's HCL report carries a {:?} report",
                    hcl.report_type
                ),
            });
        }
        Ok(bytes)
    }

    /// A quote whose PCR values are the ones it covers: a PCR extended between the quote and
    /// the read makes the digests differ, and the quote is taken again.
    fn quote(&self, nonce: &[u8]) -> Result<TpmQuote> {
        let mut last = String::new();
        for _ in 0..QUOTE_ATTEMPTS {
            let raw = self.vtpm.quote(AK_HANDLE, nonce, &QUOTED_PCRS)?;
            let pcrs = self.vtpm.read_pcrs(&QUOTED_PCRS)?;
            let info = parse_quote_message(&raw.message)?;
            if info.nonce != nonce {
                return Err(AttestError::TeeUnavailable {
                    tee: self.tee,
                    reason: "the vTPM quoted another nonce than the one asked for".into(),
                });
            }
            let digest = pcr_digest(&pcrs);
            if info.pcr_digest == digest {
                return Ok(TpmQuote {
                    message: raw.message,
                    signature: raw.signature,
                    pcrs,
                });
            }
            last = hex::encode(digest);
        }
        Err(AttestError::TeeUnavailable {
            tee: self.tee,
            reason: format!(
                "the PCRs kept changing while quoting ({QUOTE_ATTEMPTS} attempts, last digest \
                 {last})"
            ),
        })
    }
}

impl Attester for AzureAttester {
    fn tee(&self) -> TeeKind {
        self.tee
    }

    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence> {
        let hcl_report = self.hcl_report()?;
        let tpm_quote = self.quote(&quote_nonce(report_data))?;
        let td_quote = match &self.td_quotes {
            Some(source) if self.tee == TeeKind::AzureTdx => {
                let hcl = HclReport::parse(&hcl_report)?;
                Some(source.td_quote(hcl.hardware_report)?)
            }
            _ => None,
        };
        let container = AzureEvidence {
            format: FORMAT.into(),
            hcl_report,
            report_data: *report_data,
            tpm_quote,
            td_quote,
        };
        Ok(Evidence {
            tee: self.tee,
            quote: container.to_json(),
            certificates: None,
            gpus: Vec::new(),
        })
    }
}

/// Azure's IMDS endpoint that quotes TD reports (`POST {"report": base64url}` returns
/// `{"quote": base64url}`), reachable only from inside the VM.
#[derive(Clone, Debug)]
pub struct ImdsTdQuote {
    url: String,
}

impl Default for ImdsTdQuote {
    fn default() -> Self {
        Self {
            url: "http://169.254.169.254/acc/tdquote".into(),
        }
    }
}

/// Largest IMDS answer read: a TD quote with its certification data is a few KiB.
const MAX_IMDS_RESPONSE_LEN: u64 = 256 * 1024;

impl TdQuoteSource for ImdsTdQuote {
    fn td_quote(&self, td_report: &[u8]) -> Result<Vec<u8>> {
        let unavailable = |reason: String| AttestError::TeeUnavailable {
            tee: TeeKind::AzureTdx,
            reason: format!("IMDS TD quote ({}): {reason}", self.url),
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        let body = serde_json::json!({ "report": URL_SAFE_NO_PAD.encode(td_report) });
        let mut response = agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|e| unavailable(e.to_string()))?;
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_IMDS_RESPONSE_LEN)
            .read_to_string()
            .map_err(|e| unavailable(e.to_string()))?;
        #[derive(serde::Deserialize)]
        struct Answer {
            quote: String,
        }
        let answer: Answer =
            serde_json::from_str(&text).map_err(|e| unavailable(format!("answer: {e}")))?;
        URL_SAFE_NO_PAD
            .decode(answer.quote.trim_end_matches('=').as_bytes())
            .map_err(|e| unavailable(format!("quote is not base64url: {e}")))
    }
}

/// A TPM 2.0 reached through a character device (the kernel's resource manager, `/dev/tpmrm0`).
pub struct TpmDevice {
    path: PathBuf,
    tee: TeeKind,
    file: Mutex<File>,
}

impl fmt::Debug for TpmDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmDevice")
            .field("path", &self.path)
            .finish()
    }
}

/// TPM 2.0 Library Part 2 constants.
mod tpm {
    pub const ST_NO_SESSIONS: u16 = 0x8001;
    pub const ST_SESSIONS: u16 = 0x8002;
    pub const CC_NV_READ: u32 = 0x0000_014e;
    pub const CC_QUOTE: u32 = 0x0000_0158;
    pub const CC_NV_READ_PUBLIC: u32 = 0x0000_0169;
    pub const CC_PCR_READ: u32 = 0x0000_017e;
    pub const RH_OWNER: u32 = 0x4000_0001;
    pub const RS_PW: u32 = 0x4000_0009;
    pub const ALG_SHA256: u16 = 0x000b;
    pub const ALG_NULL: u16 = 0x0010;
    pub const ALG_RSASSA: u16 = 0x0014;
    /// Bytes read per `TPM2_NV_Read`: the reference implementation's `MAX_NV_BUFFER_SIZE`.
    pub const NV_CHUNK: u16 = 1024;
    /// Largest response read from the device.
    pub const MAX_RESPONSE: usize = 4096;
}

/// Builds a TPM command: header, handles, the password session when `sessions`, parameters.
fn command(code: u32, handles: &[u32], sessions: bool, params: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + params.len());
    let tag = if sessions {
        tpm::ST_SESSIONS
    } else {
        tpm::ST_NO_SESSIONS
    };
    out.extend_from_slice(&tag.to_be_bytes());
    out.extend_from_slice(&[0; 4]); // size, filled in below
    out.extend_from_slice(&code.to_be_bytes());
    for handle in handles {
        out.extend_from_slice(&handle.to_be_bytes());
    }
    if sessions {
        // TPMS_AUTH_COMMAND: TPM_RS_PW, empty nonce, no attributes, empty password.
        let auth = [
            &tpm::RS_PW.to_be_bytes()[..],
            &0u16.to_be_bytes(),
            &[0u8],
            &0u16.to_be_bytes(),
        ]
        .concat();
        out.extend_from_slice(&(auth.len() as u32).to_be_bytes());
        out.extend_from_slice(&auth);
    }
    out.extend_from_slice(params);
    let size = (out.len() as u32).to_be_bytes();
    out[2..6].copy_from_slice(&size);
    out
}

/// `TPML_PCR_SELECTION` of `pcrs` in the SHA-256 bank.
fn pcr_selection(pcrs: &[u8]) -> Vec<u8> {
    let mut select = [0u8; 3];
    for &pcr in pcrs.iter().filter(|&&p| p < 24) {
        select[usize::from(pcr / 8)] |= 1 << (pcr % 8);
    }
    let mut out = Vec::with_capacity(10);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&tpm::ALG_SHA256.to_be_bytes());
    out.push(3);
    out.extend_from_slice(&select);
    out
}

/// A response's parameters: the header checked, and for a session response the parameter
/// area alone (the session area after it is not needed with a password session).
fn response_params(code_name: &str, response: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut r = Cursor(response);
    let tag = r.u16()?;
    let size = r.u32()? as usize;
    let rc = r.u32()?;
    if size != response.len() {
        return Err(format!(
            "{code_name}: response of {} bytes says {size}",
            response.len()
        ));
    }
    if rc != 0 {
        return Err(format!("{code_name} failed with response code {rc:#x}"));
    }
    match tag {
        tpm::ST_NO_SESSIONS => Ok(r.0.to_vec()),
        tpm::ST_SESSIONS => {
            let len = r.u32()? as usize;
            Ok(r.take(len)?.to_vec())
        }
        other => Err(format!("{code_name}: response tag {other:#06x}")),
    }
}

/// Big-endian reads over a TPM response; errors are strings for the caller to wrap.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("TPM response is truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u16(&mut self) -> std::result::Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn sized(&mut self) -> std::result::Result<&'a [u8], String> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }
}

/// `TPM2_NV_ReadPublic`'s answer: the index's data size.
fn parse_nv_public_size(params: &[u8]) -> std::result::Result<u16, String> {
    let mut r = Cursor(params);
    let public = r.sized()?;
    // TPMS_NV_PUBLIC: nvIndex, nameAlg, attributes, authPolicy (sized), dataSize.
    let mut p = Cursor(public);
    p.take(4 + 2 + 4)?;
    p.sized()?;
    p.u16()
}

/// `TPM2_Quote`'s answer: `TPM2B_ATTEST` and an RSASSA `TPMT_SIGNATURE`.
fn parse_quote_response(params: &[u8]) -> std::result::Result<RawQuote, String> {
    let mut r = Cursor(params);
    let message = r.sized()?.to_vec();
    let alg = r.u16()?;
    if alg != tpm::ALG_RSASSA {
        return Err(format!(
            "quote signed with algorithm {alg:#06x}, expected RSASSA"
        ));
    }
    let hash = r.u16()?;
    if hash != tpm::ALG_SHA256 {
        return Err(format!(
            "quote signed with hash {hash:#06x}, expected SHA-256"
        ));
    }
    let signature = r.sized()?.to_vec();
    Ok(RawQuote { message, signature })
}

/// `TPM2_PCR_Read`'s answer: the selection it served and the values, in index order.
fn parse_pcr_read_response(params: &[u8]) -> std::result::Result<BTreeMap<u8, [u8; 32]>, String> {
    let mut r = Cursor(params);
    let _update_counter = r.u32()?;
    let banks = r.u32()?;
    let mut served = Vec::new();
    for _ in 0..banks {
        let hash = r.u16()?;
        let len = usize::from(r.take(1)?[0]);
        let select = r.take(len)?;
        if hash != tpm::ALG_SHA256 {
            return Err(format!("PCR bank {hash:#06x} served, expected SHA-256"));
        }
        for (byte_index, byte) in select.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    served.push((byte_index * 8 + bit) as u8);
                }
            }
        }
    }
    let count = r.u32()? as usize;
    if count != served.len() {
        return Err(format!(
            "{count} PCR values for {} selected PCRs",
            served.len()
        ));
    }
    let mut out = BTreeMap::new();
    for pcr in served {
        let value: [u8; 32] = r
            .sized()?
            .try_into()
            .map_err(|_| format!("PCR {pcr} is not a SHA-256 value"))?;
        out.insert(pcr, value);
    }
    Ok(out)
}

impl TpmDevice {
    /// Opens the TPM device for the attester of `tee`.
    pub fn open(path: &Path, tee: TeeKind) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| AttestError::TeeUnavailable {
                tee,
                reason: format!("{}: {e}", path.display()),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            tee,
            file: Mutex::new(file),
        })
    }

    fn run(&self, name: &str, command: &[u8]) -> Result<Vec<u8>> {
        let io = |e: std::io::Error| AttestError::io(&self.path, e);
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        file.write_all(command).map_err(io)?;
        let mut response = vec![0u8; tpm::MAX_RESPONSE];
        // The kernel's TPM device returns one whole response per read.
        let len = file.read(&mut response).map_err(io)?;
        response.truncate(len);
        response_params(name, &response).map_err(|reason| self.unavailable(reason))
    }

    fn unavailable(&self, reason: String) -> AttestError {
        AttestError::TeeUnavailable {
            tee: self.tee,
            reason: format!("{}: {reason}", self.path.display()),
        }
    }
}

impl Vtpm for TpmDevice {
    fn read_nv(&self, index: u32) -> Result<Vec<u8>> {
        let public = self.run(
            "TPM2_NV_ReadPublic",
            &command(tpm::CC_NV_READ_PUBLIC, &[index], false, &[]),
        )?;
        let size = parse_nv_public_size(&public).map_err(|r| self.unavailable(r))?;
        if usize::from(size) > MAX_HCL_REPORT_LEN {
            return Err(self.unavailable(format!("NV index {index:#x} holds {size} bytes")));
        }
        let mut out = Vec::with_capacity(usize::from(size));
        while out.len() < usize::from(size) {
            let offset = out.len() as u16;
            let chunk = tpm::NV_CHUNK.min(size - offset);
            let params = [chunk.to_be_bytes(), offset.to_be_bytes()].concat();
            let answer = self.run(
                "TPM2_NV_Read",
                &command(tpm::CC_NV_READ, &[tpm::RH_OWNER, index], true, &params),
            )?;
            let data = Cursor(&answer).sized().map_err(|r| self.unavailable(r))?;
            if data.is_empty() || data.len() > usize::from(chunk) {
                return Err(self.unavailable(format!(
                    "TPM2_NV_Read returned {} bytes for {chunk}",
                    data.len()
                )));
            }
            out.extend_from_slice(data);
        }
        Ok(out)
    }

    fn quote(&self, ak_handle: u32, qualifying_data: &[u8], pcrs: &[u8]) -> Result<RawQuote> {
        let data_len = u16::try_from(qualifying_data.len())
            .map_err(|_| self.unavailable("qualifying data too long".into()))?;
        let mut params = Vec::new();
        params.extend_from_slice(&data_len.to_be_bytes());
        params.extend_from_slice(qualifying_data);
        // The key's own scheme (RSASSA with SHA-256 for Azure's AK).
        params.extend_from_slice(&tpm::ALG_NULL.to_be_bytes());
        params.extend_from_slice(&pcr_selection(pcrs));
        let answer = self.run(
            "TPM2_Quote",
            &command(tpm::CC_QUOTE, &[ak_handle], true, &params),
        )?;
        parse_quote_response(&answer).map_err(|r| self.unavailable(r))
    }

    fn read_pcrs(&self, pcrs: &[u8]) -> Result<BTreeMap<u8, [u8; 32]>> {
        let mut out = BTreeMap::new();
        // A TPM answers at most 8 digests per TPM2_PCR_Read; ask again for the rest.
        while out.len() < pcrs.len() {
            let remaining: Vec<u8> = pcrs
                .iter()
                .copied()
                .filter(|p| !out.contains_key(p))
                .collect();
            let answer = self.run(
                "TPM2_PCR_Read",
                &command(tpm::CC_PCR_READ, &[], false, &pcr_selection(&remaining)),
            )?;
            let values = parse_pcr_read_response(&answer).map_err(|r| self.unavailable(r))?;
            if values.is_empty() || values.keys().any(|p| !remaining.contains(p)) {
                return Err(self.unavailable(format!(
                    "TPM2_PCR_Read served PCRs {:?} for {remaining:?}",
                    values.keys().collect::<Vec<_>>()
                )));
            }
            out.extend(values);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_marshalled_as_the_spec_says() {
        // TPM2_PCR_Read of PCRs 0, 1 and 23: no session.
        let cmd = command(tpm::CC_PCR_READ, &[], false, &pcr_selection(&[0, 1, 23]));
        assert_eq!(
            hex::encode(&cmd),
            "8001000000140000017e00000001000b03030080"
        );
        // TPM2_NV_Read of 0x01400001: owner handle, index, a 9-byte password session, then
        // size and offset.
        let cmd = command(
            tpm::CC_NV_READ,
            &[tpm::RH_OWNER, HCL_REPORT_NV_INDEX],
            true,
            &[0x04, 0x00, 0x00, 0x00],
        );
        assert_eq!(
            hex::encode(&cmd),
            "8002000000230000014e40000001014000010000000940000009000000000004000000"
        );
    }

    fn response(tag: u16, rc: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.to_be_bytes());
        out.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
        out.extend_from_slice(&rc.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn responses_are_read_and_bad_ones_refused() {
        // PCR_Read: counter, selection of PCRs 2 and 9, two digests.
        let mut body = Vec::new();
        body.extend_from_slice(&7u32.to_be_bytes());
        body.extend_from_slice(&[0, 0, 0, 1, 0x00, 0x0b, 3, 0b100, 0b10, 0]);
        body.extend_from_slice(&2u32.to_be_bytes());
        for fill in [0xaa, 0xbb] {
            body.extend_from_slice(&32u16.to_be_bytes());
            body.extend_from_slice(&[fill; 32]);
        }
        let params = response_params("TPM2_PCR_Read", &response(0x8001, 0, &body)).unwrap();
        let pcrs = parse_pcr_read_response(&params).unwrap();
        assert_eq!(pcrs.keys().copied().collect::<Vec<_>>(), vec![2, 9]);
        assert_eq!(pcrs[&9], [0xbb; 32]);
        // One digest short.
        assert!(parse_pcr_read_response(&params[..params.len() - 34]).is_err());

        // Quote with a session: parameter size, TPM2B_ATTEST, TPMT_SIGNATURE, session area.
        let mut params = Vec::new();
        params.extend_from_slice(&[0, 3, 1, 2, 3]);
        params.extend_from_slice(&[0x00, 0x14, 0x00, 0x0b, 0, 2, 9, 9]);
        let mut body = (params.len() as u32).to_be_bytes().to_vec();
        body.extend_from_slice(&params);
        body.extend_from_slice(&[0, 0, 1, 0, 0]);
        let params = response_params("TPM2_Quote", &response(0x8002, 0, &body)).unwrap();
        let quote = parse_quote_response(&params).unwrap();
        assert_eq!(quote.message, vec![1, 2, 3]);
        assert_eq!(quote.signature, vec![9, 9]);

        // An error code, a wrong size and a wrong signature algorithm are refused.
        assert!(response_params("TPM2_Quote", &response(0x8001, 0x18b, &[]))
            .unwrap_err()
            .contains("0x18b"));
        let mut short = response(0x8001, 0, &[1, 2]);
        short.pop();
        assert!(response_params("x", &short).is_err());
        let mut ecdsa = params.clone();
        ecdsa[6] = 0x18;
        assert!(parse_quote_response(&ecdsa).is_err());
    }

    #[test]
    fn a_missing_device_is_unavailable() {
        let err = TpmDevice::open(Path::new("/nonexistent/tpmrm0"), TeeKind::AzureSnp).unwrap_err();
        assert!(matches!(err, AttestError::TeeUnavailable { .. }), "{err}");
    }
}
