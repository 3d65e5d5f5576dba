//! A bound on JSON nesting, checked before any parser walks bytes a peer sent.
//!
//! sonic-rs skips and parses nested values by recursion (its serde path stops at 255 levels,
//! its lazy skip and its DOM parser do not stop at all), so a frame of ~18 KB that nests ~9,000
//! levels overflows a shard's stack and aborts the process. Every entry point where peer bytes
//! meet a JSON parser (client frames, POST bodies, upstream events and SSE data, values read
//! back from Redis, the mock's requests) first runs [`check_depth`]: one pass that only tracks
//! strings and brackets, allocates nothing, and jumps over string contents in SSE2 steps.
//! (A plain client frame has its nesting bounded by the one pass that also reads it,
//! `json_scan`; any other still passes [`check_depth`] first.)
//!
//! The scan does not validate JSON; it only guarantees that no parser that runs after it
//! recurses deeper than [`MAX_JSON_DEPTH`].

use std::ops::Range;

use super::fields::skip_ws;
use super::json_skip::string_end;

/// The deepest nesting accepted from a peer (objects and arrays together). serde_json's
/// default; real requests (tool schemas included) stay far below it.
pub const MAX_JSON_DEPTH: usize = 128;

/// JSON that nests deeper than allowed, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JSON nests deeper than {limit} levels at byte {offset}")]
pub struct TooDeep {
    /// The limit that was passed.
    pub limit: usize,
    /// Byte offset of the bracket that went past the limit.
    pub offset: usize,
    /// Byte range of the top-level key (without quotes) whose value went too deep, when the
    /// input is an object; names the offending parameter in the client's error.
    pub key: Option<Range<usize>>,
}

impl TooDeep {
    /// The top-level key whose value went too deep, read from the input that was checked.
    pub fn key_in<'a>(&self, input: &'a [u8]) -> Option<&'a str> {
        let range = self.key.clone()?;
        std::str::from_utf8(input.get(range)?).ok()
    }
}

/// Checks that `bytes` never nests objects and arrays deeper than `limit`.
pub fn check_depth(bytes: &[u8], limit: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut key: Option<Range<usize>> = None;
    let mut at = 0usize;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'"' => {
                let start = at + 1;
                let Some(end) = jump_string(bytes, start) else {
                    return Ok(());
                };
                at = end + 1;
                if depth == 1 && bytes.get(skip_ws(bytes, at)) == Some(&b':') {
                    key = Some(start..end);
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(TooDeep {
                        limit,
                        offset: at,
                        key,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    Ok(())
}

/// Index of the closing quote of the string whose contents start at `from`; `None` when the
/// input ends first. The field walk's [`string_end`] without its escape flag: since it steps
/// through a string in SSE2 blocks and wide runs, it costs less than the `memchr2` this used on
/// short strings and no more on long ones. Also what the walk that locates a terminal event's
/// fields jumps the strings inside values with.
pub(crate) fn jump_string(bytes: &[u8], from: usize) -> Option<usize> {
    string_end(bytes, from).map(|(end, _)| end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!(
            r#"{{"type":"response.create","metadata":{}1{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    }

    #[test]
    fn shallow_json_passes() {
        assert_eq!(check_depth(nested(10).as_bytes(), MAX_JSON_DEPTH), Ok(()));
        assert_eq!(check_depth(b"[]", 1), Ok(()));
        assert_eq!(check_depth(b"", 1), Ok(()));
    }

    #[test]
    fn the_limit_counts_objects_and_arrays() {
        // The outer object is level 1, so `levels` arrays inside it reach levels + 1.
        let at_limit = nested(MAX_JSON_DEPTH - 1);
        assert_eq!(check_depth(at_limit.as_bytes(), MAX_JSON_DEPTH), Ok(()));
        let over = nested(MAX_JSON_DEPTH);
        let err = check_depth(over.as_bytes(), MAX_JSON_DEPTH).unwrap_err();
        assert_eq!(err.key_in(over.as_bytes()), Some("metadata"));
        assert_eq!(over.as_bytes()[err.offset], b'[');
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let s = format!(r#"{{"input":"{}","x":"\"[{{"}}"#, "[".repeat(10_000));
        assert_eq!(check_depth(s.as_bytes(), 4), Ok(()));
    }

    #[test]
    fn escaped_quotes_do_not_end_a_string() {
        let s = br#"{"a":"\\\"[[[[","b":[[[[[1]]]]]}"#;
        let err = check_depth(s, 4).unwrap_err();
        assert_eq!(err.key_in(s), Some("b"));
    }

    #[test]
    fn a_string_value_is_not_taken_for_a_key() {
        let s = br#"{"a":"x", "b" : [[[1]]]}"#;
        assert_eq!(check_depth(s, 3).unwrap_err().key_in(s), Some("b"));
    }

    #[test]
    fn truncated_input_is_left_to_the_parser() {
        assert_eq!(check_depth(br#"{"a":"\"#, 1), Ok(()));
        assert_eq!(check_depth(br#"{"a":"x"#, 1), Ok(()));
    }

    #[test]
    fn a_very_deep_frame_is_refused_without_recursion() {
        let deep = nested(200_000);
        assert!(check_depth(deep.as_bytes(), MAX_JSON_DEPTH).is_err());
    }
}
