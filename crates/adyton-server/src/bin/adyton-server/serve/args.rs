//! `adyton-server serve`'s flags, and the configuration they make with the file they name: the
//! file is read here and parsed, merged and checked by `adyton_server::config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use adyton_cli::bytes::parse_limit;
use adyton_cli::net::{ConnectionArgs, ConnectionLimits, ConnectionsSection, ListenArgs};
use adyton_cli::secrets::TokenFileArgs;
use adyton_server::config::{ConfigSource, ServerConfig, ServerFlags};
use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize as _;

#[derive(Debug, Args)]
#[command(
    // Always HTTPS here, so not the shared help that mentions plain HTTP.
    mut_arg("listen", |arg| arg.help(
        "Address and port to listen on, e.g. 127.0.0.1:8443 (port 0 picks a free one)"
    )),
    mut_arg("token_file", |arg| arg.help(
        "A file holding the bearer token that model upload, pull and delete require"
    )),
)]
pub struct ServeArgs {
    /// The configuration file (docs/server-config.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub listen: ListenArgs<SocketAddr>,
    /// The TEE whose evidence goes into the certificate: auto, sgx, tdx, snp, azure-snp, azure-tdx
    /// (an Azure confidential VM's vTPM), nitro (an AWS Nitro Enclave), coco (TDX or SNP through a
    /// Confidential Containers pod's attestation agent; never chosen by auto) or sim (INSECURE).
    #[arg(long, value_name = "TEE")]
    pub tee: Option<String>,
    /// The SIM attester's key file (default: ~/.config/adyton/sim.key, made on first use).
    #[arg(long, value_name = "FILE")]
    pub sim_key: Option<PathBuf>,
    /// A plain ONNX model to serve, as NAME=PATH; repeatable. For models that are not secret.
    #[arg(long = "model", value_name = "NAME=PATH")]
    pub models: Vec<String>,
    /// A protected model to pull from the registry at start, as NAME=MODEL_ID; repeatable. Its key
    /// is released by the key broker named in the model's info, to this TEE's evidence.
    #[arg(long = "pull", value_name = "NAME=MODEL_ID")]
    pub pulls: Vec<String>,
    /// A concrete input shape whose plan is compiled when the model loads, as NAME:INPUT=DIMS,
    /// e.g. ocr:x=1,3,48,320 (sizes only: other shapes are compiled on first use, so dynamic
    /// dimensions need no setting). Repeatable: the flags of one model fill one shape set input
    /// by input, and an input given again starts the next set (docs/server-config.md, "Input
    /// shapes").
    #[arg(long = "input-shape", value_name = "NAME:INPUT=DIMS")]
    pub input_shapes: Vec<String>,
    /// The engine that runs models: tract (pure Rust, the default and the smaller trusted
    /// computing base) or onnxruntime (faster, more operators; its shared library must be part of
    /// the measured image). A model's `engine` in the configuration file overrides it.
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<String>,
    /// Threads for one inference's operators (intra-op), for every model without a `threads` of
    /// its own [default: the engine's].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// The onnxruntime shared library (libonnxruntime.so) for the onnxruntime engine [default:
    /// $ADYTON_ONNXRUNTIME_LIBRARY; `scripts/onnxruntime_library` prints the pip wheel's].
    #[arg(long, value_name = "FILE")]
    pub onnxruntime_library: Option<PathBuf>,
    /// The registry that protected models are pulled from (also for POST .../{name}:pull).
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    /// This platform's PCCS (or Intel's PCS): the collateral of this server's SGX or TDX evidence
    /// is fetched from it and sent with the evidence in key transfers, for key brokers that have
    /// none of their own.
    #[arg(long, value_name = "URL")]
    pub pccs_url: Option<String>,
    /// AMD's KDS (or a mirror): the same for this server's SNP evidence, unless it carries its VCEK.
    #[arg(long, value_name = "URL")]
    pub kds_url: Option<String>,
    /// The Confidential Containers attestation agent's REST API, for --tee coco [default:
    /// http://127.0.0.1:8006, where api-server-rest answers in a CoCo pod].
    #[arg(long, value_name = "URL")]
    pub coco_url: Option<String>,
    /// The NVIDIA GPUs whose attestation reports go with the TEE's evidence: none (the default)
    /// or nvml (every GPU NVIDIA's management library sees, each in confidential-computing mode;
    /// needs a build with --features nvml). Clients and key brokers verify them under a policy
    /// with [nvidia_gpu].
    #[arg(long, value_name = "none|nvml")]
    pub gpus: Option<String>,
    /// The key pair a pull makes for its key transfer: p384 (the default; fast to make) or
    /// rsa-3072 (for a key broker that takes RSA keys only, such as Intel's KBS).
    #[arg(long, value_name = "KIND")]
    pub transfer_key: Option<String>,
    /// An offline device's state directory: serve the models provisioned there, their keys
    /// unsealed by this TEE, with no network (docs/offline.md).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub token_file: TokenFileArgs,
    /// Write the attested certificate (PEM) here, for clients that pin it (curl, tritonclient).
    #[arg(long, value_name = "FILE")]
    pub certificate_out: Option<PathBuf>,
    /// Inferences running at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Requests that may wait for a worker before the server answers 503 (default: 16 per worker).
    #[arg(long, value_name = "N")]
    pub queue: Option<usize>,
    /// Model versions held at once, uploaded or configured (default 16).
    #[arg(long, value_name = "N")]
    pub max_models: Option<usize>,
    /// Largest model upload, e.g. 512M (default 1G).
    #[arg(long, value_name = "SIZE", value_parser = parse_limit)]
    pub max_upload_bytes: Option<usize>,
    /// Memory a model's constants may need, declared or computed from constant shapes, checked
    /// before the model loads (uploads, pulls, --model, sealed models), e.g. 2G (default 4G).
    #[arg(long, value_name = "SIZE", value_parser = parse_limit)]
    pub load_budget_bytes: Option<usize>,
    /// Largest JSON infer response, bounded before it is built; beyond it, binary outputs are
    /// needed, e.g. 16M (default 64M).
    #[arg(long, value_name = "SIZE", value_parser = parse_limit)]
    pub max_json_response_bytes: Option<usize>,
    /// Largest infer request body, e.g. 16M (default 64M).
    #[arg(long, value_name = "SIZE", value_parser = parse_limit)]
    pub max_request_bytes: Option<usize>,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

impl ServeArgs {
    /// The flags that `adyton_server::config` merges over the file.
    fn flags(&self) -> ServerFlags {
        ServerFlags {
            listen: self.listen.address,
            tee: self.tee.clone(),
            sim_key: self.sim_key.clone(),
            models: self.models.clone(),
            pulls: self.pulls.clone(),
            input_shapes: self.input_shapes.clone(),
            engine: self.engine.clone(),
            threads: self.threads,
            onnxruntime_library: self.onnxruntime_library.clone(),
            registry: self.registry.clone(),
            pccs_url: self.pccs_url.clone(),
            kds_url: self.kds_url.clone(),
            coco_url: self.coco_url.clone(),
            gpus: self.gpus.clone(),
            transfer_key: self.transfer_key.clone(),
            state_dir: self.state_dir.clone(),
            token_file: self.token_file.path.clone(),
            certificate_out: self.certificate_out.clone(),
            workers: self.workers,
            queue: self.queue,
            max_models: self.max_models,
            max_upload_bytes: self.max_upload_bytes,
            load_budget_bytes: self.load_budget_bytes,
            max_json_response_bytes: self.max_json_response_bytes,
            max_request_bytes: self.max_request_bytes,
        }
    }

    /// The server's configuration, and its connection limits (`[connections]` and their flags).
    pub fn resolve(&self) -> Result<(ServerConfig, ConnectionLimits)> {
        let text = match &self.config {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            ),
            None => None,
        };
        let source = match (&self.config, &text) {
            (Some(path), Some(text)) => Some(ConfigSource { path, text }),
            _ => None,
        };
        let config = ServerConfig::resolve(source, &self.flags())?;
        let shown = self
            .config
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let section = config
            .connections
            .clone()
            .map(ConnectionsSection::deserialize)
            .transpose()
            .with_context(|| format!("{shown} is not a valid server configuration"))?;
        let limits = ConnectionLimits::resolve(section.as_ref(), &self.connections, &shown)?;
        Ok((config, limits))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    /// `adyton-server serve`'s arguments alone.
    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn resolve(file: Option<&str>, flags: &[&str]) -> Result<(ServerConfig, ConnectionLimits)> {
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["serve", "--listen", "127.0.0.1:0"];
        let config = dir.path().join("etc").join("server.toml");
        let config_arg = config.to_string_lossy().into_owned();
        if let Some(text) = file {
            std::fs::create_dir_all(config.parent().unwrap()).unwrap();
            std::fs::write(&config, text).unwrap();
            argv.extend(["--config", &config_arg]);
        }
        argv.extend(flags);
        Serve::try_parse_from(argv).unwrap().args.resolve()
    }

    #[test]
    fn flags_reach_the_configuration_and_paths_are_the_files() {
        let (config, limits) = resolve(
            Some("token_file = \"token\"\n[connections]\nmax_connections = 7\n"),
            &[
                "--model",
                "m=m.onnx",
                "--max-upload-bytes",
                "2M",
                "--workers",
                "3",
                "--header-timeout",
                "2s",
                "--transfer-key",
                "rsa-3072",
            ],
        )
        .unwrap();
        assert_eq!(
            config.transfer_key,
            adyton_envelope::wrap::TransferKeyKind::Rsa3072
        );
        assert!(config.token_file.as_ref().unwrap().ends_with("etc/token"));
        assert_eq!(config.settings.max_upload, 2 << 20);
        assert_eq!(config.settings.workers, 3);
        assert_eq!(config.settings.queue, 48);
        assert_eq!(
            config.model("m").unwrap().path,
            Some(PathBuf::from("m.onnx"))
        );
        assert_eq!(limits.max_connections, 7);
        assert_eq!(limits.header_timeout, std::time::Duration::from_secs(2));
    }

    #[test]
    fn bad_files_and_connection_settings_are_refused_with_their_key() {
        let e = format!(
            "{:#}",
            resolve(Some("[connections]\nmax_conections = 5\n"), &[]).unwrap_err()
        );
        assert!(
            e.contains("max_conections") && e.contains("server.toml"),
            "{e}"
        );
        let e = format!("{:#}", resolve(Some("listen = 5\n"), &[]).unwrap_err());
        assert!(e.contains("is not a valid server configuration"), "{e}");
        let e = format!(
            "{:#}",
            resolve(None, &["--idle-timeout", "0s"]).unwrap_err()
        );
        assert!(e.contains("idle_timeout"), "{e}");
        let e = format!("{:#}", resolve(None, &["--workers", "0"]).unwrap_err());
        assert!(e.contains("workers must be at least 1"), "{e}");
    }
}
