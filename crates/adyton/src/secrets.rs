//! Files that hold secrets: the bearer-token files that the servers and the operator's commands
//! read, and where `adyton kbs login` keeps the KBS token.

use std::fs::Metadata;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

use crate::files::read_limited;

/// Largest token file read; tokens are a few dozen characters.
const MAX_TOKEN_FILE_LEN: u64 = 4096;
/// The environment variable naming the KBS token file, when no flag names one.
const KBS_TOKEN_ENV: &str = "ADYTON_KBS_TOKEN";
/// The KBS token file under `$HOME`, where `adyton kbs login` writes it.
const DEFAULT_KBS_TOKEN_FILE: &str = ".config/adyton/kbs-token";

/// A bearer token from its file (mode 0600 advised): UTF-8 text of at most
/// [`MAX_TOKEN_FILE_LEN`] bytes, without the whitespace around it, not empty. `what` names the
/// file in messages ("token file").
pub fn read_token_file(path: &Path, what: &str) -> Result<Zeroizing<String>> {
    let bytes = read_limited(path, MAX_TOKEN_FILE_LEN, what)?;
    if let Ok(meta) = std::fs::metadata(path) {
        warn_if_readable_by_others(path, what, &meta);
    }
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("{what} {} is not text", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("{what} {} is empty", path.display());
    }
    Ok(Zeroizing::new(token.to_owned()))
}

/// Warns, without failing, when users other than the owner may read a secret's file.
pub fn warn_if_readable_by_others(path: &Path, what: &str, meta: &Metadata) {
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        eprintln!(
            "warning: {what} {} can be read by other users (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        );
    }
}

/// Where `adyton kbs login` keeps the KBS token: `$HOME/.config/adyton/kbs-token`. `flag` is the
/// option that names another file, for the message when `HOME` is not set.
pub fn default_kbs_token_file(flag: &str) -> Result<PathBuf> {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home).join(DEFAULT_KBS_TOKEN_FILE)),
        _ => bail!("HOME is not set: give {flag}"),
    }
}

/// The KBS token file to read: `given` (the flag `flag`), else `ADYTON_KBS_TOKEN`, else
/// [`default_kbs_token_file`].
pub fn kbs_token_file(given: Option<&PathBuf>, flag: &str) -> Result<PathBuf> {
    match (given, std::env::var_os(KBS_TOKEN_ENV)) {
        (Some(path), _) => Ok(path.clone()),
        (None, Some(path)) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => default_kbs_token_file(flag),
    }
}
