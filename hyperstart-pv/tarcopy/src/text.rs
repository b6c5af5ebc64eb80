//! Making untrusted text safe to print.
//!
//! File names, member names, registry answers and the stderr of `mksquashfs` (which
//! quotes file names from the image) all reach error messages that are printed on an
//! operator's terminal. A name holding `ESC [ 2 J`, a newline or a bidi override could
//! rewrite what the operator sees, so every such text goes through [`sanitise`] before
//! it is put into an error.

/// Whether `c` must not reach a terminal: control characters (C0, DEL, C1) and the
/// bidirectional embedding, override and isolate characters (U+202A..=U+202E,
/// U+2066..=U+2069).
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every character [`is_unsafe`] replaced by `?`.
pub fn sanitise(s: &str) -> String {
    s.chars()
        .map(|c| if is_unsafe(c) { '?' } else { c })
        .collect()
}

/// Bytes read as UTF-8 (invalid sequences become U+FFFD), then [`sanitise`]d.
pub fn sanitise_bytes(b: &[u8]) -> String {
    sanitise(&String::from_utf8_lossy(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_become_question_marks() {
        assert_eq!(sanitise("a\x1b[2Jb\nc\td\x7f"), "a?[2Jb?c?d?");
        assert_eq!(sanitise("x\u{202e}y\u{2066}z\u{0085}"), "x?y?z?");
        assert_eq!(sanitise("plain/é/日本"), "plain/é/日本");
        assert_eq!(sanitise_bytes(b"a\xffb\x00"), "a\u{fffd}b?");
    }
}
