//! `adyton demo`: the whole protected-model pipeline on one machine, in a temporary directory,
//! with the SIM TEE and embedded storage. It starts the key broker, the registry and the inference
//! server, publishes the digits classifier encrypted under a policy that pins this build, lets
//! the server pull it through attested key release, classifies the held-out digits over attested
//! TLS, shows two refusals, and provisions an offline device by file (flow D) that then serves the
//! model with no network. It fails unless every result is the expected one.

pub mod dev;
mod stack;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use adyton_attest::attester::sim::SimAttester;

use adyton_attest::Policy;
use adyton_client::{ClientError, ConnectOptions, InferTensor, ServerClient};
use anyhow::{bail, Context, Result};

use stack::{
    attested_get, counter, seconds, sim_policy_toml, start_server, wait_for_model, Layout,
    Progress, Stack, TestSet, MODEL_NAME,
};

/// Digits per infer request.
const BATCH: usize = 120;

/// `adyton demo`.
pub fn run() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("adyton-demo-")
        .tempdir()
        .context("cannot make a temporary directory")?;
    println!(
        "Adyton demo: a model owner publishes an encrypted model; an inference server in a TEE\n\
         pulls it through attested key release; a client verifies the server before sending data.\n\
         TEE: SIM (INSECURE: a software attester, for machines without TEE hardware). State: {}\n",
        dir.path().display()
    );
    let mut progress = Progress::new(7);
    let stack = Stack::start(Layout::new(dir.path())?, &mut progress)?;
    let first = classify_held_out_digits(&stack, &mut progress)?;
    show_refusals(&stack, &mut progress)?;
    offline_device(&stack, &mut progress)?;
    let total = progress.elapsed();
    drop(stack);
    println!(
        "\ndemo complete in {}: every check passed. First inference: {} (answered {} after the start).",
        seconds(total),
        seconds(first.latency),
        seconds(first.at)
    );
    Ok(())
}

/// When the first inference was answered, and how long it took.
struct FirstInference {
    latency: Duration,
    at: Duration,
}

/// Step 5: the client verifies the server, then sends the held-out digits.
fn classify_held_out_digits(stack: &Stack, progress: &mut Progress) -> Result<FirstInference> {
    let test = TestSet::embedded()?;
    let started = Instant::now();
    let client = ServerClient::connect(
        &stack.server.url,
        stack.policy.clone(),
        ConnectOptions::default(),
    )
    .context("the client refused the server")?;
    let handshake = started.elapsed();
    let claims = &client.verified().claims;

    let mut predictions = Vec::with_capacity(test.count);
    let mut first = None;
    let mut sample = None;
    let inference_started = Instant::now();
    // The first request holds one digit, so that its time is the latency of one inference.
    let batches = std::iter::once(0..1).chain(
        (1..test.count)
            .step_by(BATCH)
            .map(|start| start..(start + BATCH).min(test.count)),
    );
    for range in batches {
        let rows = &test.pixels[range.clone()];
        let mut data = Vec::with_capacity(rows.len() * 64 * 4);
        for pixel in rows.iter().flatten() {
            data.extend_from_slice(&f32::from(*pixel).to_le_bytes());
        }
        let input = InferTensor::new("pixels", "FP32", vec![rows.len(), 64], data);
        let sent = Instant::now();
        let outputs = client
            .infer(MODEL_NAME, &[input])
            .with_context(|| format!("inference on digits {range:?}"))?;
        if first.is_none() {
            first = Some(FirstInference {
                latency: sent.elapsed(),
                at: progress.elapsed(),
            });
        }
        let labels = labels_of(&outputs, rows.len())?;
        if sample.is_none() {
            sample = Some((labels[0], top_probability(&outputs)?));
        }
        predictions.extend(labels);
    }
    let inference_time = inference_started.elapsed();
    let first = first.context("no inference ran")?;

    let correct = predictions
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| p == l)
        .count();
    let differing = predictions
        .iter()
        .zip(&test.sklearn_predictions)
        .filter(|(p, s)| p != s)
        .count();
    let accuracy = correct as f64 / test.count as f64;
    let (label, probability) = sample.context("no answer")?;
    let mut details = vec![
        format!(
            "the client verified the server before sending anything ({}): TEE {}{}, \
             measurement {}",
            seconds(handshake),
            claims.tee,
            if claims.insecure { " (INSECURE)" } else { "" },
            claims.primary_measurement()
        ),
        format!(
            "certificate SHA-256 {}; fresh evidence over the client's nonce {}",
            hex::encode(client.verified().certificate_sha256),
            if client.fresh_claims().is_some() {
                "verified too"
            } else {
                "not asked for"
            }
        ),
        format!(
            "first digit (true label {}), predicted {label} with probability {probability:.3}:",
            test.labels[0]
        ),
    ];
    details.extend(render_digit(&test.pixels[0]));
    details.push(format!(
        "{} digits in {} requests ({}); first inference {}",
        test.count,
        1 + (test.count - 1).div_ceil(BATCH),
        seconds(inference_time),
        seconds(first.latency)
    ));
    details.push(format!(
        "accuracy {:.2} % ({correct}/{}); scikit-learn measured {:.2} % ({}/{}) on the same \
         digits; predictions that differ from scikit-learn's: {differing}",
        accuracy * 100.0,
        test.count,
        test.sklearn_accuracy * 100.0,
        test.sklearn_correct,
        test.count
    ));
    if correct != test.sklearn_correct || differing != 0 {
        bail!(
            "the server's answers differ from scikit-learn's: {correct} correct against {}, \
             {differing} predictions differ",
            test.sklearn_correct
        );
    }
    progress.step(
        &format!(
            "attested inference on {} held-out digits: accuracy {:.2} %, as scikit-learn measured",
            test.count,
            accuracy * 100.0
        ),
        &details,
    );
    Ok(first)
}

/// The `label` output, as class numbers.
fn labels_of(outputs: &[InferTensor], count: usize) -> Result<Vec<i64>> {
    let label = outputs
        .iter()
        .find(|t| t.name == "label")
        .context("the server's answer has no `label` output")?;
    if label.datatype != "INT64" || label.data.len() != count * 8 {
        bail!(
            "`label` is {} {:?}, not INT64 [{count}]",
            label.datatype,
            label.shape
        );
    }
    Ok(label
        .data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect())
}

/// The highest class probability of the first row of `probabilities`.
fn top_probability(outputs: &[InferTensor]) -> Result<f32> {
    let probabilities = outputs
        .iter()
        .find(|t| t.name == "probabilities" && t.datatype == "FP32")
        .context("the server's answer has no FP32 `probabilities` output")?;
    probabilities
        .data
        .chunks_exact(4)
        .take(10)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .reduce(f32::max)
        .context("`probabilities` is empty")
}

/// An 8x8 digit (pixels 0..16) as text.
fn render_digit(pixels: &[u8]) -> Vec<String> {
    const SHADES: &[u8] = b" .:-=+*#%@";
    pixels
        .chunks(8)
        .map(|row| {
            let line: String = row
                .iter()
                .map(|&p| {
                    let shade = SHADES[usize::from(p.min(16)) * (SHADES.len() - 1) / 16];
                    format!("{0}{0}", char::from(shade))
                })
                .collect();
            format!("    |{line}|")
        })
        .collect()
}

/// Step 6: a client whose policy names another build, and a server of another build.
fn show_refusals(stack: &Stack, progress: &mut Progress) -> Result<()> {
    let layout = &stack.layout;
    let mut details = Vec::new();

    // (a) The client's policy expects another measurement: nothing is sent.
    let inferences = || -> Result<f64> {
        let metrics = attested_get(stack.server.address(), &stack.policy, "/metrics")?;
        if metrics.status != 200 {
            bail!("GET /metrics answered {}", metrics.status);
        }
        Ok(counter(&metrics.body, "nv_inference_count", MODEL_NAME))
    };
    let before = inferences()?;
    let other_measurement = [0xab; 48];
    let other_policy = Policy::from_toml(&sim_policy_toml(&[other_measurement], None))?;
    match ServerClient::connect(&stack.server.url, other_policy, ConnectOptions::default()) {
        Err(ClientError::Policy { reason }) => details.push(format!(
            "(a) a client whose policy expects measurement {}... refused the server before \
             sending data: {reason}",
            &hex::encode(other_measurement)[..16]
        )),
        Err(other) => bail!("the client refused the server for another reason: {other}"),
        Ok(_) => bail!("a client whose policy names another build accepted the server"),
    }
    let after = inferences()?;
    if before != after {
        bail!("the server counted inferences ({before} then {after}) from a refused client");
    }
    details.push(format!(
        "    the server's nv_inference_count for `{MODEL_NAME}`: {before} before, {after} after"
    ));

    // (b) Another build of the server asks for the model key: the key broker refuses it.
    let other_dir = layout.dir.join("other-build");
    std::fs::create_dir_all(&other_dir)
        .with_context(|| format!("cannot create {}", other_dir.display()))?;
    let other_exe = other_dir.join("adyton-server");
    another_build(&layout.server_exe, &other_exe)?;
    let other_build = adyton_attest::sim::measure_file(&other_exe)?;
    let server = start_server(
        layout,
        &other_exe,
        &stack.registry.url,
        &stack.published.id,
        &other_dir.join("server.pem"),
        "other-server.log",
    )?;
    // The demo's client accepts this server (its own policy names the other build) only to
    // read why the model did not load.
    let watcher = Policy::from_toml(&sim_policy_toml(&[other_build], None))?;
    let reason = match wait_for_model(&server, &watcher, MODEL_NAME)? {
        Err(reason) => reason,
        Ok(_) => bail!("a server of another build was given the model key"),
    };
    if !reason.contains("refused") {
        bail!("the other build's pull failed for another reason: {reason}");
    }
    server.stop();
    let audit = std::fs::read_to_string(layout.kbs_dir.join("audit.jsonl"))
        .context("cannot read the key broker's audit log")?;
    let transfers = |allowed: bool| {
        audit
            .lines()
            .filter(|l| l.contains("\"tee\"") && l.contains(&format!("\"allowed\":{allowed}")))
            .count()
    };
    details.push(format!(
        "(b) another build of the server (adyton-server with bytes appended, so SIM \
         measurement {}...) pulled the same model: the key broker refused it the key",
        &hex::encode(other_build)[..16]
    ));
    details.push(format!("    the server's reason: {reason}"));
    details.push(format!(
        "    the key broker's audit log: {} key transfer allowed, {} denied",
        transfers(true),
        transfers(false)
    ));
    progress.step(
        "refusals: another build is refused by the client and by the key broker",
        &details,
    );
    Ok(())
}

/// Step 7: flow D. A device with no network is provisioned once by file through the key broker's
/// audited offline transfer, restarts with no network and serves the model; a copy of its disk on
/// another device does not unseal.
fn offline_device(stack: &Stack, progress: &mut Progress) -> Result<()> {
    let layout = &stack.layout;
    let device = layout.dir.join("device");
    let mut details = Vec::new();
    // The encrypted blob, as the provider ships it with the device's installer.
    let shipped = layout.dir.join("digits.enc");
    std::fs::copy(
        layout.registry_dir.join("blobs").join(&stack.published.id),
        &shipped,
    )
    .context("cannot copy the encrypted model for the device")?;
    // The device's steps are the TEE binary's; the provider's are this executable's.
    let run = |args: &[&str]| -> Result<String> {
        let (exe, name, args) = match args.split_first() {
            Some((&"server", rest)) => (&layout.server_exe, "adyton-server", rest),
            _ => (&layout.exe, "adyton", args),
        };
        let out = layout
            .command_of(exe, args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {name} {}", args.join(" ")))?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            bail!("{name} {} failed: {}", args.join(" "), stderr.trim());
        }
        Ok(stderr)
    };
    let device_dir = device.to_string_lossy().into_owned();
    let sim_key = layout.sim_key.to_string_lossy().into_owned();
    let device_args = [
        "--state-dir",
        &device_dir,
        "--tee",
        "sim",
        "--sim-key",
        &sim_key,
    ];

    let started = Instant::now();
    let mut args = vec!["server", "provision-request"];
    args.extend(device_args);
    args.extend([
        "--model",
        MODEL_NAME,
        "--blob",
        "digits.enc",
        "-o",
        "request.json",
    ]);
    run(&args)?;
    let request: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.dir.join("request.json")).context("cannot read request.json")?,
    )
    .context("request.json is not JSON")?;
    let request_id = request["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    details.push(format!(
        "on the device: provisioning request {request_id} (SIM evidence over a fresh RSA key, \
         whose private key is sealed to the device) ({})",
        seconds(started.elapsed())
    ));

    let started = Instant::now();
    let kbs_token = layout.kbs_token_file.to_string_lossy().into_owned();
    run(&[
        "kbs",
        "transfer",
        "--offline",
        "request.json",
        "-o",
        "response.json",
        "--url",
        &stack.kbs.url,
        "--token-file",
        &kbs_token,
    ])?;
    let audit = std::fs::read_to_string(layout.kbs_dir.join("audit.jsonl"))
        .context("cannot read the key broker's audit log")?;
    let audited = audit
        .lines()
        .any(|l| l.contains(&request_id) && l.contains("\"allowed\":true"));
    if !audited {
        bail!("the key broker's audit log has no allowed offline transfer for {request_id}");
    }
    details.push(format!(
        "at the provider: `adyton kbs transfer --offline` checked the evidence against the \
         transfer policy and wrapped the key to the request's key; audited ({})",
        seconds(started.elapsed())
    ));

    let started = Instant::now();
    let mut args = vec!["server", "provision-accept", "response.json"];
    args.extend(device_args);
    run(&args)?;
    if run(&args).is_ok() {
        bail!("the device accepted the same response twice");
    }
    details.push(format!(
        "on the device: the response accepted (the model key unwrapped, checked against the blob \
         and sealed to the device; the provisioning key deleted); accepting it again is refused \
         ({})",
        seconds(started.elapsed())
    ));

    // The device restarts with no network: no registry, no key broker, proxies to nowhere.
    let started = Instant::now();
    let server = start_offline_server(layout, &device, &layout.sim_key, "device-server")?;
    wait_for_model(&server, &stack.policy, MODEL_NAME)?
        .map_err(|reason| anyhow::anyhow!("the device did not serve the model: {reason}"))?;
    let test = TestSet::embedded()?;
    let client =
        ServerClient::connect(&server.url, stack.policy.clone(), ConnectOptions::default())
            .context("the client refused the device's server")?;
    let mut predictions = Vec::with_capacity(test.count);
    for rows in test.pixels.chunks(BATCH) {
        let mut data = Vec::with_capacity(rows.len() * 64 * 4);
        for pixel in rows.iter().flatten() {
            data.extend_from_slice(&f32::from(*pixel).to_le_bytes());
        }
        let input = InferTensor::new("pixels", "FP32", vec![rows.len(), 64], data);
        let outputs = client.infer(MODEL_NAME, &[input])?;
        predictions.extend(labels_of(&outputs, rows.len())?);
    }
    if predictions != test.sklearn_predictions {
        bail!("the device's predictions differ from scikit-learn's");
    }
    drop(client);
    server.stop();
    details.push(format!(
        "the device restarted with no network (no registry, no key broker), unsealed the key and \
         served the model: {} digits, every prediction as scikit-learn's ({})",
        test.count,
        seconds(started.elapsed())
    ));

    // The disk copied to another device (another SIM identity): nothing unseals.
    let copy = layout.dir.join("device-copy");
    copy_dir(&device, &copy)?;
    let other_key = layout.dir.join("other-device-sim.key");
    let server = start_offline_server(layout, &copy, &other_key, "copied-device-server")?;
    let other = SimAttester::from_key_file(&other_key)
        .context("cannot open the other device's SIM key")?
        .public_key();
    let measurement = adyton_attest::sim::measure_file(&layout.server_exe)
        .context("cannot measure the server's build")?;
    let watcher = Policy::from_toml(&sim_policy_toml(&[measurement], Some(other)))?;
    let reason = match wait_for_model(&server, &watcher, MODEL_NAME)? {
        Err(reason) => reason,
        Ok(_) => bail!("a copy of the device's disk was served by another device"),
    };
    if !reason.contains("cannot unseal") {
        bail!("the copied disk failed for another reason: {reason}");
    }
    server.stop();
    details.push(format!(
        "the device's disk copied to another device (another SIM key): refused: {reason}"
    ));
    progress.step(
        "offline device: provisioned once by file, restarted with no network, its disk useless \
         elsewhere",
        &details,
    );
    Ok(())
}

/// Starts `adyton-server serve` on a device's state directory with no registry, no key broker and
/// every proxy pointing at a closed port.
fn start_offline_server(
    layout: &Layout,
    state_dir: &Path,
    sim_key: &Path,
    name: &str,
) -> Result<stack::Service> {
    let mut command = layout.command_of(
        &layout.server_exe,
        &["serve", "--listen", "127.0.0.1:0", "--tee", "sim"],
    );
    command
        .arg("--sim-key")
        .arg(sim_key)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--certificate-out")
        .arg(layout.dir.join(format!("{name}.pem")))
        .args(["--workers", "2"]);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        command.env(var, "http://127.0.0.1:9");
    }
    stack::Service::start(
        "offline inference server",
        command,
        &layout.dir.join(format!("{name}.log")),
    )
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Copies `exe` to `to` and appends a few bytes: the same program, but another SIM measurement,
/// as a different build of the server would have.
fn another_build(exe: &Path, to: &Path) -> Result<()> {
    std::fs::copy(exe, to).with_context(|| format!("cannot copy {}", exe.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(to)
        .with_context(|| format!("cannot open {}", to.display()))?;
    file.write_all(b"\nanother build\n")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", to.display()))?;
    drop(file);
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} executable", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_render_as_eight_lines() {
        let lines = render_digit(&[16; 64]);
        assert_eq!(lines.len(), 8);
        assert!(lines[0].contains("@@"));
    }
}
