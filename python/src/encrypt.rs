//! `adyton.encrypt_model`: a model encrypted with a new key, as `adyton model encrypt --new-key`
//! does it (`crates/adyton/src/model.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use adyton_envelope::{v1, v2, Aes256Key, EnvelopeError};
use pyo3::prelude::*;
use zeroize::Zeroizing;

use crate::errors::{input_error, AdytonError};

/// Buffer size for the file streams.
const IO_BUFFER: usize = 1 << 20;

/// Encrypts the model file `src` into the envelope `dst` with a new random AES-256 key, written
/// to `key_out` as 32 raw bytes with mode 0600.
///
/// `format` is "v2" (Adyton's chunked streaming format, the default) or "v1" (CNAP's single-shot
/// format, at most 4 GiB). Existing files are refused unless `overwrite` is true. The key file is
/// written before the envelope, so a failure never leaves an envelope that no key opens.
#[pyfunction]
#[pyo3(signature = (src, dst, *, key_out, format="v2", overwrite=false))]
pub fn encrypt_model(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    key_out: PathBuf,
    format: &str,
    overwrite: bool,
) -> PyResult<()> {
    let v2 = match format {
        "v2" => true,
        "v1" => false,
        other => {
            return Err(input_error(format!(
                "format must be \"v1\" or \"v2\", not {other:?}"
            )))
        }
    };
    if src == dst || src == key_out || dst == key_out {
        return Err(input_error(
            "src, dst and key_out must be three different files",
        ));
    }
    for path in [&dst, &key_out] {
        if !overwrite && path.exists() {
            return Err(pyo3::exceptions::PyFileExistsError::new_err(format!(
                "{} exists; pass overwrite=True to replace it",
                path.display()
            )));
        }
    }
    py.detach(|| encrypt_files(&src, &dst, &key_out, v2, overwrite))
        .map_err(|err| match err {
            Failure::Io(err) => err.into(),
            Failure::Envelope(err) => {
                AdytonError::new_err(format!("cannot encrypt {}: {err}", src.display()))
            }
        })
}

enum Failure {
    Io(io::Error),
    Envelope(EnvelopeError),
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

impl From<EnvelopeError> for Failure {
    fn from(err: EnvelopeError) -> Self {
        Self::Envelope(err)
    }
}

fn encrypt_files(
    src: &Path,
    dst: &Path,
    key_out: &Path,
    v2: bool,
    overwrite: bool,
) -> Result<(), Failure> {
    let mut input = File::open(src)?;
    let len = input.metadata()?.len();
    let key = Aes256Key::generate()?;
    // The envelope is written next to its destination and renamed into place at the end.
    let partial = partial_path(dst);
    let written = (|| -> Result<(), Failure> {
        let mut out = BufWriter::with_capacity(IO_BUFFER, File::create(&partial)?);
        if v2 {
            let (hashed_len, sha256) =
                v2::sha256_stream(&mut BufReader::with_capacity(IO_BUFFER, &mut input))?;
            input.seek(SeekFrom::Start(0))?;
            let is_onnx = src
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("onnx"));
            let options = v2::EncryptOptions {
                content_type: if is_onnx {
                    v2::CONTENT_TYPE_ONNX.to_owned()
                } else {
                    "application/octet-stream".to_owned()
                },
                ..v2::EncryptOptions::default()
            };
            let header = options.header_for(hashed_len, sha256)?;
            let mut reader = BufReader::with_capacity(IO_BUFFER, &mut input);
            v2::encrypt(&key, header, &mut reader, &mut out)?;
        } else {
            if len > v1::MAX_PLAINTEXT_LEN {
                return Err(io::Error::other(format!(
                    "{} is {len} bytes; v1 holds at most 4 GiB, use format=\"v2\"",
                    src.display()
                ))
                .into());
            }
            let mut plaintext = Zeroizing::new(Vec::new());
            input.read_to_end(&mut plaintext)?;
            out.write_all(&v1::seal(&key, &plaintext)?)?;
        }
        out.into_inner()
            .map_err(|err| err.into_error())?
            .sync_all()?;
        write_key_file(key_out, &key, overwrite)?;
        fs::rename(&partial, dst)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&partial);
    }
    written
}

fn partial_path(dst: &Path) -> PathBuf {
    let mut name = dst.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    dst.with_file_name(name)
}

/// Writes the key's 32 raw bytes to a file only its owner can read.
fn write_key_file(path: &Path, key: &Aes256Key, overwrite: bool) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).mode(0o600);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path)?;
    // An existing file keeps its mode when truncated; the key's file must be 0600 all the same.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(key.expose_secret())?;
    file.sync_all()
}
