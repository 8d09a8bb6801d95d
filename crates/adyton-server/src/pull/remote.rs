//! The registry and the key broker over HTTP, through `adyton-client`.

use adyton_attest::Evidence;
use adyton_client::registry::RegistryClient;
use adyton_client::ClientError;
use adyton_envelope::wrap::{TeePublicKey, WrappedKey};
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
        };
        let answer = adyton_client::kbs::transfer(kbs_url, evidence.tee.as_str(), &body)
            .map_err(|e| classify(&e))?;
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
