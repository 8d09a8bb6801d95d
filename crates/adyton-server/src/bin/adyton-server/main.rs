//! `adyton-server`: the inference server that runs inside the TEE, and nothing else: `serve`, an
//! offline device's provisioning (`provision-request`, `provision-accept`), evidence of its own
//! TEE (`attest report`) and its SIM measurement (`measure`). No key broker, no registry, no
//! store, no demo: what a client's policy pins is this binary's measurement, so it holds only
//! what runs in the TEE. `adyton server ...` runs it with the same arguments.

#![forbid(unsafe_code)]

mod attest;
mod measure;
mod provision;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The Adyton inference server, run inside a TEE: ONNX models over the Open Inference Protocol
/// and attested TLS.
#[derive(Debug, Parser)]
#[command(name = "adyton-server", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve models over HTTPS whose certificate carries this TEE's evidence, until SIGINT or
    /// SIGTERM.
    ///
    /// With --config, settings come from a TOML file (docs/server-config.md), flags overriding it.
    /// Without it, a local trial needs only --listen; models that are not secret may be loaded
    /// from plain files with --model.
    #[command(after_help = "Examples:\n  \
        adyton server serve --listen 127.0.0.1:8443 --tee sim --model add=add.onnx --token-file token\n  \
        adyton server serve --config server.toml")]
    // Boxed: the serve flags are many, and the other variants small.
    Serve(Box<serve::ServeArgs>),

    /// Offline device, step 1 of 3: make a provisioning request to carry to the model provider.
    ///
    /// Installs the encrypted model blob in the state directory, makes an RSA-3072 key pair inside
    /// the TEE, seals its private key to this TEE, and writes the request: the public key and
    /// evidence over its SHA-512. The provider answers it with `adyton kbs transfer --offline`;
    /// `adyton server provision-accept` takes the answer. TDX is refused: it has no sealing key.
    #[command(after_help = "Examples:\n  \
        adyton server provision-request --model scanner-v3 --blob scanner-v3.enc -o request.json\n  \
        adyton server provision-request --tee sim --model digits --blob digits.enc --sealing signer -o req.json")]
    ProvisionRequest(provision::ProvisionRequestArgs),

    /// Offline device, step 3 of 3: accept the provider's response to a provisioning request.
    ///
    /// Unseals the request's private key, unwraps the model key, checks that it opens the model
    /// blob, seals it to this TEE and deletes the provisioning key pair. From then on
    /// `adyton server serve --state-dir DIR` serves the model with no network. A response is
    /// accepted once, and only by the device that made its request.
    #[command(after_help = "Example:\n  adyton server provision-accept response.json")]
    ProvisionAccept(provision::ProvisionAcceptArgs),

    /// Make attestation evidence in this TEE.
    #[command(subcommand)]
    Attest(attest::AttestCommand),

    /// Print the SIM measurement of this build (hex, alone on the last line).
    Measure,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::serve(&args),
        Command::ProvisionRequest(args) => provision::request(&args),
        Command::ProvisionAccept(args) => provision::accept(&args),
        Command::Attest(attest::AttestCommand::Report(args)) => attest::report(&args),
        Command::Measure => measure::measure(),
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
}
