//! `adyton kbs login|policy|key|transfer`: the operator's commands of the key broker's admin API,
//! over HTTP with `adyton-client`.

use std::fs;
use std::io::{self, BufRead as _, IsTerminal as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adyton_client::offline::MAX_PROVISION_FILE_LEN;
use adyton_client::{ClientError, KbsClient, KeyInfo, PolicyInfo, ProvisionResponse, Token};
use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

use crate::cli::{
    KbsClientArgs, KbsItemArgs, KbsKeyCommand, KbsKeyCreateArgs, KbsLoginArgs, KbsPolicyCommand,
    KbsPolicyCreateArgs, KbsTransferArgs,
};
use crate::files::{self, print_stdout, read_limited, OutputFile, OutputKind};
use crate::secrets::{default_kbs_token_file, kbs_token_file, read_token_file};

/// The environment variable holding the operator's password for `login`.
const PASSWORD_ENV: &str = "ADYTON_KBS_ADMIN_PASSWORD";
/// Largest policy file read.
const MAX_POLICY_FILE_LEN: u64 = 1 << 20;
/// The TEE tables a policy file may hold, with the KBS's name of each attestation type.
const TEE_TABLES: [(&str, &str); 4] = [
    ("sgx", "SGX"),
    ("tdx", "TDX"),
    ("snp", "SNP"),
    ("sim", "SIM"),
];

/// `adyton kbs login`.
pub fn login(args: &KbsLoginArgs) -> Result<()> {
    let client = connect(&args.url)?;
    let path = match &args.token_file {
        Some(path) => path.clone(),
        None => default_kbs_token_file("--token-file")?,
    };
    // The token file is checked before the login: a token the KBS issued (and audited) but that
    // could not be kept would be wasted.
    let out = prepare_token_file(&path)?;
    let password = read_password(&args.user)?;
    let token = client
        .login(&args.user, &password)
        .map_err(|e| explain(e, &client))?;
    write_token_file(out, &path, &token)?;
    let expires_in = token.expires_in().unwrap_or_default();
    if args.json {
        let reply = serde_json::json!({
            "token_file": path.display().to_string(),
            "expires_in": expires_in,
        });
        print_stdout(&reply.to_string())
    } else {
        print_stdout(&format!(
            "logged in to {} as {}; token written to {} (valid for {})",
            client.base_url(),
            args.user,
            path.display(),
            humantime::format_duration(Duration::from_secs(expires_in))
        ))
    }
}

/// `adyton kbs policy ...`.
pub fn policy(command: &KbsPolicyCommand) -> Result<()> {
    match command {
        KbsPolicyCommand::Create(args) => create_policy(args),
        KbsPolicyCommand::List(args) => {
            let (client, token) = session(args)?;
            let policies = client
                .list_policies(&token)
                .map_err(|e| explain(e, &client))?;
            if args.json {
                return print_json(&policies);
            }
            if policies.is_empty() {
                return print_stdout("no transfer policies");
            }
            print_stdout(&format!("{:<36}  {:<4}  CREATED", "ID", "TEE"))?;
            for policy in &policies {
                print_stdout(&format!(
                    "{:<36}  {:<4}  {}",
                    policy.id,
                    policy.attestation_type,
                    timestamp(policy.created_at)
                ))?;
            }
            Ok(())
        }
        KbsPolicyCommand::Show(KbsItemArgs { client: args, id }) => {
            let (client, token) = session(args)?;
            let policy = client
                .get_policy(&token, id)
                .map_err(|e| explain(e, &client))?;
            if args.json {
                return print_json(&policy);
            }
            print_policy(&policy)
        }
        KbsPolicyCommand::Delete(KbsItemArgs { client: args, id }) => {
            let (client, token) = session(args)?;
            client
                .delete_policy(&token, id)
                .map_err(|e| explain(e, &client))?;
            print_deleted(args.json, "transfer policy", id)
        }
    }
}

/// `adyton kbs key ...`.
pub fn key(command: &KbsKeyCommand) -> Result<()> {
    match command {
        KbsKeyCommand::Create(args) => create_key(args),
        KbsKeyCommand::List(args) => {
            let (client, token) = session(args)?;
            let keys = client.list_keys(&token).map_err(|e| explain(e, &client))?;
            if args.json {
                return print_json(&keys);
            }
            if keys.is_empty() {
                return print_stdout("no keys");
            }
            print_stdout(&format!(
                "{:<36}  {:<36}  {:<7}  CREATED",
                "ID", "POLICY", "KEY"
            ))?;
            for key in &keys {
                print_stdout(&format!(
                    "{:<36}  {:<36}  {:<7}  {}",
                    key.id,
                    key.transfer_policy_id,
                    algorithm(key),
                    timestamp(key.created_at)
                ))?;
            }
            Ok(())
        }
        KbsKeyCommand::Show(KbsItemArgs { client: args, id }) => {
            let (client, token) = session(args)?;
            let key = client
                .get_key(&token, id)
                .map_err(|e| explain(e, &client))?;
            if args.json {
                return print_json(&key);
            }
            print_key(&key)
        }
        KbsKeyCommand::Delete(KbsItemArgs { client: args, id }) => {
            let (client, token) = session(args)?;
            client
                .delete_key(&token, id)
                .map_err(|e| explain(e, &client))?;
            print_deleted(args.json, "key", id)
        }
    }
}

/// `adyton kbs transfer --offline REQUEST.json -o RESPONSE.json`.
pub fn transfer(args: &KbsTransferArgs) -> Result<()> {
    let path = &args.offline;
    // The request is checked, and an existing output refused, before anything is sent: the KBS
    // audits every answer, and an answer that could not be written would be audited for nothing.
    let bytes = read_limited(path, MAX_PROVISION_FILE_LEN as u64, "provisioning request")?;
    let request = adyton_client::offline::read_request(&bytes)
        .with_context(|| format!("{} is not a valid provisioning request", path.display()))?;
    let mut out = OutputFile::create(&args.output, args.force, OutputKind::PublicOrStdout)?;
    let (client, token) = session(&args.client)?;
    let answer = client
        .offline_transfer(&token, &request)
        .map_err(|e| explain(e, &client))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let response = ProvisionResponse::for_request(&request, &answer, now)?;
    out.file()
        .write_all(&response.to_json())
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    out.commit()?;

    // The summary names the request and where the answer went; the wrapped key stays in the file.
    eprintln!(
        "released key {} to {} device request {} for model {} (sealing policy {}, device public \
         key sha256 {})",
        request.key_id,
        request.tee,
        request.request_id,
        request.model,
        request.sealing_policy,
        response.public_key_sha256
    );
    if request.tee == "SIM" {
        eprintln!("warning: INSECURE: a simulated TEE, for development and tests only");
    }
    eprintln!(
        "wrote {}: carry it to the device that wrote {}",
        args.output.display(),
        path.display()
    );
    if args.client.json {
        print_json(&serde_json::json!({
            "request_id": request.request_id,
            "model": request.model,
            "key_id": request.key_id,
            "tee": request.tee,
            "public_key_sha256": response.public_key_sha256,
            "response": args.output.display().to_string(),
        }))?;
    }
    Ok(())
}

fn create_policy(args: &KbsPolicyCreateArgs) -> Result<()> {
    // The file is checked before anything is sent, and before the token is read.
    let (attestation_type, table) = read_policy_file(&args.file)?;
    let (client, token) = session(&args.client)?;
    let policy = client
        .create_policy(&token, attestation_type, &table)
        .map_err(|e| explain(e, &client))?;
    if args.client.json {
        return print_json(&policy);
    }
    print_stdout(&format!(
        "created transfer policy ({attestation_type}) from {}",
        args.file.display()
    ))?;
    print_stdout(&policy.id)
}

fn create_key(args: &KbsKeyCreateArgs) -> Result<()> {
    let imported = args
        .import
        .as_deref()
        .map(files::read_key_file)
        .transpose()?;
    let (client, token) = session(&args.client)?;
    let key = client
        .create_key(
            &token,
            &args.policy,
            imported.as_ref().map(|k| k.expose_secret().as_slice()),
        )
        .map_err(|e| explain(e, &client))?;
    if args.client.json {
        return print_json(&key);
    }
    let how = match &args.import {
        Some(path) => format!("imported key {}", path.display()),
        None => "created a key generated by the KBS".to_owned(),
    };
    print_stdout(&format!(
        "{how} under transfer policy {}",
        key.transfer_policy_id
    ))?;
    print_stdout(&key.id)
}

/// Reads a policy file (docs/policy.md) and returns its one TEE table: the attestation type and
/// the table as JSON. Files with several TEE tables are refused, since a transfer policy names one
/// attestation type.
fn read_policy_file(path: &Path) -> Result<(&'static str, serde_json::Value)> {
    let bytes = read_limited(path, MAX_POLICY_FILE_LEN, "policy file")?;
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("policy file {} is not UTF-8", path.display()))?;
    let is_json = path.extension().is_some_and(|ext| ext == "json");
    // Parse with the verifier's own rules first, so that a misspelt field fails here.
    let parsed = if is_json {
        adyton_attest::policy::Policy::from_json(text)
    } else {
        adyton_attest::policy::Policy::from_toml(text)
    };
    parsed.with_context(|| format!("policy file {} is not a valid policy", path.display()))?;
    let document: serde_json::Map<String, serde_json::Value> = if is_json {
        serde_json::from_str(text).context("the policy JSON is not an object")?
    } else {
        let table: toml::Table = toml::from_str(text)
            .with_context(|| format!("policy file {} is not TOML", path.display()))?;
        match serde_json::to_value(table).context("the policy cannot be expressed as JSON")? {
            serde_json::Value::Object(map) => map,
            _ => bail!("policy file {} is not a table", path.display()),
        }
    };
    let mut found = Vec::new();
    for (name, value) in document {
        match TEE_TABLES.iter().find(|(table, _)| *table == name) {
            Some((_, kind)) => found.push((*kind, value)),
            None => bail!(
                "policy file {} has a table `{name}`; only sgx, tdx, snp and sim are known",
                path.display()
            ),
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "policy file {} has no TEE table ([sgx], [tdx], [snp] or [sim])",
            path.display()
        ),
        _ => {
            let names: Vec<&str> = found.iter().map(|(kind, _)| *kind).collect();
            bail!(
                "policy file {} names several TEEs ({}); a KBS transfer policy holds exactly one: \
                 split the file, one per TEE",
                path.display(),
                names.join(", ")
            )
        }
    }
}

/// The client and the stored token.
fn session(args: &KbsClientArgs) -> Result<(KbsClient, Token)> {
    let client = connect(&args.url)?;
    let path = kbs_token_file(args.token_file.as_ref(), "--token-file")?;
    let token = read_token(&path)?;
    Ok((client, token))
}

fn connect(url: &str) -> Result<KbsClient> {
    Ok(KbsClient::new(url)?)
}

/// Says which KBS failed, and adds a hint for the errors an operator can act on.
fn explain(err: ClientError, client: &KbsClient) -> anyhow::Error {
    let hint = match err.status() {
        Some(401) => Some("log in again with `adyton kbs login` (tokens last 15 minutes)"),
        Some(429) => Some("too many failed logins: wait a minute"),
        _ => None,
    };
    let what = match (&err, err.status()) {
        (ClientError::Transport { .. }, _) => "cannot reach the KBS",
        (_, Some(_)) => "refused by the KBS",
        _ => "talking to the KBS failed",
    };
    let err = anyhow::Error::new(err).context(format!("{what} at {}", client.base_url()));
    match hint {
        Some(hint) => err.context(hint),
        None => err,
    }
}

/// The password: from the environment, else one line of standard input.
fn read_password(user: &str) -> Result<Zeroizing<String>> {
    if let Some(password) = std::env::var_os(PASSWORD_ENV) {
        let password = password
            .into_string()
            .map_err(|_| anyhow::anyhow!("{PASSWORD_ENV} is not UTF-8"))?;
        return Ok(Zeroizing::new(password));
    }
    let stdin = io::stdin();
    if stdin.is_terminal() {
        // No echo suppression without a terminal library: say so rather than surprise.
        eprint!("password for {user} (shown as typed; prefer {PASSWORD_ENV}): ");
        let _ = io::stderr().flush();
    }
    let mut line = Zeroizing::new(String::new());
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_owned());
    if password.is_empty() {
        bail!("no password: set {PASSWORD_ENV} or write it on standard input");
    }
    Ok(password)
}

/// Prepares the token file at `path`, a regular file only; the directory is made (mode 0700) if
/// missing.
fn prepare_token_file(path: &Path) -> Result<OutputFile> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
    }
    OutputFile::create(path, true, OutputKind::Secret)
}

/// Writes the token, mode 0600, atomically.
fn write_token_file(mut out: OutputFile, path: &Path, token: &Token) -> Result<()> {
    out.file()
        .set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    out.file()
        .write_all(token.expose_secret().as_bytes())
        .and_then(|()| out.file().write_all(b"\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    out.commit()
}

fn read_token(path: &Path) -> Result<Token> {
    let text = read_token_file(path, "token file").context(
        "no token: run `adyton kbs login` first, or give --token-file or ADYTON_KBS_TOKEN",
    )?;
    Ok(Token::new(text.as_str()))
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    print_stdout(&serde_json::to_string_pretty(value).context("cannot write JSON")?)
}

fn print_deleted(json: bool, what: &str, id: &str) -> Result<()> {
    if json {
        print_stdout(&serde_json::json!({ "deleted": id }).to_string())
    } else {
        print_stdout(&format!("deleted {what} {id}"))
    }
}

fn print_policy(policy: &PolicyInfo) -> Result<()> {
    print_stdout(&format!("id:       {}", policy.id))?;
    print_stdout(&format!("TEE:      {}", policy.attestation_type))?;
    print_stdout(&format!("created:  {}", timestamp(policy.created_at)))?;
    for (name, table) in &policy.tables {
        let text = serde_json::to_string_pretty(table).context("cannot write JSON")?;
        print_stdout(&format!("{name}: {text}"))?;
    }
    Ok(())
}

fn print_key(key: &KeyInfo) -> Result<()> {
    print_stdout(&format!("id:       {}", key.id))?;
    print_stdout(&format!("policy:   {}", key.transfer_policy_id))?;
    print_stdout(&format!("key:      {}", algorithm(key)))?;
    print_stdout(&format!("created:  {}", timestamp(key.created_at)))
}

fn algorithm(key: &KeyInfo) -> String {
    format!(
        "{}-{}",
        key.key_information.algorithm, key.key_information.key_length
    )
}

fn timestamp(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn policy_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn one_tee_table_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let m = "ab".repeat(48);
        let path = policy_file(
            dir.path(),
            "p.toml",
            &format!("[sim]\nmeasurement = [\"{m}\"]\n"),
        );
        let (kind, table) = read_policy_file(&path).unwrap();
        assert_eq!(kind, "SIM");
        assert_eq!(table, serde_json::json!({ "measurement": [m] }));
        let path = policy_file(dir.path(), "p.json", r#"{"tdx": {"min_seamsvn": 3}}"#);
        let (kind, table) = read_policy_file(&path).unwrap();
        assert_eq!(kind, "TDX");
        assert_eq!(table, serde_json::json!({ "min_seamsvn": 3 }));
    }

    #[test]
    fn several_or_no_tee_tables_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = policy_file(dir.path(), "two.toml", "[sim]\n[tdx]\n");
        let err = format!("{:#}", read_policy_file(&path).unwrap_err());
        assert!(
            err.contains("several TEEs") && err.contains("SIM") && err.contains("TDX"),
            "{err}"
        );
        let path = policy_file(dir.path(), "none.toml", "");
        let err = format!("{:#}", read_policy_file(&path).unwrap_err());
        assert!(err.contains("no TEE table"), "{err}");
        let path = policy_file(dir.path(), "typo.toml", "[sim]\nmeasurment = []\n");
        assert!(read_policy_file(&path).is_err());
    }
}
