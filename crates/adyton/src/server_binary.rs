//! `adyton-server`, the binary that runs in the TEE: found beside this executable, else on
//! `PATH`. `adyton server ...`, `adyton attest report` and `adyton attest measure` become it, so
//! that the command lines of earlier versions keep working; the demo and `adyton dev` start it.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

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

impl Forwarded {
    /// The arguments after the `adyton-server` subcommand `prefix`.
    pub fn with_prefix(&self, prefix: &[&str]) -> Vec<std::ffi::OsString> {
        prefix
            .iter()
            .map(std::ffi::OsString::from)
            .chain(self.args.iter().cloned())
            .collect()
    }
}

/// The TEE binary's file name.
pub const NAME: &str = "adyton-server";

/// The `adyton-server` beside this executable, else the first on `PATH`.
pub fn find() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let beside = exe.parent().unwrap_or(Path::new(".")).join(NAME);
    find_in(&beside, std::env::var_os("PATH"))
}

/// `beside` if it is an executable file, else the first executable `adyton-server` on `path`.
fn find_in(beside: &Path, path: Option<OsString>) -> Result<PathBuf> {
    if is_executable(beside) {
        return Ok(beside.to_path_buf());
    }
    let on_path = path
        .iter()
        .flat_map(std::env::split_paths)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(NAME))
        .find(|candidate| is_executable(candidate));
    match on_path {
        Some(found) => Ok(found),
        None => bail!(
            "{NAME} (the inference server, which runs in the TEE) is neither beside this \
             executable ({}) nor on PATH; build it with `cargo build --release`, which puts it \
             beside `adyton`",
            beside.display()
        ),
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Replaces this process with `adyton-server ARGS`: its exit status, output and signals are the
/// command's own. Returns only if it cannot be run.
pub fn exec(args: &[OsString]) -> Result<()> {
    let exe = find()?;
    let error = Command::new(&exe).args(args).exec();
    Err(error).with_context(|| format!("cannot run {}", exe.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn executable(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn beside_first_then_path_then_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().join("bin");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&here).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let beside = here.join(NAME);
        let path = Some(std::env::join_paths([dir.path(), &elsewhere]).unwrap());

        let e = format!("{:#}", find_in(&beside, path.clone()).unwrap_err());
        assert!(
            e.contains(&beside.display().to_string())
                && e.contains("PATH")
                && e.contains("cargo build --release"),
            "{e}"
        );
        // Not executable: not taken.
        std::fs::write(elsewhere.join(NAME), "data").unwrap();
        assert!(find_in(&beside, path.clone()).is_err());
        executable(&elsewhere.join(NAME));
        assert_eq!(
            find_in(&beside, path.clone()).unwrap(),
            elsewhere.join(NAME)
        );
        executable(&beside);
        assert_eq!(find_in(&beside, path).unwrap(), beside);
    }
}
