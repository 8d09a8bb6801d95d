//! SGX sealing under Gramine: Gramine (1.5 and later) exposes the enclave's two SGX sealing keys
//! (EGETKEY with the MRENCLAVE or the MRSIGNER key policy) as the pseudo-files
//! `/dev/attestation/keys/_sgx_mrenclave` and `/dev/attestation/keys/_sgx_mrsigner`, 16 raw bytes
//! each.

use std::fs;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::{AttestError, Result};
use crate::evidence::TeeKind;
use crate::seal::{derive_key, Sealer, SealingKey, SealingPolicy};

/// Length of an SGX sealing key (EGETKEY returns 128 bits).
pub const SGX_KEY_LEN: usize = 16;

/// Derives sealing keys from Gramine's SGX sealing keys.
#[derive(Debug)]
pub struct GramineSealer {
    root: PathBuf,
}

fn unavailable(reason: String) -> AttestError {
    AttestError::TeeUnavailable {
        tee: TeeKind::Sgx,
        reason,
    }
}

fn missing(path: &Path) -> AttestError {
    unavailable(format!(
        "{} does not exist: not running under Gramine with SGX (gramine-sgx), or Gramine is \
         older than 1.5, the first version to expose its SGX sealing keys there",
        path.display()
    ))
}

impl GramineSealer {
    /// The key file of `policy` under Gramine's attestation directory `root`:
    /// `{root}/keys/_sgx_mrenclave` for exact-build, `{root}/keys/_sgx_mrsigner` for signer.
    pub fn key_path(root: &Path, policy: SealingPolicy) -> PathBuf {
        let name = match policy {
            SealingPolicy::ExactBuild => "_sgx_mrenclave",
            SealingPolicy::Signer => "_sgx_mrsigner",
        };
        root.join("keys").join(name)
    }

    /// Opens the sealing keys under `root` (normally `/dev/attestation`), checking that both key
    /// files exist.
    pub fn open(root: &Path) -> Result<Self> {
        for policy in SealingPolicy::ALL {
            let path = Self::key_path(root, policy);
            match fs::metadata(&path) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => return Err(missing(&path)),
                Err(e) => return Err(AttestError::io(&path, e)),
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn read_key(&self, policy: SealingPolicy) -> Result<Zeroizing<[u8; SGX_KEY_LEN]>> {
        let path = Self::key_path(&self.root, policy);
        let file = fs::File::open(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => missing(&path),
            _ => AttestError::io(&path, e),
        })?;
        // One byte more than a key, to tell a longer file from a key.
        let mut bytes = Zeroizing::new(Vec::with_capacity(SGX_KEY_LEN + 1));
        file.take(SGX_KEY_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| AttestError::io(&path, e))?;
        let key: [u8; SGX_KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            let len = if bytes.len() > SGX_KEY_LEN {
                "more than 16 bytes".to_string()
            } else {
                format!("{} bytes", bytes.len())
            };
            unavailable(format!(
                "{} holds {len}; a Gramine SGX sealing key has {SGX_KEY_LEN} bytes",
                path.display()
            ))
        })?;
        Ok(Zeroizing::new(key))
    }
}

impl Sealer for GramineSealer {
    fn tee(&self) -> TeeKind {
        TeeKind::Sgx
    }

    fn sealing_key(&self, policy: SealingPolicy, context: &[u8]) -> Result<SealingKey> {
        let key = self.read_key(policy)?;
        derive_key(TeeKind::Sgx, policy, key.as_slice(), &[], context)
    }
}
