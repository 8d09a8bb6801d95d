//! The one error of this crate: input that breaks a wire contract.

/// Bytes or fields that break a wire contract: `invalid {what}: {reason}`. A service that answers
/// with the reason alone takes [`ProtoError::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The document or one of its fields is malformed.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The document: `provisioning request`, `transfer request`, ...
        what: &'static str,
        /// Why, naming the field.
        reason: String,
    },
}

impl ProtoError {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        ProtoError::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// The document that was refused.
    pub fn what(&self) -> &'static str {
        match self {
            ProtoError::Invalid { what, .. } => what,
        }
    }

    /// Why, naming the field, without the document's name.
    pub fn reason(&self) -> &str {
        match self {
            ProtoError::Invalid { reason, .. } => reason,
        }
    }
}

/// At most 64 characters of untrusted text, with control characters escaped, for messages.
pub(crate) fn shorten(text: &str) -> String {
    text.chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string()
}
