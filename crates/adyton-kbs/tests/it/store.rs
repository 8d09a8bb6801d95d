//! Store tests: one suite that every `Store` backend must pass, the redb backend's own checks
//! (file mode, corrupt records, a crash in the middle of writes), and the master key.
//!
//! The suite's checks take `&dyn Store` (an empty store) or an opener that returns a fresh handle
//! on the same storage, so that another backend runs them unchanged (`postgres.rs`), and so does
//! the crash test (`kill_writer_mid_burst`, `assert_survived`).

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use adyton_attest::TeeKind;
use adyton_envelope::v2::{self, EncryptOptions};
use adyton_envelope::{Aes256Key, EnvelopeError};
use adyton_kbs::http::ApiError;
use adyton_kbs::master_key::{MasterKey, MASTER_KEY_FILE, MODEL_KEY_CONTENT_TYPE};
use adyton_kbs::store::redb::RedbStore;
use adyton_kbs::store::{KeyRecord, PolicyRecord, Store};
use adyton_kbs::KbsError;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use http_body_util::BodyExt as _;
use redb::backends::FileBackend;
use redb::StorageBackend;

// ---------------------------------------------------------------------------------------------
// Records

pub(crate) fn policy(id: &str) -> PolicyRecord {
    PolicyRecord {
        id: id.into(),
        attestation_type: TeeKind::Snp,
        table: serde_json::json!({
            "measurement": ["ab".repeat(48)],
            "enforce_tcb_upto_date": true,
        }),
        created_at: 1_700_000_000,
    }
}

/// A fixed master key, so that a child process and its parent agree on it.
fn master() -> MasterKey {
    MasterKey::from_key(Aes256Key::from_slice(&[0x5a; 32]).unwrap())
}

/// A model key derived from the record id, so that a reader can check the record is intact.
fn model_key_for(id: &str) -> Aes256Key {
    let mut bytes = [0u8; 32];
    for (i, b) in id.bytes().cycle().take(32).enumerate() {
        bytes[i] = b ^ (i as u8);
    }
    Aes256Key::from_slice(&bytes).unwrap()
}

pub(crate) fn key(id: &str, policy_id: &str) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        transfer_policy_id: policy_id.into(),
        algorithm: "AES".into(),
        key_length: 256,
        created_at: 1_700_000_001,
        sealed_key: master().seal(id, &model_key_for(id)).unwrap(),
    }
}

/// Checks that `record` is intact: its sealed key opens under its own id and is the key expected.
pub(crate) fn assert_intact(record: &KeyRecord) {
    let opened = master().unseal(&record.id, &record.sealed_key).unwrap();
    assert_eq!(
        opened.expose_secret(),
        model_key_for(&record.id).expose_secret(),
        "key {}",
        record.id
    );
}

fn ids<T>(records: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    records.iter().map(|r| id(r).to_owned()).collect()
}

pub(crate) fn assert_empty(store: &dyn Store) {
    assert!(store.policies().unwrap().is_empty(), "policies left over");
    assert!(store.keys().unwrap().is_empty(), "keys left over");
}

// ---------------------------------------------------------------------------------------------
// The suite every backend passes. Each check starts from an empty store and leaves it empty.

/// Runs every check of the suite, one after another, on one store.
pub fn suite(store: &dyn Store) {
    policy_lifecycle(store);
    key_lifecycle(store);
    ids_are_unique(store);
    key_needs_existing_policy(store);
    policy_in_use_is_not_deleted(store);
    lists_are_ordered_by_id(store);
}

/// Opens a fresh handle on the same storage; the previous handle is dropped first.
pub type Opener<'a> = &'a dyn Fn() -> Box<dyn Store>;

/// Runs the checks that need the storage reopened.
pub fn persistence_suite(open: Opener<'_>) {
    reopen_preserves_everything(open);
    deleted_key_is_gone_after_reopen(open);
}

pub fn policy_lifecycle(store: &dyn Store) {
    assert_empty(store);
    let record = policy("policy-a");
    store.insert_policy(&record).unwrap();
    assert_eq!(store.policy("policy-a").unwrap(), Some(record.clone()));
    assert_eq!(store.policy("policy-b").unwrap(), None);
    assert_eq!(store.policy("").unwrap(), None);
    assert_eq!(store.policies().unwrap(), vec![record.clone()]);
    // The policy converts to an attestation policy after the round trip.
    store.policy("policy-a").unwrap().unwrap().policy().unwrap();

    assert!(store.delete_policy("policy-a").unwrap());
    assert!(!store.delete_policy("policy-a").unwrap());
    assert!(!store.delete_policy("never-was").unwrap());
    assert_eq!(store.policy("policy-a").unwrap(), None);
    assert_empty(store);
}

pub fn key_lifecycle(store: &dyn Store) {
    assert_empty(store);
    store.insert_policy(&policy("policy-k")).unwrap();
    let record = key("key-1", "policy-k");
    store.insert_key(&record).unwrap();

    let stored = store.key("key-1").unwrap().unwrap();
    assert_eq!(stored, record);
    assert_intact(&stored);
    assert_eq!(store.key("key-2").unwrap(), None);
    assert_eq!(store.keys().unwrap(), vec![record]);

    assert!(store.delete_key("key-1").unwrap());
    assert!(!store.delete_key("key-1").unwrap());
    assert!(!store.delete_key("never-was").unwrap());
    // Gone: neither by id nor in the list, so its sealed bytes cannot be read back.
    assert_eq!(store.key("key-1").unwrap(), None);
    assert!(store.keys().unwrap().is_empty());

    assert!(store.delete_policy("policy-k").unwrap());
    assert_empty(store);
}

pub fn ids_are_unique(store: &dyn Store) {
    assert_empty(store);
    let original = policy("policy-u");
    store.insert_policy(&original).unwrap();
    let mut other = policy("policy-u");
    other.attestation_type = TeeKind::Tdx;
    other.created_at += 1;
    match store.insert_policy(&other) {
        Err(KbsError::AlreadyExists { id }) => assert_eq!(id, "policy-u"),
        other => panic!("duplicate policy: unexpected {other:?}"),
    }
    assert_eq!(store.policy("policy-u").unwrap(), Some(original));

    let original = key("key-u", "policy-u");
    store.insert_key(&original).unwrap();
    store.insert_policy(&policy("policy-v")).unwrap();
    let moved = key("key-u", "policy-v");
    match store.insert_key(&moved) {
        Err(KbsError::AlreadyExists { id }) => assert_eq!(id, "key-u"),
        other => panic!("duplicate key: unexpected {other:?}"),
    }
    assert_eq!(store.key("key-u").unwrap(), Some(original));
    assert_eq!(store.keys().unwrap().len(), 1);

    assert!(store.delete_key("key-u").unwrap());
    assert!(store.delete_policy("policy-u").unwrap());
    assert!(store.delete_policy("policy-v").unwrap());
    assert_empty(store);
}

pub fn key_needs_existing_policy(store: &dyn Store) {
    assert_empty(store);
    match store.insert_key(&key("key-orphan", "no-such-policy")) {
        Err(KbsError::UnknownPolicy { id }) => assert_eq!(id, "no-such-policy"),
        other => panic!("key without policy: unexpected {other:?}"),
    }
    assert_eq!(store.key("key-orphan").unwrap(), None);

    // A policy that existed once but was deleted is unknown as well.
    store.insert_policy(&policy("policy-gone")).unwrap();
    assert!(store.delete_policy("policy-gone").unwrap());
    match store.insert_key(&key("key-orphan", "policy-gone")) {
        Err(KbsError::UnknownPolicy { id }) => assert_eq!(id, "policy-gone"),
        other => panic!("key with deleted policy: unexpected {other:?}"),
    }
    assert_empty(store);
}

pub fn policy_in_use_is_not_deleted(store: &dyn Store) {
    assert_empty(store);
    store.insert_policy(&policy("policy-used")).unwrap();
    store.insert_policy(&policy("policy-other")).unwrap();
    store.insert_key(&key("key-a", "policy-used")).unwrap();
    store.insert_key(&key("key-b", "policy-used")).unwrap();
    store.insert_key(&key("key-c", "policy-other")).unwrap();

    let in_use = |expected: usize| match store.delete_policy("policy-used") {
        Err(KbsError::PolicyInUse { id, keys }) => {
            assert_eq!(id, "policy-used");
            assert_eq!(keys, expected, "keys of another policy must not count");
        }
        other => panic!("policy in use: unexpected {other:?}"),
    };
    in_use(2);
    assert!(store.policy("policy-used").unwrap().is_some());
    assert!(store.delete_key("key-a").unwrap());
    in_use(1);
    assert!(store.delete_key("key-b").unwrap());
    assert!(store.delete_policy("policy-used").unwrap());
    assert_eq!(store.policy("policy-used").unwrap(), None);
    // The other policy's key is untouched.
    assert_intact(&store.key("key-c").unwrap().unwrap());

    assert!(store.delete_key("key-c").unwrap());
    assert!(store.delete_policy("policy-other").unwrap());
    assert_empty(store);
}

pub fn lists_are_ordered_by_id(store: &dyn Store) {
    assert_empty(store);
    let mut policy_ids: Vec<String> = (0..8).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    policy_ids.extend(["Z", "a", "a0", "b"].map(String::from));
    for id in &policy_ids {
        store.insert_policy(&policy(id)).unwrap();
    }
    let mut key_ids: Vec<String> = (0..8).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    key_ids.extend(["key-10", "key-9", "key-1"].map(String::from));
    for (i, id) in key_ids.iter().enumerate() {
        store
            .insert_key(&key(id, &policy_ids[i % policy_ids.len()]))
            .unwrap();
    }
    policy_ids.sort();
    key_ids.sort();
    assert_eq!(ids(&store.policies().unwrap(), |p| &p.id), policy_ids);
    let keys = store.keys().unwrap();
    assert_eq!(ids(&keys, |k| &k.id), key_ids);
    keys.iter().for_each(assert_intact);

    for id in &key_ids {
        assert!(store.delete_key(id).unwrap());
    }
    for id in &policy_ids {
        assert!(store.delete_policy(id).unwrap());
    }
    assert_empty(store);
}

pub fn reopen_preserves_everything(open: Opener<'_>) {
    let (policies, keys) = {
        let store = open();
        assert_empty(&*store);
        store.insert_policy(&policy("policy-r1")).unwrap();
        store.insert_policy(&policy("policy-r2")).unwrap();
        store.insert_key(&key("key-r1", "policy-r1")).unwrap();
        store.insert_key(&key("key-r2", "policy-r2")).unwrap();
        store.insert_key(&key("key-r3", "policy-r2")).unwrap();
        (store.policies().unwrap(), store.keys().unwrap())
    };
    let store = open();
    assert_eq!(store.policies().unwrap(), policies);
    assert_eq!(store.keys().unwrap(), keys);
    store.keys().unwrap().iter().for_each(assert_intact);
    // The constraints hold across the reopen too.
    assert!(matches!(
        store.delete_policy("policy-r2"),
        Err(KbsError::PolicyInUse { keys: 2, .. })
    ));

    for id in ["key-r1", "key-r2", "key-r3"] {
        assert!(store.delete_key(id).unwrap());
    }
    for id in ["policy-r1", "policy-r2"] {
        assert!(store.delete_policy(id).unwrap());
    }
    drop(store);
    assert_empty(&*open());
}

pub fn deleted_key_is_gone_after_reopen(open: Opener<'_>) {
    {
        let store = open();
        assert_empty(&*store);
        store.insert_policy(&policy("policy-d")).unwrap();
        store.insert_key(&key("key-d1", "policy-d")).unwrap();
        store.insert_key(&key("key-d2", "policy-d")).unwrap();
        assert!(store.delete_key("key-d1").unwrap());
    }
    let store = open();
    assert_eq!(store.key("key-d1").unwrap(), None);
    assert_eq!(ids(&store.keys().unwrap(), |k| &k.id), vec!["key-d2"]);
    assert!(!store.delete_key("key-d1").unwrap());
    // The id is free again.
    store.insert_key(&key("key-d1", "policy-d")).unwrap();

    assert!(store.delete_key("key-d1").unwrap());
    assert!(store.delete_key("key-d2").unwrap());
    assert!(store.delete_policy("policy-d").unwrap());
    drop(store);
    assert_empty(&*open());
}

// ---------------------------------------------------------------------------------------------
// The suite on redb

fn redb_at(path: &Path) -> Box<dyn Store> {
    Box::new(RedbStore::open(path).unwrap())
}

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kbs.redb");
    (dir, path)
}

#[test]
fn redb_passes_the_suite() {
    let (_dir, path) = temp_db();
    suite(&*redb_at(&path));
}

#[test]
fn redb_passes_the_persistence_suite() {
    let (_dir, path) = temp_db();
    persistence_suite(&|| redb_at(&path));
}

#[test]
fn redb_policy_lifecycle() {
    let (_dir, path) = temp_db();
    policy_lifecycle(&*redb_at(&path));
}

#[test]
fn redb_key_lifecycle() {
    let (_dir, path) = temp_db();
    key_lifecycle(&*redb_at(&path));
}

#[test]
fn redb_ids_are_unique() {
    let (_dir, path) = temp_db();
    ids_are_unique(&*redb_at(&path));
}

#[test]
fn redb_key_needs_existing_policy() {
    let (_dir, path) = temp_db();
    key_needs_existing_policy(&*redb_at(&path));
}

#[test]
fn redb_policy_in_use_is_not_deleted() {
    let (_dir, path) = temp_db();
    policy_in_use_is_not_deleted(&*redb_at(&path));
}

#[test]
fn redb_lists_are_ordered_by_id() {
    let (_dir, path) = temp_db();
    lists_are_ordered_by_id(&*redb_at(&path));
}

#[test]
fn redb_store_is_usable_from_many_threads() {
    let (_dir, path) = temp_db();
    let store = RedbStore::open(&path).unwrap();
    store.insert_policy(&policy("policy-t")).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4 {
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
    assert_eq!(store.keys().unwrap().len(), 20);
}

// ---------------------------------------------------------------------------------------------
// redb's own checks

#[test]
fn redb_creates_parent_directories_and_a_private_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/kbs.redb");
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.path(), path);
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "database file mode {mode:o}");
    let mode = fs::metadata(dir.path().join("a/b"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode & 0o077, 0, "created directory mode {mode:o}");
    // Debug names the file and nothing else.
    assert!(format!("{store:?}").contains("kbs.redb"));
}

#[test]
fn redb_narrows_an_existing_files_mode() {
    let (_dir, path) = temp_db();
    drop(RedbStore::open(&path).unwrap());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    drop(RedbStore::open(&path).unwrap());
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn redb_refuses_a_file_that_is_not_a_database() {
    let (_dir, path) = temp_db();
    fs::write(
        &path,
        b"this is not a redb database, just some text that is long enough",
    )
    .unwrap();
    match RedbStore::open(&path) {
        Err(KbsError::Store { reason }) => assert!(reason.contains("kbs.redb"), "{reason}"),
        other => panic!("not a database: unexpected {other:?}"),
    }
}

#[test]
fn redb_refuses_a_second_open_of_the_same_file() {
    let (_dir, path) = temp_db();
    let _first = RedbStore::open(&path).unwrap();
    match RedbStore::open(&path) {
        Err(KbsError::Store { .. }) => {}
        other => panic!("second open: unexpected {other:?}"),
    }
}

/// Writes raw bytes under `id` in one of the store's tables, bypassing `RedbStore`.
fn write_raw(path: &Path, table: &str, id: &str, value: &[u8]) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let definition = redb::TableDefinition::<&str, &[u8]>::new(table);
        let mut table = txn.open_table(definition).unwrap();
        table.insert(id, value).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn redb_reports_undecodable_records_by_id() {
    let (_dir, path) = temp_db();
    {
        let store = RedbStore::open(&path).unwrap();
        store.insert_policy(&policy("policy-ok")).unwrap();
        store.insert_key(&key("key-ok", "policy-ok")).unwrap();
    }
    write_raw(&path, "keys", "key-bad", b"{not json");
    write_raw(&path, "policies", "policy-bad", b"\x00\x01\x02");
    let store = RedbStore::open(&path).unwrap();

    let names = |result: Result<_, KbsError>, id: &str| match result {
        Err(KbsError::Store { reason }) => assert!(reason.contains(id), "{reason}"),
        other => panic!("corrupt {id}: unexpected {other:?}"),
    };
    names(store.key("key-bad").map(drop), "key-bad");
    names(store.keys().map(drop), "key-bad");
    names(store.policy("policy-bad").map(drop), "policy-bad");
    names(store.policies().map(drop), "policy-bad");
    // The policy-in-use check reads every key, and says which one it cannot read.
    names(store.delete_policy("policy-ok").map(drop), "key-bad");
    // Intact records stay readable, and a corrupt record can be deleted.
    assert_intact(&store.key("key-ok").unwrap().unwrap());
    assert!(store.delete_key("key-bad").unwrap());
    assert_eq!(store.keys().unwrap().len(), 1);
}

#[test]
fn redb_refuses_a_record_filed_under_another_id() {
    let (_dir, path) = temp_db();
    {
        let store = RedbStore::open(&path).unwrap();
        store.insert_policy(&policy("policy-x")).unwrap();
    }
    // A valid record of key-1, filed under key-2.
    let json = serde_json::to_vec(&key("key-1", "policy-x")).unwrap();
    write_raw(&path, "keys", "key-2", &json);
    let store = RedbStore::open(&path).unwrap();
    match store.key("key-2") {
        Err(KbsError::Store { reason }) => {
            assert!(
                reason.contains("key-2") && reason.contains("key-1"),
                "{reason}"
            )
        }
        other => panic!("misfiled record: unexpected {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A full disk: redb's file fails with ENOSPC on demand, and the store recovers without a restart

/// `ENOSPC`, as the kernel reports a full disk.
fn disk_full() -> std::io::Error {
    std::io::Error::from_raw_os_error(28)
}

/// The database file, whose writes, syncs and growth fail with `ENOSPC` while `full` is set, as
/// on a full disk (reads still work there).
#[derive(Debug)]
struct FillableDisk {
    file: FileBackend,
    full: Arc<AtomicBool>,
}

impl FillableDisk {
    fn check(&self) -> std::io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            Err(disk_full())
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for FillableDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.file.read(offset, len)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        if len > self.file.len()? {
            self.check()?;
        }
        self.file.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> std::io::Result<()> {
        self.check()?;
        self.file.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }
}

/// A store on a disk that fills up when the returned flag is set.
fn store_on_fillable_disk(path: &Path) -> (RedbStore, Arc<AtomicBool>) {
    let full = Arc::new(AtomicBool::new(false));
    let flag = full.clone();
    let store = RedbStore::open_with_backend(path, move |file| FillableDisk {
        file,
        full: flag.clone(),
    })
    .unwrap();
    (store, full)
}

fn assert_storage_full<T: std::fmt::Debug>(what: &str, result: Result<T, KbsError>) {
    match result {
        Err(KbsError::StorageFull { reason }) => {
            assert!(reason.contains("No space left"), "{what}: {reason}")
        }
        other => panic!("{what} on a full disk: unexpected {other:?}"),
    }
}

#[test]
fn redb_recovers_from_a_full_disk_without_a_restart() {
    let (_dir, path) = temp_db();
    let (store, full) = store_on_fillable_disk(&path);
    store.insert_policy(&policy("policy-f")).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let id = format!("key-before-{i:02}");
        store.insert_key(&key(&id, "policy-f")).unwrap();
        acknowledged.push(id);
    }

    full.store(true, Ordering::SeqCst);
    for i in 0..5 {
        assert_storage_full(
            "insert",
            store.insert_key(&key(&format!("key-full-{i}"), "policy-f")),
        );
    }
    assert_storage_full("new policy", store.insert_policy(&policy("policy-full")));
    assert_storage_full("delete", store.delete_key(&acknowledged[0]).map(drop));
    // This disk refuses every write, so the reopen fails too (redb's recovery writes), and the
    // store stays closed: reads fail the same clear way until space is freed.
    assert_storage_full("list", store.keys());
    assert_storage_full("read", store.key(&acknowledged[1]));

    // Space is freed: the next calls work, on the same store.
    full.store(false, Ordering::SeqCst);
    let listed = store.keys().unwrap();
    assert_eq!(
        listed.iter().map(|k| k.id.clone()).collect::<Vec<_>>(),
        acknowledged,
        "acknowledged keys are all there, and no refused write is"
    );
    listed.iter().for_each(assert_intact);
    store.insert_key(&key("key-after", "policy-f")).unwrap();
    store.insert_policy(&policy("policy-after")).unwrap();
    assert!(store.delete_key(&acknowledged[0]).unwrap());
    assert_eq!(store.keys().unwrap().len(), acknowledged.len());

    // And the file holds it all for the next process.
    drop(store);
    let reopened = RedbStore::open(&path).unwrap();
    let keys = reopened.keys().unwrap();
    assert_eq!(keys.len(), acknowledged.len());
    assert!(keys.iter().any(|k| k.id == "key-after"));
    keys.iter().for_each(assert_intact);
    assert_eq!(reopened.policies().unwrap().len(), 2);
}

/// Readers and writers on other threads while the disk fills and is freed, ten times: each call
/// succeeds or fails cleanly (never a half-open store, never a panic), no acknowledged key is
/// lost, and every call works afterwards.
#[test]
fn redb_reopens_under_concurrent_calls() {
    let (_dir, path) = temp_db();
    let (store, full) = store_on_fillable_disk(&path);
    store.insert_policy(&policy("policy-c")).unwrap();
    for i in 0..10 {
        store
            .insert_key(&key(&format!("key-base-{i}"), "policy-c"))
            .unwrap();
    }
    let acknowledged = std::sync::Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    let clean_failures = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (store, acknowledged, done, clean_failures) =
                (&store, &acknowledged, &done, &clean_failures);
            scope.spawn(move || {
                // Bounded, in case the other side stops early.
                for i in 0..100_000 {
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    let id = format!("key-{t}-{i:05}");
                    match store.insert_key(&key(&id, "policy-c")) {
                        Ok(()) => acknowledged.lock().unwrap().push(id),
                        Err(KbsError::StorageFull { .. } | KbsError::Store { .. }) => {
                            clean_failures.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(other) => panic!("insert {id}: unexpected {other:?}"),
                    }
                    match store.keys() {
                        Ok(keys) => assert!(keys.len() >= 10),
                        Err(KbsError::StorageFull { .. } | KbsError::Store { .. }) => {
                            clean_failures.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(other) => panic!("list: unexpected {other:?}"),
                    }
                }
            });
        }
        scope.spawn(|| {
            for round in 0..10 {
                full.store(true, Ordering::SeqCst);
                match store.insert_key(&key(&format!("key-filler-{round}"), "policy-c")) {
                    Err(KbsError::StorageFull { .. } | KbsError::Store { .. }) => {}
                    other => panic!("round {round}: a write on a full disk: {other:?}"),
                }
                full.store(false, Ordering::SeqCst);
                // Space is back: this call works, whatever the others are doing.
                assert!(store.keys().unwrap().len() >= 10, "round {round}");
            }
            done.store(true, Ordering::SeqCst);
        });
    });
    let keys = store.keys().unwrap();
    for id in acknowledged.lock().unwrap().iter() {
        assert!(
            keys.iter().any(|k| &k.id == id),
            "acknowledged {id} is lost"
        );
    }
    assert!(!keys.iter().any(|k| k.id.starts_with("key-filler")));
    keys.iter().for_each(assert_intact);
    store.insert_key(&key("key-last", "policy-c")).unwrap();
    eprintln!(
        "{} acknowledged inserts, {} clean failures on other threads",
        acknowledged.lock().unwrap().len(),
        clean_failures.load(Ordering::SeqCst)
    );
}

#[test]
fn storage_full_is_507_with_a_clear_message() {
    let error = KbsError::StorageFull {
        reason: "cannot commit /var/lib/adyton/kbs.redb: No space left on device".into(),
    };
    let api = ApiError::from(error);
    assert_eq!(api.status(), StatusCode::INSUFFICIENT_STORAGE);
    let response = api.into_response();
    let body = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(response.into_body().collect())
        .unwrap()
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body["error"],
        "the key broker's storage is full; retry once space is freed"
    );
    // The path stays in the log.
    assert!(!body.to_string().contains("/var/lib"));
}

// ---------------------------------------------------------------------------------------------
// Durability: a writer killed with SIGKILL loses no acknowledged write

const CHILD_ENV: &str = "ADYTON_KBS_STORE_CHILD";
const CHILD_TEST: &str = "store::durability_child";
const ACK: &str = "ADYTON-ACK ";
pub(crate) const DURABILITY_POLICY: &str = "policy-durable";

/// The child side of a crash test: inserts keys under `DURABILITY_POLICY` until it is killed,
/// printing each id after its insert has returned.
pub(crate) fn write_until_killed(store: &dyn Store) {
    let mut out = std::io::stdout().lock();
    // A bound, so that a child whose parent died does not write forever.
    for i in 0..100_000 {
        let id = format!("key-{i:06}");
        store.insert_key(&key(&id, DURABILITY_POLICY)).unwrap();
        writeln!(out, "{ACK}{id}").unwrap();
        out.flush().unwrap();
    }
}

/// Runs the test `child_test` of this binary with `env` set, lets it acknowledge 50 inserts, kills
/// it with SIGKILL (most likely in the middle of a write) and returns every id it acknowledged.
pub(crate) fn kill_writer_mid_burst(child_test: &str, env: (&str, &OsStr)) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
        .env(env.0, env.1)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ack = |line: &str| {
        line.find(ACK).map(|at| {
            line[at + ACK.len()..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned()
        })
    };
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 50 {
        match lines.next() {
            Some(line) => acknowledged.extend(ack(&line.unwrap())),
            None => panic!(
                "the child stopped after {} acknowledged inserts: {:?}",
                acknowledged.len(),
                child.wait()
            ),
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was not killed: {status:?}");
    // Whatever the child printed before it died was acknowledged as well.
    for line in lines {
        acknowledged.extend(ack(&line.unwrap()));
    }
    acknowledged
}

/// Checks a store reopened after `kill_writer_mid_burst`: every acknowledged key is there and
/// intact, at most one unacknowledged insert beyond them is there, and the store takes writes.
pub(crate) fn assert_survived(store: &dyn Store, acknowledged: &[String]) {
    for id in acknowledged {
        let record = store
            .key(id)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged key {id} is lost"));
        assert_eq!(record.transfer_policy_id, DURABILITY_POLICY);
        assert_intact(&record);
    }
    let keys = store.keys().unwrap();
    keys.iter().for_each(assert_intact);
    assert!(
        keys.len() == acknowledged.len() || keys.len() == acknowledged.len() + 1,
        "{} keys for {} acknowledged inserts",
        keys.len(),
        acknowledged.len()
    );
    store
        .insert_key(&key("key-after", DURABILITY_POLICY))
        .unwrap();
    assert!(matches!(
        store.delete_policy(DURABILITY_POLICY),
        Err(KbsError::PolicyInUse { .. })
    ));
}

/// The child side of `redb_acknowledged_writes_survive_sigkill`: does nothing unless the
/// environment names a database.
#[test]
fn durability_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    write_until_killed(&RedbStore::open(Path::new(&path)).unwrap());
}

#[test]
fn redb_acknowledged_writes_survive_sigkill() {
    let (_dir, path) = temp_db();
    {
        let store = RedbStore::open(&path).unwrap();
        store.insert_policy(&policy(DURABILITY_POLICY)).unwrap();
    }
    let acknowledged = kill_writer_mid_burst(CHILD_TEST, (CHILD_ENV, path.as_os_str()));
    assert_survived(&RedbStore::open(&path).unwrap(), &acknowledged);
}

// ---------------------------------------------------------------------------------------------
// The master key

fn write_key_file(dir: &Path, bytes: &[u8], mode: u32) -> PathBuf {
    let path = dir.join("master.key");
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Whether two master keys are the same key: one opens what the other sealed.
fn same_key(a: &MasterKey, b: &MasterKey) -> bool {
    let model_key = Aes256Key::generate().unwrap();
    let sealed = a.seal("probe", &model_key).unwrap();
    b.unseal("probe", &sealed)
        .is_ok_and(|k| k.expose_secret() == model_key.expose_secret())
}

fn master_key_reason<T: std::fmt::Debug>(result: Result<T, KbsError>) -> String {
    match result {
        Err(KbsError::MasterKey { reason }) => reason,
        other => panic!("expected a master key error, got {other:?}"),
    }
}

#[test]
fn master_key_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o600, 0o400] {
        let path = write_key_file(dir.path(), &[7; 32], mode);
        let from_file = MasterKey::from_file(&path).unwrap();
        let expected = MasterKey::from_key(Aes256Key::from_slice(&[7; 32]).unwrap());
        assert!(same_key(&from_file, &expected));
        fs::remove_file(&path).unwrap();
    }
}

#[test]
fn master_key_file_open_to_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
        let path = write_key_file(dir.path(), &[7; 32], mode);
        let reason = master_key_reason(MasterKey::from_file(&path));
        assert!(reason.contains(&path.display().to_string()), "{reason}");
        assert!(reason.contains(&format!("{mode:04o}")), "{reason}");
        fs::remove_file(&path).unwrap();
    }
}

#[test]
fn master_key_file_of_wrong_length_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for len in [0, 16, 31, 33, 64, 4096] {
        let path = write_key_file(dir.path(), &vec![7; len], 0o600);
        let reason = master_key_reason(MasterKey::from_file(&path));
        assert!(reason.contains(&path.display().to_string()), "{reason}");
        assert!(reason.contains("exactly 32"), "{reason}");
        fs::remove_file(&path).unwrap();
    }
}

#[test]
fn master_key_file_missing_or_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.key");
    assert!(master_key_reason(MasterKey::from_file(&missing)).contains("missing.key"));
    let subdir = dir.path().join("sub");
    fs::create_dir(&subdir).unwrap();
    fs::set_permissions(&subdir, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(master_key_reason(MasterKey::from_file(&subdir)).contains("not a regular file"));
}

#[test]
fn master_key_from_env_value_accepts_hex_and_base64() {
    let bytes: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let expected = MasterKey::from_key(Aes256Key::from_slice(&bytes).unwrap());
    let lower = hex::encode(&bytes);
    let upper = lower.to_ascii_uppercase();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    for value in [
        lower.clone(),
        upper,
        b64.clone(),
        format!("  {lower}\n"),
        format!("{b64}\n"),
    ] {
        let key = MasterKey::from_env_value(&value).unwrap();
        assert!(same_key(&key, &expected), "value {value:?}");
    }
}

#[test]
fn master_key_from_env_value_refuses_bad_values_without_echoing_them() {
    use base64::Engine as _;
    let b64 = |len: usize| base64::engine::general_purpose::STANDARD.encode(vec![0xa7; len]);
    let cases = [
        String::new(),
        "00".repeat(31) + "0",                      // 63 hex digits
        "00".repeat(33),                            // 66 hex digits
        "0".repeat(62) + "zq",                      // 64 characters, not all hex
        b64(31),                                    // base64 of 31 bytes
        b64(33),                                    // base64 of 33 bytes
        b64(64),                                    // far too long
        b64(32).trim_end_matches('=').to_owned(),   // unpadded
        "secret-value-that-is-neither!".to_owned(), // garbage
    ];
    for value in cases {
        let reason = master_key_reason(MasterKey::from_env_value(&value));
        if !value.is_empty() {
            assert!(
                !reason.contains(value.trim()),
                "{reason:?} echoes {value:?}"
            );
        }
    }
}

#[test]
fn master_key_is_generated_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data/kbs");
    let (first, created) = MasterKey::load_or_generate(&data).unwrap();
    assert!(created);
    let path = data.join(MASTER_KEY_FILE);
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(&data).unwrap().count(), 1);

    let (second, created) = MasterKey::load_or_generate(&data).unwrap();
    assert!(!created);
    assert!(same_key(&first, &second));
    assert!(same_key(&first, &MasterKey::from_file(&path).unwrap()));
    assert_eq!(fs::read_dir(&data).unwrap().count(), 1);

    // A fresh directory gets a different key.
    let (other, _) = MasterKey::load_or_generate(&dir.path().join("other")).unwrap();
    assert!(!same_key(&first, &other));
}

#[test]
fn master_key_generated_concurrently_is_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kbs");
    let results: Vec<(MasterKey, bool)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| MasterKey::load_or_generate(&data).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
    for (key, _) in &results {
        assert!(same_key(key, &results[0].0));
    }
    assert_eq!(fs::read_dir(&data).unwrap().count(), 1);
}

#[test]
fn master_key_generation_refuses_an_unsafe_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_key_file(dir.path(), &[7; 32], 0o644);
    assert_eq!(path.file_name().unwrap(), MASTER_KEY_FILE);
    master_key_reason(MasterKey::load_or_generate(dir.path()));
    // The existing file is left as it was, not replaced.
    assert_eq!(fs::read(&path).unwrap(), vec![7; 32]);
}

#[test]
fn master_key_debug_is_redacted() {
    let key = MasterKey::from_key(Aes256Key::from_slice(&[0x41; 32]).unwrap());
    let shown = format!("{key:?}");
    assert_eq!(shown, "MasterKey(<redacted>)");
}

#[test]
fn sealed_key_round_trips() {
    let master = MasterKey::load_or_generate(tempfile::tempdir().unwrap().path())
        .unwrap()
        .0;
    let model_key = Aes256Key::generate().unwrap();
    let sealed = master.seal("key-1", &model_key).unwrap();
    // The sealed form does not contain the key.
    assert!(!sealed
        .windows(32)
        .any(|w| w == model_key.expose_secret().as_slice()));
    // The record id and the content type are in the authenticated header.
    let (header, _) = v2::Header::parse(&sealed).unwrap();
    assert_eq!(header.key_id, "key-1");
    assert_eq!(header.content_type, MODEL_KEY_CONTENT_TYPE);
    let opened = master.unseal("key-1", &sealed).unwrap();
    assert_eq!(opened.expose_secret(), model_key.expose_secret());
    // Sealing twice gives different bytes (fresh nonce prefix), both of which open.
    let again = master.seal("key-1", &model_key).unwrap();
    assert_ne!(sealed, again);
    assert_eq!(
        master.unseal("key-1", &again).unwrap().expose_secret(),
        model_key.expose_secret()
    );
}

#[test]
fn sealed_key_does_not_open_under_another_key_id() {
    let master = master();
    let sealed = master.seal("key-1", &model_key_for("key-1")).unwrap();
    let reason = master_key_reason(master.unseal("key-2", &sealed));
    assert!(
        reason.contains("key-1") && reason.contains("key-2"),
        "{reason}"
    );
}

#[test]
fn sealed_key_does_not_open_under_another_master_key() {
    let sealed = master().seal("key-1", &model_key_for("key-1")).unwrap();
    let other = MasterKey::from_key(Aes256Key::generate().unwrap());
    match other.unseal("key-1", &sealed) {
        Err(KbsError::Envelope(EnvelopeError::AuthenticationFailed { .. })) => {}
        other => panic!("another master key: unexpected {other:?}"),
    }
}

#[test]
fn sealed_key_with_a_rewritten_header_does_not_open() {
    // Rewriting the key id in the header (same length) to move the key to another record fails
    // authentication: the header is the AAD of the chunk.
    let master = master();
    let sealed = master.seal("key-1", &model_key_for("key-1")).unwrap();
    let at = sealed.windows(5).position(|w| w == b"key-1").unwrap();
    let mut moved = sealed.clone();
    moved[at + 4] = b'2';
    match master.unseal("key-2", &moved) {
        Err(KbsError::Envelope(EnvelopeError::AuthenticationFailed { .. })) => {}
        other => panic!("rewritten key id: unexpected {other:?}"),
    }
}

#[test]
fn sealed_key_that_is_damaged_does_not_open() {
    let master = master();
    let sealed = master.seal("key-1", &model_key_for("key-1")).unwrap();
    // Every single flipped bit after the header, and every truncation, is refused.
    let (_, header_len) = v2::Header::parse(&sealed).unwrap();
    for at in header_len..sealed.len() {
        let mut flipped = sealed.clone();
        flipped[at] ^= 0x01;
        assert!(
            master.unseal("key-1", &flipped).is_err(),
            "bit flip at {at}"
        );
    }
    for len in 0..sealed.len() {
        assert!(
            master.unseal("key-1", &sealed[..len]).is_err(),
            "truncated to {len}"
        );
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(master.unseal("key-1", &longer).is_err());
}

#[test]
fn sealed_envelope_of_another_content_type_is_refused() {
    let raw = Aes256Key::from_slice(&[0x5a; 32]).unwrap();
    let options = EncryptOptions {
        chunk_size: 64,
        key_id: "key-1".into(),
        content_type: "application/octet-stream".into(),
    };
    let sealed = v2::seal(&raw, &[1; 32], &options).unwrap();
    let reason = master_key_reason(master().unseal("key-1", &sealed));
    assert!(reason.contains("content type"), "{reason}");
}
