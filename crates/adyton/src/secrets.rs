//! Where `adyton kbs login` keeps the KBS token; the token files themselves are read by
//! `adyton-cli`'s `secrets`, which the TEE binary shares.

use std::path::PathBuf;

use anyhow::{bail, Result};

pub use adyton_cli::secrets::{read_token_file, warn_if_readable_by_others};

/// The environment variable naming the KBS token file, when no flag names one.
const KBS_TOKEN_ENV: &str = "ADYTON_KBS_TOKEN";
/// The KBS token file under `$HOME`, where `adyton kbs login` writes it.
const DEFAULT_KBS_TOKEN_FILE: &str = ".config/adyton/kbs-token";

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
