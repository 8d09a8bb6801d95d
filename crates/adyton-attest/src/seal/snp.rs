//! SEV-SNP sealing: the firmware's derived key (`SNP_GET_DERIVED_KEY`, SEV-SNP ABI
//! `MSG_KEY_REQ`) through `/dev/sev-guest`, from the VCEK root key, message version 1.
//!
//! The guest field select picks the launch fields the firmware mixes into the key:
//! exact-build = guest policy + measurement; signer = guest policy + family id + image id (which
//! the signer sets in the ID block). The device sits behind [`DerivedKeySource`], so that tests
//! use a fake firmware.

use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

pub use sev::firmware::guest::GuestFieldSelect;

use crate::error::{AttestError, Result};
use crate::evidence::TeeKind;
use crate::seal::{derive_key, Sealer, SealingKey, SealingPolicy};

/// The SEV-SNP guest device, the only path the `sev` crate opens.
pub const DEFAULT_DEVICE: &str = "/dev/sev-guest";

/// The guest message version of the key request. Version 1 needs no launch mitigation vector
/// and is understood by every SNP firmware.
pub const MESSAGE_VERSION: u32 = 1;

/// A derived-key request: the root key is always the VCEK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnpKeyRequest {
    /// The launch fields the firmware mixes into the key.
    pub guest_field_select: GuestFieldSelect,
    /// The VMPL mixed into the key; the firmware refuses a VMPL below the guest's own.
    pub vmpl: u32,
}

impl SnpKeyRequest {
    /// The request of `policy`: its guest field select, at VMPL 0.
    pub fn for_policy(policy: SealingPolicy) -> Self {
        Self {
            guest_field_select: guest_field_select(policy),
            vmpl: 0,
        }
    }
}

/// The guest field select of `policy`: exact-build = guest policy + measurement; signer = guest
/// policy + family id + image id.
pub fn guest_field_select(policy: SealingPolicy) -> GuestFieldSelect {
    let mut select = GuestFieldSelect::default();
    select.set_guest_policy(true);
    match policy {
        SealingPolicy::ExactBuild => select.set_measurement(true),
        SealingPolicy::Signer => {
            select.set_family_id(true);
            select.set_image_id(true);
        }
    }
    select
}

/// Where derived keys come from: the firmware through `/dev/sev-guest`, or a fake in tests.
pub trait DerivedKeySource: Send + Sync + fmt::Debug {
    /// The firmware's 32-byte derived key for `request`.
    fn derived_key(&self, request: &SnpKeyRequest) -> Result<Zeroizing<[u8; 32]>>;
}

fn unavailable(reason: String) -> AttestError {
    AttestError::TeeUnavailable {
        tee: TeeKind::Snp,
        reason,
    }
}

/// The SEV-SNP guest device, used through the `sev` crate.
#[derive(Debug)]
pub struct SevGuestDevice {
    path: PathBuf,
}

impl SevGuestDevice {
    /// Checks that `path` is a character device. The `sev` crate opens only
    /// [`DEFAULT_DEVICE`], so another path that passes the check is refused with a clear error.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = fs::metadata(path).map_err(|e| {
            let hint = if e.kind() == ErrorKind::NotFound {
                " (not an SEV-SNP guest, or the sev-guest kernel module is not loaded)"
            } else {
                ""
            };
            unavailable(format!(
                "no SEV-SNP guest device at {}: {e}{hint}",
                path.display()
            ))
        })?;
        if !meta.file_type().is_char_device() {
            return Err(unavailable(format!(
                "{} is not a character device, so it is not the SEV-SNP guest device",
                path.display()
            )));
        }
        let default = Path::new(DEFAULT_DEVICE);
        let same_device = path == default
            || matches!(
                (fs::canonicalize(path), fs::canonicalize(default)),
                (Ok(a), Ok(b)) if a == b
            );
        if !same_device {
            return Err(unavailable(format!(
                "the SEV-SNP guest device must be {DEFAULT_DEVICE}: the sev crate opens only that \
                 path, so {} cannot be used",
                path.display()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl DerivedKeySource for SevGuestDevice {
    #[cfg(target_os = "linux")]
    fn derived_key(&self, request: &SnpKeyRequest) -> Result<Zeroizing<[u8; 32]>> {
        use sev::firmware::guest::{DerivedKey, Firmware};

        let mut firmware = Firmware::open().map_err(|e| AttestError::io(&self.path, e))?;
        // Root key select false = VCEK; guest SVN and TCB version are not selected, so their
        // values do not enter the key.
        let key_request =
            DerivedKey::new(false, request.guest_field_select, request.vmpl, 0, 0, None);
        firmware
            .get_derived_key(Some(MESSAGE_VERSION), key_request)
            .map(Zeroizing::new)
            .map_err(|e| {
                unavailable(format!(
                    "SNP_GET_DERIVED_KEY through {} failed: {e} (Adyton asks for a VMPL {} key, \
                     which a guest running at a higher VMPL cannot get)",
                    self.path.display(),
                    request.vmpl
                ))
            })
    }

    #[cfg(not(target_os = "linux"))]
    fn derived_key(&self, _request: &SnpKeyRequest) -> Result<Zeroizing<[u8; 32]>> {
        Err(unavailable(format!(
            "{} can only be used on Linux",
            self.path.display()
        )))
    }
}

/// Derives sealing keys from the SEV-SNP firmware's derived key.
#[derive(Debug)]
pub struct SnpSealer {
    source: Box<dyn DerivedKeySource>,
}

impl SnpSealer {
    /// A sealer over `source` (a fake firmware in tests).
    pub fn new(source: Box<dyn DerivedKeySource>) -> Self {
        Self { source }
    }

    /// A sealer over the guest device at `device` (normally [`DEFAULT_DEVICE`]).
    pub fn open(device: &Path) -> Result<Self> {
        Ok(Self::new(Box::new(SevGuestDevice::open(device)?)))
    }
}

impl Sealer for SnpSealer {
    fn tee(&self) -> TeeKind {
        TeeKind::Snp
    }

    fn sealing_key(&self, policy: SealingPolicy, context: &[u8]) -> Result<SealingKey> {
        let firmware_key = self
            .source
            .derived_key(&SnpKeyRequest::for_policy(policy))?;
        derive_key(TeeKind::Snp, policy, firmware_key.as_slice(), &[], context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selects_follow_the_policy() {
        let exact = guest_field_select(SealingPolicy::ExactBuild);
        assert!(exact.get_guest_policy() && exact.get_measurement());
        assert!(!exact.get_family_id() && !exact.get_image_id());
        assert!(!exact.get_svn() && !exact.get_tcb_version() && !exact.get_launch_mit_vector());

        let signer = guest_field_select(SealingPolicy::Signer);
        assert!(signer.get_guest_policy() && signer.get_family_id() && signer.get_image_id());
        assert!(!signer.get_measurement());
        assert!(!signer.get_svn() && !signer.get_tcb_version() && !signer.get_launch_mit_vector());
    }
}
