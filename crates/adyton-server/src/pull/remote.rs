//! The registry and the key broker over HTTP, through `adyton-client`.

use adyton_attest::TeeKind;
use adyton_client::ClientError;
use adyton_envelope::wrap::WrappedKey;

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
        tee: TeeKind,
        quote_b64: &str,
        user_data_b64: &str,
    ) -> Result<WrappedKey, FetchError> {
        let answer = adyton_client::kbs::transfer(kbs_url, tee.as_str(), quote_b64, user_data_b64)
            .map_err(|e| classify(&e))?;
        Ok(WrappedKey {
            wrapped_key: answer.wrapped_key,
            wrapped_swk: answer.wrapped_swk,
        })
    }
}

/// The registry over HTTP: `GET {base}/models/{id}` for the info, and the blob streamed from the
/// info's `url`, resumed with `Range` when the connection breaks.
#[derive(Debug)]
pub struct HttpRegistry {
    base_url: String,
    agent: ureq::Agent,
}

/// How often a broken blob download is resumed before the attempt counts as failed.
const RESUMES: u32 = 5;
/// Largest model info accepted.
const MAX_INFO_LEN: u64 = 64 << 10;

impl HttpRegistry {
    /// A registry at `base_url` (`http://host:port` or `https://...`).
    pub fn new(base_url: &str) -> Result<Self, FetchError> {
        let trimmed = base_url.trim().trim_end_matches('/');
        if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
            return Err(FetchError::Permanent(format!(
                "`{base_url}` is not an http or https URL"
            )));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(std::time::Duration::from_secs(10)))
            // A stalled download fails instead of hanging; it is resumed from where it stopped.
            .timeout_recv_body(Some(std::time::Duration::from_secs(60)))
            .max_redirects(0)
            .user_agent(concat!("adyton-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(HttpRegistry {
            base_url: trimmed.to_owned(),
            agent,
        })
    }
}

fn status_error(what: &str, status: u16) -> FetchError {
    let text = format!("{what}: HTTP {status}");
    match status {
        403 => FetchError::Denied(text),
        408 | 429 => FetchError::Transient(text),
        s if s >= 500 => FetchError::Transient(text),
        _ => FetchError::Permanent(text),
    }
}

#[derive(serde::Deserialize)]
struct InfoJson {
    id: String,
    url: String,
    #[serde(default)]
    encrypted: bool,
    #[serde(default)]
    kbs_url: Option<String>,
    #[serde(default)]
    key_id: Option<String>,
}

impl super::Registry for HttpRegistry {
    fn info(&self, model_id: &str) -> Result<super::ModelInfo, FetchError> {
        let what = format!("GET /models/{model_id}");
        let url = format!("{}/models/{model_id}", self.base_url);
        let mut answer = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| FetchError::Transient(format!("{what}: {e}")))?;
        let status = answer.status().as_u16();
        if status != 200 {
            return Err(status_error(&what, status));
        }
        let bytes = answer
            .body_mut()
            .with_config()
            .limit(MAX_INFO_LEN)
            .read_to_vec()
            .map_err(|e| FetchError::Transient(format!("{what}: {e}")))?;
        let info: InfoJson = serde_json::from_slice(&bytes)
            .map_err(|e| FetchError::Permanent(format!("{what}: not model info: {e}")))?;
        Ok(super::ModelInfo {
            id: info.id,
            url: info.url,
            encrypted: info.encrypted,
            kbs_url: info.kbs_url,
            key_id: info.key_id,
        })
    }

    fn open_blob(&self, url: &str) -> Result<Box<dyn std::io::Read + Send>, FetchError> {
        let mut reader = Resuming {
            agent: self.agent.clone(),
            url: url.to_owned(),
            body: None,
            offset: 0,
            total: None,
            resumes: 0,
        };
        reader.open()?;
        Ok(Box::new(reader))
    }
}

/// A blob download that resumes with `Range: bytes=N-` after a broken connection, checking that
/// the server answers with the range asked for.
struct Resuming {
    agent: ureq::Agent,
    url: String,
    body: Option<Box<dyn std::io::Read + Send>>,
    offset: u64,
    total: Option<u64>,
    resumes: u32,
}

impl Resuming {
    fn open(&mut self) -> Result<(), FetchError> {
        let what = "GET (model blob)";
        let mut request = self.agent.get(&self.url);
        if self.offset > 0 {
            request = request.header("Range", &format!("bytes={}-", self.offset));
        }
        let answer = request
            .call()
            .map_err(|e| FetchError::Transient(format!("{what}: {e}")))?;
        let status = answer.status().as_u16();
        match (self.offset, status) {
            (0, 200) => {
                self.total = answer
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
            }
            (offset, 206) => {
                let range = answer
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !range.starts_with(&format!("bytes {offset}-")) {
                    return Err(FetchError::Permanent(format!(
                        "{what}: asked to resume at byte {offset}, the registry sent `{range}`"
                    )));
                }
            }
            (_, status) => return Err(status_error(what, status)),
        }
        self.body = Some(Box::new(answer.into_body().into_reader()));
        Ok(())
    }
}

impl std::io::Read for Resuming {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(body) = self.body.as_mut() else {
                return Err(std::io::Error::other("the download is closed"));
            };
            match body.read(buf) {
                Ok(0) if self.total.is_some_and(|t| self.offset < t) => {
                    // Ended early: resume below.
                }
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if self.resumes >= RESUMES => return Err(e),
                Err(_) => {}
            }
            if self.resumes >= RESUMES {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "the download stopped at byte {} of {:?}",
                        self.offset, self.total
                    ),
                ));
            }
            self.resumes += 1;
            tracing::warn!(
                offset = self.offset,
                resume = self.resumes,
                "blob download broke; resuming"
            );
            self.body = None;
            std::thread::sleep(std::time::Duration::from_millis(
                200 * u64::from(self.resumes),
            ));
            self.open()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
    }
}
