//! Reasons taken from an engine's errors and panics, for error messages: cut to a bounded length,
//! and without the numbers that could quote a tensor's values. Shared by every engine.

use std::any::Any;

/// The longest reason taken from an engine, in bytes. Longer ones are cut: a reason names the node
/// and the cause, and anything beyond this is a dump of the graph.
pub(crate) const MAX_REASON_LEN: usize = 2048;

/// `reason` cut to [`MAX_REASON_LEN`] on a character boundary, with `...` when cut.
pub(crate) fn truncate(mut reason: String) -> String {
    if reason.len() > MAX_REASON_LEN {
        let mut end = MAX_REASON_LEN;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
    reason
}

/// The message of a caught panic, when it has one.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

/// `text` with every number (digits, with their decimals and exponent) replaced by `#`: an
/// engine's message can quote the values of a tensor it failed on (an index out of range, say).
pub(crate) fn without_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_number = false;
    while let Some(c) = chars.next() {
        let continues = |next: Option<&char>| {
            next.is_some_and(|n| n.is_ascii_digit() || *n == '-' || *n == '+')
        };
        if c.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else if in_number && matches!(c, '.' | 'e' | 'E') && continues(chars.peek()) {
            // The number's decimals or exponent.
        } else if in_number && matches!(c, '-' | '+') && out.ends_with('#') {
            // An exponent's sign after `e`, dropped with it; a sign before a number stays.
            if !chars.peek().is_some_and(char::is_ascii_digit) {
                in_number = false;
                out.push(c);
            }
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let reason = truncate("é".repeat(MAX_REASON_LEN));
        assert!(reason.len() <= MAX_REASON_LEN + 3);
        assert!(reason.ends_with("..."));
        assert_eq!(truncate("short".to_owned()), "short");
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let payload = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(payload.as_ref()), "static");
        let payload = std::panic::catch_unwind(|| panic!("formatted {}", 7)).unwrap_err();
        assert_eq!(panic_message(payload.as_ref()), "formatted 7");
    }
}
