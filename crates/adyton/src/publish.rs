//! `adyton model publish`: flow A of the design in one command. Encrypt the model with a fresh
//! key, import the key into the KBS under a transfer policy, upload the encrypted blob to the
//! registry, and write the model's info there.
//!
//! The ciphertext goes to an anonymous temporary file (removed by the OS when closed); the
//! plaintext is never written anywhere. The key lives in zeroizing memory only and is never
//! printed. A failed step undoes the steps before it where it can, and says what is left.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use adyton_client::{KbsClient, ModelInfo, RegistryClient, Token};
use adyton_envelope::{v1, v2, Aes256Key};
use anyhow::{bail, Context, Result};
use clap::Args;
use zeroize::Zeroizing;

use crate::files::{open_input, print_stdout, progress};
use crate::format::FormatArg;
use crate::secrets::{kbs_token_file, read_token_file};

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The plaintext ONNX model.
    #[arg(value_name = "MODEL")]
    pub input: PathBuf,

    /// The registry's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub registry: String,

    /// A file holding the registry's write token.
    #[arg(long, value_name = "FILE")]
    pub registry_token_file: PathBuf,

    /// The KBS's base URL, e.g. http://127.0.0.1:8443.
    #[arg(long, value_name = "URL")]
    pub kbs: String,

    /// The token file written by `adyton kbs login` [default: $ADYTON_KBS_TOKEN if set, else
    /// $HOME/.config/adyton/kbs-token].
    #[arg(long, value_name = "FILE")]
    pub kbs_token_file: Option<PathBuf>,

    /// The id of the KBS transfer policy that guards the model's key.
    #[arg(long, value_name = "ID")]
    pub policy: String,

    /// Envelope format: v2 (chunked, streamed) or v1 (CNAP's, whole file in memory, at most 4 GiB).
    #[arg(long, value_enum, default_value_t = FormatArg::V2)]
    pub format: FormatArg,

    /// The model's id in the registry [default: the file's name and a random suffix].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,

    /// The model's display name [default: the file's name without extension].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// The model's version.
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
}

/// Buffer size for file streams.
const IO_BUFFER: usize = 1 << 20;
/// What the info's `kbs` field says: the kind of key broker that holds the key.
const KBS_KIND: &str = "adyton";

/// What a publication made.
#[derive(Debug, Clone)]
pub struct Published {
    /// The model's id in the registry.
    pub id: String,
    /// The encrypted blob's size in bytes.
    pub blob_size: u64,
}

/// `adyton model publish`.
pub fn publish(args: &PublishArgs) -> Result<()> {
    let published = publish_model(args, &mut |line| eprintln!("{line}"))?;
    print_stdout(&published.id)
}

/// Publishes the model of `args`, telling each step done to `report`; `adyton model publish`
/// and `adyton demo` share it.
pub fn publish_model(args: &PublishArgs, report: &mut dyn FnMut(String)) -> Result<Published> {
    let (mut input, len) = open_input(&args.input)?;
    let id = match &args.id {
        Some(id) => id.clone(),
        None => default_id(&args.input)?,
    };
    let registry_token = read_token(&args.registry_token_file, "registry token file")?;
    let kbs_token_file = kbs_token_file(args.kbs_token_file.as_ref(), "--kbs-token-file")?;
    let kbs_token = read_token(&kbs_token_file, "KBS token file").context(
        "no KBS token: run `adyton kbs login` first, or give --kbs-token-file or ADYTON_KBS_TOKEN",
    )?;
    if args.format == FormatArg::V1 && len > v1::MAX_PLAINTEXT_LEN {
        bail!(
            "{} is {len} bytes; v1 holds at most 4 GiB, use --format v2",
            args.input.display()
        );
    }
    let registry = RegistryClient::new(&args.registry)?;
    let kbs = KbsClient::new(&args.kbs)?;

    // Nothing is created if the id is taken.
    match registry.get_info(&id) {
        Ok(_) => bail!(
            "model `{id}` already exists in the registry at {}: choose another --id",
            registry.base_url()
        ),
        Err(e) if e.status() == Some(404) => {}
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot reach the registry at {}",
                registry.base_url()
            )))
        }
    }

    let key = Aes256Key::generate()?;
    let created = kbs
        .create_key(
            &kbs_token,
            &args.policy,
            Some(key.expose_secret().as_slice()),
        )
        .with_context(|| format!("cannot create the key in the KBS at {}", kbs.base_url()))?;
    let key_id = created.id;
    report(format!(
        "created key {key_id} in the KBS under transfer policy {}",
        args.policy
    ));

    // From here on, a failure deletes the key.
    let undo_key = |err: anyhow::Error| -> anyhow::Error {
        match kbs.delete_key(&kbs_token, &key_id) {
            Ok(()) => err.context(format!("deleted the KBS key {key_id} again")),
            Err(e) => err.context(format!(
                "the KBS key {key_id} is left behind (deleting it failed: {e}); delete it with \
                 `adyton kbs key delete {key_id}`"
            )),
        }
    };

    let (mut blob, blob_len) = encrypt(args, &mut input, len, &key, &key_id).map_err(undo_key)?;
    drop(key);

    let bar = progress(blob_len, "uploading");
    let uploaded = registry
        .upload_blob(&registry_token, &id, &mut blob, |sent| {
            bar.set_position(sent)
        })
        .with_context(|| format!("cannot upload the blob to {}", registry.base_url()));
    bar.finish_and_clear();
    let uploaded = uploaded.map_err(undo_key)?;
    report(format!(
        "uploaded {} bytes (sha256 {}) to {}",
        uploaded.size, uploaded.sha256, uploaded.url
    ));

    let kbs_url = format!("{}/kbs/v1/keys/{key_id}/transfer", kbs.base_url());
    let name = args.name.clone().or_else(|| {
        args.input
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
    });
    let info = ModelInfo {
        id: id.clone(),
        framework: Some("onnx".to_owned()),
        name,
        version: args.version.clone(),
        encrypted: Some(true),
        kbs: Some(KBS_KIND.to_owned()),
        kbs_url: Some(kbs_url),
        key_id: Some(key_id.clone()),
        format: Some(
            match args.format {
                FormatArg::V1 => "v1",
                FormatArg::V2 => "v2",
            }
            .to_owned(),
        ),
        ..ModelInfo::default()
    };
    let stored = match registry.put_info(&registry_token, &info) {
        Ok(stored) => stored,
        Err(e) => {
            let err = anyhow::Error::new(e).context("cannot write the model info");
            let err = match registry.delete(&registry_token, &id) {
                Ok(()) => err.context(format!("removed the blob `{id}` again")),
                Err(e) => err.context(format!(
                    "the blob `{id}` is left in the registry (removing it failed: {e})"
                )),
            };
            return Err(undo_key(err));
        }
    };
    report(format!(
        "published model {id}: info at {}/models/{id}, blob at {}",
        registry.base_url(),
        stored.url.as_deref().unwrap_or("?")
    ));
    Ok(Published {
        id,
        blob_size: uploaded.size,
    })
}

/// Encrypts the model into an anonymous temporary file; returns it rewound, with its length.
fn encrypt(
    args: &PublishArgs,
    input: &mut File,
    len: u64,
    key: &Aes256Key,
    key_id: &str,
) -> Result<(File, u64)> {
    let name = args.input.display();
    let mut out = tempfile::tempfile().context("cannot create a temporary file")?;
    match args.format {
        FormatArg::V1 => {
            let mut plaintext = Zeroizing::new(Vec::new());
            input
                .read_to_end(&mut plaintext)
                .with_context(|| format!("cannot read {name}"))?;
            let envelope = v1::seal(key, &plaintext)?;
            out.write_all(&envelope)
                .context("cannot write the encrypted model")?;
        }
        FormatArg::V2 => {
            // The header carries the plaintext's hash, so a first pass computes it.
            let bar = progress(len, "hashing");
            let (hashed_len, sha256) = v2::sha256_stream(
                &mut bar.wrap_read(BufReader::with_capacity(IO_BUFFER, &mut *input)),
            )
            .with_context(|| format!("cannot read {name}"))?;
            bar.finish_and_clear();
            input
                .seek(SeekFrom::Start(0))
                .with_context(|| format!("cannot rewind {name}"))?;
            let options = v2::EncryptOptions {
                key_id: key_id.to_owned(),
                content_type: v2::CONTENT_TYPE_ONNX.to_owned(),
                ..v2::EncryptOptions::default()
            };
            let header = options.header_for(hashed_len, sha256)?;
            let bar = progress(len, "encrypting");
            let mut reader = bar.wrap_read(BufReader::with_capacity(IO_BUFFER, &mut *input));
            v2::encrypt(
                key,
                header,
                &mut reader,
                BufWriter::with_capacity(IO_BUFFER, &mut out),
            )
            .with_context(|| format!("cannot encrypt {name}"))?;
            bar.finish_and_clear();
        }
    }
    out.flush().context("cannot write the encrypted model")?;
    let blob_len = out
        .seek(SeekFrom::End(0))
        .context("cannot measure the encrypted model")?;
    out.seek(SeekFrom::Start(0))
        .context("cannot rewind the encrypted model")?;
    Ok((out, blob_len))
}

/// The file's name, cut to the registry's id syntax, with a random suffix.
fn default_id(input: &Path) -> Result<String> {
    use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
    let stem: String = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    let stem = stem.trim_start_matches('.');
    let stem = if stem.is_empty() { "model" } else { stem };
    let mut suffix = [0u8; 4];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| anyhow::anyhow!("the random source failed"))?;
    Ok(format!("{stem}-{}", hex::encode(suffix)))
}

fn read_token(path: &Path, what: &str) -> Result<Token> {
    Ok(Token::new(read_token_file(path, what)?.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_fit_the_registry_syntax() {
        let id = default_id(Path::new("/models/my model (v2).onnx")).unwrap();
        assert!(id.starts_with("my-model--v2--"), "{id}");
        assert_eq!(id.len(), "my-model--v2--".len() + 8);
        let id = default_id(Path::new("/")).unwrap();
        assert!(id.starts_with("model-"), "{id}");
    }
}
