//! The first byte of JSON string contents that ends a run of plain text: a quote, a backslash,
//! and for the strict walk also a control character.
//!
//! Both string walks (`json_scan`'s strict one over client frames and POST bodies, `json_skip`'s
//! for the field walk over upstream events) step through a string's first bytes a [`BLOCK`] at
//! a time and further on a [`WIDE`] run at a time. On x86-64 a block is one unaligned SSE2 load
//! and a few byte compares (SSE2 is part of every x86-64 CPU, so there is no runtime
//! detection), and a wide run eight of them folded into one test; other targets look at a block
//! as two `u64` words.

/// Bytes looked at per step in a string's first bytes (keys, ids and short values end there).
pub(crate) const BLOCK: usize = 16;

/// Bytes looked at per step further on: eight blocks folded into one test cost less per byte
/// than a block a step (callgrind, a 30 KB string: ~0.45 instructions a byte; four blocks
/// ~0.5), but more when the string ends in the first of them.
pub(crate) const WIDE: usize = 8 * BLOCK;

/// Non-zero when a byte of `block` is `"` or `\`; then the lowest set bit `k` says byte `k` is
/// the first such byte (higher bits are not meaningful).
#[inline(always)]
pub(crate) fn quote_or_backslash(block: &[u8; BLOCK]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::quote_or_backslash(block)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        words::quote_or_backslash(block)
    }
}

/// [`quote_or_backslash`] that also stops at a control character (below 0x20; bytes of UTF-8
/// text, 0x80 and above, are not).
#[inline(always)]
pub(crate) fn quote_backslash_or_control(block: &[u8; BLOCK]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::quote_backslash_or_control(block)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        words::quote_backslash_or_control(block)
    }
}

/// Where the [`WIDE`] runs from `i` on that hold no `"`, `\` or control character (below
/// 0x20) end: at a run that holds one, or where fewer than [`WIDE`] bytes are left. On a CPU
/// with AVX2 (detected once, then one relaxed load per call) each run is four 32-byte steps
/// instead of eight 16-byte ones ([`avx2::plain_strict_runs_end`]).
#[inline(always)]
pub(crate) fn plain_strict_runs_end(bytes: &[u8], i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, just checked.
        return unsafe { avx2::plain_strict_runs_end(bytes, i) };
    }
    runs_end(bytes, i, plain_wide)
}

/// The runs loop of [`plain_strict_runs_end`] over one form of the wide test.
#[inline(always)]
fn runs_end(bytes: &[u8], mut i: usize, plain_wide: impl Fn(&[u8; WIDE]) -> bool) -> usize {
    let Some(last) = bytes.len().checked_sub(WIDE) else {
        return i;
    };
    while i <= last {
        let Some(wide) = bytes[i..].first_chunk::<WIDE>() else {
            break;
        };
        if !plain_wide(wide) {
            break;
        }
        i += WIDE;
    }
    i
}

#[cfg(target_arch = "x86_64")]
use sse2::plain_wide;

#[cfg(not(target_arch = "x86_64"))]
use words::plain_wide;

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_adds_epu8, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_min_epu8,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_xor_si128,
    };

    use super::{BLOCK, WIDE};

    /// One bit per byte: set where the byte is `"` or `\`.
    #[inline(always)]
    pub(super) fn quote_or_backslash(block: &[u8; BLOCK]) -> u32 {
        // SAFETY: SSE2 is baseline on x86-64; `block` is 16 bytes, exactly one unaligned load.
        unsafe {
            let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            _mm_movemask_epi8(_mm_or_si128(quote, backslash)) as u32
        }
    }

    /// One bit per byte: set where the byte is `"`, `\` or below 0x20.
    #[inline(always)]
    pub(super) fn quote_backslash_or_control(block: &[u8; BLOCK]) -> u32 {
        // SAFETY: SSE2 is baseline on x86-64; `block` is 16 bytes, exactly one unaligned load.
        unsafe {
            let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
            // `x ^ 2` maps 0x00..=0x1f onto itself and `"` (0x22) onto 0x20, and every other
            // byte above 0x20: one unsigned `<= 0x20` (max with 0x20 unchanged) finds both.
            let folded = _mm_xor_si128(v, _mm_set1_epi8(2));
            let limit = _mm_set1_epi8(0x20);
            let quote_or_control = _mm_cmpeq_epi8(_mm_max_epu8(folded, limit), limit);
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            _mm_movemask_epi8(_mm_or_si128(quote_or_control, backslash)) as u32
        }
    }

    /// `true` when no byte of `wide` is `"`, `\` or below 0x20. Each byte is XORed twice so
    /// that a stop becomes a small value once, and the unsigned minimum of each over all
    /// blocks is tested once (no compare per block): `x ^ 2` (as in
    /// [`quote_backslash_or_control`], `<= 0x20` at a quote or control byte), then `^ 0x5e`
    /// (`x ^ 0x5c`, zero at a backslash).
    #[inline(always)]
    pub(super) fn plain_wide(wide: &[u8; WIDE]) -> bool {
        let p = wide.as_ptr().cast::<__m128i>();
        // SAFETY: SSE2 is baseline on x86-64; `wide` is `WIDE / 16` blocks of 16 bytes, so each
        // unaligned 16-byte load at `p + k` for `k < WIDE / 16` is in bounds.
        unsafe {
            let two = _mm_set1_epi8(2);
            let to_backslash = _mm_set1_epi8((2 ^ b'\\') as i8);
            let mut low_quote_control = _mm_set1_epi8(-1);
            let mut low_backslash = _mm_set1_epi8(-1);
            for k in 0..WIDE / BLOCK {
                let x = _mm_xor_si128(_mm_loadu_si128(p.add(k)), two);
                low_quote_control = _mm_min_epu8(low_quote_control, x);
                low_backslash = _mm_min_epu8(low_backslash, _mm_xor_si128(x, to_backslash));
            }
            // A backslash's 0 becomes 0x20, anything else more: one `<= 0x20` for all.
            let limit = _mm_set1_epi8(0x20);
            let low = _mm_min_epu8(low_quote_control, _mm_adds_epu8(low_backslash, limit));
            _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_max_epu8(low, limit), limit)) == 0
        }
    }
}

/// The wide test with 32-byte vectors, for CPUs that have AVX2 (detected at run time: the
/// build targets baseline x86-64). The folds of [`sse2::plain_wide`], the backslash found by
/// a compare ([`plain_runs`]); a 30 KB POST body's
/// strict scan spends most of its instructions here.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_max_epu8, _mm256_min_epu8,
        _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi8, _mm256_setzero_si256,
        _mm256_xor_si256,
    };

    use super::WIDE;

    /// [`super::plain_strict_runs_end`] four runs a step: all four folded into one test
    /// ([`plain_runs`]), then, from where a step held a stop or fewer than four runs are
    /// left, one run a step. The same answer as one run a step; callgrind (`perf/instructions.sh --rate
    /// 400`, an 8 KB client frame): 1.49k → 1.21k instructions per turn against two runs a
    /// step with a separate load per vector.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn plain_strict_runs_end(bytes: &[u8], mut i: usize) -> usize {
        while let Some(four) = bytes
            .get(i..)
            .and_then(|rest| rest.first_chunk::<{ 4 * WIDE }>())
        {
            // SAFETY (of the call): this function runs only where AVX2 is.
            if !unsafe { plain_runs::<{ 4 * WIDE }>(four) } {
                break;
            }
            i += 4 * WIDE;
        }
        while let Some(wide) = bytes.get(i..).and_then(|rest| rest.first_chunk::<WIDE>()) {
            // SAFETY (of the call): as above.
            if !unsafe { plain_runs::<WIDE>(wide) } {
                break;
            }
            i += WIDE;
        }
        i
    }

    /// `true` when no byte of `bytes` (a multiple of 32 of them: one [`WIDE`] run or more) is
    /// `"`, `\` or below 0x20, in one test. Each 32 bytes: `x ^ 2` (one XOR that takes the
    /// load: a quote becomes 0x20, a control byte stays below it, see
    /// [`super::sse2::quote_backslash_or_control`]) folded into an unsigned minimum, and
    /// compared with `\ ^ 2` into an OR: four instructions (the XOR twice from one loaded
    /// vector, as [`super::sse2::plain_wide`] folds, took a separate load: five).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn plain_runs<const N: usize>(bytes: &[u8; N]) -> bool {
        const { assert!(N % 32 == 0) };
        let p = bytes.as_ptr().cast::<__m256i>();
        // Opaque to the optimiser: else it compares the loaded `x` with `\\` itself, and the
        // load, used twice, is an instruction of its own instead of the XOR's operand.
        let two = std::hint::black_box(_mm256_set1_epi8(2));
        let backslash = _mm256_set1_epi8((2 ^ b'\\') as i8);
        let mut low_quote_control = _mm256_set1_epi8(-1);
        let mut any_backslash = _mm256_setzero_si256();
        for k in 0..N / 32 {
            // SAFETY: `bytes` is `N / 32` runs of 32 bytes, so each unaligned 32-byte load at
            // `p + k` for `k < N / 32` is in bounds.
            let x = _mm256_xor_si256(unsafe { _mm256_loadu_si256(p.add(k)) }, two);
            low_quote_control = _mm256_min_epu8(low_quote_control, x);
            any_backslash = _mm256_or_si256(any_backslash, _mm256_cmpeq_epi8(x, backslash));
        }
        let limit = _mm256_set1_epi8(0x20);
        let quote_control = _mm256_cmpeq_epi8(_mm256_max_epu8(low_quote_control, limit), limit);
        _mm256_movemask_epi8(_mm256_or_si256(quote_control, any_backslash)) == 0
    }
}

/// The block as two little-endian `u64` words, for targets without SSE2 (and for the tests,
/// which hold both forms to the same reference).
#[cfg(any(test, not(target_arch = "x86_64")))]
mod words {
    use super::{BLOCK, WIDE};

    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const TOPS: u64 = u64::from_le_bytes([0x80; 8]);

    /// The top bit of each byte of `word` that is zero. The lowest flag is exact (the borrow of
    /// the subtraction only runs upwards from a zero byte); flags above it may not be.
    fn zero_bytes(word: u64) -> u64 {
        word.wrapping_sub(ONES) & !word & TOPS
    }

    fn quote_or_backslash_word(word: u64) -> u64 {
        zero_bytes(word ^ (ONES * u64::from(b'"'))) | zero_bytes(word ^ (ONES * u64::from(b'\\')))
    }

    fn control_word(word: u64) -> u64 {
        word.wrapping_sub(ONES * 0x20) & !word & TOPS
    }

    /// The bit of the first byte `flags` marks in the block, or 0: the lowest flag of each word
    /// is exact, so the lowest of the first word that has one is.
    fn first(block: &[u8; BLOCK], flags: impl Fn(u64) -> u64) -> u32 {
        for (w, word) in block.chunks_exact(8).enumerate() {
            let word: [u8; 8] = word.try_into().unwrap_or_default();
            let found = flags(u64::from_le_bytes(word));
            if found != 0 {
                return 1 << (w * 8 + (found.trailing_zeros() / 8) as usize);
            }
        }
        0
    }

    /// The bit of the first `"` or `\` in `block`, or 0.
    pub(super) fn quote_or_backslash(block: &[u8; BLOCK]) -> u32 {
        first(block, quote_or_backslash_word)
    }

    /// The bit of the first `"`, `\` or byte below 0x20 in `block`, or 0.
    pub(super) fn quote_backslash_or_control(block: &[u8; BLOCK]) -> u32 {
        first(block, |word| {
            quote_or_backslash_word(word) | control_word(word)
        })
    }

    /// `true` when no byte of `wide` is `"`, `\` or below 0x20.
    pub(super) fn plain_wide(wide: &[u8; WIDE]) -> bool {
        wide.chunks_exact(BLOCK).all(|block| {
            let block: &[u8; BLOCK] = block.try_into().unwrap_or(&[0; BLOCK]);
            quote_backslash_or_control(block) == 0
        })
    }
}

/// Inputs on which a string walk (`json_scan`'s, `json_skip`'s) must agree with its
/// byte-by-byte reference, for their tests: the input, where the string's contents start, and
/// what the case is.
#[cfg(test)]
pub(crate) mod cases {
    use std::fmt::Debug;

    /// One case: the input, where the contents start, a description for the failure message.
    type Case = (Vec<u8>, usize, String);

    /// Requires that `walk` answers as `reference` on every case.
    pub(crate) fn check<T: PartialEq + Debug>(
        walk: impl Fn(&[u8], usize) -> T,
        reference: impl Fn(&[u8], usize) -> T,
    ) {
        let all = every_byte_in_the_first_blocks()
            .chain(every_stop_in_long_strings())
            .chain(escapes_across_blocks())
            .chain(json_from_every_offset());
        for (s, from, what) in all {
            assert_eq!(walk(&s, from), reference(&s, from), "{what}");
        }
    }

    /// Every byte value at every position of the first blocks, with the input ending right
    /// after the string (its last bytes looked at one by one) or a block and more later.
    fn every_byte_in_the_first_blocks() -> impl Iterator<Item = Case> {
        (0..80).flat_map(|len| {
            (0..=255u8).flat_map(move |c| {
                [0, 20].map(|after| {
                    let mut s = vec![b'a'; len];
                    s.push(c);
                    s.extend_from_slice(b"z\"x");
                    s.extend(std::iter::repeat_n(b' ', after));
                    (s, 0, format!("len {len} byte {c:#x} after {after}"))
                })
            })
        })
    }

    /// A stop (and bytes that are none) at every position of strings up to 260 bytes, past
    /// the first blocks, from a few starts.
    fn every_stop_in_long_strings() -> impl Iterator<Item = Case> {
        (0..260).flat_map(|len| {
            [b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xff]
                .into_iter()
                .flat_map(move |c| {
                    [0, 70].into_iter().flat_map(move |after| {
                        let mut s = vec![b'a'; len];
                        s.push(c);
                        s.extend_from_slice(b"z\"");
                        s.extend(std::iter::repeat_n(b' ', after));
                        [0, 1, 15, 17].map(|from| {
                            let what = format!("len {len} byte {c:#x} after {after} from {from}");
                            (s.clone(), from, what)
                        })
                    })
                })
        })
    }

    /// JSON with strings holding brackets, quotes and escapes, UTF-8 text and a string the
    /// input ends in, from every offset.
    fn json_from_every_offset() -> impl Iterator<Item = Case> {
        let json = [
            &br#"{"a":[1,{"b":"x\"}]"},"\\"],"c":"\u0022[","d":{"e":[[[]]]}, "long":"#[..],
            &[b'a'; 75],
            br#"\\\"{","#,
            "\"é€\":\"\\t\"}, \"a".as_bytes(),
        ]
        .concat();
        (0..=json.len() + 1).map(move |i| (json.clone(), i, format!("at {i}")))
    }

    /// Escapes (valid, invalid, cut off by the end of the input) across block boundaries.
    fn escapes_across_blocks() -> impl Iterator<Item = Case> {
        const TAILS: [&[u8]; 15] = [
            br#"\"x""#,
            br#"\\""#,
            br#"\\\"""#,
            br#"\u00e9""#,
            br#"\uD83D\uDE00x""#,
            br#"\"\"\"\"\"\"\"\"\"\"""#,
            br#"\\\\\\\\\\\\\\\\\\\""x"#,
            br#"\q""#,
            br#"\u12g4""#,
            br#"\u12""#,
            b"\\u00e",
            b"\\",
            b"\\\"",
            b"",
            b"\n\x01\"",
        ];
        (0..40).chain(60..140).flat_map(|len| {
            TAILS.into_iter().flat_map(move |tail| {
                [0, 20].into_iter().flat_map(move |pad| {
                    let mut s = vec![b'a'; len];
                    s.extend_from_slice(tail);
                    s.extend(std::iter::repeat_n(b' ', pad));
                    [0, len.saturating_sub(1), len].map(|from| {
                        let tail = String::from_utf8_lossy(tail);
                        let what = format!("len {len} from {from} pad {pad} tail {tail:?}");
                        (s.clone(), from, what)
                    })
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_end(c: u8) -> bool {
        c == b'"' || c == b'\\'
    }

    fn is_strict_end(c: u8) -> bool {
        is_end(c) || c < 0x20
    }

    /// What a block search must answer: the index of the first byte `stop` takes.
    fn first_reference(block: &[u8; BLOCK], stop: fn(u8) -> bool) -> Option<usize> {
        block.iter().position(|&c| stop(c))
    }

    fn lowest(mask: u32) -> Option<usize> {
        (mask != 0).then(|| mask.trailing_zeros() as usize)
    }

    /// A block search, named, with the byte test it must agree with.
    type Form = (&'static str, fn(&[u8; BLOCK]) -> u32, fn(u8) -> bool);

    /// Every search form.
    const SEARCHES: [Form; 4] = [
        ("quote_or_backslash", quote_or_backslash, is_end),
        (
            "quote_backslash_or_control",
            quote_backslash_or_control,
            is_strict_end,
        ),
        (
            "words::quote_or_backslash",
            words::quote_or_backslash,
            is_end,
        ),
        (
            "words::quote_backslash_or_control",
            words::quote_backslash_or_control,
            is_strict_end,
        ),
    ];

    #[test]
    fn every_byte_at_every_position_is_found_as_one_by_one() {
        for (name, search, stop) in SEARCHES {
            for background in [
                b'a', 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xa2, 0xdc, 0xff,
            ] {
                for at in 0..BLOCK {
                    for c in 0..=255u8 {
                        let mut block = [background; BLOCK];
                        block[at] = c;
                        assert_eq!(
                            lowest(search(&block)),
                            first_reference(&block, stop),
                            "{name}: byte {c:#x} at {at} among {background:#x}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_first_of_several_is_found() {
        // A later special byte (or one that only borrows from it in the word form) must not
        // hide an earlier one, nor an earlier one be found where only a later one is.
        for (name, search, stop) in SEARCHES {
            for first in 0..BLOCK {
                for second in first..BLOCK {
                    for (c1, c2) in [
                        (b'"', b'\\'),
                        (b'\\', b'"'),
                        (0x1f, b'"'),
                        (b'"', 0x00),
                        (0x01, b'\\'),
                        (0x21, 0x1f),
                        (0xa2, b'"'),
                    ] {
                        let mut block = [b'x'; BLOCK];
                        block[second] = c2;
                        block[first] = c1;
                        assert_eq!(
                            lowest(search(&block)),
                            first_reference(&block, stop),
                            "{name}: {c1:#x} at {first}, {c2:#x} at {second}"
                        );
                    }
                }
            }
        }
    }

    /// A wide test, named.
    type WideForm = (&'static str, fn(&[u8; WIDE]) -> bool);

    /// Every form of the wide test.
    const WIDE_TESTS: [WideForm; 3] = [
        ("plain_wide", plain_wide),
        ("words::plain_wide", words::plain_wide),
        ("avx2::plain_wide", avx2_plain_wide),
    ];

    /// The AVX2 form where the CPU has it, else the baseline one (the tests still pass there).
    fn avx2_plain_wide(wide: &[u8; WIDE]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, just checked.
            return unsafe { avx2::plain_runs::<WIDE>(wide) };
        }
        plain_wide(wide)
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn this_machine_runs_the_avx2_form() {
        // Where the CPU has AVX2 (every machine this project runs its tests on), the tests
        // above exercise the AVX2 form, not the fallback.
        assert!(std::is_x86_feature_detected!("avx2"));
    }

    #[test]
    fn a_wide_run_is_plain_only_without_any_stop() {
        for (name, plain) in WIDE_TESTS {
            for background in [
                b'a', 0x20, 0x21, 0x23, 0x5d, 0x7e, 0x7f, 0x80, 0xa2, 0xdc, 0xff,
            ] {
                assert!(plain(&[background; WIDE]), "{name} {background:#x}");
                for at in 0..WIDE {
                    for c in 0..=255u8 {
                        let mut wide = [background; WIDE];
                        wide[at] = c;
                        assert_eq!(
                            plain(&wide),
                            !is_strict_end(c),
                            "{name}: {c:#x} at {at} among {background:#x}"
                        );
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn four_avx2_runs_folded_are_plain_only_without_any_stop() {
        assert!(std::is_x86_feature_detected!("avx2"));
        for background in [b'a', 0x20, 0x21, 0x23, 0x5d, 0x5e, 0x7f, 0x80, 0xdc, 0xff] {
            // SAFETY: the CPU has AVX2, just checked.
            assert!(unsafe { avx2::plain_runs(&[background; 4 * WIDE]) });
            for at in 0..4 * WIDE {
                for c in 0..=255u8 {
                    let mut four = [background; 4 * WIDE];
                    four[at] = c;
                    assert_eq!(
                        // SAFETY: as above.
                        unsafe { avx2::plain_runs(&four) },
                        !is_strict_end(c),
                        "{c:#x} at {at} among {background:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn runs_end_at_the_first_run_with_a_stop_or_the_last_whole_run() {
        for form in [plain_wide, words::plain_wide] {
            let sse2_or_words = |bytes: &[u8], from| runs_end(bytes, from, form);
            runs_end_as_expected(sse2_or_words);
        }
        runs_end_as_expected(plain_strict_runs_end);
    }

    fn runs_end_as_expected(runs_end: impl Fn(&[u8], usize) -> usize) {
        let plain_strict_runs_end = runs_end;
        // Past two steps of four runs, so that every way out of both loops is taken.
        for len in 0..9 * WIDE {
            let plain = vec![b'a'; len];
            for from in 0..=len.min(70) {
                let whole_runs = (len - from) / WIDE;
                assert_eq!(
                    plain_strict_runs_end(&plain, from),
                    from + whole_runs * WIDE
                );
            }
            for at in 0..len {
                for c in [b'"', b'\\', 0x00, 0x1f] {
                    let mut s = plain.clone();
                    s[at] = c;
                    // From 0: the run holding `at` stops it, unless it is not whole.
                    let expected = (at / WIDE).min(len / WIDE) * WIDE;
                    assert_eq!(
                        plain_strict_runs_end(&s, 0),
                        expected,
                        "len {len} {c:#x} at {at}"
                    );
                }
            }
        }
    }
}
