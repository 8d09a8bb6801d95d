//! What every client of this crate does the same way: the `ureq` agent, the base URL's checks,
//! the bearer header and the reading of an answer.

use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::error::{api_error, ClientError};
use crate::kbs::Token;

type Result<T> = std::result::Result<T, ClientError>;

/// The time limits of one client's agent; `None` leaves a limit off.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// How long connecting may take.
    pub connect: Duration,
    /// How long a whole request may take, answer included.
    pub call: Option<Duration>,
    /// How long one read or write of the socket may stall.
    pub stall: Option<Duration>,
}

/// An agent on rustls with aws-lc-rs that checks certificates against Mozilla's roots, returns
/// error statuses as answers (the caller reads their `{"error": ...}` body), and follows no
/// redirect: a redirect could carry the bearer token to another host.
pub(crate) fn agent(timeouts: Timeouts) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .root_certs(ureq::tls::RootCerts::WebPki)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_connect(Some(timeouts.connect))
        .timeout_global(timeouts.call)
        .timeout_per_read(timeouts.stall)
        .timeout_per_write(timeouts.stall)
        .max_redirects(0)
        .user_agent(concat!("adyton-client/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// Checks that `url` is http or https with a host, and strips trailing `/`s.
pub(crate) fn normalise_base_url(url: &str) -> Result<String> {
    let bad = |reason| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let trimmed = url.trim().trim_end_matches('/');
    let uri: ureq::http::Uri = trimmed.parse().map_err(|_| bad("it does not parse"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("the scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    if uri.query().is_some() {
        return Err(bad("it must not have a query"));
    }
    Ok(trimmed.to_owned())
}

/// The `Authorization` header's value, zeroized on drop.
pub(crate) fn bearer(token: &Token) -> Zeroizing<String> {
    Zeroizing::new(format!("Bearer {}", token.expose_secret()))
}

/// The body of a 2xx answer (at most `limit` bytes), or the error of any other. `request` names
/// the request in errors (method and path, never a secret).
pub(crate) fn answer_body(
    request: String,
    mut answer: ureq::http::Response<ureq::Body>,
    limit: u64,
) -> Result<Vec<u8>> {
    let status = answer.status().as_u16();
    let bytes = answer
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => ClientError::ResponseTooLarge {
                request: request.clone(),
                limit,
            },
            source => ClientError::Transport {
                request: request.clone(),
                source,
            },
        })?;
    if (200..300).contains(&status) {
        Ok(bytes)
    } else {
        Err(api_error(request, status, &bytes))
    }
}

/// A JSON answer decoded, or the error that names `request`.
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    request: String,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::InvalidResponse {
        request,
        reason: e.to_string(),
    })
}
