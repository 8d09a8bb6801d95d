//! `adyton model`: encrypt, decrypt and inspect model envelopes on disk.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use adyton_envelope::{v1, v2, Aes256Key, EnvelopeError, Format};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use zeroize::Zeroizing;

use crate::files::{
    open_input, prepare_key_file, print_stdout, progress, read_key_file, OutputFile, OutputKind,
};
use crate::format::FormatArg;
use crate::publish::{self, PublishArgs};

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Encrypt a model file with AES-256-GCM.
    ///
    /// v2 (the default) is Adyton's chunked format: it is checked chunk by chunk and decrypts with
    /// bounded memory. v1 is the CNAP single-shot format, for tools that read only that.
    #[command(after_help = "Examples:\n  \
        adyton model encrypt model.onnx -o model.enc --new-key model.key\n  \
        adyton model encrypt model.onnx -o model.enc --key model.key --format v1")]
    Encrypt(EncryptArgs),

    /// Decrypt a v1 or v2 envelope (the format is detected from the file).
    Decrypt(DecryptArgs),

    /// Show an envelope's header without the key, and check its length.
    Inspect(InspectArgs),

    /// Publish a model: encrypt it with a fresh key, import the key into the KBS under a transfer
    /// policy, upload the encrypted blob to the registry and write its info.
    ///
    /// The KBS token is the one `adyton kbs login` saved. If a step fails, the steps before it
    /// are undone where possible (the KBS key is deleted, the uploaded blob removed), and what
    /// remains is said. The model id is printed alone on the last line.
    #[command(
        disable_version_flag = true,
        after_help = "Examples:\n  \
        adyton model publish model.onnx --registry http://127.0.0.1:8080 --registry-token-file token \\\n      \
        --kbs http://127.0.0.1:8443 --policy POLICY_ID\n  \
        adyton model publish model.onnx ... --format v1 --id mlp-1 --name mlp --version 1"
    )]
    Publish(PublishArgs),
}

#[derive(Debug, Args)]
#[group(id = "key_source", required = true, multiple = false)]
pub struct KeySource {
    /// Use the 32-byte raw key in this file.
    #[arg(long, value_name = "KEYFILE", group = "key_source")]
    pub key: Option<PathBuf>,

    /// Generate a fresh key and write it to this file (mode 0600).
    #[arg(long, value_name = "KEYFILE", group = "key_source")]
    pub new_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// The plaintext model file.
    #[arg(value_name = "IN")]
    pub input: PathBuf,

    /// Where to write the encrypted model.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    /// Envelope format.
    #[arg(long, value_enum, default_value_t = FormatArg::V2)]
    pub format: FormatArg,

    #[command(flatten)]
    pub key_source: KeySource,

    /// Key id recorded in the v2 header (the key broker's id of the key).
    #[arg(long, value_name = "ID", default_value = "")]
    pub key_id: String,

    /// Media type recorded in the v2 header [default: application/x-onnx for .onnx files,
    /// application/octet-stream otherwise].
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,

    /// Plaintext bytes per v2 chunk (16 B to 16 MiB). Suffixes K, M for KiB, MiB.
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = adyton_cli::bytes::parse_size)]
    pub chunk_size: u32,

    /// Replace OUT (and the new key file) if they exist.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// The encrypted model (v1 or v2).
    #[arg(value_name = "IN")]
    pub input: PathBuf,

    /// Where to write the plaintext model.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    /// The 32-byte raw key file.
    #[arg(long, value_name = "KEYFILE")]
    pub key: PathBuf,

    /// Skip the v2 plaintext SHA-256 check. Every chunk is still authenticated, header included;
    /// the check only catches a writer with the key that recorded a wrong hash.
    #[arg(long)]
    pub skip_hash_check: bool,

    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The encrypted model (v1 or v2).
    #[arg(value_name = "IN")]
    pub input: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Buffer size for file streams: large enough that a chunk costs few system calls.
const IO_BUFFER: usize = 1 << 20;

/// Runs an `adyton model` subcommand.
pub fn run(command: &ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Encrypt(args) => encrypt(args),
        ModelCommand::Decrypt(args) => decrypt(args),
        ModelCommand::Inspect(args) => inspect(args),
        ModelCommand::Publish(args) => publish::publish(args),
    }
}

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
