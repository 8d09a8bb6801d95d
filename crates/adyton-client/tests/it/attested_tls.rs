//! Attested TLS end to end: the server's `AttestedIdentity` on a loopback socket, the client's
//! `AttestedServerVerifier`, SIM evidence. Every check the verifier makes has a handshake that
//! fails it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;

use adyton_attest::attested_tls::{
    evidence_extension_value, report_data_for_key, AttestedTlsError, EVIDENCE_EXTENSION_OID_ARCS,
};
use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::{AttestError, Collateral, Evidence, Policy, TeeClaims, TeeKind};
use adyton_client::attested_tls::{
    check_fresh_evidence, client_config, AttestationFailure, AttestedServerVerifier,
};
use adyton_server::tls::AttestedIdentity;
use rcgen::{CertificateParams, CustomExtension, KeyPair, PublicKeyData};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, ServerConfig, ServerConnection, StreamOwned};

const MEASUREMENT: [u8; 48] = [0x4D; 48];

fn attester() -> SimAttester {
    SimAttester::with_measurement([9; 32], MEASUREMENT).unwrap()
}

fn sim_policy() -> Policy {
    Policy::sim_only(&[MEASUREMENT])
}

/// Accepts one connection, answers `ping` with `pong`, and ends.
pub(crate) fn serve_once(config: Arc<ServerConfig>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), socket);
        let mut request = [0u8; 4];
        // A refused handshake ends here with the client's alert.
        if tls.read_exact(&mut request).is_ok() && &request == b"ping" {
            tls.write_all(b"pong").unwrap();
            tls.conn.send_close_notify();
            tls.flush().unwrap();
        }
    });
    (addr, server)
}

/// Connects with `verifier`, sends `ping` and returns the answer.
pub(crate) fn ping(
    addr: SocketAddr,
    verifier: &Arc<AttestedServerVerifier>,
) -> std::io::Result<String> {
    let config = client_config(Arc::clone(verifier)).unwrap();
    let name = ServerName::try_from("adyton.invalid").unwrap();
    let connection = ClientConnection::new(config, name).unwrap();
    let mut tls = StreamOwned::new(connection, TcpStream::connect(addr)?);
    tls.write_all(b"ping")?;
    tls.flush()?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Runs one handshake against `config` that must fail, and returns the client's error.
fn refused(config: Arc<ServerConfig>, policy: Policy) -> std::io::Error {
    let (addr, server) = serve_once(config);
    let verifier = Arc::new(AttestedServerVerifier::new(policy, Collateral::none()));
    let err = ping(addr, &verifier).expect_err("the handshake must fail");
    server.join().unwrap();
    assert!(verifier.verified().is_none());
    err
}

/// The attestation failure inside a handshake error.
pub(crate) fn failure_of(err: &std::io::Error) -> &AttestationFailure {
    AttestationFailure::find(err).unwrap_or_else(|| panic!("not an attestation failure: {err}"))
}

/// A TLS 1.3 server configuration for a certificate chain and key made by the test.
pub(crate) fn plain_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: &KeyPair,
) -> Arc<ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Arc::new(
        ServerConfig::builder_with_provider(
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    )
}

/// A self-signed certificate for `key`, carrying `evidence` when given.
pub(crate) fn certificate(key: &KeyPair, evidence: Option<&Evidence>) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(vec!["adyton.invalid".into()]).unwrap();
    if let Some(evidence) = evidence {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                EVIDENCE_EXTENSION_OID_ARCS,
                evidence_extension_value(evidence).unwrap(),
            ));
    }
    params.self_signed(key).unwrap().der().clone()
}

#[test]
fn attested_handshake_succeeds_and_claims_are_readable() {
    let attester = attester();
    let identity = AttestedIdentity::generate(&attester).unwrap();
    let (addr, server) = serve_once(identity.rustls_server_config());
    let verifier = Arc::new(AttestedServerVerifier::new(
        sim_policy(),
        Collateral::none(),
    ));
    assert!(verifier.verified().is_none());

    assert_eq!(ping(addr, &verifier).unwrap(), "pong");
    server.join().unwrap();

    let server = verifier.verified().expect("claims after the handshake");
    assert_eq!(server.claims.tee, TeeKind::Sim);
    assert!(server.claims.insecure);
    let TeeClaims::Sim(sim) = &server.claims.details else {
        panic!("not SIM claims")
    };
    assert_eq!(sim.measurement, MEASUREMENT);
    assert_eq!(sim.signer, attester.public_key());
    assert_eq!(
        server.claims.report_data,
        report_data_for_key(identity.spki_der())
    );
    assert_eq!(server.certificate_der, identity.certificate_der().as_ref());
    assert_eq!(server.certificate_sha256, identity.certificate_sha256());
    assert_eq!(server.spki_der, identity.spki_der());
    assert!(identity
        .certificate_pem()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    // The identity never prints its key.
    let debug = format!("{identity:?}");
    assert!(debug.contains("certificate_sha256"), "{debug}");
}

#[test]
fn a_policy_with_another_measurement_refuses_the_server() {
    let identity = AttestedIdentity::generate(&attester()).unwrap();
    let err = refused(
        identity.rustls_server_config(),
        Policy::sim_only(&[[0x4E; 48]]),
    );
    let failure = failure_of(&err);
    let message = err.to_string();
    assert!(
        matches!(failure, AttestationFailure::Policy(AttestError::PolicyDenied { field, .. }) if field == "sim.measurement"),
        "{message}"
    );
    assert!(message.contains(&"4d".repeat(48)), "{message}");
}

#[test]
fn a_policy_that_does_not_name_sim_refuses_the_server() {
    let identity = AttestedIdentity::generate(&attester()).unwrap();
    let err = refused(
        identity.rustls_server_config(),
        Policy::from_toml("[tdx]\n[snp]\n").unwrap(),
    );
    let failure = failure_of(&err);
    assert!(
        matches!(
            failure,
            AttestationFailure::Policy(AttestError::TeeNotInPolicy { tee: TeeKind::Sim })
        ),
        "{failure}"
    );
}

#[test]
fn a_certificate_without_evidence_is_refused() {
    let key = KeyPair::generate().unwrap();
    let config = plain_server_config(vec![certificate(&key, None)], &key);
    let err = refused(config, sim_policy());
    let failure = failure_of(&err);
    assert!(
        matches!(
            failure,
            AttestationFailure::Certificate(AttestedTlsError::NoEvidenceExtension)
        ),
        "{failure}"
    );
}

#[test]
fn evidence_made_for_another_key_is_refused() {
    // Identity A's genuine evidence, in a certificate for key B that the server really holds.
    let identity_a = AttestedIdentity::generate(&attester()).unwrap();
    let key_b = KeyPair::generate().unwrap();
    let config = plain_server_config(
        vec![certificate(&key_b, Some(identity_a.evidence()))],
        &key_b,
    );
    let err = refused(config, sim_policy());
    let failure = failure_of(&err);
    assert!(
        matches!(
            failure,
            AttestationFailure::KeyBinding(AttestError::ReportDataMismatch { .. })
        ),
        "{failure}"
    );
}

#[test]
fn tampered_evidence_is_refused() {
    let key = KeyPair::generate().unwrap();
    let mut evidence = attester()
        .evidence(&report_data_for_key(&key.subject_public_key_info()))
        .unwrap();
    // One bit of the measurement.
    evidence.quote[30] ^= 1;
    let config = plain_server_config(vec![certificate(&key, Some(&evidence))], &key);
    let err = refused(config, sim_policy());
    let failure = failure_of(&err);
    assert!(
        matches!(
            failure,
            AttestationFailure::Evidence(AttestError::BadSignature { .. })
        ),
        "{failure}"
    );
}

#[test]
fn a_chain_of_two_certificates_is_refused() {
    let identity = AttestedIdentity::generate(&attester()).unwrap();
    // The attested certificate with its key, followed by another certificate.
    let key = KeyPair::generate().unwrap();
    let evidence = attester()
        .evidence(&report_data_for_key(&key.subject_public_key_info()))
        .unwrap();
    let chain = vec![
        certificate(&key, Some(&evidence)),
        identity.certificate_der().clone(),
    ];
    let err = refused(plain_server_config(chain, &key), sim_policy());
    let failure = failure_of(&err);
    assert!(
        matches!(failure, AttestationFailure::CertificateChain { count: 2 }),
        "{failure}"
    );
}

#[test]
fn a_tls12_only_server_is_refused() {
    let key = KeyPair::generate().unwrap();
    let evidence = attester()
        .evidence(&report_data_for_key(&key.subject_public_key_info()))
        .unwrap();
    let config = Arc::new(
        ServerConfig::builder_with_provider(
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate(&key, Some(&evidence))],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap(),
    );
    let (addr, server) = serve_once(config);
    let verifier = Arc::new(AttestedServerVerifier::new(
        sim_policy(),
        Collateral::none(),
    ));
    let err = ping(addr, &verifier).unwrap_err();
    server.join().unwrap();
    assert!(verifier.verified().is_none());
    // The client offers TLS 1.3 only, so the versions never meet.
    let text = err.to_string();
    assert!(
        text.contains("ProtocolVersion") || text.contains("version"),
        "{text}"
    );
}

#[test]
fn fresh_evidence_binds_the_key_and_the_nonce() {
    let attester = attester();
    let identity = AttestedIdentity::generate(&attester).unwrap();
    let nonce = [0x5A; 32];
    let fresh = identity.fresh_evidence(&attester, &nonce).unwrap();
    let policy = sim_policy();
    let none = Collateral::none();

    let claims =
        check_fresh_evidence(&fresh, identity.spki_der(), &nonce, &policy, &none, 0).unwrap();
    assert_eq!(claims.tee, TeeKind::Sim);

    // Another nonce.
    let err = check_fresh_evidence(&fresh, identity.spki_der(), &[0x5B; 32], &policy, &none, 0)
        .unwrap_err();
    assert!(matches!(err, AttestationFailure::KeyBinding(_)), "{err}");

    // Evidence over another server's key, with the right nonce.
    let other = AttestedIdentity::generate(&attester).unwrap();
    let other_fresh = other.fresh_evidence(&attester, &nonce).unwrap();
    let err = check_fresh_evidence(&other_fresh, identity.spki_der(), &nonce, &policy, &none, 0)
        .unwrap_err();
    assert!(matches!(err, AttestationFailure::KeyBinding(_)), "{err}");

    // The certificate's evidence is not fresh evidence: the domain prefixes differ.
    let err = check_fresh_evidence(
        identity.evidence(),
        identity.spki_der(),
        &nonce,
        &policy,
        &none,
        0,
    )
    .unwrap_err();
    assert!(matches!(err, AttestationFailure::KeyBinding(_)), "{err}");

    // The policy still applies.
    let err = check_fresh_evidence(
        &fresh,
        identity.spki_der(),
        &nonce,
        &Policy::sim_only(&[[0; 48]]),
        &none,
        0,
    )
    .unwrap_err();
    assert!(matches!(err, AttestationFailure::Policy(_)), "{err}");

    // Nonces of the wrong length are refused on both sides.
    assert!(identity.fresh_evidence(&attester, &[1; 8]).is_err());
    let err =
        check_fresh_evidence(&fresh, identity.spki_der(), &[1; 8], &policy, &none, 0).unwrap_err();
    assert!(
        matches!(
            err,
            AttestationFailure::Certificate(AttestedTlsError::NonceLength { len: 8 })
        ),
        "{err}"
    );
}
