//! The syntax of ids that services put in URL paths, file names and audit lines.
//!
//! Two syntaxes, each checked in one place:
//! - a model id (the registry's ids, the server's model names): 1 to 128 of `[A-Za-z0-9._-]`,
//!   not starting with `.`, so that it is one plain path segment and never a hidden file;
//! - a provisioning id (a request id, a model or key id in a provisioning file): 1 to 128 of
//!   `[A-Za-z0-9._:-]`, neither `.` nor `..` (a key id becomes a URL path segment).

use crate::error::{shorten, ProtoError};

/// The longest id of either syntax, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Whether `id` is a model id: 1 to 128 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn is_model_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `id` is a provisioning id: 1 to 128 of `[A-Za-z0-9._:-]`, neither `.` nor `..`.
pub fn is_provision_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        && id != "."
        && id != ".."
}

/// Checks the provisioning id in `field` of the document `what` ([`is_provision_id`]), with a
/// message that names the field and quotes the id, escaped and cut.
pub fn check_provision_id(what: &'static str, field: &str, id: &str) -> Result<(), ProtoError> {
    if is_provision_id(id) {
        Ok(())
    } else {
        Err(ProtoError::invalid(
            what,
            format!(
                "{field} `{}` is not 1 to {MAX_ID_LEN} characters of letters, digits, `.`, `_`, `:` \
                 and `-`",
                shorten(id)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids() {
        for good in ["resnet-50", "a", "v1.2_b", "A.", &"x".repeat(MAX_ID_LEN)] {
            assert!(is_model_id(good), "{good}");
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        for bad in [
            "", ".", "..", ".hidden", "a/b", "a:b", "a b", "é", "a\n", "a\0", &long,
        ] {
            assert!(!is_model_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_refused_provision_id_is_named_on_one_line() {
        let err = check_provision_id("provisioning request", "key_id", "../a\nb").unwrap_err();
        assert_eq!(err.what(), "provisioning request");
        assert!(
            err.reason()
                .starts_with("key_id `../a\\nb` is not 1 to 128"),
            "{err}"
        );
        check_provision_id("provisioning request", "key_id", "k-1").unwrap_or_else(|e| {
            panic!("{e}");
        });
    }

    #[test]
    fn provision_ids() {
        for good in [
            "resnet-50",
            "urn:uuid:1",
            ".a",
            "...",
            "0b3c9d5e-1f2a-4b6c-8d7e-9f0a1b2c3d4e",
            &"x".repeat(MAX_ID_LEN),
        ] {
            assert!(is_provision_id(good), "{good}");
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        for bad in ["", ".", "..", "a/b", "a b", "a\"b", "é", "a\n", &long] {
            assert!(!is_provision_id(bad), "{bad:?}");
        }
    }
}
