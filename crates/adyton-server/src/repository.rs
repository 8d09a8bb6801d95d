//! The models being served: by name, with versions, and with the status of models still loading
//! or that failed to load.
//!
//! Every operation takes the lock only to look up or swap an `Arc`, never across loading or
//! inference, so uploads, deletes and queries of one model may run at the same time: a request
//! that holds a model keeps it alive until it is done, even if the model is deleted meanwhile.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use crate::batching::{check_batchable, BatchError, BatchOptions, Batcher};
use crate::runtime::{Engine, LoadOptions, LoadedModel};

/// How one model is loaded and served: its engine, the engine's options, and dynamic batching.
#[derive(Clone, Debug, Default)]
pub struct ModelSettings {
    /// The engine that loads it; `None` for the server's.
    pub engine: Option<Arc<dyn Engine>>,
    /// What the engine is told (shapes compiled ahead, threads, plan cache bounds).
    pub load: LoadOptions,
    /// Dynamic batching; `None` (the default) runs each request alone.
    pub batching: Option<BatchOptions>,
}

/// Where a model came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A plain file named on the command line or in config (models that are not secret).
    File,
    /// Uploaded by a data owner over attested TLS.
    Upload,
    /// Pulled from a registry and decrypted with a key released by the key broker.
    Registry {
        /// The registry's model id.
        model_id: String,
    },
    /// Provisioned offline and sealed to this TEE (`device`), decrypted at start.
    Sealed {
        /// The model's id.
        model_id: String,
    },
}

/// A loaded model version.
#[derive(Debug)]
pub struct ServedModel {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// The engine's model.
    pub model: Arc<dyn LoadedModel>,
    /// Where it came from.
    pub source: Source,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Its dynamic batching, checked against its signature when it was added.
    pub batching: Option<BatchOptions>,
    /// Its batching thread, started by the first request that needs it; it stops when the
    /// model is dropped (deleted, and no request holds it any more).
    batcher: OnceLock<Batcher>,
}

impl ServedModel {
    /// Its batcher when it batches (started on first use with `start`), else `None`.
    pub fn batcher(
        &self,
        start: impl FnOnce(BatchOptions) -> Result<Batcher, BatchError>,
    ) -> Result<Option<&Batcher>, BatchError> {
        let Some(options) = self.batching else {
            return Ok(None);
        };
        if let Some(batcher) = self.batcher.get() {
            return Ok(Some(batcher));
        }
        // Two first requests may both start one; the loser's thread stops when it is dropped.
        let _ = self.batcher.set(start(options)?);
        Ok(self.batcher.get())
    }
}

/// The state of a name that has no loaded version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// Being fetched or loaded.
    Loading,
    /// Loading failed for good; the reason is shown in metadata.
    Failed {
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Default)]
struct Entry {
    versions: BTreeMap<u64, Arc<ServedModel>>,
    pending: Option<Pending>,
    /// Given to the server at start (a file, the configuration, the state directory, a pull
    /// configured at start): the server is ready only when it serves it.
    configured: bool,
}

/// Why a lookup or change failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepositoryError {
    /// No model has this name.
    #[error("model '{name}' is not known")]
    UnknownModel {
        /// The name.
        name: String,
    },
    /// The model has no such version.
    #[error("model '{name}' has no version {version}")]
    UnknownVersion {
        /// The name.
        name: String,
        /// The version asked for.
        version: String,
    },
    /// The model is not loaded (yet, or at all).
    #[error("model '{name}' is not ready: {why}")]
    NotReady {
        /// The name.
        name: String,
        /// Loading, or why it failed.
        why: String,
    },
    /// The version is taken.
    #[error("model '{name}' already has version {version}")]
    VersionExists {
        /// The name.
        name: String,
        /// The version.
        version: u64,
    },
    /// The server holds as many models as it may.
    #[error("the server already holds {max} models; delete one first")]
    Full {
        /// The limit.
        max: usize,
    },
    /// A name the server does not accept.
    #[error("model names are 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'")]
    BadName,
    /// Dynamic batching is configured for a model that cannot be batched.
    #[error("model '{name}': {source}")]
    Batching {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: BatchError,
    },
}

/// A summary of one name, for listings and readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The name.
    pub name: String,
    /// Loaded versions, ascending.
    pub versions: Vec<u64>,
    /// Loading or failed, when no version is loaded.
    pub pending: Option<Pending>,
}

/// The models being served.
#[derive(Debug)]
pub struct Repository {
    entries: RwLock<BTreeMap<String, Entry>>,
    max_versions: usize,
}

/// Checks a model name: it appears in URLs and logs.
pub fn check_name(name: &str) -> Result<(), RepositoryError> {
    if adyton_proto::id::is_model_id(name) {
        Ok(())
    } else {
        Err(RepositoryError::BadName)
    }
}

impl Repository {
    /// An empty repository that holds at most `max_versions` loaded model versions in all.
    pub fn new(max_versions: usize) -> Self {
        Repository {
            entries: RwLock::new(BTreeMap::new()),
            max_versions,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a loaded model as `version`, or as the next version after the highest loaded one.
    pub fn insert(
        &self,
        name: &str,
        version: Option<u64>,
        model: Arc<dyn LoadedModel>,
        source: Source,
    ) -> Result<Arc<ServedModel>, RepositoryError> {
        self.insert_with(name, version, model, source, None)
    }

    /// [`Repository::insert`], with dynamic batching when `batching` is given (refused for a
    /// model without a batch dimension).
    pub fn insert_with(
        &self,
        name: &str,
        version: Option<u64>,
        model: Arc<dyn LoadedModel>,
        source: Source,
        batching: Option<BatchOptions>,
    ) -> Result<Arc<ServedModel>, RepositoryError> {
        check_name(name)?;
        if let Some(options) = &batching {
            options
                .check()
                .and_then(|()| check_batchable(model.signature()))
                .map_err(|source| RepositoryError::Batching {
                    name: name.to_owned(),
                    source,
                })?;
        }
        let mut entries = self.write();
        let loaded: usize = entries.values().map(|e| e.versions.len()).sum();
        if loaded >= self.max_versions {
            return Err(RepositoryError::Full {
                max: self.max_versions,
            });
        }
        let entry = entries.entry(name.to_owned()).or_default();
        let version = match version {
            Some(v) if entry.versions.contains_key(&v) => {
                return Err(RepositoryError::VersionExists {
                    name: name.to_owned(),
                    version: v,
                })
            }
            Some(v) => v,
            None => entry.versions.keys().next_back().map_or(1, |v| v + 1),
        };
        let served = Arc::new(ServedModel {
            name: name.to_owned(),
            version,
            model,
            source,
            loaded_at: SystemTime::now(),
            batching,
            batcher: OnceLock::new(),
        });
        entry.versions.insert(version, Arc::clone(&served));
        entry.pending = None;
        Ok(served)
    }

    /// Marks the names held now (loaded, loading or failed) as the server's configured models:
    /// [`Repository::ready`] waits for them. Names added later, by an upload or a pull requested
    /// over the API, are not configured: their failures are their own state only.
    pub fn mark_configured(&self) {
        for entry in self.write().values_mut() {
            entry.configured = true;
        }
    }

    /// Marks a name as loading or failed (shown while it has no loaded version).
    pub fn set_pending(&self, name: &str, pending: Pending) -> Result<(), RepositoryError> {
        check_name(name)?;
        self.write().entry(name.to_owned()).or_default().pending = Some(pending);
        Ok(())
    }

    /// A model version: the highest loaded one when `version` is `None`.
    pub fn get(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<ServedModel>, RepositoryError> {
        let entries = self.read();
        let entry = entries
            .get(name)
            .ok_or_else(|| RepositoryError::UnknownModel {
                name: name.to_owned(),
            })?;
        let found = match version {
            None => entry.versions.values().next_back(),
            Some(v) => {
                let unknown = || RepositoryError::UnknownVersion {
                    name: name.to_owned(),
                    version: v.to_owned(),
                };
                let number: u64 = v.parse().map_err(|_| unknown())?;
                Some(entry.versions.get(&number).ok_or_else(unknown)?)
            }
        };
        match found {
            Some(served) => Ok(Arc::clone(served)),
            None => Err(RepositoryError::NotReady {
                name: name.to_owned(),
                why: match &entry.pending {
                    Some(Pending::Failed { reason }) => format!("loading failed: {reason}"),
                    _ => "it is loading".to_owned(),
                },
            }),
        }
    }

    /// Removes every version of a model; `false` if the name was not known.
    pub fn remove(&self, name: &str) -> bool {
        self.write().remove(name).is_some()
    }

    /// Every name, ordered.
    pub fn list(&self) -> Vec<Summary> {
        self.read()
            .iter()
            .map(|(name, e)| Summary {
                name: name.clone(),
                versions: e.versions.keys().copied().collect(),
                pending: if e.versions.is_empty() {
                    e.pending.clone()
                } else {
                    None
                },
            })
            .collect()
    }

    /// Every loaded version, by name and version.
    pub fn served(&self) -> Vec<Arc<ServedModel>> {
        self.read()
            .values()
            .flat_map(|e| e.versions.values().cloned())
            .collect()
    }

    /// The summary of one name.
    pub fn summary(&self, name: &str) -> Option<Summary> {
        self.list().into_iter().find(|s| s.name == name)
    }

    /// Whether every name has a loaded version (nothing loading or failed).
    pub fn all_ready(&self) -> bool {
        self.read().values().all(|e| !e.versions.is_empty())
    }

    /// Whether the server can serve its configured models ([`Repository::mark_configured`]):
    /// each has a loaded version. This is the server's readiness (`/v2/health/ready`), which an
    /// orchestrator takes the server out of service on: a model that an administrator uploads or
    /// pulls over the API, and that fails, is shown failed on its own and changes nothing here.
    pub fn ready(&self) -> bool {
        self.read()
            .values()
            .filter(|e| e.configured)
            .all(|e| !e.versions.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{EngineError, Plan, Signature, Tensor};

    #[derive(Debug)]
    struct Fake(Signature);
    impl LoadedModel for Fake {
        fn signature(&self) -> &Signature {
            &self.0
        }
        fn plan(&self) -> Plan {
            Plan::Optimized
        }
        fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
            Ok(inputs)
        }
    }

    fn fake() -> Arc<dyn LoadedModel> {
        Arc::new(Fake(Signature::default()))
    }

    #[test]
    fn versions_count_up_and_the_latest_is_the_default() {
        let repo = Repository::new(8);
        repo.insert("m", None, fake(), Source::File).unwrap();
        repo.insert("m", None, fake(), Source::Upload).unwrap();
        assert_eq!(repo.get("m", None).unwrap().version, 2);
        assert_eq!(repo.get("m", Some("1")).unwrap().version, 1);
        assert!(matches!(
            repo.get("m", Some("3")),
            Err(RepositoryError::UnknownVersion { .. })
        ));
        assert!(matches!(
            repo.get("m", Some("x")),
            Err(RepositoryError::UnknownVersion { .. })
        ));
        assert!(matches!(
            repo.insert("m", Some(1), fake(), Source::File),
            Err(RepositoryError::VersionExists { .. })
        ));
        assert!(repo.remove("m"));
        assert!(!repo.remove("m"));
        assert!(matches!(
            repo.get("m", None),
            Err(RepositoryError::UnknownModel { .. })
        ));
    }

    #[test]
    fn pending_names_are_not_ready() {
        let repo = Repository::new(8);
        repo.set_pending("p", Pending::Loading).unwrap();
        assert!(!repo.all_ready());
        repo.set_pending(
            "p",
            Pending::Failed {
                reason: "policy denied".into(),
            },
        )
        .unwrap();
        let e = repo.get("p", None).unwrap_err().to_string();
        assert!(e.contains("policy denied"), "{e}");
        repo.insert("p", None, fake(), Source::File).unwrap();
        assert!(repo.all_ready());
    }

    #[test]
    fn readiness_waits_for_configured_models_only() {
        let repo = Repository::new(8);
        repo.insert("file", None, fake(), Source::File).unwrap();
        repo.set_pending("pulled", Pending::Loading).unwrap();
        repo.mark_configured();
        assert!(!repo.ready(), "a configured pull is loading");
        repo.insert("pulled", None, fake(), Source::File).unwrap();
        assert!(repo.ready());
        // A later pull that fails is that model's state alone.
        repo.set_pending(
            "asked-later",
            Pending::Failed {
                reason: "HTTP 404: no model".into(),
            },
        )
        .unwrap();
        assert!(repo.ready());
        assert!(!repo.all_ready());

        // A configured pull that fails makes the server unready...
        let repo = Repository::new(8);
        repo.set_pending("pulled", Pending::Loading).unwrap();
        repo.mark_configured();
        repo.set_pending(
            "pulled",
            Pending::Failed {
                reason: "policy denied".into(),
            },
        )
        .unwrap();
        assert!(!repo.ready());
        // ...until the operator deletes it: then the server no longer waits for it.
        repo.remove("pulled");
        assert!(repo.ready());
    }

    #[test]
    fn limits_and_names_are_enforced() {
        let repo = Repository::new(1);
        repo.insert("a", None, fake(), Source::File).unwrap();
        assert!(matches!(
            repo.insert("b", None, fake(), Source::File),
            Err(RepositoryError::Full { max: 1 })
        ));
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert_eq!(check_name(bad), Err(RepositoryError::BadName), "{bad:?}");
        }
    }
}
