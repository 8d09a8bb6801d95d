//! Decrypt throughput of envelopes v1 and v2 against the raw AES-256-GCM speed of the same library
//! and against `openssl speed`, measured side by side in one run, on one thread.
//!
//! Run with `cargo bench -p adyton-envelope --bench throughput`. The model size defaults to 1 GiB;
//! set `ADYTON_BENCH_MIB` to change it. Each figure is the best of `ADYTON_BENCH_ROUNDS` (default 3)
//! rounds. GB/s means 10^9 bytes per second, as `openssl speed` counts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use adyton_envelope::v2::{self, EncryptOptions, HashCheck};
use adyton_envelope::{v1, Aes256Key};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::digest::{Context, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

const MIB: usize = 1 << 20;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Best wall time of `rounds` runs of `f`.
fn best_of(rounds: usize, mut f: impl FnMut()) -> Duration {
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn gbps(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e9
}

/// Peak resident set size of this process since the last reset, in bytes.
fn peak_rss() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the peak resident set size (Linux `clear_refs`, value 5).
fn reset_peak_rss() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Runs `openssl speed` for AES-256-GCM decryption on blocks of `bytes`; returns GB/s.
fn openssl_speed(bytes: usize) -> Option<f64> {
    let output = Command::new("openssl")
        .args([
            "speed",
            "-evp",
            "aes-256-gcm",
            "-decrypt",
            "-seconds",
            "3",
            "-bytes",
        ])
        .arg(bytes.to_string())
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The last line reads "AES-256-GCM  2426937.34k": thousands of bytes per second.
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.to_lowercase().starts_with("aes-256-gcm"))?;
    let value = line.split_whitespace().last()?.trim_end_matches('k');
    value.parse::<f64>().ok().map(|k| k * 1000.0 / 1e9)
}

fn write_random_file(path: &Path, len: usize) -> [u8; 32] {
    let rng = SystemRandom::new();
    let mut buf = vec![0u8; MIB];
    let mut out = BufWriter::new(File::create(path).unwrap());
    let mut hasher = Context::new(&SHA256);
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB);
        rng.fill(&mut buf[..n]).unwrap();
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    out.flush().unwrap();
    let mut hash = [0u8; 32];
    hash.copy_from_slice(hasher.finish().as_ref());
    hash
}

struct Row {
    name: &'static str,
    rate: f64,
    note: String,
}

fn main() {
    let mib = env_number("ADYTON_BENCH_MIB", 1024);
    let rounds = env_number("ADYTON_BENCH_ROUNDS", 3).max(1);
    let len = mib * MIB;
    let dir = tempfile::tempdir().unwrap();
    let plain_path = dir.path().join("model.bin");
    let v2_path = dir.path().join("model.v2");
    let key = Aes256Key::generate().unwrap();

    eprintln!(
        "preparing a {mib} MiB random model in {}",
        dir.path().display()
    );
    let sha256 = write_random_file(&plain_path, len);
    let chunk_kib = env_number(
        "ADYTON_BENCH_CHUNK_KIB",
        v2::DEFAULT_CHUNK_SIZE as usize / 1024,
    );
    let options = EncryptOptions {
        chunk_size: (chunk_kib * 1024) as u32,
        ..EncryptOptions::default()
    };
    let header = options.header_for(len as u64, sha256).unwrap();
    let encrypt_time = best_of(rounds, || {
        let mut input = BufReader::with_capacity(MIB, File::open(&plain_path).unwrap());
        v2::encrypt(&key, header.clone(), &mut input, io::sink()).unwrap();
    });
    {
        let mut input = BufReader::with_capacity(MIB, File::open(&plain_path).unwrap());
        let out = BufWriter::with_capacity(MIB, File::create(&v2_path).unwrap());
        v2::encrypt(&key, header.clone(), &mut input, out).unwrap();
    }

    let mut rows = Vec::new();
    rows.push(Row {
        name: "v2 encrypt, file to sink",
        rate: gbps(len, encrypt_time),
        note: "includes the writer's SHA-256 check".into(),
    });

    // The streaming decrypts run first, while nothing large has been allocated, so that the peak
    // resident set size measured around them is theirs.
    let rss_reset = reset_peak_rss();
    let v2_file = |check: HashCheck| {
        best_of(rounds, || {
            let input = File::open(&v2_path).unwrap();
            let written = v2::Decryptor::new(input, &key, check)
                .unwrap()
                .copy_to(&mut io::sink())
                .unwrap();
            assert_eq!(written as usize, len);
        })
    };
    let v2_aead = v2_file(HashCheck::Skip);
    let v2_hashed = v2_file(HashCheck::Verify);
    let v2_ahead_file = |check: HashCheck| {
        best_of(rounds, || {
            let input = File::open(&v2_path).unwrap();
            let written = v2::Decryptor::with_read_ahead(input, &key, check)
                .unwrap()
                .copy_to(&mut io::sink())
                .unwrap();
            assert_eq!(written as usize, len);
        })
    };
    let v2_ahead = v2_ahead_file(HashCheck::Skip);
    let v2_ahead_hashed = v2_ahead_file(HashCheck::Verify);
    let v2_peak = peak_rss();

    // In-memory measurements: v2 from a buffer, v1 in place, and the raw cipher on one buffer.
    let v2_bytes = fs::read(&v2_path).unwrap();
    let v2_memory = best_of(rounds, || {
        v2::Decryptor::new(&v2_bytes[..], &key, HashCheck::Skip)
            .unwrap()
            .copy_to(&mut io::sink())
            .unwrap();
    });
    drop(v2_bytes);

    let plain = fs::read(&plain_path).unwrap();
    let v1_bytes = v1::seal(&key, &plain).unwrap();
    drop(plain);
    let mut v1_time = Duration::MAX;
    for _ in 0..rounds {
        let copy = v1_bytes.clone();
        let start = Instant::now();
        let opened = v1::open_owned(&key, copy).unwrap();
        v1_time = v1_time.min(start.elapsed());
        assert_eq!(opened.len(), len);
    }
    drop(v1_bytes);

    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.expose_secret()).unwrap());
    let mut buffer = vec![0u8; len];
    let tag = aead
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key([7; 12]),
            Aad::empty(),
            &mut buffer,
        )
        .unwrap();
    buffer.extend_from_slice(tag.as_ref());
    let mut raw_time = Duration::MAX;
    for _ in 0..rounds {
        let mut copy = buffer.clone();
        let start = Instant::now();
        aead.open_in_place(
            Nonce::assume_unique_for_key([7; 12]),
            Aad::empty(),
            &mut copy,
        )
        .unwrap();
        raw_time = raw_time.min(start.elapsed());
    }
    // A streaming reader must copy every ciphertext byte once into its chunk buffer (read() from
    // the page cache, or a copy out of a network buffer); this is that copy alone.
    let mut piece = vec![0u8; v2::DEFAULT_CHUNK_SIZE as usize];
    let copy_time = best_of(rounds, || {
        for source in buffer.chunks(piece.len()) {
            piece[..source.len()].copy_from_slice(source);
            std::hint::black_box(&piece);
        }
    });
    drop(buffer);
    let raw = gbps(len, raw_time);
    let copy = gbps(len, copy_time);

    rows.push(Row {
        name: "v2 decrypt, file to sink, read-ahead (AEAD only)",
        rate: gbps(len, v2_ahead),
        note: "streaming; reads overlap decryption".into(),
    });
    rows.push(Row {
        name: "v2 decrypt, file to sink, read-ahead (+ SHA-256)",
        rate: gbps(len, v2_ahead_hashed),
        note: "streaming; default: plaintext hash checked".into(),
    });
    rows.push(Row {
        name: "v2 decrypt, file to sink, one thread (AEAD only)",
        rate: gbps(len, v2_aead),
        note: "streaming; reads and decryption in turn".into(),
    });
    rows.push(Row {
        name: "v2 decrypt, file to sink, one thread (+ SHA-256)",
        rate: gbps(len, v2_hashed),
        note: "streaming; plaintext hash checked".into(),
    });
    rows.push(Row {
        name: "v2 decrypt, memory to sink (AEAD only)",
        rate: gbps(len, v2_memory),
        note: "streaming, no file reads".into(),
    });
    rows.push(Row {
        name: "v1 decrypt, in memory",
        rate: gbps(len, v1_time),
        note: "single shot, in place".into(),
    });
    rows.push(Row {
        name: "aws-lc-rs AES-256-GCM, one buffer",
        rate: raw,
        note: "raw library speed, one open_in_place".into(),
    });
    rows.push(Row {
        name: "memcpy in 1 MiB pieces",
        rate: copy,
        note: "the one copy any streaming reader makes".into(),
    });
    rows.push(Row {
        name: "bound: raw decrypt + that copy",
        rate: 1.0 / (1.0 / raw + 1.0 / copy),
        note: "the most a one-thread streaming decrypt can reach".into(),
    });
    let openssl_16k = openssl_speed(16 * 1024);
    let openssl_1m = openssl_speed(MIB);
    for (name, rate) in [
        ("openssl speed, 16 KiB blocks", openssl_16k),
        ("openssl speed, 1 MiB blocks", openssl_1m),
    ] {
        match rate {
            Some(rate) => rows.push(Row {
                name,
                rate,
                note: "openssl speed -evp aes-256-gcm -decrypt".into(),
            }),
            None => eprintln!("{name}: openssl not available"),
        }
    }

    println!();
    println!("Envelope decrypt throughput, one thread, {mib} MiB model, best of {rounds}");
    println!();
    println!("| measurement | GB/s | % of raw library | note |");
    println!("| --- | ---: | ---: | --- |");
    for row in &rows {
        println!(
            "| {} | {:.2} | {:.0}% | {} |",
            row.name,
            row.rate,
            100.0 * row.rate / raw,
            row.note
        );
    }
    println!();
    let mib_of = |b: Option<u64>| {
        b.map_or("unknown".into(), |b| {
            format!("{:.1} MiB", b as f64 / MIB as f64)
        })
    };
    println!(
        "peak RSS of the process during the four v2 file decrypts: {}{}",
        mib_of(v2_peak),
        if rss_reset {
            ""
        } else {
            " [could not reset the peak; figure includes set-up]"
        }
    );
    println!();
    println!("Targets:");
    let v2_share = gbps(len, v2_ahead) / raw;
    println!(
        "- v2 streaming decrypt (file, read-ahead, AEAD only) >= 85% of the library's raw speed: {:.0}% -> {}",
        100.0 * v2_share,
        verdict(v2_share >= 0.85)
    );
    if let Some(reference) = openssl_16k.into_iter().chain(openssl_1m).reduce(f64::max) {
        let share = raw / reference;
        println!(
            "- library >= 80% of openssl's speed: {:.0}% of {reference:.2} GB/s -> {}",
            100.0 * share,
            verdict(share >= 0.80)
        );
    }
    if let Some(peak) = v2_peak {
        println!(
            "- peak memory while decrypting v2 < 64 MiB: {} -> {}",
            mib_of(Some(peak)),
            verdict(peak < 64 * MIB as u64)
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}
