//! Blobs in an S3-compatible bucket, through the `object_store` crate.
//!
//! Every write is a multipart upload, which S3 makes visible only when it completes: an aborted
//! upload leaves no object (the parts are discarded by the abort). The bucket must exist.
//! Credentials come from the environment only (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! optionally `AWS_SESSION_TOKEN`), never from a configuration file.
//!
//! Refusing to overwrite is a check before the upload: two uploads of one new key at the same time
//! both succeed, the last to finish winning (S3's conditional writes are not portable across
//! S3-compatible servers). The registry's callers are operators publishing models, not racing
//! writers.

use std::ops::Range;
use std::sync::Arc;

use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, WriteMultipart};
use serde::Deserialize;

use super::{check_key, BlobEntry, BlobRead, BlobStore, ByteStream};
use crate::error::BlobError;

/// The size of each uploaded part (S3's minimum is 5 MiB, except for the last part).
const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once; with [`PART_SIZE`], the memory an upload holds.
const PARTS_IN_FLIGHT: usize = 2;

/// The `[store]` table for `backend = "s3"`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The endpoint, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:9000`;
    /// AWS's default when absent.
    pub endpoint: Option<String>,
    /// The bucket, which must exist.
    pub bucket: String,
    /// The region (default `us-east-1`).
    pub region: Option<String>,
    /// Allow a plain `http://` endpoint (tests and trusted networks only).
    #[serde(default)]
    pub allow_http: bool,
}

/// A blob store in one S3 bucket.
#[derive(Debug)]
pub struct S3Store {
    store: Arc<AmazonS3>,
    bucket: String,
}

impl S3Store {
    /// A store in the configured bucket, with credentials from the environment. Nothing is sent
    /// until the first call.
    pub fn open(config: &S3Config) -> Result<Self, BlobError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(access_key), Some(secret_key)) =
            (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(BlobError::Config {
                reason: "the S3 store takes its credentials from AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY, which are not both set"
                    .to_owned(),
            });
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(config.region.as_deref().unwrap_or("us-east-1"))
            .with_access_key_id(access_key)
            .with_secret_access_key(secret_key)
            .with_allow_http(config.allow_http);
        if let Some(token) = env("AWS_SESSION_TOKEN") {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| BlobError::Config {
            reason: e.to_string(),
        })?;
        Ok(Self {
            store: Arc::new(store),
            bucket: config.bucket.clone(),
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

fn object_path(key: &str) -> Result<ObjectPath, BlobError> {
    check_key(key)?;
    ObjectPath::parse(key).map_err(|_| BlobError::InvalidKey {
        key: key.to_owned(),
    })
}

fn store_error(key: &str, source: object_store::Error) -> BlobError {
    match source {
        object_store::Error::NotFound { .. } => BlobError::NotFound {
            key: key.to_owned(),
        },
        object_store::Error::AlreadyExists { .. } => BlobError::AlreadyExists {
            key: key.to_owned(),
        },
        source => BlobError::ObjectStore { source },
    }
}

#[async_trait::async_trait]
impl BlobStore for S3Store {
    async fn put(
        &self,
        key: &str,
        mut data: ByteStream,
        overwrite: bool,
    ) -> Result<u64, BlobError> {
        let path = object_path(key)?;
        if !overwrite {
            match self.store.head(&path).await {
                Ok(_) => {
                    return Err(BlobError::AlreadyExists {
                        key: key.to_owned(),
                    })
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(key, e)),
            }
        }
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| store_error(key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut written = 0u64;
        let failure = loop {
            let chunk = match data.next().await {
                None => break None,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => break Some(e),
            };
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                break Some(store_error(key, e));
            }
            written += chunk.len() as u64;
            writer.put(chunk);
        };
        if let Some(error) = failure {
            // Discards the parts uploaded so far; the object never appears.
            let _ = writer.abort().await;
            return Err(error);
        }
        writer.finish().await.map_err(|e| store_error(key, e))?;
        Ok(written)
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<BlobRead, BlobError> {
        let path = object_path(key)?;
        if let Some(range) = range.as_ref().filter(|r| r.is_empty()) {
            // S3 refuses empty ranges; the answer is known without asking.
            let total = self.head(key).await?;
            if range.start > total {
                return Err(BlobError::Config {
                    reason: format!("range {range:?} outside an object of {total} bytes"),
                });
            }
            return Ok(BlobRead {
                total,
                stream: futures_util::stream::empty().boxed(),
            });
        }
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = self
            .store
            .get_opts(&path, options)
            .await
            .map_err(|e| store_error(key, e))?;
        let total = result.meta.size;
        let owned_key = key.to_owned();
        let stream = result
            .into_stream()
            .map_err(move |e| store_error(&owned_key, e))
            .boxed();
        Ok(BlobRead { total, stream })
    }

    async fn head(&self, key: &str) -> Result<u64, BlobError> {
        let path = object_path(key)?;
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|e| store_error(key, e))?;
        Ok(meta.size)
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        let path = object_path(key)?;
        match self.store.delete(&path).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobEntry>, BlobError> {
        let path = object_path(prefix)?;
        let listing = self
            .store
            .list_with_delimiter(Some(&path))
            .await
            .map_err(|e| store_error(prefix, e))?;
        let mut out: Vec<BlobEntry> = listing
            .objects
            .into_iter()
            .map(|meta| BlobEntry {
                key: meta.location.to_string(),
                size: meta.size,
            })
            .filter(|entry| check_key(&entry.key).is_ok())
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}
