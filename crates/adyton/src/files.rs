//! Files on the operator's disk: atomic outputs, key files, progress bars.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use adyton_envelope::{Aes256Key, AES256_KEY_LEN};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use zeroize::Zeroizing;

/// Files smaller than this get no progress bar.
const PROGRESS_THRESHOLD: u64 = 8 << 20;

/// An output file that appears at its path only when complete.
///
/// Bytes go to a temporary file (mode 0600) in the target's directory; [`AtomicOutput::commit`]
/// syncs it and renames it into place. Dropped without a commit, the temporary file is removed,
/// so a failure leaves nothing behind.
#[derive(Debug)]
pub struct AtomicOutput {
    target: PathBuf,
    force: bool,
    temp: tempfile::NamedTempFile,
}

impl AtomicOutput {
    /// Prepares to write `target`. Without `force`, an existing target is an error now, before any
    /// work is done.
    pub fn create(target: &Path, force: bool) -> Result<Self> {
        if target.is_dir() {
            bail!("{} is a directory", target.display());
        }
        if !force && target.exists() {
            bail!(
                "{} already exists (use --force to replace it)",
                target.display()
            );
        }
        let dir = match target.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .with_context(|| format!("{} names no file", target.display()))?;
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".partial")
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        Ok(Self {
            target: target.to_path_buf(),
            force,
            temp,
        })
    }

    /// The temporary file to write to.
    pub fn file(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// Syncs the data and renames it into place.
    pub fn commit(self) -> Result<()> {
        let target = self.target;
        self.temp
            .as_file()
            .sync_all()
            .with_context(|| format!("cannot write {}", target.display()))?;
        let persisted = if self.force {
            self.temp.persist(&target)
        } else {
            self.temp.persist_noclobber(&target)
        };
        persisted.map_err(|e| e.error).with_context(|| {
            format!(
                "cannot move the finished file into place at {}",
                target.display()
            )
        })?;
        // The rename is durable only once the directory is synced as well.
        let dir = match target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|handle| handle.sync_all())
            .with_context(|| format!("cannot sync directory {}", dir.display()))?;
        Ok(())
    }
}

/// The bytes of a file of at most `limit` bytes, in memory that is zeroized on drop (the file may
/// hold a secret). `what` names the file in messages ("token file").
pub fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    let file =
        File::open(path).with_context(|| format!("cannot open {what} {}", path.display()))?;
    let mut bytes = Zeroizing::new(Vec::new());
    // One byte more than the limit, so that a larger file is noticed without reading it all.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!("{what} {} is larger than {limit} bytes", path.display());
    }
    Ok(bytes)
}

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
pub fn prepare_key_file(path: &Path, key: &Aes256Key, force: bool) -> Result<AtomicOutput> {
    let mut out = AtomicOutput::create(path, force)?;
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

/// Writes `text` and a newline to stdout. A closed pipe (`adyton ... | head`) ends the output
/// quietly instead of failing.
pub fn print_stdout(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}
