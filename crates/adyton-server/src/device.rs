//! An offline device's state (flow D, `docs/offline.md`): encrypted models provisioned once by
//! file, their keys sealed to this TEE's identity, served after any restart with no network.
//!
//! The state directory holds:
//!
//! ```text
//! DIR/blobs/SHA256          encrypted model blobs, as delivered (v1 or v2), named by their SHA-256
//! DIR/requests/ID.json      pending provisioning requests: the request, and its RSA private key
//!                           sealed to this TEE
//! DIR/models/MODEL.json     provisioned models: the blob's hash and the model key sealed to this TEE
//! ```
//!
//! Every file is written whole to a temporary file, synced, renamed into place and its directory
//! synced, so a power cut at any point leaves the old state or the new. A model's record is the
//! commit point of its provisioning: the blob it names is in place before the record is; the
//! pending request is removed after it; unreferenced blobs are removed last.
//!
//! Nothing here is plaintext: the blobs are encrypted, the keys sealed. A sealed key's
//! authenticated data names the model, the key id, the TEE, the sealing policy, the blob's hash
//! and the request it came from, so a record edited to point elsewhere does not unseal.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use adyton_attest::attester::Attester;
use adyton_attest::seal::{Sealer, SealingPolicy};
use adyton_envelope::wrap::{TeeKeyPair, WrappedKey};
use adyton_envelope::{sealed, v2, Aes256Key, EnvelopeError, Format};
use adyton_proto::provision::{ProvisionRequest, ProvisionResponse, REQUEST_FORMAT};
use aws_lc_rs::digest::{Context, SHA256};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::blob::{OpenError, MAX_MODEL_BYTES};
use crate::pull::TRANSFER_RSA_BITS;
use crate::repository::{check_name, ModelSettings, Pending, Repository, Source};
use crate::runtime::{Engine, LoadOptions};

/// The `format` of a provisioned model's record.
pub const MODEL_FORMAT: &str = "adyton-device-model/1";
/// The `format` of a pending request's record.
pub const PENDING_FORMAT: &str = "adyton-device-request/1";
/// What the model keys' sealing key is derived for.
const MODEL_KEY_CONTEXT: &[u8] = b"adyton/model-key/v1";
/// What the provisioning keys' sealing key is derived for.
const PROVISIONING_KEY_CONTEXT: &[u8] = b"adyton/provisioning-key/v1";
/// Largest record file read.
const MAX_RECORD_LEN: u64 = 1 << 20;
/// Largest response file read.
pub const MAX_RESPONSE_LEN: u64 = 1 << 20;

/// Why a device operation failed. Every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// An input (a response file, an argument, a blob) is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A record in the state directory is malformed.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A sealed key did not open here.
    #[error(
        "cannot unseal {what}: it was sealed by another device, by another build under the \
         `{policy}` sealing policy, or it was altered ({reason})"
    )]
    Unseal {
        /// Which key.
        what: String,
        /// The policy it was sealed under.
        policy: SealingPolicy,
        /// The cryptographic reason.
        reason: String,
    },
    /// The response names no request pending on this device.
    #[error(
        "no provisioning request {request_id} is pending on this device: the response was made \
         for a request of another device, or the request was replaced"
    )]
    UnknownRequest {
        /// The response's request id.
        request_id: String,
    },
    /// The response was accepted before.
    #[error(
        "the response to request {request_id} was already accepted (model `{model}`, at unix time \
         {accepted_at}); a response is used once: make a new request to provision again"
    )]
    Replayed {
        /// The response's request id.
        request_id: String,
        /// The model it provisioned.
        model: String,
        /// When.
        accepted_at: u64,
    },
    /// The response does not answer the pending request.
    #[error("the response was made for another request: {0}")]
    Mismatch(String),
    /// The model blob did not open with the key, or is not a model envelope.
    #[error("the model blob {}: {reason}", path.display())]
    Blob {
        /// The blob.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TEE refused (no sealing key, no evidence).
    #[error(transparent)]
    Tee(#[from] adyton_attest::AttestError),
    /// A cryptographic operation failed.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

type Result<T, E = DeviceError> = std::result::Result<T, E>;

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DeviceError + '_ {
    move |source| DeviceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A provisioned model, as recorded in `models/MODEL.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRecord {
    /// [`MODEL_FORMAT`].
    pub format: String,
    /// The model's id, which it is served as.
    pub model: String,
    /// The key broker's id of its key.
    pub key_id: String,
    /// The TEE it is sealed to.
    pub tee: String,
    /// The sealing policy.
    pub sealing_policy: SealingPolicy,
    /// The SHA-256 of its encrypted blob (hex), the blob's name under `blobs/`.
    pub blob_sha256: String,
    /// The blob's length.
    pub blob_len: u64,
    /// The model key sealed to this TEE (base64).
    pub sealed_key: String,
    /// The provisioning request this came from.
    pub request_id: String,
    /// Unix seconds.
    pub accepted_at: u64,
}

/// A pending provisioning request, as recorded in `requests/ID.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingRecord {
    format: String,
    request: ProvisionRequest,
    sealing_policy: SealingPolicy,
    blob_sha256: String,
    blob_len: u64,
    /// The request's RSA private key (PKCS#8) sealed to this TEE (base64).
    sealed_private_key: String,
}

/// An encrypted blob installed under `blobs/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its SHA-256 (hex), and its name.
    pub sha256: String,
    /// Its length.
    pub len: u64,
    /// Its envelope format.
    pub format: Format,
    /// The key id in its header (v2 only; empty when the encryptor named none).
    pub key_id: Option<String>,
}

/// What a provisioning request needs from the caller.
#[derive(Debug)]
pub struct RequestParams<'a> {
    /// The model id to serve it as.
    pub model: &'a str,
    /// The key broker's key id; by default the one in the blob's v2 header.
    pub key_id: Option<&'a str>,
    /// The sealing policy of the model key, once provisioned.
    pub sealing_policy: SealingPolicy,
    /// Unix seconds.
    pub now: u64,
}

/// The state directory of an offline device.
#[derive(Clone, Debug)]
pub struct DeviceState {
    root: PathBuf,
}

impl DeviceState {
    /// Opens (creating, mode 0700) the state directory at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        for dir in [
            root.to_path_buf(),
            root.join("blobs"),
            root.join("requests"),
            root.join("models"),
        ] {
            if !dir.is_dir() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(io_error(&dir))?;
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(sha256)
    }

    fn request_path(&self, request_id: &str) -> PathBuf {
        self.root
            .join("requests")
            .join(format!("{request_id}.json"))
    }

    fn model_path(&self, model: &str) -> PathBuf {
        self.root.join("models").join(format!("{model}.json"))
    }

    /// Holds the state directory's lock (`DIR/.lock`, an advisory `flock`) until the file is
    /// dropped, so that two provisioning commands on one device run one after the other (the
    /// blob clean-up of one never sees the other's blob before its request is recorded).
    fn lock(&self) -> Result<File> {
        let path = self.root.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error(&path))?;
        file.lock().map_err(io_error(&path))?;
        Ok(file)
    }

    /// Copies an encrypted blob into `blobs/`, named by its SHA-256, and reads its header.
    pub fn install_blob(&self, blob: &mut dyn Read) -> Result<BlobInfo> {
        let dir = self.root.join("blobs");
        let mut temp = tempfile::Builder::new()
            .prefix(".blob.")
            .tempfile_in(&dir)
            .map_err(io_error(&dir))?;
        let mut hash = Context::new(&SHA256);
        let mut len = 0u64;
        let mut prefix = Vec::with_capacity(v2::MAX_HEADER_LEN);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match blob.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DeviceError::Invalid(format!("reading the blob: {e}"))),
            };
            len += n as u64;
            if len > MAX_MODEL_BYTES + (1 << 24) {
                return Err(DeviceError::Invalid(format!(
                    "the blob is over the limit of {MAX_MODEL_BYTES} bytes"
                )));
            }
            let room = v2::MAX_HEADER_LEN.saturating_sub(prefix.len());
            prefix.extend_from_slice(&buf[..n.min(room)]);
            hash.update(&buf[..n]);
            temp.write_all(&buf[..n]).map_err(io_error(temp.path()))?;
        }
        let format = Format::detect(&prefix)
            .map_err(|e| DeviceError::Invalid(format!("the blob is not a model envelope: {e}")))?;
        let key_id = match format {
            Format::V2 => {
                let (header, _) = v2::Header::parse(&prefix).map_err(|e| {
                    DeviceError::Invalid(format!("the blob's v2 header is unreadable: {e}"))
                })?;
                Some(header.key_id)
            }
            Format::V1 => None,
        };
        let sha256 = hex::encode(hash.finish().as_ref());
        temp.as_file().sync_all().map_err(io_error(temp.path()))?;
        let path = self.blob_path(&sha256);
        set_private(temp.path())?;
        temp.persist(&path).map_err(|e| DeviceError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        sync_dir(&dir)?;
        Ok(BlobInfo {
            sha256,
            len,
            format,
            key_id: key_id.filter(|id| !id.is_empty()),
        })
    }

    /// Step 1 of provisioning, inside the TEE: installs the blob, makes an RSA key pair, seals its
    /// private key to this TEE, and returns the request (evidence over SHA-512 of the public key)
    /// to carry to the provider. The request is kept as pending until its response is accepted.
    pub fn create_request(
        &self,
        attester: &dyn Attester,
        sealer: &dyn Sealer,
        params: &RequestParams<'_>,
        blob: &mut dyn Read,
    ) -> Result<ProvisionRequest> {
        check_name(params.model).map_err(|e| DeviceError::Invalid(format!("--model: {e}")))?;
        let _lock = self.lock()?;
        if attester.tee() != sealer.tee() {
            return Err(DeviceError::Invalid(format!(
                "the attester is {} but the sealer is {}",
                attester.tee(),
                sealer.tee()
            )));
        }
        // A sealing key is derived now, so that a TEE that cannot seal refuses before any work.
        let provisioning_key =
            sealing_key(sealer, params.sealing_policy, PROVISIONING_KEY_CONTEXT)?;
        let blob = self.install_blob(blob)?;
        let made = self.request_for_blob(attester, params, &provisioning_key, blob);
        if made.is_err() {
            // The blob installed for a refused request is not kept.
            self.remove_unreferenced_blobs();
        }
        made
    }

    fn request_for_blob(
        &self,
        attester: &dyn Attester,
        params: &RequestParams<'_>,
        provisioning_key: &Aes256Key,
        blob: BlobInfo,
    ) -> Result<ProvisionRequest> {
        let key_id = match (params.key_id, &blob.key_id) {
            (Some(given), Some(header)) if given != header => {
                return Err(DeviceError::Invalid(format!(
                    "--key-id {given} disagrees with the key id in the blob's header, {header}"
                )))
            }
            (Some(given), _) => given.to_owned(),
            (None, Some(header)) => header.clone(),
            (None, None) => {
                return Err(DeviceError::Invalid(format!(
                    "the blob ({} envelope) names no key id: give the key broker's key id with \
                     --key-id",
                    blob.format
                )))
            }
        };

        let pair = TeeKeyPair::generate(TRANSFER_RSA_BITS)?;
        let public = pair.public_key()?;
        let public_der = public.spki_der().to_vec();
        // Offline, there is no nonce: the report data binds the public key alone.
        let report_data = adyton_proto::transfer_report_data(&public_der, None);
        let evidence = attester.evidence(&report_data)?;
        let request = ProvisionRequest {
            format: REQUEST_FORMAT.to_owned(),
            request_id: uuid::Uuid::new_v4().to_string(),
            model: params.model.to_owned(),
            key_id,
            tee: attester.tee().to_string(),
            sealing_policy: params.sealing_policy.to_string(),
            public_key: BASE64.encode(&public_der),
            evidence: BASE64.encode(evidence.to_json()),
            created_at: params.now,
        };
        // Checked as the provider will check it, so that a request this device makes is one the
        // provider can read.
        adyton_client::offline::read_request(&request.to_json())
            .map_err(|e| DeviceError::Invalid(format!("the request made is invalid: {e}")))?;

        let private = pair.to_pkcs8_der()?;
        let sealed_private = sealed::seal(
            provisioning_key,
            &pending_aad(&request, params.sealing_policy, &blob.sha256),
            &private,
        )?;
        drop(private);
        drop(pair);
        let record = PendingRecord {
            format: PENDING_FORMAT.to_owned(),
            request: request.clone(),
            sealing_policy: params.sealing_policy,
            blob_sha256: blob.sha256,
            blob_len: blob.len,
            sealed_private_key: BASE64.encode(sealed_private),
        };
        write_atomic(&self.request_path(&request.request_id), &to_json(&record))?;
        Ok(request)
    }

    /// Step 3 of provisioning, inside the TEE: checks that `response` answers a request pending
    /// here, unseals the request's private key, unwraps the model key, checks that it opens the
    /// model's blob, seals it to this TEE and records the model; then forgets the request, so the
    /// same response cannot be accepted again.
    pub fn accept(&self, sealer: &dyn Sealer, response: &[u8], now: u64) -> Result<ModelRecord> {
        let response = ProvisionResponse::from_json(response)
            .map_err(|e| DeviceError::Invalid(format!("the response file: {e}")))?;
        let _lock = self.lock()?;
        if uuid::Uuid::parse_str(&response.request_id).is_err() {
            return Err(DeviceError::Invalid(format!(
                "the response's request_id {:?} is not a request id made by a device",
                response.request_id
            )));
        }
        let pending_path = self.request_path(&response.request_id);
        // A response whose model is recorded was accepted before (its pending request may
        // survive a power cut just after the commit: it is removed now).
        if let Some(done) = self
            .models()?
            .into_iter()
            .filter_map(|(_, record)| record.ok())
            .find(|record| record.request_id == response.request_id)
        {
            remove_file(&pending_path)?;
            return Err(DeviceError::Replayed {
                request_id: response.request_id,
                model: done.model,
                accepted_at: done.accepted_at,
            });
        }
        let pending: PendingRecord =
            read_record(&pending_path)?.ok_or_else(|| DeviceError::UnknownRequest {
                request_id: response.request_id.clone(),
            })?;
        let request = &pending.request;
        let public_key_sha256 = request
            .public_key_sha256()
            .map_err(|e| corrupt(&pending_path, e))?;
        for (field, theirs, ours) in [
            ("model", &response.model, &request.model),
            ("key_id", &response.key_id, &request.key_id),
            (
                "public_key_sha256",
                &response.public_key_sha256,
                &public_key_sha256,
            ),
        ] {
            if theirs != ours {
                return Err(DeviceError::Mismatch(format!(
                    "its {field} is {theirs}, the request's is {ours}"
                )));
            }
        }
        if sealer.tee().to_string() != request.tee {
            return Err(DeviceError::Invalid(format!(
                "the request was made by a {} TEE, this server runs on {}",
                request.tee,
                sealer.tee()
            )));
        }

        let provisioning_key =
            sealing_key(sealer, pending.sealing_policy, PROVISIONING_KEY_CONTEXT)?;
        let sealed_private = BASE64
            .decode(&pending.sealed_private_key)
            .map_err(|_| corrupt(&pending_path, "sealed_private_key is not base64"))?;
        let private = sealed::unseal(
            &provisioning_key,
            &pending_aad(request, pending.sealing_policy, &pending.blob_sha256),
            &sealed_private,
        )
        .map_err(|e| DeviceError::Unseal {
            what: format!("the private key of request {}", request.request_id),
            policy: pending.sealing_policy,
            reason: e.to_string(),
        })?;
        let pair = TeeKeyPair::from_pkcs8_der(&private)?;
        drop(private);
        let answer = response
            .transfer_answer()
            .map_err(|e| DeviceError::Invalid(format!("the response file: {e}")))?;
        let model_key = pair
            .unwrap_transfer(&WrappedKey {
                wrapped_key: answer.wrapped_key.clone(),
                wrapped_swk: answer.wrapped_swk.clone(),
            })
            .map_err(|e| {
                DeviceError::Mismatch(format!(
                    "its wrapped key does not open with this request's private key ({e})"
                ))
            })?;
        drop(pair);

        // The key must open the blob before the model is recorded: a wrong key is refused now,
        // not at the next restart.
        let blob_path = self.blob_path(&pending.blob_sha256);
        let plaintext = open_blob(&blob_path, &model_key, Some(&request.key_id))?;
        drop(plaintext);

        let policy: SealingPolicy = pending.sealing_policy;
        let model_sealing_key = sealing_key(sealer, policy, MODEL_KEY_CONTEXT)?;
        let mut record = ModelRecord {
            format: MODEL_FORMAT.to_owned(),
            model: request.model.clone(),
            key_id: request.key_id.clone(),
            tee: request.tee.clone(),
            sealing_policy: policy,
            blob_sha256: pending.blob_sha256.clone(),
            blob_len: pending.blob_len,
            sealed_key: String::new(),
            request_id: request.request_id.clone(),
            accepted_at: now,
        };
        let sealed_key = sealed::seal(
            &model_sealing_key,
            &model_aad(&record),
            model_key.expose_secret(),
        )?;
        drop(model_key);
        record.sealed_key = BASE64.encode(sealed_key);

        // The commit point: the model's record replaces any earlier one whole.
        write_atomic(&self.model_path(&record.model), &to_json(&record))?;
        remove_file(&pending_path)?;
        self.remove_unreferenced_blobs();
        Ok(record)
    }

    /// The provisioned models, by model id, each with its record or why it cannot be read.
    pub fn models(&self) -> Result<Vec<(String, Result<ModelRecord>)>> {
        let dir = self.root.join("models");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(model) = name.strip_suffix(".json") else {
                continue;
            };
            if model.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let record = read_record::<ModelRecord>(&path).and_then(|record| {
                let record = record.ok_or_else(|| corrupt(&path, "vanished while read"))?;
                if record.format != MODEL_FORMAT {
                    return Err(corrupt(
                        &path,
                        format!("format is {:?}, expected {MODEL_FORMAT:?}", record.format),
                    ));
                }
                if record.model != model {
                    return Err(corrupt(
                        &path,
                        format!("it names model {:?}, its file name {model:?}", record.model),
                    ));
                }
                Ok(record)
            });
            out.push((model.to_owned(), record));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The requests pending here.
    pub fn pending_requests(&self) -> Result<Vec<ProvisionRequest>> {
        let dir = self.root.join("requests");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
            let path = entry.map_err(io_error(&dir))?.path();
            if path.extension().is_some_and(|ext| ext == "json") {
                if let Some(record) = read_record::<PendingRecord>(&path)? {
                    out.push(record.request);
                }
            }
        }
        Ok(out)
    }

    /// Unseals a provisioned model's key and decrypts its blob into memory.
    pub fn open_model(
        &self,
        sealer: &dyn Sealer,
        record: &ModelRecord,
    ) -> Result<Zeroizing<Vec<u8>>> {
        if sealer.tee().to_string() != record.tee {
            return Err(DeviceError::Invalid(format!(
                "model `{}` is sealed to a {} TEE, this server runs on {}",
                record.model,
                record.tee,
                sealer.tee()
            )));
        }
        let path = self.model_path(&record.model);
        let sealed_key = BASE64
            .decode(&record.sealed_key)
            .map_err(|_| corrupt(&path, "sealed_key is not base64"))?;
        let sealing = sealing_key(sealer, record.sealing_policy, MODEL_KEY_CONTEXT)?;
        let key_bytes = sealed::unseal(&sealing, &model_aad(record), &sealed_key).map_err(|e| {
            DeviceError::Unseal {
                what: format!("the key of model `{}`", record.model),
                policy: record.sealing_policy,
                reason: e.to_string(),
            }
        })?;
        let key = Aes256Key::from_slice(&key_bytes)?;
        drop(key_bytes);
        open_blob(
            &self.blob_path(&record.blob_sha256),
            &key,
            Some(&record.key_id),
        )
    }

    /// Loads every provisioned model into `repository`, served under its model id, with the
    /// engine's `options` for that id if any. A model that fails (a key that does not unseal, an
    /// altered blob) is recorded as failed with the reason; the others load regardless. Returns
    /// each model's outcome.
    pub fn load_all(
        &self,
        sealer: &dyn Sealer,
        engine: &Arc<dyn Engine>,
        repository: &Repository,
        options: &BTreeMap<String, LoadOptions>,
    ) -> Result<Vec<(String, Result<()>)>> {
        let settings = options
            .iter()
            .map(|(name, load)| {
                let settings = ModelSettings {
                    load: load.clone(),
                    ..ModelSettings::default()
                };
                (name.clone(), settings)
            })
            .collect();
        self.load_all_with(sealer, engine, repository, &settings)
    }

    /// [`DeviceState::load_all`], each model with its `settings` if any (its engine, else
    /// `engine`; the engine's options; dynamic batching).
    pub fn load_all_with(
        &self,
        sealer: &dyn Sealer,
        engine: &Arc<dyn Engine>,
        repository: &Repository,
        settings: &BTreeMap<String, ModelSettings>,
    ) -> Result<Vec<(String, Result<()>)>> {
        let defaults = ModelSettings::default();
        let mut outcomes = Vec::new();
        for (model, record) in self.models()? {
            let _ = repository.set_pending(&model, Pending::Loading);
            let settings = settings.get(&model).unwrap_or(&defaults);
            let engine = settings.engine.as_ref().unwrap_or(engine);
            let outcome = record.and_then(|record| {
                let plaintext = self.open_model(sealer, &record)?;
                let loaded = engine
                    .load_with(&plaintext, &settings.load)
                    .map_err(|e| DeviceError::Invalid(format!("the model does not load: {e}")))?;
                drop(plaintext);
                let source = Source::Sealed {
                    model_id: record.model.clone(),
                };
                repository
                    .insert_with(&model, None, loaded, source, settings.batching)
                    .map_err(|e| DeviceError::Invalid(e.to_string()))?;
                Ok(())
            });
            if let Err(e) = &outcome {
                let _ = repository.set_pending(
                    &model,
                    Pending::Failed {
                        reason: e.to_string(),
                    },
                );
            }
            outcomes.push((model, outcome));
        }
        Ok(outcomes)
    }

    /// Removes blobs no model and no pending request names, and temporary files left by a crash.
    /// Best effort: a blob that cannot be removed now is removed next time.
    fn remove_unreferenced_blobs(&self) {
        let mut keep = std::collections::HashSet::new();
        if let Ok(models) = self.models() {
            for (_, record) in models {
                match record {
                    Ok(record) => {
                        keep.insert(record.blob_sha256);
                    }
                    // A record that cannot be read may still name a blob: keep them all.
                    Err(_) => return,
                }
            }
        } else {
            return;
        }
        let dir = self.root.join("requests");
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            match read_record::<PendingRecord>(&entry.path()) {
                Ok(Some(pending)) => {
                    keep.insert(pending.blob_sha256);
                }
                Ok(None) => {}
                Err(_) => return,
            }
        }
        let dir = self.root.join("blobs");
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let _ = fs::remove_file(entry.path());
            }
        }
        let _ = sync_dir(&dir);
    }
}

fn sealing_key(sealer: &dyn Sealer, policy: SealingPolicy, context: &[u8]) -> Result<Aes256Key> {
    let key = sealer.sealing_key(policy, context)?;
    Ok(Aes256Key::from_slice(key.as_bytes())?)
}

/// The authenticated data of a pending request's sealed private key.
fn pending_aad(request: &ProvisionRequest, policy: SealingPolicy, blob_sha256: &str) -> Vec<u8> {
    aad(&[
        PENDING_FORMAT,
        &request.request_id,
        &request.model,
        &request.key_id,
        &request.tee,
        &policy.to_string(),
        blob_sha256,
    ])
}

/// The authenticated data of a model's sealed key.
fn model_aad(record: &ModelRecord) -> Vec<u8> {
    aad(&[
        MODEL_FORMAT,
        &record.model,
        &record.key_id,
        &record.tee,
        &record.sealing_policy.to_string(),
        &record.blob_sha256,
        &record.request_id,
    ])
}

/// Fields joined with their lengths, so that no two lists encode alike.
fn aad(fields: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields {
        out.extend_from_slice(&(field.len() as u64).to_le_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// Decrypts the blob at `path` into memory (`blob::open`).
fn open_blob(path: &Path, key: &Aes256Key, key_id: Option<&str>) -> Result<Zeroizing<Vec<u8>>> {
    let blob_error = |reason: String| DeviceError::Blob {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => blob_error("is missing from the state directory".into()),
        _ => DeviceError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    crate::blob::open(&mut file, key, key_id).map_err(|e| match e {
        OpenError::Io(source) => DeviceError::Io {
            path: path.to_path_buf(),
            source,
        },
        OpenError::Envelope(e) => blob_error(format!("does not open with the model key: {e}")),
        other => blob_error(other.to_string()),
    })
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> DeviceError {
    DeviceError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Reads a JSON record, or `None` when the file does not exist.
fn read_record<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    if bytes.len() as u64 > MAX_RECORD_LEN {
        return Err(corrupt(path, "is over 1 MiB"));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| corrupt(path, e))
}

fn set_private(path: &Path) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_error(path))
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same directory
/// (mode 0600), synced, renamed over `path`, and the directory synced.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".record.")
        .tempfile_in(dir)
        .map_err(io_error(dir))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(io_error(temp.path()))?;
    set_private(temp.path())?;
    temp.persist(path).map_err(|e| DeviceError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir)
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(path)(e)),
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}
