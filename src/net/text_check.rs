//! The UTF-8 check of a relayed server text frame's payload, with an ASCII test first for short
//! payloads.
//!
//! Most upstream events are a few hundred bytes of ASCII (deltas and lifecycle events), and
//! `simdutf8` pays a fixed setup and a tail step per call (~100–130 instructions for a 100–300
//! byte payload, callgrind). An OR of the payload's 8-byte words (which LLVM vectorizes), tested
//! for any high bit, answers "ASCII" in ~50–90 instructions there; past ~500 bytes `simdutf8`'s
//! AVX2 blocks are cheaper, and any payload that is not all ASCII gets `simdutf8`'s answer.

/// Payloads up to this many bytes are tested as ASCII before `simdutf8` looks at them.
const ASCII_FIRST: usize = 512;

/// The high bit of each byte of a word.
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// `true` when `payload` is valid UTF-8 (the same answer as `std::str::from_utf8`).
pub fn is_utf8(payload: &[u8]) -> bool {
    (payload.len() <= ASCII_FIRST && is_ascii(payload))
        || simdutf8::basic::from_utf8(payload).is_ok()
}

/// `true` when no byte of `bytes` has its high bit set: the words ORed together, the bytes past
/// the last whole word taken as the input's last 8 bytes (again) when it has 8, else one by one.
/// Not `<[u8]>::is_ascii`: its cost moved a lot with length and alignment here, often above
/// `simdutf8`'s (perf/README.md, "Session 13: per-event cost").
fn is_ascii(bytes: &[u8]) -> bool {
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    let mut any = words.fold(0u64, |any, word| {
        any | word
            .first_chunk::<8>()
            .map_or(0, |w| u64::from_ne_bytes(*w))
    });
    match bytes.last_chunk::<8>() {
        Some(last) => any |= u64::from_ne_bytes(*last),
        None => any |= tail.iter().fold(0u64, |any, &b| any | u64::from(b)),
    }
    any & HIGH_BITS == 0
}

/// Valid and invalid UTF-8 around and between ASCII runs in the tests of the checks (this
/// module's and `ws_frame::cut`'s): none, whole characters, a cut one, an overlong form, a
/// surrogate, one past U+10FFFF, a byte never in UTF-8, the last ASCII byte.
#[cfg(test)]
pub(crate) const UTF8_EDGES: [&[u8]; 8] = [
    b"",
    "é€😀 and on".as_bytes(),
    b"\xf0\x9f\x98",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xff",
    b"\x7f",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_test_finds_a_high_byte_at_every_offset_of_every_length() {
        for len in 0..=80 {
            let plain = vec![b'a'; len];
            assert!(is_ascii(&plain), "{len}");
            for at in 0..len {
                for high in [0x80u8, 0xc3, 0xff] {
                    let mut bytes = plain.clone();
                    bytes[at] = high;
                    assert!(!is_ascii(&bytes), "{len} {at} {high:#x}");
                }
            }
        }
        let all: Vec<u8> = (0..0x80u8).collect();
        assert!(is_ascii(&all));
    }

    #[test]
    fn agrees_with_std_on_both_sides_of_the_ascii_bound() {
        let mut lengths: Vec<usize> = (0..70).collect();
        lengths.extend(ASCII_FIRST - 20..ASCII_FIRST + 20);
        for tail in UTF8_EDGES {
            for &len in &lengths {
                let head = b"x".repeat(len);
                for payload in [
                    [&head[..], tail].concat(),
                    [tail, &head[..]].concat(),
                    [&head[..len / 2], tail, &head[len / 2..]].concat(),
                ] {
                    assert_eq!(
                        is_utf8(&payload),
                        std::str::from_utf8(&payload).is_ok(),
                        "{tail:?} {len} {}",
                        payload.len()
                    );
                }
            }
        }
    }
}
