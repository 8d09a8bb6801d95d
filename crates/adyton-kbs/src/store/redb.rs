//! The embedded store, on redb (ACID, crash-safe, one file).
//!
//! Two tables, `policies` and `keys`, map a record's id to the record serialised as JSON. Every
//! check that involves both tables (a key's policy exists; a policy is unused before it goes) runs
//! inside the same write transaction as the write it guards, so no concurrent writer can slip in
//! between the check and the write. redb serialises write transactions, and every commit uses
//! redb's default durability (`Immediate`: synced to disk before `commit` returns).
//!
//! After an I/O error (a full disk, above all) redb refuses every later call with "Previous I/O
//! error occurred. Please close and re-open the database". So the store reopens the file itself:
//! the call that met the error takes the handle's write lock (which waits for the calls in flight
//! on the old handle and holds off new ones), drops the database and opens it again, which is
//! redb's crash recovery and keeps every committed transaction. A failed write is not retried (its
//! commit may or may not have reached the disk; the caller is told it failed and may look); a
//! failed read is retried once on the new handle. While the disk stays full, writes fail with
//! [`KbsError::StorageFull`]; if the reopen itself cannot write what recovery needs, the store
//! stays closed and every call fails so, until the first call after space is freed opens the
//! database again: no restart is needed.

use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use ::redb::backends::FileBackend;
use ::redb::{
    Database, ReadableTable, StorageBackend, Table, TableDefinition, TableHandle, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{store_error, KeyRecord, PolicyRecord, Store};
use crate::error::{KbsError, Result};

/// Transfer policies by id.
const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
/// Model keys (sealed) by id.
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");

/// Makes the storage backend of the database from the locked database file.
type WrapBackend = dyn Fn(FileBackend) -> Box<dyn StorageBackend> + Send + Sync;

/// The embedded store: one redb database file.
///
/// Only one `RedbStore` may have a file open at a time (redb locks the file); a second open, in
/// this process or another, is a [`KbsError::Store`].
pub struct RedbStore {
    handle: RwLock<Handle>,
    /// Held by each write call from start to end (redb serialises write transactions too, but a
    /// writer that waits in redb would not see the failure of the one before it).
    writer: Mutex<()>,
    path: PathBuf,
    wrap: Box<WrapBackend>,
}

/// The open database, or none while a reopen after an I/O error has not succeeded yet.
struct Handle {
    db: Option<Database>,
    /// Set by the call that met an I/O error on `db`, until the reopen replaces it.
    failed: AtomicBool,
    /// Counts reopens, so that of several calls that met the same failure only one reopens.
    generation: u64,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// How a failed call goes on once the database is reopened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnIoError {
    /// A read: run it again on the new handle.
    Retry,
    /// A write: report the failure (its commit may have reached the disk or not).
    Fail,
}

/// What the body of a write transaction decided.
enum Decision<T> {
    /// Commit, and return the value.
    Commit(T),
    /// Abort (nothing to write), and return the value.
    Abort(T),
}

/// A failed call, and whether the database must be reopened after it.
struct Failed {
    error: KbsError,
    reopen: bool,
}

impl From<KbsError> for Failed {
    fn from(error: KbsError) -> Self {
        Self {
            error,
            reopen: false,
        }
    }
}

type Attempt<T> = std::result::Result<T, Failed>;

/// Sorts a redb error: an I/O error, or redb's refusal after an earlier one, means the database
/// must be reopened; a full disk is [`KbsError::StorageFull`].
fn redb_error(context: &str, err: impl Into<::redb::Error>) -> Failed {
    match err.into() {
        ::redb::Error::Io(io) => Failed {
            error: KbsError::from_io(context, &io),
            reopen: true,
        },
        err @ ::redb::Error::PreviousIo => Failed {
            error: store_error(context, err),
            reopen: true,
        },
        err => store_error(context, err).into(),
    }
}

impl RedbStore {
    /// Creates or opens the database at `path`.
    ///
    /// Missing parent directories are created with mode 0700. The file is created with mode 0600,
    /// and an existing file that group or others may access is narrowed to 0600: the sealed keys
    /// are encrypted, but nobody else needs to read even those.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_backend(path, |file| file)
    }

    /// [`RedbStore::open`], with the database's I/O going through the backend that `wrap` makes
    /// of the locked file (each time the database is opened or reopened). Tests use it to make
    /// the disk fail on demand.
    pub fn open_with_backend<B: StorageBackend>(
        path: &Path,
        wrap: impl Fn(FileBackend) -> B + Send + Sync + 'static,
    ) -> Result<Self> {
        let wrap: Box<WrapBackend> = Box::new(move |file| Box::new(wrap(file)));
        let db = open_database(path, &wrap)?;
        let store = Self {
            handle: RwLock::new(Handle {
                db: Some(db),
                failed: AtomicBool::new(false),
                generation: 0,
            }),
            writer: Mutex::new(()),
            path: path.to_path_buf(),
            wrap,
        };
        // Create both tables up front, so that a read never meets a missing table.
        store.write(|txn| {
            open_table(txn, POLICIES)?;
            open_table(txn, KEYS)?;
            Ok(Decision::Commit(()))
        })?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `call` on the open database, reopening it after an I/O error (see the module's
    /// documentation). No call ever sees a database that is being reopened.
    fn run<T>(&self, on_io_error: OnIoError, call: impl Fn(&Database) -> Attempt<T>) -> Result<T> {
        let mut reopened = false;
        loop {
            let (generation, outcome) = {
                let handle = self.handle.read().unwrap_or_else(PoisonError::into_inner);
                let outcome = match &handle.db {
                    Some(db) if !handle.failed.load(Ordering::Acquire) => {
                        let outcome = call(db);
                        if matches!(&outcome, Err(failed) if failed.reopen) {
                            // No write may begin on this database any more: redb cannot commit
                            // after a failed commit (it asserts), and the next writer would.
                            handle.failed.store(true, Ordering::Release);
                        }
                        Some(outcome)
                    }
                    // Closed, or failed under another call: nothing was tried yet.
                    _ => None,
                };
                (handle.generation, outcome)
            };
            let failed = match outcome {
                Some(Ok(value)) => return Ok(value),
                Some(Err(failed)) if !failed.reopen => return Err(failed.error),
                Some(Err(failed)) => Some(failed),
                None => None,
            };
            if reopened {
                return Err(failed.map_or_else(|| self.closed(), |failed| failed.error));
            }
            reopened = true;
            match (failed, self.reopen(generation)) {
                (None, Err(error)) => return Err(error),
                (Some(_), Ok(())) if on_io_error == OnIoError::Retry => {}
                (Some(failed), _) => return Err(failed.error),
                (None, Ok(())) => {}
            }
        }
    }

    /// Runs a write transaction: `body` decides whether it commits. Writes run one at a time, each
    /// on a database that no failed write has touched (see [`Handle::failed`]).
    fn write<T>(&self, body: impl Fn(&WriteTransaction) -> Attempt<Decision<T>>) -> Result<T> {
        let _one_writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        self.run(OnIoError::Fail, |db| {
            let txn = begin_write(db)?;
            match body(&txn) {
                Ok(Decision::Commit(value)) => commit(txn).map(|()| value),
                Ok(Decision::Abort(value)) => abort(txn).map(|()| value),
                // Aborted here rather than in redb's drop, which would hide a failed rollback.
                Err(failed) => match abort(txn) {
                    Err(aborted) if aborted.reopen => Err(Failed {
                        error: failed.error,
                        reopen: true,
                    }),
                    _ => Err(failed),
                },
            }
        })
    }

    /// Drops the database of `generation` and opens the file again, unless another call has done
    /// so already. On failure the store stays closed, and the next call tries again.
    fn reopen(&self, generation: u64) -> Result<()> {
        let mut handle = self.handle.write().unwrap_or_else(PoisonError::into_inner);
        let healthy = handle.db.is_some() && !handle.failed.load(Ordering::Acquire);
        if handle.generation != generation && healthy {
            return Ok(());
        }
        handle.generation += 1;
        // The old database goes first: it holds the file's lock.
        if handle.db.take().is_some() {
            eprintln!(
                "adyton-kbs: reopening the key store {} after an I/O error",
                self.path.display()
            );
        }
        handle.db = Some(open_database(&self.path, &self.wrap)?);
        handle.failed.store(false, Ordering::Release);
        Ok(())
    }

    fn closed(&self) -> KbsError {
        KbsError::Store {
            reason: format!(
                "{} is closed after an I/O error; the next call opens it again",
                self.path.display()
            ),
        }
    }

    /// One record by id.
    fn get<T: Record>(&self, table: TableDefinition<&str, &[u8]>, id: &str) -> Result<Option<T>> {
        self.run(OnIoError::Retry, |db| {
            let txn = db
                .begin_read()
                .map_err(|e| redb_error("cannot begin a read transaction", e))?;
            let table = txn
                .open_table(table)
                .map_err(|e| redb_error(&format!("cannot open table `{}`", table.name()), e))?;
            let found = table
                .get(id)
                .map_err(|e| redb_error(&format!("cannot read {} `{id}`", T::KIND), e))?;
            Ok(found.map(|value| decode(id, value.value())).transpose()?)
        })
    }

    /// Every record of a table, ordered by id (redb orders `&str` keys bytewise, as `str` does).
    fn list<T: Record>(&self, table: TableDefinition<&str, &[u8]>) -> Result<Vec<T>> {
        self.run(OnIoError::Retry, |db| {
            let txn = db
                .begin_read()
                .map_err(|e| redb_error("cannot begin a read transaction", e))?;
            let table = txn
                .open_table(table)
                .map_err(|e| redb_error(&format!("cannot open table `{}`", table.name()), e))?;
            let entries = table
                .iter()
                .map_err(|e| redb_error(&format!("cannot list {}s", T::KIND), e))?;
            let mut records = Vec::new();
            for entry in entries {
                let (id, value) =
                    entry.map_err(|e| redb_error(&format!("cannot list {}s", T::KIND), e))?;
                records.push(decode(id.value(), value.value())?);
            }
            Ok(records)
        })
    }
}

/// Opens the database file (see [`RedbStore::open`] for the modes), through the backend `wrap`
/// makes of it.
fn open_database(path: &Path, wrap: &WrapBackend) -> Result<Database> {
    let shown = path.display();
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| KbsError::from_io(&format!("cannot create {}", dir.display()), &e))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| KbsError::from_io(&format!("cannot open {shown}"), &e))?;
    narrow_mode(&file, path)?;
    let backend = FileBackend::new(file)
        .map_err(|e| redb_error(&format!("cannot open database {shown}"), e).error)?;
    ::redb::Builder::new()
        .create_with_backend(BoxedBackend(wrap(backend)))
        .map_err(|e| redb_error(&format!("cannot open database {shown}"), e).error)
}

fn narrow_mode(file: &File, path: &Path) -> Result<()> {
    let shown = path.display();
    let mode = file
        .metadata()
        .map_err(|e| store_error(&format!("cannot read the metadata of {shown}"), e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(|e| store_error(&format!("cannot set mode 0600 on {shown}"), e))?;
    }
    Ok(())
}

/// A boxed backend, as redb takes a backend by value.
#[derive(Debug)]
struct BoxedBackend(Box<dyn StorageBackend>);

impl StorageBackend for BoxedBackend {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.0.read(offset, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        self.0.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write(offset, data)
    }
}

impl Store for RedbStore {
    fn insert_policy(&self, record: &PolicyRecord) -> Result<()> {
        let value = encode(record)?;
        self.write(|txn| {
            let mut policies = open_table(txn, POLICIES)?;
            if exists::<PolicyRecord>(&policies, &record.id)? {
                return Err(KbsError::AlreadyExists {
                    id: record.id.clone(),
                }
                .into());
            }
            insert::<PolicyRecord>(&mut policies, &record.id, &value)?;
            Ok(Decision::Commit(()))
        })
    }

    fn policy(&self, id: &str) -> Result<Option<PolicyRecord>> {
        self.get(POLICIES, id)
    }

    fn policies(&self) -> Result<Vec<PolicyRecord>> {
        self.list(POLICIES)
    }

    fn delete_policy(&self, id: &str) -> Result<bool> {
        self.write(|txn| {
            let mut policies = open_table(txn, POLICIES)?;
            if !exists::<PolicyRecord>(&policies, id)? {
                return Ok(Decision::Abort(false));
            }
            // A full scan: the key count of a broker is small, and an index table would be one
            // more thing to keep consistent.
            let keys = open_table(txn, KEYS)?;
            let entries = keys.iter().map_err(|e| redb_error("cannot list keys", e))?;
            let mut users = 0;
            for entry in entries {
                let (key_id, value) = entry.map_err(|e| redb_error("cannot list keys", e))?;
                let key: KeyPolicyRef = decode(key_id.value(), value.value())?;
                if key.transfer_policy_id == id {
                    users += 1;
                }
            }
            if users > 0 {
                return Err(KbsError::PolicyInUse {
                    id: id.to_owned(),
                    keys: users,
                }
                .into());
            }
            policies
                .remove(id)
                .map_err(|e| redb_error(&format!("cannot delete policy `{id}`"), e))?;
            Ok(Decision::Commit(true))
        })
    }

    fn insert_key(&self, record: &KeyRecord) -> Result<()> {
        let value = encode(record)?;
        self.write(|txn| {
            let mut keys = open_table(txn, KEYS)?;
            if exists::<KeyRecord>(&keys, &record.id)? {
                return Err(KbsError::AlreadyExists {
                    id: record.id.clone(),
                }
                .into());
            }
            let policies = open_table(txn, POLICIES)?;
            if !exists::<PolicyRecord>(&policies, &record.transfer_policy_id)? {
                return Err(KbsError::UnknownPolicy {
                    id: record.transfer_policy_id.clone(),
                }
                .into());
            }
            insert::<KeyRecord>(&mut keys, &record.id, &value)?;
            Ok(Decision::Commit(()))
        })
    }

    fn key(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.get(KEYS, id)
    }

    fn keys(&self) -> Result<Vec<KeyRecord>> {
        self.list(KEYS)
    }

    fn delete_key(&self, id: &str) -> Result<bool> {
        // After a removal, redb frees the record's page but does not scrub it: its bytes stay in
        // the file until a later commit reuses the page. That is one reason the key is sealed
        // under the master key.
        self.write(|txn| {
            let removed = open_table(txn, KEYS)?
                .remove(id)
                .map_err(|e| redb_error(&format!("cannot delete key `{id}`"), e))?
                .is_some();
            Ok(if removed {
                Decision::Commit(true)
            } else {
                Decision::Abort(false)
            })
        })
    }
}

/// A record type read from one of the tables.
trait Record: DeserializeOwned {
    /// What the record is called in errors.
    const KIND: &'static str;
    /// The id the record names itself by.
    fn id(&self) -> &str;
}

impl Record for PolicyRecord {
    const KIND: &'static str = "policy";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Record for KeyRecord {
    const KIND: &'static str = "key";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The fields of a key record that the policy-in-use check needs (serde skips the sealed key).
#[derive(Deserialize)]
struct KeyPolicyRef {
    id: String,
    transfer_policy_id: String,
}

impl Record for KeyPolicyRef {
    const KIND: &'static str = "key";
    fn id(&self) -> &str {
        &self.id
    }
}

fn encode<T: Record + Serialize>(record: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(record)
        .map_err(|e| store_error(&format!("cannot encode {} `{}`", T::KIND, record.id()), e))
}

/// Decodes a stored record, and checks that it is the record its table entry says it is.
fn decode<T: Record>(id: &str, bytes: &[u8]) -> Result<T> {
    let record: T = serde_json::from_slice(bytes)
        .map_err(|e| store_error(&format!("{} `{id}` is unreadable", T::KIND), e))?;
    if record.id() != id {
        return Err(KbsError::Store {
            reason: format!(
                "{} `{id}` is corrupt: its record names id `{}`",
                T::KIND,
                record.id()
            ),
        });
    }
    Ok(record)
}

fn begin_write(db: &Database) -> Attempt<WriteTransaction> {
    db.begin_write()
        .map_err(|e| redb_error("cannot begin a write transaction", e))
}

fn open_table<'txn>(
    txn: &'txn WriteTransaction,
    table: TableDefinition<&'static str, &'static [u8]>,
) -> Attempt<Table<'txn, &'static str, &'static [u8]>> {
    txn.open_table(table)
        .map_err(|e| redb_error(&format!("cannot open table `{}`", table.name()), e))
}

fn exists<T: Record>(table: &Table<'_, &'static str, &'static [u8]>, id: &str) -> Attempt<bool> {
    table
        .get(id)
        .map(|found| found.is_some())
        .map_err(|e| redb_error(&format!("cannot read {} `{id}`", T::KIND), e))
}

fn insert<T: Record>(
    table: &mut Table<'_, &'static str, &'static [u8]>,
    id: &str,
    value: &[u8],
) -> Attempt<()> {
    table
        .insert(id, value)
        .map(drop)
        .map_err(|e| redb_error(&format!("cannot write {} `{id}`", T::KIND), e))
}

fn commit(txn: WriteTransaction) -> Attempt<()> {
    txn.commit()
        .map_err(|e| redb_error("cannot commit a write transaction", e))
}

fn abort(txn: WriteTransaction) -> Attempt<()> {
    txn.abort()
        .map_err(|e| redb_error("cannot abort a write transaction", e))
}
