//! TDX and SNP evidence through the kernel's configfs-tsm report interface
//! (Documentation/ABI/testing/configfs-tsm):
//!
//! 1. make an entry under `/sys/kernel/config/tsm/report/`;
//! 2. check `provider` (`tdx_guest` or `sev_guest`);
//! 3. write the report data to `inblob`, and read `generation`;
//! 4. read `outblob` (the TDX quote or SNP report) and, for SNP, `auxblob` (the certificates);
//! 5. check that `generation` did not change underneath, which would mean another writer's
//!    request replaced ours;
//! 6. remove the entry.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::attester::Attester;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, MAX_EVIDENCE_LEN, REPORT_DATA_LEN};

/// Where the report data sits in the blob each provider returns, to check that the blob answers
/// our request: the SNP attestation report at 0x50; a TDX quote after its 48-byte header at offset
/// 520 of the TD report body, which quote v5 precedes with a 6-byte body descriptor (u16 type,
/// u32 size).
pub(super) fn report_data_offset(tee: TeeKind, blob: &[u8]) -> usize {
    const TDX_HEADER: usize = 48;
    const TD_REPORT_DATA: usize = 520;
    const V5_BODY_DESCRIPTOR: usize = 6;
    match tee {
        TeeKind::Snp => 0x50,
        _ if blob.get(..2) == Some(&5u16.to_le_bytes()[..]) => {
            TDX_HEADER + V5_BODY_DESCRIPTOR + TD_REPORT_DATA
        }
        _ => TDX_HEADER + TD_REPORT_DATA,
    }
}

/// configfs creates an entry's attributes together with the directory; an emulation may take a
/// moment, and this bounds the wait.
const ATTRIBUTE_WAIT: Duration = Duration::from_secs(2);

/// Makes TDX quotes or SNP reports through configfs-tsm.
#[derive(Debug)]
pub struct TsmAttester {
    root: PathBuf,
    tee: TeeKind,
}

static ENTRY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A report entry, removed when dropped.
struct Entry {
    path: PathBuf,
}

impl Entry {
    fn create(root: &Path) -> Result<Self> {
        let name = format!(
            "adyton-{}-{}",
            std::process::id(),
            ENTRY_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = root.join(name);
        fs::create_dir(&path).map_err(|e| AttestError::io(&path, e))?;
        Ok(Self { path })
    }

    fn attribute(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.attribute(name);
        let bytes = fs::read(&path).map_err(|e| AttestError::io(&path, e))?;
        if bytes.len() > MAX_EVIDENCE_LEN {
            return Err(AttestError::malformed(format!(
                "{} is too large",
                path.display()
            )));
        }
        Ok(bytes)
    }

    fn read_text(&self, name: &str) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.read(name)?)
            .trim()
            .to_string())
    }

    fn generation(&self) -> Result<u64> {
        let text = self.read_text("generation")?;
        text.parse().map_err(|_| AttestError::TeeUnavailable {
            tee: TeeKind::Tdx,
            reason: format!(
                "{}: generation `{text}` is not a number",
                self.path.display()
            ),
        })
    }

    fn provider(&self) -> Result<String> {
        let path = self.attribute("provider");
        let deadline = Instant::now() + ATTRIBUTE_WAIT;
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.read_text("provider")
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // configfs removes an entry's attributes with the directory; rmdir is the whole cleanup.
        let _ = fs::remove_dir(&self.path);
    }
}

fn tee_of_provider(provider: &str) -> Option<TeeKind> {
    match provider {
        "tdx_guest" => Some(TeeKind::Tdx),
        "sev_guest" => Some(TeeKind::Snp),
        _ => None,
    }
}

impl TsmAttester {
    /// Finds which TEE the configfs-tsm directory at `root` serves, by making and removing an
    /// entry and reading its provider.
    pub fn probe(root: &Path) -> Result<TeeKind> {
        if !root.is_dir() {
            return Err(AttestError::TeeUnavailable {
                tee: TeeKind::Tdx,
                reason: format!("{} does not exist (no configfs-tsm)", root.display()),
            });
        }
        let entry = Entry::create(root)?;
        let provider = entry.provider()?;
        tee_of_provider(&provider).ok_or_else(|| AttestError::TeeUnavailable {
            tee: TeeKind::Tdx,
            reason: format!("unknown configfs-tsm provider `{provider}`"),
        })
    }

    /// Opens the interface at `root` for `tee` (TDX or SNP).
    pub fn open(root: &Path, tee: TeeKind) -> Result<Self> {
        let found = Self::probe(root).map_err(|e| match e {
            AttestError::TeeUnavailable { reason, .. } => {
                AttestError::TeeUnavailable { tee, reason }
            }
            other => other,
        })?;
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

    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence> {
        let entry = Entry::create(&self.root)?;
        let provider = entry.provider()?;
        if tee_of_provider(&provider) != Some(self.tee) {
            return Err(AttestError::TeeUnavailable {
                tee: self.tee,
                reason: format!("configfs-tsm provider is `{provider}`"),
            });
        }
        let inblob = entry.attribute("inblob");
        fs::write(&inblob, report_data).map_err(|e| AttestError::io(&inblob, e))?;
        let before = entry.generation()?;
        let quote = entry.read("outblob")?;
        let certificates = if self.tee == TeeKind::Snp {
            match entry.read("auxblob") {
                Ok(aux) if !aux.is_empty() => Some(aux),
                Ok(_) => None,
                // auxblob exists only when the host supplies certificates.
                Err(AttestError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let after = entry.generation()?;
        if after != before {
            return Err(AttestError::GenerationChanged { before, after });
        }
        let offset = report_data_offset(self.tee, &quote);
        if quote.get(offset..offset + REPORT_DATA_LEN) != Some(&report_data[..]) {
            return Err(AttestError::malformed(format!(
                "the {} evidence from configfs-tsm does not carry the report data that was written",
                self.tee
            )));
        }
        Ok(Evidence {
            tee: self.tee,
            quote,
            certificates,
            gpus: Vec::new(),
        })
    }
}
