//! Storage of transfer policies and (sealed) model keys, behind one trait.
//!
//! Implementations: [`redb::RedbStore`] (embedded, the default) and [`postgres::PostgresStore`]
//! (one PostgreSQL database shared by several replicas). Every implementation passes the same test
//! suite (`tests/it/store.rs`, and `tests/it/postgres.rs` against a real server).

pub mod postgres;
pub mod redb;

use std::fmt;

use adyton_attest::{Policy, TeeKind};
use serde::{Deserialize, Serialize};

use crate::error::{KbsError, Result};

/// A transfer policy: which TEE, and the reference values its evidence must match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// Its id (a UUID).
    pub id: String,
    /// The TEE kind the policy is for; the transfer's `Attestation-Type` must equal it.
    pub attestation_type: TeeKind,
    /// The policy table for that TEE, as JSON (the fields of `docs/policy.md`).
    pub table: serde_json::Value,
    /// Unix seconds.
    pub created_at: u64,
}

/// The key of the table that holds the broker's own `require_nonce` setting, kept with the TEE's
/// reference values so that the stores' schemas need no column for it.
pub const REQUIRE_NONCE_FIELD: &str = "require_nonce";
/// The field of a stored policy's table that holds its `[nvidia_gpu]` requirements
/// (`docs/policy.md`).
pub const NVIDIA_GPU_FIELD: &str = "nvidia_gpu";

impl PolicyRecord {
    /// The attestation policy: this record's table under its TEE's name (without the broker's own
    /// settings, which the attestation policy does not know).
    pub fn policy(&self) -> Result<Policy> {
        // The policy table of `AZURE-SNP` is `azure_snp`.
        let name = self
            .attestation_type
            .as_str()
            .to_ascii_lowercase()
            .replace('-', "_");
        let mut table = self.table.clone();
        // `nvidia_gpu` sits in the TEE's table here (one table per stored policy) and is the
        // policy's own `[nvidia_gpu]` table.
        let mut gpu = None;
        if let Some(fields) = table.as_object_mut() {
            fields.remove(REQUIRE_NONCE_FIELD);
            gpu = fields.remove(NVIDIA_GPU_FIELD);
        }
        let mut doc = serde_json::json!({ name: table });
        if let (Some(gpu), Some(fields)) = (gpu, doc.as_object_mut()) {
            fields.insert(NVIDIA_GPU_FIELD.into(), gpu);
        }
        Ok(Policy::from_json(&doc.to_string())?)
    }

    /// Whether a transfer under this policy must bind a nonce from the broker (no replayable,
    /// nonce-less CNAP-style transfers).
    pub fn require_nonce(&self) -> bool {
        self.table.get(REQUIRE_NONCE_FIELD) == Some(&serde_json::Value::Bool(true))
    }
}

/// A model key: metadata, and the key sealed under the master key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Its id (a UUID).
    pub id: String,
    /// The transfer policy that guards it.
    pub transfer_policy_id: String,
    /// Always `AES`.
    pub algorithm: String,
    /// Always 256.
    pub key_length: u32,
    /// Unix seconds.
    pub created_at: u64,
    /// The key sealed under the master key (an envelope v2 whose key id is this record's id).
    pub sealed_key: Vec<u8>,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("transfer_policy_id", &self.transfer_policy_id)
            .field("algorithm", &self.algorithm)
            .field("key_length", &self.key_length)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// Durable storage of policies and keys.
///
/// Every write is durable when it returns (crash-safe: after a power cut, a write that returned is
/// there and the store is readable). Ids are unique across inserts.
pub trait Store: Send + Sync + fmt::Debug {
    /// Inserts a policy; [`KbsError::AlreadyExists`] if its id is taken.
    fn insert_policy(&self, record: &PolicyRecord) -> Result<()>;
    /// A policy by id.
    fn policy(&self, id: &str) -> Result<Option<PolicyRecord>>;
    /// All policies, ordered by id.
    fn policies(&self) -> Result<Vec<PolicyRecord>>;
    /// Deletes a policy; `false` if there was none. [`KbsError::PolicyInUse`] while keys use it.
    fn delete_policy(&self, id: &str) -> Result<bool>;
    /// Inserts a key; [`KbsError::AlreadyExists`] if its id is taken,
    /// [`KbsError::UnknownPolicy`] if its policy does not exist.
    fn insert_key(&self, record: &KeyRecord) -> Result<()>;
    /// A key by id.
    fn key(&self, id: &str) -> Result<Option<KeyRecord>>;
    /// All keys, ordered by id.
    fn keys(&self) -> Result<Vec<KeyRecord>>;
    /// Deletes a key (its sealed bytes are gone from the store); `false` if there was none.
    fn delete_key(&self, id: &str) -> Result<bool>;
}

/// Errors of storage backends.
pub(crate) fn store_error(context: &str, err: impl fmt::Display) -> KbsError {
    KbsError::Store {
        reason: format!("{context}: {err}"),
    }
}

#[cfg(test)]
mod policy_name_tests {
    use super::*;

    #[test]
    fn azure_records_read_their_azure_table() {
        let record = |tee: TeeKind, table: serde_json::Value| PolicyRecord {
            id: "p".into(),
            attestation_type: tee,
            table,
            created_at: 0,
        };
        let pcr = "ab".repeat(32);
        let policy = record(
            TeeKind::AzureSnp,
            serde_json::json!({ "pcrs": { "7": [pcr] }, "require_nonce": true }),
        )
        .policy()
        .unwrap();
        assert_eq!(policy.azure_snp.unwrap().pcrs.len(), 1);
        let policy = record(TeeKind::AzureTdx, serde_json::json!({}))
            .policy()
            .unwrap();
        assert!(policy.azure_tdx.is_some() && policy.snp.is_none());
        // A field of another table is refused, as for every TEE.
        assert!(record(TeeKind::AzureSnp, serde_json::json!({ "mrtd": [] }))
            .policy()
            .is_err());
    }
}
