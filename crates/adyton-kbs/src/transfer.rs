//! The key transfer: evidence and a TEE public key in, the model key wrapped to that public key out,
//! only when the evidence binds the key and satisfies the key's transfer policy.
//!
//! Report data binding (`docs/kbs.md`):
//! - without a nonce, the evidence's report data must equal SHA-512(user_data);
//! - with a nonce from [`NonceIssuer`], it must equal SHA-512(nonce || user_data), and the nonce is
//!   accepted once, before it expires.
//!
//! `user_data` is the TEE's public key as sent: DER SubjectPublicKeyInfo of an RSA key or of an
//! EC P-384 key, or Intel's raw RSA form `u32le exponent || modulus` (little-endian modulus under
//! SGX, big-endian otherwise). The SWK goes to an RSA key with RSA-OAEP-SHA256 and to a P-384 key
//! with HPKE ([`adyton_envelope::wrap`]); other curves and algorithms are bad requests.
//!
//! The offline transfer ([`Broker::offline_transfer`], `design.md` flow D) is the same decision
//! without a nonce, for a device with no network whose provisioning request an operator carries
//! to the broker; its audit decision also names the request, the model and the operator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use adyton_attest::composite::{verify_gpus, GpuOutcome};
use adyton_attest::gpu::GpuVerifier;
use adyton_attest::provider::{CollateralOrigin, CollateralProvider, CollateralUse};
use adyton_attest::{Claims, Collateral, Evidence, TeeKind};
use adyton_envelope::wrap::{self, ModulusOrder, TeeKeyAlgorithm, TeePublicKey, WrappedKey};
use adyton_envelope::{Aes256Key, EnvelopeError};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::Serialize;

use crate::error::{KbsError, Result};
use crate::master_key::MasterKey;
use crate::store::{KeyRecord, PolicyRecord, Store};

/// How long an issued nonce may be redeemed.
pub const NONCE_LIFETIME_SECS: u64 = 300;
/// Most nonces outstanding (issued, not yet redeemed or expired) remembered for replay checks.
const MAX_REDEEMED: usize = 100_000;
const NONCE_RANDOM_LEN: usize = 16;
const NONCE_LEN: usize = NONCE_RANDOM_LEN + 8 + 32;

/// The report data a transfer requires: SHA-512 of the nonce (if any) followed by `user_data`,
/// computed where the TEE side computes it too.
pub use adyton_proto::transfer_report_data as expected_report_data;

/// Issues signed, expiring, single-use nonces.
///
/// A nonce is 16 random bytes, its expiry (u64 little-endian unix seconds) and an HMAC-SHA256 over
/// both. Redeemed nonces are remembered until they expire, so each is accepted once. The HMAC key
/// and the redeemed set live in this process: replicas behind one load balancer must share them
/// (a shared store), which the PostgreSQL deployment provides.
pub struct NonceIssuer {
    key: hmac::Key,
    redeemed: Mutex<HashMap<[u8; NONCE_RANDOM_LEN], u64>>,
}

impl std::fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceIssuer").finish_non_exhaustive()
    }
}

impl NonceIssuer {
    /// An issuer with a fresh random HMAC key.
    pub fn new() -> Result<Self> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| EnvelopeError::RandomSource)?;
        Ok(Self {
            key,
            redeemed: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh nonce, valid until `now + NONCE_LIFETIME_SECS`.
    pub fn issue(&self, now: u64) -> Result<Vec<u8>> {
        let mut nonce = vec![0u8; NONCE_RANDOM_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| EnvelopeError::RandomSource)?;
        nonce.extend_from_slice(&(now + NONCE_LIFETIME_SECS).to_le_bytes());
        let tag = hmac::sign(&self.key, &nonce);
        nonce.extend_from_slice(tag.as_ref());
        Ok(nonce)
    }

    /// Accepts `nonce` once, if this issuer made it and it has not expired.
    pub fn redeem(&self, nonce: &[u8], now: u64) -> Result<()> {
        let bad = |reason: &str| KbsError::BadNonce {
            reason: reason.into(),
        };
        if nonce.len() != NONCE_LEN {
            return Err(bad("wrong length"));
        }
        let (signed, tag) = nonce.split_at(NONCE_RANDOM_LEN + 8);
        hmac::verify(&self.key, signed, tag).map_err(|_| bad("not issued by this key broker"))?;
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&signed[NONCE_RANDOM_LEN..]);
        let expiry = u64::from_le_bytes(expiry);
        if now > expiry {
            return Err(bad("expired"));
        }
        let mut id = [0u8; NONCE_RANDOM_LEN];
        id.copy_from_slice(&signed[..NONCE_RANDOM_LEN]);
        let mut redeemed = self.redeemed.lock().unwrap_or_else(PoisonError::into_inner);
        redeemed.retain(|_, &mut until| until >= now);
        if redeemed.len() >= MAX_REDEEMED {
            return Err(bad("too many nonces outstanding; try again later"));
        }
        if redeemed.insert(id, expiry).is_some() {
            return Err(bad("already used"));
        }
        Ok(())
    }
}

/// A transfer request, decoded from its HTTP form.
#[derive(Clone, Debug)]
pub struct TransferRequest {
    /// The `Attestation-Type` header.
    pub attestation_type: String,
    /// The decoded `quote`: a raw DCAP quote or SNP report, a SIM report, or Adyton evidence JSON.
    pub quote: Vec<u8>,
    /// The decoded `user_data`: the TEE's public key (RSA or EC P-384).
    pub user_data: Vec<u8>,
    /// The decoded nonce, when the client bound one.
    pub nonce: Option<Vec<u8>>,
    /// The evidence's collateral (bundle JSON) when the TEE sent it; used only when the broker
    /// has none of its own for the evidence.
    pub collateral: Option<Vec<u8>>,
}

/// What a transfer decided, for the audit log. It holds no secret.
#[derive(Clone, Debug, Serialize)]
pub struct TransferDecision {
    /// Unix seconds.
    pub time: u64,
    /// The key asked for.
    pub key_id: String,
    /// The TEE kind claimed by the request.
    pub tee: String,
    /// The verified measurement, when verification got that far.
    pub measurement: Option<String>,
    /// Whether the key was released.
    pub allowed: bool,
    /// Why not, when denied.
    pub reason: Option<String>,
    /// The TEE's transfer key, once `user_data` was read: its algorithm, how it was encoded and
    /// how the SWK is wrapped to it. Absent when `user_data` was not reached or not readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_key: Option<TransferKeyType>,
    /// `true` when the refusal was no verdict on the evidence: the collateral source could not
    /// be reached and no valid copy was cached (HTTP 503, the TEE may retry). Absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub collateral_unreachable: bool,
    /// For an offline transfer, what it was for and who asked; absent (not `null`) from the audit
    /// line of an online transfer, whose lines are unchanged by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline: Option<OfflineContext>,
    /// Which collateral verified the evidence (FMSPC or chip), from where (bundle file, source
    /// URL, cache) and its dates; absent for SIM evidence, which needs none, and when none could
    /// be had.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collateral: Option<CollateralUse>,
    /// Each attached GPU's result (verified, with its driver and VBIOS versions, or why not),
    /// when the key's policy has an `nvidia_gpu` table; absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuOutcome>,
}

/// The type of a transfer's TEE public key, for the audit log (`docs/kbs.md`, "Transfer key
/// types").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransferKeyType {
    /// `RSA-3072`, `EC P-384`, ...
    pub algorithm: String,
    /// How `user_data` carried it.
    pub encoding: KeyEncoding,
    /// How the SWK is wrapped to it: `rsa-oaep-sha256` or `hpke` (DHKEM(P-384), HKDF-SHA384,
    /// AES-256-GCM).
    pub wrapping: &'static str,
}

/// How `user_data` encodes the TEE's public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyEncoding {
    /// DER SubjectPublicKeyInfo.
    Spki,
    /// Intel's raw RSA form, `u32le exponent || modulus`, the modulus little-endian (SGX).
    IntelRawLe,
    /// Intel's raw RSA form with a big-endian modulus (TDX, SNP, SIM).
    IntelRawBe,
}

impl TransferKeyType {
    /// The type of `key`, read from `user_data` (raw keys with `order`).
    fn of(key: &TeePublicKey, user_data: &[u8], order: ModulusOrder) -> Self {
        let encoding = match (user_data.first(), order) {
            // `TeePublicKey::from_user_data`'s rule: a DER SEQUENCE tag is SPKI.
            (Some(0x30), _) => KeyEncoding::Spki,
            (_, ModulusOrder::LittleEndian) => KeyEncoding::IntelRawLe,
            (_, ModulusOrder::BigEndian) => KeyEncoding::IntelRawBe,
        };
        let algorithm = key.algorithm();
        let wrapping = match algorithm {
            TeeKeyAlgorithm::Rsa { .. } => "rsa-oaep-sha256",
            TeeKeyAlgorithm::P384 => "hpke",
        };
        Self {
            algorithm: algorithm.to_string(),
            encoding,
            wrapping,
        }
    }
}

/// What marks a transfer decision as offline: the device's request, its model and the operator
/// who carried the request to the broker. It holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OfflineContext {
    /// The device's `request_id`.
    pub request_id: String,
    /// The model the device will serve.
    pub model: String,
    /// The admin user whose token made the request.
    pub operator: String,
}

/// A device's provisioning request (`adyton-provision-request/1`), decoded from its HTTP form.
#[derive(Clone, Debug)]
pub struct OfflineTransferRequest {
    /// The device's request id.
    pub request_id: String,
    /// The model the device will serve.
    pub model: String,
    /// The TEE the device names: `SGX`, `SNP` or `SIM` (`TDX` is refused: it cannot seal).
    pub tee: String,
    /// The decoded public key: DER SubjectPublicKeyInfo of the device's RSA key.
    pub public_key: Vec<u8>,
    /// The decoded evidence: Adyton evidence JSON, whose report data must be SHA-512(public_key).
    pub evidence: Vec<u8>,
}

/// The key broker's core: policies, keys, and transfers.
#[derive(Debug)]
pub struct Broker {
    store: Arc<dyn Store>,
    master: MasterKey,
    collateral: Arc<CollateralProvider>,
    nonces: NonceIssuer,
    gpus: Arc<GpuVerifier>,
}

impl Broker {
    /// A broker over `store`, sealing keys under `master`, verifying DCAP and SNP evidence with
    /// one bundle of `collateral`.
    pub fn new(store: Arc<dyn Store>, master: MasterKey, collateral: Collateral) -> Result<Self> {
        let provider = CollateralProvider::from_collateral(collateral, "the collateral file");
        Self::with_provider(store, master, Arc::new(provider))
    }

    /// A broker that gets the collateral of each piece of evidence from `provider` (a bundle, a
    /// PCCS, AMD's KDS).
    pub fn with_provider(
        store: Arc<dyn Store>,
        master: MasterKey,
        provider: Arc<CollateralProvider>,
    ) -> Result<Self> {
        Ok(Self {
            store,
            master,
            collateral: provider,
            nonces: NonceIssuer::new()?,
            gpus: Arc::new(GpuVerifier::new()?),
        })
    }

    /// Verifies GPU evidence with `verifier` (NVIDIA's roots and a RIM directory, say) instead
    /// of the default: NVIDIA's roots and only the RIMs carried with the evidence.
    pub fn with_gpu_verifier(mut self, verifier: GpuVerifier) -> Self {
        self.gpus = Arc::new(verifier);
        self
    }

    /// The collateral provider, for its counters.
    pub fn collateral(&self) -> &CollateralProvider {
        &self.collateral
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Creates a transfer policy from its TEE kind and its table (the fields of `docs/policy.md`).
    pub fn create_policy(
        &self,
        attestation_type: TeeKind,
        table: serde_json::Value,
        now: u64,
    ) -> Result<PolicyRecord> {
        let record = PolicyRecord {
            id: uuid::Uuid::new_v4().to_string(),
            attestation_type,
            table,
            created_at: now,
        };
        // Parse it now: a policy that cannot be evaluated is refused at creation, not at transfer.
        record.policy().map_err(|e| KbsError::BadRequest {
            reason: e.to_string(),
        })?;
        self.store.insert_policy(&record)?;
        Ok(record)
    }

    /// Creates a key under `policy_id`: generated, or imported from 32 raw bytes.
    pub fn create_key(
        &self,
        policy_id: &str,
        key_data: Option<&[u8]>,
        now: u64,
    ) -> Result<KeyRecord> {
        let key = match key_data {
            Some(bytes) => Aes256Key::from_slice(bytes).map_err(|e| KbsError::BadRequest {
                reason: format!("key_data: {e}"),
            })?,
            None => Aes256Key::generate()?,
        };
        let id = uuid::Uuid::new_v4().to_string();
        let record = KeyRecord {
            sealed_key: self.master.seal(&id, &key)?,
            id,
            transfer_policy_id: policy_id.into(),
            algorithm: "AES".into(),
            key_length: 256,
            created_at: now,
        };
        self.store.insert_key(&record)?;
        Ok(record)
    }

    /// A fresh nonce for the next transfer request.
    pub fn nonce(&self, now: u64) -> Result<Vec<u8>> {
        self.nonces.issue(now)
    }

    /// Decides a transfer, and returns the wrapped key with the verified claims, or the refusal.
    /// The decision is returned either way, for the audit log.
    pub fn transfer(
        &self,
        key_id: &str,
        request: &TransferRequest,
        now: u64,
    ) -> (Result<(WrappedKey, Claims)>, TransferDecision) {
        let mut decision = TransferDecision {
            time: now,
            key_id: key_id.chars().take(128).collect(),
            tee: request.attestation_type.chars().take(16).collect(),
            measurement: None,
            allowed: false,
            reason: None,
            offline: None,
            collateral: None,
            collateral_unreachable: false,
            transfer_key: None,
            gpus: Vec::new(),
        };
        let outcome = self.decide(key_id, request, now, &mut decision);
        match &outcome {
            Ok(_) => decision.allowed = true,
            Err(e) => {
                decision.reason = Some(e.to_string());
                decision.collateral_unreachable = e.is_collateral_unreachable();
            }
        }
        (outcome, decision)
    }

    /// Decides an offline transfer: the online decision without a nonce, so the evidence must
    /// verify, its report data must equal SHA-512(`public_key`) and the key's policy must allow
    /// it; before that, the TEE must be able to seal what it receives (not TDX) and the public key
    /// must be DER SubjectPublicKeyInfo. The decision names the request, the model and `operator`,
    /// and is returned either way, for the audit log.
    pub fn offline_transfer(
        &self,
        key_id: &str,
        request: &OfflineTransferRequest,
        operator: &str,
        now: u64,
    ) -> (Result<(WrappedKey, Claims)>, TransferDecision) {
        let context = OfflineContext {
            request_id: request.request_id.chars().take(128).collect(),
            model: request.model.chars().take(128).collect(),
            operator: operator.chars().take(128).collect(),
        };
        if let Err(refusal) = check_offline(request) {
            let decision = TransferDecision {
                time: now,
                key_id: key_id.chars().take(128).collect(),
                tee: request.tee.chars().take(16).collect(),
                measurement: None,
                allowed: false,
                reason: Some(refusal.to_string()),
                offline: Some(context),
                collateral: None,
                collateral_unreachable: false,
                transfer_key: None,
                gpus: Vec::new(),
            };
            return (Err(refusal), decision);
        }
        let transfer = TransferRequest {
            attestation_type: request.tee.clone(),
            quote: request.evidence.clone(),
            user_data: request.public_key.clone(),
            nonce: None,
            collateral: None,
        };
        let (outcome, mut decision) = self.transfer(key_id, &transfer, now);
        decision.offline = Some(context);
        (outcome, decision)
    }

    fn decide(
        &self,
        key_id: &str,
        request: &TransferRequest,
        now: u64,
        decision: &mut TransferDecision,
    ) -> Result<(WrappedKey, Claims)> {
        let key = self
            .store
            .key(key_id)?
            .ok_or_else(|| KbsError::UnknownKey {
                id: key_id.chars().take(128).collect(),
            })?;
        let policy_record =
            self.store
                .policy(&key.transfer_policy_id)?
                .ok_or_else(|| KbsError::UnknownPolicy {
                    id: key.transfer_policy_id.clone(),
                })?;
        let tee: TeeKind =
            request
                .attestation_type
                .parse()
                .map_err(|e: adyton_attest::AttestError| KbsError::BadRequest {
                    reason: format!("Attestation-Type: {e}"),
                })?;
        if tee != policy_record.attestation_type {
            return Err(KbsError::AttestationTypeMismatch {
                expected: policy_record.attestation_type.to_string(),
                found: tee.to_string(),
            });
        }
        let order = if tee == TeeKind::Sgx {
            ModulusOrder::LittleEndian
        } else {
            ModulusOrder::BigEndian
        };
        let public_key = TeePublicKey::from_user_data(&request.user_data, order).map_err(|e| {
            KbsError::BadRequest {
                reason: format!("user_data: {e}"),
            }
        })?;
        decision.transfer_key = Some(TransferKeyType::of(&public_key, &request.user_data, order));

        let evidence = decode_evidence(tee, &request.quote)?;
        let carried = request
            .collateral
            .as_deref()
            .map(Collateral::from_json)
            .transpose()
            .map_err(|e| KbsError::BadRequest {
                reason: format!("collateral: {e}"),
            })?;
        let (verified, used) = self
            .collateral
            .verify_traced_with(&evidence, carried.as_ref(), now);
        // SIM evidence needs no collateral, and its decision line stays as it was.
        decision.collateral =
            used.filter(|u| u.key.is_some() || u.origin != CollateralOrigin::None);
        let claims = verified?;
        decision.measurement = Some(claims.primary_measurement());

        if request.nonce.is_none() && policy_record.require_nonce() {
            return Err(KbsError::BadNonce {
                reason: "the key's transfer policy requires a nonce: ask for one with a request \
                         without `quote`, and bind it into the evidence's report data"
                    .into(),
            });
        }
        if let Some(nonce) = &request.nonce {
            self.nonces.redeem(nonce, now)?;
        }
        let expected = expected_report_data(&request.user_data, request.nonce.as_deref());
        claims
            .expect_report_data(&expected)
            .map_err(|_| KbsError::ReportDataMismatch)?;
        let policy = policy_record.policy()?;
        policy.evaluate(&claims, now)?;
        // Then every attached GPU, each bound to the verified report data (adyton_attest's
        // `composite`): the key goes out only when the CPU evidence and all GPUs pass.
        let (gpus, outcomes) = verify_gpus(&claims, &evidence.gpus, &self.gpus, &policy, now);
        decision.gpus = outcomes;
        gpus?;

        let model_key = self.master.unseal(&key.id, &key.sealed_key)?;
        let wrapped = wrap::wrap_for_tee(&public_key, &model_key)?;
        Ok((wrapped, claims))
    }
}

/// What an offline transfer needs beyond the online decision: a TEE that can seal (SGX, SNP and
/// SIM can; TDX has no sealing key in hardware, so a key released to it could not survive a
/// restart without the network), and a public key in DER, as the provisioning file specifies.
fn check_offline(request: &OfflineTransferRequest) -> Result<()> {
    let tee: TeeKind = request
        .tee
        .parse()
        .map_err(|e: adyton_attest::AttestError| KbsError::BadRequest {
            reason: format!("tee: {e}"),
        })?;
    if matches!(tee, TeeKind::Tdx | TeeKind::AzureSnp | TeeKind::AzureTdx) {
        return Err(KbsError::NoSealingKey {
            tee: tee.to_string(),
        });
    }
    let public_key =
        TeePublicKey::from_spki_der(&request.public_key).map_err(|e| KbsError::BadRequest {
            reason: format!("public_key: {e}"),
        })?;
    // The provisioning file (`adyton-provision-request/1`) carries an RSA key: a device seals its
    // private key as PKCS#8, which Adyton does for RSA key pairs only.
    if !matches!(public_key.algorithm(), TeeKeyAlgorithm::Rsa { .. }) {
        return Err(KbsError::BadRequest {
            reason: format!(
                "public_key: an offline transfer takes an RSA key, not {}",
                public_key.algorithm()
            ),
        });
    }
    Ok(())
}

/// Reads a transfer's `quote` for `tee`: Adyton evidence JSON (as `adyton attest report` writes it)
/// or the raw quote or report.
pub fn decode_evidence(tee: TeeKind, quote: &[u8]) -> Result<Evidence> {
    // Azure's raw evidence is itself JSON (the vTPM container): it is not Evidence JSON.
    let azure_container = matches!(tee, TeeKind::AzureSnp | TeeKind::AzureTdx)
        && adyton_attest::verifier::azure::AzureEvidence::from_json(quote).is_ok();
    if quote.first() == Some(&b'{') && !azure_container {
        let evidence = Evidence::from_json(quote)?;
        if evidence.tee != tee {
            return Err(KbsError::AttestationTypeMismatch {
                expected: tee.to_string(),
                found: evidence.tee.to_string(),
            });
        }
        return Ok(evidence);
    }
    Ok(Evidence {
        tee,
        quote: quote.to_vec(),
        certificates: None,
        gpus: Vec::new(),
    })
}

#[cfg(test)]
mod azure_evidence_tests {
    use std::collections::BTreeMap;

    use adyton_attest::verifier::azure::{AzureEvidence, TpmQuote, FORMAT};

    use super::*;

    #[test]
    fn a_raw_azure_container_is_not_taken_for_evidence_json() {
        let container = AzureEvidence {
            format: FORMAT.into(),
            hcl_report: vec![1, 2, 3],
            report_data: [4; 64],
            tpm_quote: TpmQuote {
                message: vec![5],
                signature: vec![6],
                pcrs: BTreeMap::from([(0, [7; 32])]),
            },
            td_quote: None,
        }
        .to_json();
        let raw = decode_evidence(TeeKind::AzureSnp, &container).unwrap();
        assert_eq!((raw.tee, &raw.quote), (TeeKind::AzureSnp, &container));
        // The same container wrapped in Evidence JSON reads the same.
        let wrapped = raw.to_json();
        assert_eq!(
            decode_evidence(TeeKind::AzureSnp, wrapped.as_bytes()).unwrap(),
            raw
        );
        // Other JSON under an Azure type is Evidence JSON, and refused as such.
        assert!(decode_evidence(TeeKind::AzureSnp, br#"{"format":"x"}"#).is_err());
        // A container under a non-Azure type is not raw evidence.
        assert!(decode_evidence(TeeKind::Snp, &container).is_err());
    }
}
