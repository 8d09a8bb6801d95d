//! The shared store, on PostgreSQL: several key broker replicas on one database.
//!
//! Two tables, `policies` and `keys` (`migrations/`, applied by [`PostgresStore::connect`]), with
//! a foreign key from a key to its policy. The database enforces the trait's rules: the primary
//! keys make ids unique, the foreign key refuses a key whose policy does not exist. Deleting a
//! policy locks its row (`FOR UPDATE`) before counting its keys: a concurrent key insert must take
//! a share lock on the same row for its foreign-key check, so it waits, and then finds the policy
//! gone. A write returns after its commit, which PostgreSQL has flushed to its write-ahead log;
//! `connect` refuses a server where that is switched off (`fsync` or `synchronous_commit`).
//!
//! A server that restarts, or a connection that dies, costs no more than the calls in flight at
//! that moment: the pool tests each connection before handing it out (`test_before_acquire`) and
//! opens a new one in place of a dead one, within [`CONNECT_TIMEOUT`]. A statement runs at most
//! [`PostgresOptions::statement_timeout`] on the server (PostgreSQL's `statement_timeout`, set at
//! connection start), and a call waits at most that plus [`CONNECT_TIMEOUT`] on the client, so
//! that a stuck lock or a silent network fails a call instead of holding it. A full disk on the
//! server (SQLSTATE `53100`) is [`KbsError::StorageFull`].
//!
//! The trait is synchronous and sqlx is not: the store owns a small tokio runtime and blocks on
//! it for each call. Calls may come from any thread that is not itself running async code: a plain
//! thread, or a `spawn_blocking` thread of another runtime (as in the HTTP server).

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use adyton_attest::TeeKind;
use sqlx::error::ErrorKind;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection as _, PgConnection, Row as _};
use tokio::runtime::Runtime;

use super::{store_error, KeyRecord, PolicyRecord, Store};
use crate::error::{KbsError, Result};

/// How long connecting (TCP, TLS, authentication) may take, and how long a call may wait for a
/// connection of the pool.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The default of [`PostgresOptions::statement_timeout`]: every statement of the broker is a
/// single-row or small-table operation that takes milliseconds.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per store: a broker's calls are short, and every replica has a pool of its own.
const POOL_SIZE: u32 = 8;

/// How long an unused connection stays in the pool. Short, so that after a server restart few
/// dead connections are left to find (each is found and replaced when next taken).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How the store uses its server, beyond the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The longest a statement may run on the server before PostgreSQL cancels it (its
    /// `statement_timeout`, set on every connection of the pool); the call then fails.
    pub statement_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            statement_timeout: STATEMENT_TIMEOUT,
        }
    }
}

impl PostgresOptions {
    /// These options with another statement timeout (at least one millisecond).
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout.max(Duration::from_millis(1));
        self
    }
}

/// The schema, embedded at build time from `crates/adyton-kbs/migrations`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The PostgreSQL store: a connection pool, and the runtime that drives it.
pub struct PostgresStore {
    pool: PgPool,
    runtime: OwnRuntime,
    /// The longest a call waits: the statement timeout, and a connection's.
    call_timeout: Duration,
    /// `user@host:port/database`: the server in messages, never with the password.
    target: String,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`, with
    /// libpq's parameters such as `sslmode`), and brings its schema up to date.
    ///
    /// Errors are [`KbsError::Store`] and never contain the password. An unreachable or silent
    /// server fails after [`CONNECT_TIMEOUT`]. The options are the defaults: see
    /// [`PostgresStore::connect_with`].
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &PostgresOptions::default())
    }

    /// [`PostgresStore::connect`], with `settings`.
    pub fn connect_with(url: &str, settings: &PostgresOptions) -> Result<Self> {
        let secrets = UrlSecrets::of(url);
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| store_error("the PostgreSQL URL is not valid", secrets.scrub(&e)))?
            .application_name("adyton-kbs");
        let target = describe(&options);
        let runtime = OwnRuntime::new()?;
        let pool = runtime.block_on(async {
            let context = format!("cannot connect to PostgreSQL at {target}");
            let mut conn =
                tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                    .await
                    .map_err(|_| {
                        store_error(
                            &context,
                            format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                        )
                    })?
                    .map_err(|e| store_error(&context, secrets.scrub(&e)))?;
            check_durability(&mut conn, &target).await?;
            MIGRATOR
                .run(&mut conn)
                .await
                .map_err(|e| store_error(&format!("cannot migrate the schema at {target}"), e))?;
            // A failed goodbye changes nothing: the server ends the session either way.
            let _ = conn.close().await;
            // Lazy: the connection above proved the server is there, and each call opens what it
            // needs within the same timeout.
            let timeout_ms = settings.statement_timeout.as_millis().max(1);
            let options = options.options([("statement_timeout", format!("{timeout_ms}ms"))]);
            Ok::<_, KbsError>(
                PgPoolOptions::new()
                    .max_connections(POOL_SIZE)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    // A connection that died with its server (or was terminated) is found here,
                    // closed, and replaced, instead of failing the call that would take it.
                    .test_before_acquire(true)
                    .idle_timeout(IDLE_TIMEOUT)
                    .connect_lazy_with(options),
            )
        })??;
        Ok(Self {
            pool,
            runtime,
            call_timeout: settings.statement_timeout + CONNECT_TIMEOUT,
            target,
        })
    }

    /// The server and database, as shown in messages (without the password).
    pub fn target(&self) -> &str {
        &self.target
    }

    fn run<T>(&self, future: impl Future<Output = Result<T>>) -> Result<T> {
        let limit = self.call_timeout;
        self.runtime.block_on(async {
            tokio::time::timeout(limit, future)
                .await
                .unwrap_or_else(|_| {
                    Err(store_error(
                        &format!("PostgreSQL at {}", self.target),
                        format!("no answer within {} ms", limit.as_millis()),
                    ))
                })
        })?
    }

    async fn fetch_policy(&self, id: &str) -> Result<Option<PolicyRecord>> {
        let row = sqlx::query(
            "SELECT id, attestation_type, policy_table::text AS policy_table, created_at \
             FROM policies WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| pg_error(&format!("cannot read policy `{id}`"), e))?;
        row.map(|row| policy_from_row(&row)).transpose()
    }

    async fn fetch_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        let row = sqlx::query(
            "SELECT id, transfer_policy_id, algorithm, key_length, created_at, sealed_key \
             FROM keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| pg_error(&format!("cannot read key `{id}`"), e))?;
        row.map(|row| key_from_row(&row)).transpose()
    }

    async fn remove_policy(&self, id: &str) -> Result<bool> {
        let failed = |what: &str, e: sqlx::Error| pg_error(&format!("{what} `{id}`"), e);
        let mut txn = self
            .pool
            .begin()
            .await
            .map_err(|e| failed("cannot begin deleting policy", e))?;
        // The row lock holds off concurrent key inserts for this policy until the commit.
        let found = sqlx::query("SELECT 1 FROM policies WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *txn)
            .await
            .map_err(|e| failed("cannot lock policy", e))?;
        if found.is_none() {
            return Ok(false);
        }
        let users: i64 =
            sqlx::query_scalar("SELECT count(*) FROM keys WHERE transfer_policy_id = $1")
                .bind(id)
                .fetch_one(&mut *txn)
                .await
                .map_err(|e| failed("cannot count the keys of policy", e))?;
        if users > 0 {
            return Err(KbsError::PolicyInUse {
                id: id.to_owned(),
                keys: usize::try_from(users).unwrap_or(usize::MAX),
            });
        }
        sqlx::query("DELETE FROM policies WHERE id = $1")
            .bind(id)
            .execute(&mut *txn)
            .await
            .map_err(|e| failed("cannot delete policy", e))?;
        txn.commit()
            .await
            .map_err(|e| failed("cannot commit the deletion of policy", e))?;
        Ok(true)
    }
}

impl Store for PostgresStore {
    fn insert_policy(&self, record: &PolicyRecord) -> Result<()> {
        let created_at = to_bigint("created_at", record.created_at)?;
        self.run(async {
            sqlx::query(
                "INSERT INTO policies (id, attestation_type, policy_table, created_at) \
                 VALUES ($1, $2, $3::jsonb, $4)",
            )
            .bind(&record.id)
            .bind(record.attestation_type.as_str())
            .bind(record.table.to_string())
            .bind(created_at)
            .execute(&self.pool)
            .await
            .map_err(|e| match kind(&e) {
                Some(ErrorKind::UniqueViolation) => KbsError::AlreadyExists {
                    id: record.id.clone(),
                },
                _ => pg_error(&format!("cannot write policy `{}`", record.id), e),
            })?;
            Ok(())
        })
    }

    fn policy(&self, id: &str) -> Result<Option<PolicyRecord>> {
        self.run(self.fetch_policy(id))
    }

    fn policies(&self) -> Result<Vec<PolicyRecord>> {
        self.run(async {
            // `id` has the "C" collation (see the migration), so this order is bytewise.
            let rows = sqlx::query(
                "SELECT id, attestation_type, policy_table::text AS policy_table, created_at \
                 FROM policies ORDER BY id",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(|e| pg_error("cannot list policies", e))?;
            rows.iter().map(policy_from_row).collect()
        })
    }

    fn delete_policy(&self, id: &str) -> Result<bool> {
        self.run(self.remove_policy(id))
    }

    fn insert_key(&self, record: &KeyRecord) -> Result<()> {
        let created_at = to_bigint("created_at", record.created_at)?;
        self.run(async {
            sqlx::query(
                "INSERT INTO keys \
                 (id, transfer_policy_id, algorithm, key_length, created_at, sealed_key) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&record.id)
            .bind(&record.transfer_policy_id)
            .bind(&record.algorithm)
            .bind(i64::from(record.key_length))
            .bind(created_at)
            .bind(&record.sealed_key)
            .execute(&self.pool)
            .await
            .map_err(|e| match kind(&e) {
                // The unique index is checked as the row goes in, the foreign key at the end of
                // the statement: a taken id is reported first, as the trait's other backends do.
                Some(ErrorKind::UniqueViolation) => KbsError::AlreadyExists {
                    id: record.id.clone(),
                },
                Some(ErrorKind::ForeignKeyViolation) => KbsError::UnknownPolicy {
                    id: record.transfer_policy_id.clone(),
                },
                _ => pg_error(&format!("cannot write key `{}`", record.id), e),
            })?;
            Ok(())
        })
    }

    fn key(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.run(self.fetch_key(id))
    }

    fn keys(&self) -> Result<Vec<KeyRecord>> {
        self.run(async {
            let rows = sqlx::query(
                "SELECT id, transfer_policy_id, algorithm, key_length, created_at, sealed_key \
                 FROM keys ORDER BY id",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(|e| pg_error("cannot list keys", e))?;
            rows.iter().map(key_from_row).collect()
        })
    }

    fn delete_key(&self, id: &str) -> Result<bool> {
        self.run(async {
            // The row is gone for every reader at the commit. Its bytes stay in the table's pages
            // until vacuum reuses them, as with any database: one reason the key is sealed under
            // the master key.
            let done = sqlx::query("DELETE FROM keys WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(|e| pg_error(&format!("cannot delete key `{id}`"), e))?;
            Ok(done.rows_affected() > 0)
        })
    }
}

/// Refuses a server that may lose a commit it has acknowledged: the trait promises that a write
/// that returned survives a crash.
async fn check_durability(conn: &mut PgConnection, target: &str) -> Result<()> {
    let (fsync, synchronous_commit): (String, String) =
        sqlx::query_as("SELECT current_setting('fsync'), current_setting('synchronous_commit')")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| store_error(&format!("cannot read the settings of {target}"), e))?;
    for (name, value) in [("fsync", fsync), ("synchronous_commit", synchronous_commit)] {
        if value == "off" {
            return Err(KbsError::Store {
                reason: format!(
                    "PostgreSQL at {target} has {name} = off: an acknowledged write could be lost \
                     in a crash, and the key store needs every write durable; set it to on"
                ),
            });
        }
    }
    Ok(())
}

/// The error of a failed statement: [`KbsError::StorageFull`] when the server's disk is full
/// (SQLSTATE `53100`, `disk_full`), [`KbsError::Store`] otherwise.
fn pg_error(context: &str, e: sqlx::Error) -> KbsError {
    const DISK_FULL: &str = "53100";
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(DISK_FULL) => {
            KbsError::StorageFull {
                reason: format!("{context}: {e}"),
            }
        }
        _ => store_error(context, e),
    }
}

fn kind(e: &sqlx::Error) -> Option<ErrorKind> {
    match e {
        sqlx::Error::Database(db) => Some(db.kind()),
        _ => None,
    }
}

fn to_bigint(field: &str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| KbsError::Store {
        reason: format!("`{field}` {value} does not fit PostgreSQL's BIGINT"),
    })
}

fn policy_from_row(row: &PgRow) -> Result<PolicyRecord> {
    let id: String = column(row, "policy", "?", "id")?;
    let kind: String = column(row, "policy", &id, "attestation_type")?;
    let table: String = column(row, "policy", &id, "policy_table")?;
    let created_at: i64 = column(row, "policy", &id, "created_at")?;
    let unreadable = |field: &str, e: &dyn fmt::Display| KbsError::Store {
        reason: format!("policy `{id}` is unreadable: `{field}`: {e}"),
    };
    Ok(PolicyRecord {
        attestation_type: TeeKind::from_str(&kind)
            .map_err(|e| unreadable("attestation_type", &e))?,
        table: serde_json::from_str(&table).map_err(|e| unreadable("policy_table", &e))?,
        created_at: u64::try_from(created_at).map_err(|e| unreadable("created_at", &e))?,
        id,
    })
}

fn key_from_row(row: &PgRow) -> Result<KeyRecord> {
    let id: String = column(row, "key", "?", "id")?;
    let key_length: i64 = column(row, "key", &id, "key_length")?;
    let created_at: i64 = column(row, "key", &id, "created_at")?;
    let unreadable = |field: &str, e: &dyn fmt::Display| KbsError::Store {
        reason: format!("key `{id}` is unreadable: `{field}`: {e}"),
    };
    Ok(KeyRecord {
        transfer_policy_id: column(row, "key", &id, "transfer_policy_id")?,
        algorithm: column(row, "key", &id, "algorithm")?,
        key_length: u32::try_from(key_length).map_err(|e| unreadable("key_length", &e))?,
        created_at: u64::try_from(created_at).map_err(|e| unreadable("created_at", &e))?,
        sealed_key: column(row, "key", &id, "sealed_key")?,
        id,
    })
}

fn column<'r, T>(row: &'r PgRow, kind: &str, id: &str, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(name)
        .map_err(|e| store_error(&format!("{kind} `{id}` is unreadable: `{name}`"), e))
}

/// `user@host:port/database` (or the socket directory for a Unix socket): never the password.
fn describe(options: &PgConnectOptions) -> String {
    let server = match options.get_socket() {
        Some(dir) => dir.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let database = options.get_database().unwrap_or(options.get_username());
    format!("{}@{server}/{database}", options.get_username())
}

/// The password of a URL, in the forms it may take, to scrub from messages. sqlx's own messages
/// do not quote the URL; this holds if that ever changes.
struct UrlSecrets(Vec<String>);

impl UrlSecrets {
    fn of(url: &str) -> Self {
        let mut found = Vec::new();
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let (authority, query) = match rest.split_once('?') {
            Some((before, query)) => (before, query),
            None => (rest, ""),
        };
        let authority = authority.split('/').next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                found.push(password.to_owned());
            }
        }
        for pair in query.split('&') {
            if let Some(("password", password)) = pair.split_once('=') {
                found.push(password.to_owned());
            }
        }
        let decoded: Vec<String> = found.iter().map(|p| percent_decode(p)).collect();
        found.extend(decoded);
        found.retain(|p| !p.is_empty());
        // The longest first, so that a password containing another is scrubbed whole.
        found.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Self(found)
    }

    fn scrub(&self, message: &dyn fmt::Display) -> String {
        let mut text = message.to_string();
        for secret in &self.0 {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A multi-thread tokio runtime of the store's own, shut down without waiting when the store is
/// dropped. Dropping a runtime blocks, which tokio refuses inside async code; a store may well be
/// dropped there (with the state of an HTTP server).
struct OwnRuntime(Option<Runtime>);

impl OwnRuntime {
    fn new() -> Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("adyton-kbs-postgres")
            .enable_all()
            .build()
            .map(|runtime| Self(Some(runtime)))
            .map_err(|e| store_error("cannot start the PostgreSQL store's runtime", e))
    }

    fn block_on<T>(&self, future: impl Future<Output = T>) -> Result<T> {
        match &self.0 {
            Some(runtime) => Ok(runtime.block_on(future)),
            None => Err(KbsError::Store {
                reason: "the PostgreSQL store is shut down".to_owned(),
            }),
        }
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[test]
    fn secrets_are_found_in_every_form() {
        let secrets = UrlSecrets::of("postgres://kbs:p%40ss%3Aword@db.example:5432/kbs");
        let scrubbed = secrets.scrub(&"a p%40ss%3Aword and a p@ss:word");
        assert_eq!(scrubbed, "a *** and a ***");
        let secrets = UrlSecrets::of("postgres://db.example/kbs?user=kbs&password=hunter2");
        assert_eq!(secrets.scrub(&"hunter2!"), "***!");
        let secrets = UrlSecrets::of("postgres://kbs@db.example/kbs");
        assert_eq!(secrets.scrub(&"kbs@db.example"), "kbs@db.example");
    }

    /// A server's error with a SQLSTATE, as sqlx reports it.
    #[derive(Debug)]
    struct ServerError(&'static str);

    impl fmt::Display for ServerError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for ServerError {}

    impl sqlx::error::DatabaseError for ServerError {
        fn message(&self) -> &str {
            "could not extend file: No space left on device"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    #[test]
    fn a_full_disk_on_the_server_is_storage_full() {
        let full = sqlx::Error::Database(Box::new(ServerError("53100")));
        match pg_error("cannot write key `k`", full) {
            KbsError::StorageFull { reason } => assert!(reason.contains("key `k`"), "{reason}"),
            other => panic!("disk_full: unexpected {other:?}"),
        }
        // Other server errors (here: a statement timeout) are store errors.
        let cancelled = sqlx::Error::Database(Box::new(ServerError("57014")));
        assert!(matches!(
            pg_error("cannot list keys", cancelled),
            KbsError::Store { .. }
        ));
    }

    #[test]
    fn target_shows_no_password() {
        let options =
            PgConnectOptions::from_str("postgres://kbs:hunter2@db.example:6543/keys").unwrap();
        assert_eq!(describe(&options), "kbs@db.example:6543/keys");
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        for url in [
            "postgres://kbs:hunter2@db.example:notaport/keys",
            "postgres://kbs:hunter2@db.example/keys?sslmode=hunter2",
        ] {
            match PostgresStore::connect(url) {
                Err(KbsError::Store { reason }) => {
                    assert!(!reason.contains("hunter2"), "{reason}")
                }
                other => panic!("{url}: unexpected {other:?}"),
            }
        }
    }
}
