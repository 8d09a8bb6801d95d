//! Authentication of the key broker's operators (`design.md`, "KBS key transfer": the admin side).
//!
//! - Passwords are kept only as argon2id PHC strings. A login for an unknown user verifies against a
//!   dummy hash with the same parameters, so it costs the same work as a known user's.
//! - A login returns a bearer token: 32 random bytes, base64url. The broker keeps only the token's
//!   SHA-256, with its user and expiry ([`TOKEN_LIFETIME_SECS`]). A presented token is looked up by
//!   its SHA-256: the lookup's timing depends on the hash, never on the secret token itself.
//! - After [`MAX_FAILED_LOGINS`] failures for a username within [`FAILURE_WINDOW_SECS`], further
//!   attempts for it are refused until the window passes.
//!
//! Everything here takes the time as an argument; no I/O. Nothing here logs.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine as _;
use serde::Serialize;
use zeroize::Zeroizing;

/// How long a token is valid.
pub const TOKEN_LIFETIME_SECS: u64 = 900;
/// Failed logins for one username allowed within [`FAILURE_WINDOW_SECS`].
pub const MAX_FAILED_LOGINS: u32 = 5;
/// The window of the failed-login limit.
pub const FAILURE_WINDOW_SECS: u64 = 60;
/// The user of the local-trial mode, whose password comes from `ADYTON_KBS_ADMIN_PASSWORD`.
pub const TRIAL_ADMIN_USER: &str = "admin";

/// Most usernames whose failures are tracked at once. When full of live windows, logins for
/// untracked usernames are refused as rate-limited: failing closed keeps a password spray from
/// escaping the limit by flooding it.
const MAX_TRACKED_USERNAMES: usize = 10_000;
/// Most live tokens. When full, the token closest to expiry is dropped.
const MAX_TOKENS: usize = 10_000;
/// Longer usernames are truncated for rate limiting and audit.
const MAX_USERNAME_CHARS: usize = 128;
const TOKEN_LEN: usize = 32;

/// What admin authentication refuses or fails at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Wrong password or unknown user: one answer for both.
    #[error("invalid credentials")]
    InvalidCredentials,

    /// Too many failed logins for this username; retry after the window.
    #[error("too many failed logins; try again later")]
    TooManyAttempts,

    /// No token, a malformed one, an unknown one, or an expired one.
    #[error("authentication required")]
    Unauthenticated,

    /// Hashing or the random source failed.
    #[error("admin authentication: {reason}")]
    Internal {
        /// What failed.
        reason: String,
    },
}

/// Operators: usernames with argon2id password hashes (PHC strings).
pub struct AdminUsers {
    hashes: HashMap<String, String>,
}

impl std::fmt::Debug for AdminUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Usernames are not secret; the hashes are kept out of logs anyway.
        let mut users: Vec<&String> = self.hashes.keys().collect();
        users.sort();
        f.debug_struct("AdminUsers")
            .field("users", &users)
            .finish_non_exhaustive()
    }
}

impl AdminUsers {
    /// No operators: every login fails and every admin request is unauthenticated.
    pub fn none() -> Self {
        Self {
            hashes: HashMap::new(),
        }
    }

    /// One operator whose password is hashed now (the local-trial mode: user [`TRIAL_ADMIN_USER`],
    /// password from `ADYTON_KBS_ADMIN_PASSWORD`).
    pub fn with_password(user: &str, password: &str) -> Result<Self, AdminError> {
        let mut users = Self::none();
        users.add_password(user, password)?;
        Ok(users)
    }

    /// Adds (or replaces) an operator, hashing `password` now.
    pub fn add_password(&mut self, user: &str, password: &str) -> Result<(), AdminError> {
        let hash = hash_password(password.as_bytes())?;
        self.hashes.insert(user.to_owned(), hash);
        Ok(())
    }

    /// Adds (or replaces) an operator from a stored argon2 PHC string, checked to parse.
    pub fn add_hash(&mut self, user: &str, phc: &str) -> Result<(), AdminError> {
        PasswordHash::new(phc).map_err(|e| AdminError::Internal {
            reason: format!("password hash of `{user}`: {e}"),
        })?;
        self.hashes.insert(user.to_owned(), phc.to_owned());
        Ok(())
    }

    /// Whether `password` is `user`'s. The argon2 comparison is constant-time, and an unknown user
    /// costs one verification against a dummy hash, like a known one.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.hashes.get(user) {
            Some(phc) => verify_phc(phc, password.as_bytes()),
            None => {
                // The result is ignored: only the work matters.
                let _ = verify_phc(dummy_hash(), password.as_bytes());
                false
            }
        }
    }
}

fn hash_password(password: &[u8]) -> Result<String, AdminError> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| internal("random source failed"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| internal(&e.to_string()))?;
    // `Argon2::default()` is argon2id v19 with the OWASP parameters (19 MiB, t=2, p=1).
    Argon2::default()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| internal(&e.to_string()))
}

fn verify_phc(phc: &str, password: &[u8]) -> bool {
    PasswordHash::new(phc)
        .is_ok_and(|hash| Argon2::default().verify_password(password, &hash).is_ok())
}

/// A hash of a random password with the parameters real hashes use, made once on first need.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut password = Zeroizing::new([0u8; 32]);
        // If the random source fails, an all-zero dummy password still costs the same work.
        let _ = SystemRandom::new().fill(password.as_mut());
        hash_password(password.as_ref()).unwrap_or_default()
    })
}

fn internal(reason: &str) -> AdminError {
    AdminError::Internal {
        reason: reason.into(),
    }
}

/// A token just issued: the only time the broker holds it in the clear.
pub struct IssuedToken {
    /// The bearer token, base64url.
    pub token: Zeroizing<String>,
    /// Seconds until it expires.
    pub expires_in: u64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

struct Session {
    user: String,
    expires_at: u64,
}

struct Failures {
    count: u32,
    window_start: u64,
}

#[derive(Default)]
struct Sessions {
    /// SHA-256 of the token → its session.
    tokens: HashMap<[u8; 32], Session>,
    /// Username (truncated) → its failed logins in the current window.
    failures: HashMap<String, Failures>,
}

/// Operators, their live tokens and the failed-login limit.
pub struct AdminAuth {
    users: AdminUsers,
    sessions: Mutex<Sessions>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("users", &self.users)
            .finish_non_exhaustive()
    }
}

impl AdminAuth {
    /// Authentication for `users`, with no live token.
    pub fn new(users: AdminUsers) -> Self {
        Self {
            users,
            sessions: Mutex::new(Sessions::default()),
        }
    }

    /// Checks a password and issues a token. CPU-heavy (argon2): call it off the async workers.
    pub fn login(&self, user: &str, password: &str, now: u64) -> Result<IssuedToken, AdminError> {
        let limit_key: String = user.chars().take(MAX_USERNAME_CHARS).collect();
        // The attempt counts as a failure before the password is checked, and is forgiven on
        // success: concurrent attempts cannot all slip past the limit while argon2 runs.
        self.count_attempt(&limit_key, now)?;
        if !self.users.verify(user, password) {
            return Err(AdminError::InvalidCredentials);
        }
        let mut raw = Zeroizing::new([0u8; TOKEN_LEN]);
        SystemRandom::new()
            .fill(raw.as_mut())
            .map_err(|_| internal("random source failed"))?;
        let token = Zeroizing::new(BASE64URL.encode(raw.as_ref()));
        let mut sessions = self.lock();
        sessions.failures.remove(&limit_key);
        sessions.tokens.retain(|_, s| s.expires_at > now);
        if sessions.tokens.len() >= MAX_TOKENS {
            let soonest = sessions
                .tokens
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(hash, _)| *hash);
            if let Some(hash) = soonest {
                sessions.tokens.remove(&hash);
            }
        }
        sessions.tokens.insert(
            token_hash(&token),
            Session {
                user: user.to_owned(),
                expires_at: now + TOKEN_LIFETIME_SECS,
            },
        );
        Ok(IssuedToken {
            token,
            expires_in: TOKEN_LIFETIME_SECS,
        })
    }

    /// The user a live token belongs to.
    pub fn authenticate(&self, token: &str, now: u64) -> Result<String, AdminError> {
        let hash = token_hash(token);
        let mut sessions = self.lock();
        match sessions.tokens.get(&hash) {
            Some(session) if session.expires_at > now => Ok(session.user.clone()),
            Some(_) => {
                sessions.tokens.remove(&hash);
                Err(AdminError::Unauthenticated)
            }
            None => Err(AdminError::Unauthenticated),
        }
    }

    fn count_attempt(&self, limit_key: &str, now: u64) -> Result<(), AdminError> {
        let mut sessions = self.lock();
        let failures = &mut sessions.failures;
        let live = |f: &Failures| now < f.window_start + FAILURE_WINDOW_SECS;
        if !failures.contains_key(limit_key) && failures.len() >= MAX_TRACKED_USERNAMES {
            failures.retain(|_, f| live(f));
            if failures.len() >= MAX_TRACKED_USERNAMES {
                return Err(AdminError::TooManyAttempts);
            }
        }
        let entry = failures.entry(limit_key.to_owned()).or_insert(Failures {
            count: 0,
            window_start: now,
        });
        if !live(entry) {
            *entry = Failures {
                count: 0,
                window_start: now,
            };
        }
        if entry.count >= MAX_FAILED_LOGINS {
            return Err(AdminError::TooManyAttempts);
        }
        entry.count += 1;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn token_hash(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

/// What an operator did, for the audit log. It holds no password, token or key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AdminEvent {
    /// Unix seconds.
    pub time: u64,
    /// The username: the one presented at login, or the token's owner.
    pub user: String,
    /// What was attempted.
    pub action: AdminAction,
    /// The policy or key id, when there is one.
    pub target: Option<String>,
    /// Whether it succeeded.
    pub allowed: bool,
    /// Why not, when it failed.
    pub reason: Option<String>,
}

impl AdminEvent {
    /// An event, with the username truncated.
    pub fn new(time: u64, user: &str, action: AdminAction) -> Self {
        Self {
            time,
            user: user.chars().take(MAX_USERNAME_CHARS).collect(),
            action,
            target: None,
            allowed: false,
            reason: None,
        }
    }
}

/// The audited admin actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AdminAction {
    /// `POST /kbs/v1/token`.
    Login,
    /// `POST /kbs/v1/key-transfer-policies`.
    CreatePolicy,
    /// `DELETE /kbs/v1/key-transfer-policies/{id}`.
    DeletePolicy,
    /// `POST /kbs/v1/keys`.
    CreateKey,
    /// `DELETE /kbs/v1/keys/{id}`.
    DeleteKey,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_stored_hash_is_argon2id_and_verifies_only_its_password() {
        let users = AdminUsers::with_password("admin", "correct horse").unwrap();
        assert!(users.hashes["admin"].starts_with("$argon2id$v=19$"));
        assert!(users.verify("admin", "correct horse"));
        assert!(!users.verify("admin", "correct horsf"));
        assert!(!users.verify("root", "correct horse"));
        assert!(!format!("{users:?}").contains("argon2"));
    }
}
