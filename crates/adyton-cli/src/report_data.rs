//! Report data given as hex on the command line (`--report-data`, `--expect-report-data`).

use adyton_attest::REPORT_DATA_LEN;
use anyhow::{bail, Context, Result};

/// Up to 64 bytes of hex, zero-padded on the right to 64 bytes, as the TEEs do.
pub fn parse_report_data(text: &str) -> Result<[u8; REPORT_DATA_LEN]> {
    let bytes = hex::decode(text.trim()).context("--report-data must be hex")?;
    if bytes.len() > REPORT_DATA_LEN {
        bail!(
            "--report-data is {} bytes; at most {REPORT_DATA_LEN} fit",
            bytes.len()
        );
    }
    let mut out = [0u8; REPORT_DATA_LEN];
    out[..bytes.len()].copy_from_slice(&bytes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn report_data_is_hex_of_at_most_64_bytes_zero_padded() {
        let data = parse_report_data(" 00ff ").unwrap();
        assert_eq!(&data[..2], &[0x00, 0xff]);
        assert!(data[2..].iter().all(|&b| b == 0));
        assert!(parse_report_data(&"ab".repeat(64)).is_ok());
        let e = format!("{:#}", parse_report_data(&"ab".repeat(65)).unwrap_err());
        assert!(e.contains("65 bytes"), "{e}");
        let e = format!("{:#}", parse_report_data("xyz").unwrap_err());
        assert!(e.contains("must be hex"), "{e}");
    }
}
