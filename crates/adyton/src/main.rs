//! `adyton`: every Adyton role as a subcommand of one binary.

#![forbid(unsafe_code)]

mod attest;
mod cli;
mod demo;
mod dev;
mod files;
mod infer;
mod kbs;
mod kbs_client;
mod model;
mod publish;
mod registry;
mod secrets;
mod server_binary;
mod stack;

use std::process::ExitCode;

// The serve loop that the key broker and the registry share with `adyton-server`.
use adyton_cli::net;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
