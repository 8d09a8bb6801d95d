//! SGX evidence under Gramine's `/dev/attestation` pseudo-filesystem:
//! `attestation_type` must be `dcap`; the report data goes into `user_report_data`, and reading
//! `quote` returns a DCAP quote (v3) over it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::attester::Attester;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, MAX_EVIDENCE_LEN, REPORT_DATA_LEN};

/// Offset of the report data in an SGX DCAP quote v3: the 48-byte header, then the 384-byte
/// enclave report body, whose last 64 bytes are the report data.
const QUOTE_REPORT_DATA_OFFSET: usize = 48 + 320;

/// Makes DCAP quotes through Gramine's `/dev/attestation`.
#[derive(Debug)]
pub struct GramineAttester {
    root: PathBuf,
}

fn unavailable(reason: String) -> AttestError {
    AttestError::TeeUnavailable {
        tee: TeeKind::Sgx,
        reason,
    }
}

impl GramineAttester {
    /// Checks that `root` is a Gramine attestation directory using DCAP.
    pub fn probe(root: &Path) -> Result<()> {
        let type_file = root.join("attestation_type");
        let kind = fs::read_to_string(&type_file).map_err(|e| {
            unavailable(format!(
                "{}: {e} (not running under Gramine)",
                type_file.display()
            ))
        })?;
        match kind.trim() {
            "dcap" => Ok(()),
            other => Err(unavailable(format!(
                "Gramine's attestation type is `{}`; Adyton needs `dcap` (sgx.remote_attestation = \"dcap\" in the manifest)",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }

    /// Opens the interface at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        Self::probe(root)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }
}

impl Attester for GramineAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Sgx
    }

    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence> {
        let user_report_data = self.root.join("user_report_data");
        fs::write(&user_report_data, report_data)
            .map_err(|e| AttestError::io(&user_report_data, e))?;
        let quote_path = self.root.join("quote");
        let quote = fs::read(&quote_path).map_err(|e| AttestError::io(&quote_path, e))?;
        if quote.len() > MAX_EVIDENCE_LEN {
            return Err(AttestError::malformed(
                "Gramine returned an oversized quote",
            ));
        }
        // Another thread of the enclave may have written user_report_data in between.
        let carried =
            quote.get(QUOTE_REPORT_DATA_OFFSET..QUOTE_REPORT_DATA_OFFSET + REPORT_DATA_LEN);
        if carried != Some(&report_data[..]) {
            return Err(AttestError::malformed(
                "the quote from /dev/attestation does not carry the report data that was written",
            ));
        }
        Ok(Evidence {
            tee: TeeKind::Sgx,
            quote,
            certificates: None,
            gpus: Vec::new(),
        })
    }
}
