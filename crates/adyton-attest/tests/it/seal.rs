//! Sealers: SIM keys from a seed and a measurement, Gramine's SGX sealing keys from a directory
//! that imitates `/dev/attestation/keys/`, SEV-SNP derived keys from a fake firmware, and the
//! checks of the real device path.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::{AttesterPaths, TeeChoice};
use adyton_attest::seal::gramine::GramineSealer;
use adyton_attest::seal::sim::SimSealer;
use adyton_attest::seal::snp::{self, DerivedKeySource, SevGuestDevice, SnpKeyRequest, SnpSealer};
use adyton_attest::{sealer_for, AttestError, Sealer, SealingPolicy, TeeKind};
use aws_lc_rs::hmac;
use zeroize::Zeroizing;

const CONTEXT: &[u8] = b"adyton/model-key/v1";

fn key_of(sealer: &dyn Sealer, policy: SealingPolicy) -> [u8; 32] {
    *sealer.sealing_key(policy, CONTEXT).unwrap().as_bytes()
}

fn sim_sealer(seed: u8, measurement: u8) -> SimSealer {
    SimSealer::new(&SimAttester::with_measurement([seed; 32], [measurement; 48]).unwrap())
}

fn paths_in(dir: &Path) -> AttesterPaths {
    AttesterPaths {
        gramine: dir.join("attestation"),
        tsm_report: dir.join("tsm"),
        sim_key: dir.join("sim.key"),
        sev_guest: dir.join("sev-guest"),
        tpm: dir.join("tpmrm0"),
        nsm: dir.join("nsm"),
        coco: Default::default(),
    }
}

fn unavailable_reason(err: AttestError, expected: TeeKind) -> String {
    match err {
        AttestError::TeeUnavailable { tee, reason } if tee == expected => reason,
        other => panic!("expected TeeUnavailable for {expected}, got {other:?}"),
    }
}

#[test]
fn sim_exact_build_keys_differ_between_measurements() {
    let a = sim_sealer(1, 0xA);
    let b = sim_sealer(1, 0xB);
    assert_eq!(a.tee(), TeeKind::Sim);
    assert_eq!(
        key_of(&a, SealingPolicy::ExactBuild),
        key_of(&sim_sealer(1, 0xA), SealingPolicy::ExactBuild),
        "the same build on the same device gets the same key"
    );
    assert_ne!(
        key_of(&a, SealingPolicy::ExactBuild),
        key_of(&b, SealingPolicy::ExactBuild)
    );
}

#[test]
fn sim_signer_keys_are_equal_across_measurements_and_differ_across_seeds() {
    let a = sim_sealer(1, 0xA);
    let b = sim_sealer(1, 0xB);
    let other_device = sim_sealer(2, 0xA);
    assert_eq!(
        key_of(&a, SealingPolicy::Signer),
        key_of(&b, SealingPolicy::Signer)
    );
    assert_ne!(
        key_of(&a, SealingPolicy::Signer),
        key_of(&other_device, SealingPolicy::Signer)
    );
    assert_ne!(
        key_of(&a, SealingPolicy::ExactBuild),
        key_of(&other_device, SealingPolicy::ExactBuild)
    );
}

#[test]
fn sim_keys_depend_on_the_policy_and_the_context() {
    let sealer = sim_sealer(1, 0xA);
    assert_ne!(
        key_of(&sealer, SealingPolicy::ExactBuild),
        key_of(&sealer, SealingPolicy::Signer)
    );
    for policy in SealingPolicy::ALL {
        assert_ne!(
            *sealer
                .sealing_key(policy, b"context one")
                .unwrap()
                .as_bytes(),
            *sealer
                .sealing_key(policy, b"context two")
                .unwrap()
                .as_bytes()
        );
    }
}

#[test]
fn sim_sealer_for_uses_the_sim_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(dir.path());
    let sealer = sealer_for(TeeChoice::Kind(TeeKind::Sim), &paths).unwrap();
    assert_eq!(sealer.tee(), TeeKind::Sim);
    let direct = SimSealer::new(&SimAttester::from_key_file(&paths.sim_key).unwrap());
    for policy in SealingPolicy::ALL {
        assert_eq!(key_of(sealer.as_ref(), policy), key_of(&direct, policy));
    }

    // Another SIM device (another key file) gets other keys under both policies.
    let mut other = paths.clone();
    other.sim_key = dir.path().join("other-sim.key");
    let other = sealer_for(TeeChoice::Kind(TeeKind::Sim), &other).unwrap();
    for policy in SealingPolicy::ALL {
        assert_ne!(
            key_of(sealer.as_ref(), policy),
            key_of(other.as_ref(), policy)
        );
    }
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let sealer = sim_sealer(0x5A, 0xA);
    let shown = format!("{sealer:?}");
    assert!(!shown.contains(&hex::encode([0x5A; 32])), "{shown}");
    assert!(!shown.contains(&hex::encode([0x5A; 4])), "{shown}");
    let key = sealer
        .sealing_key(SealingPolicy::ExactBuild, CONTEXT)
        .unwrap();
    let shown = format!("{key:?}");
    assert_eq!(shown, "SealingKey(<redacted>)");
    assert!(!shown.contains(&hex::encode(&key.as_bytes()[..4])));
}

/// A directory that imitates Gramine's `/dev/attestation` with its SGX sealing keys.
fn fake_gramine_keys(mrenclave: &[u8], mrsigner: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    fs::create_dir(&keys).unwrap();
    fs::write(dir.path().join("attestation_type"), "dcap").unwrap();
    fs::write(keys.join("_sgx_mrenclave"), mrenclave).unwrap();
    fs::write(keys.join("_sgx_mrsigner"), mrsigner).unwrap();
    dir
}

#[test]
fn gramine_key_files_are_the_ones_gramine_exposes() {
    let root = Path::new("/dev/attestation");
    assert_eq!(
        GramineSealer::key_path(root, SealingPolicy::ExactBuild),
        Path::new("/dev/attestation/keys/_sgx_mrenclave")
    );
    assert_eq!(
        GramineSealer::key_path(root, SealingPolicy::Signer),
        Path::new("/dev/attestation/keys/_sgx_mrsigner")
    );
}

#[test]
fn gramine_mrenclave_and_mrsigner_give_different_keys() {
    let dir = fake_gramine_keys(&[1; 16], &[2; 16]);
    let sealer = GramineSealer::open(dir.path()).unwrap();
    assert_eq!(sealer.tee(), TeeKind::Sgx);
    let exact = key_of(&sealer, SealingPolicy::ExactBuild);
    let signer = key_of(&sealer, SealingPolicy::Signer);
    assert_ne!(exact, signer);
    assert_eq!(exact, key_of(&sealer, SealingPolicy::ExactBuild));

    // Even with equal SGX keys, the policies' keys are separated.
    let same = fake_gramine_keys(&[3; 16], &[3; 16]);
    let same = GramineSealer::open(same.path()).unwrap();
    assert_ne!(
        key_of(&same, SealingPolicy::ExactBuild),
        key_of(&same, SealingPolicy::Signer)
    );
}

#[test]
fn gramine_key_follows_its_key_file() {
    let dir = fake_gramine_keys(&[1; 16], &[2; 16]);
    let sealer = GramineSealer::open(dir.path()).unwrap();
    let exact = key_of(&sealer, SealingPolicy::ExactBuild);
    let signer = key_of(&sealer, SealingPolicy::Signer);

    // Another enclave (another MRENCLAVE) sees another _sgx_mrenclave key.
    let mut changed = [1; 16];
    changed[15] ^= 1;
    fs::write(dir.path().join("keys/_sgx_mrenclave"), changed).unwrap();
    assert_ne!(key_of(&sealer, SealingPolicy::ExactBuild), exact);
    assert_eq!(key_of(&sealer, SealingPolicy::Signer), signer);

    fs::write(dir.path().join("keys/_sgx_mrsigner"), [9; 16]).unwrap();
    assert_ne!(key_of(&sealer, SealingPolicy::Signer), signer);
}

#[test]
fn gramine_without_key_files_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let err = GramineSealer::open(dir.path()).unwrap_err();
    let reason = unavailable_reason(err, TeeKind::Sgx);
    assert!(reason.contains("_sgx_mrenclave"), "{reason}");
    assert!(reason.contains("not running under Gramine"), "{reason}");
    assert!(reason.contains("older than 1.5"), "{reason}");

    // A key file that disappears after opening is explained the same way.
    let dir = fake_gramine_keys(&[1; 16], &[2; 16]);
    let sealer = GramineSealer::open(dir.path()).unwrap();
    fs::remove_file(dir.path().join("keys/_sgx_mrsigner")).unwrap();
    let err = sealer
        .sealing_key(SealingPolicy::Signer, CONTEXT)
        .unwrap_err();
    let reason = unavailable_reason(err, TeeKind::Sgx);
    assert!(reason.contains("_sgx_mrsigner"), "{reason}");
    assert!(reason.contains("not running under Gramine"), "{reason}");
}

#[test]
fn gramine_key_of_the_wrong_length_is_refused() {
    for (content, said) in [
        (vec![1u8; 15], "holds 15 bytes"),
        (vec![], "holds 0 bytes"),
        (vec![1u8; 17], "holds more than 16 bytes"),
        (vec![1u8; 32], "holds more than 16 bytes"),
    ] {
        let dir = fake_gramine_keys(&content, &[2; 16]);
        let sealer = GramineSealer::open(dir.path()).unwrap();
        let err = sealer
            .sealing_key(SealingPolicy::ExactBuild, CONTEXT)
            .unwrap_err();
        let reason = unavailable_reason(err, TeeKind::Sgx);
        assert!(reason.contains(said), "{reason}");
        assert!(reason.contains("16 bytes"), "{reason}");
        // The other policy's key is still fine.
        sealer.sealing_key(SealingPolicy::Signer, CONTEXT).unwrap();
    }
}

#[test]
fn sgx_sealer_for_reads_gramine_keys_and_auto_detects_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = paths_in(dir.path());
    let gramine = fake_gramine_keys(&[1; 16], &[2; 16]);
    paths.gramine = gramine.path().to_path_buf();
    let direct = GramineSealer::open(gramine.path()).unwrap();
    for choice in [TeeChoice::Kind(TeeKind::Sgx), TeeChoice::Auto] {
        let sealer = sealer_for(choice, &paths).unwrap();
        assert_eq!(sealer.tee(), TeeKind::Sgx);
        for policy in SealingPolicy::ALL {
            assert_eq!(key_of(sealer.as_ref(), policy), key_of(&direct, policy));
        }
    }
}

#[test]
fn auto_without_a_tee_never_falls_back_to_sim() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(dir.path());
    let err = sealer_for(TeeChoice::Auto, &paths).unwrap_err();
    assert!(matches!(err, AttestError::NoTeeDetected), "{err}");
    assert!(!paths.sim_key.exists(), "auto must not create a SIM key");
}

#[test]
fn tdx_is_refused_with_the_explanation() {
    let dir = tempfile::tempdir().unwrap();
    let err = sealer_for(TeeChoice::Kind(TeeKind::Tdx), &paths_in(dir.path())).unwrap_err();
    assert!(
        matches!(err, AttestError::SealingUnsupported { tee: TeeKind::Tdx }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "TDX has no sealing key in hardware: offline provisioning needs SGX or SEV-SNP; \
         a TDX server keeps using online key release (--pull)"
    );
}

/// The launch values an SNP guest carries (SEV-SNP ABI, the ATTESTATION_REPORT fields).
#[derive(Clone, Copy, Debug)]
struct Launch {
    policy: u64,
    measurement: [u8; 48],
    family_id: [u8; 16],
    image_id: [u8; 16],
}

const LAUNCH: Launch = Launch {
    policy: 0x3_0000,
    measurement: [0x11; 48],
    family_id: [0x22; 16],
    image_id: [0x33; 16],
};

/// Imitates the firmware: a key over the chip secret, the request and the launch fields it
/// selects, and records the requests.
#[derive(Debug)]
struct FakeFirmware {
    chip_secret: [u8; 32],
    launch: Launch,
    requests: Mutex<Vec<SnpKeyRequest>>,
}

impl FakeFirmware {
    fn new(launch: Launch) -> Self {
        Self {
            chip_secret: [0xC1; 32],
            launch,
            requests: Mutex::new(Vec::new()),
        }
    }
}

/// The sealer owns its source; the test keeps a handle to read the recorded requests.
#[derive(Debug)]
struct Shared(Arc<FakeFirmware>);

impl DerivedKeySource for Shared {
    fn derived_key(&self, request: &SnpKeyRequest) -> adyton_attest::Result<Zeroizing<[u8; 32]>> {
        let firmware = &self.0;
        firmware.requests.lock().unwrap().push(*request);
        let select = request.guest_field_select;
        let mut ctx =
            hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &firmware.chip_secret));
        ctx.update(&request.vmpl.to_le_bytes());
        let bits = [
            select.get_guest_policy(),
            select.get_image_id(),
            select.get_family_id(),
            select.get_measurement(),
            select.get_svn(),
            select.get_tcb_version(),
            select.get_launch_mit_vector(),
        ];
        ctx.update(&bits.map(u8::from));
        let launch = &firmware.launch;
        if select.get_guest_policy() {
            ctx.update(&launch.policy.to_le_bytes());
        }
        if select.get_image_id() {
            ctx.update(&launch.image_id);
        }
        if select.get_family_id() {
            ctx.update(&launch.family_id);
        }
        if select.get_measurement() {
            ctx.update(&launch.measurement);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(ctx.sign().as_ref());
        Ok(key)
    }
}

fn snp_keys(launch: Launch) -> ([u8; 32], [u8; 32]) {
    let firmware = Arc::new(FakeFirmware::new(launch));
    let sealer = SnpSealer::new(Box::new(Shared(Arc::clone(&firmware))));
    assert_eq!(sealer.tee(), TeeKind::Snp);
    let keys = (
        key_of(&sealer, SealingPolicy::ExactBuild),
        key_of(&sealer, SealingPolicy::Signer),
    );
    let requests = firmware.requests.lock().unwrap();
    assert_eq!(
        *requests,
        [
            SnpKeyRequest::for_policy(SealingPolicy::ExactBuild),
            SnpKeyRequest::for_policy(SealingPolicy::Signer)
        ]
    );
    assert!(requests.iter().all(|r| r.vmpl == 0));
    keys
}

#[test]
fn snp_field_select_differs_between_policies() {
    let exact = snp::guest_field_select(SealingPolicy::ExactBuild);
    let signer = snp::guest_field_select(SealingPolicy::Signer);
    assert_ne!(exact, signer);
    assert!(exact.get_guest_policy() && exact.get_measurement());
    assert!(!exact.get_family_id() && !exact.get_image_id());
    assert!(signer.get_guest_policy() && signer.get_family_id() && signer.get_image_id());
    assert!(!signer.get_measurement());
    assert_eq!(
        SnpKeyRequest::for_policy(SealingPolicy::Signer).guest_field_select,
        signer
    );
}

#[test]
fn snp_key_changes_with_the_measurement_only_under_exact_build() {
    let (exact, signer) = snp_keys(LAUNCH);
    assert_ne!(exact, signer);
    assert_eq!(snp_keys(LAUNCH), (exact, signer), "keys are stable");

    let other_build = Launch {
        measurement: [0x12; 48],
        ..LAUNCH
    };
    let (other_exact, other_signer) = snp_keys(other_build);
    assert_ne!(other_exact, exact);
    assert_eq!(other_signer, signer);
}

#[test]
fn snp_key_changes_with_the_signer_ids_only_under_signer() {
    let (exact, signer) = snp_keys(LAUNCH);
    for other in [
        Launch {
            family_id: [0x23; 16],
            ..LAUNCH
        },
        Launch {
            image_id: [0x34; 16],
            ..LAUNCH
        },
    ] {
        let (other_exact, other_signer) = snp_keys(other);
        assert_eq!(other_exact, exact);
        assert_ne!(other_signer, signer);
    }
    // The guest policy (debug, SMT, ...) is in both.
    let (other_exact, other_signer) = snp_keys(Launch {
        policy: 0x3_0000 | 1 << 19,
        ..LAUNCH
    });
    assert_ne!(other_exact, exact);
    assert_ne!(other_signer, signer);
}

#[test]
fn snp_device_that_is_missing_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("sev-guest");
    let err = SevGuestDevice::open(&missing).unwrap_err();
    let reason = unavailable_reason(err, TeeKind::Snp);
    assert!(
        reason.starts_with(&format!(
            "no SEV-SNP guest device at {}: ",
            missing.display()
        )),
        "{reason}"
    );

    let err = sealer_for(TeeChoice::Kind(TeeKind::Snp), &paths_in(dir.path())).unwrap_err();
    let reason = unavailable_reason(err, TeeKind::Snp);
    assert!(reason.contains("no SEV-SNP guest device at"), "{reason}");
}

#[test]
fn snp_device_that_is_not_a_character_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sev-guest");
    fs::write(&file, b"not a device").unwrap();
    for path in [file.as_path(), dir.path()] {
        let err = SevGuestDevice::open(path).unwrap_err();
        let reason = unavailable_reason(err, TeeKind::Snp);
        assert!(reason.contains("is not a character device"), "{reason}");
    }
}

#[test]
fn snp_device_elsewhere_than_dev_sev_guest_is_refused() {
    // /dev/null is a character device that passes the checks, but the sev crate can open only
    // /dev/sev-guest.
    let err = SevGuestDevice::open(Path::new("/dev/null")).unwrap_err();
    let reason = unavailable_reason(err, TeeKind::Snp);
    assert!(reason.contains("must be /dev/sev-guest"), "{reason}");
    assert!(reason.contains("/dev/null cannot be used"), "{reason}");
}
