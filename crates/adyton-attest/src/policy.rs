//! Policies: the reference values evidence must match, per TEE (`docs/policy.md`).
//!
//! A policy has one table per TEE it accepts; evidence of a TEE without a table is refused, and SIM
//! evidence is accepted only under a `[sim]` table. Unknown fields are errors, so that a misspelt
//! reference value can never be silently ignored. An empty list means "any value".

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Deserializer};

use crate::claims::{Claims, SnpTcb, TeeClaims};
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
        toml::from_str(text).map_err(|e| AttestError::BadPolicy {
            reason: e.to_string(),
        })
    }

    /// Parses JSON (the same fields).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| AttestError::BadPolicy {
            reason: e.to_string(),
        })
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
                one_of("tdx.mrtd", &p.mrtd, &c.mrtd)?;
                for (i, (allowed, value)) in [&p.rtmr0, &p.rtmr1, &p.rtmr2, &p.rtmr3]
                    .into_iter()
                    .zip(&c.rtmr)
                    .enumerate()
                {
                    one_of(&format!("tdx.rtmr{i}"), allowed, value)?;
                }
                one_of("tdx.mrseam", &p.mrseam, &c.mrseam)?;
                at_least("tdx.min_seamsvn", p.min_seamsvn, c.seamsvn)?;
                Common {
                    enforce_tcb_upto_date: p.enforce_tcb_upto_date,
                    allowed_advisory_ids: &p.allowed_advisory_ids,
                    max_collateral_age_secs: p.max_collateral_age_secs,
                }
            }
            TeeClaims::Snp(c) => {
                let p = self.snp.as_ref().ok_or_else(not_in_policy)?;
                one_of("snp.measurement", &p.measurement, &c.measurement)?;
                if let Some(host_data) = &p.host_data {
                    one_of(
                        "snp.host_data",
                        std::slice::from_ref(host_data),
                        &c.host_data,
                    )?;
                }
                if let Some(min) = &p.min_tcb {
                    snp_tcb_at_least(min, &c.reported_tcb)?;
                }
                if !p.vmpl.is_empty() && !p.vmpl.contains(&c.vmpl) {
                    return Err(denied("snp.vmpl", format!("one of {:?}", p.vmpl), c.vmpl));
                }
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

fn snp_tcb_at_least(min: &SnpTcbPolicy, tcb: &SnpTcb) -> Result<()> {
    for (name, min, value) in [
        ("bootloader", min.bootloader, tcb.bootloader),
        ("tee", min.tee, tcb.tee),
        ("snp", min.snp, tcb.snp),
        ("microcode", min.microcode, tcb.microcode),
    ] {
        if value < min {
            return Err(denied(
                &format!("snp.min_tcb.{name}"),
                format!(">= {min}"),
                value,
            ));
        }
    }
    Ok(())
}
