//! What request and response heads share: list-valued header values and reason phrases.

/// The elements of a comma-separated header value, trimmed (empty elements included).
pub(super) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// `true` when a comma-separated header value holds `token` (case-insensitive).
pub(super) fn has_token(value: &[u8], token: &str) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The reason phrase of `status` for a status line (`Unknown` for codes without one).
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_trimmed_and_matched_without_case() {
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(has_token(b" chunked ", "chunked"));
        assert!(!has_token(b"chunkedx, gzip", "chunked"));
        assert_eq!(tokens(b"a,,b").collect::<Vec<_>>(), [&b"a"[..], b"", b"b"]);
        assert_eq!(reason(404), "Not Found");
        assert_eq!(reason(599), "Unknown");
    }
}
