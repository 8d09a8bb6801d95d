//! Where collateral comes from, configured the same way for every verifier: the flags and
//! environment of the clients and the KBS ([`CollateralArgs`]), and the `[collateral]` table of
//! `kbs.toml` ([`CollateralSection`]), both made into one
//! [`adyton_attest::provider::ProviderConfig`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use adyton_attest::collateral::Collateral;
use adyton_attest::gpu::GpuVerifier;
use adyton_attest::pccs::FetchOptions;
use adyton_attest::provider::ProviderConfig;
use anyhow::{Context, Result};
use clap::Args;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::files::read_limited;

/// The environment variable naming a collateral bundle file.
pub const COLLATERAL_ENV: &str = "ADYTON_COLLATERAL";
/// The environment variable naming a PCCS or Intel's PCS.
pub const PCCS_URL_ENV: &str = "ADYTON_PCCS_URL";
/// The environment variable naming AMD's KDS or a mirror.
pub const KDS_URL_ENV: &str = "ADYTON_KDS_URL";

/// Largest bundle or CA file read.
const MAX_FILE_LEN: u64 = 16 << 20;

/// The flags (and environment variables) that say where collateral comes from.
#[derive(Debug, Clone, Default, Args)]
pub struct CollateralArgs {
    /// Collateral bundle file (or DCAP collateral JSON) for SGX, TDX and SNP evidence; with a
    /// network source too, used when that source fails
    #[arg(long, value_name = "FILE", env = COLLATERAL_ENV)]
    pub collateral: Option<PathBuf>,

    /// PCCS or Intel PCS (API v4) to fetch SGX and TDX collateral from, e.g.
    /// <https://api.trustedservices.intel.com> or <https://pccs.example:8081>
    #[arg(long, value_name = "URL", env = PCCS_URL_ENV)]
    pub pccs_url: Option<String>,

    /// AMD KDS (or a mirror) to fetch SNP VCEKs from, e.g. <https://kdsintf.amd.com>; not needed
    /// when the evidence carries its VCEK
    #[arg(long, value_name = "URL", env = KDS_URL_ENV)]
    pub kds_url: Option<String>,

    /// Keep fetched collateral in this directory too, for restarts without network
    #[arg(long, value_name = "DIR")]
    pub collateral_cache_dir: Option<PathBuf>,

    /// PEM CA certificates for a PCCS or KDS mirror with a private CA (replace the web roots)
    #[arg(long, value_name = "FILE")]
    pub pccs_ca_file: Option<PathBuf>,
}

/// The environment variable naming a directory of NVIDIA reference integrity manifests.
pub const GPU_RIMS_ENV: &str = "ADYTON_GPU_RIMS";

/// How a client verifies the NVIDIA GPUs attached to evidence (under a policy with
/// `[nvidia_gpu]`): beside the collateral flags, since RIMs are the GPUs' collateral.
#[derive(Debug, Clone, Default, Args)]
pub struct GpuRimArgs {
    /// Directory of NVIDIA reference integrity manifests (*.xml, *.swidtag, as NVIDIA's RIM
    /// service serves them) for GPUs attached to evidence under a policy with [nvidia_gpu]; each
    /// is verified against NVIDIA's RIM root when used. Without it, GPU evidence must carry its
    /// RIMs
    #[arg(long, value_name = "DIR", env = GPU_RIMS_ENV)]
    pub gpu_rims: Option<PathBuf>,
}

impl GpuRimArgs {
    /// A GPU verifier with NVIDIA's pinned roots, the RIMs of the directory, and `extra` RIMs
    /// (signed XML, each verified when used like the directory's).
    pub fn verifier(&self, extra: Vec<Vec<u8>>) -> Result<GpuVerifier> {
        let mut verifier = GpuVerifier::new().context("cannot use NVIDIA's pinned roots")?;
        if let Some(dir) = &self.gpu_rims {
            verifier = verifier
                .with_rim_dir(dir)
                .with_context(|| format!("cannot read the GPU RIMs in {}", dir.display()))?;
        }
        verifier.with_rims(extra).context("cannot use the GPU RIMs")
    }
}

/// `[collateral]` in a configuration file. Every key is optional; flags override them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollateralSection {
    /// A bundle file.
    pub bundle: Option<PathBuf>,
    /// A PCCS or Intel's PCS.
    pub pccs_url: Option<String>,
    /// AMD's KDS or a mirror.
    pub kds_url: Option<String>,
    /// Where fetched collateral is kept too.
    pub cache_dir: Option<PathBuf>,
    /// PEM CA certificates for a PCCS with a private CA.
    pub ca_file: Option<PathBuf>,
    /// How long after its expiry collateral is still accepted (reported in the claims); none by
    /// default.
    pub grace_period_secs: Option<u64>,
    /// Time allowed to connect to the source.
    pub connect_timeout_secs: Option<u64>,
    /// Time allowed for each read from the source.
    pub read_timeout_secs: Option<u64>,
    /// How long a fetched entry is used at most before it is fetched again.
    pub max_age_secs: Option<u64>,
    /// How long before its `nextUpdate` an entry is fetched again.
    pub refresh_ahead_secs: Option<u64>,
}

/// The `collateral` key of a configuration file: a bundle file's path (the older form), or a
/// `[collateral]` table.
#[derive(Debug, Clone)]
pub enum CollateralSetting {
    /// `collateral = "FILE"`.
    File(PathBuf),
    /// `[collateral]`.
    Table(CollateralSection),
}

impl CollateralSetting {
    /// As a table: a file is `bundle = FILE`.
    pub fn into_section(self) -> CollateralSection {
        match self {
            CollateralSetting::File(path) => CollateralSection {
                bundle: Some(path),
                ..CollateralSection::default()
            },
            CollateralSetting::Table(section) => section,
        }
    }
}

impl<'de> Deserialize<'de> for CollateralSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SettingVisitor;

        impl<'de> Visitor<'de> for SettingVisitor {
            type Value = CollateralSetting;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a bundle file's path or a [collateral] table")
            }

            fn visit_str<E: de::Error>(self, path: &str) -> Result<Self::Value, E> {
                Ok(CollateralSetting::File(PathBuf::from(path)))
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
                // Through the table's own Deserialize, so that an unknown key is named.
                CollateralSection::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(CollateralSetting::Table)
            }
        }

        deserializer.deserialize_any(SettingVisitor)
    }
}

impl CollateralArgs {
    /// Whether any flag (or its environment variable) was given.
    pub fn is_set(&self) -> bool {
        self.collateral.is_some()
            || self.pccs_url.is_some()
            || self.kds_url.is_some()
            || self.collateral_cache_dir.is_some()
            || self.pccs_ca_file.is_some()
    }

    /// The provider's settings from these flags alone.
    pub fn provider_config(&self) -> Result<ProviderConfig> {
        resolve(self, None, Path::new(""), "the command line")
    }
}

/// The provider's settings: `section` (from the file `source`, its relative paths relative to
/// `base`), each value overridden by the flag that names it. Files are read now, so that a
/// missing one is found at start.
pub fn resolve(
    args: &CollateralArgs,
    section: Option<&CollateralSection>,
    base: &Path,
    source: &str,
) -> Result<ProviderConfig> {
    let empty = CollateralSection::default();
    let section = section.unwrap_or(&empty);
    let rel = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        }
    };
    let bundle = args.collateral.clone().or(section.bundle.as_ref().map(rel));
    let pccs_url = args.pccs_url.clone().or(section.pccs_url.clone());
    let kds_url = args.kds_url.clone().or(section.kds_url.clone());
    let cache_dir = args
        .collateral_cache_dir
        .clone()
        .or(section.cache_dir.as_ref().map(rel));
    let ca_file = args
        .pccs_ca_file
        .clone()
        .or(section.ca_file.as_ref().map(rel));

    let mut options = FetchOptions::default();
    let secs = |value: Option<u64>, default: Duration, key: &str| -> Result<Duration> {
        match value {
            Some(0) => anyhow::bail!("{source}: [collateral] {key} must be at least 1"),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(default),
        }
    };
    let connect = secs(
        section.connect_timeout_secs,
        options.connect_timeout,
        "connect_timeout_secs",
    )?;
    let read = secs(
        section.read_timeout_secs,
        options.read_timeout,
        "read_timeout_secs",
    )?;
    options = options.with_timeouts(connect, read);
    if let Some(max_age) = section.max_age_secs {
        options = options.with_max_age(Some(secs(Some(max_age), Duration::ZERO, "max_age_secs")?));
    }
    if let Some(ahead) = section.refresh_ahead_secs {
        options = options.with_refresh_ahead(Duration::from_secs(ahead));
    }
    if let Some(dir) = cache_dir {
        options = options.with_cache_dir(dir);
    }
    if let Some(path) = &ca_file {
        let pem = read_limited(path, MAX_FILE_LEN, "the collateral source's CA file")?;
        options = options.with_ca_certificates_pem(pem.to_vec());
    }
    if ca_file.is_some() && pccs_url.is_none() && kds_url.is_none() {
        anyhow::bail!(
            "{source}: a CA file for the collateral source is set, but no PCCS or KDS URL"
        );
    }

    let mut config = ProviderConfig::new()
        .with_fetch_options(options)
        .with_grace_period(section.grace_period_secs.map(Duration::from_secs));
    if let Some(path) = bundle {
        let bytes = read_limited(&path, MAX_FILE_LEN, "the collateral file")?;
        let collateral = Collateral::from_json(&bytes)
            .with_context(|| format!("cannot use the collateral file {}", path.display()))?;
        config = config.with_bundle(collateral, path.display().to_string());
    }
    if let Some(url) = pccs_url {
        config = config.with_pccs_url(url);
    }
    if let Some(url) = kds_url {
        config = config.with_kds_url(url);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct File {
        collateral: Option<CollateralSetting>,
    }

    #[test]
    fn the_key_is_a_path_or_a_table_and_unknown_table_keys_are_named() {
        let file: File = toml::from_str("collateral = \"c.json\"\n").unwrap();
        let section = file.collateral.unwrap().into_section();
        assert_eq!(section.bundle, Some(PathBuf::from("c.json")));

        let file: File = toml::from_str(
            "[collateral]\npccs_url = \"https://pccs.example\"\ngrace_period_secs = 3600\n",
        )
        .unwrap();
        let section = file.collateral.unwrap().into_section();
        assert_eq!(section.pccs_url.as_deref(), Some("https://pccs.example"));
        assert_eq!(section.grace_period_secs, Some(3600));

        let err = toml::from_str::<File>("[collateral]\npccs = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `pccs`"), "{err}");
        let err = toml::from_str::<File>("collateral = 3\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("a bundle file's path or a [collateral] table"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_the_file_and_bad_values_are_refused() {
        let section = CollateralSection {
            pccs_url: Some("https://file.example".into()),
            kds_url: Some("https://kds.example".into()),
            ..CollateralSection::default()
        };
        let args = CollateralArgs {
            pccs_url: Some("https://flag.example".into()),
            ..CollateralArgs::default()
        };
        let config = resolve(&args, Some(&section), Path::new("/etc"), "kbs.toml").unwrap();
        assert_eq!(config.pccs_url.as_deref(), Some("https://flag.example"));
        assert_eq!(config.kds_url.as_deref(), Some("https://kds.example"));

        let zero = CollateralSection {
            read_timeout_secs: Some(0),
            ..CollateralSection::default()
        };
        let err = resolve(
            &CollateralArgs::default(),
            Some(&zero),
            Path::new(""),
            "kbs.toml",
        );
        assert!(err.unwrap_err().to_string().contains("read_timeout_secs"));

        let missing = CollateralSection {
            bundle: Some("no-such-file.json".into()),
            ..CollateralSection::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(
            &CollateralArgs::default(),
            Some(&missing),
            dir.path(),
            "kbs.toml",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("no-such-file.json"), "{err:#}");
    }
}
