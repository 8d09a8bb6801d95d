//! NVIDIA's reference integrity manifests (RIMs): SWID tags (ISO/IEC 19770-2:2015) in the TCG
//! RIM information model, signed with an enveloped XML signature (XMLDSig), which list the
//! reference value of each measurement index of a driver or a VBIOS.
//!
//! A RIM is trusted only once [`Rim::verify`] has checked, in this order:
//! 1. the document parses ([`super::xml`]: no DTD, size and depth limits);
//! 2. it has exactly one `ds:Signature`, a child of the root, whose `SignedInfo` names Canonical
//!    XML 1.1 (or 1.0, identical for these documents), ECDSA with SHA-384, and one `Reference`
//!    to the whole document (`URI=""`) with the transforms enveloped-signature then C14N and
//!    the digest SHA-384; any other algorithm is refused;
//! 3. SHA-384 of the canonical document without the signature equals the `DigestValue`;
//! 4. the `SignatureValue` (ECDSA P-384, raw `r || s`) verifies over the canonical
//!    `SignedInfo` under the first certificate of `KeyInfo/X509Data`;
//! 5. those certificates chain to the pinned RIM root ([`super::NVIDIA_RIM_ROOT_PEM`]) and are
//!    valid at `now`.
//!
//! Then its content is read: `Meta@colloquialVersion` (the driver or VBIOS version),
//! `Meta@product`, and every `Payload/Resource` of type `Measurement`: `index` (from 0, the SPDM
//! block index minus one), `active`, `alternatives` and the `Hash0..HashN-1` attributes in the
//! `xmlenc#sha384` namespace, of `size` bytes.

use aws_lc_rs::digest::{digest, SHA384};
use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::chain::{verify_chain, ChainCert};
use super::xml::{self, Element, Scope};
use crate::error::{AttestError, Result};

const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const C14N_11: &str = "http://www.w3.org/2006/12/xml-c14n11";
const C14N_10: &str = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const SHA384_DIGEST: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";
const HASH_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";

/// Most measurement indices a RIM may list.
const MAX_INDICES: usize = 256;
/// Most alternatives one index may list.
const MAX_ALTERNATIVES: usize = 16;

/// One index's reference values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceMeasurement {
    /// The RIM's index (SPDM block index minus one).
    pub index: u8,
    /// Whether the index is to be compared.
    pub active: bool,
    /// The accepted values: any one of them matches.
    pub alternatives: Vec<Vec<u8>>,
}

/// A RIM whose signature and chain have been verified.
#[derive(Clone, Debug)]
pub struct Rim {
    /// The version the RIM is for (`Meta@colloquialVersion`): a driver version such as
    /// `550.144.03`, or a VBIOS version such as `96.00.5E.00.01`.
    pub version: String,
    /// The product (`Meta@product`), such as `GH100`.
    pub product: String,
    /// The SWID tag id.
    pub tag_id: String,
    /// The reference measurements by index.
    pub measurements: Vec<ReferenceMeasurement>,
    /// The signing certificate's notAfter (unix seconds).
    pub signer_not_after: u64,
}

fn bad(reason: impl Into<String>) -> AttestError {
    AttestError::malformed(format!("RIM: {}", reason.into()))
}

fn child<'e>(
    element: &'e Element,
    scope: &'e Scope,
    ns: &'e str,
    local: &'e str,
) -> Result<&'e Element> {
    let mut found = children(element, scope, ns, local);
    let first = found
        .next()
        .ok_or_else(|| bad(format!("`{}` has no `{local}`", element.local_name())))?;
    if found.next().is_some() {
        return Err(bad(format!(
            "`{}` has more than one `{local}`",
            element.local_name()
        )));
    }
    Ok(first)
}

fn children<'e>(
    element: &'e Element,
    scope: &'e Scope,
    ns: &'e str,
    local: &'e str,
) -> impl Iterator<Item = &'e Element> + 'e {
    element
        .elements()
        .filter(move |e| e.local_name() == local && e.namespace(scope).as_deref() == Some(ns))
}

fn text_of(element: &Element) -> String {
    element
        .children
        .iter()
        .filter_map(|n| match n {
            xml::Node::Text(t) => Some(t.as_str()),
            xml::Node::Element(_) => None,
        })
        .collect::<String>()
}

fn base64_of(element: &Element, what: &str) -> Result<Vec<u8>> {
    let compact: String = text_of(element)
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    BASE64
        .decode(compact)
        .map_err(|e| bad(format!("{what} is not base64: {e}")))
}

fn algorithm(element: &Element, scope: &Scope, ns: &str, local: &str) -> Result<String> {
    let e = child(element, scope, ns, local)?;
    e.attribute(&e.scope(scope), None, "Algorithm")
        .map(str::to_owned)
        .ok_or_else(|| bad(format!("`{local}` has no Algorithm")))
}

impl Rim {
    /// Verifies a RIM's signature and chain against `roots` at `now`, then reads it.
    pub fn verify(text: &[u8], roots: &[ChainCert], now: u64) -> Result<Rim> {
        let root = xml::parse(text)?;
        let doc_scope = root.scope(&Scope::new());

        let mut signatures = children(&root, &doc_scope, DSIG, "Signature");
        let signature = signatures
            .next()
            .ok_or_else(|| bad("no ds:Signature under the root element"))?;
        if signatures.next().is_some() {
            return Err(bad("more than one ds:Signature"));
        }
        let sig_scope = signature.scope(&doc_scope);
        let signed_info = child(signature, &sig_scope, DSIG, "SignedInfo")?;
        let info_scope = signed_info.scope(&sig_scope);

        let c14n = algorithm(signed_info, &info_scope, DSIG, "CanonicalizationMethod")?;
        if c14n != C14N_11 && c14n != C14N_10 {
            return Err(bad(format!("canonicalisation `{c14n}` is not supported")));
        }
        let method = algorithm(signed_info, &info_scope, DSIG, "SignatureMethod")?;
        if method != ECDSA_SHA384 {
            return Err(bad(format!(
                "signature method `{method}` is not ECDSA-SHA384"
            )));
        }
        let reference = child(signed_info, &info_scope, DSIG, "Reference")?;
        let ref_scope = reference.scope(&info_scope);
        if reference.attribute(&ref_scope, None, "URI") != Some("") {
            return Err(bad(
                "the signature's Reference is not to the whole document",
            ));
        }
        let transforms = child(reference, &ref_scope, DSIG, "Transforms")?;
        let tr_scope = transforms.scope(&ref_scope);
        let list: Vec<String> = children(transforms, &tr_scope, DSIG, "Transform")
            .map(|t| {
                t.attribute(&t.scope(&tr_scope), None, "Algorithm")
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        let expected_transforms =
            list.len() == 2 && list[0] == ENVELOPED && (list[1] == C14N_11 || list[1] == C14N_10);
        if !expected_transforms {
            return Err(bad(format!(
                "transforms {list:?}, expected enveloped-signature then C14N"
            )));
        }
        let digest_method = algorithm(reference, &ref_scope, DSIG, "DigestMethod")?;
        if digest_method != SHA384_DIGEST {
            return Err(bad(format!("digest `{digest_method}` is not SHA-384")));
        }
        let digest_value = base64_of(
            child(reference, &ref_scope, DSIG, "DigestValue")?,
            "DigestValue",
        )?;

        // The enveloped-signature transform removes exactly this Signature element.
        let canonical_doc =
            xml::canonicalize(&root, &Scope::new(), &|e, _| std::ptr::eq(e, signature))?;
        if digest(&SHA384, &canonical_doc).as_ref() != digest_value.as_slice() {
            return Err(AttestError::BadSignature {
                what: "the RIM's content does not match its signed digest".into(),
            });
        }

        let signature_value = base64_of(
            child(signature, &sig_scope, DSIG, "SignatureValue")?,
            "SignatureValue",
        )?;
        let key_info = child(signature, &sig_scope, DSIG, "KeyInfo")?;
        let ki_scope = key_info.scope(&sig_scope);
        let x509_data = child(key_info, &ki_scope, DSIG, "X509Data")?;
        let xd_scope = x509_data.scope(&ki_scope);
        let certs = children(x509_data, &xd_scope, DSIG, "X509Certificate")
            .take(super::chain::MAX_CHAIN_LEN + 1)
            .map(|c| base64_of(c, "X509Certificate").and_then(|der| ChainCert::from_der(&der)))
            .collect::<Result<Vec<_>>>()?;
        if certs.len() > super::chain::MAX_CHAIN_LEN {
            return Err(bad("too many certificates in KeyInfo"));
        }
        let signer = verify_chain("RIM signer", &certs, roots, now)?;

        let canonical_info = xml::canonicalize(signed_info, &sig_scope, &|_, _| false)?;
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, signer.public_key())
            .verify(&canonical_info, &signature_value)
            .map_err(|_| AttestError::BadSignature {
                what: "the RIM's XML signature".into(),
            })?;

        Self::read_content(&root, &doc_scope, signer.not_after())
    }

    fn read_content(root: &Element, scope: &Scope, signer_not_after: u64) -> Result<Rim> {
        let swid = root
            .namespace(&Scope::new())
            .ok_or_else(|| bad("the root element has no namespace"))?;
        if root.local_name() != "SoftwareIdentity" {
            return Err(bad("the root element is not a SoftwareIdentity"));
        }
        let tag_id = root
            .attribute(scope, None, "tagId")
            .unwrap_or_default()
            .to_owned();
        let meta = child(root, scope, &swid, "Meta")?;
        let meta_scope = meta.scope(scope);
        let version = meta
            .attribute(&meta_scope, None, "colloquialVersion")
            .ok_or_else(|| bad("Meta has no colloquialVersion"))?
            .to_owned();
        let product = meta
            .attribute(&meta_scope, None, "product")
            .ok_or_else(|| bad("Meta has no product"))?
            .to_owned();
        let payload = child(root, scope, &swid, "Payload")?;
        let payload_scope = payload.scope(scope);

        let mut measurements: Vec<ReferenceMeasurement> = Vec::new();
        for resource in children(payload, &payload_scope, &swid, "Resource") {
            let rs = resource.scope(&payload_scope);
            if resource.attribute(&rs, None, "type") != Some("Measurement") {
                continue;
            }
            if measurements.len() >= MAX_INDICES {
                return Err(bad("too many measurements"));
            }
            let number = |name: &str| -> Result<usize> {
                resource
                    .attribute(&rs, None, name)
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or_else(|| bad(format!("a Resource has no numeric `{name}`")))
            };
            let index =
                u8::try_from(number("index")?).map_err(|_| bad("a measurement index above 255"))?;
            let size = number("size")?;
            let count = number("alternatives")?;
            if count == 0 || count > MAX_ALTERNATIVES {
                return Err(bad(format!("index {index}: {count} alternatives")));
            }
            let active = match resource.attribute(&rs, None, "active") {
                Some(v) if v.eq_ignore_ascii_case("true") => true,
                Some(v) if v.eq_ignore_ascii_case("false") => false,
                _ => return Err(bad(format!("index {index}: `active` is not True or False"))),
            };
            let alternatives = (0..count)
                .map(|i| {
                    let name = format!("Hash{i}");
                    let text = resource
                        .attribute(&rs, Some(HASH_NS), &name)
                        .ok_or_else(|| bad(format!("index {index} has no {name}")))?;
                    let value = hex::decode(text)
                        .map_err(|_| bad(format!("index {index}: {name} is not hex")))?;
                    if value.len() != size {
                        return Err(bad(format!(
                            "index {index}: {name} has {} bytes, size says {size}",
                            value.len()
                        )));
                    }
                    Ok(value)
                })
                .collect::<Result<Vec<_>>>()?;
            if measurements.iter().any(|m| m.index == index) {
                return Err(bad(format!("index {index} listed twice")));
            }
            measurements.push(ReferenceMeasurement {
                index,
                active,
                alternatives,
            });
        }
        Ok(Rim {
            version,
            product,
            tag_id,
            measurements,
            signer_not_after,
        })
    }
}
