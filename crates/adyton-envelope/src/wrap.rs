//! Key wrapping for the key broker's transfer protocol (`design.md`, "KBS key transfer").
//!
//! A TEE holds an RSA key pair. The key broker generates a fresh symmetric wrapping key (SWK),
//! encrypts it to the TEE's public key with RSA-OAEP (SHA-256 for the hash and for MGF1, empty
//! label), and seals the model key under the SWK in the v1 envelope format. Only the holder of the
//! private key can recover the model key.

use std::fmt;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    PublicEncryptingKey, PublicKey, PublicKeyComponents, OAEP_SHA256_MGF1SHA256,
};
use zeroize::Zeroizing;

use crate::error::{EnvelopeError, Result};
use crate::key::{Aes256Key, AES256_KEY_LEN};
use crate::v1;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits.
pub const MAX_RSA_BITS: usize = 4096;

/// Byte order of the modulus in Intel's raw public key form (`u32le exponent || modulus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModulusOrder {
    /// Big-endian modulus, as TDX, SNP and SIM clients send it.
    BigEndian,
    /// Little-endian modulus, as SGX enclaves produce it and Intel's KBS reads it.
    LittleEndian,
}

/// A TEE's RSA public key, to which key material is wrapped.
#[derive(Clone)]
pub struct TeePublicKey {
    key: PublicEncryptingKey,
    spki_der: Vec<u8>,
    modulus_be: Vec<u8>,
    exponent_be: Vec<u8>,
}

impl fmt::Debug for TeePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeePublicKey")
            .field("bits", &self.bits())
            .finish_non_exhaustive()
    }
}

impl TeePublicKey {
    /// Reads a DER SubjectPublicKeyInfo, the form the CNAP client sends.
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
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
        Self::checked(key, modulus_be, exponent_be)
    }

    /// Reads Intel's raw form: a u32le exponent followed by the modulus in `order`.
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
        let mut public = Self::checked(key, modulus_be, exponent_be)?;
        public.spki_der = spki_der;
        Ok(public)
    }

    /// Reads a key broker's `user_data`: DER SubjectPublicKeyInfo when it starts with a DER
    /// SEQUENCE tag, Intel's raw form otherwise.
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

    fn checked(
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
            key,
            spki_der,
            modulus_be,
            exponent_be,
        })
    }

    /// The key as DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The key in Intel's raw form: u32le exponent, then the modulus in `order`, padded to the
    /// modulus's full byte length.
    pub fn to_raw(&self, order: ModulusOrder) -> Result<Vec<u8>> {
        let exponent = u32::try_from(be_to_u64(&self.exponent_be)).map_err(|_| {
            EnvelopeError::BadPublicKey {
                reason: "exponent does not fit the raw form's u32".into(),
            }
        })?;
        let mut out = exponent.to_le_bytes().to_vec();
        let mut modulus = self.modulus_be.clone();
        if order == ModulusOrder::LittleEndian {
            modulus.reverse();
        }
        out.extend_from_slice(&modulus);
        Ok(out)
    }

    /// Modulus length in bits.
    pub fn bits(&self) -> usize {
        self.key.key_size_bits()
    }

    /// Encrypts a 32-byte symmetric key to this public key with RSA-OAEP-SHA256 (MGF1-SHA256,
    /// empty label).
    pub fn wrap_key(&self, key: &Aes256Key) -> Result<Vec<u8>> {
        let oaep = OaepPublicEncryptingKey::new(self.key.clone())
            .map_err(|_| EnvelopeError::Crypto("RSA-OAEP refused a validated public key"))?;
        let mut out = vec![0u8; oaep.ciphertext_size()];
        let len = oaep
            .encrypt(&OAEP_SHA256_MGF1SHA256, key.expose_secret(), &mut out, None)
            .map_err(|_| EnvelopeError::Crypto("RSA-OAEP encryption failed"))?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// A TEE's RSA key pair. The private key never leaves it in plaintext; `Debug` is redacted.
pub struct TeeKeyPair {
    private: PrivateDecryptingKey,
}

impl fmt::Debug for TeeKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TeeKeyPair({} bits, <redacted>)",
            self.private.key_size_bits()
        )
    }
}

impl TeeKeyPair {
    /// Generates a key pair of `bits` (2048, 3072 or 4096).
    pub fn generate(bits: usize) -> Result<Self> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            other => return Err(EnvelopeError::UnsupportedKeySize { bits: other }),
        };
        let private = PrivateDecryptingKey::generate(size)
            .map_err(|_| EnvelopeError::Crypto("RSA key generation failed"))?;
        Ok(Self { private })
    }

    /// Reads a PKCS#8 private key (for example one just unsealed).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        let private =
            PrivateDecryptingKey::from_pkcs8(der).map_err(|e| EnvelopeError::BadPrivateKey {
                reason: format!("not a PKCS#8 RSA private key ({e})"),
            })?;
        check_bits(private.key_size_bits())?;
        Ok(Self { private })
    }

    /// The private key as PKCS#8 DER, for sealing. The buffer zeroizes on drop.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        let der = AsDer::<Pkcs8V1Der>::as_der(&self.private)
            .map_err(|_| EnvelopeError::Crypto("cannot encode the RSA private key"))?;
        Ok(Zeroizing::new(der.as_ref().to_vec()))
    }

    /// The public half.
    pub fn public_key(&self) -> Result<TeePublicKey> {
        let der = AsDer::<PublicKeyX509Der>::as_der(&self.private.public_key())
            .map_err(|_| EnvelopeError::Crypto("cannot encode an RSA public key"))?;
        TeePublicKey::from_spki_der(der.as_ref())
    }

    /// Decrypts a key wrapped by [`TeePublicKey::wrap_key`].
    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<Aes256Key> {
        let oaep = OaepPrivateDecryptingKey::new(self.private.clone())
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

    /// Recovers a model key from a key broker's answer.
    pub fn unwrap_transfer(&self, transfer: &WrappedKey) -> Result<Aes256Key> {
        let swk = self.unwrap_key(&transfer.wrapped_swk)?;
        unseal_model_key(&swk, &transfer.wrapped_key)
    }
}

/// What the key broker answers to a transfer request: both fields as raw bytes (the HTTP layer
/// base64-encodes them).
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The model key sealed under the SWK, in the v1 envelope format.
    pub wrapped_key: Vec<u8>,
    /// The SWK encrypted to the TEE's public key with RSA-OAEP-SHA256.
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

/// Wraps `model_key` for the holder of `tee_key`: a fresh SWK, RSA-OAEP to the TEE, and the model
/// key sealed under the SWK. This is the key broker's side of a transfer.
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
    }
}
