//! Files on the operator's disk: key files, progress bars, inputs; atomic outputs and bounded
//! reads come from `adyton-cli`, which the TEE binary shares.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use adyton_envelope::{Aes256Key, AES256_KEY_LEN};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use zeroize::Zeroizing;

pub use adyton_cli::files::{print_stdout, read_limited, OutputFile, OutputKind};

/// Files smaller than this get no progress bar.
const PROGRESS_THRESHOLD: u64 = 8 << 20;

/// Reads a key file: exactly 32 raw bytes, as CNAP's tools keep them.
pub fn read_key_file(path: &Path) -> Result<Aes256Key> {
    let mut file =
        File::open(path).with_context(|| format!("cannot open key file {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    if meta.len() != AES256_KEY_LEN as u64 {
        bail!(
            "key file {} holds {} bytes; a key file holds exactly {AES256_KEY_LEN} raw bytes",
            path.display(),
            meta.len()
        );
    }
    crate::secrets::warn_if_readable_by_others(path, "key file", &meta);
    let mut bytes = Zeroizing::new([0u8; AES256_KEY_LEN]);
    file.read_exact(bytes.as_mut_slice())
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    Ok(Aes256Key::from_slice(bytes.as_slice())?)
}

/// Prepares a new key file (mode 0600); it appears when the returned output is committed.
pub fn prepare_key_file(path: &Path, key: &Aes256Key, force: bool) -> Result<OutputFile> {
    let mut out = OutputFile::create(path, force, OutputKind::Secret)?;
    io::Write::write_all(out.file(), key.expose_secret())
        .with_context(|| format!("cannot write key file {}", path.display()))?;
    out.file()
        .set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of key file {}", path.display()))?;
    Ok(out)
}

/// A progress bar on stderr for work over `len` bytes; hidden for small files and when stderr is
/// not a terminal.
pub fn progress(len: u64, message: &'static str) -> ProgressBar {
    if len < PROGRESS_THRESHOLD {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

/// Opens an input file, naming it in the error.
pub fn open_input(path: &Path) -> Result<(File, u64)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        bail!("{} is a directory", path.display());
    }
    Ok((file, meta.len()))
}
