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
mod net;
mod provision;
mod publish;
mod registry;
mod secrets;
mod server;
mod stack;

use std::process::ExitCode;

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
