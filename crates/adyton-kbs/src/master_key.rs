//! The master key: the key that seals model keys at rest.
//!
//! The master key comes from a file with mode 0600, or from an environment variable, never from
//! the configuration file (`design.md`, "KBS key transfer"). Without either, one is generated into
//! the data directory. Each model key is sealed in an envelope v2 whose authenticated header names
//! the key record's id, so a sealed key copied into another record does not open there.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use adyton_envelope::v2::{self, EncryptOptions, Header};
use adyton_envelope::{Aes256Key, AES256_KEY_LEN};
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::{KbsError, Result};

/// Name of the generated master key file inside the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

/// Content type of a sealed model key: the plaintext is the 32 raw key bytes.
pub const MODEL_KEY_CONTENT_TYPE: &str = "application/x-adyton-model-key";

/// Chunk size of a sealed model key: the 32-byte key fits in one chunk.
const SEALED_KEY_CHUNK_SIZE: u32 = 64;

/// The key that seals model keys at rest. It zeroizes on drop and its `Debug` is redacted.
pub struct MasterKey(Aes256Key);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A master key from key material already in hand.
    pub fn from_key(key: Aes256Key) -> Self {
        Self(key)
    }

    /// Reads a master key file: exactly 32 raw bytes, in a regular file that neither group nor
    /// others may read or write.
    pub fn from_file(path: &Path) -> Result<Self> {
        let shown = path.display();
        let file =
            File::open(path).map_err(|e| master_key_error(format!("cannot open {shown}: {e}")))?;
        // The checks look at the opened file, not the path, so the file cannot change in between.
        let meta = file
            .metadata()
            .map_err(|e| master_key_error(format!("cannot read the metadata of {shown}: {e}")))?;
        if !meta.is_file() {
            return Err(master_key_error(format!("{shown} is not a regular file")));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(master_key_error(format!(
                "{shown} has mode {mode:04o}; group and others must have no access (chmod 600 {shown})"
            )));
        }
        // Read one byte more than a key, so that a longer file is noticed without reading it all.
        let mut bytes = Zeroizing::new(Vec::with_capacity(AES256_KEY_LEN + 1));
        file.take(AES256_KEY_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| master_key_error(format!("cannot read {shown}: {e}")))?;
        if bytes.len() != AES256_KEY_LEN {
            return Err(master_key_error(format!(
                "{shown} holds {} bytes; a master key file holds exactly {AES256_KEY_LEN} raw bytes",
                if bytes.len() > AES256_KEY_LEN {
                    format!("more than {AES256_KEY_LEN}")
                } else {
                    bytes.len().to_string()
                }
            )));
        }
        Ok(Self(Aes256Key::from_slice(&bytes)?))
    }

    /// Reads a master key from the value of an environment variable: 64 hex digits, or the
    /// standard base64 (padded) of 32 bytes. Surrounding whitespace is ignored. Errors never
    /// repeat the value.
    pub fn from_env_value(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.len() == 2 * AES256_KEY_LEN {
            let mut bytes = Zeroizing::new([0u8; AES256_KEY_LEN]);
            return match hex::decode_to_slice(text, bytes.as_mut_slice()) {
                Ok(()) => Ok(Self(Aes256Key::from_slice(bytes.as_slice())?)),
                // The decoder's message would quote the offending character.
                Err(_) => Err(master_key_error(
                    "the value has 64 characters but they are not all hex digits".into(),
                )),
            };
        }
        // Large enough for anything a 44-character value decodes to; longer values fail below.
        let mut decoded = Zeroizing::new([0u8; 48]);
        let len = base64::engine::general_purpose::STANDARD
            .decode_slice(text.as_bytes(), decoded.as_mut_slice())
            .map_err(|_| {
                master_key_error(format!(
                    "the value ({} characters) is neither 64 hex digits nor standard base64 of \
                     {AES256_KEY_LEN} bytes",
                    text.len()
                ))
            })?;
        if len != AES256_KEY_LEN {
            return Err(master_key_error(format!(
                "the value is base64 of {len} bytes; a master key is {AES256_KEY_LEN} bytes \
                 (64 hex digits or 44 base64 characters)"
            )));
        }
        Ok(Self(Aes256Key::from_slice(
            decoded.get(..len).unwrap_or_default(),
        )?))
    }

    /// Loads `dir/master.key`, or generates it from the operating system's random source if it
    /// does not exist. Returns the key and whether it was created now.
    ///
    /// A new key is written to a temporary file (mode 0600), synced, and then hard-linked to its
    /// name, which fails if the name exists: the key file appears complete or not at all, and two
    /// processes starting at once never overwrite each other (the loser loads the winner's key).
    pub fn load_or_generate(dir: &Path) -> Result<(Self, bool)> {
        let path = dir.join(MASTER_KEY_FILE);
        // `symlink_metadata`, so that a dangling link counts as present and is reported, not
        // replaced.
        if fs::symlink_metadata(&path).is_ok() {
            return Ok((Self::from_file(&path)?, false));
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| master_key_error(format!("cannot create {}: {e}", dir.display())))?;
        let key = Aes256Key::generate()?;
        let temp = dir.join(format!(".{MASTER_KEY_FILE}.{}.tmp", uuid::Uuid::new_v4()));
        if let Err(e) = write_new_key_file(&temp, &key) {
            let _ = fs::remove_file(&temp);
            return Err(master_key_error(format!(
                "cannot write {}: {e}",
                temp.display()
            )));
        }
        let linked = fs::hard_link(&temp, &path);
        // The key lives on under `path` if the link was made; the temporary name goes either way.
        let _ = fs::remove_file(&temp);
        match linked {
            Ok(()) => {
                // The new name is durable only once the directory is synced.
                File::open(dir)
                    .and_then(|handle| handle.sync_all())
                    .map_err(|e| master_key_error(format!("cannot sync {}: {e}", dir.display())))?;
                Ok((Self(key), true))
            }
            // Another process created the key first: use that one.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok((Self::from_file(&path)?, false)),
            Err(e) => Err(master_key_error(format!(
                "cannot create {}: {e}",
                path.display()
            ))),
        }
    }

    /// Seals a model key for the key record `key_id`.
    pub fn seal(&self, key_id: &str, model_key: &Aes256Key) -> Result<Vec<u8>> {
        let options = EncryptOptions {
            chunk_size: SEALED_KEY_CHUNK_SIZE,
            key_id: key_id.into(),
            content_type: MODEL_KEY_CONTENT_TYPE.into(),
        };
        Ok(v2::seal(&self.0, model_key.expose_secret(), &options)?)
    }

    /// Opens the sealed model key of the key record `key_id`.
    ///
    /// Refused: a sealed key that does not authenticate under this master key
    /// ([`KbsError::Envelope`]), and one whose authenticated header names another record or
    /// another content type ([`KbsError::MasterKey`]).
    pub fn unseal(&self, key_id: &str, sealed: &[u8]) -> Result<Aes256Key> {
        // The header is checked before decryption, which bounds what a damaged record can make
        // the decryptor allocate. `v2::open` then authenticates these very header bytes (they are
        // the AAD of every chunk), so the checks hold for authenticated values.
        let (header, _) = Header::parse(sealed)?;
        if header.key_id != key_id {
            return Err(master_key_error(format!(
                "the sealed key of `{key_id}` belongs to key `{}`; it was moved from another record",
                header.key_id
            )));
        }
        if header.content_type != MODEL_KEY_CONTENT_TYPE {
            return Err(master_key_error(format!(
                "the sealed key of `{key_id}` has content type `{}`, not `{MODEL_KEY_CONTENT_TYPE}`",
                header.content_type
            )));
        }
        if header.plaintext_len != AES256_KEY_LEN as u64 {
            return Err(master_key_error(format!(
                "the sealed key of `{key_id}` declares {} bytes, not {AES256_KEY_LEN}",
                header.plaintext_len
            )));
        }
        let plaintext = v2::open(&self.0, sealed)?;
        Ok(Aes256Key::from_slice(&plaintext)?)
    }
}

/// Creates `path` (it must not exist) with mode 0600, writes the key and syncs it.
fn write_new_key_file(path: &Path, key: &Aes256Key) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(key.expose_secret())?;
    file.sync_all()
}

fn master_key_error(reason: String) -> KbsError {
    KbsError::MasterKey { reason }
}
