//! TDX and SNP evidence through the kernel's configfs-tsm report interface.

use std::path::{Path, PathBuf};

use crate::attester::Attester;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, REPORT_DATA_LEN};

/// Makes TDX quotes or SNP reports through `/sys/kernel/config/tsm/report`.
#[derive(Debug)]
pub struct TsmAttester {
    root: PathBuf,
    tee: TeeKind,
}

impl TsmAttester {
    /// Finds which TEE the configfs-tsm directory at `root` serves.
    pub fn probe(root: &Path) -> Result<TeeKind> {
        Err(AttestError::TeeUnavailable {
            tee: TeeKind::Tdx,
            reason: format!("{}: not implemented yet", root.display()),
        })
    }

    /// Opens the interface at `root` for `tee` (TDX or SNP).
    pub fn open(root: &Path, tee: TeeKind) -> Result<Self> {
        let found = Self::probe(root)?;
        if found != tee {
            return Err(AttestError::WrongTee {
                expected: tee,
                found,
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
            tee,
        })
    }
}

impl Attester for TsmAttester {
    fn tee(&self) -> TeeKind {
        self.tee
    }

    fn evidence(&self, _report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence> {
        Err(AttestError::TeeUnavailable {
            tee: self.tee,
            reason: format!("{}: not implemented yet", self.root.display()),
        })
    }
}
