//! A memo of ECDSA verifications of Intel's collateral, plugged into `dcap-qvl` as its crypto
//! provider.
//!
//! `dcap-qvl` verifies the whole collateral on every quote: the root CA's CRL, the PCK CRL, the TCB
//! info and QE identity signatures and their certificate chains, and the PCK certificate. With the
//! same collateral, those are the same (key, message, signature) triples every time, and they cost
//! about two thirds of a verification. This provider remembers the outcome of such triples, so that
//! a quote then costs only its own signatures: the QE report (by the PCK leaf key) and the quote
//! (by the attestation key), which are never memoised.
//!
//! Soundness: a verification is a pure function of (public key, message, signature). The memo is
//! keyed by SHA-256 over all three, length-prefixed, so a hit is as good as a fresh verification
//! unless SHA-256 collides. Only keys of Intel's collateral issuers are memoised: the keys
//! certified in the collateral's issuer chains (root CA, PCK platform or processor CA, TCB signing
//! key), registered by [`register_collateral`] before each verification. The actual verification
//! is aws-lc-rs's ECDSA P-256 SHA-256 over DER signatures, the same algorithm `dcap-qvl`'s ring
//! provider uses.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::digest::{Context, SHA256};
use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use dcap_qvl::config::{Config, CryptoProvider};
use dcap_qvl::QuoteCollateralV3;
use rustls_pki_types::{
    alg_id, AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm,
};

/// Most memoised outcomes kept; the memo is cleared when full (collateral changes rarely).
const MAX_OUTCOMES: usize = 4096;
/// Most issuer keys kept.
const MAX_KEYS: usize = 256;
/// Most issuer chains remembered as already registered.
const MAX_CHAINS: usize = 64;

#[derive(Default)]
struct Memo {
    issuer_keys: HashSet<Vec<u8>>,
    registered_chains: HashSet<[u8; 32]>,
    outcomes: HashMap<[u8; 32], bool>,
}

static MEMO: Mutex<Option<Memo>> = Mutex::new(None);

fn with_memo<T>(f: impl FnOnce(&mut Memo) -> T) -> T {
    let mut guard = MEMO.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(Memo::default))
}

fn sha256_of(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Registers the public keys certified in the collateral's issuer chains as memoisable.
///
/// Unparseable chains register nothing: verification then runs in full and reports them.
pub(crate) fn register_collateral(collateral: &QuoteCollateralV3) {
    for chain in [
        &collateral.pck_crl_issuer_chain,
        &collateral.tcb_info_issuer_chain,
        &collateral.qe_identity_issuer_chain,
    ] {
        let id = sha256_of(&[chain.as_bytes()]);
        if with_memo(|memo| memo.registered_chains.contains(&id)) {
            continue;
        }
        let Ok(certificates) = x509_cert::Certificate::load_pem_chain(chain.as_bytes()) else {
            continue;
        };
        let keys: Vec<Vec<u8>> = certificates
            .iter()
            .filter_map(|cert| {
                let spki = &cert.tbs_certificate().subject_public_key_info();
                spki.subject_public_key.as_bytes().map(<[u8]>::to_vec)
            })
            .collect();
        with_memo(|memo| {
            if memo.issuer_keys.len() + keys.len() > MAX_KEYS {
                memo.issuer_keys.clear();
                memo.outcomes.clear();
            }
            if memo.registered_chains.len() >= MAX_CHAINS {
                memo.registered_chains.clear();
            }
            memo.issuer_keys.extend(keys);
            memo.registered_chains.insert(id);
        });
    }
}

/// ECDSA P-256 with SHA-256, memoised for collateral issuer keys.
#[derive(Debug)]
struct MemoisedEcdsaP256Sha256;

impl SignatureVerificationAlgorithm for MemoisedEcdsaP256Sha256 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let verify = || {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key)
                .verify(message, signature)
                .is_ok()
        };
        let memoisable = with_memo(|memo| memo.issuer_keys.contains(public_key));
        let valid = if memoisable {
            let id = sha256_of(&[public_key, message, signature]);
            match with_memo(|memo| memo.outcomes.get(&id).copied()) {
                Some(valid) => valid,
                None => {
                    let valid = verify();
                    with_memo(|memo| {
                        if memo.outcomes.len() >= MAX_OUTCOMES {
                            memo.outcomes.clear();
                        }
                        memo.outcomes.insert(id, valid);
                    });
                    valid
                }
            }
        } else {
            verify()
        };
        if valid {
            Ok(())
        } else {
            Err(InvalidSignature)
        }
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P256
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_SHA256
    }
}

static MEMOISED_ECDSA: MemoisedEcdsaP256Sha256 = MemoisedEcdsaP256Sha256;

/// The crypto provider: memoised ECDSA, and aws-lc-rs's hashes.
pub(crate) struct MemoisedCrypto;

impl CryptoProvider for MemoisedCrypto {
    fn sig_algo() -> &'static dyn SignatureVerificationAlgorithm {
        &MEMOISED_ECDSA
    }

    fn sha256(data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(aws_lc_rs::digest::digest(&SHA256, data).as_ref());
        out
    }

    fn sha384(data: &[u8]) -> [u8; 48] {
        let mut out = [0u8; 48];
        out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, data).as_ref());
        out
    }
}

/// `dcap-qvl`'s audited certificate parser and signature encoder, with the memoised provider.
pub(crate) struct MemoisedConfig;

impl Config for MemoisedConfig {
    type X509 = dcap_qvl::x509::X509CertBackend;
    type SigEncoder = dcap_qvl::signature::DerSigEncoder;
    type Crypto = MemoisedCrypto;
}
