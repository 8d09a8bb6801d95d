//! `adyton`: the operator's commands, the key broker, the registry and the demo; the inference
//! server that runs in the TEE is `adyton-server`, which `adyton server ...` runs. Each command's
//! module holds its own arguments, so that this file only names them and no module imports from
//! it.

#![forbid(unsafe_code)]

mod attest;
mod demo;
mod files;
mod format;
mod infer;
mod kbs;
mod kbs_client;
mod model;
mod publish;
mod registry;
mod secrets;
mod server_binary;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Confidential AI inference: models and data decrypted only inside a TEE.
#[derive(Debug, Parser)]
#[command(name = "adyton", version, about, long_about = None, propagate_version = true)]
struct Cli {
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
    Dev(demo::dev::DevArgs),

    /// Encrypt, decrypt and inspect model files (envelopes v1 and v2).
    #[command(subcommand)]
    Model(model::ModelCommand),

    /// Make attestation evidence, verify it against vendor roots and a policy, measure this build.
    #[command(subcommand)]
    Attest(attest::AttestCommand),

    /// Run a model on an attested inference server: verify the server first, then send inputs
    /// from .npy or JSON files, and print the outputs or write them as .npy, .npz or JSON.
    #[command(after_help = "Examples:\n  \
        adyton infer https://10.0.0.5:8443 add --policy policy.toml --input a=a.npy --input b=b.json\n  \
        adyton infer https://10.0.0.5:8443 multi --policy policy.toml --input x=x.npy --input y=y.npy -o out.npz")]
    Infer(Box<infer::InferArgs>),

    /// Run the key broker (KBS): model keys released only to attested TEEs.
    #[command(subcommand)]
    Kbs(kbs::KbsCommand),

    /// Run the inference server: ONNX models over the Open Inference Protocol and attested TLS.
    ///
    /// The server is its own binary, `adyton-server`, which runs in the TEE: this runs the one
    /// beside `adyton` (else on PATH) with the same arguments (serve, provision-request,
    /// provision-accept; `adyton server serve --help` for each).
    #[command(disable_help_flag = true)]
    Server(server_binary::Forwarded),

    /// Run the model registry: model info and encrypted blobs, on a filesystem or S3.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => demo::run(),
        Command::Dev(args) => demo::dev::run(&args),
        Command::Model(command) => model::run(&command),
        Command::Attest(command) => attest::run(&command),
        Command::Infer(args) => infer::infer(&args),
        Command::Kbs(command) => kbs::run(&command),
        Command::Server(forwarded) => server_binary::exec(&forwarded.args),
        Command::Registry(command) => registry::run(&command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
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

    /// The help of flag `id` of the subcommand at `path`.
    fn flag_help(path: &[&str], id: &str) -> String {
        let mut command = Cli::command();
        for name in path {
            command = command.find_subcommand(name).unwrap().clone();
        }
        let arg = command.get_arguments().find(|arg| arg.get_id() == id);
        arg.and_then(|arg| arg.get_help()).unwrap().to_string()
    }

    #[test]
    fn shared_flags_say_what_they_mean_in_each_command() {
        let kbs = flag_help(&["kbs", "serve"], "listen");
        assert!(kbs.starts_with("Address and port to listen on"), "{kbs}");
        assert!(kbs.contains("plain HTTP"), "{kbs}");
        assert!(kbs.ends_with("[default: 127.0.0.1:8443]"), "{kbs}");
        let registry = flag_help(&["registry", "serve"], "listen");
        assert!(
            registry.ends_with("[default: 127.0.0.1:8080]"),
            "{registry}"
        );
        let guarded = [
            (
                &["registry", "serve"][..],
                "writes (uploads, info, deletes)",
            ),
            (&["kbs", "login"], "Where to write the token"),
            (&["kbs", "key", "list"], "written by `adyton kbs login`"),
            (
                &["kbs", "policy", "create"],
                "written by `adyton kbs login`",
            ),
            (&["kbs", "transfer"], "written by `adyton kbs login`"),
            (&["infer"], "The server's bearer token"),
        ];
        for (path, meaning) in guarded {
            let help = flag_help(path, "token_file");
            assert!(help.contains(meaning), "{path:?}: {help}");
        }
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
        let Command::Attest(attest::AttestCommand::Report(forwarded)) = cli.command else {
            panic!("not attest report");
        };
        assert_eq!(
            forwarded.with_prefix(&["attest", "report"]),
            ["attest", "report", "--tee", "sim", "-o", "-"]
        );
        let cli = Cli::try_parse_from(["adyton", "attest", "measure"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Attest(attest::AttestCommand::Measure(_))
        ));
    }
}
