//! Files that hold secrets: the bearer-token files that the servers and the operator's commands
//! read, and their flag.

use std::fs::Metadata;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

use crate::files::read_limited;

/// Largest token file read; tokens are a few dozen characters.
const MAX_TOKEN_FILE_LEN: u64 = 4096;

/// `--token-file FILE`: a file holding a bearer token, read with [`read_token_file`]. What the
/// token guards, and any default, differ per command, so each sets the help with clap's
/// `mut_arg("token_file", ...)` on its arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TokenFileArgs {
    /// A file holding a bearer token.
    #[arg(id = "token_file", long = "token-file", value_name = "FILE")]
    pub path: Option<PathBuf>,
}

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_token_file_flag_is_optional_and_keeps_its_name() {
        use clap::{Args as _, FromArgMatches as _};
        let parse = |argv: &[&str]| {
            let command = TokenFileArgs::augment_args(clap::Command::new("c"));
            let matches = command.try_get_matches_from(argv)?;
            TokenFileArgs::from_arg_matches(&matches).map(|args| args.path)
        };
        assert_eq!(
            parse(&["c", "--token-file", "t"]).unwrap(),
            Some(PathBuf::from("t"))
        );
        assert_eq!(parse(&["c"]).unwrap(), None);
        let err = parse(&["c", "--token-file"]).unwrap_err();
        assert!(err.to_string().contains("--token-file <FILE>"), "{err}");
    }

    #[test]
    fn token_files_are_trimmed_bounded_and_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "  s3cret\n").unwrap();
        assert_eq!(
            read_token_file(&token, "token file").unwrap().as_str(),
            "s3cret"
        );
        std::fs::write(&token, " \n").unwrap();
        let e = format!("{:#}", read_token_file(&token, "token file").unwrap_err());
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(&token, vec![b'a'; 5000]).unwrap();
        let e = format!("{:#}", read_token_file(&token, "token file").unwrap_err());
        assert!(e.contains("larger than 4096 bytes"), "{e}");
        std::fs::write(&token, [0xff, 0xfe]).unwrap();
        let e = format!("{:#}", read_token_file(&token, "token file").unwrap_err());
        assert!(e.contains("is not text"), "{e}");
        let e = format!(
            "{:#}",
            read_token_file(&dir.path().join("none"), "token file").unwrap_err()
        );
        assert!(e.contains("cannot open token file"), "{e}");
    }
}
