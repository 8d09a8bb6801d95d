//! `deploy/gramine/`: the Gramine manifest of `adyton-server` for SGX, rendered by
//! `deploy/gramine/render` from this build's binary and checked as a verifier of the enclave's
//! identity would want it: every library the binary loads is a trusted file, the command line and
//! the environment are fixed, no debug, no insecure option, attestation by DCAP, the state
//! directory on an encrypted mount keyed to the enclave or its signer. The check is a function of
//! the rendered TOML, so that altered templates show it can fail. With `render --provision`, the
//! two enclaves of offline provisioning are checked the same way, with their own fixed command
//! lines, signer sealing, and the exchange directory as their only unmeasured files.
//!
//! Nothing here runs Gramine or SGX: the manifest is rendered with `gramine-manifest` when it is
//! installed, else with Python's jinja2 (`scripts/setup` installs it into `.venv`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use adyton_server::config::{ConfigSource, ServerConfig, ServerFlags};
use toml::{Table, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_adyton-server");
/// Where `state_dir` points inside the enclave.
const STATE_DIR: &str = "/var/lib/adyton";
const CONFIG_IN_ENCLAVE: &str = "/etc/adyton/server.toml";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/gramine")
}

/// The interpreter from `PYTHON` (set by `scripts/test`), else the workspace's virtual
/// environment, which `scripts/setup` gives jinja2. A missing one is a failure, never a skip.
fn python() -> PathBuf {
    std::env::var_os("PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"))
}

/// What makes a manifest unfit for a production enclave.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    /// A key is missing or has the wrong type.
    Malformed(String),
    /// `sgx.debug` is not `false`.
    Debug,
    /// An option named `insecure__*` or `debug__*`, or another that weakens isolation.
    Weakening(String),
    /// `sgx.allowed_files` is present (serve), or is more than the provisioning exchange
    /// directory (provisioning).
    AllowedFiles,
    /// `sgx.remote_attestation` is not `"dcap"`.
    NotDcap,
    /// `libos.entrypoint` is not `adyton-server`, or not a trusted file.
    Entrypoint(String),
    /// The command line is not the fixed `serve` from a measured configuration with `--tee sgx`.
    Argv(String),
    /// An environment variable passes through from the host.
    HostEnvironment(String),
    /// A library the binary loads is not a trusted file where the enclave looks for it.
    UntrustedLibrary(String),
    /// The state directory is not an encrypted mount keyed with an SGX sealing key.
    StateMount(String),
}

/// Which enclave a manifest is for: the server, or a step of offline provisioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode<'a> {
    Serve,
    /// `provision-request` for this model id.
    ProvisionRequest(&'a str),
    ProvisionAccept,
}

/// Where the provisioning enclaves exchange files with the host, inside and outside.
const EXCHANGE_IN_ENCLAVE: &str = "/provision";
const EXCHANGE_ON_HOST: &str = "file:provision";

/// The exact command line of a provisioning enclave: its state directory, `--tee sgx`, and the
/// `signer` sealing that lets the next enclave (another MRENCLAVE, the same signer) unseal.
fn provisioning_argv(mode: Mode<'_>) -> Vec<String> {
    let argv: Vec<&str> = match mode {
        Mode::ProvisionRequest(model) => vec![
            "adyton-server",
            "provision-request",
            "--tee",
            "sgx",
            "--state-dir",
            STATE_DIR,
            "--model",
            model,
            "--blob",
            "/provision/model.enc",
            "--sealing",
            "signer",
            "--output",
            "/provision/request.json",
            "--force",
        ],
        Mode::ProvisionAccept => vec![
            "adyton-server",
            "provision-accept",
            "/provision/response.json",
            "--tee",
            "sgx",
            "--state-dir",
            STATE_DIR,
        ],
        Mode::Serve => Vec::new(),
    };
    argv.into_iter().map(str::to_owned).collect()
}

fn get<'a>(table: &'a Table, dotted: &str) -> Option<&'a Value> {
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Every key, by its dotted path, whose name says it is insecure or for debugging only.
fn weakening_keys(prefix: &str, value: &Value, found: &mut Vec<String>) {
    let Value::Table(table) = value else { return };
    for (key, inner) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if key.starts_with("insecure__") || key.starts_with("debug__") {
            found.push(path.clone());
        }
        weakening_keys(&path, inner, found);
    }
}

/// The host URI a chroot mount gives an enclave path, by the longest mount path that holds it.
fn host_uri(manifest: &Table, enclave_path: &str) -> Option<String> {
    let mounts = get(manifest, "fs.mounts")?.as_array()?;
    mounts
        .iter()
        .filter_map(Value::as_table)
        .filter(|m| m.get("type").and_then(Value::as_str).unwrap_or("chroot") == "chroot")
        .filter_map(|m| {
            let path = m.get("path")?.as_str()?.trim_end_matches('/');
            let uri = m.get("uri")?.as_str()?.trim_end_matches('/');
            // The mount holds the path itself or what is below it, not a sibling that only
            // shares the prefix ("/lib" does not hold "/lib64").
            let rest = enclave_path.strip_prefix(path)?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            Some((path.len(), format!("{uri}{rest}")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, uri)| uri)
}

/// The trusted files' URIs, or the problem with an entry (a string, or `{ uri, sha256 }` with a
/// SHA-256 in hex, as Gramine 1.x takes them).
fn trusted_uris(manifest: &Table) -> Result<Vec<String>, Problem> {
    let entries = get(manifest, "sgx.trusted_files")
        .and_then(Value::as_array)
        .ok_or_else(|| Problem::Malformed("sgx.trusted_files".into()))?;
    entries
        .iter()
        .map(|entry| match entry {
            Value::String(uri) => Ok(uri.clone()),
            Value::Table(t) => {
                let uri = t.get("uri").and_then(Value::as_str);
                let sha256 = t.get("sha256").and_then(Value::as_str);
                let hash_ok = sha256
                    .is_none_or(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                match uri {
                    Some(uri) if hash_ok && t.len() <= 2 => Ok(uri.to_owned()),
                    _ => Err(Problem::Malformed(format!("sgx.trusted_files entry {t}"))),
                }
            }
            other => Err(Problem::Malformed(format!(
                "sgx.trusted_files entry {other}"
            ))),
        })
        .collect()
}

/// Checks a rendered server manifest against the libraries `ldd` lists for the binary. Returns
/// every problem found, empty for a fit manifest.
fn check_manifest(manifest: &Table, libraries: &[String]) -> Vec<Problem> {
    check_manifest_as(manifest, libraries, Mode::Serve)
}

/// Checks a rendered manifest of the enclave `mode`.
fn check_manifest_as(manifest: &Table, libraries: &[String], mode: Mode<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();

    if get(manifest, "sgx.debug").and_then(Value::as_bool) != Some(false) {
        problems.push(Problem::Debug);
    }
    if get(manifest, "sgx.remote_attestation").and_then(Value::as_str) != Some("dcap") {
        problems.push(Problem::NotDcap);
    }
    let allowed = get(manifest, "sgx.allowed_files");
    match mode {
        Mode::Serve if allowed.is_some() => problems.push(Problem::AllowedFiles),
        Mode::Serve => {}
        // Provisioning passes through its exchange directory, mounted from the host's
        // provision/, and nothing else.
        _ => {
            let exact = allowed.and_then(Value::as_array).is_some_and(|a| {
                a.len() == 1 && a[0].as_str() == Some(&format!("{EXCHANGE_ON_HOST}/"))
            });
            if !exact
                || host_uri(manifest, EXCHANGE_IN_ENCLAVE).as_deref() != Some(EXCHANGE_ON_HOST)
            {
                problems.push(Problem::AllowedFiles);
            }
        }
    }
    let mut weakening = Vec::new();
    weakening_keys("", &Value::Table(manifest.clone()), &mut weakening);
    // Options without the prefix that still weaken isolation or leak: a file check policy that
    // lets unlisted files in, statistics and profiling (refused by Gramine on production
    // enclaves, so a sign that the manifest was meant for debugging), verbose logs, IOCTLs passed
    // to the host, memory shared with the host.
    let policy = get(manifest, "sgx.file_check_policy").and_then(Value::as_str);
    if policy.is_some_and(|p| p != "strict") {
        weakening.push("sgx.file_check_policy".into());
    }
    for key in ["sgx.enable_stats", "sgx.vtune_profile"] {
        if get(manifest, key).and_then(Value::as_bool) != Some(false)
            && get(manifest, key).is_some()
        {
            weakening.push(key.into());
        }
    }
    if get(manifest, "sgx.profile").is_some() {
        weakening.push("sgx.profile".into());
    }
    if get(manifest, "sys.allowed_ioctls").is_some() {
        weakening.push("sys.allowed_ioctls".into());
    }
    let log_level = get(manifest, "loader.log_level").and_then(Value::as_str);
    if log_level.is_some_and(|l| l != "error" && l != "none") {
        weakening.push("loader.log_level".into());
    }
    let mounts = get(manifest, "fs.mounts").and_then(Value::as_array);
    for mount in mounts.into_iter().flatten() {
        if mount.get("type").and_then(Value::as_str) == Some("untrusted_shm") {
            weakening.push("fs.mounts untrusted_shm".into());
        }
    }
    problems.extend(weakening.into_iter().map(Problem::Weakening));

    let trusted = match trusted_uris(manifest) {
        Ok(uris) => uris,
        Err(problem) => {
            problems.push(problem);
            Vec::new()
        }
    };
    let is_trusted = |enclave_path: &str| {
        host_uri(manifest, enclave_path).is_some_and(|uri| trusted.contains(&uri))
    };

    match get(manifest, "libos.entrypoint").and_then(Value::as_str) {
        Some(path) if path.rsplit('/').next() == Some("adyton-server") && is_trusted(path) => {}
        other => problems.push(Problem::Entrypoint(format!("{other:?}"))),
    }

    let argv: Option<Vec<&str>> = get(manifest, "loader.argv")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_str).collect());
    let argv_src = get(manifest, "loader.argv_src_file");
    match (argv, mode) {
        (Some(argv), Mode::Serve)
            if argv_src.is_none()
                && argv.len() == 6
                && argv[..2] == ["adyton-server", "serve"]
                && argv[2] == "--config"
                && is_trusted(argv[3])
                && argv[4..] == ["--tee", "sgx"] => {}
        (Some(argv), Mode::ProvisionRequest(_) | Mode::ProvisionAccept)
            if argv_src.is_none() && argv == provisioning_argv(mode) => {}
        (other, _) => problems.push(Problem::Argv(format!("{other:?}"))),
    }

    if get(manifest, "loader.env_src_file").is_some() {
        problems.push(Problem::HostEnvironment("loader.env_src_file".into()));
    }
    let env = get(manifest, "loader.env").and_then(Value::as_table);
    for (name, value) in env.into_iter().flatten() {
        let fixed = value.is_str()
            || value
                .as_table()
                .is_some_and(|t| t.len() == 1 && t.get("value").is_some_and(Value::is_str));
        if !fixed || name.starts_with("LD_PRELOAD") {
            problems.push(Problem::HostEnvironment(name.clone()));
        }
    }

    let ld_library_path = env
        .and_then(|e| e.get("LD_LIBRARY_PATH"))
        .and_then(Value::as_str)
        .unwrap_or("");
    for library in libraries {
        let name = library.rsplit('/').next().unwrap_or(library);
        // The dynamic loader looks for a library by name in LD_LIBRARY_PATH; a library loaded
        // by its absolute path (dlopen) is found where it is mounted.
        let found = ld_library_path
            .split(':')
            .filter(|dir| !dir.is_empty())
            .any(|dir| is_trusted(&format!("{dir}/{name}")))
            || is_trusted(library);
        if !found {
            problems.push(Problem::UntrustedLibrary(library.clone()));
        }
    }

    let state_mount = mounts.into_iter().flatten().find(|m| {
        m.get("path")
            .and_then(Value::as_str)
            .is_some_and(|p| p.trim_end_matches('/') == STATE_DIR)
    });
    // The provisioning enclaves and the server are three MRENCLAVEs sharing one directory.
    let keys: &[&str] = match mode {
        Mode::Serve => &["_sgx_mrenclave", "_sgx_mrsigner"],
        _ => &["_sgx_mrsigner"],
    };
    match state_mount {
        Some(m)
            if m.get("type").and_then(Value::as_str) == Some("encrypted")
                && m.get("key_name")
                    .and_then(Value::as_str)
                    .is_some_and(|k| keys.contains(&k)) => {}
        other => problems.push(Problem::StateMount(format!("{other:?}"))),
    }
    problems
}

/// The shared libraries `ldd` lists for `binary`, as absolute paths (the vDSO has no file).
fn ldd(binary: &Path) -> Vec<String> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    assert!(out.status.success(), "ldd {}: {out:?}", binary.display());
    let mut libraries: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => Some((*path).to_owned()),
                [path, ..] if path.starts_with('/') => Some((*path).to_owned()),
                _ => None,
            }
        })
        .collect();
    libraries.sort();
    libraries.dedup();
    assert!(
        !libraries.is_empty(),
        "ldd lists no library for {}",
        binary.display()
    );
    libraries
}

/// Runs `deploy/gramine/render` on this build's binary, with `template` (else the shipped one)
/// and `config` (else the shipped `server.toml`), into `out`. `render` picks `gramine-manifest`
/// where Gramine is installed and jinja2 elsewhere (our machines); the check is the same.
fn render(out: &Path, template: Option<&Path>, config: Option<&Path>, extra: &[&str]) -> Output {
    let deploy = deploy_dir();
    let mut command = Command::new(python());
    command
        .arg(deploy.join("render"))
        .arg("--binary")
        .arg(BINARY)
        .arg("--config")
        .arg(config.map_or_else(|| deploy.join("server.toml"), Path::to_path_buf))
        .arg("--out")
        .arg(out)
        .args(extra);
    if let Some(template) = template {
        command.arg("--template").arg(template);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()))
}

fn rendered(out: &Path) -> Table {
    rendered_named(out, "adyton-server.manifest")
}

fn rendered_named(out: &Path, name: &str) -> Table {
    let text = fs::read_to_string(out.join(name)).unwrap();
    text.parse::<Table>()
        .unwrap_or_else(|e| panic!("the rendered manifest {name} is not TOML: {e}\n{text}"))
}

const REQUEST_MANIFEST: &str = "adyton-server-provision-request.manifest";
const ACCEPT_MANIFEST: &str = "adyton-server-provision-accept.manifest";

/// Renders a copy of the shipped template with `edit` applied and `--provision minilm`, and
/// checks the provision-request and provision-accept manifests.
fn check_altered_provisioning(edit: impl Fn(&str) -> String) -> (Vec<Problem>, Vec<Problem>) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let original =
        fs::read_to_string(deploy_dir().join("adyton-server.manifest.template")).unwrap();
    let altered = edit(&original);
    assert_ne!(altered, original, "the edit changed nothing");
    let template = dir.path().join("altered.manifest.template");
    fs::write(&template, altered).unwrap();
    let out = dir.path().join("out");
    let output = render(&out, Some(&template), None, &["--provision", "minilm"]);
    assert!(output.status.success(), "render: {output:?}");
    let libraries = ldd(Path::new(BINARY));
    (
        check_manifest_as(
            &rendered_named(&out, REQUEST_MANIFEST),
            &libraries,
            Mode::ProvisionRequest("minilm"),
        ),
        check_manifest_as(
            &rendered_named(&out, ACCEPT_MANIFEST),
            &libraries,
            Mode::ProvisionAccept,
        ),
    )
}

/// Renders a copy of the shipped template with `edit` applied, and checks it.
fn check_altered(edit: impl Fn(&str) -> String) -> Vec<Problem> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let original =
        fs::read_to_string(deploy_dir().join("adyton-server.manifest.template")).unwrap();
    let altered = edit(&original);
    assert_ne!(altered, original, "the edit changed nothing");
    let template = dir.path().join("altered.manifest.template");
    fs::write(&template, altered).unwrap();
    let out = dir.path().join("out");
    let output = render(&out, Some(&template), None, &[]);
    assert!(output.status.success(), "render: {output:?}");
    check_manifest(&rendered(&out), &ldd(Path::new(BINARY)))
}

#[test]
fn the_rendered_manifest_measures_every_library_and_fixes_the_command_line() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = dir.path().join("out");
    let output = render(&out, None, None, &[]);
    assert!(output.status.success(), "render: {output:?}");
    let manifest = rendered(&out);
    let libraries = ldd(Path::new(BINARY));
    assert_eq!(check_manifest(&manifest, &libraries), []);

    // What the manifest refers to is in the output directory, byte for byte.
    assert_eq!(
        fs::read(out.join("adyton-server")).unwrap(),
        fs::read(BINARY).unwrap()
    );
    assert_eq!(
        fs::read(out.join("server.toml")).unwrap(),
        fs::read(deploy_dir().join("server.toml")).unwrap()
    );
    assert!(out.join("state").is_dir());
    assert_eq!(
        host_uri(&manifest, CONFIG_IN_ENCLAVE).as_deref(),
        Some("file:server.toml")
    );
    // The default key of the state directory: builds signed by the same key share it.
    let state = get(&manifest, "fs.mounts")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .find(|m| m.get("path").and_then(Value::as_str) == Some(STATE_DIR))
        .unwrap();
    assert_eq!(state["key_name"].as_str(), Some("_sgx_mrsigner"));
    assert_eq!(
        get(&manifest, "sgx.edmm_enable"),
        Some(&Value::Boolean(false))
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .map(|l| l.contains("rendered")),
        Some(true)
    );
}

#[test]
fn the_state_key_and_the_enclave_options_are_chosen_at_render_time() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = dir.path().join("out");
    let options = [
        "--state-key",
        "mrenclave",
        "--edmm",
        "--max-threads",
        "32",
        "--enclave-size",
        "8G",
        "--isvsvn",
        "3",
    ];
    let output = render(&out, None, None, &options);
    assert!(output.status.success(), "render: {output:?}");
    let manifest = rendered(&out);
    assert_eq!(check_manifest(&manifest, &ldd(Path::new(BINARY))), []);
    let mounts = get(&manifest, "fs.mounts")
        .and_then(Value::as_array)
        .unwrap();
    assert!(mounts
        .iter()
        .any(|m| m.get("key_name").and_then(Value::as_str) == Some("_sgx_mrenclave")));
    assert_eq!(
        get(&manifest, "sgx.edmm_enable"),
        Some(&Value::Boolean(true))
    );
    assert_eq!(get(&manifest, "sgx.max_threads"), Some(&Value::Integer(32)));
    assert_eq!(
        get(&manifest, "sgx.enclave_size").and_then(Value::as_str),
        Some("8G")
    );
    assert_eq!(get(&manifest, "sgx.isvsvn"), Some(&Value::Integer(3)));
}

#[test]
fn a_debug_enclave_fails_the_check() {
    let problems = check_altered(|t| t.replace("sgx.debug = false", "sgx.debug = true"));
    assert_eq!(problems, [Problem::Debug]);
    let problems = check_altered(|t| t.replace("sgx.debug = false\n", ""));
    assert_eq!(problems, [Problem::Debug]);
}

#[test]
fn an_insecure_option_fails_the_check() {
    let problems = check_altered(|t| {
        t.replace(
            "sys.stack.size = \"8M\"",
            "sys.stack.size = \"8M\"\nsys.insecure__allow_eventfd = true",
        )
    });
    assert_eq!(
        problems,
        [Problem::Weakening("sys.insecure__allow_eventfd".into())]
    );
    // The command line from the host: both the insecure option and the argv are reported.
    let problems = check_altered(|t| {
        t.replace(
            "loader.argv = [\"adyton-server\", \"serve\", \"--config\", \"/etc/adyton/server.toml\", \"--tee\", \"sgx\"]",
            "loader.insecure__use_cmdline_argv = true",
        )
    });
    assert!(problems.contains(&Problem::Weakening(
        "loader.insecure__use_cmdline_argv".into()
    )));
    assert!(problems.iter().any(|p| matches!(p, Problem::Argv(_))));
    let problems = check_altered(|t| {
        t.replace(
            "sgx.debug = false",
            "sgx.debug = false\nsgx.allowed_files = [\"file:state/\"]",
        )
    });
    assert_eq!(problems, [Problem::AllowedFiles]);
    let problems = check_altered(|t| {
        t.replace(
            "loader.env.ADYTON_LOG = \"info\"",
            "loader.env.ADYTON_LOG = { passthrough = true }",
        )
    });
    assert_eq!(problems, [Problem::HostEnvironment("ADYTON_LOG".into())]);
    let problems = check_altered(|t| t.replace("\"dcap\"", "\"epid\""));
    assert_eq!(problems, [Problem::NotDcap]);
}

#[test]
fn a_library_left_out_of_the_trusted_files_fails_the_check() {
    let libraries = ldd(Path::new(BINARY));
    let problems = check_altered(|t| {
        t.replace(
            "{%- for library in libraries %}",
            "{%- for library in libraries[1:] %}",
        )
    });
    assert_eq!(problems, [Problem::UntrustedLibrary(libraries[0].clone())]);
    // Trusted, but where the enclave does not look for it: the runtime directory's mount moved.
    let problems =
        check_altered(|t| t.replace("{ path = \"/lib\", uri", "{ path = \"/gramine-lib\", uri"));
    assert!(!problems.is_empty());
    assert!(problems
        .iter()
        .all(|p| matches!(p, Problem::UntrustedLibrary(_))));
}

#[test]
fn the_state_directory_must_be_encrypted_with_a_sealing_key() {
    let problems =
        check_altered(|t| t.replace("{ type = \"encrypted\", path", "{ type = \"chroot\", path"));
    assert!(
        matches!(problems.as_slice(), [Problem::StateMount(_)]),
        "{problems:?}"
    );
    let problems =
        check_altered(|t| t.replace("key_name = \"{{ state_key }}\"", "key_name = \"default\""));
    assert!(
        matches!(problems.as_slice(), [Problem::StateMount(_)]),
        "{problems:?}"
    );
}

#[test]
fn an_entrypoint_other_than_the_server_fails_the_check() {
    let problems = check_altered(|t| {
        t.replace(
            "libos.entrypoint = \"/adyton-server\"",
            "libos.entrypoint = \"/bin/sh\"",
        )
    });
    assert!(
        matches!(problems.as_slice(), [Problem::Entrypoint(_)]),
        "{problems:?}"
    );
}

#[test]
fn render_refuses_configurations_that_cannot_be_safe_in_the_enclave() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cases = [
        ("token_file = \"token\"\n", "token_file"),
        ("certificate_out = \"server.pem\"\n", "certificate_out"),
        ("tee = \"sim\"\n", "tee"),
        ("state_dir = \"/srv/adyton\"\n", "state_dir"),
        (
            "[[model]]\nname = \"add\"\npath = \"models/add.onnx\"\n",
            "absolute path",
        ),
    ];
    for (text, expected) in cases {
        let config = dir.path().join("server.toml");
        fs::write(&config, format!("listen = \"0.0.0.0:8443\"\n{text}")).unwrap();
        let out = dir.path().join("out");
        let output = render(&out, None, Some(&config), &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{text}: {stderr}");
        assert!(stderr.contains(expected), "{text}: {stderr}");
        assert!(!stderr.contains("Traceback"), "{stderr}");
        assert!(!out.join("adyton-server.manifest").exists());
    }
    // SGX enclaves are a power of two in size.
    let out = dir.path().join("out");
    let output = render(&out, None, None, &["--enclave-size", "3G"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("power of two"), "{stderr}");
}

#[test]
fn the_shipped_configuration_is_a_valid_sgx_server_configuration() {
    let path = deploy_dir().join("server.toml");
    let text = fs::read_to_string(&path).unwrap();
    let config = ServerConfig::resolve(
        Some(ConfigSource {
            path: Path::new(CONFIG_IN_ENCLAVE),
            text: &text,
        }),
        &ServerFlags::default(),
    )
    .unwrap();
    assert_eq!(config.state_dir.as_deref(), Some(Path::new(STATE_DIR)));
    assert_eq!(
        config.tee,
        adyton_attest::attester::TeeChoice::Kind(adyton_attest::TeeKind::Sgx)
    );
    assert!(config.token_file.is_none() && config.certificate_out.is_none());
}

#[test]
fn the_onnxruntime_library_and_its_dependencies_are_measured_when_configured() {
    let library = adyton_server::runtime::onnxruntime::find_library().unwrap_or_else(|| {
        panic!(
            "the onnxruntime shared library was not found: run scripts/setup, which installs the \
             onnxruntime package into .venv"
        )
    });
    let library = fs::canonicalize(library).unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = dir.path().join("server.toml");
    fs::write(
        &config,
        format!(
            "listen = \"0.0.0.0:8443\"\nengine = \"onnxruntime\"\nonnxruntime_library = {:?}\n",
            library.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let output = render(&out, None, Some(&config), &[]);
    assert!(output.status.success(), "render: {output:?}");
    let manifest = rendered(&out);

    let mut libraries = ldd(Path::new(BINARY));
    libraries.extend(ldd(&library));
    libraries.push(library.to_str().unwrap().to_owned());
    assert_eq!(check_manifest(&manifest, &libraries), []);
    // Without them the check fails: the shipped configuration's manifest measures neither
    // onnxruntime nor what only onnxruntime loads.
    let plain = dir.path().join("plain");
    assert!(render(&plain, None, None, &[]).status.success());
    let problems = check_manifest(&rendered(&plain), &libraries);
    assert!(problems.contains(&Problem::UntrustedLibrary(
        library.to_str().unwrap().to_owned()
    )));
}

#[test]
fn provisioning_renders_two_more_enclaves_that_share_the_servers_signer_state() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = dir.path().join("out");
    let output = render(
        &out,
        None,
        None,
        &["--provision", "minilm", "--isvprodid", "7"],
    );
    assert!(output.status.success(), "render: {output:?}");
    let libraries = ldd(Path::new(BINARY));
    let serve = rendered(&out);
    let request = rendered_named(&out, REQUEST_MANIFEST);
    let accept = rendered_named(&out, ACCEPT_MANIFEST);
    assert_eq!(check_manifest(&serve, &libraries), []);
    assert_eq!(
        check_manifest_as(&request, &libraries, Mode::ProvisionRequest("minilm")),
        []
    );
    assert_eq!(
        check_manifest_as(&accept, &libraries, Mode::ProvisionAccept),
        []
    );
    assert!(out.join("provision").is_dir());
    // What makes one enclave's sealing open in the next: the same signer (signed together), the
    // same product id and SVN, the same state directory key, the same binary.
    for key in [
        "sgx.isvprodid",
        "sgx.isvsvn",
        "libos.entrypoint",
        "sgx.enclave_size",
    ] {
        assert_eq!(get(&request, key), get(&serve, key), "{key}");
        assert_eq!(get(&accept, key), get(&serve, key), "{key}");
    }
    assert_eq!(get(&request, "sgx.isvprodid"), Some(&Value::Integer(7)));
    for manifest in [&serve, &request, &accept] {
        assert_eq!(
            host_uri(manifest, "/adyton-server").as_deref(),
            Some("file:adyton-server")
        );
        let state = get(manifest, "fs.mounts")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .find(|m| m.get("path").and_then(Value::as_str) == Some(STATE_DIR))
            .unwrap();
        assert_eq!(state["key_name"].as_str(), Some("_sgx_mrsigner"));
    }
    // The provisioning enclaves measure no configuration: they read none.
    assert_eq!(host_uri(&request, CONFIG_IN_ENCLAVE), None);
    // Without --provision, no provisioning manifest and no exchange directory.
    let plain = dir.path().join("plain");
    assert!(render(&plain, None, None, &[]).status.success());
    assert!(!plain.join(REQUEST_MANIFEST).exists() && !plain.join("provision").exists());
}

#[test]
fn the_provisioning_command_lines_fail_the_check_when_altered() {
    // Sealing to this exact enclave would leave the key unopenable by the accept enclave.
    let (request, accept) = check_altered_provisioning(|t| {
        t.replace(
            "\"--sealing\", \"signer\"",
            "\"--sealing\", \"exact-build\"",
        )
    });
    assert!(
        matches!(request.as_slice(), [Problem::Argv(_)]),
        "{request:?}"
    );
    assert_eq!(accept, []);
    let (request, accept) = check_altered_provisioning(|t| {
        t.replace(
            "\"provision-accept\", \"/provision/response.json\"",
            "\"provision-accept\", \"/provision/other.json\"",
        )
    });
    assert_eq!(request, []);
    assert!(
        matches!(accept.as_slice(), [Problem::Argv(_)]),
        "{accept:?}"
    );
}

#[test]
fn provisioning_passes_through_its_exchange_directory_and_nothing_else() {
    let (request, accept) = check_altered_provisioning(|t| {
        t.replace(
            "sgx.allowed_files = [\"file:provision/\"]",
            "sgx.allowed_files = [\"file:provision/\", \"file:state/\"]",
        )
    });
    assert_eq!(request, [Problem::AllowedFiles]);
    assert_eq!(accept, [Problem::AllowedFiles]);
    let (request, _) = check_altered_provisioning(|t| {
        t.replace(
            "{ path = \"/provision\", uri = \"file:provision\" }",
            "{ path = \"/provision\", uri = \"file:/\" }",
        )
    });
    assert_eq!(request, [Problem::AllowedFiles]);
    // A provisioning enclave keyed to its own MRENCLAVE cannot share the state directory.
    let (request, accept) = check_altered_provisioning(|t| {
        t.replace(
            "key_name = \"{{ state_key }}\"",
            "key_name = \"_sgx_mrenclave\"",
        )
    });
    assert!(
        matches!(request.as_slice(), [Problem::StateMount(_)]),
        "{request:?}"
    );
    assert!(
        matches!(accept.as_slice(), [Problem::StateMount(_)]),
        "{accept:?}"
    );
}

#[test]
fn render_refuses_provisioning_that_cannot_unseal_or_a_bad_model_id() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["--provision", "minilm", "--state-key", "mrenclave"],
            "needs --state-key mrsigner",
        ),
        (&["--provision", "../etc"], "a model id is"),
        (&["--provision", "a\"b"], "a model id is"),
    ];
    for (args, expected) in cases {
        let out = dir.path().join("out");
        let output = render(&out, None, None, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!out.join(REQUEST_MANIFEST).exists());
    }
}
