//! The client side of attested TLS (`docs/attested-tls.md`): a rustls certificate verifier that
//! accepts a server only if its certificate carries evidence that verifies, satisfies the
//! client's policy and binds the key the TLS 1.3 handshake proves. Hostnames and web PKI play no
//! part.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use adyton_attest::{Collateral, Policy};
//! # use adyton_client::attested_tls::{client_config, AttestedServerVerifier};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::from_toml("[sim]\n")?;
//! let verifier = Arc::new(AttestedServerVerifier::new(policy, Collateral::none()));
//! let config = client_config(verifier.clone());
//! // ... connect with `config`; after the handshake:
//! if let Some(server) = verifier.verified() {
//!     println!("{} measurement {}", server.claims.tee, server.claims.primary_measurement());
//! }
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use adyton_attest::attested_tls::{
    evidence_from_certificate, report_data_for_key, report_data_for_nonce, spki_from_certificate,
    AttestedTlsError,
};
use adyton_attest::composite::verify_gpus;
use adyton_attest::gpu::{GpuClaims, GpuVerifier};
use adyton_attest::provider::{CollateralOrigin, CollateralProvider};
use adyton_attest::{AttestError, Claims, Collateral, Evidence, Policy, TeeKind};
use aws_lc_rs::digest::{digest, SHA256};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature_with_raw_key, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};

/// Why an attested server was refused. Inside a TLS error it is
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`; [`AttestationFailure::find`]
/// recovers it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationFailure {
    /// The server sent a chain; an attested server sends exactly one self-signed certificate.
    #[error("the server sent {count} certificates; an attested server sends exactly one")]
    CertificateChain {
        /// How many certificates the server sent.
        count: usize,
    },

    /// The certificate or its evidence extension could not be read.
    #[error("{0}")]
    Certificate(#[source] AttestedTlsError),

    /// The evidence is not genuine (signature, certificate chain, collateral, TCB).
    #[error("the evidence does not verify: {0}")]
    Evidence(#[source] AttestError),

    /// The evidence does not verify with the collateral the server served
    /// (`GET /adyton/v1/collateral`), used because this client had none of its own. The
    /// collateral is judged as any other: its signatures must chain to Intel's or AMD's root.
    #[error("the evidence does not verify with the collateral served by {source_url}: {error}")]
    ServedCollateral {
        /// Where the collateral came from.
        source_url: String,
        /// Why it did not verify.
        #[source]
        error: AttestError,
    },

    /// The evidence is genuine but binds another key (or another nonce).
    #[error("the evidence does not bind this server's TLS key: {0}")]
    KeyBinding(#[source] AttestError),

    /// The policy refused the verified claims.
    #[error("{0}")]
    Policy(#[source] AttestError),

    /// The policy has an `[nvidia_gpu]` table and the server's GPU evidence failed it: a GPU
    /// report that does not verify (chain, signature, its nonce derived from the CPU evidence,
    /// RIMs, measurements), or GPUs the table refuses (missing, too few, too old).
    #[error("the server's GPUs are refused: {0}")]
    Gpus(#[source] AttestError),

    /// The server tried TLS 1.2, which this verifier does not speak.
    #[error("the server negotiated TLS 1.2; attested TLS requires TLS 1.3")]
    Tls12,

    /// A later connection met a certificate other than the one verified first (the server may
    /// have restarted with a new key, or another host answers): verify it again.
    #[error(
        "the server presented certificate SHA-256 {presented}, not the verified {verified}; \
         connect again to verify it"
    )]
    CertificateChanged {
        /// SHA-256 (hex) of the certificate verified at connect.
        verified: String,
        /// SHA-256 (hex) of the certificate presented now.
        presented: String,
    },
}

impl AttestationFailure {
    /// The attestation failure inside a rustls error, if that is why the handshake failed.
    pub fn from_tls_error(error: &rustls::Error) -> Option<&AttestationFailure> {
        match error {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<AttestationFailure>()
            }
            _ => None,
        }
    }

    /// The attestation failure inside an I/O error from a TLS stream, or inside any error whose
    /// source chain holds a rustls error.
    pub fn find<'a>(
        error: &'a (dyn std::error::Error + 'static),
    ) -> Option<&'a AttestationFailure> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(failure) = error.downcast_ref::<AttestationFailure>() {
                return Some(failure);
            }
            if let Some(tls) = error.downcast_ref::<rustls::Error>() {
                return Self::from_tls_error(tls);
            }
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                if let Some(inner) = io.get_ref() {
                    current = Some(inner);
                    continue;
                }
            }
            current = error.source();
        }
        None
    }
}

impl From<AttestationFailure> for rustls::Error {
    fn from(failure: AttestationFailure) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(failure))))
    }
}

/// What a successful handshake proved about the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedServer {
    /// The verified claims: TEE, measurements, TCB. `claims.insecure` is true for SIM.
    pub claims: Claims,
    /// The claims of the GPUs attached to the evidence, verified under the policy's
    /// `[nvidia_gpu]` table; empty when the policy has none (GPU evidence is then ignored).
    pub gpus: Vec<GpuClaims>,
    /// The server's certificate (DER).
    pub certificate_der: Vec<u8>,
    /// SHA-256 of the certificate, for clients that pin it afterwards.
    pub certificate_sha256: [u8; 32],
    /// The certificate's SubjectPublicKeyInfo (DER), which fresh evidence must also bind.
    pub spki_der: Vec<u8>,
}

/// Collateral the server served for its own evidence (`GET /adyton/v1/collateral`), with the
/// URL it came from. It adds no trust: a verifier uses it only when it has no collateral of its
/// own for the evidence, and checks its signatures up to Intel's or AMD's root like any other.
#[derive(Clone, Debug)]
pub struct ServedCollateral {
    /// The collateral.
    pub collateral: Collateral,
    /// The URL it was fetched from, for errors.
    pub source_url: String,
}

#[derive(Debug, Default)]
struct Slots {
    /// Certificate checked, TLS 1.3 signature not yet.
    pending: Option<VerifiedServer>,
    /// Both checked.
    verified: Option<VerifiedServer>,
    /// The TEE of evidence refused for want of collateral, when the policy names that TEE.
    wants_collateral: Option<TeeKind>,
}

/// A rustls `ServerCertVerifier` for attested servers.
///
/// Meant for one connection: the claims of the last handshake whose certificate and signature
/// both verified are kept and read with [`AttestedServerVerifier::verified`]; a new handshake
/// clears them first. Handshakes that share one verifier concurrently overwrite each other's
/// claims.
#[derive(Debug)]
pub struct AttestedServerVerifier {
    policy: Policy,
    collateral: Arc<CollateralProvider>,
    served: Option<ServedCollateral>,
    gpus: Option<Arc<GpuVerifier>>,
    fixed_time: Option<u64>,
    provider: Arc<CryptoProvider>,
    slots: Mutex<Slots>,
}

impl AttestedServerVerifier {
    /// A verifier judging evidence by `policy`, with `collateral` for the vendors' checks, at the
    /// time rustls gives each handshake.
    pub fn new(policy: Policy, collateral: Collateral) -> Self {
        let provider = CollateralProvider::from_collateral(collateral, "the client's collateral");
        Self::with_provider(policy, Arc::new(provider))
    }

    /// A verifier judging evidence by `policy`, with the collateral `provider` finds for each
    /// piece of evidence (a bundle, a PCCS, AMD's KDS).
    pub fn with_provider(policy: Policy, provider: Arc<CollateralProvider>) -> Self {
        Self {
            policy,
            collateral: provider,
            served: None,
            gpus: None,
            fixed_time: None,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            slots: Mutex::new(Slots::default()),
        }
    }

    /// Uses `served`, the collateral the server served for its own evidence, when the provider
    /// has none of its own for it.
    pub fn with_served_collateral(mut self, served: ServedCollateral) -> Self {
        self.served = Some(served);
        self
    }

    /// Verifies GPU evidence (under a policy with `[nvidia_gpu]`) with `verifier`: its RIMs
    /// (a RIM directory) and revocation check. By default GPUs are verified against NVIDIA's
    /// pinned roots with only the RIMs the evidence carries.
    pub fn with_gpu_verifier(mut self, verifier: Arc<GpuVerifier>) -> Self {
        self.gpus = Some(verifier);
        self
    }

    /// The TEE of the last handshake's evidence when it was refused for want of collateral and
    /// the policy names that TEE: collateral served by the server could let it verify.
    pub fn wants_collateral(&self) -> Option<TeeKind> {
        self.slots().wants_collateral
    }

    /// Verifies as of `unix_seconds` instead of the handshake's time (recorded evidence, tests).
    pub fn at_time(mut self, unix_seconds: u64) -> Self {
        self.fixed_time = Some(unix_seconds);
        self
    }

    /// What the last successful handshake proved, if any.
    pub fn verified(&self) -> Option<VerifiedServer> {
        self.slots().verified.clone()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        // The slots hold plain data, valid whatever a panicking holder was doing.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_certificate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: u64,
    ) -> Result<VerifiedServer, AttestationFailure> {
        if !intermediates.is_empty() {
            return Err(AttestationFailure::CertificateChain {
                count: intermediates.len() + 1,
            });
        }
        let (evidence, spki_der) =
            evidence_from_certificate(end_entity).map_err(AttestationFailure::Certificate)?;
        let verified = verify_bound(
            &evidence,
            &report_data_for_key(&spki_der),
            &self.policy,
            &self.collateral,
            self.served.as_ref(),
            self.gpus.as_deref(),
            now,
        );
        if let Err(AttestationFailure::Evidence(
            AttestError::CollateralMissing { .. } | AttestError::CollateralUnavailable { .. },
        )) = &verified
        {
            if policy_names(&self.policy, evidence.tee) {
                self.slots().wants_collateral = Some(evidence.tee);
            }
        }
        let (claims, gpus) = verified?;
        let mut certificate_sha256 = [0u8; 32];
        certificate_sha256.copy_from_slice(digest(&SHA256, end_entity).as_ref());
        Ok(VerifiedServer {
            claims,
            gpus,
            certificate_der: end_entity.to_vec(),
            certificate_sha256,
            spki_der,
        })
    }
}

impl ServerCertVerifier for AttestedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.slots() = Slots::default();
        let now = self.fixed_time.unwrap_or_else(|| now.as_secs());
        let server = self.check_certificate(end_entity, intermediates, now)?;
        self.slots().pending = Some(server);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(AttestationFailure::Tls12.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The signature is checked with the key the evidence binds, read from the same bytes.
        let spki = spki_from_certificate(cert).map_err(AttestationFailure::Certificate)?;
        let valid = verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(spki.as_slice()),
            dss,
            &self.provider.signature_verification_algorithms,
        )?;
        let mut slots = self.slots();
        match slots.pending.take() {
            Some(server) if server.certificate_der == cert.as_ref() => {
                slots.verified = Some(server);
                Ok(valid)
            }
            // rustls checks the signature with the certificate it has just verified; anything
            // else is refused rather than guessed at.
            _ => Err(rustls::Error::General(
                "TLS 1.3 signature over a certificate that was not verified".into(),
            )),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls `ServerCertVerifier` that accepts exactly one certificate, verified before by an
/// [`AttestedServerVerifier`], and checks that each handshake proves its key.
///
/// It lets one verified server be reached over many connections (a pool, keep-alive, retries)
/// without verifying its evidence again, while a new key is refused: no byte reaches a key that
/// was not verified.
#[derive(Debug)]
pub struct PinnedServerVerifier {
    pinned: VerifiedServer,
    provider: Arc<CryptoProvider>,
}

impl PinnedServerVerifier {
    /// A verifier accepting only `server`'s certificate.
    pub fn new(server: VerifiedServer) -> Self {
        Self {
            pinned: server,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        }
    }

    fn changed(&self, presented: &[u8]) -> AttestationFailure {
        AttestationFailure::CertificateChanged {
            verified: hex::encode(self.pinned.certificate_sha256),
            presented: hex::encode(digest(&SHA256, presented).as_ref()),
        }
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(AttestationFailure::CertificateChain {
                count: intermediates.len() + 1,
            }
            .into());
        }
        if end_entity.as_ref() != self.pinned.certificate_der.as_slice() {
            return Err(self.changed(end_entity).into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(AttestationFailure::Tls12.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if cert.as_ref() != self.pinned.certificate_der.as_slice() {
            return Err(self.changed(cert).into());
        }
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(self.pinned.spki_der.as_slice()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3-only client configuration on aws-lc-rs that trusts only the certificate `server`
/// verified (see [`PinnedServerVerifier`]).
pub fn pinned_client_config(server: VerifiedServer) -> Result<Arc<ClientConfig>, rustls::Error> {
    let config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier::new(server)))
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS 1.3-only client configuration on aws-lc-rs that trusts servers through `verifier`.
///
/// The server name given to rustls plays no part; `adyton.invalid` will do.
pub fn client_config(
    verifier: Arc<AttestedServerVerifier>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Checks the answer of `GET /adyton/v1/attestation?nonce=HEX`: the evidence verifies, binds the
/// server's key (`spki_der`, from [`VerifiedServer::spki_der`]) and this client's `nonce`, and
/// satisfies `policy`, as of `now` (unix seconds).
pub fn check_fresh_evidence(
    evidence: &Evidence,
    spki_der: &[u8],
    nonce: &[u8],
    policy: &Policy,
    collateral: &Collateral,
    now: u64,
) -> Result<Claims, AttestationFailure> {
    let provider =
        CollateralProvider::from_collateral(collateral.clone(), "the client's collateral");
    check_fresh_evidence_with(evidence, spki_der, nonce, policy, &provider, now)
}

/// [`check_fresh_evidence`], with the collateral `provider` finds for the evidence.
pub fn check_fresh_evidence_with(
    evidence: &Evidence,
    spki_der: &[u8],
    nonce: &[u8],
    policy: &Policy,
    provider: &CollateralProvider,
    now: u64,
) -> Result<Claims, AttestationFailure> {
    check_fresh_evidence_served(evidence, spki_der, nonce, policy, provider, None, now)
}

/// [`check_fresh_evidence_with`], with `served`, the collateral the server served, used when
/// `provider` has none of its own for the evidence.
pub fn check_fresh_evidence_served(
    evidence: &Evidence,
    spki_der: &[u8],
    nonce: &[u8],
    policy: &Policy,
    provider: &CollateralProvider,
    served: Option<&ServedCollateral>,
    now: u64,
) -> Result<Claims, AttestationFailure> {
    check_fresh_evidence_with_gpus(
        evidence, spki_der, nonce, policy, provider, served, None, now,
    )
    .map(|(claims, _)| claims)
}

/// [`check_fresh_evidence_served`], verifying the GPU evidence (under a policy with
/// `[nvidia_gpu]`) with `gpus` (NVIDIA's pinned roots and the carried RIMs when `None`); returns
/// the CPU's claims and the GPUs'.
#[allow(clippy::too_many_arguments)] // Each is one independent input of the check.
pub fn check_fresh_evidence_with_gpus(
    evidence: &Evidence,
    spki_der: &[u8],
    nonce: &[u8],
    policy: &Policy,
    provider: &CollateralProvider,
    served: Option<&ServedCollateral>,
    gpus: Option<&GpuVerifier>,
    now: u64,
) -> Result<(Claims, Vec<GpuClaims>), AttestationFailure> {
    let expected =
        report_data_for_nonce(spki_der, nonce).map_err(AttestationFailure::Certificate)?;
    verify_bound(evidence, &expected, policy, provider, served, gpus, now)
}

/// Whether `policy` has a table for `tee`: only then is collateral worth fetching for it.
fn policy_names(policy: &Policy, tee: TeeKind) -> bool {
    match tee {
        TeeKind::Sgx => policy.sgx.is_some(),
        TeeKind::Tdx => policy.tdx.is_some(),
        TeeKind::Snp => policy.snp.is_some(),
        TeeKind::Sim => false,
        TeeKind::AzureSnp => policy.azure_snp.is_some(),
        TeeKind::AzureTdx => policy.azure_tdx.is_some(),
        // Nitro evidence needs no collateral: its document carries its chain.
        TeeKind::Nitro => false,
    }
}

/// Verifies evidence, then its report data, then the policy, then (under a policy with
/// `[nvidia_gpu]`) every GPU with its nonce derived from the verified report data and the
/// policy's GPU table, in that order.
fn verify_bound(
    evidence: &Evidence,
    expected_report_data: &[u8; adyton_attest::REPORT_DATA_LEN],
    policy: &Policy,
    provider: &CollateralProvider,
    served: Option<&ServedCollateral>,
    gpus: Option<&GpuVerifier>,
    now: u64,
) -> Result<(Claims, Vec<GpuClaims>), AttestationFailure> {
    let (outcome, used) = provider.verify_traced_with(evidence, served.map(|s| &s.collateral), now);
    let claims = match (outcome, served) {
        (Ok(claims), _) => claims,
        (Err(error), Some(served))
            if used.is_some_and(|u| u.origin == CollateralOrigin::Carried) =>
        {
            return Err(AttestationFailure::ServedCollateral {
                source_url: served.source_url.clone(),
                error,
            })
        }
        (Err(error), _) => return Err(AttestationFailure::Evidence(error)),
    };
    claims
        .expect_report_data(expected_report_data)
        .map_err(AttestationFailure::KeyBinding)?;
    policy
        .evaluate(&claims, now)
        .map_err(AttestationFailure::Policy)?;
    if policy.nvidia_gpu.is_none() {
        return Ok((claims, Vec::new()));
    }
    let pinned;
    let verifier = match gpus {
        Some(verifier) => verifier,
        None => {
            pinned = GpuVerifier::new().map_err(AttestationFailure::Gpus)?;
            &pinned
        }
    };
    let (gpu_claims, _) = verify_gpus(&claims, &evidence.gpus, verifier, policy, now);
    let gpu_claims = gpu_claims.map_err(AttestationFailure::Gpus)?;
    Ok((claims, gpu_claims))
}
