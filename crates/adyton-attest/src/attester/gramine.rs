//! SGX evidence under Gramine: `/dev/attestation/user_report_data` in, a DCAP quote out.

use std::path::{Path, PathBuf};

use crate::attester::Attester;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, REPORT_DATA_LEN};

/// Makes DCAP quotes through Gramine's `/dev/attestation`.
#[derive(Debug)]
pub struct GramineAttester {
    root: PathBuf,
}

impl GramineAttester {
    /// Checks that `root` is a Gramine attestation directory using DCAP.
    pub fn probe(root: &Path) -> Result<()> {
        Err(AttestError::TeeUnavailable {
            tee: TeeKind::Sgx,
            reason: format!("{}: not implemented yet", root.display()),
        })
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

    fn evidence(&self, _report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence> {
        Err(AttestError::TeeUnavailable {
            tee: TeeKind::Sgx,
            reason: format!("{}: not implemented yet", self.root.display()),
        })
    }
}
