//! The registry and the key broker over HTTP, through `adyton-client`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use adyton_attest::provider::{CollateralOrigin, CollateralProvider};
use adyton_attest::{pccs, Evidence};
use adyton_client::registry::RegistryClient;
use adyton_client::ClientError;
use adyton_envelope::wrap::{TeeKeyAlgorithm, TeePublicKey, WrappedKey};
use adyton_proto::TransferBody;

use super::{FetchError, KeyBroker};

/// Sorts a client error: no answer or a 5xx is worth retrying; 403 is a refusal; the rest is
/// permanent.
pub fn classify(e: &ClientError) -> FetchError {
    let text = e.to_string();
    match e.status() {
        None => match e {
            ClientError::Transport { .. } => FetchError::Transient(text),
            _ => FetchError::Permanent(text),
        },
        Some(403) => FetchError::Denied(text),
        Some(408 | 429) => FetchError::Transient(text),
        Some(s) if s >= 500 => FetchError::Transient(text),
        Some(_) => FetchError::Permanent(text),
    }
}

/// Sorts a transfer's failure as [`classify`] does. A P-384 key refused with a 4xx that is neither
/// a policy refusal (403) nor about the key id (404) or the caller (401) gets a hint: a broker
/// that speaks only RSA, as Intel's KBS does, refuses the key itself.
fn classify_transfer(e: &ClientError, public_key: &TeePublicKey) -> FetchError {
    match (classify(e), e.status()) {
        (FetchError::Permanent(text), Some(status))
            if public_key.algorithm() == TeeKeyAlgorithm::P384
                && (400..500).contains(&status)
                && !matches!(status, 401 | 404) =>
        {
            FetchError::Permanent(format!(
                "{text} (this pull sent an EC P-384 transfer key: a key broker that takes RSA keys \
                 only, such as Intel's KBS, needs transfer_key = \"rsa-3072\" in server.toml or \
                 --transfer-key rsa-3072)"
            ))
        }
        (other, _) => other,
    }
}

/// The key broker's transfer endpoint over HTTP.
///
/// With a collateral provider (this platform's PCCS or AMD's KDS, `pccs_url` and `kds_url` in
/// `server.toml`), the collateral of the server's own evidence goes with it in the request, for a
/// broker that has none of its own; a broker that has some ignores it.
#[derive(Debug, Default)]
pub struct HttpKeyBroker {
    collateral: Option<Arc<CollateralProvider>>,
}

impl HttpKeyBroker {
    /// A broker client that sends the collateral `provider` finds for the evidence.
    pub fn with_collateral(provider: Arc<CollateralProvider>) -> Self {
        Self {
            collateral: Some(provider),
        }
    }

    /// The request body: the evidence, the public key, and the evidence's collateral when the
    /// provider found some. Not finding any does not fail the transfer: the broker may have its
    /// own, and says so when it has not.
    fn body(&self, evidence: &Evidence, public_key: &TeePublicKey, now: u64) -> TransferBody {
        let collateral = self.collateral.as_ref().and_then(|provider| {
            match provider.collateral_for(evidence, now) {
                Ok((collateral, used)) => match used.origin {
                    CollateralOrigin::None | CollateralOrigin::Evidence => None,
                    _ => pccs::bundle_json(&collateral).ok(),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "no collateral to send with the evidence");
                    None
                }
            }
        });
        TransferBody {
            quote: evidence.to_json().into_bytes(),
            user_data: public_key.spki_der().to_vec(),
            nonce: None,
            collateral,
        }
    }
}

impl KeyBroker for HttpKeyBroker {
    fn transfer(
        &self,
        kbs_url: &str,
        evidence: &Evidence,
        public_key: &TeePublicKey,
    ) -> Result<WrappedKey, FetchError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let body = self.body(evidence, public_key, now);
        let answer = adyton_client::kbs::transfer(kbs_url, evidence.tee.as_str(), &body)
            .map_err(|e| classify_transfer(&e, public_key))?;
        Ok(WrappedKey {
            wrapped_key: answer.wrapped_key,
            wrapped_swk: answer.wrapped_swk,
        })
    }
}

/// The registry over HTTP, through `adyton-client`'s `RegistryClient`: the info from
/// `GET /models/{id}`, and the blob streamed from the info's `url`, resumed with `Range` when the
/// connection breaks.
#[derive(Debug)]
pub struct HttpRegistry {
    client: RegistryClient,
}

impl HttpRegistry {
    /// A registry at `base_url` (`http://host:port` or `https://...`).
    pub fn new(base_url: &str) -> Result<Self, FetchError> {
        let client = RegistryClient::new(base_url).map_err(|e| classify(&e))?;
        Ok(HttpRegistry { client })
    }
}

impl super::Registry for HttpRegistry {
    fn info(&self, model_id: &str) -> Result<super::ModelInfo, FetchError> {
        self.client.get_info(model_id).map_err(|e| classify(&e))
    }

    fn open_blob(&self, url: &str) -> Result<Box<dyn std::io::Read + Send>, FetchError> {
        let reader = self.client.blob_reader(url).map_err(|e| classify(&e))?;
        Ok(Box::new(reader))
    }
}

#[cfg(test)]
mod tests {
    use adyton_attest::{Collateral, TeeKind};
    use adyton_envelope::wrap::{TeeKeyPair, TransferKeyKind};

    use super::*;

    #[test]
    fn the_evidence_goes_with_its_collateral_when_there_is_a_source() {
        let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/dcap");
        let evidence = Evidence {
            tee: TeeKind::Sgx,
            quote: std::fs::read(testdata.join("sgx_quote")).unwrap(),
            certificates: None,
            gpus: Vec::new(),
        };
        let recorded = Collateral::from_json(
            &std::fs::read(testdata.join("sgx_quote_collateral.json")).unwrap(),
        )
        .unwrap();
        let key = TeeKeyPair::generate_kind(TransferKeyKind::P384).unwrap();
        let public_key = key.public_key().unwrap();

        let provider = CollateralProvider::from_collateral(recorded.clone(), "recorded");
        let body =
            HttpKeyBroker::with_collateral(Arc::new(provider)).body(&evidence, &public_key, 0);
        let sent = Collateral::from_json(&body.collateral.unwrap()).unwrap();
        assert_eq!(sent.dcap, recorded.dcap);
        assert_eq!(body.quote, evidence.to_json().into_bytes());

        // Without a source, or for SIM evidence, nothing is sent (CNAP's body).
        assert_eq!(
            HttpKeyBroker::default()
                .body(&evidence, &public_key, 0)
                .collateral,
            None
        );
        let none = HttpKeyBroker::with_collateral(Arc::new(CollateralProvider::none()));
        assert_eq!(none.body(&evidence, &public_key, 0).collateral, None);
        let sim = Evidence {
            tee: TeeKind::Sim,
            quote: b"SIM".to_vec(),
            certificates: None,
            gpus: Vec::new(),
        };
        let provider = CollateralProvider::from_collateral(recorded, "recorded");
        let with = HttpKeyBroker::with_collateral(Arc::new(provider));
        assert_eq!(with.body(&sim, &public_key, 0).collateral, None);
    }

    fn refused(status: u16) -> ClientError {
        ClientError::Api {
            request: "POST http://kbs.invalid/kbs/v1/keys/k1/transfer".into(),
            status,
            message: "user_data: not an RSA key".into(),
        }
    }

    const HINT: &str = "transfer_key = \"rsa-3072\"";

    #[test]
    fn a_p384_key_refused_for_what_it_is_hints_at_rsa() {
        let p384 = TeeKeyPair::generate_kind(TransferKeyKind::P384)
            .unwrap()
            .public_key()
            .unwrap();
        for status in [400, 415, 422] {
            match classify_transfer(&refused(status), &p384) {
                FetchError::Permanent(text) => {
                    assert!(text.contains("not an RSA key"), "{text}");
                    assert!(text.contains(HINT), "{text}");
                }
                other => panic!("{status}: {other:?}"),
            }
        }
        // A policy refusal, an unknown key, a 5xx: no hint, and the same class as before.
        for status in [401, 403, 404, 429, 500] {
            let class = classify_transfer(&refused(status), &p384);
            assert_eq!(class, classify(&refused(status)), "{status}");
        }
        // An RSA key refused with a 400 gets no hint.
        let rsa = TeeKeyPair::generate(2048).unwrap().public_key().unwrap();
        let class = classify_transfer(&refused(400), &rsa);
        assert_eq!(class, classify(&refused(400)));
        assert!(!class.to_string().contains(HINT));
    }
}
