//! The `Range` request header (RFC 9110, section 14), for one byte range. No HTTP types here.
//!
//! Served: `bytes=a-b`, `bytes=a-` and `bytes=-n`. A multi-range request, another unit or a
//! header that does not parse is ignored and the whole blob is served (status 200), as RFC 9110
//! allows; a single range that starts at or after the end is unsatisfiable (status 416).

use std::ops::Range;

/// What to serve for a request's `Range` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole blob (no header, or one that is ignored).
    Whole,
    /// These bytes (never empty).
    Partial(Range<u64>),
    /// Nothing: the range lies outside the blob.
    Unsatisfiable,
}

/// Resolves the `Range` header `header` against a blob of `size` bytes.
pub fn resolve(header: Option<&str>, size: u64) -> RangeAnswer {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => match number(last) {
            None => RangeAnswer::Whole,
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if size == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Partial(size.saturating_sub(n)..size),
        },
        // `a-`: from a to the end.
        (false, true) => match number(first) {
            None => RangeAnswer::Whole,
            Some(start) if start >= size => RangeAnswer::Unsatisfiable,
            Some(start) => RangeAnswer::Partial(start..size),
        },
        // `a-b`: inclusive bounds, the end clipped to the blob.
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= size {
                    RangeAnswer::Unsatisfiable
                } else {
                    RangeAnswer::Partial(start..end.min(size - 1) + 1)
                }
            }
            _ => RangeAnswer::Whole,
        },
        (true, true) => RangeAnswer::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::RangeAnswer::*;
    use super::*;

    #[test]
    fn single_ranges_resolve() {
        assert_eq!(resolve(None, 10), Whole);
        assert_eq!(resolve(Some("bytes=0-3"), 10), Partial(0..4));
        assert_eq!(resolve(Some("bytes=5-"), 10), Partial(5..10));
        assert_eq!(resolve(Some("bytes=-3"), 10), Partial(7..10));
        assert_eq!(resolve(Some("bytes=-30"), 10), Partial(0..10));
        assert_eq!(resolve(Some("bytes=8-100"), 10), Partial(8..10));
        assert_eq!(resolve(Some(" bytes=9-9 "), 10), Partial(9..10));
    }

    #[test]
    fn unsatisfiable_ranges_are_told_apart_from_ignored_ones() {
        assert_eq!(resolve(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(resolve(Some("bytes=10-20"), 10), Unsatisfiable);
        assert_eq!(resolve(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(resolve(Some("bytes=0-"), 0), Unsatisfiable);
        for ignored in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=5-2",
            "bytes=x-",
            "bytes=-",
            "bytes=+1-2",
            "bytes",
        ] {
            assert_eq!(resolve(Some(ignored), 10), Whole, "{ignored}");
        }
    }
}
