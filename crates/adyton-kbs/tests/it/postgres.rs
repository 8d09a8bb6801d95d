//! The store suite, the crash test and PostgreSQL's own checks, against a real server.
//!
//! The server comes from `ADYTON_TEST_POSTGRES_URL`, a URL of a role that may create databases
//! (`eval "$(./scripts/postgres start)"` makes one). Each test works in a database of its own,
//! created for it and dropped after it, so the tests run in parallel without seeing each other's
//! rows. Without the variable the tests that need a server say "skipped" and pass, unless
//! `ADYTON_REQUIRE_POSTGRES=1` (as in `scripts/test`), when they fail.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use adyton_kbs::store::postgres::{PostgresOptions, PostgresStore, CONNECT_TIMEOUT};
use adyton_kbs::store::{KeyRecord, Store};
use adyton_kbs::KbsError;
use sqlx::{Connection as _, Executor as _, PgConnection};

use crate::store::{self, assert_empty, assert_intact, key, policy, DURABILITY_POLICY};

const URL_ENV: &str = "ADYTON_TEST_POSTGRES_URL";
const REQUIRE_ENV: &str = "ADYTON_REQUIRE_POSTGRES";

/// The server's URL, or `None` (after saying so) when the tests are to be skipped.
fn server_url() -> Option<String> {
    match std::env::var(URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") => panic!(
            "{URL_ENV} is not set, and {REQUIRE_ENV}=1 requires the PostgreSQL tests: start a \
             server with `eval \"$(./scripts/postgres start)\"`"
        ),
        _ => {
            eprintln!("skipped: {URL_ENV} is not set");
            None
        }
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, format!("?{query}")),
        None => (rest, String::new()),
    };
    let authority = before_query.split('/').next().unwrap();
    format!("{scheme}://{authority}/{database}{query}")
}

/// Runs `sql` on the server's administrative connection.
fn admin(url: &str, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = PgConnection::connect(url).await.unwrap();
        conn.execute(sql).await.unwrap();
        conn.close().await.unwrap();
    });
}

/// A database of one test's own, dropped (with any session still on it) when the test ends.
struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// `None` when the tests are skipped.
    fn create() -> Option<Self> {
        let admin_url = server_url()?;
        let name = format!("adyton_test_{}", uuid::Uuid::new_v4().simple());
        admin(&admin_url, &format!("CREATE DATABASE {name}"));
        Some(Self {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
        })
    }

    fn connect(&self) -> PostgresStore {
        PostgresStore::connect(&self.url).unwrap()
    }

    fn open(&self) -> Box<dyn Store> {
        Box::new(self.connect())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::panic::catch_unwind(|| admin(&self.admin_url, &sql));
        // A second panic while a failed test unwinds would abort its report.
        if dropped.is_err() && !std::thread::panicking() {
            panic!("cannot drop the test database {}", self.name);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The suite

#[test]
fn postgres_passes_the_suite() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    store::suite(&db.connect());
}

#[test]
fn postgres_passes_the_persistence_suite() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    store::persistence_suite(&|| db.open());
}

#[test]
fn postgres_policy_lifecycle() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    store::policy_lifecycle(&db.connect());
}

#[test]
fn postgres_key_lifecycle() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    store::key_lifecycle(&db.connect());
}

#[test]
fn postgres_ids_are_unique() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    store::ids_are_unique(&db.connect());
}

#[test]
fn postgres_key_needs_existing_policy() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    store::key_needs_existing_policy(&db.connect());
}

#[test]
fn postgres_policy_in_use_is_not_deleted() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    store::policy_in_use_is_not_deleted(&db.connect());
}

#[test]
fn postgres_lists_are_ordered_by_id() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    store::lists_are_ordered_by_id(&db.connect());
}

#[test]
fn postgres_store_is_usable_from_many_threads() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let store = db.connect();
    store.insert_policy(&policy("policy-t")).unwrap();
    std::thread::scope(|scope| {
        // More threads than the pool has connections.
        for t in 0..12 {
            let store = &store;
            scope.spawn(move || {
                for i in 0..5 {
                    store
                        .insert_key(&key(&format!("key-{t}-{i}"), "policy-t"))
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(store.keys().unwrap().len(), 60);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL's own checks

/// The HTTP server calls the store from `spawn_blocking` threads of its own runtime, and drops it
/// (with its state) inside async code.
#[test]
fn postgres_store_works_on_another_runtimes_blocking_threads() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = db.url.clone();
    server.block_on(async move {
        let store = tokio::task::spawn_blocking(move || PostgresStore::connect(&url).unwrap())
            .await
            .unwrap();
        let store = std::sync::Arc::new(store);
        let calls: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                tokio::task::spawn_blocking(move || {
                    let policy_id = format!("policy-{t}");
                    store.insert_policy(&policy(&policy_id)).unwrap();
                    store
                        .insert_key(&key(&format!("key-{t}"), &policy_id))
                        .unwrap();
                    assert_intact(&store.key(&format!("key-{t}")).unwrap().unwrap());
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        let keys = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.keys().unwrap())
                .await
                .unwrap()
        };
        assert_eq!(keys.len(), 4);
        // The last handle goes here, inside async code.
        drop(store);
    });
}

/// Two stores on one database, as two replicas: a policy deleted while a key for it is inserted
/// ends one way or the other, each side told the truth.
#[test]
fn postgres_replicas_race_to_delete_a_policy_and_use_it() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let (a, b) = (db.connect(), db.connect());
    for i in 0..20 {
        let policy_id = format!("policy-race-{i:02}");
        let key_id = format!("key-race-{i:02}");
        a.insert_policy(&policy(&policy_id)).unwrap();
        let (inserted, deleted) = std::thread::scope(|scope| {
            let insert = scope.spawn(|| a.insert_key(&key(&key_id, &policy_id)));
            let delete = scope.spawn(|| b.delete_policy(&policy_id));
            (insert.join().unwrap(), delete.join().unwrap())
        });
        match (inserted, deleted) {
            (Ok(()), Err(KbsError::PolicyInUse { keys: 1, .. })) => {
                assert!(b.policy(&policy_id).unwrap().is_some());
                assert_intact(&b.key(&key_id).unwrap().unwrap());
                assert!(b.delete_key(&key_id).unwrap());
                assert!(b.delete_policy(&policy_id).unwrap());
            }
            (Err(KbsError::UnknownPolicy { id }), Ok(true)) => {
                assert_eq!(id, policy_id);
                assert_eq!(b.key(&key_id).unwrap(), None);
            }
            other => panic!("round {i}: unexpected {other:?}"),
        }
        assert_empty(&a);
    }
}

#[test]
fn postgres_refuses_a_server_that_may_lose_commits() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    admin(
        &db.admin_url,
        &format!("ALTER DATABASE {} SET synchronous_commit = off", db.name),
    );
    match PostgresStore::connect(&db.url) {
        Err(KbsError::Store { reason }) => {
            assert!(reason.contains("synchronous_commit = off"), "{reason}")
        }
        other => panic!("synchronous_commit off: unexpected {other:?}"),
    }
}

#[test]
fn postgres_wrong_password_is_refused_without_echoing_it() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let wrong = "Wrong-Pa55word-never-printed";
    let (scheme, rest) = db.url.split_once("://").unwrap();
    let (userinfo, host) = rest.split_once('@').unwrap();
    let user = userinfo.split(':').next().unwrap();
    let url = format!("{scheme}://{user}:{wrong}@{host}");
    match PostgresStore::connect(&url) {
        Err(KbsError::Store { reason }) => {
            assert!(reason.contains("password"), "{reason}");
            assert!(!reason.contains(wrong), "{reason}");
        }
        other => panic!("wrong password: unexpected {other:?}"),
    }
}

/// The parts of the suite's records that a client could send odd values in round-trip exactly.
#[test]
fn postgres_round_trips_records_exactly() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let store = db.connect();
    let mut odd = policy("policy-ü-\u{1f512}");
    odd.table = serde_json::json!({
        "measurement": ["00".repeat(48)],
        "nested": {"b": [1, 2.5, -3, 18_446_744_073_709_551_615u64], "a": null, "c": "x\"y\\z\n"},
    });
    odd.created_at = i64::MAX as u64;
    store.insert_policy(&odd).unwrap();
    assert_eq!(store.policy(&odd.id).unwrap(), Some(odd.clone()));
    let mut record: KeyRecord = key("key-\u{e9}", &odd.id);
    record.key_length = u32::MAX;
    record.created_at = 0;
    store.insert_key(&record).unwrap();
    assert_eq!(store.key(&record.id).unwrap(), Some(record));
    // A time beyond BIGINT is refused, not wrapped.
    let mut late = policy("policy-late");
    late.created_at = u64::MAX;
    assert!(matches!(
        store.insert_policy(&late),
        Err(KbsError::Store { .. })
    ));
    assert_eq!(store.policy("policy-late").unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Recovery: dead connections and stuck statements

/// Ends every session on the test's database but the caller's, as a server restart (or an
/// operator's `pg_terminate_backend`) would; returns how many it ended.
fn terminate_sessions(db: &TestDatabase) -> i64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = PgConnection::connect(&db.admin_url).await.unwrap();
        let ended: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()) AS ended",
        )
        .bind(&db.name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        ended
    })
}

/// The pool's connections are all killed between two calls: the next calls work, on new
/// connections, without a restart of the store.
#[test]
fn postgres_store_reconnects_after_its_connections_are_terminated() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let store = db.connect();
    store.insert_policy(&policy("policy-pg")).unwrap();
    // Several connections in the pool, all idle afterwards.
    std::thread::scope(|scope| {
        for t in 0..4 {
            let store = &store;
            scope.spawn(move || {
                store
                    .insert_key(&key(&format!("key-{t}"), "policy-pg"))
                    .unwrap();
            });
        }
    });
    for round in 0..3 {
        let ended = terminate_sessions(&db);
        assert!(ended >= 1, "round {round}: no session to end");
        let keys = store.keys().unwrap();
        assert_eq!(keys.len(), 4 + round, "round {round}");
        keys.iter().for_each(assert_intact);
        store
            .insert_key(&key(&format!("key-after-{round}"), "policy-pg"))
            .unwrap();
    }
}

/// A statement that waits on a lock is cancelled by the server after the statement timeout, and
/// the call fails with the reason; once the lock is gone the store works again.
#[test]
fn postgres_statement_timeout_ends_a_stuck_call() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let options = PostgresOptions::default().with_statement_timeout(Duration::from_millis(300));
    let store = PostgresStore::connect_with(&db.url, &options).unwrap();
    store.insert_policy(&policy("policy-lock")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Another session holds the table, as a long migration or a stuck transaction would.
    let mut holder = runtime.block_on(async {
        let mut conn = PgConnection::connect(&db.url).await.unwrap();
        conn.execute("BEGIN; LOCK TABLE policies IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        conn
    });
    match store.policies() {
        Err(KbsError::Store { reason }) => {
            assert!(reason.contains("statement timeout"), "{reason}")
        }
        other => panic!("a call on a locked table: unexpected {other:?}"),
    }
    runtime.block_on(async {
        holder.execute("ROLLBACK").await.unwrap();
        holder.close().await.unwrap();
    });
    assert_eq!(store.policies().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Unreachable servers: no server needed

/// A URL whose password the messages must not show.
const SECRET: &str = "S3cret-Pa55word-never-printed";

fn assert_store_error_without_secret(result: Result<PostgresStore, KbsError>) -> String {
    match result {
        Err(KbsError::Store { reason }) => {
            assert!(!reason.contains(SECRET), "{reason}");
            reason
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn postgres_refused_connection_fails_at_once() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://kbs:{SECRET}@127.0.0.1:{port}/kbs");
    let started = Instant::now();
    let reason = assert_store_error_without_secret(PostgresStore::connect(&url));
    assert!(
        started.elapsed() < CONNECT_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    assert!(
        reason.contains(&format!("kbs@127.0.0.1:{port}/kbs")),
        "{reason}"
    );
}

#[test]
fn postgres_silent_server_times_out() {
    // A socket that accepts connections (the kernel does) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("postgres://kbs:{SECRET}@127.0.0.1:{port}/kbs?sslmode=disable");
    let started = Instant::now();
    let reason = assert_store_error_without_secret(PostgresStore::connect(&url));
    let took = started.elapsed();
    assert!(took >= CONNECT_TIMEOUT, "{took:?}");
    assert!(took < CONNECT_TIMEOUT + Duration::from_secs(5), "{took:?}");
    assert!(reason.contains("no answer"), "{reason}");
}

// ---------------------------------------------------------------------------------------------
// Durability: a writer killed with SIGKILL loses no acknowledged write

const CHILD_ENV: &str = "ADYTON_KBS_POSTGRES_CHILD";
const CHILD_TEST: &str = "postgres::durability_child";

/// The child side of `postgres_acknowledged_writes_survive_sigkill`: does nothing unless the
/// environment names a database.
#[test]
fn durability_child() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    store::write_until_killed(&PostgresStore::connect(&url).unwrap());
}

#[test]
fn postgres_acknowledged_writes_survive_sigkill() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    db.connect()
        .insert_policy(&policy(DURABILITY_POLICY))
        .unwrap();
    let acknowledged = store::kill_writer_mid_burst(CHILD_TEST, (CHILD_ENV, db.url.as_ref()));
    store::assert_survived(&db.connect(), &acknowledged);
}
