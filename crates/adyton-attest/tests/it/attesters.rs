//! Attesters against directories that imitate Gramine's `/dev/attestation` and configfs-tsm.
//!
//! The imitations answer like the kernel: `quote` and `outblob` are FIFOs served by a thread that
//! reads the report data just written and returns a blob carrying it at the vendor's offset, so
//! that a read blocks until the "TEE" has answered, as on real hardware.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use adyton_attest::attester::{
    self, gramine::GramineAttester, tsm::TsmAttester, Attester, AttesterPaths, TeeChoice,
};
use adyton_attest::{AttestError, TeeKind};

const O_NONBLOCK: i32 = 0o4000;

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

/// Writes `blob(report data)` into the FIFO at `fifo` once a reader opens it. Gives up when the
/// FIFO disappears or after 10 s.
fn serve_fifo(
    fifo: PathBuf,
    input: PathBuf,
    blob: impl Fn(&[u8]) -> Vec<u8>,
    before_answer: impl Fn(),
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && fifo.exists() {
        // Non-blocking open for writing fails until a reader has the FIFO open.
        if let Ok(mut writer) = OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(&fifo)
        {
            let data = fs::read(&input).unwrap_or_default();
            before_answer();
            let _ = writer.write_all(&blob(&data));
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

use std::os::unix::fs::OpenOptionsExt;

fn blob_with(report_data: &[u8], offset: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0xEE; len];
    let end = (offset + report_data.len()).min(len);
    out[offset..end].copy_from_slice(&report_data[..end - offset]);
    out
}

fn fake_gramine(kind: &str) -> (tempfile::TempDir, thread::JoinHandle<()>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    fs::write(root.join("attestation_type"), kind).unwrap();
    fs::write(root.join("user_report_data"), [0u8; 64]).unwrap();
    mkfifo(&root.join("quote"));
    let server = thread::spawn(move || {
        serve_fifo(
            root.join("quote"),
            root.join("user_report_data"),
            |data| blob_with(data, 48 + 320, 1024),
            || {},
        )
    });
    (dir, server)
}

#[derive(Clone, Copy)]
enum Kernel {
    Honest,
    /// Another writer's request lands while ours is served.
    Interfering,
}

/// Emulates configfs-tsm: every new entry gets its attributes, and its outblob is served once.
fn fake_tsm(
    provider: &'static str,
    kernel: Kernel,
    entries: usize,
) -> (tempfile::TempDir, thread::JoinHandle<()>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let server = thread::spawn(move || {
        let mut served = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut workers = Vec::new();
        while served.len() < entries && Instant::now() < deadline {
            for entry in fs::read_dir(&root)
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.path())
            {
                if served.contains(&entry) {
                    continue;
                }
                served.push(entry.clone());
                fs::write(entry.join("inblob"), b"").unwrap();
                fs::write(entry.join("generation"), "1\n").unwrap();
                mkfifo(&entry.join("outblob"));
                if provider == "sev_guest" {
                    fs::write(entry.join("auxblob"), b"certificate table").unwrap();
                }
                // provider comes last: its presence means the entry is complete.
                let name = if provider == "tdx_guest_v5" {
                    "tdx_guest"
                } else {
                    provider
                };
                fs::write(entry.join("provider"), format!("{name}\n")).unwrap();
                // Offsets written out independently of the attester: SNP report 0x50; TDX quote
                // v4 header (48) + TD report data (520); v5 adds a 6-byte body descriptor.
                let (offset, version) = match provider {
                    "sev_guest" => (0x50, 2u16),
                    "tdx_guest_v5" => (574, 5),
                    _ => (568, 4),
                };
                let generation = entry.join("generation");
                workers.push(thread::spawn(move || {
                    serve_fifo(
                        entry.join("outblob"),
                        entry.join("inblob"),
                        move |data| {
                            let mut blob = blob_with(data, offset, 1184);
                            blob[..2].copy_from_slice(&version.to_le_bytes());
                            blob
                        },
                        || {
                            if let Kernel::Interfering = kernel {
                                fs::write(&generation, "2\n").unwrap();
                            }
                        },
                    )
                }));
            }
            thread::sleep(Duration::from_millis(1));
        }
        for worker in workers {
            worker.join().unwrap();
        }
    });
    (dir, server)
}

fn report_data() -> [u8; 64] {
    let mut data = [0u8; 64];
    for (i, b) in data.iter_mut().enumerate() {
        *b = i as u8 ^ 0xA5;
    }
    data
}

#[test]
fn gramine_quote_carries_the_report_data() {
    let (dir, server) = fake_gramine("dcap\n");
    let attester = GramineAttester::open(dir.path()).unwrap();
    let evidence = attester.evidence(&report_data()).unwrap();
    server.join().unwrap();
    assert_eq!(evidence.tee, TeeKind::Sgx);
    assert_eq!(&evidence.quote[368..432], &report_data()[..]);
    assert_eq!(
        fs::read(dir.path().join("user_report_data")).unwrap(),
        report_data()
    );
}

#[test]
fn gramine_without_dcap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("attestation_type"), "none").unwrap();
    let err = GramineAttester::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::TeeUnavailable {
                tee: TeeKind::Sgx,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("dcap"), "{err}");
}

#[test]
fn gramine_stale_quote_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("attestation_type"), "dcap").unwrap();
    fs::write(dir.path().join("quote"), vec![0u8; 1024]).unwrap();
    let attester = GramineAttester::open(dir.path()).unwrap();
    let err = attester.evidence(&report_data()).unwrap_err();
    assert!(
        matches!(err, AttestError::MalformedEvidence { .. }),
        "{err}"
    );
}

#[test]
fn tsm_tdx_quote_carries_the_report_data() {
    // One entry for open()'s probe, one for the report.
    let (dir, server) = fake_tsm("tdx_guest", Kernel::Honest, 2);
    let attester = TsmAttester::open(dir.path(), TeeKind::Tdx).unwrap();
    let evidence = attester.evidence(&report_data()).unwrap();
    assert_eq!(evidence.tee, TeeKind::Tdx);
    assert_eq!(&evidence.quote[568..632], &report_data()[..]);
    assert!(evidence.certificates.is_none());
    drop(dir);
    let _ = server.join();
}

#[test]
fn tsm_snp_report_comes_with_its_certificates() {
    let (dir, server) = fake_tsm("sev_guest", Kernel::Honest, 2);
    let attester = TsmAttester::open(dir.path(), TeeKind::Snp).unwrap();
    let evidence = attester.evidence(&report_data()).unwrap();
    assert_eq!(evidence.tee, TeeKind::Snp);
    assert_eq!(&evidence.quote[0x50..0x90], &report_data()[..]);
    assert_eq!(
        evidence.certificates.as_deref(),
        Some(&b"certificate table"[..])
    );
    drop(dir);
    let _ = server.join();
}

#[test]
fn tsm_generation_change_is_refused() {
    let (dir, server) = fake_tsm("tdx_guest", Kernel::Interfering, 2);
    let attester = TsmAttester::open(dir.path(), TeeKind::Tdx).unwrap();
    let err = attester.evidence(&report_data()).unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::GenerationChanged {
                before: 1,
                after: 2
            }
        ),
        "{err}"
    );
    drop(dir);
    let _ = server.join();
}

#[test]
fn tsm_of_another_tee_is_refused() {
    let (dir, server) = fake_tsm("tdx_guest", Kernel::Honest, 1);
    let err = TsmAttester::open(dir.path(), TeeKind::Snp).unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::WrongTee {
                expected: TeeKind::Snp,
                found: TeeKind::Tdx
            }
        ),
        "{err}"
    );
    drop(dir);
    let _ = server.join();
}

#[test]
fn auto_detects_the_tee_and_never_falls_back_to_sim() {
    let nowhere = tempfile::tempdir().unwrap();
    let missing = nowhere.path().join("missing");
    let paths = |gramine: &Path, tsm: &Path| AttesterPaths {
        gramine: gramine.to_path_buf(),
        tsm_report: tsm.to_path_buf(),
        sim_key: nowhere.path().join("sim.key"),
        sev_guest: nowhere.path().join("sev-guest"),
        tpm: nowhere.path().join("tpmrm0"),
        nsm: nowhere.path().join("nsm"),
        coco: Default::default(),
    };

    let err = attester::attester_for(TeeChoice::Auto, &paths(&missing, &missing)).unwrap_err();
    assert!(matches!(err, AttestError::NoTeeDetected), "{err}");
    assert!(
        !nowhere.path().join("sim.key").exists(),
        "auto must not create a SIM key"
    );

    let (gramine, server) = fake_gramine("dcap");
    let chosen = attester::attester_for(TeeChoice::Auto, &paths(gramine.path(), &missing)).unwrap();
    assert_eq!(chosen.tee(), TeeKind::Sgx);
    chosen.evidence(&report_data()).unwrap();
    server.join().unwrap();

    let (tsm, server) = fake_tsm("sev_guest", Kernel::Honest, 2);
    let chosen = attester::attester_for(TeeChoice::Auto, &paths(&missing, tsm.path())).unwrap();
    assert_eq!(chosen.tee(), TeeKind::Snp);
    drop(tsm);
    let _ = server.join();

    // An explicit SIM choice works, and is the only way to get SIM.
    let sim =
        attester::attester_for(TeeChoice::Kind(TeeKind::Sim), &paths(&missing, &missing)).unwrap();
    assert_eq!(sim.tee(), TeeKind::Sim);
}

#[test]
fn explicit_tee_without_its_interface_is_refused() {
    let nowhere = tempfile::tempdir().unwrap();
    let paths = AttesterPaths {
        gramine: nowhere.path().join("a"),
        tsm_report: nowhere.path().join("b"),
        sim_key: nowhere.path().join("sim.key"),
        sev_guest: nowhere.path().join("sev-guest"),
        tpm: nowhere.path().join("tpmrm0"),
        nsm: nowhere.path().join("nsm"),
        coco: Default::default(),
    };
    for tee in [TeeKind::Sgx, TeeKind::Tdx, TeeKind::Snp] {
        let err = attester::attester_for(TeeChoice::Kind(tee), &paths).unwrap_err();
        assert!(
            matches!(err, AttestError::TeeUnavailable { tee: t, .. } if t == tee),
            "{err}"
        );
    }
}

#[test]
fn tsm_tdx_quote_v5_carries_the_report_data_after_its_body_descriptor() {
    let (dir, server) = fake_tsm("tdx_guest_v5", Kernel::Honest, 2);
    let attester = TsmAttester::open(dir.path(), TeeKind::Tdx).unwrap();
    let evidence = attester.evidence(&report_data()).unwrap();
    assert_eq!(&evidence.quote[..2], &[5, 0]);
    assert_eq!(&evidence.quote[574..638], &report_data()[..]);
    drop(dir);
    let _ = server.join();
}
