//! The quotes, backslashes and brackets of 64 bytes of JSON as bit masks, for a walk that
//! steps over an object or array without looking at each byte (`located`'s skip of a terminal
//! event's `output` and `usage`).
//!
//! On x86-64 a chunk is four unaligned SSE2 loads (SSE2 is part of every x86-64 CPU, no
//! runtime detection); other targets have no chunk masks and walk byte by byte.

/// Bytes per chunk: one bit each in a `u64`.
pub(crate) const CHUNK: usize = 64;

/// One bit per byte of a chunk (bit `k` for byte `k`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Masks {
    /// `"`.
    pub(crate) quote: u64,
    /// `\`.
    pub(crate) backslash: u64,
    /// `{` or `[`.
    pub(crate) open: u64,
    /// `}` or `]`.
    pub(crate) close: u64,
}

/// The masks of `chunk`, where this target computes them in a few instructions a byte-block
/// without run-time detection (four SSE2 steps on x86-64; [`masks_avx2`] where AVX2 is).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn masks(chunk: &[u8; CHUNK]) -> Option<Masks> {
    Some(sse2::masks(chunk))
}

/// The masks of `chunk` in two 32-byte AVX2 steps, for a walk compiled for AVX2 (which inlines
/// it; called through run-time detection per chunk, the call cost most of what it saves).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn masks_avx2(chunk: &[u8; CHUNK]) -> Masks {
    // SAFETY (of the call): this function runs only where AVX2 is.
    unsafe { avx2::masks(chunk) }
}

/// No chunk masks on this target: the walk goes byte by byte.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(crate) fn masks(_chunk: &[u8; CHUNK]) -> Option<Masks> {
    None
}

/// Bit `k` set when an odd number of the bits `0..=k` of `bits` are set: with `bits` the
/// quotes of a chunk that starts outside a string (and has no backslash), the bytes from each
/// opening quote up to (not including) its closing quote.
#[inline(always)]
pub(crate) fn prefix_xor(mut bits: u64) -> u64 {
    bits ^= bits << 1;
    bits ^= bits << 2;
    bits ^= bits << 4;
    bits ^= bits << 8;
    bits ^= bits << 16;
    bits ^= bits << 32;
    bits
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };

    use super::{Masks, CHUNK};

    /// The four masks, 16 bytes per step: bit 5 set folds `[` onto `{` and `]` onto `}`
    /// (no other byte lands on either).
    #[inline(always)]
    pub(super) fn masks(chunk: &[u8; CHUNK]) -> Masks {
        let p = chunk.as_ptr().cast::<__m128i>();
        let mut out = Masks {
            quote: 0,
            backslash: 0,
            open: 0,
            close: 0,
        };
        // SAFETY: SSE2 is baseline on x86-64; `chunk` is four blocks of 16 bytes, so each
        // unaligned 16-byte load at `p + k` for `k < 4` is in bounds.
        unsafe {
            let bit5 = _mm_set1_epi8(0x20);
            let bit = |v: __m128i, byte: u8| -> u64 {
                _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(byte as i8))) as u16 as u64
            };
            for k in 0..CHUNK / 16 {
                let v = _mm_loadu_si128(p.add(k));
                let folded = _mm_or_si128(v, bit5);
                let shift = 16 * k;
                out.quote |= bit(v, b'"') << shift;
                out.backslash |= bit(v, b'\\') << shift;
                out.open |= bit(folded, b'{') << shift;
                out.close |= bit(folded, b'}') << shift;
            }
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256,
        _mm256_set1_epi8,
    };

    use super::{Masks, CHUNK};

    /// The four masks, 32 bytes per step, the bytes folded as `sse2::masks` folds them.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn masks(chunk: &[u8; CHUNK]) -> Masks {
        let p = chunk.as_ptr().cast::<__m256i>();
        let bit5 = _mm256_set1_epi8(0x20);
        let bit = |v: __m256i, byte: u8| -> u64 {
            _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(byte as i8))) as u32 as u64
        };
        // SAFETY: `chunk` is two blocks of 32 bytes, so the unaligned 32-byte loads at `p` and
        // `p + 1` are in bounds.
        let (lo, hi) = unsafe { (_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1))) };
        let (lo_folded, hi_folded) = (_mm256_or_si256(lo, bit5), _mm256_or_si256(hi, bit5));
        Masks {
            quote: bit(lo, b'"') | bit(hi, b'"') << 32,
            backslash: bit(lo, b'\\') | bit(hi, b'\\') << 32,
            open: bit(lo_folded, b'{') | bit(hi_folded, b'{') << 32,
            close: bit(lo_folded, b'}') | bit(hi_folded, b'}') << 32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The masks a byte at a time.
    fn reference(chunk: &[u8; CHUNK]) -> Masks {
        let mut m = Masks {
            quote: 0,
            backslash: 0,
            open: 0,
            close: 0,
        };
        for (k, &b) in chunk.iter().enumerate() {
            let bit = 1u64 << k;
            match b {
                b'"' => m.quote |= bit,
                b'\\' => m.backslash |= bit,
                b'{' | b'[' => m.open |= bit,
                b'}' | b']' => m.close |= bit,
                _ => {}
            }
        }
        m
    }

    #[test]
    fn every_byte_value_at_every_position_is_masked_as_one_by_one() {
        for b in 0..=255u8 {
            for at in 0..CHUNK {
                let mut chunk = [b'a'; CHUNK];
                chunk[at] = b;
                chunk[(at + 17) % CHUNK] = b'"';
                if let Some(got) = masks(&chunk) {
                    assert_eq!(got, reference(&chunk), "{b:#x} at {at}");
                }
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2, just checked.
                    let got = unsafe { masks_avx2(&chunk) };
                    assert_eq!(got, reference(&chunk), "avx2 {b:#x} at {at}");
                }
            }
        }
        let all: [u8; CHUNK] = std::array::from_fn(|k| b"{}[]\"\\x"[k % 7]);
        if let Some(got) = masks(&all) {
            assert_eq!(got, reference(&all));
        }
    }

    #[test]
    fn prefix_xor_is_the_running_parity() {
        for bits in [
            0u64,
            1,
            1 << 63,
            0b1001,
            u64::MAX,
            0x8000_0000_0000_0001,
            0x5555,
        ] {
            let mut parity = 0u64;
            let mut want = 0u64;
            for k in 0..64 {
                parity ^= (bits >> k) & 1;
                want |= parity << k;
            }
            assert_eq!(prefix_xor(bits), want, "{bits:#x}");
        }
    }
}
