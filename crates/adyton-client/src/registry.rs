//! The model registry's API (`docs/registry.md`): model info in CNAP's schema, and blobs streamed
//! up and down, downloads resuming with `Range` after a dropped connection.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::Duration;

use crate::error::ClientError;
use crate::http::{self, answer_body, bearer, decode_json, Timeouts};
use crate::kbs::Token;

type Result<T> = std::result::Result<T, ClientError>;

/// Largest JSON answer read (a listing of many models).
const MAX_JSON_LEN: u64 = 8 << 20;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one read or write of a socket may stall. Whole transfers have no deadline: a 5 GB
/// blob takes as long as it takes, but a dead connection is noticed.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes copied per read of an upload or download.
const COPY_BUFFER: usize = 256 << 10;

pub use adyton_proto::model_info::BlobSummary;
pub use adyton_proto::ModelInfo;

/// How a download retries after a dropped connection or a short read: at most `max_retries`
/// reconnections in a row without progress, waiting `initial_backoff`, doubled each time up to
/// `max_backoff`. The count starts again whenever bytes arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// A client of one model registry.
pub struct RegistryClient {
    base_url: String,
    agent: ureq::Agent,
    retry: RetryPolicy,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base_url", &self.base_url)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client of the registry at `base_url` (`http://host:port` or `https://...`).
    /// Certificates are always checked against Mozilla's roots; redirects are not followed (they
    /// could carry the bearer token elsewhere).
    pub fn new(base_url: &str) -> Result<Self> {
        let base_url = http::normalise_base_url(base_url)?;
        let agent = http::agent(Timeouts {
            connect: CONNECT_TIMEOUT,
            call: None,
            stall: Some(STALL_TIMEOUT),
        });
        Ok(Self {
            base_url,
            agent,
            retry: RetryPolicy::default(),
        })
    }

    /// The same client with another retry policy for downloads.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The base URL, normalised.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The registry's download URL of the blob `id`.
    pub fn blob_url(&self, id: &str) -> Result<String> {
        Ok(format!("{}{}", self.base_url, item_path("/blobs", id)?))
    }

    /// Every model's info.
    pub fn list(&self) -> Result<Vec<ModelInfo>> {
        self.json("GET", "/models".to_owned(), None, None)
    }

    /// One model's info.
    pub fn get_info(&self, id: &str) -> Result<ModelInfo> {
        self.json("GET", item_path("/models", id)?, None, None)
    }

    /// Creates or replaces `info` (under `info.id`); returns it as stored, with `url`,
    /// `blob_size` and `blob_sha256` filled in by the registry for its own blob.
    pub fn put_info(&self, token: &Token, info: &ModelInfo) -> Result<ModelInfo> {
        let body = info.to_request_json();
        self.json(
            "PUT",
            item_path("/models", &info.id)?,
            Some(token),
            Some(&body),
        )
    }

    /// Deletes a model: its info and its blob.
    pub fn delete(&self, token: &Token, id: &str) -> Result<()> {
        let path = item_path("/models", id)?;
        let request = format!("DELETE {path}");
        let bearer = bearer(token);
        let answer = self
            .agent
            .delete(format!("{}{path}", self.base_url))
            .header("Authorization", bearer.as_str())
            .call()
            .map_err(|source| ClientError::Transport {
                request: request.clone(),
                source,
            })?;
        answer_body(request, answer, MAX_JSON_LEN).map(drop)
    }

    /// Uploads the blob `id` from `reader`, streamed (chunked), never held whole in memory.
    /// `progress` is called with the bytes sent so far. Uploads are not retried: blobs are
    /// immutable, so a failed upload is started again under the same id after it left nothing.
    pub fn upload_blob(
        &self,
        token: &Token,
        id: &str,
        reader: impl Read,
        mut progress: impl FnMut(u64),
    ) -> Result<BlobSummary> {
        let path = item_path("/blobs", id)?;
        let request = format!("PUT {path}");
        let bearer = bearer(token);
        let mut counting = CountingReader {
            inner: io::BufReader::with_capacity(COPY_BUFFER, reader),
            sent: 0,
            progress: &mut progress,
        };
        let answer = self
            .agent
            .put(format!("{}{path}", self.base_url))
            .header("Authorization", bearer.as_str())
            .content_type("application/octet-stream")
            .send(ureq::SendBody::from_reader(&mut counting))
            .map_err(|source| ClientError::Transport {
                request: request.clone(),
                source,
            })?;
        let bytes = answer_body(request.clone(), answer, MAX_JSON_LEN)?;
        decode_json(request, &bytes)
    }

    /// Downloads the blob at `url` (a model's `url`) into `out`, resuming after dropped
    /// connections (see [`ResumingReader`]); returns its length.
    pub fn download_url(&self, url: &str, out: &mut impl Write) -> Result<u64> {
        let mut reader = self.blob_reader(url)?;
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(reader.error_of(e)),
            };
            let chunk = buf.get(..n).unwrap_or_default();
            out.write_all(chunk)
                .map_err(|e| reader.error_of(io::Error::new(e.kind(), format!("write: {e}"))))?;
        }
        out.flush()
            .map_err(|e| reader.error_of(io::Error::new(e.kind(), format!("write: {e}"))))?;
        Ok(reader.position)
    }

    /// Downloads the blob `id` of this registry into `out`; returns its length.
    pub fn download_blob(&self, id: &str, out: &mut impl Write) -> Result<u64> {
        self.download_url(&self.blob_url(id)?, out)
    }

    /// A reader of the blob at `url` that resumes transparently: the first request is sent now
    /// (so a missing blob is an error here), and the total length is known from its answer.
    pub fn blob_reader(&self, url: &str) -> Result<ResumingReader> {
        let request = format!("GET {}", path_of(url));
        let mut reader = ResumingReader {
            agent: self.agent.clone(),
            url: url.to_owned(),
            request,
            retry: self.retry,
            position: 0,
            total: None,
            body: None,
            failures: 0,
        };
        reader.open().map_err(|e| reader.error_of(e))?;
        Ok(reader)
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: String,
        token: Option<&Token>,
        body: Option<&[u8]>,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base_url);
        let request = format!("{method} {path}");
        let bearer = token.map(bearer);
        let answer = match body {
            None => {
                let mut builder = self.agent.get(&url);
                if let Some(bearer) = &bearer {
                    builder = builder.header("Authorization", bearer.as_str());
                }
                builder.call()
            }
            Some(body) => {
                let mut builder = self.agent.put(&url).content_type("application/json");
                if let Some(bearer) = &bearer {
                    builder = builder.header("Authorization", bearer.as_str());
                }
                builder.send(body)
            }
        }
        .map_err(|source| ClientError::Transport {
            request: request.clone(),
            source,
        })?;
        let bytes = answer_body(request.clone(), answer, MAX_JSON_LEN)?;
        decode_json(request, &bytes)
    }
}

/// `collection/id`, for ids of the registry's syntax (`[A-Za-z0-9._-]`, not starting with `.`).
fn item_path(collection: &str, id: &str) -> Result<String> {
    if !adyton_proto::id::is_model_id(id) {
        return Err(ClientError::InvalidInput {
            what: "model id",
            reason: format!(
                "`{}` is not a model id (1 to 128 of letters, digits, `.`, `_`, `-`, not \
                 starting with `.`)",
                id.escape_debug()
            ),
        });
    }
    Ok(format!("{collection}/{id}"))
}

/// The path of a URL, for error messages (never a query, which could hold a credential).
fn path_of(url: &str) -> String {
    url.parse::<ureq::http::Uri>()
        .map(|uri| uri.path().to_owned())
        .unwrap_or_else(|_| "(blob URL)".to_owned())
}

struct CountingReader<'a, R, F: FnMut(u64)> {
    inner: R,
    sent: u64,
    progress: &'a mut F,
}

impl<R: Read, F: FnMut(u64)> Read for CountingReader<'_, R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sent += n as u64;
        (self.progress)(self.sent);
        Ok(n)
    }
}

/// A blob download as a `Read` that survives dropped connections: after a connection error or
/// a body that ends early, it asks again with `Range: bytes=N-` for the bytes it has not yet
/// returned, checks that `Content-Range` starts at N and names the same total, and goes on. It
/// gives up after [`RetryPolicy::max_retries`] reconnections in a row without progress. A server
/// that ignores `Range` on a resumption is an error, never a silent restart from 0.
///
/// Errors are `io::Error`s; those of the registry's API carry a [`ClientError`] inside
/// (`io::Error::get_ref`).
pub struct ResumingReader {
    agent: ureq::Agent,
    url: String,
    request: String,
    retry: RetryPolicy,
    position: u64,
    total: Option<u64>,
    body: Option<ureq::BodyReader<'static>>,
    failures: u32,
}

impl fmt::Debug for ResumingReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResumingReader")
            .field("request", &self.request)
            .field("position", &self.position)
            .field("total", &self.total)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl ResumingReader {
    /// The blob's length, from the first answer.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Bytes returned so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Reconnections made so far after failures, since the last progress.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Sends the request for the bytes from `position` on, and checks its answer.
    fn open(&mut self) -> io::Result<()> {
        let mut builder = self.agent.get(&self.url);
        if self.position > 0 {
            builder = builder.header("Range", format!("bytes={}-", self.position));
        }
        let answer = builder.call().map_err(|source| {
            let transport = matches!(source, ureq::Error::Io(_) | ureq::Error::Timeout(_))
                || matches!(source, ureq::Error::ConnectionFailed);
            let kind = if transport {
                io::ErrorKind::ConnectionAborted
            } else {
                io::ErrorKind::Other
            };
            io::Error::new(
                kind,
                ClientError::Transport {
                    request: self.request.clone(),
                    source,
                },
            )
        })?;
        let status = answer.status().as_u16();
        if !(200..300).contains(&status) {
            let request = self.request.clone();
            let kind = if status >= 500 {
                // Worth another try: a restarting or overloaded server.
                io::ErrorKind::ConnectionAborted
            } else {
                io::ErrorKind::Other
            };
            let error = answer_body(request, answer, MAX_JSON_LEN)
                .err()
                .unwrap_or_else(|| self.invalid("an error status without an error"));
            return Err(io::Error::new(kind, error));
        }
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (start, total) = match (self.position, status) {
            (0, 200) => {
                let length = header("content-length")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| other(self.invalid("no Content-Length in the answer")))?;
                (0, length)
            }
            (_, 206) => {
                let range = header("content-range")
                    .ok_or_else(|| other(self.invalid("a 206 answer without Content-Range")))?;
                parse_content_range(&range).ok_or_else(|| {
                    other(self.invalid(&format!("unreadable Content-Range `{range}`")))
                })?
            }
            (_, 200) => {
                return Err(other(
                    self.invalid("the server ignored the Range of a resumed download"),
                ))
            }
            (_, status) => {
                return Err(other(self.invalid(&format!("unexpected status {status}"))));
            }
        };
        if start != self.position {
            return Err(other(self.invalid(&format!(
                "asked for bytes from {}, got bytes from {start}",
                self.position
            ))));
        }
        if let Some(known) = self.total {
            if known != total {
                return Err(other(self.invalid(&format!(
                    "the blob changed length ({known} then {total} bytes)"
                ))));
            }
        }
        self.total = Some(total);
        self.body = Some(answer.into_body().into_reader());
        Ok(())
    }

    fn invalid(&self, reason: &str) -> ClientError {
        ClientError::InvalidResponse {
            request: self.request.clone(),
            reason: reason.to_owned(),
        }
    }

    /// Counts a failure; `Err` once the retries are spent, else waits the backoff.
    fn after_failure(&mut self, error: io::Error) -> io::Result<()> {
        self.body = None;
        self.failures += 1;
        if self.failures > self.retry.max_retries {
            return Err(io::Error::new(
                error.kind(),
                format!(
                    "{}: gave up after {} retries at byte {} of {}: {error}",
                    self.request,
                    self.retry.max_retries,
                    self.position,
                    self.total.map_or("?".to_owned(), |t| t.to_string())
                ),
            ));
        }
        std::thread::sleep(self.retry.backoff(self.failures));
        Ok(())
    }

    /// Turns an error of this reader back into a [`ClientError`].
    fn error_of(&self, error: io::Error) -> ClientError {
        let is_client = error
            .get_ref()
            .is_some_and(|inner| inner.is::<ClientError>());
        if is_client {
            if let Some(Ok(client)) = error.into_inner().map(|e| e.downcast::<ClientError>()) {
                return *client;
            }
            return self.invalid("an error that cannot be read back");
        }
        ClientError::Transport {
            request: self.request.clone(),
            source: ureq::Error::Io(error),
        }
    }
}

fn other(error: ClientError) -> io::Error {
    io::Error::other(error)
}

/// Whether a failure is worth reconnecting for: everything but the registry's own refusals
/// (4xx, a malformed answer), which `open` marks with a kind other than `ConnectionAborted`.
fn retriable(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::ConnectionAborted
        || !error
            .get_ref()
            .is_some_and(|inner| inner.is::<ClientError>())
}

impl Read for ResumingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.total.is_some_and(|total| self.position >= total) {
                return Ok(0);
            }
            if self.body.is_none() {
                if let Err(e) = self.open() {
                    if !retriable(&e) {
                        return Err(e);
                    }
                    self.after_failure(e)?;
                    continue;
                }
            }
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            match body.read(buf) {
                Ok(0) => {
                    // The body ended before the blob did: a short read.
                    let short = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection ended before the blob did",
                    );
                    self.after_failure(short)?;
                }
                Ok(n) => {
                    let n = match self.total {
                        // Never more than the blob: a server sending extra bytes is cut.
                        Some(total) => n.min(usize::try_from(total - self.position).unwrap_or(n)),
                        None => n,
                    };
                    self.position += n as u64;
                    self.failures = 0;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.after_failure(e)?,
            }
        }
    }
}

/// `bytes START-END/TOTAL` → `(START, TOTAL)`, checking END + 1 == TOTAL (the rest of the blob).
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    let total: u64 = total.trim().parse().ok()?;
    (start <= end && end.checked_add(1)? == total).then_some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, 10)));
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0, 1)));
        assert_eq!(parse_content_range("bytes 5-8/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range("items 5-9/10"), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let policy = RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(3), Duration::from_millis(400));
        assert_eq!(policy.backoff(4), Duration::from_millis(500));
        assert_eq!(policy.backoff(60), Duration::from_millis(500));
    }

    #[test]
    fn ids_are_checked_before_sending() {
        let client = RegistryClient::new("http://127.0.0.1:9").unwrap();
        for bad in ["", ".x", "a/b", "a b", "é"] {
            assert!(
                matches!(client.get_info(bad), Err(ClientError::InvalidInput { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            client.blob_url("m-1.v2").unwrap(),
            "http://127.0.0.1:9/blobs/m-1.v2"
        );
    }

    #[test]
    fn a_missing_server_is_a_transport_error_naming_the_request() {
        let client = RegistryClient::new("http://127.0.0.1:1").unwrap();
        let err = client.delete(&Token::new("the-token"), "m").unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("DELETE /models/m"), "{text}");
        assert!(!text.contains("the-token"), "{text}");
        let err = client
            .blob_reader(&client.blob_url("m").unwrap())
            .unwrap_err();
        assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    }
}
