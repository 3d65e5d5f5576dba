//! Short byte strings read as `&str`: event types, keys, ids and model names, read dozens of
//! times per turn. `std::str::from_utf8` pays a fixed setup per call (~120 instructions for a
//! 25-byte event type, callgrind: 1.9k per WebSocket turn in `leading_type` alone); these
//! strings are ASCII, which `is_ascii` checks a word at a time in a few instructions. Anything
//! else still goes through the full check.

/// `bytes` as `&str` when they are valid UTF-8.
pub(crate) fn short_str(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: every byte is below 0x80, and ASCII is valid UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_std_on_ascii_utf8_and_invalid_bytes() {
        let cases: &[&[u8]] = &[
            b"",
            b"response.output_text.delta",
            b"gpt-5.1-codex",
            "modèle-ü".as_bytes(),
            "日本語のモデル".as_bytes(),
            b"\x7f\x00ascii-edges",
            b"\x80",
            b"abc\xff",
            b"caf\xc3",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
        ];
        for bytes in cases {
            assert_eq!(
                short_str(bytes),
                std::str::from_utf8(bytes).ok(),
                "{bytes:?}"
            );
        }
        // A non-ASCII or invalid byte at every position of a word-sized run.
        for len in 0..40 {
            for at in 0..len {
                for bad in [0x80u8, 0xc3, 0xff] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = bad;
                    assert_eq!(short_str(&bytes), std::str::from_utf8(&bytes).ok());
                }
            }
        }
    }
}
