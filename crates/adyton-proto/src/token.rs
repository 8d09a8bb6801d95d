//! The bearer token of a service's writes (the registry's uploads, the inference server's uploads
//! and deletes): kept only as its SHA-256, compared in constant time.

use std::fmt;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{digest, SHA256};

/// A bearer token, kept only as its SHA-256. `Debug` prints a redaction.
#[derive(Clone)]
pub struct BearerToken([u8; 32]);

impl BearerToken {
    /// From the token's text (surrounding whitespace is not part of it); `None` if empty.
    pub fn new(token: &str) -> Option<Self> {
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        Some(Self(sha256(token.as_bytes())))
    }

    /// Whether `presented` is the token, exactly (the caller trims what its header format allows).
    pub fn matches(&self, presented: &str) -> bool {
        // Hashing first gives both sides one length, so the comparison leaks nothing of the token.
        verify_slices_are_equal(&sha256(presented.as_bytes()), &self.0).is_ok()
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let token = BearerToken::new("  s3cret\n").unwrap();
        assert!(token.matches("s3cret"));
        for wrong in ["s3cre", "s3cret ", "S3cret", "s3cretx", "", " s3cret"] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn an_empty_token_is_refused() {
        assert!(BearerToken::new("").is_none());
        assert!(BearerToken::new(" \t\n").is_none());
    }

    #[test]
    fn debug_prints_no_token() {
        let text = format!("{:?}", BearerToken::new("s3cret").unwrap());
        assert_eq!(text, "BearerToken(<redacted>)");
    }
}
