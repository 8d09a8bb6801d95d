//! `adyton model`: encrypt, decrypt and inspect model envelopes on disk.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use adyton_envelope::{v1, v2, Aes256Key, EnvelopeError, Format};
use anyhow::{bail, Context, Result};
use serde_json::json;
use zeroize::Zeroizing;

use crate::cli::{DecryptArgs, EncryptArgs, FormatArg, InspectArgs};
use crate::files::{
    open_input, prepare_key_file, print_stdout, progress, read_key_file, OutputFile, OutputKind,
};

/// Buffer size for file streams: large enough that a chunk costs few system calls.
const IO_BUFFER: usize = 1 << 20;

pub fn encrypt(args: &EncryptArgs) -> Result<()> {
    let started = Instant::now();
    let (mut input, len) = open_input(&args.input)?;
    // Both outputs are checked before any work, so a refusal costs nothing.
    let mut output = OutputFile::create(&args.output, args.force, OutputKind::PublicOrStdout)?;
    let (key, new_key_file) = match (&args.key_source.key, &args.key_source.new_key) {
        (Some(path), _) => (read_key_file(path)?, None),
        (None, Some(path)) => {
            let key = Aes256Key::generate()?;
            let file = prepare_key_file(path, &key, args.force)?;
            (key, Some((path, file)))
        }
        (None, None) => bail!("give --key or --new-key"),
    };
    let input_name = args.input.display();

    let detail = match args.format {
        FormatArg::V1 => {
            if len > v1::MAX_PLAINTEXT_LEN {
                bail!("{input_name} is {len} bytes; v1 holds at most 4 GiB, use --format v2");
            }
            let plaintext = read_all(&mut input, len, "reading")
                .with_context(|| format!("cannot read {input_name}"))?;
            let envelope = v1::seal(&key, &plaintext)?;
            output
                .file()
                .write_all(&envelope)
                .with_context(|| format!("cannot write {}", args.output.display()))?;
            "v1".to_string()
        }
        FormatArg::V2 => {
            let header = encrypt_v2(args, &mut input, len, &key, output.file())?;
            format!(
                "v2, {} chunk(s) of {}",
                header.chunk_count(),
                human_bytes(header.chunk_size.into())
            )
        }
    };

    // The key lands before the data it opens: a failure in between leaves a key and no model,
    // never a model that no key opens.
    if let Some((path, file)) = new_key_file {
        file.commit()?;
        eprintln!("wrote a new key to {} (mode 0600)", path.display());
    }
    output.commit()?;
    eprintln!(
        "encrypted {input_name} ({}) to {} ({detail}) in {:.2} s",
        human_bytes(len),
        args.output.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn encrypt_v2(
    args: &EncryptArgs,
    input: &mut File,
    len: u64,
    key: &Aes256Key,
    out: &mut File,
) -> Result<v2::Header> {
    let input_name = args.input.display();
    // The header carries the plaintext's hash, so a first pass computes it.
    let bar = progress(len, "hashing");
    let (hashed_len, sha256) =
        v2::sha256_stream(&mut bar.wrap_read(BufReader::with_capacity(IO_BUFFER, &mut *input)))
            .with_context(|| format!("cannot read {input_name}"))?;
    bar.finish_and_clear();
    input
        .seek(SeekFrom::Start(0))
        .with_context(|| format!("cannot rewind {input_name}"))?;

    let content_type = args.content_type.clone().unwrap_or_else(|| {
        let is_onnx = args
            .input
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("onnx"));
        if is_onnx {
            v2::CONTENT_TYPE_ONNX
        } else {
            "application/octet-stream"
        }
        .to_string()
    });
    let options = v2::EncryptOptions {
        chunk_size: args.chunk_size,
        key_id: args.key_id.clone(),
        content_type,
    };
    let header = options.header_for(hashed_len, sha256)?;
    let bar = progress(len, "encrypting");
    let mut reader = bar.wrap_read(BufReader::with_capacity(IO_BUFFER, input));
    let header = v2::encrypt(
        key,
        header,
        &mut reader,
        BufWriter::with_capacity(IO_BUFFER, out),
    )
    .map_err(|err| match err {
        EnvelopeError::PlaintextLengthMismatch { .. }
        | EnvelopeError::PlaintextHashMismatch { .. } => anyhow::Error::new(err)
            .context(format!("{input_name} changed while it was being encrypted")),
        other => anyhow::Error::new(other).context(format!("cannot encrypt {input_name}")),
    })?;
    bar.finish_and_clear();
    Ok(header)
}

pub fn decrypt(args: &DecryptArgs) -> Result<()> {
    let started = Instant::now();
    let input_name = args.input.display();
    let (mut input, len) = open_input(&args.input)?;
    let mut output = OutputFile::create(&args.output, args.force, OutputKind::PublicOrStdout)?;
    let key = read_key_file(&args.key)?;
    let format = detect(&mut input, &args.input)?;
    let written = match format {
        Format::V1 => {
            let mut prefix = [0u8; v1::HEADER_LEN];
            let got = read_prefix(&mut input, &mut prefix)?;
            v1::check_layout(&prefix[..got], len)
                .with_context(|| format!("{input_name} is not a valid v1 envelope"))?;
            input.seek(SeekFrom::Start(0))?;
            let mut envelope = read_all(&mut input, len, "reading")
                .with_context(|| format!("cannot read {input_name}"))?;
            let plaintext = v1::open_owned(&key, std::mem::take(&mut *envelope))
                .with_context(|| format!("cannot decrypt {input_name}"))?;
            output
                .file()
                .write_all(&plaintext)
                .with_context(|| format!("cannot write {}", args.output.display()))?;
            plaintext.len() as u64
        }
        Format::V2 => {
            let hash_check = if args.skip_hash_check {
                v2::HashCheck::Skip
            } else {
                v2::HashCheck::Verify
            };
            let bar = progress(len, "decrypting");
            let reader = bar.wrap_read(BufReader::with_capacity(IO_BUFFER, input));
            let mut writer = BufWriter::with_capacity(IO_BUFFER, output.file());
            let mut decryptor = v2::Decryptor::with_read_ahead(reader, &key, hash_check)
                .with_context(|| format!("{input_name} is not a valid v2 envelope"))?;
            let written = decryptor
                .copy_to(&mut writer)
                .with_context(|| format!("cannot decrypt {input_name}"))?;
            writer
                .flush()
                .with_context(|| format!("cannot write {}", args.output.display()))?;
            bar.finish_and_clear();
            written
        }
    };
    output.commit()?;
    eprintln!(
        "decrypted {input_name} ({format}) to {} ({}) in {:.2} s",
        args.output.display(),
        human_bytes(written),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn inspect(args: &InspectArgs) -> Result<()> {
    let input_name = args.input.display();
    let (mut input, len) = open_input(&args.input)?;
    let format = detect(&mut input, &args.input)?;
    let (report, text, check) = match format {
        Format::V1 => {
            let mut prefix = [0u8; v1::HEADER_LEN];
            let got = read_prefix(&mut input, &mut prefix)?;
            let layout = v1::check_layout(&prefix[..got], len);
            let data_len = layout.as_ref().map(|l| l.data_len).ok();
            let report = json!({
                "format": "v1",
                "file_len": len,
                "iv_len": v1::IV_LEN,
                "tag_len": v1::TAG_LEN,
                "data_len": data_len,
                "plaintext_len": layout.as_ref().map(|l| l.plaintext_len()).ok(),
            });
            let text = format!(
                "format:        v1 (CNAP single-shot, AES-256-GCM)\n\
                 file length:   {len}\n\
                 data length:   {}\n\
                 plaintext:     {}",
                data_len.map_or("?".into(), |d| d.to_string()),
                layout
                    .as_ref()
                    .map_or("?".into(), |l| human_bytes(l.plaintext_len())),
            );
            (report, text, layout.map(|_| ()))
        }
        Format::V2 => {
            let (header, _) = v2::Header::read_from(&mut BufReader::new(&mut input))
                .with_context(|| format!("{input_name} is not a valid v2 envelope"))?;
            let expected = header.envelope_len();
            let report = json!({
                "format": "v2",
                "file_len": len,
                "algorithm": "AES-256-GCM",
                "chunk_size": header.chunk_size,
                "chunk_count": header.chunk_count(),
                "plaintext_len": header.plaintext_len,
                "plaintext_sha256": hex::encode(header.plaintext_sha256),
                "key_id": header.key_id,
                "content_type": header.content_type,
                "envelope_len": expected,
            });
            // Header strings come from the file: escape them so that they cannot drive the terminal.
            let text = format!(
                "format:        v2 (Adyton chunked, AES-256-GCM)\n\
                 key id:        \"{}\"\n\
                 content type:  \"{}\"\n\
                 plaintext:     {} ({} bytes)\n\
                 sha-256:       {}\n\
                 chunks:        {} of {}\n\
                 file length:   {len} (the header implies {expected})\n\
                 note:          the header is authenticated only when decrypted with the key",
                header.key_id.escape_debug(),
                header.content_type.escape_debug(),
                human_bytes(header.plaintext_len),
                header.plaintext_len,
                hex::encode(header.plaintext_sha256),
                header.chunk_count(),
                human_bytes(header.chunk_size.into()),
            );
            let check = match len.cmp(&expected) {
                std::cmp::Ordering::Equal => Ok(()),
                std::cmp::Ordering::Less => Err(EnvelopeError::Truncated {
                    what: "envelope".into(),
                    expected,
                    actual: len,
                }),
                std::cmp::Ordering::Greater => Err(EnvelopeError::TrailingBytes {
                    envelope_len: expected,
                    extra: Some(len - expected),
                }),
            };
            (report, text, check)
        }
    };
    if args.json {
        let mut report = report;
        report["valid_length"] = json!(check.is_ok());
        print_stdout(&format!("{report:#}"))?;
    } else {
        print_stdout(&text)?;
    }
    check.with_context(|| format!("{input_name} is damaged"))
}

/// Detects the envelope format from the first bytes, then rewinds.
fn detect(input: &mut File, path: &Path) -> Result<Format> {
    let mut prefix = [0u8; Format::DETECT_LEN];
    let got = read_prefix(input, &mut prefix)?;
    let format = Format::detect(&prefix[..got])
        .with_context(|| format!("{} is not an encrypted model", path.display()))?;
    input
        .seek(SeekFrom::Start(0))
        .with_context(|| format!("cannot rewind {}", path.display()))?;
    Ok(format)
}

fn read_prefix(input: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Reads a whole file of known length into a zeroizing buffer, with a progress bar.
fn read_all(input: &mut File, len: u64, message: &'static str) -> Result<Zeroizing<Vec<u8>>> {
    let capacity = usize::try_from(len).context("file too large for this machine")?;
    let mut buf = Zeroizing::new(Vec::with_capacity(capacity));
    let bar = progress(len, message);
    bar.wrap_read(&mut *input).read_to_end(&mut buf)?;
    bar.finish_and_clear();
    Ok(buf)
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
