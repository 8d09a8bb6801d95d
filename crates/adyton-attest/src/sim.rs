//! The SIM report: Adyton's simulated TEE evidence. INSECURE by design.
//!
//! A SIM report proves only that someone holding the SIM attester's key signed it. It exists so that
//! every flow runs, attestation included, on machines without TEE hardware. Verifiers accept it only
//! under a policy that names SIM explicitly. Its "measurement" is the SHA-384 of the executable that
//! made it, so that a policy can pin a build.
//!
//! Layout (240 bytes):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 24 | magic `ADYTON-SIM-INSECURE-v1` followed by two zero bytes |
//! | 24 | 48 | measurement (SHA-384 of the executable) |
//! | 72 | 64 | report data |
//! | 136 | 8 | time of signing, unix seconds, u64 little-endian |
//! | 144 | 32 | Ed25519 public key of the attester |
//! | 176 | 64 | Ed25519 signature over bytes 0 to 175 |

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use aws_lc_rs::digest::{Context, SHA384};

use crate::error::{AttestError, Result};
use crate::evidence::REPORT_DATA_LEN;

/// The first bytes of every SIM report.
pub const MAGIC: &[u8; 24] = b"ADYTON-SIM-INSECURE-v1\0\0";
/// Length of a SIM report.
pub const REPORT_LEN: usize = 240;
/// Length of the signed part.
pub const SIGNED_LEN: usize = 176;

/// A parsed (not yet verified) SIM report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimReport {
    /// SHA-384 of the executable that made the report.
    pub measurement: [u8; 48],
    /// The report data.
    pub report_data: [u8; REPORT_DATA_LEN],
    /// Unix seconds at signing.
    pub timestamp: u64,
    /// The attester's Ed25519 public key.
    pub public_key: [u8; 32],
    /// Signature over the first 176 bytes.
    pub signature: [u8; 64],
}

impl SimReport {
    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGNED_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.measurement);
        out.extend_from_slice(&self.report_data);
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        out.extend_from_slice(&self.public_key);
        out
    }

    /// The whole report.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.signed_bytes();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses a report, checking its length and magic only.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != REPORT_LEN {
            return Err(AttestError::malformed(format!(
                "a SIM report is {REPORT_LEN} bytes, this one is {}",
                bytes.len()
            )));
        }
        if &bytes[..24] != MAGIC {
            return Err(AttestError::malformed("not a SIM report (bad magic)"));
        }
        let field = |range: std::ops::Range<usize>| &bytes[range];
        let mut report = SimReport {
            measurement: [0; 48],
            report_data: [0; REPORT_DATA_LEN],
            timestamp: 0,
            public_key: [0; 32],
            signature: [0; 64],
        };
        report.measurement.copy_from_slice(field(24..72));
        report.report_data.copy_from_slice(field(72..136));
        let mut timestamp = [0u8; 8];
        timestamp.copy_from_slice(field(136..144));
        report.timestamp = u64::from_le_bytes(timestamp);
        report.public_key.copy_from_slice(field(144..176));
        report.signature.copy_from_slice(field(176..240));
        Ok(report)
    }
}

/// SHA-384 of the running executable: the SIM measurement of this build. Computed once.
pub fn measurement_of_this_build() -> Result<[u8; 48]> {
    static MEASUREMENT: OnceLock<std::result::Result<[u8; 48], String>> = OnceLock::new();
    MEASUREMENT
        .get_or_init(|| {
            let exe =
                std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
            measure_file(&exe).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|reason| AttestError::TeeUnavailable {
            tee: crate::TeeKind::Sim,
            reason,
        })
}

/// SHA-384 of a file.
pub fn measure_file(path: &Path) -> Result<[u8; 48]> {
    let mut file = std::fs::File::open(path).map_err(|e| AttestError::io(path, e))?;
    let mut hasher = Context::new(&SHA384);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| AttestError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut out = [0u8; 48];
    out.copy_from_slice(hasher.finish().as_ref());
    Ok(out)
}
