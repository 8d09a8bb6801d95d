//! Byte-count flags: `--max-upload-bytes 512M`, `--chunk-size 64K`, `--max-blob-bytes 20G`.

/// Parses a byte count with an optional K, M or G suffix (binary units).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((at, 'k' | 'K')) => (&text[..at], 1u64 << 10),
        Some((at, 'm' | 'M')) => (&text[..at], 1u64 << 20),
        Some((at, 'g' | 'G')) => (&text[..at], 1u64 << 30),
        _ => (text, 1),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a byte count (examples: 65536, 64K, 1M, 2G)"))?;
    value
        .checked_mul(unit)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// A byte count that fits 32 bits (chunk sizes).
pub fn parse_size(text: &str) -> Result<u32, String> {
    u32::try_from(parse_bytes(text)?).map_err(|_| format!("`{}` is too large", text.trim()))
}

/// A byte count for memory limits.
pub fn parse_limit(text: &str) -> Result<usize, String> {
    usize::try_from(parse_bytes(text)?).map_err(|_| format!("`{}` is too large", text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("4G").is_err());
        assert_eq!(parse_limit("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("20G"), Ok(20 << 30));
        assert!(parse_size("99999999M").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_bytes("99999999999G").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("1T").is_err());
    }
}
