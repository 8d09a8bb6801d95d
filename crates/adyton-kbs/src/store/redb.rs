//! The embedded store, on redb (ACID, crash-safe, one file).
//!
//! Two tables, `policies` and `keys`, map a record's id to the record serialised as JSON. Every
//! check that involves both tables (a key's policy exists; a policy is unused before it goes) runs
//! inside the same write transaction as the write it guards, so no concurrent writer can slip in
//! between the check and the write. redb serialises write transactions, and every commit uses
//! redb's default durability (`Immediate`: synced to disk before `commit` returns).

use std::fmt;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ::redb::{Database, ReadableTable, Table, TableDefinition, TableHandle, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{store_error, KeyRecord, PolicyRecord, Store};
use crate::error::{KbsError, Result};

/// Transfer policies by id.
const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
/// Model keys (sealed) by id.
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");

/// The embedded store: one redb database file.
///
/// Only one `RedbStore` may have a file open at a time (redb locks the file); a second open, in
/// this process or another, is a [`KbsError::Store`].
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Creates or opens the database at `path`.
    ///
    /// Missing parent directories are created with mode 0700. The file is created with mode 0600,
    /// and an existing file that group or others may access is narrowed to 0600: the sealed keys
    /// are encrypted, but nobody else needs to read even those.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| store_error(&format!("cannot create {}", dir.display()), e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| store_error(&format!("cannot open {shown}"), e))?;
        let mode = file
            .metadata()
            .map_err(|e| store_error(&format!("cannot read the metadata of {shown}"), e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            file.set_permissions(Permissions::from_mode(0o600))
                .map_err(|e| store_error(&format!("cannot set mode 0600 on {shown}"), e))?;
        }
        let db = ::redb::Builder::new()
            .create_file(file)
            .map_err(|e| store_error(&format!("cannot open database {shown}"), e))?;
        let store = Self {
            db,
            path: path.to_path_buf(),
        };
        // Create both tables up front, so that a read never meets a missing table.
        let txn = store.begin_write()?;
        open_table(&txn, POLICIES)?;
        open_table(&txn, KEYS)?;
        commit(txn)?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn begin_write(&self) -> Result<WriteTransaction> {
        self.db
            .begin_write()
            .map_err(|e| store_error("cannot begin a write transaction", e))
    }

    /// One record by id.
    fn get<T: Record>(&self, table: TableDefinition<&str, &[u8]>, id: &str) -> Result<Option<T>> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| store_error("cannot begin a read transaction", e))?;
        let table = txn
            .open_table(table)
            .map_err(|e| store_error(&format!("cannot open table `{}`", table.name()), e))?;
        let found = table
            .get(id)
            .map_err(|e| store_error(&format!("cannot read {} `{id}`", T::KIND), e))?;
        found.map(|value| decode(id, value.value())).transpose()
    }

    /// Every record of a table, ordered by id (redb orders `&str` keys bytewise, as `str` does).
    fn list<T: Record>(&self, table: TableDefinition<&str, &[u8]>) -> Result<Vec<T>> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| store_error("cannot begin a read transaction", e))?;
        let table = txn
            .open_table(table)
            .map_err(|e| store_error(&format!("cannot open table `{}`", table.name()), e))?;
        let entries = table
            .iter()
            .map_err(|e| store_error(&format!("cannot list {}s", T::KIND), e))?;
        let mut records = Vec::new();
        for entry in entries {
            let (id, value) =
                entry.map_err(|e| store_error(&format!("cannot list {}s", T::KIND), e))?;
            records.push(decode(id.value(), value.value())?);
        }
        Ok(records)
    }
}

impl Store for RedbStore {
    fn insert_policy(&self, record: &PolicyRecord) -> Result<()> {
        let value = encode(record)?;
        let txn = self.begin_write()?;
        {
            let mut policies = open_table(&txn, POLICIES)?;
            if exists::<PolicyRecord>(&policies, &record.id)? {
                return Err(KbsError::AlreadyExists {
                    id: record.id.clone(),
                });
            }
            insert::<PolicyRecord>(&mut policies, &record.id, &value)?;
        }
        commit(txn)
    }

    fn policy(&self, id: &str) -> Result<Option<PolicyRecord>> {
        self.get(POLICIES, id)
    }

    fn policies(&self) -> Result<Vec<PolicyRecord>> {
        self.list(POLICIES)
    }

    fn delete_policy(&self, id: &str) -> Result<bool> {
        let txn = self.begin_write()?;
        {
            let mut policies = open_table(&txn, POLICIES)?;
            if !exists::<PolicyRecord>(&policies, id)? {
                return Ok(false);
            }
            // A full scan: the key count of a broker is small, and an index table would be one
            // more thing to keep consistent.
            let keys = open_table(&txn, KEYS)?;
            let entries = keys
                .iter()
                .map_err(|e| store_error("cannot list keys", e))?;
            let mut users = 0;
            for entry in entries {
                let (key_id, value) = entry.map_err(|e| store_error("cannot list keys", e))?;
                let key: KeyPolicyRef = decode(key_id.value(), value.value())?;
                if key.transfer_policy_id == id {
                    users += 1;
                }
            }
            if users > 0 {
                return Err(KbsError::PolicyInUse {
                    id: id.to_owned(),
                    keys: users,
                });
            }
            policies
                .remove(id)
                .map_err(|e| store_error(&format!("cannot delete policy `{id}`"), e))?;
        }
        commit(txn)?;
        Ok(true)
    }

    fn insert_key(&self, record: &KeyRecord) -> Result<()> {
        let value = encode(record)?;
        let txn = self.begin_write()?;
        {
            let mut keys = open_table(&txn, KEYS)?;
            if exists::<KeyRecord>(&keys, &record.id)? {
                return Err(KbsError::AlreadyExists {
                    id: record.id.clone(),
                });
            }
            let policies = open_table(&txn, POLICIES)?;
            if !exists::<PolicyRecord>(&policies, &record.transfer_policy_id)? {
                return Err(KbsError::UnknownPolicy {
                    id: record.transfer_policy_id.clone(),
                });
            }
            insert::<KeyRecord>(&mut keys, &record.id, &value)?;
        }
        commit(txn)
    }

    fn key(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.get(KEYS, id)
    }

    fn keys(&self) -> Result<Vec<KeyRecord>> {
        self.list(KEYS)
    }

    fn delete_key(&self, id: &str) -> Result<bool> {
        let txn = self.begin_write()?;
        let removed = {
            let mut keys = open_table(&txn, KEYS)?;
            let removed = keys
                .remove(id)
                .map_err(|e| store_error(&format!("cannot delete key `{id}`"), e))?;
            removed.is_some()
        };
        if removed {
            commit(txn)?;
        }
        // Without a removal the transaction is dropped, which aborts it. After a removal, redb
        // frees the record's page but does not scrub it: its bytes stay in the file until a later
        // commit reuses the page. That is one reason the key is sealed under the master key.
        Ok(removed)
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

fn open_table<'txn>(
    txn: &'txn WriteTransaction,
    table: TableDefinition<&'static str, &'static [u8]>,
) -> Result<Table<'txn, &'static str, &'static [u8]>> {
    txn.open_table(table)
        .map_err(|e| store_error(&format!("cannot open table `{}`", table.name()), e))
}

fn exists<T: Record>(table: &Table<'_, &'static str, &'static [u8]>, id: &str) -> Result<bool> {
    table
        .get(id)
        .map(|found| found.is_some())
        .map_err(|e| store_error(&format!("cannot read {} `{id}`", T::KIND), e))
}

fn insert<T: Record>(
    table: &mut Table<'_, &'static str, &'static [u8]>,
    id: &str,
    value: &[u8],
) -> Result<()> {
    table
        .insert(id, value)
        .map(drop)
        .map_err(|e| store_error(&format!("cannot write {} `{id}`", T::KIND), e))
}

fn commit(txn: WriteTransaction) -> Result<()> {
    txn.commit()
        .map_err(|e| store_error("cannot commit a write transaction", e))
}
