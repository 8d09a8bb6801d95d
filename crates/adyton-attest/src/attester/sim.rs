//! The SIM attester: signs SIM reports with a local Ed25519 key. INSECURE by design.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

use crate::attester::Attester;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, REPORT_DATA_LEN};
use crate::sim::{measurement_of_this_build, SimReport};

/// The default key file: `$ADYTON_SIM_KEY`, else `$HOME/.local/share/adyton/sim-attester.key`.
pub fn default_key_path() -> PathBuf {
    if let Some(path) = std::env::var_os("ADYTON_SIM_KEY") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/adyton/sim-attester.key")
}

/// Signs SIM reports. Its key's seed is the SIM TEE's only secret.
pub struct SimAttester {
    key: Ed25519KeyPair,
    seed: Zeroizing<[u8; 32]>,
    measurement: [u8; 48],
}

impl std::fmt::Debug for SimAttester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimAttester")
            .field("public_key", &hex::encode(self.key.public_key().as_ref()))
            .finish_non_exhaustive()
    }
}

impl SimAttester {
    /// An attester with this seed, measuring this build.
    pub fn from_seed(seed: [u8; 32]) -> Result<Self> {
        Self::with_measurement(seed, measurement_of_this_build()?)
    }

    /// An attester with this seed and an explicit measurement (tests, and tools that measure
    /// another executable).
    pub fn with_measurement(seed: [u8; 32], measurement: [u8; 48]) -> Result<Self> {
        let key = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| AttestError::Crypto("Ed25519 refused a 32-byte seed"))?;
        Ok(Self {
            key,
            seed: Zeroizing::new(seed),
            measurement,
        })
    }

    /// Loads the key seed from `path`, creating it (mode 0600) on first use.
    pub fn from_key_file(path: &Path) -> Result<Self> {
        let seed = load_or_create_seed(path)?;
        Self::from_seed(*seed)
    }

    /// The attester's public key, which SIM policies may pin.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.key.public_key().as_ref());
        out
    }

    /// The seed, from which sealing keys are derived. Never log it.
    pub fn secret_seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The measurement this attester reports.
    pub fn measurement(&self) -> [u8; 48] {
        self.measurement
    }
}

impl Attester for SimAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Sim
    }

    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut report = SimReport {
            measurement: self.measurement,
            report_data: *report_data,
            timestamp,
            public_key: self.public_key(),
            signature: [0; 64],
        };
        let signature = self.key.sign(&report.signed_bytes());
        report.signature.copy_from_slice(signature.as_ref());
        Ok(Evidence {
            tee: TeeKind::Sim,
            quote: report.to_bytes(),
            certificates: None,
            gpus: Vec::new(),
        })
    }
}

fn load_or_create_seed(path: &Path) -> Result<Zeroizing<[u8; 32]>> {
    let unusable = |reason: String| AttestError::TeeUnavailable {
        tee: TeeKind::Sim,
        reason: format!("SIM key file {}: {reason}", path.display()),
    };
    match fs::File::open(path) {
        Ok(mut file) => {
            let meta = file.metadata().map_err(|e| AttestError::io(path, e))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(unusable(format!(
                    "readable or writable by other users (mode {:o}); run chmod 600 on it",
                    meta.permissions().mode() & 0o777
                )));
            }
            if meta.len() != 32 {
                return Err(unusable(format!("holds {} bytes, expected 32", meta.len())));
            }
            let mut seed = Zeroizing::new([0u8; 32]);
            file.read_exact(seed.as_mut_slice())
                .map_err(|e| AttestError::io(path, e))?;
            Ok(seed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = Zeroizing::new([0u8; 32]);
            SystemRandom::new()
                .fill(seed.as_mut_slice())
                .map_err(|_| AttestError::Crypto("the OS random source failed"))?;
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            fs::create_dir_all(dir).map_err(|e| AttestError::io(dir, e))?;
            // Written whole to a temporary file (mode 0600) and linked into place without
            // replacing: a crash never leaves a short key file, and of two processes racing to
            // create the key, the second loads the first's.
            let mut temp =
                tempfile::NamedTempFile::new_in(dir).map_err(|e| AttestError::io(dir, e))?;
            temp.write_all(seed.as_slice())
                .and_then(|()| temp.as_file().sync_all())
                .map_err(|e| AttestError::io(temp.path(), e))?;
            match temp.persist_noclobber(path) {
                Ok(_) => Ok(seed),
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_seed(path)
                }
                Err(e) => Err(AttestError::io(path, e.error)),
            }
        }
        Err(e) => Err(AttestError::io(path, e)),
    }
}
