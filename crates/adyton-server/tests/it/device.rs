//! The offline device's state with the real SIM attester and sealer, real envelopes and a key
//! broker's answer made in memory: provisioning, what survives a crash at each step, and what is
//! refused.

use std::path::Path;

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::seal::sim::SimSealer;
use adyton_attest::seal::SealingPolicy;
use adyton_client::kbs::TransferAnswer;
use adyton_client::offline::{ProvisionRequest, ProvisionResponse};
use adyton_envelope::wrap::{wrap_for_tee, TeePublicKey};
use adyton_envelope::{v2, Aes256Key};
use adyton_server::device::{DeviceError, DeviceState, RequestParams};

const KEY_ID: &str = "5b0c2f7e-2d7a-4c43-9d61-0b8c8f1f9a10";
const MEASUREMENT: [u8; 48] = [0x42; 48];

fn model_key() -> Aes256Key {
    Aes256Key::from_slice(&[0x5a; 32]).unwrap()
}

fn plaintext() -> Vec<u8> {
    (0..100_000u32).map(|i| (i % 251) as u8).collect()
}

fn blob(plaintext: &[u8]) -> Vec<u8> {
    let options = v2::EncryptOptions {
        chunk_size: 4096,
        key_id: KEY_ID.into(),
        content_type: v2::CONTENT_TYPE_ONNX.into(),
    };
    v2::seal(&model_key(), plaintext, &options).unwrap()
}

fn device(seed: u8, measurement: [u8; 48]) -> (SimAttester, SimSealer) {
    let attester = SimAttester::with_measurement([seed; 32], measurement).unwrap();
    let sealer = SimSealer::new(&attester);
    (attester, sealer)
}

fn request(
    state: &DeviceState,
    seed: u8,
    policy: SealingPolicy,
    model: &str,
    blob_bytes: &[u8],
) -> ProvisionRequest {
    let (attester, sealer) = device(seed, MEASUREMENT);
    state
        .create_request(
            &attester,
            &sealer,
            &RequestParams {
                model,
                key_id: None,
                sealing_policy: policy,
                now: 1_700_000_000,
            },
            &mut &blob_bytes[..],
        )
        .unwrap()
}

/// What the key broker answers: the model key wrapped to the request's public key.
fn response_to(request: &ProvisionRequest, key: &Aes256Key) -> Vec<u8> {
    let public = TeePublicKey::from_spki_der(&request.public_key_der().unwrap()).unwrap();
    let wrapped = wrap_for_tee(&public, key).unwrap();
    let answer = TransferAnswer {
        wrapped_key: wrapped.wrapped_key,
        wrapped_swk: wrapped.wrapped_swk,
    };
    ProvisionResponse::for_request(request, &answer, 1_700_000_100)
        .unwrap()
        .to_json()
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn provisioned_model_opens_only_on_its_device_and_build() {
    let dir = tempfile::tempdir().unwrap();
    let state = DeviceState::open(dir.path()).unwrap();
    let request = request(
        &state,
        1,
        SealingPolicy::ExactBuild,
        "scanner",
        &blob(&plaintext()),
    );
    assert_eq!(
        request.key_id, KEY_ID,
        "the key id comes from the blob's header"
    );
    let (_, sealer) = device(1, MEASUREMENT);
    let record = state
        .accept(&sealer, &response_to(&request, &model_key()), 1_700_000_200)
        .unwrap();
    assert_eq!(count(&dir.path().join("requests")), 0);
    assert_eq!(*state.open_model(&sealer, &record).unwrap(), plaintext());

    // Another device, another build: refused with the reason.
    let (_, other_device) = device(2, MEASUREMENT);
    let (_, other_build) = device(1, [0x43; 48]);
    for sealer in [other_device, other_build] {
        match state.open_model(&sealer, &record) {
            Err(DeviceError::Unseal { policy, .. }) => {
                assert_eq!(policy, SealingPolicy::ExactBuild)
            }
            other => panic!("expected an unseal refusal, got {other:?}"),
        }
    }
}

#[test]
fn signer_policy_survives_an_upgrade_but_not_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let state = DeviceState::open(dir.path()).unwrap();
    let request = request(
        &state,
        1,
        SealingPolicy::Signer,
        "scanner",
        &blob(&plaintext()),
    );
    let (_, sealer) = device(1, MEASUREMENT);
    let record = state
        .accept(&sealer, &response_to(&request, &model_key()), 1)
        .unwrap();
    let (_, upgraded) = device(1, [0x43; 48]);
    assert_eq!(*state.open_model(&upgraded, &record).unwrap(), plaintext());
    let (_, copied) = device(2, MEASUREMENT);
    assert!(matches!(
        state.open_model(&copied, &record),
        Err(DeviceError::Unseal { .. })
    ));
}

#[test]
fn a_pending_request_opens_only_on_the_device_that_made_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = DeviceState::open(dir.path()).unwrap();
    let request = request(
        &state,
        1,
        SealingPolicy::ExactBuild,
        "scanner",
        &blob(&plaintext()),
    );
    // The state directory carried to another device, with the response.
    let (_, other) = device(2, MEASUREMENT);
    let refused = state
        .accept(&other, &response_to(&request, &model_key()), 1)
        .unwrap_err();
    assert!(matches!(refused, DeviceError::Unseal { .. }), "{refused:?}");
    // Nothing changed: the right device still accepts it.
    let (_, sealer) = device(1, MEASUREMENT);
    state
        .accept(&sealer, &response_to(&request, &model_key()), 1)
        .unwrap();
}

#[test]
fn a_wrong_key_is_refused_at_acceptance_and_nothing_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let state = DeviceState::open(dir.path()).unwrap();
    let request = request(
        &state,
        1,
        SealingPolicy::ExactBuild,
        "scanner",
        &blob(&plaintext()),
    );
    let (_, sealer) = device(1, MEASUREMENT);
    let wrong = Aes256Key::from_slice(&[0x11; 32]).unwrap();
    let refused = state
        .accept(&sealer, &response_to(&request, &wrong), 1)
        .unwrap_err();
    assert!(matches!(refused, DeviceError::Blob { .. }), "{refused:?}");
    assert_eq!(count(&dir.path().join("models")), 0);
    assert_eq!(
        count(&dir.path().join("requests")),
        1,
        "the request stays pending"
    );
}

#[test]
fn bad_responses_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let state = DeviceState::open(dir.path()).unwrap();
    let request = request(
        &state,
        1,
        SealingPolicy::ExactBuild,
        "scanner",
        &blob(&plaintext()),
    );
    let (_, sealer) = device(1, MEASUREMENT);
    let good: serde_json::Value =
        serde_json::from_slice(&response_to(&request, &model_key())).unwrap();
    let cases: [(&str, serde_json::Value, &str); 4] = [
        ("model", "another-model".into(), "made for another request"),
        ("key_id", "another-key".into(), "made for another request"),
        (
            "public_key_sha256",
            "00".repeat(32).into(),
            "made for another request",
        ),
        (
            "request_id",
            uuid_like().into(),
            "is pending on this device",
        ),
    ];
    for (field, value, expected) in cases {
        let mut bad = good.clone();
        bad[field] = value;
        let refused = state
            .accept(&sealer, bad.to_string().as_bytes(), 1)
            .unwrap_err()
            .to_string();
        assert!(refused.contains(expected), "{field}: {refused}");
    }
    for junk in [&b""[..], b"{", b"[]", &[0xff; 10]] {
        assert!(matches!(
            state.accept(&sealer, junk, 1),
            Err(DeviceError::Invalid(_))
        ));
    }
    let mut traversal = good.clone();
    traversal["request_id"] = "../models/scanner".into();
    assert!(state
        .accept(&sealer, traversal.to_string().as_bytes(), 1)
        .is_err());
    // After all that, the genuine response is accepted, once.
    let response = good.to_string();
    state.accept(&sealer, response.as_bytes(), 1).unwrap();
    assert!(matches!(
        state.accept(&sealer, response.as_bytes(), 2),
        Err(DeviceError::Replayed { .. })
    ));
}

fn uuid_like() -> String {
    "0f0e0d0c-0b0a-4908-8706-050403020100".to_owned()
}

#[test]
fn a_crash_at_any_step_leaves_the_old_state_or_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let state = DeviceState::open(root).unwrap();
    let (_, sealer) = device(1, MEASUREMENT);
    let old_plaintext = plaintext();
    let first = request(
        &state,
        1,
        SealingPolicy::ExactBuild,
        "scanner",
        &blob(&old_plaintext),
    );
    state
        .accept(&sealer, &response_to(&first, &model_key()), 1)
        .unwrap();

    // Re-provisioning with a new version of the model: until its response is accepted, the old
    // version is what the device serves.
    let new_plaintext: Vec<u8> = old_plaintext.iter().map(|b| b ^ 0xff).collect();
    let second = request(
        &state,
        1,
        SealingPolicy::ExactBuild,
        "scanner",
        &blob(&new_plaintext),
    );
    let (_, record) = state.models().unwrap().remove(0);
    assert_eq!(
        *state.open_model(&sealer, &record.unwrap()).unwrap(),
        old_plaintext
    );

    // A crash while a record was being written leaves a temporary file, which is ignored.
    std::fs::write(root.join("models/.record.crashed"), b"{\"half\": ").unwrap();
    std::fs::write(root.join("blobs/.blob.crashed"), b"half a blob").unwrap();
    assert_eq!(state.models().unwrap().len(), 1);

    // A crash after the commit, before the pending request was removed: the model is the new one,
    // and the same response is a replay (the leftover request is cleaned up).
    let response = response_to(&second, &model_key());
    let pending = std::fs::read(root.join(format!("requests/{}.json", second.request_id))).unwrap();
    state.accept(&sealer, &response, 2).unwrap();
    std::fs::write(
        root.join(format!("requests/{}.json", second.request_id)),
        &pending,
    )
    .unwrap();
    assert!(matches!(
        state.accept(&sealer, &response, 3),
        Err(DeviceError::Replayed { .. })
    ));
    assert_eq!(count(&root.join("requests")), 0);
    let (_, record) = state.models().unwrap().remove(0);
    assert_eq!(
        *state.open_model(&sealer, &record.unwrap()).unwrap(),
        new_plaintext
    );
    // The old blob and the crash's leftovers are gone; the new blob stays.
    assert_eq!(count(&root.join("blobs")), 1);
}

#[test]
fn malformed_blobs_and_model_ids_are_refused_before_anything_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let state = DeviceState::open(dir.path()).unwrap();
    let (attester, sealer) = device(1, MEASUREMENT);
    let params = |model| RequestParams {
        model,
        key_id: None,
        sealing_policy: SealingPolicy::ExactBuild,
        now: 1,
    };
    let good = blob(&plaintext());
    for (model, bytes) in [
        ("scanner", &b"not an envelope at all"[..]),
        ("scanner", &b""[..]),
        ("../escape", &good[..]),
        ("", &good[..]),
    ] {
        let refused = state
            .create_request(&attester, &sealer, &params(model), &mut &bytes[..])
            .unwrap_err();
        assert!(matches!(refused, DeviceError::Invalid(_)), "{refused:?}");
    }
    // A key id that disagrees with the blob's header.
    let refused = state
        .create_request(
            &attester,
            &sealer,
            &RequestParams {
                key_id: Some("another-key"),
                ..params("scanner")
            },
            &mut &good[..],
        )
        .unwrap_err();
    assert!(refused.to_string().contains("disagrees"), "{refused}");
    assert_eq!(count(&dir.path().join("requests")), 0);
}

#[test]
fn sealed_models_load_with_their_input_shapes_and_fail_alone_without() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use adyton_server::repository::Repository;
    use adyton_server::runtime::tract::TractEngine;
    use adyton_server::runtime::{Dim, Engine, LoadOptions};

    let dir = tempfile::tempdir().unwrap();
    let state = DeviceState::open(dir.path()).unwrap();
    let (_, sealer) = device(1, MEASUREMENT);
    // `unknown_dim` ([batch, ?, 4]) takes settings of its own; `add` none.
    for name in ["unknown_dim", "add"] {
        let plain = crate::support::model(name);
        let request = request(&state, 1, SealingPolicy::ExactBuild, name, &blob(&plain));
        state
            .accept(&sealer, &response_to(&request, &model_key()), 1)
            .unwrap();
    }
    let engine: Arc<dyn Engine> = Arc::new(TractEngine::new());

    // Settings that do not fit it (a shape for an input it does not have) fail it alone.
    let repository = Repository::new(16);
    let misfit = BTreeMap::from([(
        "unknown_dim".to_owned(),
        LoadOptions {
            ahead_shapes: vec![BTreeMap::from([("z".to_owned(), vec![2, 1, 4])])],
            ..LoadOptions::default()
        },
    )]);
    let outcomes = state
        .load_all(&sealer, &engine, &repository, &misfit)
        .unwrap();
    let outcome = |name: &str| outcomes.iter().find(|(m, _)| m == name).unwrap().1.as_ref();
    assert!(outcome("add").is_ok());
    let refused = outcome("unknown_dim").unwrap_err().to_string();
    assert!(
        refused.contains("does not load") && refused.contains("input 'z'"),
        "{refused}"
    );
    assert!(repository.get("add", None).is_ok());
    assert!(repository.get("unknown_dim", None).is_err());

    let repository = Repository::new(16);
    let options = BTreeMap::from([(
        "unknown_dim".to_owned(),
        LoadOptions {
            input_shapes: BTreeMap::from([(
                "x".to_owned(),
                vec![Dim::Dynamic, Dim::Fixed(1), Dim::Fixed(4)],
            )]),
            ..LoadOptions::default()
        },
    )]);
    let outcomes = state
        .load_all(&sealer, &engine, &repository, &options)
        .unwrap();
    assert!(outcomes.iter().all(|(_, outcome)| outcome.is_ok()));
    assert!(repository.get("unknown_dim", None).is_ok());
}

#[test]
fn provisioning_commands_running_at_once_leave_every_model_whole() {
    let dir = tempfile::tempdir().unwrap();
    let state = DeviceState::open(dir.path()).unwrap();
    let (_, sealer) = device(1, MEASUREMENT);
    // A first model, accepted while the others' requests and acceptances run at once: every
    // acceptance cleans up blobs, and must never take a blob whose request is being made.
    let models: Vec<(String, Vec<u8>)> = (0..4u8)
        .map(|i| (format!("m{i}"), plaintext().iter().map(|b| b ^ i).collect()))
        .collect();
    std::thread::scope(|scope| {
        for (name, plain) in &models {
            let state = &state;
            scope.spawn(move || {
                let request = request(state, 1, SealingPolicy::ExactBuild, name, &blob(plain));
                let (_, sealer) = device(1, MEASUREMENT);
                state
                    .accept(&sealer, &response_to(&request, &model_key()), 1)
                    .unwrap();
            });
        }
    });
    let records = state.models().unwrap();
    assert_eq!(records.len(), models.len());
    for ((name, record), (expected_name, plain)) in records.into_iter().zip(&models) {
        assert_eq!(&name, expected_name);
        assert_eq!(
            *state.open_model(&sealer, &record.unwrap()).unwrap(),
            *plain
        );
    }
    assert_eq!(count(&dir.path().join("blobs")), models.len());
}

#[test]
fn a_sealed_model_over_the_load_budget_fails_alone_with_the_reason() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use adyton_server::repository::{Pending, Repository};
    use adyton_server::runtime::tract::TractEngine;
    use adyton_server::runtime::Engine;

    let dir = tempfile::tempdir().unwrap();
    let state = DeviceState::open(dir.path()).unwrap();
    let (_, sealer) = device(1, MEASUREMENT);
    for (name, plain) in [
        ("big", crate::onnx::constant_of_shape(16384)),
        ("add", crate::support::model("add")),
    ] {
        let request = request(&state, 1, SealingPolicy::ExactBuild, name, &blob(&plain));
        state
            .accept(&sealer, &response_to(&request, &model_key()), 1)
            .unwrap();
    }
    let engine: Arc<dyn Engine> = Arc::new(TractEngine::new().with_load_budget(512 << 20));
    let repository = Repository::new(16);
    state
        .load_all(&sealer, &engine, &repository, &BTreeMap::new())
        .unwrap();
    assert!(repository.get("add", None).is_ok());
    let summary = repository.summary("big").unwrap();
    assert!(
        matches!(&summary.pending, Some(Pending::Failed { reason })
            if reason.contains("model constants need 1.0 GiB, over the load budget of 512.0 MiB")),
        "{summary:?}"
    );
}
