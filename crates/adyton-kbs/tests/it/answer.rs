//! An answer of the router called in process, read whole: the tests of every endpoint read the
//! same parts of it.

use axum::body::Body;
use axum::http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;

pub struct Answer {
    pub status: StatusCode,
    /// The `Retry-After` header.
    pub retry_after: Option<String>,
    pub text: String,
    /// The body as JSON; `Null` when it is not JSON.
    pub json: Value,
}

pub async fn read(response: Response<Body>) -> Answer {
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        text,
        json,
    }
}
