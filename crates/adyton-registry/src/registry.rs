//! The registry's service: model info records and blobs over one [`BlobStore`]. No HTTP here.
//!
//! Layout in the store (the same for every backend, so that replicas sharing a bucket share
//! state):
//! - `blobs/{id}`: the blob, as uploaded (an encrypted model; the registry never sees a key);
//! - `blob-meta/{id}.json`: `{"size", "sha256"}` of the blob, written after it;
//! - `info/{id}.json`: the model info.
//!
//! Blobs are immutable: uploading over an existing blob is refused, so a download resumed with a
//! byte range can never splice two different blobs. Replacing a model means deleting it first.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::blob::{BlobRead, BlobStore, ByteStream};
use crate::error::{BlobError, RegistryError};

type Result<T> = std::result::Result<T, RegistryError>;

/// The largest model info record accepted, in bytes.
pub const MAX_INFO_BYTES: usize = 64 << 10;
/// The default limit of one blob: 8 GiB.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 8 << 30;
/// The longest model id.
pub const MAX_ID_LEN: usize = adyton_proto::id::MAX_ID_LEN;

/// Model info in CNAP's schema, with Adyton's extension fields: the wire contract's
/// ([`adyton_proto::ModelInfo`]). The registry reads requests with
/// [`ModelInfo::from_json_strict`], which refuses unknown fields.
pub use adyton_proto::ModelInfo;

/// What an upload stored (the wire contract's, [`adyton_proto::model_info::BlobSummary`]).
pub use adyton_proto::model_info::BlobSummary;

/// The registry's record of a blob, beside it.
#[derive(Debug, Serialize, Deserialize)]
struct BlobMeta {
    size: u64,
    sha256: String,
}

/// Checks a model id: `[A-Za-z0-9._-]{1,128}`, not starting with `.`.
pub fn check_id(id: &str) -> Result<()> {
    if adyton_proto::id::is_model_id(id) {
        Ok(())
    } else {
        Err(RegistryError::InvalidId {
            id: id.chars().take(MAX_ID_LEN + 8).collect::<String>(),
        })
    }
}

fn blob_key(id: &str) -> String {
    format!("blobs/{id}")
}

fn blob_meta_key(id: &str) -> String {
    format!("blob-meta/{id}.json")
}

fn info_key(id: &str) -> String {
    format!("info/{id}.json")
}

/// The model registry over one store.
#[derive(Debug)]
pub struct Registry {
    store: Arc<dyn BlobStore>,
    public_url: String,
    max_blob_bytes: u64,
}

impl Registry {
    /// A registry whose blobs are downloaded from `public_url` (e.g. `https://registry.example`,
    /// trailing `/` dropped), refusing blobs over `max_blob_bytes`.
    pub fn new(store: Arc<dyn BlobStore>, public_url: &str, max_blob_bytes: u64) -> Self {
        Self {
            store,
            public_url: public_url.trim_end_matches('/').to_owned(),
            max_blob_bytes,
        }
    }

    /// The largest blob accepted.
    pub fn max_blob_bytes(&self) -> u64 {
        self.max_blob_bytes
    }

    /// The full download URL of the blob `id`.
    pub fn blob_url(&self, id: &str) -> String {
        format!("{}/blobs/{id}", self.public_url)
    }

    /// Every model's info, by id.
    pub async fn list_models(&self) -> Result<Vec<ModelInfo>> {
        let entries = self.store.list("info").await?;
        let mut models = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(id) = entry
                .key
                .strip_prefix("info/")
                .and_then(|name| name.strip_suffix(".json"))
            else {
                continue;
            };
            match self.get_model(id).await {
                Ok(info) => models.push(info),
                // Deleted since the listing.
                Err(RegistryError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(models)
    }

    /// One model's info.
    pub async fn get_model(&self, id: &str) -> Result<ModelInfo> {
        check_id(id)?;
        let bytes = match self
            .store
            .get_bytes(&info_key(id), MAX_INFO_BYTES as u64)
            .await
        {
            Ok(bytes) => bytes,
            Err(BlobError::NotFound { .. }) => return Err(not_found("model", id)),
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::CorruptRecord {
            id: id.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Creates or replaces a model's info. Without `url`, the model's blob must have been uploaded
    /// under the same id, and `url` becomes its download URL; for the registry's own blob,
    /// `blob_size` and `blob_sha256` are the registry's values, whatever the request said.
    pub async fn put_model(&self, id: &str, mut info: ModelInfo) -> Result<ModelInfo> {
        check_id(id)?;
        if !info.id.is_empty() && info.id != id {
            return Err(invalid_info(format!(
                "`id` is `{}` but the path names `{id}`",
                info.id.escape_debug()
            )));
        }
        info.id = id.to_owned();
        for (field, value) in [("url", &info.url), ("kbs_url", &info.kbs_url)] {
            if let Some(url) = value {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid_info(format!("`{field}` is not an http(s) URL")));
                }
            }
        }
        if let Some(format) = &info.format {
            if format != "v1" && format != "v2" {
                return Err(invalid_info("`format` is `v1` or `v2`".to_owned()));
            }
        }
        let own_url = self.blob_url(id);
        let own_blob = info.url.as_deref().is_none_or(|url| url == own_url);
        if own_blob {
            let meta = self
                .blob_meta(id)
                .await?
                .ok_or_else(|| RegistryError::NoBlob { id: id.to_owned() })?;
            info.url = Some(own_url);
            info.blob_size = Some(meta.size);
            info.blob_sha256 = Some(meta.sha256);
        }
        let bytes = serde_json::to_vec(&info).map_err(|e| invalid_info(e.to_string()))?;
        self.store
            .put_bytes(&info_key(id), Bytes::from(bytes), true)
            .await?;
        Ok(info)
    }

    /// Deletes a model: its info, its blob, or both, whichever exist.
    pub async fn delete_model(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let had_info = self.exists(&info_key(id)).await?;
        let had_blob = self.exists(&blob_key(id)).await?;
        if !had_info && !had_blob {
            return Err(not_found("model", id));
        }
        // The info first: a model is never listed with its blob gone.
        self.store.delete(&info_key(id)).await?;
        self.store.delete(&blob_key(id)).await?;
        self.store.delete(&blob_meta_key(id)).await?;
        Ok(())
    }

    /// Stores a blob from a stream (a request body), never holding it whole in memory.
    /// `announced` is the body's `Content-Length`, if any: over the limit, the upload is refused
    /// before a byte is read. A stream that goes over the limit, or fails, stores nothing.
    pub async fn upload_blob(
        &self,
        id: &str,
        body: ByteStream,
        announced: Option<u64>,
    ) -> Result<BlobSummary> {
        check_id(id)?;
        let limit = self.max_blob_bytes;
        if announced.is_some_and(|len| len > limit) {
            return Err(RegistryError::TooLarge { limit });
        }
        if self.exists(&blob_key(id)).await? {
            return Err(RegistryError::BlobExists { id: id.to_owned() });
        }
        let digest = Arc::new(Mutex::new(aws_lc_rs::digest::Context::new(
            &aws_lc_rs::digest::SHA256,
        )));
        let hashing = digest.clone();
        let mut seen = 0u64;
        let checked = body
            .map(move |chunk| {
                let chunk = chunk?;
                seen += chunk.len() as u64;
                if seen > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                hashing
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .update(&chunk);
                Ok(chunk)
            })
            .boxed();
        let size = match self.store.put(&blob_key(id), checked, false).await {
            Ok(size) => size,
            Err(BlobError::AlreadyExists { .. }) => {
                return Err(RegistryError::BlobExists { id: id.to_owned() })
            }
            Err(e) => return Err(e.into()),
        };
        let sha256 = {
            let context = digest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            hex::encode(context.finish())
        };
        let meta = BlobMeta {
            size,
            sha256: sha256.clone(),
        };
        let meta_bytes = serde_json::to_vec(&meta).map_err(|e| invalid_info(e.to_string()))?;
        if let Err(e) = self
            .store
            .put_bytes(&blob_meta_key(id), Bytes::from(meta_bytes), true)
            .await
        {
            // A blob without its record could never be described: remove it.
            let _ = self.store.delete(&blob_key(id)).await;
            return Err(e.into());
        }
        Ok(BlobSummary {
            id: id.to_owned(),
            size,
            sha256,
            url: self.blob_url(id),
        })
    }

    /// The length of the blob `id`.
    pub async fn blob_size(&self, id: &str) -> Result<u64> {
        check_id(id)?;
        match self.store.head(&blob_key(id)).await {
            Ok(size) => Ok(size),
            Err(BlobError::NotFound { .. }) => Err(not_found("blob", id)),
            Err(e) => Err(e.into()),
        }
    }

    /// The blob `id`, whole or the bytes `range` (which must lie within it: see
    /// [`crate::range::resolve`]).
    pub async fn read_blob(
        &self,
        id: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<BlobRead> {
        check_id(id)?;
        match self.store.get(&blob_key(id), range).await {
            Ok(read) => Ok(read),
            Err(BlobError::NotFound { .. }) => Err(not_found("blob", id)),
            Err(e) => Err(e.into()),
        }
    }

    async fn blob_meta(&self, id: &str) -> Result<Option<BlobMeta>> {
        match self.store.get_bytes(&blob_meta_key(id), 4096).await {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| RegistryError::CorruptRecord {
                        id: id.to_owned(),
                        reason: e.to_string(),
                    })
            }
            Err(BlobError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(BlobError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

fn not_found(what: &'static str, id: &str) -> RegistryError {
    RegistryError::NotFound {
        what,
        id: id.to_owned(),
    }
}

fn invalid_info(reason: String) -> RegistryError {
    RegistryError::InvalidInfo { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for good in ["m", "model-1.v2", "A_b", &"x".repeat(128)] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "é", "..", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn info_keeps_cnap_fields_and_refuses_unknown_ones() {
        let info: ModelInfo =
            serde_json::from_str(r#"{"id":"m","url":"http://r/blobs/m","version":3}"#).unwrap();
        assert_eq!(info.version.as_deref(), Some("3"));
        let json = serde_json::to_value(&info).unwrap();
        for field in [
            "id",
            "framework",
            "target",
            "url",
            "name",
            "version",
            "dtype",
            "encrypted",
            "kbs",
            "kbs_url",
            "key_id",
        ] {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert!(json.get("blob_size").is_none());
        assert!(ModelInfo::from_json_strict(br#"{"id":"m","colour":"red"}"#).is_err());
    }
}
