//! The command line: argument definitions and dispatch, nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{attest, demo, dev, kbs, kbs_client, model, publish, registry, server_binary};

/// Confidential AI inference: models and data decrypted only inside a TEE.
#[derive(Debug, Parser)]
#[command(name = "adyton", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole pipeline on this machine and check it: key broker, registry and server (SIM
    /// TEE), an encrypted model pulled through attested key release, attested inference, and
    /// the refusals. Exits 0 only if every check passed.
    Demo,

    /// Start the same stack as `demo` and leave it running until Ctrl-C, with its state in a
    /// directory; prints the URLs, the admin token and ready-to-paste client commands.
    #[command(after_help = "Examples:\n  \
        adyton dev --state-dir dev-state\n  \
        source dev-state/dev.env && curl --cacert \"$ADYTON_SERVER_CERT\" \"$ADYTON_SERVER_URL/v2/health/ready\"")]
    Dev(DevArgs),

    /// Encrypt, decrypt and inspect model files (envelopes v1 and v2).
    #[command(subcommand)]
    Model(ModelCommand),

    /// Make attestation evidence, verify it against vendor roots and a policy, measure this build.
    #[command(subcommand)]
    Attest(AttestCommand),

    /// Run a model on an attested inference server: verify the server first, then send inputs
    /// from .npy or JSON files, and print the outputs or write them as .npy, .npz or JSON.
    #[command(after_help = "Examples:\n  \
        adyton infer https://10.0.0.5:8443 add --policy policy.toml --input a=a.npy --input b=b.json\n  \
        adyton infer https://10.0.0.5:8443 multi --policy policy.toml --input x=x.npy --input y=y.npy -o out.npz")]
    Infer(Box<InferArgs>),

    /// Run the key broker (KBS): model keys released only to attested TEEs.
    #[command(subcommand)]
    Kbs(KbsCommand),

    /// Run the inference server: ONNX models over the Open Inference Protocol and attested TLS.
    ///
    /// The server is its own binary, `adyton-server`, which runs in the TEE: this runs the one
    /// beside `adyton` (else on PATH) with the same arguments (serve, provision-request,
    /// provision-accept; `adyton server serve --help` for each).
    #[command(disable_help_flag = true)]
    Server(Forwarded),

    /// Run the model registry: model info and encrypted blobs, on a filesystem or S3.
    #[command(subcommand)]
    Registry(RegistryCommand),
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the stack keeps its state (key broker, registry, SIM key, tokens, policy,
    /// certificate, logs) and writes dev.env. Created with mode 0700; kept across runs.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Serve the registry's HTTP API (docs/registry.md) until SIGINT or SIGTERM.
    ///
    /// With --config, settings come from a TOML file (docs/registry.md, "Configuration"), flags
    /// overriding it. Without it, a local trial: blobs in --data-dir, writes allowed with the token
    /// in --token-file. Blobs are stored and served as they are: the registry never sees a key.
    #[command(after_help = "Examples:\n  \
        adyton registry serve --listen 127.0.0.1:8080 --data-dir registry --token-file token\n  \
        adyton registry serve --config registry.toml")]
    Serve(RegistryServeArgs),
}

#[derive(Debug, Args)]
pub struct RegistryServeArgs {
    /// Configuration file (TOML; see docs/registry.md). Flags given on the command line override
    /// its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address and port to listen on (port 0 picks a free port; the bound address is printed as
    /// `listening on http://ADDR`, or `https://` with TLS) [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Directory of the filesystem store (blobs and model info). Created with mode 0700 if
    /// missing. Required unless the configuration file sets `data_dir` or an S3 store.
    #[arg(long, value_name = "DIR", required_unless_present = "config")]
    pub data_dir: Option<PathBuf>,

    /// A file holding the bearer token that writes (uploads, info, deletes) require; without
    /// one, every write is refused (401).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// The URL clients reach this registry at, used in the models' `url` [default:
    /// http(s)://ADDR, the address bound].
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,

    /// Largest blob accepted, e.g. 512M or 20G [default: 8G].
    #[arg(long, value_name = "SIZE", value_parser = adyton_cli::bytes::parse_bytes)]
    pub max_blob_bytes: Option<u64>,

    #[command(flatten)]
    pub tls: adyton_cli::net::TlsArgs,

    #[command(flatten)]
    pub connections: crate::net::ConnectionArgs,
}

/// Arguments run unchanged by `adyton-server` (help flags included).
#[derive(Debug, Args)]
pub struct Forwarded {
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 0..
    )]
    pub args: Vec<std::ffi::OsString>,
}

#[derive(Debug, Subcommand)]
pub enum KbsCommand {
    /// Serve the KBS HTTP API (key transfer and admin) until SIGINT or SIGTERM.
    ///
    /// With --config, settings come from a TOML file (docs/kbs-config.md), flags overriding it.
    /// Without it, local-trial mode: everything comes from flags and the environment.
    /// ADYTON_KBS_MASTER_KEY (64 hex digits or base64 of 32 bytes) sets the master key; else
    /// --master-key-file; else DIR/master.key, generated (mode 0600) on first start.
    /// ADYTON_KBS_ADMIN_PASSWORD enables the admin API for the user `admin`; without it every admin
    /// request is 401. Transfer decisions and admin actions are appended to DIR/audit.jsonl. SIM
    /// evidence is accepted only for keys whose transfer policy names SIM.
    #[command(after_help = "Examples:\n  \
        ADYTON_KBS_ADMIN_PASSWORD=... adyton kbs serve --listen 127.0.0.1:8443 --data-dir /var/lib/adyton-kbs\n  \
        adyton kbs serve --listen 127.0.0.1:0 --data-dir kbs --collateral collateral.json")]
    Serve(KbsServeArgs),

    /// Hash an admin password for the `[[admin]]` entries of a KBS configuration file.
    ///
    /// The password comes from ADYTON_KBS_ADMIN_PASSWORD, else from one line of standard input;
    /// the argon2id PHC string (`$argon2id$...`) is printed on standard output.
    #[command(after_help = "Examples:\n  \
        pass show kbs-admin | adyton kbs hash-password\n  \
        ADYTON_KBS_ADMIN_PASSWORD=... adyton kbs hash-password")]
    HashPassword,

    /// Log in to a KBS's admin API and keep the token (15 minutes) in a file of mode 0600.
    ///
    /// The password comes from ADYTON_KBS_ADMIN_PASSWORD, else from one line of standard input.
    #[command(after_help = "Examples:\n  \
        ADYTON_KBS_ADMIN_PASSWORD=... adyton kbs login --url http://127.0.0.1:8443\n  \
        pass show kbs | adyton kbs login --url https://kbs.example --token-file kbs-token")]
    Login(KbsLoginArgs),

    /// Create, list, show and delete key transfer policies.
    #[command(subcommand)]
    Policy(KbsPolicyCommand),

    /// Create (or import), list, show and delete model keys. Key bytes are never shown.
    #[command(subcommand)]
    Key(KbsKeyCommand),

    /// Answer an offline device's provisioning request with its key, wrapped to the device.
    ///
    /// A device with no network writes a provisioning request (its attestation evidence over a
    /// public key of its own) and someone carries the file here. The KBS checks the evidence and
    /// the key's transfer policy as for an online transfer, wraps the key to the device's public
    /// key, and audits the decision with the request id, the model and your user name. The
    /// response file goes back to the device, which unwraps the key and seals it to its TEE. It
    /// holds no usable key for anyone else. TDX devices are refused: TDX cannot seal. Online
    /// servers need none of this: they fetch their keys from the KBS themselves.
    #[command(after_help = "Examples:\n  \
        adyton kbs transfer --url https://kbs.example --offline request.json -o response.json")]
    Transfer(KbsTransferArgs),
}

#[derive(Debug, Args)]
pub struct KbsTransferArgs {
    #[command(flatten)]
    pub client: KbsClientArgs,

    /// The device's provisioning request file. Only offline transfers are made here, so this
    /// flag is required.
    #[arg(long, value_name = "REQUEST.json")]
    pub offline: PathBuf,

    /// Where to write the provisioning response for the device.
    #[arg(short, long, value_name = "RESPONSE.json")]
    pub output: PathBuf,

    /// Replace RESPONSE.json if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Where the KBS is, how to authenticate, and how to print.
#[derive(Debug, Args)]
pub struct KbsClientArgs {
    /// The KBS's base URL, e.g. http://127.0.0.1:8443.
    #[arg(long, value_name = "URL")]
    pub url: String,

    /// The token file written by `adyton kbs login` [default: $ADYTON_KBS_TOKEN if set, else
    /// $HOME/.config/adyton/kbs-token].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KbsLoginArgs {
    /// The KBS's base URL, e.g. http://127.0.0.1:8443.
    #[arg(long, value_name = "URL")]
    pub url: String,

    /// The operator's user name.
    #[arg(long, value_name = "NAME", default_value = "admin")]
    pub user: String,

    /// Where to write the token (mode 0600, replaced atomically) [default:
    /// $HOME/.config/adyton/kbs-token].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KbsPolicyCommand {
    /// Create a transfer policy from a policy file (docs/policy.md) with exactly one TEE table;
    /// prints its id alone on the last line.
    #[command(after_help = "Examples:\n  \
        adyton kbs policy create --url http://127.0.0.1:8443 --file tdx-policy.toml")]
    Create(KbsPolicyCreateArgs),
    /// List every transfer policy.
    List(KbsClientArgs),
    /// Show one transfer policy.
    Show(KbsItemArgs),
    /// Delete a transfer policy (refused while keys use it).
    Delete(KbsItemArgs),
}

#[derive(Debug, Args)]
pub struct KbsPolicyCreateArgs {
    #[command(flatten)]
    pub client: KbsClientArgs,

    /// The policy file: TOML, or JSON when named .json.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct KbsItemArgs {
    #[command(flatten)]
    pub client: KbsClientArgs,

    /// The id, as `create` or `list` printed it.
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Subcommand)]
pub enum KbsKeyCommand {
    /// Create a model key under a transfer policy (generated by the KBS, or imported with
    /// --import); prints its id alone on the last line.
    #[command(after_help = "Examples:\n  \
        adyton kbs key create --url http://127.0.0.1:8443 --policy POLICY_ID --import model.key\n  \
        adyton kbs key create --url http://127.0.0.1:8443 --policy POLICY_ID")]
    Create(KbsKeyCreateArgs),
    /// List every key's metadata.
    List(KbsClientArgs),
    /// Show one key's metadata.
    Show(KbsItemArgs),
    /// Delete a key.
    Delete(KbsItemArgs),
}

#[derive(Debug, Args)]
pub struct KbsKeyCreateArgs {
    #[command(flatten)]
    pub client: KbsClientArgs,

    /// The id of the transfer policy that guards the key.
    #[arg(long, value_name = "ID")]
    pub policy: String,

    /// Import this key file (exactly 32 raw bytes, as `adyton model encrypt --new-key` and CNAP
    /// write them) instead of letting the KBS generate a key.
    #[arg(long, value_name = "KEYFILE")]
    pub import: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KbsServeArgs {
    /// Configuration file (TOML; see docs/kbs-config.md). Flags given on the command line override
    /// its values. Without it, the local-trial mode described above applies.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address and port to listen on (port 0 picks a free port; the bound address is printed as
    /// `listening on http://ADDR`, or `https://` with TLS). Without TLS this is plain HTTP: put it
    /// behind TLS or keep it on a trusted network [default: 127.0.0.1:8443].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Data directory: the key store (kbs.redb), the audit log (audit.jsonl) and, unless given
    /// otherwise, the master key (master.key). Created with mode 0700 if missing. Required unless
    /// the configuration file sets `data_dir`.
    #[arg(long, value_name = "DIR", required_unless_present = "config")]
    pub data_dir: Option<PathBuf>,

    /// Master key file: exactly 32 raw bytes, mode 0600 (ignored when ADYTON_KBS_MASTER_KEY is
    /// set) [default: DIR/master.key, generated if missing].
    #[arg(long, value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,

    /// Collateral for verifying SGX, TDX and SNP evidence: a bundle file, or DCAP collateral JSON.
    /// Without it, only SIM evidence (under SIM policies) can succeed.
    #[arg(long, value_name = "FILE")]
    pub collateral: Option<PathBuf>,

    #[command(flatten)]
    pub tls: adyton_cli::net::TlsArgs,

    #[command(flatten)]
    pub connections: crate::net::ConnectionArgs,
}

#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Make evidence over report data in this machine's TEE, and write it as JSON.
    ///
    /// Made by `adyton-server attest report`, the TEE binary, with the same arguments.
    #[command(disable_help_flag = true)]
    Report(Forwarded),

    /// Verify evidence: genuine and current, and (with --policy) allowed by the policy.
    ///
    /// Without --policy, only signatures, certificate chains, revocation, collateral dates and the
    /// TCB level are checked, and the TCB status is printed without refusing on it. With --policy,
    /// the policy decides. Exits non-zero on any failure, with the reason.
    #[command(after_help = "Examples:\n  \
        adyton attest verify evidence.json --policy policy.toml\n  \
        adyton attest verify --tee tdx --quote tdx_quote --collateral tdx_quote_collateral.json --at 2025-06-01T00:00:00Z\n  \
        adyton attest verify --tee snp --report report.bin --vcek vcek.der --chain cert_chain.pem")]
    Verify(Box<VerifyArgs>),

    /// Print the SIM measurement of the inference server's build, `adyton-server` (hex, alone on
    /// the last line): what a policy's [sim] table pins.
    #[command(disable_help_flag = true)]
    Measure(Forwarded),

    /// Connect to an inference server over attested TLS, verify it against a policy, and print
    /// the claims and the certificate's SHA-256.
    ///
    /// --save-cert writes the verified certificate, so that clients that cannot verify
    /// attestation (curl --cacert, tritonclient) can pin it.
    #[command(after_help = "Examples:\n  \
        adyton attest server https://10.0.0.5:8443 --policy policy.toml --save-cert server.pem\n  \
        curl --cacert server.pem https://10.0.0.5:8443/v2/health/ready")]
    Server(Box<AttestServerArgs>),
}

/// How to reach and verify an attested inference server.
#[derive(Debug, Args)]
pub struct AttestedServerArgs {
    /// The server's URL: https://HOST:PORT.
    #[arg(value_name = "URL")]
    pub url: String,

    /// The policy the server's evidence must satisfy (TOML, or JSON when named .json).
    #[arg(long, value_name = "POLICY")]
    pub policy: PathBuf,

    /// Collateral for the evidence's checks (a bundle file), for SGX, TDX and SNP servers.
    #[arg(long, value_name = "FILE")]
    pub collateral: Option<PathBuf>,

    /// Skip the check of fresh evidence over a nonce of this client's own; the evidence in the
    /// server's certificate is still verified.
    #[arg(long)]
    pub no_nonce: bool,

    /// The limit of connecting and of each request.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub timeout: humantime::Duration,
}

#[derive(Debug, Args)]
pub struct AttestServerArgs {
    #[command(flatten)]
    pub server: AttestedServerArgs,

    /// Write the verified certificate (PEM) here.
    #[arg(long, value_name = "CERT.pem")]
    pub save_cert: Option<PathBuf>,

    /// Replace CERT.pem if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct InferArgs {
    #[command(flatten)]
    pub server: AttestedServerArgs,

    /// The model's name on the server.
    #[arg(value_name = "MODEL")]
    pub model: String,

    /// An input: its name and a .npy or .json file (`{"shape", "datatype", "data"}` or a nested
    /// array of the model's data type). Repeat for each input.
    #[arg(long = "input", value_name = "NAME=FILE", required = true)]
    pub inputs: Vec<String>,

    /// Write the outputs to OUT.npy (one output), OUT.npz (any number) or OUT.json, instead of
    /// printing them as JSON.
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,

    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,

    /// The server's bearer token, for servers that require one.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Evidence JSON, as `adyton attest report` writes it.
    #[arg(value_name = "EVIDENCE")]
    pub evidence: Option<PathBuf>,

    /// TEE of a raw vendor file given with --quote or --report.
    #[arg(long, value_name = "sgx|tdx|snp")]
    pub tee: Option<String>,

    /// A raw DCAP quote (binary or hex), for --tee sgx or tdx.
    #[arg(long, value_name = "FILE")]
    pub quote: Option<PathBuf>,

    /// A raw SEV-SNP attestation report (binary or hex), for --tee snp.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Collateral: a bundle file, or DCAP collateral JSON as dcap-qvl's sample/ folder has it.
    #[arg(long, value_name = "FILE")]
    pub collateral: Option<PathBuf>,

    /// Fetch DCAP collateral from this PCCS (or Intel's PCS) when --collateral is not given, e.g.
    /// https://pccs.example:8081 or https://api.trustedservices.intel.com.
    #[arg(long, value_name = "URL")]
    pub pccs: Option<String>,

    /// Fetch the SNP VCEK and chain from AMD's KDS (or a mirror) when not given, for this
    /// processor family: Milan, Genoa or Turin.
    #[arg(long, value_name = "PRODUCT")]
    pub kds_product: Option<String>,

    /// The KDS base URL used with --kds-product.
    #[arg(long, value_name = "URL", default_value = "https://kdsintf.amd.com")]
    pub kds: String,

    /// Keep fetched collateral in this directory, so that a later run works offline.
    #[arg(long, value_name = "DIR")]
    pub collateral_cache: Option<PathBuf>,

    /// The VCEK or VLEK certificate (DER or PEM), for SNP.
    #[arg(long, value_name = "FILE")]
    pub vcek: Option<PathBuf>,

    /// AMD's certificate chain (ASK then ARK, PEM), for SNP; the built-in roots otherwise.
    #[arg(long, value_name = "FILE")]
    pub chain: Option<PathBuf>,

    /// Policy file (TOML, or JSON when named .json).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Verify as of this time: RFC 3339 or unix seconds [default: now].
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,

    /// Also require this report data (hex, zero-padded to 64 bytes).
    #[arg(long, value_name = "HEX")]
    pub expect_report_data: Option<String>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

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

/// Envelope format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// CNAP single-shot format (whole file in memory, at most 4 GiB).
    V1,
    /// Adyton chunked streaming format.
    V2,
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

impl Forwarded {
    /// The arguments after the `adyton-server` subcommand `prefix`.
    fn with_prefix(&self, prefix: &[&str]) -> Vec<std::ffi::OsString> {
        prefix
            .iter()
            .map(std::ffi::OsString::from)
            .chain(self.args.iter().cloned())
            .collect()
    }
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Demo => demo::run(),
            Command::Dev(args) => dev::run(&args),
            Command::Model(ModelCommand::Encrypt(args)) => model::encrypt(&args),
            Command::Model(ModelCommand::Decrypt(args)) => model::decrypt(&args),
            Command::Model(ModelCommand::Inspect(args)) => model::inspect(&args),
            Command::Model(ModelCommand::Publish(args)) => publish::publish(&args),
            Command::Attest(AttestCommand::Report(forwarded)) => {
                server_binary::exec(&forwarded.with_prefix(&["attest", "report"]))
            }
            Command::Attest(AttestCommand::Verify(args)) => attest::verify(&args),
            Command::Attest(AttestCommand::Measure(forwarded)) => {
                server_binary::exec(&forwarded.with_prefix(&["measure"]))
            }
            Command::Attest(AttestCommand::Server(args)) => attest::server(&args),
            Command::Infer(args) => crate::infer::infer(&args),
            Command::Kbs(KbsCommand::Serve(args)) => kbs::serve(&args),
            Command::Kbs(KbsCommand::HashPassword) => kbs::hash_password(),
            Command::Kbs(KbsCommand::Login(args)) => kbs_client::login(&args),
            Command::Kbs(KbsCommand::Policy(command)) => kbs_client::policy(&command),
            Command::Kbs(KbsCommand::Key(command)) => kbs_client::key(&command),
            Command::Kbs(KbsCommand::Transfer(args)) => kbs_client::transfer(&args),
            Command::Server(forwarded) => server_binary::exec(&forwarded.args),
            Command::Registry(RegistryCommand::Serve(args)) => registry::serve(&args),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn server_commands_are_forwarded_whole() {
        let cli = Cli::try_parse_from([
            "adyton",
            "server",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--help",
        ])
        .unwrap();
        let Command::Server(forwarded) = cli.command else {
            panic!("not the server command");
        };
        assert_eq!(
            forwarded.args,
            ["serve", "--listen", "127.0.0.1:0", "--help"]
        );
        let cli =
            Cli::try_parse_from(["adyton", "attest", "report", "--tee", "sim", "-o", "-"]).unwrap();
        let Command::Attest(AttestCommand::Report(forwarded)) = cli.command else {
            panic!("not attest report");
        };
        assert_eq!(
            forwarded.with_prefix(&["attest", "report"]),
            ["attest", "report", "--tee", "sim", "-o", "-"]
        );
        let cli = Cli::try_parse_from(["adyton", "attest", "measure"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Attest(AttestCommand::Measure(_))
        ));
    }
}
