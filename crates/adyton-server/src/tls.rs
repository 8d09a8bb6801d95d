//! The server's attested TLS identity (`docs/attested-tls.md`).
//!
//! At start the server generates an ECDSA P-256 key in TEE memory, gets evidence whose report data
//! binds the key's SubjectPublicKeyInfo, and serves TLS 1.3 with a self-signed certificate that
//! carries the evidence. Clients check the evidence, not hostnames or a web PKI. Fresh evidence
//! for a client's nonce binds the same key (`GET /adyton/v1/attestation?nonce=HEX`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adyton_attest::attested_tls::{
    self, evidence_extension_value, report_data_for_key, report_data_for_nonce, AttestedTlsError,
};
use adyton_attest::attester::Attester;
use adyton_attest::{AttestError, Evidence, TeeKind};
use aws_lc_rs::digest::{digest, SHA256};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use zeroize::Zeroizing;

/// The certificate's subject common name.
pub const SUBJECT_COMMON_NAME: &str = "adyton server";

/// The certificate's one DNS name. Clients that verify attestation ignore it; `.invalid` can never
/// resolve, so the name cannot be mistaken for a real host.
pub const SUBJECT_ALT_NAME: &str = "adyton.invalid";

/// Every subject alternative name: [`SUBJECT_ALT_NAME`], and the loopback names, so that clients
/// that pin the certificate and still check hostnames (curl, tritonclient) connect on loopback.
/// Adyton's own verifier ignores names.
pub const SUBJECT_ALT_NAMES: &[&str] = &[SUBJECT_ALT_NAME, "localhost", "127.0.0.1", "::1"];

/// How long before its creation the certificate is valid, for clients whose clock is behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// How long the certificate is valid. The key lives only as long as the process, and attested
/// clients ignore the dates; the bound is for pinning clients that check them.
const LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// The one ALPN protocol offered.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why the identity could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsIdentityError {
    /// The TEE refused or failed to produce evidence.
    #[error("cannot get attestation evidence for the TLS key: {0}")]
    Attestation(#[source] AttestError),

    /// The evidence or nonce could not be encoded.
    #[error("attested TLS: {0}")]
    Binding(#[source] AttestedTlsError),

    /// Key generation or certificate building failed.
    #[error("cannot build the TLS certificate: {0}")]
    Certificate(#[source] rcgen::Error),

    /// rustls refused the key or the configuration.
    #[error("cannot configure TLS: {0}")]
    Tls(#[source] rustls::Error),

    /// The system clock is outside the dates a certificate can hold.
    #[error("the system clock is out of range for a certificate's validity")]
    Clock,

    /// The certificate built does not carry the binding it was built with.
    #[error("the certificate does not bind its own key; refusing to serve it")]
    SelfCheck,
}

/// The server's TLS key, its attested certificate and the rustls configuration that serves them.
///
/// The private key exists only inside the rustls configuration (aws-lc memory, cleared when freed);
/// the PKCS#8 copy made while building is zeroized before [`AttestedIdentity::generate`] returns.
pub struct AttestedIdentity {
    certificate: CertificateDer<'static>,
    certificate_pem: String,
    spki_der: Vec<u8>,
    evidence: Evidence,
    server_config: Arc<ServerConfig>,
}

impl std::fmt::Debug for AttestedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestedIdentity")
            .field("tee", &self.evidence.tee)
            .field(
                "certificate_sha256",
                &hex::encode(self.certificate_sha256()),
            )
            .finish_non_exhaustive()
    }
}

impl AttestedIdentity {
    /// Generates a P-256 key in memory, gets evidence over it from `attester`, and builds the
    /// self-signed certificate and the TLS 1.3 server configuration.
    pub fn generate(attester: &dyn Attester) -> Result<Self, TlsIdentityError> {
        let key_pair = Zeroizing::new(
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .map_err(TlsIdentityError::Certificate)?,
        );
        let spki_der = key_pair.subject_public_key_info();
        let evidence = attester
            .evidence(&report_data_for_key(&spki_der))
            .map_err(TlsIdentityError::Attestation)?;
        let certificate = self_signed_certificate(&key_pair, &evidence)?;

        // The certificate is parsed back as a client would, so that a server never serves one
        // whose extension or key differs from what was bound.
        let (embedded, certified_spki) = attested_tls::evidence_from_certificate(certificate.der())
            .map_err(TlsIdentityError::Binding)?;
        if embedded != evidence || certified_spki != spki_der {
            return Err(TlsIdentityError::SelfCheck);
        }

        let pkcs8 = Zeroizing::new(key_pair.serialize_der());
        let server_config = server_config(
            certificate.der().clone(),
            &PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_slice())),
        )?;
        Ok(Self {
            certificate: certificate.der().clone(),
            certificate_pem: certificate.pem(),
            spki_der,
            evidence,
            server_config,
        })
    }

    /// The rustls configuration: TLS 1.3 only, aws-lc-rs, no client authentication, ALPN
    /// `http/1.1`.
    pub fn rustls_server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server_config)
    }

    /// The certificate (DER).
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// The certificate (PEM), for clients that pin it.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// SHA-256 of the certificate's DER, the value pinning clients compare.
    pub fn certificate_sha256(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, &self.certificate).as_ref());
        out
    }

    /// The key's SubjectPublicKeyInfo (DER).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The evidence in the certificate.
    pub fn evidence(&self) -> &Evidence {
        &self.evidence
    }

    /// The TEE the evidence comes from. SIM is INSECURE: the caller should warn at every start.
    pub fn tee(&self) -> TeeKind {
        self.evidence.tee
    }

    /// Fresh evidence over this key and a client's nonce (16 to 64 bytes).
    pub fn fresh_evidence(
        &self,
        attester: &dyn Attester,
        nonce: &[u8],
    ) -> Result<Evidence, TlsIdentityError> {
        let report_data =
            report_data_for_nonce(&self.spki_der, nonce).map_err(TlsIdentityError::Binding)?;
        attester
            .evidence(&report_data)
            .map_err(TlsIdentityError::Attestation)
    }
}

fn self_signed_certificate(
    key_pair: &KeyPair,
    evidence: &Evidence,
) -> Result<rcgen::Certificate, TlsIdentityError> {
    let mut params = CertificateParams::new(
        SUBJECT_ALT_NAMES
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<Vec<_>>(),
    )
    .map_err(TlsIdentityError::Certificate)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, SUBJECT_COMMON_NAME);
    params.distinguished_name = name;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    params.not_before = unix_time(now.saturating_sub(BACKDATE))?;
    params.not_after = unix_time(now.saturating_add(LIFETIME))?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let value = evidence_extension_value(evidence).map_err(TlsIdentityError::Binding)?;
    // Non-critical: a client that does not know the extension may still connect and pin.
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            attested_tls::EVIDENCE_EXTENSION_OID_ARCS,
            value,
        ));
    params
        .self_signed(key_pair)
        .map_err(TlsIdentityError::Certificate)
}

fn unix_time(since_epoch: Duration) -> Result<time::OffsetDateTime, TlsIdentityError> {
    i64::try_from(since_epoch.as_secs())
        .ok()
        .and_then(|seconds| time::OffsetDateTime::from_unix_timestamp(seconds).ok())
        .ok_or(TlsIdentityError::Clock)
}

fn server_config(
    certificate: CertificateDer<'static>,
    key: &PrivateKeyDer<'_>,
) -> Result<Arc<ServerConfig>, TlsIdentityError> {
    // The key is loaded from a borrowed PKCS#8 buffer that the caller zeroizes: rustls's own
    // loaders take owned key bytes and free them without clearing.
    let signing_key =
        rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(key).map_err(TlsIdentityError::Tls)?;
    let certified = CertifiedKey::new(vec![certificate], signing_key);
    certified.keys_match().map_err(TlsIdentityError::Tls)?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(TlsIdentityError::Tls)?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(OneCertificate(Arc::new(certified))));
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Serves the one attested certificate to every client, whatever name it asks for.
#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}
