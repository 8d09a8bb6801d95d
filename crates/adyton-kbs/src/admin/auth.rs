//! Authentication of the key broker's operators (`design.md`, "KBS key transfer": the admin side).
//!
//! - Passwords are kept only as argon2id PHC strings. A login for an unknown user verifies against a
//!   dummy hash with the same parameters, so it costs the same work as a known user's.
//! - A login returns a bearer token: 32 random bytes, base64url. The broker keeps only the token's
//!   SHA-256, with its user and expiry ([`TOKEN_LIFETIME_SECS`]). A presented token is looked up by
//!   its SHA-256: the lookup's timing depends on the hash, never on the secret token itself.
//! - Failed logins are limited per client address, never per username, so that no one can lock an
//!   operator out from elsewhere: after [`LoginLimits::free_failures`] failures an address waits,
//!   twice as long after each further failure (up to [`LoginLimits::max_backoff_secs`]). Above
//!   [`LoginLimits::global_failures_per_minute`] failures from all addresses together, only
//!   addresses that logged in successfully within the last day may try, until the minute passes.
//! - Passwords are checked on a [`PasswordPool`]: a few threads and a short queue, so that a flood of
//!   logins costs at most `threads` × 19 MiB of argon2 memory; beyond the queue, a login is refused
//!   as busy (503 with `Retry-After`) without hashing anything.
//!
//! Everything here but the pool takes the time as an argument; no I/O. Nothing here logs.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};

use std::cell::RefCell;

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine as _;
use zeroize::Zeroizing;

/// How long a token is valid.
pub const TOKEN_LIFETIME_SECS: u64 = 900;
/// The user of the local-trial mode, whose password comes from `ADYTON_KBS_ADMIN_PASSWORD`.
pub const TRIAL_ADMIN_USER: &str = "admin";

/// Most client addresses whose failures are tracked at once. When full, the entry least recently
/// failed is forgotten: a flood from many addresses then meets the global limit.
const MAX_TRACKED_ADDRESSES: usize = 10_000;
/// Most addresses remembered for a successful login (the global limit lets them through).
const MAX_TRUSTED_ADDRESSES: usize = 1_000;
/// How long a successful login lets its address past the global limit.
const TRUSTED_FOR_SECS: u64 = 86_400;

/// The limits on failed logins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failed logins from one address before it must wait.
    pub free_failures: u32,
    /// The longest wait imposed on one address.
    pub max_backoff_secs: u64,
    /// An address's failures are forgotten after this long without a new one.
    pub forget_after_secs: u64,
    /// Failed logins per minute from all addresses together before only trusted addresses (a
    /// successful login within the last day) may try.
    pub global_failures_per_minute: u32,
}

impl Default for LoginLimits {
    /// 5 free failures per address, then 1 s, 2 s, 4 s ... up to 15 minutes; 300 failures a minute
    /// from everyone (more than the password pool of a small machine checks anyway).
    fn default() -> Self {
        Self {
            free_failures: 5,
            max_backoff_secs: 900,
            forget_after_secs: 900,
            global_failures_per_minute: 300,
        }
    }
}
/// Most live tokens. When full, the token closest to expiry is dropped.
const MAX_TOKENS: usize = 10_000;
const TOKEN_LEN: usize = 32;

/// What admin authentication refuses or fails at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Wrong password or unknown user: one answer for both.
    #[error("invalid credentials")]
    InvalidCredentials,

    /// Too many failed logins from this address (or from everyone); retry after `retry_after`.
    #[error("too many failed logins; try again in {retry_after} s")]
    TooManyAttempts {
        /// Seconds to wait.
        retry_after: u64,
    },

    /// Every password check is busy; retry after `retry_after`.
    #[error("too many logins at once; try again in {retry_after} s")]
    Busy {
        /// Seconds to wait.
        retry_after: u64,
    },

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

    /// Adds (or replaces) an operator from a stored argon2 PHC string, checked to parse and to
    /// need at most [`MAX_HASH_MEMORY_KIB`] of memory per check.
    pub fn add_hash(&mut self, user: &str, phc: &str) -> Result<(), AdminError> {
        let parsed = PasswordHash::new(phc).map_err(|e| AdminError::Internal {
            reason: format!("password hash of `{user}`: {e}"),
        })?;
        let params = Params::try_from(&parsed).map_err(|e| AdminError::Internal {
            reason: format!("password hash of `{user}`: {e}"),
        })?;
        if params.m_cost() > MAX_HASH_MEMORY_KIB {
            return Err(AdminError::Internal {
                reason: format!(
                    "password hash of `{user}` needs {} KiB per check; at most {MAX_HASH_MEMORY_KIB} \
                     KiB is allowed",
                    params.m_cost()
                ),
            });
        }
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

/// Most memory a stored hash may make one check use (argon2's `m`, in KiB): 256 MiB.
pub const MAX_HASH_MEMORY_KIB: u32 = 256 * 1024;

thread_local! {
    /// The argon2 working memory of this thread, kept from check to check: allocating 19 MiB per
    /// check and freeing it leaves glibc's heap growing by as much per check (its mmap threshold
    /// rises to the freed size, and the freed chunks are not reused), so a flood of logins would
    /// grow the broker without bound. Zeroed after every check.
    static ARGON2_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Whether `password` hashes to the PHC string `phc`, compared in constant time.
fn verify_phc(phc: &str, password: &[u8]) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(expected), Some(salt)) = (
        Algorithm::try_from(hash.algorithm),
        Params::try_from(&hash),
        hash.hash,
        hash.salt,
    ) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    if params.m_cost() > MAX_HASH_MEMORY_KIB {
        return false;
    }
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut computed = Zeroizing::new(vec![0u8; expected.len()]);
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let hashed = ARGON2_MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        let blocks = params.block_count();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        let hashed = argon2.hash_password_into_with_memory(
            password,
            salt,
            &mut computed,
            &mut memory[..blocks],
        );
        memory[..blocks]
            .iter_mut()
            .for_each(zeroize::Zeroize::zeroize);
        hashed
    });
    // `Output`'s equality is constant-time.
    hashed.is_ok() && Output::new(&computed).is_ok_and(|computed| computed == expected)
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

/// One address's failed logins.
struct AddressFailures {
    /// Failures (attempts in flight count until they succeed).
    count: u32,
    /// When the latest one began.
    last: u64,
    /// No attempt before this time.
    blocked_until: u64,
}

#[derive(Default)]
struct Sessions {
    /// SHA-256 of the token → its session.
    tokens: HashMap<[u8; 32], Session>,
    /// Client address (IPv6 by /64) → its failed logins.
    failures: HashMap<IpAddr, AddressFailures>,
    /// Client address → its last successful login.
    trusted: HashMap<IpAddr, u64>,
    /// Failed logins from everyone in the minute that began at `.0`.
    global: (u64, u32),
}

/// A login attempt admitted by the limits, counted as a failure until it succeeds.
#[derive(Debug)]
pub struct LoginAttempt {
    client: IpAddr,
    /// The address logged in successfully within the last day.
    trusted: bool,
}

/// Operators, their live tokens and the failed-login limits.
pub struct AdminAuth {
    users: AdminUsers,
    sessions: Mutex<Sessions>,
    limits: LoginLimits,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("users", &self.users)
            .finish_non_exhaustive()
    }
}

impl AdminAuth {
    /// Authentication for `users`, with no live token and the default limits.
    pub fn new(users: AdminUsers) -> Self {
        Self::with_limits(users, LoginLimits::default())
    }

    /// Authentication for `users` under `limits`.
    pub fn with_limits(users: AdminUsers, limits: LoginLimits) -> Self {
        Self {
            users,
            sessions: Mutex::new(Sessions::default()),
            limits,
        }
    }

    /// The operators.
    pub fn users(&self) -> &AdminUsers {
        &self.users
    }

    /// Checks a password and issues a token, all on the calling thread. CPU-heavy (argon2): the
    /// HTTP API runs [`AdminUsers::verify`] on a [`PasswordPool`] between [`Self::begin_login`]
    /// and [`Self::finish_login`] instead.
    pub fn login(
        &self,
        client: IpAddr,
        user: &str,
        password: &str,
        now: u64,
    ) -> Result<IssuedToken, AdminError> {
        let attempt = self.begin_login(client, now)?;
        let verified = self.users.verify(user, password);
        self.finish_login(attempt, user, verified, now)
    }

    /// Admits a login attempt from `client`, or refuses it under the limits. The attempt counts
    /// as a failure from now on and is forgiven if it succeeds: concurrent attempts cannot all slip
    /// past the limit while argon2 runs.
    pub fn begin_login(&self, client: IpAddr, now: u64) -> Result<LoginAttempt, AdminError> {
        let client = limit_key(client);
        let limits = self.limits;
        let mut sessions = self.lock();
        let sessions = &mut *sessions;
        if sessions.global.0 + 60 <= now {
            sessions.global = (now, 0);
        }
        let trusted = sessions
            .trusted
            .get(&client)
            .is_some_and(|&at| now < at + TRUSTED_FOR_SECS);
        if !trusted && sessions.global.1 >= limits.global_failures_per_minute {
            return Err(AdminError::TooManyAttempts {
                retry_after: (sessions.global.0 + 60).saturating_sub(now).max(1),
            });
        }
        if let Some(entry) = sessions.failures.get(&client) {
            if now < entry.blocked_until {
                return Err(AdminError::TooManyAttempts {
                    retry_after: entry.blocked_until - now,
                });
            }
        }
        if !sessions.failures.contains_key(&client)
            && sessions.failures.len() >= MAX_TRACKED_ADDRESSES
        {
            let forget = limits.forget_after_secs;
            sessions
                .failures
                .retain(|_, f| now < f.last + forget || now < f.blocked_until);
            if sessions.failures.len() >= MAX_TRACKED_ADDRESSES {
                let oldest = sessions
                    .failures
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(addr, _)| *addr);
                if let Some(addr) = oldest {
                    sessions.failures.remove(&addr);
                }
            }
        }
        let entry = sessions.failures.entry(client).or_insert(AddressFailures {
            count: 0,
            last: now,
            blocked_until: 0,
        });
        if now >= entry.last + limits.forget_after_secs && now >= entry.blocked_until {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = now;
        if entry.count > limits.free_failures {
            let doublings = (entry.count - limits.free_failures - 1).min(20);
            let backoff = (1u64 << doublings).min(limits.max_backoff_secs);
            entry.blocked_until = now + backoff;
        }
        sessions.global.1 = sessions.global.1.saturating_add(1);
        Ok(LoginAttempt { client, trusted })
    }

    /// Undoes an admitted attempt whose password was never checked (the pool was busy).
    pub fn abandon_login(&self, attempt: LoginAttempt) {
        let mut sessions = self.lock();
        sessions.global.1 = sessions.global.1.saturating_sub(1);
        if let Some(entry) = sessions.failures.get_mut(&attempt.client) {
            entry.count = entry.count.saturating_sub(1);
            if entry.count <= self.limits.free_failures {
                entry.blocked_until = 0;
            }
        }
    }

    /// Ends an admitted attempt: a token if `verified`, else the failure stands.
    pub fn finish_login(
        &self,
        attempt: LoginAttempt,
        user: &str,
        verified: bool,
        now: u64,
    ) -> Result<IssuedToken, AdminError> {
        if !verified {
            return Err(AdminError::InvalidCredentials);
        }
        let mut raw = Zeroizing::new([0u8; TOKEN_LEN]);
        SystemRandom::new()
            .fill(raw.as_mut())
            .map_err(|_| internal("random source failed"))?;
        let token = Zeroizing::new(BASE64URL.encode(raw.as_ref()));
        let mut sessions = self.lock();
        sessions.failures.remove(&attempt.client);
        sessions.global.1 = sessions.global.1.saturating_sub(1);
        if !sessions.trusted.contains_key(&attempt.client)
            && sessions.trusted.len() >= MAX_TRUSTED_ADDRESSES
        {
            sessions
                .trusted
                .retain(|_, &mut at| now < at + TRUSTED_FOR_SECS);
            if sessions.trusted.len() >= MAX_TRUSTED_ADDRESSES {
                let oldest = sessions
                    .trusted
                    .iter()
                    .min_by_key(|(_, &at)| at)
                    .map(|(addr, _)| *addr);
                if let Some(addr) = oldest {
                    sessions.trusted.remove(&addr);
                }
            }
        }
        sessions.trusted.insert(attempt.client, now);
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

    /// Ends a token's session at once (a login whose audit record could not be written).
    pub fn revoke(&self, token: &str) {
        self.lock().tokens.remove(&token_hash(token));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The key the limits count under: an IPv4 address, or an IPv6 address's /64 (one host usually
/// holds a whole /64), with IPv4-mapped IPv6 addresses read as IPv4.
fn limit_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The threads that check passwords: argon2id takes 19 MiB and tens of milliseconds per check, so
/// the checks run on a fixed few threads (their memory is reused from check to check) with a short
/// queue, and a login beyond the queue is refused at once as [`AdminError::Busy`].
pub struct PasswordPool {
    queue: Arc<JobQueue>,
    threads: usize,
}

/// Two lanes of waiting checks: addresses that logged in successfully within the last day go
/// first and have a lane of their own, so that a flood from many new addresses, which fills the
/// other lane, does not keep an operator out.
struct JobQueue {
    lanes: Mutex<Lanes>,
    ready: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct Lanes {
    trusted: VecDeque<Job>,
    others: VecDeque<Job>,
    closed: bool,
}

impl JobQueue {
    fn push(&self, job: Job, trusted: bool) -> Result<(), AdminError> {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        let lane = if trusted {
            &mut lanes.trusted
        } else {
            &mut lanes.others
        };
        if lane.len() >= self.capacity {
            return Err(AdminError::Busy { retry_after: 1 });
        }
        lane.push_back(job);
        drop(lanes);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, trusted lane first; `None` once the pool is dropped.
    fn pop(&self) -> Option<Job> {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(job) = lanes
                .trusted
                .pop_front()
                .or_else(|| lanes.others.pop_front())
            {
                return Some(job);
            }
            if lanes.closed {
                return None;
            }
            lanes = self
                .ready
                .wait(lanes)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for PasswordPool {
    fn drop(&mut self) {
        self.queue
            .lanes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.queue.ready.notify_all();
    }
}

impl std::fmt::Debug for PasswordPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordPool")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl PasswordPool {
    /// Half the machine's cores (1 to 4) with 8 checks waiting per lane: logins never take every
    /// core from transfers, and at most a few hundred milliseconds of checks wait.
    pub fn with_defaults() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new((cores / 2).clamp(1, 4), 8)
    }

    /// `threads` checking threads and `queue` checks waiting at most in each lane. The threads
    /// end when the pool is dropped. If no thread can be started, every check is refused as busy.
    pub fn new(threads: usize, queue: usize) -> Self {
        let queue = Arc::new(JobQueue {
            lanes: Mutex::new(Lanes::default()),
            ready: Condvar::new(),
            capacity: queue,
        });
        let mut started = 0;
        for n in 0..threads.max(1) {
            let jobs = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("kbs-password-{n}"))
                .spawn(move || {
                    while let Some(job) = jobs.pop() {
                        job();
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        if started == 0 {
            // Nothing would ever take a job: refuse every check rather than queue it forever.
            queue
                .lanes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .closed = true;
        }
        Self {
            queue,
            threads: started,
        }
    }

    /// Checks `password` for `user` on the pool, or refuses at once when the attempt's lane is
    /// full.
    pub async fn verify(
        &self,
        users: Arc<AdminAuth>,
        attempt: &LoginAttempt,
        user: String,
        password: Zeroizing<String>,
    ) -> Result<bool, AdminError> {
        if self.threads == 0 {
            return Err(internal("no password thread could be started"));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(users.users.verify(&user, &password));
        });
        self.queue.push(job, attempt.trusted)?;
        answer
            .await
            .map_err(|_| internal("a password check was dropped"))
    }
}

fn token_hash(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
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
