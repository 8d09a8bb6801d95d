//! The AWS Nitro Enclaves attester: attestation documents from the Nitro Secure Module (NSM).
//!
//! The NSM is reached through `/dev/nsm` with one ioctl per request, whose message is a pair of
//! buffers holding the CBOR request and response. Issuing an ioctl needs unsafe code, which this
//! crate forbids, so the real device goes through AWS's `aws-nitro-enclaves-nsm-api` crate, whose
//! driver holds that unsafe block and whose `Request` and `Response` types are the NSM's own. This
//! module opens the device file itself (so that its path is a parameter) and hands the driver the
//! descriptor; the file is closed when the attester is dropped.
//!
//! Adyton's 64 bytes of report data go in the request's `user_data`; `nonce` and `public_key` are
//! left unset, since the report data already binds whatever the caller needs bound
//! (`docs/evidence.md`). The document that comes back is parsed, and must carry that user data.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use serde_bytes::ByteBuf;

use crate::attester::Attester;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, REPORT_DATA_LEN};
use crate::verifier::nitro::{parse_document, MAX_DOCUMENT_LEN};

/// A Nitro Secure Module: asked for an attestation document over some user data.
pub trait NsmDevice: Send + Sync + std::fmt::Debug {
    /// The NSM's attestation document (COSE_Sign1) with `user_data` in it, and no nonce or
    /// public key.
    fn attestation(&self, user_data: &[u8]) -> Result<Vec<u8>>;
}

/// The real NSM, through its device file.
#[derive(Debug)]
pub struct NsmDriver {
    path: PathBuf,
    file: File,
}

impl NsmDriver {
    /// Opens the NSM's device file (`/dev/nsm` in an enclave).
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| AttestError::TeeUnavailable {
                tee: TeeKind::Nitro,
                reason: format!(
                    "cannot open the Nitro Secure Module {}: {e}",
                    path.display()
                ),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }
}

impl NsmDevice for NsmDriver {
    fn attestation(&self, user_data: &[u8]) -> Result<Vec<u8>> {
        let request = Request::Attestation {
            user_data: Some(ByteBuf::from(user_data.to_vec())),
            nonce: None,
            public_key: None,
        };
        match aws_nitro_enclaves_nsm_api::driver::nsm_process_request(
            self.file.as_raw_fd(),
            request,
        ) {
            Response::Attestation { document } => Ok(document),
            Response::Error(code) => Err(AttestError::TeeUnavailable {
                tee: TeeKind::Nitro,
                reason: format!(
                    "the Nitro Secure Module {} refused the attestation request: {code:?}",
                    self.path.display()
                ),
            }),
            _ => Err(AttestError::TeeUnavailable {
                tee: TeeKind::Nitro,
                reason: format!(
                    "the Nitro Secure Module {} answered an attestation request with another \
                     response",
                    self.path.display()
                ),
            }),
        }
    }
}

/// Evidence from an NSM.
#[derive(Debug)]
pub struct NitroAttester {
    device: Box<dyn NsmDevice>,
}

impl NitroAttester {
    /// Whether an NSM device file exists at `path`.
    pub fn probe(path: &Path) -> Result<()> {
        match std::fs::metadata(path) {
            Ok(_) => Ok(()),
            Err(e) => Err(AttestError::TeeUnavailable {
                tee: TeeKind::Nitro,
                reason: format!("no Nitro Secure Module at {}: {e}", path.display()),
            }),
        }
    }

    /// The attester of the NSM whose device file is `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self::with_device(Box::new(NsmDriver::open(path)?)))
    }

    /// An attester over any NSM: the real driver, or a fake in tests.
    pub fn with_device(device: Box<dyn NsmDevice>) -> Self {
        Self { device }
    }
}

impl Attester for NitroAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Nitro
    }

    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence> {
        let document = self.device.attestation(report_data)?;
        if document.len() > MAX_DOCUMENT_LEN {
            return Err(AttestError::malformed(format!(
                "the Nitro Secure Module returned {} bytes, more than a document's {MAX_DOCUMENT_LEN}",
                document.len()
            )));
        }
        // As the other attesters do: the document must be over the report data we asked for.
        let parsed = parse_document(&document)?;
        let found = parsed.user_data.unwrap_or_default();
        if found.as_slice() != report_data.as_slice() {
            return Err(AttestError::ReportDataMismatch {
                expected: hex::encode(report_data),
                found: hex::encode(found),
            });
        }
        Ok(Evidence {
            tee: TeeKind::Nitro,
            quote: document,
            certificates: None,
            gpus: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nsm");
        assert!(matches!(
            NitroAttester::probe(&path),
            Err(AttestError::TeeUnavailable {
                tee: TeeKind::Nitro,
                ..
            })
        ));
        assert!(matches!(
            NitroAttester::open(&path),
            Err(AttestError::TeeUnavailable {
                tee: TeeKind::Nitro,
                ..
            })
        ));
        std::fs::write(&path, b"").unwrap();
        assert!(NitroAttester::probe(&path).is_ok());
    }
}
