//! GPU attesters: a GPU's report over a 32-byte nonce, and its certificate chain.
//!
//! # NVML
//!
//! On a confidential VM, the report and the chain come from NVIDIA's management library:
//! `nvmlDeviceGetConfComputeGpuAttestationReport` (with the nonce) and
//! `nvmlDeviceGetConfComputeGpuCertificate` (its attestation certificate chain). With the `nvml`
//! feature, [`NvmlGpuAttester`] calls them through `nvml-wrapper`'s safe API (0.13 has both), so
//! this crate keeps `#![forbid(unsafe_code)]`; the library is loaded at run time and its absence
//! is [`AttestError::TeeUnavailable`]. It refuses to report while NVML says confidential
//! computing is not on, in production mode, and accepting work
//! (`check_confidential_compute_status`). `scripts/test` compiles it (clippy with the feature); it
//! has run on no GPU: no machine of this project has one.
//!
//! # Fake
//!
//! With the `gpu-fake` feature (and in this crate's tests), [`FakeGpuAttester`] signs SPDM
//! reports with a P-384 key under a test root it makes, and [`FakeRimSigner`] signs RIMs under
//! another test root; verifiers accept them only through
//! [`super::GpuVerifier::with_test_roots`].

use crate::error::Result;

use super::spdm::NONCE_LEN;
use super::GpuEvidence;

/// Produces GPU evidence.
pub trait GpuAttester: Send + Sync + std::fmt::Debug {
    /// How many GPUs there are.
    fn count(&self) -> Result<u32>;

    /// GPU `index`'s report over `nonce`, with its certificate chain and any RIMs to carry.
    fn evidence(&self, index: u32, nonce: &[u8; NONCE_LEN]) -> Result<GpuEvidence>;
}

#[cfg(any(test, feature = "gpu-fake"))]
pub use fake::{FakeGpuAttester, FakeRimSigner};

#[cfg(feature = "nvml")]
pub use nvml::NvmlGpuAttester;

#[cfg(feature = "nvml")]
mod nvml {
    use nvml_wrapper::Nvml;

    use super::{GpuAttester, GpuEvidence, NONCE_LEN};
    use crate::error::{AttestError, Result};
    use crate::evidence::TeeKind;

    /// GPUs through NVIDIA's management library.
    pub struct NvmlGpuAttester {
        nvml: Nvml,
    }

    impl std::fmt::Debug for NvmlGpuAttester {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("NvmlGpuAttester").finish_non_exhaustive()
        }
    }

    // GPUs are evidence attached to a CPU TEE's; the error names the CPU TEE kind it is for
    // nowhere, so SIM stands for "no TEE of its own" in `TeeUnavailable`.
    fn unavailable(reason: String) -> AttestError {
        AttestError::TeeUnavailable {
            tee: TeeKind::Sim,
            reason: format!("NVIDIA GPU: {reason}"),
        }
    }

    impl NvmlGpuAttester {
        /// Loads and initialises NVML.
        pub fn open() -> Result<Self> {
            let nvml = Nvml::init().map_err(|e| unavailable(format!("NVML: {e}")))?;
            Ok(Self { nvml })
        }
    }

    impl GpuAttester for NvmlGpuAttester {
        fn count(&self) -> Result<u32> {
            self.nvml
                .device_count()
                .map_err(|e| unavailable(format!("device count: {e}")))
        }

        fn evidence(&self, index: u32, nonce: &[u8; NONCE_LEN]) -> Result<GpuEvidence> {
            let device = self
                .nvml
                .device_by_index(index)
                .map_err(|e| unavailable(format!("GPU {index}: {e}")))?;
            let ready = device
                .check_confidential_compute_status()
                .map_err(|e| unavailable(format!("GPU {index}: CC status: {e}")))?;
            if !ready {
                return Err(unavailable(format!(
                    "GPU {index}: confidential computing is not on, in production mode and \
                     accepting work"
                )));
            }
            let report = device
                .confidential_compute_gpu_attestation_report(*nonce)
                .map_err(|e| unavailable(format!("GPU {index}: attestation report: {e}")))?;
            let certificate = device
                .confidential_compute_gpu_certificate()
                .map_err(|e| unavailable(format!("GPU {index}: certificate chain: {e}")))?;
            Ok(GpuEvidence {
                report: report.attestation_report,
                certificates: certificate.attestation_cert_chain,
                rims: Vec::new(),
            })
        }
    }
}

#[cfg(any(test, feature = "gpu-fake"))]
mod fake {
    use aws_lc_rs::digest::{digest, SHA384};
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P384_SHA384_FIXED_SIGNING};
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P384_SHA384,
    };
    use rustls_pki_types::PrivatePkcs8KeyDer;

    use super::{GpuAttester, GpuEvidence, NONCE_LEN};
    use crate::error::{AttestError, Result};
    use crate::gpu::xml::{self, Scope};

    fn rcgen_error(e: rcgen::Error) -> AttestError {
        AttestError::malformed(format!("test certificate: {e}"))
    }

    /// A P-384 key usable both by rcgen (certificates) and aws-lc-rs (raw `r || s` signatures).
    struct TestKey {
        signing: EcdsaKeyPair,
        rcgen: KeyPair,
    }

    impl TestKey {
        fn generate() -> Result<Self> {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
                .map_err(|_| AttestError::Crypto("generating a P-384 key"))?;
            let signing =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref())
                    .map_err(|_| AttestError::Crypto("reading a P-384 key"))?;
            let rcgen = KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(pkcs8.as_ref()),
                &PKCS_ECDSA_P384_SHA384,
            )
            .map_err(rcgen_error)?;
            Ok(Self { signing, rcgen })
        }

        fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
            let rng = SystemRandom::new();
            self.signing
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| AttestError::Crypto("signing"))
        }
    }

    fn params(cn: &str, ca: bool, validity: Option<(i32, i32)>) -> Result<CertificateParams> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Adyton test");
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let (from, to) = validity.unwrap_or((2020, 2090));
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
        Ok(params)
    }

    /// A root and a leaf under it; returns (root PEM, leaf PEM, leaf key).
    fn root_and_leaf(
        root_cn: &str,
        leaf_cn: &str,
        leaf_validity: Option<(i32, i32)>,
    ) -> Result<(String, String, TestKey)> {
        let root_key = TestKey::generate()?;
        let root_params = params(root_cn, true, None)?;
        let root = root_params
            .self_signed(&root_key.rcgen)
            .map_err(rcgen_error)?;
        let issuer = Issuer::new(root_params, &root_key.rcgen);
        let leaf_key = TestKey::generate()?;
        let leaf = params(leaf_cn, false, leaf_validity)?
            .signed_by(&leaf_key.rcgen, &issuer)
            .map_err(rcgen_error)?;
        Ok((root.pem(), leaf.pem(), leaf_key))
    }

    /// A GPU that signs SPDM reports under a test root: tests only.
    pub struct FakeGpuAttester {
        gpus: u32,
        root_pem: String,
        device_pem: String,
        key: TestKey,
        measurements: Vec<[u8; 48]>,
        driver_version: String,
        vbios: [u8; 8],
        rims: Vec<Vec<u8>>,
    }

    impl std::fmt::Debug for FakeGpuAttester {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FakeGpuAttester")
                .field("gpus", &self.gpus)
                .finish_non_exhaustive()
        }
    }

    impl FakeGpuAttester {
        /// `gpus` Hopper GPUs (product GH100) whose 64 measurements are `measurements`, with
        /// driver 550.144.03 and VBIOS 96.00.5E.00.01, under a fresh test root.
        pub fn new(gpus: u32, measurements: Vec<[u8; 48]>) -> Result<Self> {
            Self::with_validity(gpus, measurements, None)
        }

        /// As [`FakeGpuAttester::new`], with the device certificate valid from January 1st of
        /// the first year to January 1st of the second.
        pub fn with_validity(
            gpus: u32,
            measurements: Vec<[u8; 48]>,
            validity: Option<(i32, i32)>,
        ) -> Result<Self> {
            let (root_pem, device_pem, key) =
                root_and_leaf("Adyton test GPU root", "GH100 A01 GSP FMC LF", validity)?;
            Ok(Self {
                gpus,
                root_pem,
                device_pem,
                key,
                measurements,
                driver_version: "550.144.03".into(),
                vbios: [0x00, 0x5E, 0x00, 0x96, 0x01, 0, 0, 0],
                rims: Vec::new(),
            })
        }

        /// Carries `rims` with every GPU's evidence.
        pub fn carrying(mut self, rims: Vec<Vec<u8>>) -> Self {
            self.rims = rims;
            self
        }

        /// The test root to give [`crate::gpu::GpuVerifier::with_test_roots`].
        pub fn root_pem(&self) -> &str {
            &self.root_pem
        }

        /// The driver version reported.
        pub fn driver_version(&self) -> &str {
            &self.driver_version
        }

        /// A signed report over `nonce`, laid out as NVIDIA's (see [`crate::gpu::spdm`]).
        pub fn report(&self, nonce: &[u8; NONCE_LEN]) -> Result<Vec<u8>> {
            let mut out = vec![0x11, 0xE0, 0x01, 0xFF];
            out.extend_from_slice(nonce);
            out.push(0);
            out.extend_from_slice(&[0x11, 0x60, 0x00, 0x00]);
            let count = u8::try_from(self.measurements.len())
                .map_err(|_| AttestError::malformed("too many fake measurements"))?;
            out.push(count);
            let record_len = self.measurements.len() * (4 + 3 + 48);
            out.extend_from_slice(&u32::try_from(record_len).unwrap_or(0).to_le_bytes()[..3]);
            for (i, value) in self.measurements.iter().enumerate() {
                out.push(u8::try_from(i + 1).unwrap_or(0));
                out.push(0x01);
                out.extend_from_slice(&51u16.to_le_bytes());
                out.push(0x01);
                out.extend_from_slice(&48u16.to_le_bytes());
                out.extend_from_slice(value);
            }
            out.extend_from_slice(digest(&SHA384, nonce).as_ref().get(..32).unwrap_or(&[]));
            let mut opaque = Vec::new();
            let mut field = |kind: u16, value: &[u8]| {
                opaque.extend_from_slice(&kind.to_le_bytes());
                opaque.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_le_bytes());
                opaque.extend_from_slice(value);
            };
            field(6, &self.vbios);
            field(15, b"882\0");
            field(17, b"1010\0");
            field(18, b"0200\0");
            let mut driver = self.driver_version.as_bytes().to_vec();
            driver.push(0);
            field(3, &driver);
            field(11, &[0x55]);
            out.extend_from_slice(&u16::try_from(opaque.len()).unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&opaque);
            let signature = self.key.sign(&out)?;
            out.extend_from_slice(&signature);
            Ok(out)
        }
    }

    impl GpuAttester for FakeGpuAttester {
        fn count(&self) -> Result<u32> {
            Ok(self.gpus)
        }

        fn evidence(&self, index: u32, nonce: &[u8; NONCE_LEN]) -> Result<GpuEvidence> {
            if index >= self.gpus {
                return Err(AttestError::malformed(format!("no GPU {index}")));
            }
            Ok(GpuEvidence {
                report: self.report(nonce)?,
                certificates: format!("{}{}", self.device_pem, self.root_pem).into_bytes(),
                rims: self.rims.clone(),
            })
        }
    }

    /// Signs RIMs (enveloped XMLDSig, ECDSA-SHA384, C14N 1.1) under a test root: tests only.
    pub struct FakeRimSigner {
        root_pem: String,
        signer_pem: String,
        key: TestKey,
    }

    impl std::fmt::Debug for FakeRimSigner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FakeRimSigner").finish_non_exhaustive()
        }
    }

    impl FakeRimSigner {
        /// A signer under a fresh test root.
        pub fn new() -> Result<Self> {
            let (root_pem, signer_pem, key) =
                root_and_leaf("Adyton test RIM root", "Adyton test RIM signer", None)?;
            Ok(Self {
                root_pem,
                signer_pem,
                key,
            })
        }

        /// The test root to give [`crate::gpu::GpuVerifier::with_test_roots`].
        pub fn root_pem(&self) -> &str {
            &self.root_pem
        }

        /// A signed RIM for `product` at `version` whose active indices are `active`
        /// (RIM index, value).
        pub fn rim(
            &self,
            product: &str,
            version: &str,
            active: &[(u8, [u8; 48])],
        ) -> Result<Vec<u8>> {
            let mut resources = String::new();
            for index in 0u8..64 {
                let value = active.iter().find(|(i, _)| *i == index);
                resources.push_str(&format!(
                    "\n        <ns0:Resource type=\"Measurement\" index=\"{index}\" active=\"{}\" \
                     alternatives=\"1\" ns2:Hash0=\"{}\" name=\"Measurement_{index}\" size=\"48\"/>",
                    if value.is_some() { "True" } else { "False" },
                    hex::encode(value.map(|(_, v)| *v).unwrap_or([0; 48]))
                ));
            }
            let body = format!(
                "<SoftwareIdentity xmlns=\"http://standards.iso.org/iso/19770/-2/2015/schema.xsd\" \
                 xmlns:ns0=\"http://standards.iso.org/iso/19770/-2/2015/schema.xsd\" \
                 xmlns:ns2=\"http://www.w3.org/2001/04/xmlenc#sha384\" name=\"{product}\" \
                 tagId=\"test\" version=\"1.0\">\n    <ns0:Meta colloquialVersion=\"{version}\" \
                 product=\"{product}\"/>\n    <ns0:Payload>{resources}\n    </ns0:Payload>\n"
            );
            let unsigned = format!("{body}</SoftwareIdentity>");
            let root = xml::parse(unsigned.as_bytes())?;
            let canonical = xml::canonicalize(&root, &Scope::new(), &|_, _| false)?;
            let digest_b64 = BASE64.encode(digest(&SHA384, &canonical));
            let signed_info = format!(
                "<ds:SignedInfo><ds:CanonicalizationMethod Algorithm=\"http://www.w3.org/2006/12/xml-c14n11\"/>\
                 <ds:SignatureMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384\"/>\
                 <ds:Reference URI=\"\"><ds:Transforms>\
                 <ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/>\
                 <ds:Transform Algorithm=\"http://www.w3.org/2006/12/xml-c14n11\"/></ds:Transforms>\
                 <ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#sha384\"/>\
                 <ds:DigestValue>{digest_b64}</ds:DigestValue></ds:Reference></ds:SignedInfo>"
            );
            // Canonicalise SignedInfo in its place, with the namespaces it inherits.
            let placeholder = format!(
                "{body}<ds:Signature xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\">{signed_info}</ds:Signature></SoftwareIdentity>"
            );
            let doc = xml::parse(placeholder.as_bytes())?;
            let doc_scope = doc.scope(&Scope::new());
            let signature = doc
                .elements()
                .find(|e| e.local_name() == "Signature")
                .ok_or_else(|| AttestError::malformed("no signature"))?;
            let sig_scope = signature.scope(&doc_scope);
            let info = signature
                .elements()
                .next()
                .ok_or_else(|| AttestError::malformed("no SignedInfo"))?;
            let canonical_info = xml::canonicalize(info, &sig_scope, &|_, _| false)?;
            let value = BASE64.encode(self.key.sign(&canonical_info)?);
            let cert_b64 = |pem: &str| -> String {
                pem.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>()
            };
            Ok(format!(
                "{body}<ds:Signature xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\">{signed_info}\
                 <ds:SignatureValue>{value}</ds:SignatureValue><ds:KeyInfo><ds:X509Data>\
                 <ds:X509Certificate>{}</ds:X509Certificate><ds:X509Certificate>{}</ds:X509Certificate>\
                 </ds:X509Data></ds:KeyInfo></ds:Signature></SoftwareIdentity>",
                cert_b64(&self.signer_pem),
                cert_b64(&self.root_pem)
            )
            .into_bytes())
        }

        /// The public key of the signer (to check the fake against aws-lc-rs).
        pub fn public_key(&self) -> Vec<u8> {
            self.key.signing.public_key().as_ref().to_vec()
        }
    }
}
