//! Running the binary and the reference scripts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `adyton-server`, the TEE binary, which `adyton server ...` and `adyton attest report|measure`
/// run: beside the `adyton` under test. `cargo test --workspace` builds it; `cargo test -p
/// adyton` alone does not, hence the message.
pub fn server_exe() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_adyton")).with_file_name("adyton-server");
    assert!(
        exe.is_file(),
        "{} is missing: build it first (`cargo build -p adyton-server`, or run \
         `cargo test --workspace`)",
        exe.display()
    );
    exe
}

pub fn adyton(args: &[&str], dir: &Path) -> Output {
    if matches!(args.first(), Some(&"server" | &"attest")) {
        server_exe();
    }
    Command::new(env!("CARGO_BIN_EXE_adyton"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the adyton binary runs")
}

/// Runs `adyton` and insists that it succeeds.
pub fn adyton_ok(args: &[&str], dir: &Path) -> Output {
    let out = adyton(args, dir);
    assert!(
        out.status.success(),
        "adyton {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `adyton` and insists that it fails; returns its stderr.
pub fn adyton_err(args: &[&str], dir: &Path) -> String {
    let out = adyton(args, dir);
    assert!(
        !out.status.success(),
        "adyton {args:?} unexpectedly succeeded"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn reference_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference")
        .join(name)
}

/// Runs a reference Python script. The test suite's set-up installs Python's `cryptography`; a
/// missing interpreter or package is a failure, never a skip.
pub fn python(script: &str, args: &[&str], dir: &Path) -> Output {
    let interpreter = crate::support::python_interpreter();
    Command::new(&interpreter)
        .arg(reference_script(script))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {interpreter}: {e}"))
}

pub fn python_ok(script: &str, args: &[&str], dir: &Path) {
    let out = python(script, args, dir);
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ len as u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Files in `dir` whose names start with a dot: the atomic writer's temporary files.
pub fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// `adyton kbs serve` or `adyton server serve` running in the background; killed when dropped, so
/// a failing test never leaves it behind.
pub struct ServerProcess {
    child: std::process::Child,
    /// The URL it printed (`http://ADDR` or `https://ADDR`).
    pub url: String,
    /// What it printed on stderr before the address.
    pub startup: Vec<String>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// A command for `adyton kbs serve` followed by `args`, run in `dir`, with the admin password
    /// and master key variables cleared (callers set what they test).
    pub fn command(dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_adyton"));
        command
            .args(["kbs", "serve"])
            .args(args)
            .current_dir(dir)
            .env_remove("ADYTON_KBS_ADMIN_PASSWORD")
            .env_remove("ADYTON_KBS_MASTER_KEY");
        command
    }

    /// Spawns `command` and waits until it prints `listening on URL`.
    pub fn start(mut command: Command) -> Self {
        use std::io::{BufRead as _, BufReader};
        use std::process::Stdio;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        // From here on the guard owns the child, so a timeout or panic kills it.
        let mut server = Self {
            child,
            url: String::new(),
            startup: Vec::new(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining stderr after the address, so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                let _ = tx.send(line);
            }
        });
        loop {
            match rx.recv_timeout(std::time::Duration::from_secs(60)) {
                Ok(line) => match line.strip_prefix("listening on ") {
                    Some(url) => {
                        server.url = url.trim().to_owned();
                        return server;
                    }
                    None => server.startup.push(line),
                },
                Err(e) => panic!(
                    "the server did not print its address ({e}): {:?}",
                    server.startup
                ),
            }
        }
    }
}

/// The Python interpreter of the tests: `PYTHON` (set by `scripts/test`), else the workspace's
/// `.venv` made by `scripts/setup`, else `python3`.
pub fn python_interpreter() -> String {
    if let Ok(python) = std::env::var("PYTHON") {
        return python;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    if venv.exists() {
        return venv.to_string_lossy().into_owned();
    }
    "python3".into()
}
