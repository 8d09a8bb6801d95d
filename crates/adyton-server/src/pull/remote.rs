//! The registry and the key broker over HTTP, through `adyton-client`.

use adyton_attest::Evidence;
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
#[derive(Debug, Default)]
pub struct HttpKeyBroker;

impl KeyBroker for HttpKeyBroker {
    fn transfer(
        &self,
        kbs_url: &str,
        evidence: &Evidence,
        public_key: &TeePublicKey,
    ) -> Result<WrappedKey, FetchError> {
        let body = TransferBody {
            quote: evidence.to_json().into_bytes(),
            user_data: public_key.spki_der().to_vec(),
            nonce: None,
            collateral: None,
        };
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
    use adyton_envelope::wrap::{TeeKeyPair, TransferKeyKind};

    use super::*;

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
