//! NVIDIA's GPU attestation report: an SPDM 1.1 GET_MEASUREMENTS request followed by the signed
//! MEASUREMENTS response (DMTF DSP0274 1.1, sections 10.11 and 10.11.1), with NVIDIA's fields in
//! the response's opaque data.
//!
//! Layout, all integers little-endian:
//!
//! ```text
//! request (37 bytes)  version 0x11 | code 0xE0 | param1 (bit 0: signature requested) |
//!                     param2 (0xFF: all measurements) | nonce[32] | slot id
//! response            version 0x11 | code 0x60 | param1 | param2 | number of blocks (u8) |
//!                     record length (u24) | record | responder nonce[32] |
//!                     opaque length (u16) | opaque data | signature[96]
//! record              block*: index (u8) | specification (u8, 1 = DMTF) | size (u16) |
//!                     value type (u8) | value size (u16) | value
//! opaque data         field*: type (u16) | size (u16) | value
//! ```
//!
//! The signature is ECDSA P-384, raw `r || s`, over SHA-384 of the request and the response up
//! to the signature (SPDM 1.1's L1/L2 transcript of one GET_MEASUREMENTS exchange).

use std::collections::BTreeMap;

use crate::error::{AttestError, Result};

/// Length of an SPDM 1.1 GET_MEASUREMENTS request with a nonce and a slot id.
pub const REQUEST_LEN: usize = 37;
/// Length of the nonce in the request.
pub const NONCE_LEN: usize = 32;
/// Length of an ECDSA P-384 signature, `r || s`.
pub const SIGNATURE_LEN: usize = 96;
/// Largest report accepted: 64 blocks of SHA-384 and the opaque data are about 4 KiB.
pub const MAX_REPORT_LEN: usize = 64 * 1024;

const SPDM_VERSION_1_1: u8 = 0x11;
const GET_MEASUREMENTS: u8 = 0xE0;
const MEASUREMENTS: u8 = 0x60;
const SIGNATURE_REQUESTED: u8 = 0x01;
const DMTF_SPECIFICATION: u8 = 0x01;

/// NVIDIA's opaque data field types (nvtrust's `OpaqueData` table).
pub mod opaque {
    /// The driver version, a NUL-terminated string.
    pub const DRIVER_VERSION: u16 = 3;
    /// The GPU's architecture information.
    pub const GPU_INFO: u16 = 4;
    /// The VBIOS version, 8 bytes.
    pub const VBIOS_VERSION: u16 = 6;
    /// Whether NVDEC0 is enabled (0xAA) or disabled (0x55); measurement 35 depends on it.
    pub const NVDEC0_STATUS: u16 = 11;
    /// The board id.
    pub const BOARD_ID: u16 = 14;
    /// The chip SKU, a NUL-terminated string.
    pub const CHIP_SKU: u16 = 15;
    /// The project, a NUL-terminated string.
    pub const PROJECT: u16 = 17;
    /// The project SKU, a NUL-terminated string.
    pub const PROJECT_SKU: u16 = 18;
}

/// NVDEC0 disabled, in the opaque data field [`opaque::NVDEC0_STATUS`].
pub const NVDEC0_DISABLED: u8 = 0x55;

/// One measurement block of the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasurementBlock {
    /// The block's index, from 1.
    pub index: u8,
    /// DMTF measurement value type.
    pub value_type: u8,
    /// The measurement.
    pub value: Vec<u8>,
}

/// A parsed report. Its fields are not trusted until [`crate::gpu::GpuVerifier`] has checked the
/// signature over `signed`.
#[derive(Clone, Debug)]
pub struct SpdmReport {
    /// The requester's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The measurement blocks, in the order sent.
    pub blocks: Vec<MeasurementBlock>,
    /// The responder's nonce.
    pub responder_nonce: [u8; NONCE_LEN],
    /// The opaque data fields by type; a type that appears twice is refused.
    pub opaque: BTreeMap<u16, Vec<u8>>,
    /// The bytes the signature covers: the request and the response up to the signature.
    pub signed_len: usize,
    /// The signature, `r || s`.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Reads bytes in order, refusing to run past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| {
                AttestError::malformed(format!(
                    "GPU report truncated: {what} needs {n} bytes at offset {}, {} remain",
                    self.at,
                    self.bytes.len().saturating_sub(self.at)
                ))
            })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u24(&mut self, what: &str) -> Result<usize> {
        let b = self.take(3, what)?;
        Ok(usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
}

/// Parses a report: the GET_MEASUREMENTS request and the MEASUREMENTS response, back to back.
pub fn parse_report(bytes: &[u8]) -> Result<SpdmReport> {
    if bytes.len() > MAX_REPORT_LEN {
        return Err(AttestError::malformed(format!(
            "GPU report of {} bytes, at most {MAX_REPORT_LEN} are accepted",
            bytes.len()
        )));
    }
    let mut cur = Cursor { bytes, at: 0 };

    let version = cur.u8("request version")?;
    let code = cur.u8("request code")?;
    let param1 = cur.u8("request param1")?;
    let _operation = cur.u8("request param2")?;
    if version != SPDM_VERSION_1_1 || code != GET_MEASUREMENTS {
        return Err(AttestError::malformed(format!(
            "GPU report does not start with an SPDM 1.1 GET_MEASUREMENTS request (version \
             {version:#04x}, code {code:#04x})"
        )));
    }
    if param1 & SIGNATURE_REQUESTED == 0 {
        return Err(AttestError::malformed(
            "the GET_MEASUREMENTS request did not ask for a signature",
        ));
    }
    let nonce = cur.array::<NONCE_LEN>("request nonce")?;
    let _slot = cur.u8("request slot id")?;

    let version = cur.u8("response version")?;
    let code = cur.u8("response code")?;
    let _param1 = cur.u8("response param1")?;
    let _param2 = cur.u8("response param2")?;
    if version != SPDM_VERSION_1_1 || code != MEASUREMENTS {
        return Err(AttestError::malformed(format!(
            "GPU report's response is not an SPDM 1.1 MEASUREMENTS response (version \
             {version:#04x}, code {code:#04x})"
        )));
    }
    let count = cur.u8("number of blocks")?;
    let record_len = cur.u24("measurement record length")?;
    let record = cur.take(record_len, "measurement record")?;
    let blocks = parse_record(record, count)?;
    let responder_nonce = cur.array::<NONCE_LEN>("responder nonce")?;
    let opaque_len = cur.u16("opaque data length")?;
    let opaque = parse_opaque(cur.take(usize::from(opaque_len), "opaque data")?)?;
    let signed_len = cur.at;
    let signature = cur.array::<SIGNATURE_LEN>("signature")?;
    if cur.at != bytes.len() {
        return Err(AttestError::malformed(format!(
            "{} bytes after the GPU report's signature",
            bytes.len() - cur.at
        )));
    }
    Ok(SpdmReport {
        nonce,
        blocks,
        responder_nonce,
        opaque,
        signed_len,
        signature,
    })
}

fn parse_record(record: &[u8], count: u8) -> Result<Vec<MeasurementBlock>> {
    let mut cur = Cursor {
        bytes: record,
        at: 0,
    };
    let mut blocks: Vec<MeasurementBlock> = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let index = cur.u8("block index")?;
        let specification = cur.u8("block measurement specification")?;
        let size = cur.u16("block size")?;
        let mut inner = Cursor {
            bytes: cur.take(usize::from(size), "block")?,
            at: 0,
        };
        if specification != DMTF_SPECIFICATION {
            return Err(AttestError::malformed(format!(
                "measurement block {index} follows specification {specification:#04x}, not DMTF"
            )));
        }
        let value_type = inner.u8("measurement value type")?;
        let value_size = inner.u16("measurement value size")?;
        let value = inner.take(usize::from(value_size), "measurement value")?;
        if inner.at != inner.bytes.len() {
            return Err(AttestError::malformed(format!(
                "measurement block {index} is longer than its value"
            )));
        }
        if index == 0 || blocks.iter().any(|b| b.index == index) {
            return Err(AttestError::malformed(format!(
                "measurement block index {index} is zero or repeated"
            )));
        }
        blocks.push(MeasurementBlock {
            index,
            value_type,
            value: value.to_vec(),
        });
    }
    if cur.at != record.len() {
        return Err(AttestError::malformed(format!(
            "measurement record of {} bytes holds {count} blocks in {} bytes",
            record.len(),
            cur.at
        )));
    }
    Ok(blocks)
}

fn parse_opaque(data: &[u8]) -> Result<BTreeMap<u16, Vec<u8>>> {
    let mut cur = Cursor { bytes: data, at: 0 };
    let mut fields = BTreeMap::new();
    while cur.at < data.len() {
        let kind = cur.u16("opaque field type")?;
        let size = cur.u16("opaque field size")?;
        let value = cur.take(usize::from(size), "opaque field")?;
        if fields.insert(kind, value.to_vec()).is_some() {
            return Err(AttestError::malformed(format!(
                "opaque data field {kind} appears twice"
            )));
        }
    }
    Ok(fields)
}

impl SpdmReport {
    /// An opaque field read as a NUL-terminated (or NUL-padded) ASCII string.
    pub fn opaque_string(&self, kind: u16) -> Option<String> {
        let value = self.opaque.get(&kind)?;
        let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
        let text = std::str::from_utf8(&value[..end]).ok()?;
        text.chars()
            .all(|c| c.is_ascii_graphic())
            .then(|| text.to_owned())
    }

    /// The driver version, e.g. `535.86.09`.
    pub fn driver_version(&self) -> Result<String> {
        self.opaque_string(opaque::DRIVER_VERSION)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| AttestError::malformed("the GPU report has no driver version"))
    }

    /// The VBIOS version as NVIDIA writes it, e.g. `96.00.5E.00.01`: the 8-byte field read as
    /// a little-endian u64, its low 32 bits as four hex bytes from the most significant, then
    /// the next byte.
    pub fn vbios_version(&self) -> Result<String> {
        let value = self
            .opaque
            .get(&opaque::VBIOS_VERSION)
            .filter(|v| v.len() == 8)
            .ok_or_else(|| AttestError::malformed("the GPU report has no 8-byte VBIOS version"))?;
        Ok(format!(
            "{:02X}.{:02X}.{:02X}.{:02X}.{:02X}",
            value[3], value[2], value[1], value[0], value[4]
        ))
    }

    /// The measurement of block `index` (from 1).
    pub fn measurement(&self, index: u8) -> Option<&[u8]> {
        self.blocks
            .iter()
            .find(|b| b.index == index)
            .map(|b| b.value.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hopper() -> Vec<u8> {
        let text = include_str!("../../../../testdata/nvidia-gpu/hopperAttestationReport.txt");
        hex::decode(text.trim()).unwrap_or_default()
    }

    #[test]
    fn the_hopper_report_parses() -> Result<()> {
        let bytes = hopper();
        let report = parse_report(&bytes)?;
        assert_eq!(
            hex::encode(report.nonce),
            "27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66"
        );
        assert_eq!(report.blocks.len(), 64);
        assert!(report.blocks.iter().all(|b| b.value.len() == 48));
        assert_eq!(report.driver_version()?, "535.86.09");
        assert_eq!(report.vbios_version()?, "96.00.5E.00.01");
        assert_eq!(
            report.opaque_string(opaque::PROJECT).as_deref(),
            Some("1010")
        );
        assert_eq!(report.signed_len, bytes.len() - SIGNATURE_LEN);
        Ok(())
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = hopper();
        for len in 0..bytes.len() {
            assert!(parse_report(&bytes[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = hopper();
        bytes.push(0);
        assert!(parse_report(&bytes).is_err());
    }

    #[test]
    fn a_repeated_block_index_is_refused() {
        let mut bytes = hopper();
        // The second block's index byte: request, 8 header bytes, the first block's 55 bytes.
        bytes[REQUEST_LEN + 8 + 55] = 1;
        assert!(parse_report(&bytes).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let bytes = hopper();
        for position in (0..bytes.len()).step_by(7) {
            for value in [0x00, 0xFF, 0x7F] {
                let mut changed = bytes.clone();
                changed[position] = value;
                let _ = parse_report(&changed);
            }
        }
    }
}
