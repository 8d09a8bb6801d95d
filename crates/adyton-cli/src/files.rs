//! Outputs written atomically, bounded reads of small files, and standard output.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsFd as _;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

/// What an output holds, which decides where it may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Evidence, requests, responses, certificates, models, tensors: may be written straight into
    /// a character device or a pipe the user named (`-o /dev/null`, `-o >(jq .)`).
    Public,
    /// As `Public`, and `-` is standard output.
    PublicOrStdout,
    /// A key or a token: only ever a regular file of mode 0600, so never a device, a pipe, a
    /// symbolic link or standard output, where it would leave the operator's control.
    Secret,
}

/// An output file. A regular file (or a new one) appears at its path only when complete; a
/// character device or a named pipe the user named is written straight into and never replaced.
///
/// For a regular file, bytes go to a temporary file (mode 0600) in the target's directory;
/// [`OutputFile::commit`] syncs it and renames it into place. Dropped without a commit, the
/// temporary file is removed, so a failure leaves nothing behind.
///
/// Renaming over a path replaces whatever is there, so the target is looked at first and
/// nothing but a regular file is ever replaced (`--force` against `/dev/null` once turned it
/// into a regular file). A symbolic link is not followed to be replaced: one that leads to a
/// character device or a pipe (`/dev/stdout`, `/dev/fd/63` from `>(...)`) is written through,
/// any other is refused.
#[derive(Debug)]
pub struct OutputFile {
    target: PathBuf,
    sink: Sink,
}

#[derive(Debug)]
enum Sink {
    Atomic {
        force: bool,
        temp: tempfile::NamedTempFile,
    },
    /// A character device or a named pipe, opened for writing without truncation or creation.
    Special(File),
    /// A duplicate of the standard output's descriptor.
    Stdout(File),
}

/// What is at an output path, without following a symbolic link.
enum Existing {
    Nothing,
    Regular,
    /// A character device or a named pipe, directly or through symbolic links.
    Special,
}

impl OutputFile {
    /// Prepares to write `target`. Without `force`, an existing regular file is an error now,
    /// before any work is done; so is anything that is neither a regular file nor, for a public
    /// output, a character device or a named pipe.
    pub fn create(target: &Path, force: bool, kind: OutputKind) -> Result<Self> {
        let shown = target.display();
        if target.as_os_str() == "-" {
            return match kind {
                OutputKind::PublicOrStdout => {
                    let fd = io::stdout()
                        .as_fd()
                        .try_clone_to_owned()
                        .context("cannot use standard output")?;
                    Ok(Self {
                        target: target.to_path_buf(),
                        sink: Sink::Stdout(File::from(fd)),
                    })
                }
                OutputKind::Public => bail!(
                    "this output cannot be standard output (`-`); name a file (./- for a file \
                     named -)"
                ),
                OutputKind::Secret => bail!(
                    "a secret is never written to standard output (`-`); name a file (./- for a \
                     file named -)"
                ),
            };
        }
        match examine(target, kind)? {
            Existing::Special => {
                // No create, no truncate: opening changes nothing, and the descriptor is checked
                // again in case the path was swapped for something else in between.
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(target)
                    .with_context(|| format!("cannot open {shown} for writing"))?;
                let file_type = file
                    .metadata()
                    .with_context(|| format!("cannot read {shown}"))?
                    .file_type();
                if !(file_type.is_char_device() || file_type.is_fifo()) {
                    bail!("{shown} changed while it was opened; nothing was written");
                }
                return Ok(Self {
                    target: target.to_path_buf(),
                    sink: Sink::Special(file),
                });
            }
            Existing::Regular if !force => {
                bail!("{shown} already exists (use --force to replace it)")
            }
            Existing::Regular | Existing::Nothing => {}
        }
        let dir = match target.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .with_context(|| format!("{shown} names no file"))?;
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".partial")
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        Ok(Self {
            target: target.to_path_buf(),
            sink: Sink::Atomic { force, temp },
        })
    }

    /// The file to write to.
    pub fn file(&mut self) -> &mut File {
        match &mut self.sink {
            Sink::Atomic { temp, .. } => temp.as_file_mut(),
            Sink::Special(file) | Sink::Stdout(file) => file,
        }
    }

    /// For a regular file, syncs the data and renames it into place; otherwise flushes.
    pub fn commit(self) -> Result<()> {
        let target = self.target;
        let (force, temp) = match self.sink {
            Sink::Atomic { force, temp } => (force, temp),
            // Nothing is buffered in a `File`; a pipe or device has nothing to sync.
            Sink::Special(_) | Sink::Stdout(_) => return Ok(()),
        };
        temp.as_file()
            .sync_all()
            .with_context(|| format!("cannot write {}", target.display()))?;
        let persisted = if force {
            // Looked at again just before the rename: what was a regular file or nothing when
            // the command started may be something else after a long encryption.
            if !matches!(
                examine(&target, OutputKind::Secret),
                Ok(Existing::Regular | Existing::Nothing)
            ) {
                bail!(
                    "{} is no longer a regular file; it was not replaced",
                    target.display()
                );
            }
            temp.persist(&target)
        } else {
            temp.persist_noclobber(&target)
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

impl std::fmt::Display for OutputFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.sink {
            Sink::Stdout(_) => f.write_str("standard output"),
            _ => write!(f, "{}", self.target.display()),
        }
    }
}

/// What is at `target`, refusing what an output of `kind` may not go to.
fn examine(target: &Path, kind: OutputKind) -> Result<Existing> {
    let shown = target.display();
    let meta = match fs::symlink_metadata(target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(e).with_context(|| format!("cannot read {shown}")),
    };
    let file_type = meta.file_type();
    if file_type.is_file() {
        return Ok(Existing::Regular);
    }
    if file_type.is_dir() {
        bail!("{shown} is a directory");
    }
    if kind == OutputKind::Secret {
        bail!(
            "{shown} is {}; a key or token is only written to a regular file",
            describe(file_type)
        );
    }
    // A symbolic link is judged by what it leads to, but only a device or a pipe is written
    // through it: replacing the link would surprise whoever made it, and writing into the
    // regular file it names would put the output somewhere else than the path given.
    let resolved = if file_type.is_symlink() {
        match fs::metadata(target) {
            Ok(meta) => meta.file_type(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!("{shown} is a symbolic link to nothing; name the file itself")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot follow {shown}")),
        }
    } else {
        file_type
    };
    if resolved.is_char_device() || resolved.is_fifo() {
        return Ok(Existing::Special);
    }
    if file_type.is_symlink() {
        bail!(
            "{shown} is a symbolic link to {}; name the file itself (or `-` for standard output \
             where the command allows it)",
            describe(resolved)
        );
    }
    bail!(
        "{shown} is {}; an output is written only to a regular file, a character device or a \
         named pipe, and never replaces anything else",
        describe(resolved)
    )
}

fn describe(file_type: fs::FileType) -> &'static str {
    if file_type.is_file() {
        "a regular file"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
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

/// Writes `text` and a newline to stdout. A closed pipe (`adyton ... | head`) ends the output
/// quietly instead of failing.
pub fn print_stdout(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn refusal(path: &Path, force: bool, kind: OutputKind) -> String {
        format!("{:#}", OutputFile::create(path, force, kind).unwrap_err())
    }

    #[test]
    fn only_regular_files_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.json");
        fs::write(&file, "old").unwrap();
        assert!(refusal(&file, false, OutputKind::Public).contains("--force"));
        let mut out = OutputFile::create(&file, true, OutputKind::Public).unwrap();
        out.file().write_all(b"new").unwrap();
        out.commit().unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "new");

        let socket = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        for kind in [OutputKind::Public, OutputKind::Secret] {
            assert!(refusal(&socket, true, kind).contains("a socket"));
        }
        assert!(refusal(dir.path(), true, OutputKind::Public).contains("directory"));
        assert!(fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket());
    }

    #[test]
    fn links_lead_only_to_pipes_and_devices() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("target.json");
        fs::write(&file, "keep").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(
            refusal(&link, true, OutputKind::Public).contains("symbolic link to a regular file")
        );
        let dangling = dir.path().join("dangling.json");
        std::os::unix::fs::symlink(dir.path().join("nothing"), &dangling).unwrap();
        assert!(refusal(&dangling, true, OutputKind::Public).contains("to nothing"));
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&file).unwrap(), "keep");

        let fifo = dir.path().join("pipe");
        mkfifo(&fifo);
        let to_fifo = dir.path().join("to-pipe");
        std::os::unix::fs::symlink(&fifo, &to_fifo).unwrap();
        assert!(matches!(
            examine(&to_fifo, OutputKind::Public).unwrap(),
            Existing::Special
        ));
        assert!(refusal(&to_fifo, false, OutputKind::Secret).contains("regular file"));
    }

    #[test]
    fn secrets_go_to_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        mkfifo(&fifo);
        assert!(refusal(&fifo, true, OutputKind::Secret).contains("a named pipe"));
        assert!(refusal(Path::new("/dev/null"), false, OutputKind::Secret)
            .contains("a character device"));
        assert!(refusal(Path::new("-"), true, OutputKind::Secret).contains("standard output"));
        assert!(refusal(Path::new("-"), true, OutputKind::Public).contains("standard output"));
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    }

    #[test]
    fn a_character_device_is_written_into() {
        // Opening /dev/null for writing changes nothing. Without --force, a writer that wrongly
        // took it for a file would refuse it as existing, so this test cannot replace it.
        let mut out =
            OutputFile::create(Path::new("/dev/null"), false, OutputKind::Public).unwrap();
        out.file().write_all(b"discarded").unwrap();
        out.commit().unwrap();
        assert!(fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
    }
}
