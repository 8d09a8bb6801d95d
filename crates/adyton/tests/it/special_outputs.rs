//! Outputs never replace special files: every command that writes a file writes straight into a
//! named pipe or a character device it is given, refuses anything else that is not a regular
//! file, and never puts a key or a token anywhere but a regular file. The negative cases use
//! pipes, sockets and device nodes made in a temporary directory, never the machine's own
//! `/dev/null` (which only a case that cannot replace it touches).

use std::fs;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{adyton, adyton_ok, ServerProcess};

const PASSWORD: &str = "special-outputs-test-password";

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

fn kind(path: &Path) -> &'static str {
    let file_type = fs::symlink_metadata(path).unwrap().file_type();
    if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_char_device() {
        "char"
    } else if file_type.is_block_device() {
        "block"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_file() {
        "file"
    } else {
        "other"
    }
}

/// `cat` reading a named pipe, so that a writer can open it.
struct PipeReader {
    child: Option<Child>,
    path: PathBuf,
}

impl PipeReader {
    fn new(path: &Path) -> Self {
        let child = Command::new("cat")
            .arg(path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            path: path.to_owned(),
        }
    }

    /// What the writer wrote, once it closed the pipe. The pipe must still be a pipe: had it been
    /// replaced, `cat` would wait forever on the old one.
    fn bytes(mut self) -> Vec<u8> {
        assert_eq!(
            kind(&self.path),
            "fifo",
            "{} was replaced",
            self.path.display()
        );
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("nothing closed {}", self.path.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().unwrap();
        output.stdout
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn failed(out: &Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A device node in `dir` if this test may make one (root), else `None`: then the pipe cases
/// stand for devices.
fn mknod(dir: &Path, name: &str, kind: &str, major: &str, minor: &str) -> Option<PathBuf> {
    let path = dir.join(name);
    let status = Command::new("mknod")
        .arg(&path)
        .args([kind, major, minor])
        .stderr(Stdio::null())
        .status()
        .ok()?;
    status.success().then_some(path)
}

fn report_args(out: &str) -> Vec<String> {
    [
        "attest",
        "report",
        "--tee",
        "sim",
        "--sim-key",
        "sim.key",
        "--report-data",
        "00ff",
        "-o",
        out,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn run(args: &[String], dir: &Path) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    adyton(&args, dir)
}

#[test]
fn attest_report_writes_into_pipes_and_devices_and_replaces_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    // A named pipe, with and without --force: written into, still a pipe.
    for force in [false, true] {
        mkfifo(&d.join("pipe"));
        let reader = PipeReader::new(&d.join("pipe"));
        let mut args = report_args("pipe");
        if force {
            args.push("--force".into());
        }
        succeeded(&run(&args, d), "report into a pipe");
        let written: serde_json::Value = serde_json::from_slice(&reader.bytes()).unwrap();
        assert_eq!(written["tee"], "SIM", "{written}");
        fs::remove_file(d.join("pipe")).unwrap();
    }

    // A character device made here, as root: written into with --force, still a device.
    if let Some(null) = mknod(d, "null", "c", "1", "3") {
        let mut args = report_args(null.to_str().unwrap());
        args.push("--force".into());
        succeeded(&run(&args, d), "report into a device");
        assert_eq!(kind(&null), "char");
    }
    // The machine's /dev/null, without --force (which the old writer refused as existing, so
    // this cannot replace it): written into.
    succeeded(&run(&report_args("/dev/null"), d), "report into /dev/null");
    assert_eq!(kind(Path::new("/dev/null")), "char");

    // `-`: standard output.
    let out = run(&report_args("-"), d);
    succeeded(&out, "report to standard output");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["tee"], "SIM");

    // A symbolic link to a pipe is written through (`/dev/stdout`, `>(...)`).
    mkfifo(&d.join("pipe2"));
    std::os::unix::fs::symlink("pipe2", d.join("to-pipe")).unwrap();
    let reader = PipeReader::new(&d.join("pipe2"));
    let mut args = report_args("to-pipe");
    args.push("--force".into());
    succeeded(&run(&args, d), "report through a link to a pipe");
    assert!(!reader.bytes().is_empty());
    assert_eq!(kind(&d.join("to-pipe")), "symlink");

    // A symbolic link to a regular file is refused, even with --force: link and file unchanged.
    fs::write(d.join("elsewhere.json"), "keep").unwrap();
    std::os::unix::fs::symlink("elsewhere.json", d.join("to-file")).unwrap();
    let mut args = report_args("to-file");
    args.push("--force".into());
    let err = failed(&run(&args, d), "report through a link to a file");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(kind(&d.join("to-file")), "symlink");
    assert_eq!(
        fs::read_to_string(d.join("elsewhere.json")).unwrap(),
        "keep"
    );

    // A socket is refused, even with --force, and stays a socket.
    let _listener = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    let mut args = report_args("sock");
    args.push("--force".into());
    let err = failed(&run(&args, d), "report into a socket");
    assert!(err.contains("socket"), "{err}");
    assert_eq!(kind(&d.join("sock")), "socket");

    // A block device (as root, made here: loop device 7,0, never opened) is refused.
    if let Some(disk) = mknod(d, "disk", "b", "7", "0") {
        let mut args = report_args(disk.to_str().unwrap());
        args.push("--force".into());
        let err = failed(&run(&args, d), "report into a block device");
        assert!(err.contains("block device"), "{err}");
        assert_eq!(kind(&disk), "block");
    }

    // No temporary file is left behind by any of these.
    assert!(
        crate::support::leftovers(d).is_empty(),
        "{:?}",
        crate::support::leftovers(d)
    );
}

#[test]
fn model_encrypt_and_decrypt_write_into_pipes_and_keep_keys_in_regular_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let model = crate::support::random_bytes(10_000);
    fs::write(d.join("model.onnx"), &model).unwrap();

    // A new key is a secret: a pipe is refused (and nothing is encrypted), and stays a pipe.
    mkfifo(&d.join("key-pipe"));
    let err = failed(
        &adyton(
            &[
                "model",
                "encrypt",
                "model.onnx",
                "-o",
                "model.enc",
                "--new-key",
                "key-pipe",
                "--force",
            ],
            d,
        ),
        "a key into a pipe",
    );
    assert!(err.contains("regular file"), "{err}");
    assert_eq!(kind(&d.join("key-pipe")), "fifo");
    assert!(!d.join("model.enc").exists());
    // Nor through a symbolic link, nor to standard output.
    std::os::unix::fs::symlink("model.key", d.join("key-link")).unwrap();
    for target in ["key-link", "-"] {
        let err = failed(
            &adyton(
                &[
                    "model",
                    "encrypt",
                    "model.onnx",
                    "-o",
                    "model.enc",
                    "--new-key",
                    target,
                ],
                d,
            ),
            "a key to a link or standard output",
        );
        assert!(
            err.contains("regular file") || err.contains("standard output"),
            "{err}"
        );
    }
    assert!(!d.join("model.key").exists());

    // The encrypted model into a pipe.
    mkfifo(&d.join("enc-pipe"));
    let reader = PipeReader::new(&d.join("enc-pipe"));
    adyton_ok(
        &[
            "model",
            "encrypt",
            "model.onnx",
            "-o",
            "enc-pipe",
            "--new-key",
            "model.key",
            "--force",
        ],
        d,
    );
    let envelope = reader.bytes();
    assert!(envelope.len() > model.len());
    assert_eq!(
        fs::metadata(d.join("model.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    fs::write(d.join("model.enc"), &envelope).unwrap();

    // The decrypted model into a pipe, and to standard output.
    mkfifo(&d.join("plain-pipe"));
    let reader = PipeReader::new(&d.join("plain-pipe"));
    adyton_ok(
        &[
            "model",
            "decrypt",
            "model.enc",
            "-o",
            "plain-pipe",
            "--key",
            "model.key",
            "--force",
        ],
        d,
    );
    assert_eq!(reader.bytes(), model);
    let out = adyton_ok(
        &[
            "model",
            "decrypt",
            "model.enc",
            "-o",
            "-",
            "--key",
            "model.key",
        ],
        d,
    );
    assert_eq!(out.stdout, model);

    // A socket is refused for either output.
    let _listener = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    let err = failed(
        &adyton(
            &[
                "model",
                "decrypt",
                "model.enc",
                "-o",
                "sock",
                "--key",
                "model.key",
                "--force",
            ],
            d,
        ),
        "decrypt into a socket",
    );
    assert!(err.contains("socket"), "{err}");
    assert_eq!(kind(&d.join("sock")), "socket");
}

#[test]
fn provisioning_files_go_into_pipes_and_kbs_outputs_are_checked_before_anything_is_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::write(d.join("model.onnx"), crate::support::random_bytes(5_000)).unwrap();
    adyton_ok(
        &[
            "model",
            "encrypt",
            "model.onnx",
            "-o",
            "model.enc",
            "--new-key",
            "model.key",
        ],
        d,
    );

    // `server provision-request -o PIPE`.
    mkfifo(&d.join("request-pipe"));
    let reader = PipeReader::new(&d.join("request-pipe"));
    let request_args = |out: &str| {
        [
            "server",
            "provision-request",
            "--state-dir",
            "device",
            "--tee",
            "sim",
            "--sim-key",
            "sim.key",
            "--model",
            "m",
            "--blob",
            "model.enc",
            "--key-id",
            "k1",
            "--force",
            "-o",
            out,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    succeeded(
        &run(&request_args("request-pipe"), d),
        "provisioning request into a pipe",
    );
    let request = reader.bytes();
    let parsed: serde_json::Value = serde_json::from_slice(&request).unwrap();
    assert_eq!(parsed["model"], "m", "{parsed}");
    fs::write(d.join("request.json"), &request).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    let err = failed(
        &run(&request_args("sock"), d),
        "provisioning request into a socket",
    );
    assert!(err.contains("socket"), "{err}");

    // `kbs transfer --offline -o SOCKET`: refused before the KBS (nothing listens) is asked.
    let transfer = |out: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_adyton"));
        command
            .args(["kbs", "transfer", "--offline", "request.json", "-o", out])
            .args(["--url", "http://127.0.0.1:9", "--force"])
            .current_dir(d)
            .env("ADYTON_KBS_TOKEN", "not-used")
            .env("HOME", d.join("home"))
            .stdin(Stdio::null());
        command.output().unwrap()
    };
    let err = failed(&transfer("sock"), "an offline response into a socket");
    assert!(err.contains("socket"), "{err}");
    assert!(!err.contains("127.0.0.1:9"), "{err}");
    assert_eq!(kind(&d.join("sock")), "socket");
    // Into a pipe, the output is opened and the transfer then fails on the network; the pipe
    // stays a pipe, with nothing written.
    mkfifo(&d.join("response-pipe"));
    let reader = PipeReader::new(&d.join("response-pipe"));
    failed(&transfer("response-pipe"), "an offline transfer to nowhere");
    assert!(reader.bytes().is_empty());

    // `kbs login --token-file PIPE`: a token is a secret, refused before the login is sent.
    let mut command = ServerProcess::command(d, &["--listen", "127.0.0.1:0", "--data-dir", "kbs"]);
    command.env("ADYTON_KBS_ADMIN_PASSWORD", PASSWORD);
    let kbs = ServerProcess::start(command);
    mkfifo(&d.join("token-pipe"));
    let login = |token_file: &str| {
        Command::new(env!("CARGO_BIN_EXE_adyton"))
            .args([
                "kbs",
                "login",
                "--url",
                &kbs.url,
                "--token-file",
                token_file,
            ])
            .current_dir(d)
            .env("ADYTON_KBS_ADMIN_PASSWORD", PASSWORD)
            .env("HOME", d.join("home"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let err = failed(&login("token-pipe"), "a token into a pipe");
    assert!(err.contains("regular file"), "{err}");
    assert_eq!(kind(&d.join("token-pipe")), "fifo");
    if let Some(null) = mknod(d, "null", "c", "1", "3") {
        let err = failed(&login(null.to_str().unwrap()), "a token into a device");
        assert!(err.contains("regular file"), "{err}");
        assert_eq!(kind(&null), "char");
    }
    // A regular file is still where a token goes.
    succeeded(&login("token"), "a token into a file");
    assert_eq!(
        fs::metadata(d.join("token")).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn the_server_certificate_and_inference_outputs_go_into_pipes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(crate::support::python_interpreter())
        .arg(workspace.join("scripts/make_test_models.py"))
        .arg(d.join("models"))
        .output()
        .unwrap();
    succeeded(&out, "make_test_models.py");

    // `server serve --certificate-out PIPE`: written into as the server starts.
    mkfifo(&d.join("cert-pipe"));
    let reader = PipeReader::new(&d.join("cert-pipe"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_adyton"));
    command
        .args(["server", "serve", "--listen", "127.0.0.1:0", "--tee", "sim"])
        .args(["--sim-key", "sim.key", "--certificate-out", "cert-pipe"])
        .args(["--model", "add=models/add.onnx"])
        .current_dir(d);
    let server = ServerProcess::start(command);
    let pem = String::from_utf8(reader.bytes()).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

    let measure = adyton_ok(&["attest", "measure"], d);
    let measurement = String::from_utf8(measure.stdout).unwrap();
    let measurement = measurement.lines().last().unwrap().trim();
    fs::write(
        d.join("policy.toml"),
        format!("[sim]\nmeasurement = [\"{measurement}\"]\n"),
    )
    .unwrap();

    // `attest server --save-cert PIPE --force`.
    mkfifo(&d.join("saved-pipe"));
    let reader = PipeReader::new(&d.join("saved-pipe"));
    adyton_ok(
        &[
            "attest",
            "server",
            &server.url,
            "--policy",
            "policy.toml",
            "--save-cert",
            "saved-pipe",
            "--force",
        ],
        d,
    );
    assert_eq!(String::from_utf8(reader.bytes()).unwrap(), pem);

    // `infer -o PIPE.json --force`, and `-o -` as without `-o`.
    fs::write(d.join("a.json"), "[[1, 2, 3]]").unwrap();
    fs::write(d.join("b.json"), "[[4, 5, 6]]").unwrap();
    let infer = |out: &str| {
        adyton_ok(
            &[
                "infer",
                &server.url,
                "add",
                "--policy",
                "policy.toml",
                "--input",
                "a=a.json",
                "--input",
                "b=b.json",
                "-o",
                out,
                "--force",
            ],
            d,
        )
    };
    mkfifo(&d.join("out.json"));
    let reader = PipeReader::new(&d.join("out.json"));
    infer("out.json");
    let written: serde_json::Value = serde_json::from_slice(&reader.bytes()).unwrap();
    assert_eq!(
        written["outputs"][0]["data"],
        serde_json::json!([5.0, 7.0, 9.0])
    );
    let printed: serde_json::Value = serde_json::from_slice(&infer("-").stdout).unwrap();
    assert_eq!(printed["outputs"][0]["data"], written["outputs"][0]["data"]);
}
