//! `adyton dev --state-dir DIR`: the demo's stack left running for development. State lives in
//! DIR (key broker, registry, SIM key, tokens, policy, certificate, logs); `DIR/dev.env` gives a
//! shell the URLs, the admin token, the client policy and the pinned certificate.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use adyton_client::RegistryClient;
use anyhow::{Context, Result};

use adyton_cli::net::shutdown_signal;
use clap::Args;

use super::stack::{write_private, Layout, Progress, Stack, TestSet, MODEL_NAME};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the stack keeps its state (key broker, registry, SIM key, tokens, policy,
    /// certificate, logs) and writes dev.env. Created with mode 0700; kept across runs.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
}

/// The file in the state directory that names the model the last run published.
const PUBLISHED_FILE: &str = "published-model";

/// `adyton dev`.
pub fn run(args: &DevArgs) -> Result<()> {
    let layout = Layout::new(&args.state_dir)?;
    let previous = std::fs::read_to_string(layout.dir.join(PUBLISHED_FILE)).ok();
    println!(
        "Adyton dev stack (SIM TEE: INSECURE, for development only); state in {}\n",
        layout.dir.display()
    );
    let mut progress = Progress::new(4);
    let mut stack = Stack::start(layout, &mut progress)?;
    forget_previous_model(&stack, previous.as_deref());
    std::fs::write(
        stack.layout.dir.join(PUBLISHED_FILE),
        format!("{}\n", stack.published.id),
    )
    .context("cannot record the published model")?;
    let env_file = write_env_file(&stack)?;
    print!("{}", instructions(&stack, &env_file)?);
    wait_for_shutdown(&mut stack)
}

/// Each run publishes the model afresh under a policy for the running build (a rebuilt binary
/// has another measurement); the copy an earlier run published is removed from the registry.
fn forget_previous_model(stack: &Stack, previous: Option<&str>) {
    let Some(previous) = previous.map(str::trim).filter(|id| !id.is_empty()) else {
        return;
    };
    if previous == stack.published.id {
        return;
    }
    if let Ok(registry) = RegistryClient::new(&stack.registry.url) {
        let token = adyton_client::Token::new(stack.layout.admin_token.as_str());
        let _ = registry.delete(&token, previous);
    }
}

/// Quotes a value for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn write_env_file(stack: &Stack) -> Result<std::path::PathBuf> {
    let layout = &stack.layout;
    let path = layout.dir.join("dev.env");
    let vars = [
        ("ADYTON_KBS_URL", stack.kbs.url.clone()),
        ("ADYTON_REGISTRY_URL", stack.registry.url.clone()),
        ("ADYTON_SERVER_URL", stack.server.url.clone()),
        ("ADYTON_ADMIN_TOKEN", layout.admin_token.to_string()),
        ("ADYTON_POLICY", layout.policy_file.display().to_string()),
        (
            "ADYTON_SERVER_CERT",
            layout.certificate.display().to_string(),
        ),
    ];
    let mut text = String::from("# Written by `adyton dev`: source it in a shell.\n");
    for (name, value) in vars {
        let _ = writeln!(text, "export {name}={}", shell_quote(&value));
    }
    // It holds the admin token.
    write_private(&path, text.as_bytes())?;
    Ok(path)
}

/// What to print once the stack runs: where everything is, and commands to paste.
fn instructions(stack: &Stack, env_file: &Path) -> Result<String> {
    let layout = &stack.layout;
    let url = &stack.server.url;
    let cert = shell_quote(&layout.certificate.display().to_string());
    let test = TestSet::embedded()?;
    let digit: Vec<String> = test.pixels[0].iter().map(u8::to_string).collect();
    let digit = digit.join(",");
    let infer_body = format!(
        r#"{{"inputs":[{{"name":"pixels","shape":[1,64],"datatype":"FP32","data":[{digit}]}}]}}"#
    );
    let host = stack.server.address();
    let python = format!(
        "import numpy as np, tritonclient.http as h; \
         c = h.InferenceServerClient({host:?}, ssl=True, ssl_options={{\"ca_certs\": {:?}}}); \
         x = h.InferInput(\"pixels\", [1, 64], \"FP32\"); \
         x.set_data_from_numpy(np.array([[{digit}]], dtype=np.float32)); \
         r = c.infer({MODEL_NAME:?}, [x]); \
         print(\"label\", r.as_numpy(\"label\")[0], \"probability\", r.as_numpy(\"probabilities\").max())",
        layout.certificate.display().to_string()
    );
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(out, "key broker       {}", stack.kbs.url);
    let _ = writeln!(out, "registry         {}", stack.registry.url);
    let _ = writeln!(
        out,
        "inference server {url}  (model `{MODEL_NAME}`, registry id {})",
        stack.published.id
    );
    let _ = writeln!(
        out,
        "admin token      {}  (registry writes; server upload, pull and delete; also in {})",
        layout.admin_token.as_str(),
        layout.admin_token_file.display()
    );
    let _ = writeln!(
        out,
        "KBS admin        user admin, password in {}",
        layout.kbs_password_file.display()
    );
    let _ = writeln!(
        out,
        "client policy    {}  (SIM measurement of adyton-server and this stack's SIM key)",
        layout.policy_file.display()
    );
    let _ = writeln!(
        out,
        "certificate      {}  (verified against the policy; pin it)",
        layout.certificate.display()
    );
    let _ = writeln!(
        out,
        "logs             {}/{{kbs,registry,server}}.log",
        layout.dir.display()
    );
    let _ = writeln!(out, "environment      source {}", env_file.display());
    let _ = writeln!(
        out,
        "\nCommands to paste (the first digit of the held-out set is a {}):\n",
        test.labels[0]
    );
    let _ = writeln!(out, "  curl -sS --cacert {cert} {url}/v2/health/ready");
    let _ = writeln!(
        out,
        "  curl -sS --cacert {cert} {url}/v2/models/{MODEL_NAME}"
    );
    let _ = writeln!(
        out,
        "  curl -sS --cacert {cert} -d {} {url}/v2/models/{MODEL_NAME}/infer",
        shell_quote(&infer_body)
    );
    let _ = writeln!(
        out,
        "  curl -sS --cacert {cert} -H \"Authorization: Bearer $(cat {})\" --data-binary @{} {url}/adyton/v1/models/mine",
        shell_quote(&layout.admin_token_file.display().to_string()),
        shell_quote(&layout.model_file.display().to_string())
    );
    let _ = writeln!(out, "  python3 -c {}", shell_quote(&python));
    let _ = writeln!(
        out,
        "  bash -c 'source \"{}\" && curl -sS --cacert \"$ADYTON_SERVER_CERT\" \"$ADYTON_SERVER_URL/v2/models\"'",
        env_file.display()
    );
    let _ = writeln!(
        out,
        "\n(python3 needs numpy and tritonclient[http]; scripts/setup puts them in .venv.)\n\
         Running until Ctrl-C."
    );
    Ok(out)
}

/// Waits for SIGINT or SIGTERM, or for a service to stop; the services stop with the stack.
fn wait_for_shutdown(stack: &mut Stack) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stopped = runtime.block_on(async {
        let watch = async {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                for (name, service) in [
                    ("key broker", &mut stack.kbs),
                    ("registry", &mut stack.registry),
                    ("inference server", &mut stack.server),
                ] {
                    if !service.is_running() {
                        return Some((name, service.log.clone()));
                    }
                }
            }
        };
        tokio::select! {
            () = shutdown_signal() => None,
            stopped = watch => stopped,
        }
    });
    if let Some((name, log)) = stopped {
        anyhow::bail!("the {name} stopped; see {}", log.display());
    }
    println!(
        "stopped the key broker, the registry and the server; state kept in {}",
        stack.layout.dir.display()
    );
    Ok(())
}
