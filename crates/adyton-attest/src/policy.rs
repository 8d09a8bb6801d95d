//! Policies: the reference values evidence must match, per TEE (`docs/policy.md`).
//!
//! A policy has one table per TEE it accepts; evidence of a TEE without a table is refused, and SIM
//! evidence is accepted only under a `[sim]` table. Unknown fields are errors, so that a misspelt
//! reference value can never be silently ignored. An empty list means "any value".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Deserializer};

use crate::claims::{Claims, SnpClaims, SnpTcb, TdxClaims, TeeClaims, VtpmClaims};
use crate::error::{AttestError, Result};

/// Largest policy file accepted.
pub const MAX_POLICY_LEN: usize = 1024 * 1024;

/// Fixed-length bytes written as hex in policy files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hex<const N: usize>(pub [u8; N]);

impl<'de, const N: usize> Deserialize<'de> for Hex<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(text.trim(), &mut out).map_err(|_| {
            serde::de::Error::custom(format!(
                "expected {} hex digits ({N} bytes), found `{}`",
                2 * N,
                text.chars().take(2 * N + 8).collect::<String>()
            ))
        })?;
        Ok(Hex(out))
    }
}

fn yes() -> bool {
    true
}

// The three hardware tables repeat the common fields (`enforce_tcb_upto_date`,
// `allowed_advisory_ids`, `max_collateral_age_secs`) instead of flattening a shared struct: serde
// cannot combine `flatten` with `deny_unknown_fields`, and refusing unknown fields matters more.

/// Reference values for SGX.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SgxPolicy {
    /// Allowed MRENCLAVE values.
    #[serde(default)]
    pub mrenclave: Vec<Hex<32>>,
    /// Allowed MRSIGNER values.
    #[serde(default)]
    pub mrsigner: Vec<Hex<32>>,
    /// Allowed ISV product ids.
    #[serde(default)]
    pub isvprodid: Vec<u16>,
    /// Smallest allowed ISV SVN.
    #[serde(default)]
    pub min_isvsvn: Option<u16>,
    /// Refuse any TCB status but UpToDate (default true).
    #[serde(default = "yes")]
    pub enforce_tcb_upto_date: bool,
    /// When set, every advisory that applies must be in this list.
    #[serde(default)]
    pub allowed_advisory_ids: Option<Vec<String>>,
    /// When set, collateral issued longer ago than this many seconds is refused.
    #[serde(default)]
    pub max_collateral_age_secs: Option<u64>,
}

/// Reference values for TDX.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TdxPolicy {
    /// Allowed MRTD values.
    #[serde(default)]
    pub mrtd: Vec<Hex<48>>,
    /// Allowed RTMR0 values.
    #[serde(default)]
    pub rtmr0: Vec<Hex<48>>,
    /// Allowed RTMR1 values.
    #[serde(default)]
    pub rtmr1: Vec<Hex<48>>,
    /// Allowed RTMR2 values.
    #[serde(default)]
    pub rtmr2: Vec<Hex<48>>,
    /// Allowed RTMR3 values.
    #[serde(default)]
    pub rtmr3: Vec<Hex<48>>,
    /// Allowed TDX module measurements.
    #[serde(default)]
    pub mrseam: Vec<Hex<48>>,
    /// Allowed MRCONFIGID values (set by the host at TD creation, as the TD's configuration
    /// requires).
    #[serde(default)]
    pub mrconfigid: Vec<Hex<48>>,
    /// Allowed MROWNER values.
    #[serde(default)]
    pub mrowner: Vec<Hex<48>>,
    /// Allowed MROWNERCONFIG values.
    #[serde(default)]
    pub mrownerconfig: Vec<Hex<48>>,
    /// Smallest allowed TDX module SVN.
    #[serde(default)]
    pub min_seamsvn: Option<u16>,
    /// Refuse any TCB status but UpToDate (default true).
    #[serde(default = "yes")]
    pub enforce_tcb_upto_date: bool,
    /// When set, every advisory that applies must be in this list.
    #[serde(default)]
    pub allowed_advisory_ids: Option<Vec<String>>,
    /// When set, collateral issued longer ago than this many seconds is refused.
    #[serde(default)]
    pub max_collateral_age_secs: Option<u64>,
}

/// Minimum SNP TCB components.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnpTcbPolicy {
    /// Minimum boot loader SVN.
    #[serde(default)]
    pub bootloader: u8,
    /// Minimum PSP OS SVN.
    #[serde(default)]
    pub tee: u8,
    /// Minimum SNP firmware SVN.
    #[serde(default)]
    pub snp: u8,
    /// Minimum microcode patch level.
    #[serde(default)]
    pub microcode: u8,
}

/// Reference values for SEV-SNP.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnpPolicy {
    /// Allowed launch measurements.
    #[serde(default)]
    pub measurement: Vec<Hex<48>>,
    /// Required host data.
    #[serde(default)]
    pub host_data: Option<Hex<32>>,
    /// Minimum reported TCB.
    #[serde(default)]
    pub min_tcb: Option<SnpTcbPolicy>,
    /// Allowed privilege levels of the requester (VMPL); a report requested from a less
    /// privileged level can carry report data of that component's choosing.
    #[serde(default)]
    pub vmpl: Vec<u32>,
    /// Refuse any TCB status but UpToDate (default true).
    #[serde(default = "yes")]
    pub enforce_tcb_upto_date: bool,
    /// When set, every advisory that applies must be in this list.
    #[serde(default)]
    pub allowed_advisory_ids: Option<Vec<String>>,
    /// When set, collateral issued longer ago than this many seconds is refused.
    #[serde(default)]
    pub max_collateral_age_secs: Option<u64>,
}

/// A PCR index in a policy: a table key (`"4" = [...]` in TOML, `"4": [...]` in JSON), 0 to 23.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PcrIndex(pub u8);

impl<'de> Deserialize<'de> for PcrIndex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.trim()
            .parse::<u8>()
            .ok()
            .filter(|&i| i < 24)
            .map(PcrIndex)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "PCR index `{}` is not a number from 0 to 23",
                    text.chars().take(16).collect::<String>()
                ))
            })
    }
}

/// Allowed SHA-256 values per PCR; a PCR without an entry may hold any value.
pub type PcrPolicy = BTreeMap<PcrIndex, Vec<Hex<32>>>;

/// Reference values for an Azure confidential VM on SEV-SNP: those of `[snp]` for the SNP report
/// in the HCL report, and the vTPM's PCRs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AzureSnpPolicy {
    /// Allowed launch measurements (of Azure's paravisor firmware).
    #[serde(default)]
    pub measurement: Vec<Hex<48>>,
    /// Required host data.
    #[serde(default)]
    pub host_data: Option<Hex<32>>,
    /// Minimum reported TCB.
    #[serde(default)]
    pub min_tcb: Option<SnpTcbPolicy>,
    /// Allowed privilege levels of the requester (the paravisor asks at VMPL 0).
    #[serde(default)]
    pub vmpl: Vec<u32>,
    /// Allowed values of the vTPM's SHA-256 PCRs, by index.
    #[serde(default)]
    pub pcrs: PcrPolicy,
    /// Refuse any TCB status but UpToDate (default true).
    #[serde(default = "yes")]
    pub enforce_tcb_upto_date: bool,
    /// When set, every advisory that applies must be in this list.
    #[serde(default)]
    pub allowed_advisory_ids: Option<Vec<String>>,
    /// When set, collateral issued longer ago than this many seconds is refused.
    #[serde(default)]
    pub max_collateral_age_secs: Option<u64>,
}

/// Reference values for an Azure confidential VM on TDX: those of `[tdx]` for the TD quote, and
/// the vTPM's PCRs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AzureTdxPolicy {
    /// Allowed MRTD values.
    #[serde(default)]
    pub mrtd: Vec<Hex<48>>,
    /// Allowed RTMR0 values.
    #[serde(default)]
    pub rtmr0: Vec<Hex<48>>,
    /// Allowed RTMR1 values.
    #[serde(default)]
    pub rtmr1: Vec<Hex<48>>,
    /// Allowed RTMR2 values.
    #[serde(default)]
    pub rtmr2: Vec<Hex<48>>,
    /// Allowed RTMR3 values.
    #[serde(default)]
    pub rtmr3: Vec<Hex<48>>,
    /// Allowed TDX module measurements.
    #[serde(default)]
    pub mrseam: Vec<Hex<48>>,
    /// Allowed MRCONFIGID values.
    #[serde(default)]
    pub mrconfigid: Vec<Hex<48>>,
    /// Allowed MROWNER values.
    #[serde(default)]
    pub mrowner: Vec<Hex<48>>,
    /// Allowed MROWNERCONFIG values.
    #[serde(default)]
    pub mrownerconfig: Vec<Hex<48>>,
    /// Smallest allowed TDX module SVN.
    #[serde(default)]
    pub min_seamsvn: Option<u16>,
    /// Allowed values of the vTPM's SHA-256 PCRs, by index.
    #[serde(default)]
    pub pcrs: PcrPolicy,
    /// Refuse any TCB status but UpToDate (default true).
    #[serde(default = "yes")]
    pub enforce_tcb_upto_date: bool,
    /// When set, every advisory that applies must be in this list.
    #[serde(default)]
    pub allowed_advisory_ids: Option<Vec<String>>,
    /// When set, collateral issued longer ago than this many seconds is refused.
    #[serde(default)]
    pub max_collateral_age_secs: Option<u64>,
}

/// Reference values for the insecure SIM TEE.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SimPolicy {
    /// Allowed build measurements (`adyton attest measure`).
    #[serde(default)]
    pub measurement: Vec<Hex<48>>,
    /// Allowed SIM attester public keys.
    #[serde(default)]
    pub signer: Vec<Hex<32>>,
}

/// Requirements on the NVIDIA GPUs attached to CPU evidence (`docs/policy.md`, `[nvidia_gpu]`).
///
/// Without this table a policy ignores GPU evidence: it is neither verified nor required, and
/// the CPU evidence alone decides, as before GPUs existed. With it, every attached GPU must
/// verify and satisfy it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NvidiaGpuPolicy {
    /// At least one GPU must be attached.
    #[serde(default)]
    pub required: bool,
    /// Exactly this many GPUs must be attached.
    #[serde(default)]
    pub count: Option<u32>,
    /// Smallest allowed driver version, dotted decimal (`550.144.03`).
    #[serde(default)]
    pub min_driver_version: Option<String>,
    /// Smallest allowed VBIOS version, dotted hex as NVIDIA writes it (`96.00.5E.00.01`).
    #[serde(default)]
    pub min_vbios_version: Option<String>,
    /// Confidential computing must be on (default true).
    #[serde(default = "yes")]
    pub cc_mode: bool,
    /// Allowed RIM ids (`NV_GPU_DRIVER_GH100_550.144.03`, ...); every RIM a GPU was checked
    /// against must be listed. Empty: any.
    #[serde(default)]
    pub allowed_rim_ids: Vec<String>,
}

impl NvidiaGpuPolicy {
    /// Checks the version fields' syntax, so that a policy that cannot be evaluated is refused
    /// when it is read.
    fn validate(&self) -> Result<()> {
        for (field, value, radix) in [
            (
                "nvidia_gpu.min_driver_version",
                &self.min_driver_version,
                10,
            ),
            ("nvidia_gpu.min_vbios_version", &self.min_vbios_version, 16),
        ] {
            if let Some(value) = value {
                dotted(value, radix).ok_or_else(|| AttestError::BadPolicy {
                    reason: format!("{field}: `{value}` is not a dotted version"),
                })?;
            }
        }
        Ok(())
    }

    /// Judges the claims of every attached GPU, all verified, in index order.
    pub fn evaluate(&self, gpus: &[crate::gpu::GpuClaims]) -> Result<()> {
        if self.required && gpus.is_empty() {
            return Err(denied("nvidia_gpu.required", "at least 1 GPU", 0));
        }
        if let Some(count) = self.count {
            if gpus.len() != count as usize {
                return Err(denied("nvidia_gpu.count", count, gpus.len()));
            }
        }
        for (i, gpu) in gpus.iter().enumerate() {
            if self.cc_mode && !gpu.cc_mode {
                return Err(denied(
                    &format!("nvidia_gpu.cc_mode (GPU {i})"),
                    true,
                    false,
                ));
            }
            for (field, min, value, radix) in [
                (
                    "min_driver_version",
                    &self.min_driver_version,
                    &gpu.driver_version,
                    10,
                ),
                (
                    "min_vbios_version",
                    &self.min_vbios_version,
                    &gpu.vbios_version,
                    16,
                ),
            ] {
                let Some(min) = min else { continue };
                let at_least = match (dotted(value, radix), dotted(min, radix)) {
                    (Some(have), Some(want)) => have >= want,
                    _ => false,
                };
                if !at_least {
                    return Err(denied(
                        &format!("nvidia_gpu.{field} (GPU {i})"),
                        format!(">= {min}"),
                        value,
                    ));
                }
            }
            if !self.allowed_rim_ids.is_empty() {
                if let Some(id) = gpu
                    .rim_ids
                    .iter()
                    .find(|id| !self.allowed_rim_ids.contains(id))
                {
                    return Err(denied(
                        &format!("nvidia_gpu.allowed_rim_ids (GPU {i})"),
                        format!("one of {:?}", self.allowed_rim_ids),
                        id,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A dotted version's components as numbers in `radix`, compared left to right; a missing
/// component counts as 0 (`550.144` = `550.144.0`).
fn dotted(text: &str, radix: u32) -> Option<Vec<u64>> {
    let mut parts = text
        .trim()
        .split('.')
        .map(|p| u64::from_str_radix(p, radix).ok())
        .collect::<Option<Vec<u64>>>()?;
    if parts.is_empty() || parts.len() > 8 {
        return None;
    }
    while parts.len() > 1 && parts.last() == Some(&0) {
        parts.pop();
    }
    Some(parts)
}

/// Reference values for AWS Nitro Enclaves: the PCRs that identify the enclave.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NitroPolicy {
    /// Allowed PCR0 values (the enclave image file).
    #[serde(default)]
    pub pcr0: Vec<Hex<48>>,
    /// Allowed PCR1 values (the Linux kernel and boot ramfs).
    #[serde(default)]
    pub pcr1: Vec<Hex<48>>,
    /// Allowed PCR2 values (the application).
    #[serde(default)]
    pub pcr2: Vec<Hex<48>>,
    /// Allowed PCR3 values (the parent instance's IAM role).
    #[serde(default)]
    pub pcr3: Vec<Hex<48>>,
    /// Allowed PCR4 values (the parent instance's id).
    #[serde(default)]
    pub pcr4: Vec<Hex<48>>,
    /// Allowed PCR5 values.
    #[serde(default)]
    pub pcr5: Vec<Hex<48>>,
    /// Allowed PCR6 values.
    #[serde(default)]
    pub pcr6: Vec<Hex<48>>,
    /// Allowed PCR7 values.
    #[serde(default)]
    pub pcr7: Vec<Hex<48>>,
    /// Allowed PCR8 values (the enclave image's signing certificate).
    #[serde(default)]
    pub pcr8: Vec<Hex<48>>,
}

impl NitroPolicy {
    /// The allowed values of PCR0 to PCR8, in order.
    fn pcrs(&self) -> [&[Hex<48>]; 9] {
        [
            &self.pcr0, &self.pcr1, &self.pcr2, &self.pcr3, &self.pcr4, &self.pcr5, &self.pcr6,
            &self.pcr7, &self.pcr8,
        ]
    }
}

/// A policy: one optional table per TEE.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// SGX reference values.
    #[serde(default)]
    pub sgx: Option<SgxPolicy>,
    /// TDX reference values.
    #[serde(default)]
    pub tdx: Option<TdxPolicy>,
    /// SEV-SNP reference values.
    #[serde(default)]
    pub snp: Option<SnpPolicy>,
    /// SIM reference values. Without this table SIM evidence is always refused.
    #[serde(default)]
    pub sim: Option<SimPolicy>,
    /// Azure confidential VM (SEV-SNP) reference values.
    #[serde(default)]
    pub azure_snp: Option<AzureSnpPolicy>,
    /// Azure confidential VM (TDX) reference values.
    #[serde(default)]
    pub azure_tdx: Option<AzureTdxPolicy>,
    /// Requirements on attached NVIDIA GPUs; without it GPU evidence is ignored.
    #[serde(default)]
    pub nvidia_gpu: Option<NvidiaGpuPolicy>,
    /// AWS Nitro Enclaves reference values.
    #[serde(default)]
    pub nitro: Option<NitroPolicy>,
}

struct Common<'a> {
    enforce_tcb_upto_date: bool,
    allowed_advisory_ids: &'a Option<Vec<String>>,
    max_collateral_age_secs: Option<u64>,
}

impl Policy {
    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self> {
        let policy: Self = toml::from_str(text).map_err(|e| AttestError::BadPolicy {
            reason: e.to_string(),
        })?;
        policy.validate()
    }

    fn validate(self) -> Result<Self> {
        if let Some(gpu) = &self.nvidia_gpu {
            gpu.validate()?;
        }
        Ok(self)
    }

    /// Parses JSON (the same fields).
    pub fn from_json(text: &str) -> Result<Self> {
        let policy: Self = serde_json::from_str(text).map_err(|e| AttestError::BadPolicy {
            reason: e.to_string(),
        })?;
        policy.validate()
    }

    /// Reads a policy file: JSON when its name ends in `.json`, TOML otherwise.
    pub fn from_file(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| AttestError::io(path, e))?;
        if meta.len() > MAX_POLICY_LEN as u64 {
            return Err(AttestError::BadPolicy {
                reason: format!("{} is larger than {MAX_POLICY_LEN} bytes", path.display()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| AttestError::io(path, e))?;
        let is_json = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
        let parsed = if is_json {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        };
        parsed.map_err(|e| AttestError::BadPolicy {
            reason: format!("{}: {e}", path.display()),
        })
    }

    /// A policy that accepts SIM evidence of these builds.
    pub fn sim_only(measurements: &[[u8; 48]]) -> Self {
        Policy {
            sim: Some(SimPolicy {
                measurement: measurements.iter().copied().map(Hex).collect(),
                signer: Vec::new(),
            }),
            ..Policy::default()
        }
    }

    /// Judges verified claims as of `now` (unix seconds). `Ok(())` means allowed; every refusal
    /// names the field and both values.
    pub fn evaluate(&self, claims: &Claims, now: u64) -> Result<()> {
        if claims.debug {
            return Err(AttestError::DebugEnabled);
        }
        let not_in_policy = || AttestError::TeeNotInPolicy { tee: claims.tee };
        let common = match &claims.details {
            TeeClaims::Sgx(c) => {
                let p = self.sgx.as_ref().ok_or_else(not_in_policy)?;
                one_of("sgx.mrenclave", &p.mrenclave, &c.mrenclave)?;
                one_of("sgx.mrsigner", &p.mrsigner, &c.mrsigner)?;
                if !p.isvprodid.is_empty() && !p.isvprodid.contains(&c.isvprodid) {
                    return Err(denied(
                        "sgx.isvprodid",
                        format!("{:?}", p.isvprodid),
                        c.isvprodid,
                    ));
                }
                at_least("sgx.min_isvsvn", p.min_isvsvn, c.isvsvn)?;
                Common {
                    enforce_tcb_upto_date: p.enforce_tcb_upto_date,
                    allowed_advisory_ids: &p.allowed_advisory_ids,
                    max_collateral_age_secs: p.max_collateral_age_secs,
                }
            }
            TeeClaims::Tdx(c) => {
                let p = self.tdx.as_ref().ok_or_else(not_in_policy)?;
                check_tdx(
                    "tdx",
                    TdxRefs {
                        mrtd: &p.mrtd,
                        rtmr: [&p.rtmr0, &p.rtmr1, &p.rtmr2, &p.rtmr3],
                        mrseam: &p.mrseam,
                        mrconfigid: &p.mrconfigid,
                        mrowner: &p.mrowner,
                        mrownerconfig: &p.mrownerconfig,
                        min_seamsvn: p.min_seamsvn,
                    },
                    c,
                )?;
                Common {
                    enforce_tcb_upto_date: p.enforce_tcb_upto_date,
                    allowed_advisory_ids: &p.allowed_advisory_ids,
                    max_collateral_age_secs: p.max_collateral_age_secs,
                }
            }
            TeeClaims::Snp(c) => {
                let p = self.snp.as_ref().ok_or_else(not_in_policy)?;
                check_snp(
                    "snp",
                    SnpRefs {
                        measurement: &p.measurement,
                        host_data: &p.host_data,
                        min_tcb: &p.min_tcb,
                        vmpl: &p.vmpl,
                    },
                    c,
                )?;
                Common {
                    enforce_tcb_upto_date: p.enforce_tcb_upto_date,
                    allowed_advisory_ids: &p.allowed_advisory_ids,
                    max_collateral_age_secs: p.max_collateral_age_secs,
                }
            }
            TeeClaims::AzureSnp(c) => {
                let p = self.azure_snp.as_ref().ok_or_else(not_in_policy)?;
                check_snp(
                    "azure_snp",
                    SnpRefs {
                        measurement: &p.measurement,
                        host_data: &p.host_data,
                        min_tcb: &p.min_tcb,
                        vmpl: &p.vmpl,
                    },
                    &c.snp,
                )?;
                check_pcrs("azure_snp", &p.pcrs, &c.vtpm)?;
                Common {
                    enforce_tcb_upto_date: p.enforce_tcb_upto_date,
                    allowed_advisory_ids: &p.allowed_advisory_ids,
                    max_collateral_age_secs: p.max_collateral_age_secs,
                }
            }
            TeeClaims::AzureTdx(c) => {
                let p = self.azure_tdx.as_ref().ok_or_else(not_in_policy)?;
                check_tdx(
                    "azure_tdx",
                    TdxRefs {
                        mrtd: &p.mrtd,
                        rtmr: [&p.rtmr0, &p.rtmr1, &p.rtmr2, &p.rtmr3],
                        mrseam: &p.mrseam,
                        mrconfigid: &p.mrconfigid,
                        mrowner: &p.mrowner,
                        mrownerconfig: &p.mrownerconfig,
                        min_seamsvn: p.min_seamsvn,
                    },
                    &c.tdx,
                )?;
                check_pcrs("azure_tdx", &p.pcrs, &c.vtpm)?;
                Common {
                    enforce_tcb_upto_date: p.enforce_tcb_upto_date,
                    allowed_advisory_ids: &p.allowed_advisory_ids,
                    max_collateral_age_secs: p.max_collateral_age_secs,
                }
            }
            TeeClaims::Sim(c) => {
                let p = self.sim.as_ref().ok_or_else(not_in_policy)?;
                one_of("sim.measurement", &p.measurement, &c.measurement)?;
                let signer: [u8; 32] = c.signer.as_slice().try_into().unwrap_or([0; 32]);
                one_of("sim.signer", &p.signer, &signer)?;
                return Ok(());
            }
            TeeClaims::Nitro(c) => {
                let p = self.nitro.as_ref().ok_or_else(not_in_policy)?;
                for (i, allowed) in p.pcrs().into_iter().enumerate() {
                    let field = format!("nitro.pcr{i}");
                    // A verified document has at least 16 PCRs; a missing one matches no list.
                    match c.pcrs.get(i) {
                        Some(value) => one_of(&field, allowed, value)?,
                        None if !allowed.is_empty() => {
                            return Err(denied(&field, "a listed value", "absent"))
                        }
                        None => {}
                    }
                }
                // Nitro states no TCB, advisories or collateral: nothing more to judge.
                return Ok(());
            }
        };
        if common.enforce_tcb_upto_date && !claims.tcb_status.is_up_to_date() {
            return Err(AttestError::TcbOutOfDate {
                status: claims.tcb_status.name(),
            });
        }
        if let Some(allowed) = common.allowed_advisory_ids {
            if let Some(id) = claims.advisory_ids.iter().find(|id| !allowed.contains(id)) {
                return Err(denied("allowed_advisory_ids", format!("{allowed:?}"), id));
            }
        }
        if let (Some(max_age), Some(issued)) =
            (common.max_collateral_age_secs, claims.collateral_issued_at)
        {
            let age = now.saturating_sub(issued);
            if age > max_age {
                return Err(denied(
                    "max_collateral_age_secs",
                    format!("at most {max_age} s"),
                    format!("{age} s"),
                ));
            }
        }
        Ok(())
    }
}

fn denied(field: &str, expected: impl ToString, found: impl ToString) -> AttestError {
    AttestError::PolicyDenied {
        field: field.into(),
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

fn one_of<const N: usize>(field: &str, allowed: &[Hex<N>], value: &[u8; N]) -> Result<()> {
    if allowed.is_empty() || allowed.iter().any(|a| &a.0 == value) {
        return Ok(());
    }
    let mut expected = String::from("one of [");
    for (i, a) in allowed.iter().enumerate() {
        let _ = write!(
            expected,
            "{}{}",
            if i > 0 { ", " } else { "" },
            hex::encode(a.0)
        );
    }
    expected.push(']');
    Err(denied(field, expected, hex::encode(value)))
}

fn at_least(field: &str, min: Option<u16>, value: u16) -> Result<()> {
    match min {
        Some(min) if value < min => Err(denied(field, format!(">= {min}"), value)),
        _ => Ok(()),
    }
}

/// The SNP reference values `[snp]` and `[azure_snp]` share.
struct SnpRefs<'a> {
    measurement: &'a [Hex<48>],
    host_data: &'a Option<Hex<32>>,
    min_tcb: &'a Option<SnpTcbPolicy>,
    vmpl: &'a [u32],
}

fn check_snp(table: &str, p: SnpRefs<'_>, c: &SnpClaims) -> Result<()> {
    one_of(
        &format!("{table}.measurement"),
        p.measurement,
        &c.measurement,
    )?;
    if let Some(host_data) = p.host_data {
        one_of(
            &format!("{table}.host_data"),
            std::slice::from_ref(host_data),
            &c.host_data,
        )?;
    }
    if let Some(min) = p.min_tcb {
        snp_tcb_at_least(table, min, &c.reported_tcb)?;
    }
    if !p.vmpl.is_empty() && !p.vmpl.contains(&c.vmpl) {
        return Err(denied(
            &format!("{table}.vmpl"),
            format!("one of {:?}", p.vmpl),
            c.vmpl,
        ));
    }
    Ok(())
}

/// The TDX reference values `[tdx]` and `[azure_tdx]` share.
struct TdxRefs<'a> {
    mrtd: &'a [Hex<48>],
    rtmr: [&'a [Hex<48>]; 4],
    mrseam: &'a [Hex<48>],
    mrconfigid: &'a [Hex<48>],
    mrowner: &'a [Hex<48>],
    mrownerconfig: &'a [Hex<48>],
    min_seamsvn: Option<u16>,
}

fn check_tdx(table: &str, p: TdxRefs<'_>, c: &TdxClaims) -> Result<()> {
    one_of(&format!("{table}.mrtd"), p.mrtd, &c.mrtd)?;
    for (i, (allowed, value)) in p.rtmr.into_iter().zip(&c.rtmr).enumerate() {
        one_of(&format!("{table}.rtmr{i}"), allowed, value)?;
    }
    one_of(&format!("{table}.mrseam"), p.mrseam, &c.mrseam)?;
    one_of(&format!("{table}.mrconfigid"), p.mrconfigid, &c.mrconfigid)?;
    one_of(&format!("{table}.mrowner"), p.mrowner, &c.mrowner)?;
    one_of(
        &format!("{table}.mrownerconfig"),
        p.mrownerconfig,
        &c.mrownerconfig,
    )?;
    at_least(&format!("{table}.min_seamsvn"), p.min_seamsvn, c.seamsvn)
}

/// Every pinned PCR must be in the quote with an allowed value; a pin of a PCR the quote does not
/// cover is a refusal, not a pass.
fn check_pcrs(table: &str, pins: &PcrPolicy, vtpm: &VtpmClaims) -> Result<()> {
    for (index, allowed) in pins {
        let field = format!("{table}.pcrs.{}", index.0);
        match vtpm.pcrs.get(&index.0) {
            Some(value) => one_of(&field, allowed, value)?,
            None if allowed.is_empty() => {}
            None => return Err(denied(&field, "a quoted value", "not in the vTPM quote")),
        }
    }
    Ok(())
}

fn snp_tcb_at_least(table: &str, min: &SnpTcbPolicy, tcb: &SnpTcb) -> Result<()> {
    for (name, min, value) in [
        ("bootloader", min.bootloader, tcb.bootloader),
        ("tee", min.tee, tcb.tee),
        ("snp", min.snp, tcb.snp),
        ("microcode", min.microcode, tcb.microcode),
    ] {
        if value < min {
            return Err(denied(
                &format!("{table}.min_tcb.{name}"),
                format!(">= {min}"),
                value,
            ));
        }
    }
    Ok(())
}
