//! Key wrapping for the key broker's transfer protocol (`design.md`, "KBS key transfer").
//!
//! A TEE holds a transfer key pair of one of two kinds. The key broker generates a fresh symmetric
//! wrapping key (SWK), encrypts it to the TEE's public key, and seals the model key under the SWK
//! in the v1 envelope format. Only the holder of the private key can recover the model key.
//!
//! - RSA (CNAP's and Intel's form): the SWK is encrypted with RSA-OAEP (SHA-256 for the hash and
//!   for MGF1, empty label).
//! - EC P-384: the SWK is sealed with HPKE (RFC 9180) in base mode, suite DHKEM(P-384,
//!   HKDF-SHA384), HKDF-SHA384, AES-256-GCM, info [`HPKE_INFO`], empty aad. `wrapped_swk` is the
//!   encapsulated key (the sender's ephemeral point, uncompressed, 97 bytes) followed by the
//!   ciphertext and its tag (48 bytes). A P-384 key pair takes well under a millisecond to make,
//!   an RSA-3072 one hundreds.

use std::fmt;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    PublicEncryptingKey, PublicKey, PublicKeyComponents, OAEP_SHA256_MGF1SHA256,
};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use spki::der::asn1::BitStringRef;
use spki::der::{AnyRef, Decode, Encode};
use spki::{AlgorithmIdentifierRef, ObjectIdentifier, SubjectPublicKeyInfoRef};
use zeroize::Zeroizing;

use crate::error::{EnvelopeError, Result};
use crate::key::{Aes256Key, AES256_KEY_LEN};
use crate::v1;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits.
pub const MAX_RSA_BITS: usize = 4096;

/// The HPKE `info` of a P-384 transfer, binding the sealed SWK to this protocol.
pub const HPKE_INFO: &[u8] = b"adyton kbs transfer v1";
/// Length of an uncompressed P-384 point: 0x04, then X and Y of 48 bytes each.
pub const P384_POINT_LEN: usize = 97;
/// Length of `wrapped_swk` for a P-384 key: the encapsulated key, the sealed SWK and its tag.
pub const HPKE_WRAPPED_SWK_LEN: usize = P384_POINT_LEN + AES256_KEY_LEN + HPKE_TAG_LEN;
const HPKE_TAG_LEN: usize = 16;
/// Length of the input keying material a P-384 key pair is derived from (RFC 9180's `Nsk`).
const P384_IKM_LEN: usize = 48;

type HpkeKem = hpke::kem::DhP384HkdfSha384;
type HpkeKdf = hpke::kdf::HkdfSha384;
type HpkeAead = hpke::aead::AesGcm256;
type P384Public = <HpkeKem as hpke::Kem>::PublicKey;
// hpke's private key holds a p384::SecretKey, which zeroizes itself on drop.
type P384Private = <HpkeKem as hpke::Kem>::PrivateKey;

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const NAMED_CURVES: [(ObjectIdentifier, &str); 4] = [
    (ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7"), "P-256"),
    (SECP384R1, "P-384"),
    (ObjectIdentifier::new_unwrap("1.3.132.0.35"), "P-521"),
    (ObjectIdentifier::new_unwrap("1.3.132.0.10"), "secp256k1"),
];

/// The kind of transfer key pair a TEE makes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TransferKeyKind {
    /// EC P-384, the SWK sealed with HPKE: fast to make. Adyton's brokers take it; Intel's KBS
    /// does not.
    #[default]
    P384,
    /// RSA-3072, the SWK encrypted with RSA-OAEP-SHA256: what CNAP's and Intel's clients send.
    Rsa3072,
}

impl TransferKeyKind {
    /// Every kind, in the order a message listing them should give.
    pub const ALL: [TransferKeyKind; 2] = [TransferKeyKind::P384, TransferKeyKind::Rsa3072];

    /// The kind's name in configuration files: `p384` or `rsa-3072`.
    pub const fn name(self) -> &'static str {
        match self {
            TransferKeyKind::P384 => "p384",
            TransferKeyKind::Rsa3072 => "rsa-3072",
        }
    }

    /// The kind named `name` ([`TransferKeyKind::name`]), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl fmt::Display for TransferKeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a [`TeePublicKey`] is, for logs and checks. It names no key bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeeKeyAlgorithm {
    /// RSA with a modulus of `bits`.
    Rsa {
        /// Modulus length in bits.
        bits: usize,
    },
    /// EC P-384.
    P384,
}

impl fmt::Display for TeeKeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TeeKeyAlgorithm::Rsa { bits } => write!(f, "RSA-{bits}"),
            TeeKeyAlgorithm::P384 => f.write_str("EC P-384"),
        }
    }
}

/// Byte order of the modulus in Intel's raw public key form (`u32le exponent || modulus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModulusOrder {
    /// Big-endian modulus, as TDX, SNP and SIM clients send it.
    BigEndian,
    /// Little-endian modulus, as SGX enclaves produce it and Intel's KBS reads it.
    LittleEndian,
}

/// A TEE's public key (RSA or EC P-384), to which key material is wrapped.
#[derive(Clone)]
pub struct TeePublicKey {
    key: PublicKind,
    spki_der: Vec<u8>,
}

#[derive(Clone)]
enum PublicKind {
    Rsa(RsaPublic),
    P384(P384Public),
}

#[derive(Clone)]
struct RsaPublic {
    key: PublicEncryptingKey,
    modulus_be: Vec<u8>,
    exponent_be: Vec<u8>,
}

impl fmt::Debug for TeePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeePublicKey")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl TeePublicKey {
    /// Reads a DER SubjectPublicKeyInfo, the form the CNAP client sends: an RSA key
    /// (rsaEncryption) or an EC P-384 key (id-ecPublicKey, secp384r1, uncompressed point). Other
    /// curves and algorithms are refused, naming what they are.
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        let info = match SubjectPublicKeyInfoRef::from_der(der) {
            Ok(info) => info,
            // Whatever aws-lc-rs reads as an RSA key is accepted as before; the rest is refused
            // with its reason.
            Err(e) => {
                return Self::rsa_from_spki_der(der).map_err(|_| EnvelopeError::BadPublicKey {
                    reason: format!(
                        "not a DER SubjectPublicKeyInfo of an RSA or EC P-384 key ({e})"
                    ),
                })
            }
        };
        match info.algorithm.oid {
            RSA_ENCRYPTION => Self::rsa_from_spki_der(der),
            EC_PUBLIC_KEY => Self::p384_from_spki(&info),
            other => Err(EnvelopeError::BadPublicKey {
                reason: format!(
                    "algorithm {other} is not supported: a transfer key is RSA (rsaEncryption) or \
                     EC P-384 (id-ecPublicKey)"
                ),
            }),
        }
    }

    fn rsa_from_spki_der(der: &[u8]) -> Result<Self> {
        let key = PublicEncryptingKey::from_der(der).map_err(|e| EnvelopeError::BadPublicKey {
            reason: format!("not a DER SubjectPublicKeyInfo of an RSA key ({e})"),
        })?;
        let components = PublicKey::from_der(der).map_err(|e| EnvelopeError::BadPublicKey {
            reason: format!("RSA components unreadable ({e})"),
        })?;
        let modulus_be = components
            .modulus()
            .big_endian_without_leading_zero()
            .to_vec();
        let exponent_be = components
            .exponent()
            .big_endian_without_leading_zero()
            .to_vec();
        Self::checked_rsa(key, modulus_be, exponent_be)
    }

    fn p384_from_spki(info: &SubjectPublicKeyInfoRef<'_>) -> Result<Self> {
        let curve = info
            .algorithm
            .parameters_oid()
            .map_err(|_| EnvelopeError::BadPublicKey {
                reason: "an EC key's parameters must name its curve (namedCurve)".into(),
            })?;
        if curve != SECP384R1 {
            let name = NAMED_CURVES
                .iter()
                .find(|(oid, _)| *oid == curve)
                .map_or_else(|| format!("curve {curve}"), |(_, name)| (*name).to_owned());
            return Err(EnvelopeError::BadPublicKey {
                reason: format!("{name} is not supported: an EC transfer key is P-384"),
            });
        }
        let point =
            info.subject_public_key
                .as_bytes()
                .ok_or_else(|| EnvelopeError::BadPublicKey {
                    reason: "the EC point is not a whole number of bytes".into(),
                })?;
        Self::from_p384_point(point)
    }

    /// A P-384 key from its uncompressed point, checked to be on the curve.
    fn from_p384_point(point: &[u8]) -> Result<Self> {
        if point.len() != P384_POINT_LEN || point.first() != Some(&0x04) {
            return Err(EnvelopeError::BadPublicKey {
                reason: format!(
                    "a P-384 point must be uncompressed ({P384_POINT_LEN} bytes starting with \
                     0x04), found {} bytes",
                    point.len()
                ),
            });
        }
        let key = P384Public::from_bytes(point).map_err(|_| EnvelopeError::BadPublicKey {
            reason: "the EC point is not on the P-384 curve".into(),
        })?;
        let spki_der = p384_spki_der(point)?;
        Ok(Self {
            key: PublicKind::P384(key),
            spki_der,
        })
    }

    /// Reads Intel's raw form: a u32le exponent followed by the modulus in `order`. The raw form
    /// carries RSA keys only.
    pub fn from_raw(bytes: &[u8], order: ModulusOrder) -> Result<Self> {
        let (exponent, modulus) =
            bytes
                .split_at_checked(4)
                .ok_or_else(|| EnvelopeError::BadPublicKey {
                    reason: format!("raw form needs at least 4 bytes, found {}", bytes.len()),
                })?;
        let exponent = u32::from_le_bytes([exponent[0], exponent[1], exponent[2], exponent[3]]);
        if exponent < 3 || exponent % 2 == 0 {
            return Err(EnvelopeError::BadPublicKey {
                reason: format!("public exponent {exponent} is not an odd number of at least 3"),
            });
        }
        let mut modulus_be = modulus.to_vec();
        if order == ModulusOrder::LittleEndian {
            modulus_be.reverse();
        }
        let first_nonzero = modulus_be
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(modulus_be.len());
        modulus_be.drain(..first_nonzero);
        check_bits(bit_length(&modulus_be))?;
        let exponent_be = strip_leading_zeros(&exponent.to_be_bytes());
        let components = PublicKeyComponents {
            n: modulus_be.as_slice(),
            e: exponent_be.as_slice(),
        };
        let spki_der = AsDer::<PublicKeyX509Der>::as_der(&components)
            .map_err(|_| EnvelopeError::BadPublicKey {
                reason: "modulus and exponent do not form a valid RSA key".into(),
            })?
            .as_ref()
            .to_vec();
        let key =
            PublicEncryptingKey::from_der(&spki_der).map_err(|e| EnvelopeError::BadPublicKey {
                reason: format!("modulus and exponent do not form a valid RSA key ({e})"),
            })?;
        let mut public = Self::checked_rsa(key, modulus_be, exponent_be)?;
        public.spki_der = spki_der;
        Ok(public)
    }

    /// Reads a key broker's `user_data`: DER SubjectPublicKeyInfo (RSA or EC P-384) when it
    /// starts with a DER SEQUENCE tag, Intel's raw RSA form otherwise.
    ///
    /// The two cannot be confused: a raw key whose first byte is 0x30 would have an even public
    /// exponent, which no RSA key has.
    pub fn from_user_data(bytes: &[u8], raw_order: ModulusOrder) -> Result<Self> {
        match bytes.first() {
            Some(0x30) => Self::from_spki_der(bytes),
            Some(_) => Self::from_raw(bytes, raw_order),
            None => Err(EnvelopeError::BadPublicKey {
                reason: "empty".into(),
            }),
        }
    }

    fn checked_rsa(
        key: PublicEncryptingKey,
        modulus_be: Vec<u8>,
        exponent_be: Vec<u8>,
    ) -> Result<Self> {
        check_bits(key.key_size_bits())?;
        let spki_der = AsDer::<PublicKeyX509Der>::as_der(&key)
            .map_err(|_| EnvelopeError::Crypto("cannot encode an RSA public key"))?
            .as_ref()
            .to_vec();
        Ok(Self {
            key: PublicKind::Rsa(RsaPublic {
                key,
                modulus_be,
                exponent_be,
            }),
            spki_der,
        })
    }

    /// The key as DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The key's algorithm (and size, for RSA).
    pub fn algorithm(&self) -> TeeKeyAlgorithm {
        match &self.key {
            PublicKind::Rsa(rsa) => TeeKeyAlgorithm::Rsa {
                bits: rsa.key.key_size_bits(),
            },
            PublicKind::P384(_) => TeeKeyAlgorithm::P384,
        }
    }

    /// The key in Intel's raw form: u32le exponent, then the modulus in `order`, padded to the
    /// modulus's full byte length. An EC key has no raw form.
    pub fn to_raw(&self, order: ModulusOrder) -> Result<Vec<u8>> {
        let PublicKind::Rsa(rsa) = &self.key else {
            return Err(EnvelopeError::BadPublicKey {
                reason: "Intel's raw form carries RSA keys only".into(),
            });
        };
        let exponent = u32::try_from(be_to_u64(&rsa.exponent_be)).map_err(|_| {
            EnvelopeError::BadPublicKey {
                reason: "exponent does not fit the raw form's u32".into(),
            }
        })?;
        let mut out = exponent.to_le_bytes().to_vec();
        let mut modulus = rsa.modulus_be.clone();
        if order == ModulusOrder::LittleEndian {
            modulus.reverse();
        }
        out.extend_from_slice(&modulus);
        Ok(out)
    }

    /// Key size in bits: an RSA key's modulus length, 384 for a P-384 key.
    pub fn bits(&self) -> usize {
        match &self.key {
            PublicKind::Rsa(rsa) => rsa.key.key_size_bits(),
            PublicKind::P384(_) => 384,
        }
    }

    /// Encrypts a 32-byte symmetric key to this public key: RSA-OAEP-SHA256 (MGF1-SHA256, empty
    /// label) to an RSA key, HPKE (the module's suite) to a P-384 key.
    pub fn wrap_key(&self, key: &Aes256Key) -> Result<Vec<u8>> {
        match &self.key {
            PublicKind::Rsa(rsa) => rsa_wrap(&rsa.key, key),
            PublicKind::P384(public) => hpke_wrap(public, key),
        }
    }
}

fn rsa_wrap(public: &PublicEncryptingKey, key: &Aes256Key) -> Result<Vec<u8>> {
    let oaep = OaepPublicEncryptingKey::new(public.clone())
        .map_err(|_| EnvelopeError::Crypto("RSA-OAEP refused a validated public key"))?;
    let mut out = vec![0u8; oaep.ciphertext_size()];
    let len = oaep
        .encrypt(&OAEP_SHA256_MGF1SHA256, key.expose_secret(), &mut out, None)
        .map_err(|_| EnvelopeError::Crypto("RSA-OAEP encryption failed"))?
        .len();
    out.truncate(len);
    Ok(out)
}

/// HPKE base-mode single-shot seal of `key` to `public`: `enc || ciphertext || tag`.
fn hpke_wrap(public: &P384Public, key: &Aes256Key) -> Result<Vec<u8>> {
    let mut sealed = Zeroizing::new(key.expose_secret().to_vec());
    let (enc, tag) = hpke::single_shot_seal_in_place_detached::<HpkeAead, HpkeKdf, HpkeKem, _>(
        &OpModeS::Base,
        public,
        HPKE_INFO,
        &mut sealed,
        &[],
        &mut rand_core::OsRng,
    )
    .map_err(|_| EnvelopeError::Crypto("HPKE sealing to a validated P-384 key failed"))?;
    let mut out = Vec::with_capacity(HPKE_WRAPPED_SWK_LEN);
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&sealed);
    out.extend_from_slice(&tag.to_bytes());
    Ok(out)
}

/// Opens what [`hpke_wrap`] made. Every failure, a malformed layout included, is
/// [`EnvelopeError::UnwrapFailed`], as RSA-OAEP's is.
fn hpke_unwrap(private: &P384Private, wrapped: &[u8]) -> Result<Aes256Key> {
    if wrapped.len() != HPKE_WRAPPED_SWK_LEN {
        return Err(EnvelopeError::UnwrapFailed);
    }
    let (enc, rest) = wrapped.split_at(P384_POINT_LEN);
    let (ciphertext, tag) = rest.split_at(AES256_KEY_LEN);
    let enc = <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(enc)
        .map_err(|_| EnvelopeError::UnwrapFailed)?;
    let tag = hpke::aead::AeadTag::<HpkeAead>::from_bytes(tag)
        .map_err(|_| EnvelopeError::UnwrapFailed)?;
    let mut swk = Zeroizing::new(ciphertext.to_vec());
    hpke::single_shot_open_in_place_detached::<HpkeAead, HpkeKdf, HpkeKem>(
        &OpModeR::Base,
        private,
        &enc,
        HPKE_INFO,
        &mut swk,
        &[],
        &tag,
    )
    .map_err(|_| EnvelopeError::UnwrapFailed)?;
    Aes256Key::from_slice(&swk)
}

/// The DER SubjectPublicKeyInfo of a P-384 point: id-ecPublicKey with the namedCurve secp384r1.
fn p384_spki_der(point: &[u8]) -> Result<Vec<u8>> {
    let encode_failed = || EnvelopeError::Crypto("cannot encode a P-384 public key");
    let info = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef {
            oid: EC_PUBLIC_KEY,
            parameters: Some(AnyRef::from(&SECP384R1)),
        },
        subject_public_key: BitStringRef::from_bytes(point).map_err(|_| encode_failed())?,
    };
    info.to_der().map_err(|_| encode_failed())
}

/// A TEE's transfer key pair (RSA or EC P-384). The private key never leaves it in plaintext;
/// `Debug` is redacted.
pub struct TeeKeyPair {
    private: PrivateKind,
}

enum PrivateKind {
    Rsa(PrivateDecryptingKey),
    P384 {
        private: P384Private,
        public: P384Public,
    },
}

impl fmt::Debug for TeeKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.private {
            PrivateKind::Rsa(private) => {
                write!(
                    f,
                    "TeeKeyPair({} bits, <redacted>)",
                    private.key_size_bits()
                )
            }
            PrivateKind::P384 { .. } => f.write_str("TeeKeyPair(P-384, <redacted>)"),
        }
    }
}

impl TeeKeyPair {
    /// Generates an RSA key pair of `bits` (2048, 3072 or 4096).
    pub fn generate(bits: usize) -> Result<Self> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            other => return Err(EnvelopeError::UnsupportedKeySize { bits: other }),
        };
        let private = PrivateDecryptingKey::generate(size)
            .map_err(|_| EnvelopeError::Crypto("RSA key generation failed"))?;
        Ok(Self {
            private: PrivateKind::Rsa(private),
        })
    }

    /// Generates a key pair of `kind`.
    pub fn generate_kind(kind: TransferKeyKind) -> Result<Self> {
        match kind {
            TransferKeyKind::Rsa3072 => Self::generate(3072),
            TransferKeyKind::P384 => Self::generate_p384(),
        }
    }

    /// A P-384 key pair, derived (RFC 9180's DeriveKeyPair) from fresh random keying material,
    /// which is how RFC 9180 defines GenerateKeyPair.
    fn generate_p384() -> Result<Self> {
        let mut ikm = Zeroizing::new([0u8; P384_IKM_LEN]);
        aws_lc_rs::rand::fill(ikm.as_mut()).map_err(|_| EnvelopeError::RandomSource)?;
        let (private, public) = HpkeKem::derive_keypair(ikm.as_ref());
        Ok(Self {
            private: PrivateKind::P384 { private, public },
        })
    }

    /// The kind of a key pair [`TeeKeyPair::generate_kind`] makes, if this is one (an RSA key of
    /// another size is not).
    pub fn kind(&self) -> Option<TransferKeyKind> {
        match &self.private {
            PrivateKind::Rsa(private) if private.key_size_bits() == 3072 => {
                Some(TransferKeyKind::Rsa3072)
            }
            PrivateKind::Rsa(_) => None,
            PrivateKind::P384 { .. } => Some(TransferKeyKind::P384),
        }
    }

    /// Reads a PKCS#8 RSA private key (for example one just unsealed).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        let private =
            PrivateDecryptingKey::from_pkcs8(der).map_err(|e| EnvelopeError::BadPrivateKey {
                reason: format!("not a PKCS#8 RSA private key ({e})"),
            })?;
        check_bits(private.key_size_bits())?;
        Ok(Self {
            private: PrivateKind::Rsa(private),
        })
    }

    /// The private key as PKCS#8 DER, for sealing. The buffer zeroizes on drop. Only an RSA key
    /// pair is sealed (offline provisioning); a P-384 one serves a single online transfer.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        let PrivateKind::Rsa(private) = &self.private else {
            return Err(EnvelopeError::BadPrivateKey {
                reason: "only an RSA key pair is exported as PKCS#8".into(),
            });
        };
        let der = AsDer::<Pkcs8V1Der>::as_der(private)
            .map_err(|_| EnvelopeError::Crypto("cannot encode the RSA private key"))?;
        Ok(Zeroizing::new(der.as_ref().to_vec()))
    }

    /// The public half.
    pub fn public_key(&self) -> Result<TeePublicKey> {
        match &self.private {
            PrivateKind::Rsa(private) => {
                let der = AsDer::<PublicKeyX509Der>::as_der(&private.public_key())
                    .map_err(|_| EnvelopeError::Crypto("cannot encode an RSA public key"))?;
                TeePublicKey::from_spki_der(der.as_ref())
            }
            PrivateKind::P384 { public, .. } => TeePublicKey::from_p384_point(&public.to_bytes()),
        }
    }

    /// Decrypts a key wrapped by [`TeePublicKey::wrap_key`].
    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<Aes256Key> {
        match &self.private {
            PrivateKind::Rsa(private) => rsa_unwrap(private, wrapped),
            PrivateKind::P384 { private, .. } => hpke_unwrap(private, wrapped),
        }
    }

    /// Recovers a model key from a key broker's answer.
    pub fn unwrap_transfer(&self, transfer: &WrappedKey) -> Result<Aes256Key> {
        let swk = self.unwrap_key(&transfer.wrapped_swk)?;
        unseal_model_key(&swk, &transfer.wrapped_key)
    }
}

fn rsa_unwrap(private: &PrivateDecryptingKey, wrapped: &[u8]) -> Result<Aes256Key> {
    let oaep = OaepPrivateDecryptingKey::new(private.clone())
        .map_err(|_| EnvelopeError::Crypto("RSA-OAEP refused a validated private key"))?;
    let mut out = Zeroizing::new(vec![0u8; oaep.min_output_size()]);
    let key = oaep
        .decrypt(&OAEP_SHA256_MGF1SHA256, wrapped, &mut out, None)
        .map_err(|_| EnvelopeError::UnwrapFailed)?;
    if key.len() != AES256_KEY_LEN {
        return Err(EnvelopeError::BadKeyLength {
            expected: AES256_KEY_LEN,
            found: key.len(),
        });
    }
    Aes256Key::from_slice(key)
}

/// What the key broker answers to a transfer request: both fields as raw bytes (the HTTP layer
/// base64-encodes them).
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The model key sealed under the SWK, in the v1 envelope format.
    pub wrapped_key: Vec<u8>,
    /// The SWK encrypted to the TEE's public key: RSA-OAEP-SHA256 to an RSA key; HPKE
    /// (`enc || ciphertext || tag`) to a P-384 key.
    pub wrapped_swk: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("wrapped_key_len", &self.wrapped_key.len())
            .field("wrapped_swk_len", &self.wrapped_swk.len())
            .finish()
    }
}

/// Wraps `model_key` for the holder of `tee_key`: a fresh SWK, encrypted to the TEE
/// ([`TeePublicKey::wrap_key`]), and the model key sealed under the SWK. This is the key
/// broker's side of a transfer.
pub fn wrap_for_tee(tee_key: &TeePublicKey, model_key: &Aes256Key) -> Result<WrappedKey> {
    let swk = Aes256Key::generate()?;
    Ok(WrappedKey {
        wrapped_key: seal_model_key(&swk, model_key)?,
        wrapped_swk: tee_key.wrap_key(&swk)?,
    })
}

/// Seals a model key under a symmetric wrapping key, in the v1 envelope format.
pub fn seal_model_key(swk: &Aes256Key, model_key: &Aes256Key) -> Result<Vec<u8>> {
    v1::seal(swk, model_key.expose_secret())
}

/// Opens a model key sealed by [`seal_model_key`].
pub fn unseal_model_key(swk: &Aes256Key, sealed: &[u8]) -> Result<Aes256Key> {
    let plaintext = v1::open(swk, sealed)?;
    Aes256Key::from_slice(&plaintext)
}

fn check_bits(bits: usize) -> Result<()> {
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(EnvelopeError::UnsupportedKeySize { bits });
    }
    Ok(())
}

fn bit_length(be: &[u8]) -> usize {
    match be.first() {
        Some(&top) => be.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    }
}

fn strip_leading_zeros(be: &[u8]) -> Vec<u8> {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    be[start..].to_vec()
}

fn be_to_u64(be: &[u8]) -> u64 {
    if be.len() > 8 {
        return u64::MAX;
    }
    be.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_round_trip_for_each_size_and_form() {
        for bits in [2048, 3072, 4096] {
            let pair = TeeKeyPair::generate(bits).unwrap();
            let public = pair.public_key().unwrap();
            assert_eq!(public.bits(), bits);
            let model_key = Aes256Key::generate().unwrap();
            for user_data in [
                public.spki_der().to_vec(),
                public.to_raw(ModulusOrder::BigEndian).unwrap(),
            ] {
                let parsed =
                    TeePublicKey::from_user_data(&user_data, ModulusOrder::BigEndian).unwrap();
                assert_eq!(parsed.spki_der(), public.spki_der());
                let wrapped = wrap_for_tee(&parsed, &model_key).unwrap();
                let back = pair.unwrap_transfer(&wrapped).unwrap();
                assert_eq!(back.expose_secret(), model_key.expose_secret());
            }
        }
    }

    #[test]
    fn little_endian_raw_form_is_the_reversed_modulus() {
        let pair = TeeKeyPair::generate(2048).unwrap();
        let public = pair.public_key().unwrap();
        let le = public.to_raw(ModulusOrder::LittleEndian).unwrap();
        let be = public.to_raw(ModulusOrder::BigEndian).unwrap();
        assert_eq!(le[..4], be[..4]);
        assert_eq!(le[4..].iter().rev().copied().collect::<Vec<_>>(), be[4..]);
        let parsed = TeePublicKey::from_raw(&le, ModulusOrder::LittleEndian).unwrap();
        assert_eq!(parsed.spki_der(), public.spki_der());
        // Read in the wrong byte order, the key is a different (and useless) number.
        let misread = TeePublicKey::from_raw(&le, ModulusOrder::BigEndian);
        assert!(misread.map_or(true, |k| k.spki_der() != public.spki_der()));
    }

    #[test]
    fn wrong_private_key_cannot_unwrap() {
        let pair = TeeKeyPair::generate(2048).unwrap();
        let other = TeeKeyPair::generate(2048).unwrap();
        let wrapped =
            wrap_for_tee(&pair.public_key().unwrap(), &Aes256Key::generate().unwrap()).unwrap();
        assert!(matches!(
            other.unwrap_transfer(&wrapped),
            Err(EnvelopeError::UnwrapFailed)
        ));

        let mut flipped = wrapped.clone();
        flipped.wrapped_swk[10] ^= 0x80;
        assert!(matches!(
            pair.unwrap_transfer(&flipped),
            Err(EnvelopeError::UnwrapFailed)
        ));

        let mut flipped = wrapped;
        let last = flipped.wrapped_key.len() - 1;
        flipped.wrapped_key[last] ^= 1;
        assert!(matches!(
            pair.unwrap_transfer(&flipped),
            Err(EnvelopeError::AuthenticationFailed { chunk: None })
        ));
    }

    #[test]
    fn bad_public_keys_are_refused() {
        assert!(matches!(
            TeePublicKey::from_user_data(&[], ModulusOrder::BigEndian),
            Err(EnvelopeError::BadPublicKey { .. })
        ));
        assert!(matches!(
            TeePublicKey::from_user_data(&[0x30, 0x03, 0x02, 0x01, 0x00], ModulusOrder::BigEndian),
            Err(EnvelopeError::BadPublicKey { .. })
        ));
        // A 1024-bit modulus in raw form.
        let mut small = 65537u32.to_le_bytes().to_vec();
        small.extend(std::iter::repeat_n(0xC5, 128));
        assert!(matches!(
            TeePublicKey::from_raw(&small, ModulusOrder::BigEndian),
            Err(EnvelopeError::UnsupportedKeySize { bits: 1024 })
        ));
        // An even exponent.
        let mut even = 65536u32.to_le_bytes().to_vec();
        even.extend(std::iter::repeat_n(0xC5, 256));
        assert!(matches!(
            TeePublicKey::from_raw(&even, ModulusOrder::BigEndian),
            Err(EnvelopeError::BadPublicKey { .. })
        ));
        // An 8192-bit key pair cannot be made, and a 1024-bit one neither.
        assert!(matches!(
            TeeKeyPair::generate(1024),
            Err(EnvelopeError::UnsupportedKeySize { .. })
        ));
    }

    #[test]
    fn private_keys_round_trip_through_pkcs8_and_garbage_is_refused() {
        let pair = TeeKeyPair::generate(2048).unwrap();
        let der = pair.to_pkcs8_der().unwrap();
        let again = TeeKeyPair::from_pkcs8_der(&der).unwrap();
        assert_eq!(
            again.public_key().unwrap().spki_der(),
            pair.public_key().unwrap().spki_der()
        );
        assert!(matches!(
            TeeKeyPair::from_pkcs8_der(b"not a key"),
            Err(EnvelopeError::BadPrivateKey { .. })
        ));
    }

    #[test]
    fn debug_output_hides_private_material() {
        let pair = TeeKeyPair::generate(2048).unwrap();
        assert_eq!(format!("{pair:?}"), "TeeKeyPair(2048 bits, <redacted>)");
        let pair = TeeKeyPair::generate_kind(TransferKeyKind::P384).unwrap();
        assert_eq!(format!("{pair:?}"), "TeeKeyPair(P-384, <redacted>)");
        let public = format!("{:?}", pair.public_key().unwrap());
        assert_eq!(public, "TeePublicKey { algorithm: P384, .. }");
    }

    fn p384_transfer() -> (TeeKeyPair, Aes256Key, WrappedKey) {
        let pair = TeeKeyPair::generate_kind(TransferKeyKind::P384).unwrap();
        let model_key = Aes256Key::generate().unwrap();
        let public = TeePublicKey::from_user_data(
            pair.public_key().unwrap().spki_der(),
            ModulusOrder::BigEndian,
        )
        .unwrap();
        let wrapped = wrap_for_tee(&public, &model_key).unwrap();
        (pair, model_key, wrapped)
    }

    #[test]
    fn p384_transfer_round_trip() {
        let (pair, model_key, wrapped) = p384_transfer();
        assert_eq!(pair.kind(), Some(TransferKeyKind::P384));
        let public = pair.public_key().unwrap();
        assert_eq!(public.algorithm(), TeeKeyAlgorithm::P384);
        assert_eq!(public.bits(), 384);
        assert_eq!(public.spki_der().len(), 120);
        // enc (the uncompressed ephemeral point), then the SWK and its tag.
        assert_eq!(wrapped.wrapped_swk.len(), HPKE_WRAPPED_SWK_LEN);
        assert_eq!(wrapped.wrapped_swk.len(), 97 + 32 + 16);
        assert_eq!(wrapped.wrapped_swk[0], 0x04);
        let back = pair.unwrap_transfer(&wrapped).unwrap();
        assert_eq!(back.expose_secret(), model_key.expose_secret());
        // Each seal has its own ephemeral key.
        let again = wrap_for_tee(&public, &model_key).unwrap();
        assert_ne!(again.wrapped_swk[..97], wrapped.wrapped_swk[..97]);
    }

    #[test]
    fn p384_wrapped_swk_tampered_truncated_or_for_another_key_fails() {
        let (pair, _, wrapped) = p384_transfer();
        // A bit flipped in enc (X coordinate; the point leaves the curve or becomes another one),
        // in the ciphertext, and in the tag.
        for index in [1, 50, 97, 97 + 31, 97 + 32, HPKE_WRAPPED_SWK_LEN - 1] {
            let mut flipped = wrapped.clone();
            flipped.wrapped_swk[index] ^= 0x01;
            assert!(
                matches!(
                    pair.unwrap_transfer(&flipped),
                    Err(EnvelopeError::UnwrapFailed)
                ),
                "byte {index} flipped"
            );
        }
        // enc as a compressed point, or missing.
        let mut compressed = wrapped.clone();
        compressed.wrapped_swk[0] = 0x02;
        assert!(matches!(
            pair.unwrap_transfer(&compressed),
            Err(EnvelopeError::UnwrapFailed)
        ));
        for len in [0, 1, 96, 97, 97 + 32, HPKE_WRAPPED_SWK_LEN - 1] {
            let mut truncated = wrapped.clone();
            truncated.wrapped_swk.truncate(len);
            assert!(
                matches!(
                    pair.unwrap_transfer(&truncated),
                    Err(EnvelopeError::UnwrapFailed)
                ),
                "truncated to {len}"
            );
        }
        let mut longer = wrapped.clone();
        longer.wrapped_swk.push(0);
        assert!(matches!(
            pair.unwrap_transfer(&longer),
            Err(EnvelopeError::UnwrapFailed)
        ));
        // Another P-384 key pair, and an RSA one, cannot open it.
        let other = TeeKeyPair::generate_kind(TransferKeyKind::P384).unwrap();
        assert!(matches!(
            other.unwrap_transfer(&wrapped),
            Err(EnvelopeError::UnwrapFailed)
        ));
        let rsa = TeeKeyPair::generate(2048).unwrap();
        assert!(matches!(
            rsa.unwrap_transfer(&wrapped),
            Err(EnvelopeError::UnwrapFailed)
        ));
        // And an RSA-OAEP answer does not open with a P-384 key pair.
        let for_rsa =
            wrap_for_tee(&rsa.public_key().unwrap(), &Aes256Key::generate().unwrap()).unwrap();
        assert!(matches!(
            pair.unwrap_transfer(&for_rsa),
            Err(EnvelopeError::UnwrapFailed)
        ));
        // The untouched answer still opens.
        assert!(pair.unwrap_transfer(&wrapped).is_ok());
    }

    /// A P-384 key from aws-lc-rs (another implementation) is read and re-encoded to the same
    /// DER, and aws-lc-rs reads ours as the point it holds.
    #[test]
    fn p384_spki_matches_aws_lc() {
        use aws_lc_rs::agreement::{PrivateKey, ECDH_P384};
        let private = PrivateKey::generate(&ECDH_P384).unwrap();
        let der =
            AsDer::<PublicKeyX509Der>::as_der(&private.compute_public_key().unwrap()).unwrap();
        let public = TeePublicKey::from_spki_der(der.as_ref()).unwrap();
        assert_eq!(public.spki_der(), der.as_ref());
        assert_eq!(public.algorithm(), TeeKeyAlgorithm::P384);
        // And ours is read back by aws-lc-rs as the same point.
        let pair = TeeKeyPair::generate_kind(TransferKeyKind::P384).unwrap();
        let ours = pair.public_key().unwrap();
        let spki = ours.spki_der();
        let point = &spki[spki.len() - P384_POINT_LEN..];
        let secret = |peer: &[u8]| {
            aws_lc_rs::agreement::agree(
                &private,
                aws_lc_rs::agreement::UnparsedPublicKey::new(&ECDH_P384, peer),
                aws_lc_rs::error::Unspecified,
                |shared| Ok(shared.to_vec()),
            )
            .unwrap()
        };
        assert_eq!(secret(spki), secret(point));
    }

    fn error_reason(der: &[u8]) -> String {
        match TeePublicKey::from_spki_der(der) {
            Err(EnvelopeError::BadPublicKey { reason }) => reason,
            other => panic!("expected BadPublicKey, got {other:?}"),
        }
    }

    #[test]
    fn other_curves_algorithms_and_points_are_refused() {
        use aws_lc_rs::agreement::{PrivateKey, ECDH_P256, ECDH_P521, X25519};
        for (algorithm, expected) in [(&ECDH_P256, "P-256"), (&ECDH_P521, "P-521")] {
            let private = PrivateKey::generate(algorithm).unwrap();
            let der =
                AsDer::<PublicKeyX509Der>::as_der(&private.compute_public_key().unwrap()).unwrap();
            let reason = error_reason(der.as_ref());
            assert!(reason.contains(expected), "{reason}");
            assert!(reason.contains("P-384"), "{reason}");
        }
        let private = PrivateKey::generate(&X25519).unwrap();
        let der =
            AsDer::<PublicKeyX509Der>::as_der(&private.compute_public_key().unwrap()).unwrap();
        let reason = error_reason(der.as_ref());
        assert!(reason.contains("1.3.101.110 is not supported"), "{reason}");

        let good = TeeKeyPair::generate_kind(TransferKeyKind::P384)
            .unwrap()
            .public_key()
            .unwrap()
            .spki_der()
            .to_vec();
        // The point moved off the curve.
        let mut off_curve = good.clone();
        let last = off_curve.len() - 1;
        off_curve[last] ^= 0x01;
        assert!(error_reason(&off_curve).contains("not on the P-384 curve"));
        // A compressed point (0x02 || X) in a well-formed SPKI.
        let x = &good[good.len() - 96..good.len() - 48];
        let mut point = vec![0x02];
        point.extend_from_slice(x);
        let compressed = SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef {
                oid: EC_PUBLIC_KEY,
                parameters: Some(AnyRef::from(&SECP384R1)),
            },
            subject_public_key: BitStringRef::from_bytes(&point).unwrap(),
        }
        .to_der()
        .unwrap();
        assert!(error_reason(&compressed).contains("uncompressed"));
        // An EC key with no named curve.
        let no_curve = SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef {
                oid: EC_PUBLIC_KEY,
                parameters: None,
            },
            subject_public_key: BitStringRef::from_bytes(&good[good.len() - 97..]).unwrap(),
        }
        .to_der()
        .unwrap();
        assert!(error_reason(&no_curve).contains("namedCurve"));
        // Truncated, trailing bytes, and garbage.
        assert!(error_reason(&good[..good.len() - 1]).contains("RSA or EC P-384"));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(error_reason(&trailing).contains("RSA or EC P-384"));
        assert!(error_reason(b"\x30garbage").contains("RSA or EC P-384"));
        // The raw form is RSA's only.
        let public = TeePublicKey::from_spki_der(&good).unwrap();
        assert!(matches!(
            public.to_raw(ModulusOrder::BigEndian),
            Err(EnvelopeError::BadPublicKey { .. })
        ));
    }

    #[test]
    fn key_kinds_have_names_and_make_their_kind() {
        assert_eq!(TransferKeyKind::default(), TransferKeyKind::P384);
        for kind in TransferKeyKind::ALL {
            assert_eq!(TransferKeyKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(TransferKeyKind::from_name("rsa"), None);
        let rsa = TeeKeyPair::generate_kind(TransferKeyKind::Rsa3072).unwrap();
        assert_eq!(rsa.kind(), Some(TransferKeyKind::Rsa3072));
        assert_eq!(
            rsa.public_key().unwrap().algorithm(),
            TeeKeyAlgorithm::Rsa { bits: 3072 }
        );
        assert_eq!(TeeKeyPair::generate(2048).unwrap().kind(), None);
        // A P-384 key pair is not exported: it serves one online transfer.
        let p384 = TeeKeyPair::generate_kind(TransferKeyKind::P384).unwrap();
        assert!(matches!(
            p384.to_pkcs8_der(),
            Err(EnvelopeError::BadPrivateKey { .. })
        ));
    }
}
