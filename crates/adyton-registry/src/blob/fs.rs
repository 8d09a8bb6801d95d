//! Blobs in a directory of the local filesystem: the key `blobs/m1` is the file `DIR/blobs/m1`.
//!
//! A write goes to a temporary file (`.tmp-...`, mode 0600) in the target's directory, is synced,
//! and is then renamed into place (or hard-linked, which fails on an existing target, when it must
//! not overwrite), and the directory is synced: a reader sees the whole object or none, and a crash
//! loses no finished write. A failed or abandoned write (a full disk, a client gone) removes its
//! temporary file; those a crash left behind are removed when the store is next opened. Keys never
//! start with `.`, so temporary files are never listed or served.
//!
//! One store at a time uses a directory: opening takes a lock on `DIR/.lock` (released when the
//! store is dropped, or its process ends), so that no other process's upload is under way when
//! the stale temporary files are removed.

use std::io::SeekFrom;
use std::ops::Range;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use super::{check_key, BlobEntry, BlobRead, BlobStore, ByteStream};
use crate::error::BlobError;

/// Bytes read from a file per chunk of a download stream.
const READ_CHUNK: usize = 256 << 10;

/// The file in the store's directory whose lock keeps a second store off it.
const LOCK_FILE: &str = ".lock";

/// The prefix of temporary files' names.
const TEMP_PREFIX: &str = ".tmp-";

/// A blob store in one directory.
#[derive(Debug)]
pub struct FsStore {
    root: PathBuf,
    /// Holds the directory's lock while the store lives.
    _lock: std::fs::File,
}

impl FsStore {
    /// The store in `root`, made (mode 0700) if missing. Refused while another store (in this
    /// process or another) has the directory open. Temporary files left by a crash are removed.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| BlobError::io("cannot create directory", root, e))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| BlobError::io("cannot open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(BlobError::Config {
                    reason: format!(
                        "{} is in use by another registry (it holds {}); one registry per \
                         directory",
                        root.display(),
                        lock_path.display()
                    ),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(BlobError::io("cannot lock", &lock_path, e))
            }
        }
        let removed = remove_stale_temp_files(root)?;
        if removed > 0 {
            eprintln!(
                "adyton-registry: removed {removed} temporary file(s) left in {} by an interrupted \
                 write",
                root.display()
            );
        }
        Ok(Self {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

/// A temporary file that is removed when dropped, unless it was moved into place.
struct TempFile {
    path: PathBuf,
    done: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            // Also runs when the upload's task is cancelled mid-write.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes the temporary files under `dir` (its subdirectories too, as keys make them) and returns
/// how many. Only the store's lock holder calls it, so none of them belongs to a write under way.
/// Symbolic links are neither followed nor removed.
fn remove_stale_temp_files(dir: &Path) -> Result<usize, BlobError> {
    let entries = std::fs::read_dir(dir).map_err(|e| BlobError::io("cannot list", dir, e))?;
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| BlobError::io("cannot list", dir, e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| BlobError::io("cannot read", &path, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if kind.is_file() && name.starts_with(TEMP_PREFIX) {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BlobError::io("cannot remove", &path, e)),
            }
        } else if kind.is_dir() && !name.starts_with('.') {
            removed += remove_stale_temp_files(&path)?;
        }
    }
    Ok(removed)
}

fn temp_name() -> Result<String, BlobError> {
    use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
    let mut bytes = [0u8; 12];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| BlobError::Config {
            reason: "the random source failed".to_owned(),
        })?;
    Ok(format!("{TEMP_PREFIX}{}", hex::encode(bytes)))
}

fn not_found_or(key: &str, what: &'static str, path: &Path, e: std::io::Error) -> BlobError {
    if e.kind() == std::io::ErrorKind::NotFound {
        BlobError::NotFound {
            key: key.to_owned(),
        }
    } else {
        BlobError::io(what, path, e)
    }
}

async fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    tokio::fs::File::open(dir)
        .await
        .map_err(|e| BlobError::io("cannot open directory", dir, e))?
        .sync_all()
        .await
        .map_err(|e| BlobError::io("cannot sync directory", dir, e))
}

#[async_trait::async_trait]
impl BlobStore for FsStore {
    async fn put(
        &self,
        key: &str,
        mut data: ByteStream,
        overwrite: bool,
    ) -> Result<u64, BlobError> {
        let target = self.path(key)?;
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        if !overwrite && tokio::fs::try_exists(&target).await.unwrap_or(false) {
            // Refused before the body is read; the link below closes the race.
            return Err(BlobError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .await
            .map_err(|e| BlobError::io("cannot create directory", &dir, e))?;
        let mut temp = TempFile {
            path: dir.join(temp_name()?),
            done: false,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp.path)
            .await
            .map_err(|e| BlobError::io("cannot create", &temp.path, e))?;
        let mut written = 0u64;
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            file.write_all(&chunk)
                .await
                .map_err(|e| BlobError::io("cannot write", &temp.path, e))?;
            written += chunk.len() as u64;
        }
        file.flush()
            .await
            .map_err(|e| BlobError::io("cannot write", &temp.path, e))?;
        file.sync_all()
            .await
            .map_err(|e| BlobError::io("cannot sync", &temp.path, e))?;
        drop(file);
        if overwrite {
            tokio::fs::rename(&temp.path, &target)
                .await
                .map_err(|e| BlobError::io("cannot rename into", &target, e))?;
            temp.done = true;
        } else {
            // A hard link fails on an existing target, where a rename would replace it.
            match tokio::fs::hard_link(&temp.path, &target).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(BlobError::AlreadyExists {
                        key: key.to_owned(),
                    })
                }
                Err(e) => return Err(BlobError::io("cannot link into", &target, e)),
            }
            // The temporary name goes in the drop.
        }
        drop(temp);
        sync_dir(&dir).await?;
        Ok(written)
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<BlobRead, BlobError> {
        let path = self.path(key)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| not_found_or(key, "cannot open", &path, e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| BlobError::io("cannot read", &path, e))?;
        if !meta.is_file() {
            return Err(BlobError::NotFound {
                key: key.to_owned(),
            });
        }
        let total = meta.size();
        let range = range.unwrap_or(0..total);
        if range.start > range.end || range.end > total {
            return Err(BlobError::Config {
                reason: format!("range {range:?} outside an object of {total} bytes"),
            });
        }
        file.seek(SeekFrom::Start(range.start))
            .await
            .map_err(|e| BlobError::io("cannot seek", &path, e))?;
        let remaining = range.end - range.start;
        let stream = futures_util::stream::try_unfold(
            (file, remaining, path),
            |(mut file, remaining, path)| async move {
                if remaining == 0 {
                    return Ok(None);
                }
                let want = usize::try_from(remaining).map_or(READ_CHUNK, |r| r.min(READ_CHUNK));
                let mut buf = vec![0u8; want];
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| BlobError::io("cannot read", &path, e))?;
                if n == 0 {
                    return Err(BlobError::io(
                        "cannot read",
                        &path,
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                buf.truncate(n);
                Ok(Some((Bytes::from(buf), (file, remaining - n as u64, path))))
            },
        );
        Ok(BlobRead {
            total,
            stream: stream.boxed(),
        })
    }

    async fn head(&self, key: &str) -> Result<u64, BlobError> {
        let path = self.path(key)?;
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|e| not_found_or(key, "cannot read", &path, e))?;
        if !meta.is_file() {
            return Err(BlobError::NotFound {
                key: key.to_owned(),
            });
        }
        Ok(meta.size())
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(BlobError::io("cannot remove", &path, e)),
        }
        if let Some(dir) = path.parent() {
            sync_dir(dir).await?;
        }
        Ok(true)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobEntry>, BlobError> {
        let dir = self.path(prefix)?;
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(BlobError::io("cannot list", &dir, e)),
        };
        let mut out = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| BlobError::io("cannot list", &dir, e))?
        {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let key = format!("{prefix}/{name}");
            if check_key(&key).is_err() {
                // Temporary files and anything else this store did not write.
                continue;
            }
            let meta = match entry.metadata().await {
                Ok(meta) if meta.is_file() => meta,
                _ => continue,
            };
            out.push(BlobEntry {
                key,
                size: meta.size(),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}
