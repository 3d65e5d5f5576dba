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
#[inline(always)]
pub fn is_utf8(payload: &[u8]) -> bool {
    (payload.len() <= ASCII_FIRST && is_ascii(payload))
        || simdutf8::basic::from_utf8(payload).is_ok()
}

/// `true` when no byte of `bytes` has its high bit set: 32 bytes a step with AVX2 where the CPU
/// has it (detected at run time, as `ws_frame::mask_into_avx2` does), else a word at a time
/// ([`is_ascii_words`]).
#[inline(always)]
fn is_ascii(bytes: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, just checked.
        return unsafe { is_ascii_avx2(bytes) };
    }
    is_ascii_words(bytes)
}

/// [`is_ascii`] on a CPU with AVX2: the 32-byte vectors ORed together, two a step, the bytes
/// past the last whole vector taken as the input's last 32 bytes (again); inputs shorter than
/// one vector a word at a time.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn is_ascii_avx2(bytes: &[u8]) -> bool {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256};
    const V: usize = 32;
    let len = bytes.len();
    let Some(last) = len.checked_sub(V) else {
        return is_ascii_words(bytes);
    };
    let p = bytes.as_ptr();
    // SAFETY (of every load below): each reads the 32 bytes at `p + at` for an `at` with
    // `at + 32 <= len` (`last + 32 == len`; the loop and the step after it check theirs);
    // unaligned loads.
    let mut any = unsafe { _mm256_loadu_si256(p.add(last).cast::<__m256i>()) };
    let mut at = 0;
    while at + 2 * V <= len {
        let (a, b) = unsafe {
            (
                _mm256_loadu_si256(p.add(at).cast::<__m256i>()),
                _mm256_loadu_si256(p.add(at + V).cast::<__m256i>()),
            )
        };
        any = _mm256_or_si256(any, _mm256_or_si256(a, b));
        at += 2 * V;
    }
    if at + V <= len {
        any = _mm256_or_si256(any, unsafe {
            _mm256_loadu_si256(p.add(at).cast::<__m256i>())
        });
    }
    _mm256_movemask_epi8(any) == 0
}

/// [`is_ascii`] a word at a time: the words ORed together, the bytes past the last whole word
/// taken as the input's last 8 bytes (again) when it has 8, else one by one.
/// Not `<[u8]>::is_ascii`: its cost moved a lot with length and alignment here, often above
/// `simdutf8`'s (perf/README.md, "Session 13: per-event cost").
fn is_ascii_words(bytes: &[u8]) -> bool {
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

    /// Lengths every form of the ASCII test is tried at: each up to 200 (around every step of
    /// the word and vector loops: 8, 32, 64) and around the bound where `simdutf8` takes over.
    fn lengths() -> Vec<usize> {
        (0..=200).chain(ASCII_FIRST - 2..=ASCII_FIRST + 2).collect()
    }

    /// Every form of the ASCII test on `bytes`: the dispatched one, the word one, and the AVX2
    /// one where the CPU has it; all must give `want`.
    fn every_form_says(bytes: &[u8], want: bool, what: &str) {
        assert_eq!(is_ascii(bytes), want, "{what}");
        assert_eq!(is_ascii_words(bytes), want, "words {what}");
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, just checked.
            assert_eq!(unsafe { is_ascii_avx2(bytes) }, want, "avx2 {what}");
        }
    }

    #[test]
    fn the_ascii_test_finds_a_high_byte_at_every_offset_of_every_length() {
        for len in lengths() {
            let plain = vec![b'a'; len];
            every_form_says(&plain, true, &format!("{len}"));
            for at in 0..len {
                for high in [0x80u8, 0xc3, 0xff] {
                    let mut bytes = plain.clone();
                    bytes[at] = high;
                    every_form_says(&bytes, false, &format!("{len} {at} {high:#x}"));
                }
            }
        }
        let all: Vec<u8> = (0..0x80u8).collect();
        every_form_says(&all, true, "all ASCII");
    }

    #[test]
    fn the_ascii_test_reads_only_its_slice_at_every_start() {
        // High bytes right before and after the slice: a load past either end would see them.
        let mut fenced = vec![0xffu8; 300];
        fenced[40..260].fill(b'a');
        for start in 40..110 {
            for end in start..=260 {
                every_form_says(&fenced[start..end], true, &format!("{start}..{end}"));
            }
        }
    }

    #[test]
    fn an_invalid_byte_at_every_offset_of_every_length_is_not_utf8() {
        for len in lengths() {
            for at in 0..len {
                for bad in [&b"\xff"[..], b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"] {
                    let mut payload = vec![b'a'; len];
                    let end = (at + bad.len()).min(len);
                    payload[at..end].copy_from_slice(&bad[..end - at]);
                    assert_eq!(
                        is_utf8(&payload),
                        std::str::from_utf8(&payload).is_ok(),
                        "{len} {at} {bad:?}"
                    );
                }
            }
        }
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
