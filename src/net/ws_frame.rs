//! WebSocket frame headers (RFC 6455 §5.2) read off raw bytes, for the reads that skip the codec
//! (the relay's cut-through path, a client's plain text frames read raw in
//! [`super::client_read`]): they need only know where a frame ends and whether it is one to take
//! without a codec. Also the masking both directions share, and the one frame the gateway builds
//! itself: a client-role text frame sent upstream.

use super::buf_pool::PooledBuf;
use super::text_check::is_utf8;

/// Longest frame header: 2 bytes, an 8-byte extended length, a 4-byte mask.
pub const MAX_HEADER: usize = 14;

/// Opcode of a text frame.
pub const OP_TEXT: u8 = 1;

/// One frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: the last frame of its message.
    pub fin: bool,
    /// The three RSV bits (non-zero only under an extension).
    pub rsv: u8,
    /// The opcode.
    pub opcode: u8,
    /// The masking key, when the frame is masked (a client's).
    pub mask: Option<[u8; 4]>,
    /// Bytes of header, mask included.
    pub len: usize,
    /// Bytes of payload.
    pub payload_len: u64,
    /// The length is written in the fewest bytes, as RFC 6455 requires.
    pub minimal_len: bool,
}

impl FrameHeader {
    /// The header at the start of `bytes`, or `None` while it is incomplete.
    pub fn parse(bytes: &[u8]) -> Option<FrameHeader> {
        let (b0, b1) = (*bytes.first()?, *bytes.get(1)?);
        let (ext, len7) = match b1 & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let masked = b1 & 0x80 != 0;
        let len = 2 + ext + if masked { 4 } else { 0 };
        if bytes.len() < len {
            return None;
        }
        let payload_len = len7.unwrap_or_else(|| {
            bytes[2..2 + ext]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        });
        let mask = masked.then(|| {
            let m = &bytes[2 + ext..len];
            [m[0], m[1], m[2], m[3]]
        });
        let minimal_len = match ext {
            2 => payload_len >= 126,
            8 => payload_len > 0xffff && payload_len >> 63 == 0,
            _ => true,
        };
        Some(FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0f,
            mask,
            len,
            payload_len,
            minimal_len,
        })
    }

    /// `true` for a complete, unmasked text message in one frame with no extension bits and
    /// its length written as RFC 6455 says: the only frame a server-to-client relay may forward
    /// as it came, once its payload is checked.
    pub fn is_plain_server_text(&self) -> bool {
        self.is_whole_plain_text() && self.mask.is_none()
    }

    /// `true` for a whole text message in one frame with no extension bits and its length
    /// written as RFC 6455 says, masked or not: what either read that skips the codec (server
    /// frames cut through, client frames read raw) may take.
    pub fn is_whole_plain_text(&self) -> bool {
        self.fin && self.rsv == 0 && self.opcode == OP_TEXT && self.minimal_len
    }
}

/// What the bytes at the start of a buffer hold, for a server-to-client cut-through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// A plain text frame ([`FrameHeader::is_plain_server_text`]) of `total` bytes, complete,
    /// its payload (from `header_len`) valid UTF-8: forward it as it is.
    Frame {
        /// Bytes of header.
        header_len: usize,
        /// Bytes of header and payload.
        total: usize,
    },
    /// The frame is not complete: at least this many bytes are needed.
    Need(usize),
    /// Anything else (control frame, fragment, extension bits, over `max_payload`, invalid
    /// UTF-8): for a full WebSocket codec.
    Codec,
}

/// Looks at the frame at the start of `bytes` (server frames) and says whether it can be
/// forwarded as it is; its UTF-8 is checked here, once.
pub fn cut(bytes: &[u8], max_payload: u64) -> Cut {
    let Some(h) = FrameHeader::parse(bytes) else {
        return Cut::Need(bytes.len() + MAX_HEADER);
    };
    if !h.is_plain_server_text() || h.payload_len > max_payload {
        return Cut::Codec;
    }
    let Some(total) = usize::try_from(h.payload_len)
        .ok()
        .and_then(|p| p.checked_add(h.len))
    else {
        return Cut::Codec;
    };
    if bytes.len() < total {
        return Cut::Need(total);
    }
    // An ASCII test for short events, else `simdutf8`, as for client frames: a large terminal
    // event (a response's whole output, non-ASCII text) is checked in a fraction of `std`'s
    // time; the same answer on any input.
    if !is_utf8(&bytes[h.len..total]) {
        return Cut::Codec;
    }
    Cut::Frame {
        header_len: h.len,
        total,
    }
}

/// `src` masked (or unmasked: the same xor) with `key` into `out`, as long as `src` (RFC 6455
/// §5.3): each byte read once and written once, 32 at a time (64, in two 32-byte AVX2 steps,
/// on a CPU that has AVX2: detected at run time), into a buffer that needs no zero-filling
/// first (a reused [`PooledBuf`](super::buf_pool::PooledBuf)). Against a copy then an in-place
/// xor, and a byte-at-a-time loop: `cargo bench --bench shard -- client_read/`.
pub fn mask_into(src: &[u8], key: [u8; 4], out: &mut [u8]) {
    mask_into_tracking::<false>(src, key, out);
}

/// [`mask_into`] that also says whether every byte written is ASCII (below 0x80): such text is
/// valid UTF-8, so a client frame unmasked here needs no UTF-8 check of its own
/// (`client_read`). The test rides on the bytes already in registers, two ORs per 64 bytes and
/// one test at the end (callgrind: +0.26k instructions on an 8 KB frame, against 1.15k for
/// `simdutf8` on it); [`mask_into`] leaves them out.
pub fn unmask_into_ascii(src: &[u8], key: [u8; 4], out: &mut [u8]) -> bool {
    mask_into_tracking::<true>(src, key, out)
}

/// [`mask_into`], OR-ing the bytes written together when `TRACK` (else `true`, meaningless).
#[inline(always)]
fn mask_into_tracking<const TRACK: bool>(src: &[u8], key: [u8; 4], out: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, just checked.
        return unsafe { mask_into_avx2::<TRACK>(src, key, out) };
    }
    mask_into_baseline::<TRACK>(src, key, out)
}

/// [`mask_into`] in 128-byte steps of four 32-byte XORs, then at most one 64-byte step; the rest
/// (from a multiple of 64, so at key byte 0) as the baseline does it. callgrind: 7.3k → 4.4k
/// instructions per 30 KB POST body masked for the upstream hop with 64-byte steps; the
/// 128-byte steps over one offset (no pair of chunk iterators) cut an 8 KB client frame's
/// unmasking from 1.43k to 0.87k.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mask_into_avx2<const TRACK: bool>(src: &[u8], key: [u8; 4], out: &mut [u8]) -> bool {
    use std::arch::x86_64::{
        __m256i, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi32,
        _mm256_setzero_si256, _mm256_storeu_si256, _mm256_xor_si256,
    };
    const STEP: usize = 128;
    let len = src.len().min(out.len());
    let k = _mm256_set1_epi32(i32::from_ne_bytes(key));
    let mut high = _mm256_setzero_si256();
    let s = src.as_ptr().cast::<__m256i>();
    let o = out.as_mut_ptr().cast::<__m256i>();
    // `at` counts 32-byte vectors; every step below reads and writes vectors `at..at + n` only
    // when `(at + n) * 32 <= len`.
    let mut at = 0;
    while (at + STEP / 32) * 32 <= len {
        // SAFETY: vectors `at..at + 4` end at or before `len`, which both slices hold; the
        // loads and stores are the unaligned forms.
        unsafe {
            let a = _mm256_xor_si256(_mm256_loadu_si256(s.add(at)), k);
            let b = _mm256_xor_si256(_mm256_loadu_si256(s.add(at + 1)), k);
            let c = _mm256_xor_si256(_mm256_loadu_si256(s.add(at + 2)), k);
            let d = _mm256_xor_si256(_mm256_loadu_si256(s.add(at + 3)), k);
            _mm256_storeu_si256(o.add(at), a);
            _mm256_storeu_si256(o.add(at + 1), b);
            _mm256_storeu_si256(o.add(at + 2), c);
            _mm256_storeu_si256(o.add(at + 3), d);
            if TRACK {
                let ab = _mm256_or_si256(a, b);
                let cd = _mm256_or_si256(c, d);
                high = _mm256_or_si256(high, _mm256_or_si256(ab, cd));
            }
        }
        at += STEP / 32;
    }
    if (at + 2) * 32 <= len {
        // SAFETY: vectors `at` and `at + 1` end at or before `len` (just checked).
        unsafe {
            let a = _mm256_xor_si256(_mm256_loadu_si256(s.add(at)), k);
            let b = _mm256_xor_si256(_mm256_loadu_si256(s.add(at + 1)), k);
            _mm256_storeu_si256(o.add(at), a);
            _mm256_storeu_si256(o.add(at + 1), b);
            if TRACK {
                high = _mm256_or_si256(high, _mm256_or_si256(a, b));
            }
        }
        at += 2;
    }
    let done = at * 32;
    let rest_ascii = mask_into_baseline::<TRACK>(&src[done..len], key, &mut out[done..len]);
    _mm256_movemask_epi8(high) == 0 && rest_ascii
}

/// [`mask_into`] with what every x86-64 CPU has (SSE2), or `u64` steps elsewhere.
fn mask_into_baseline<const TRACK: bool>(src: &[u8], key: [u8; 4], out: &mut [u8]) -> bool {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut high = HighBits::default();
    let mut to = out.chunks_exact_mut(WIDE);
    let mut from = src.chunks_exact(WIDE);
    for (t, f) in (&mut to).zip(&mut from) {
        high = mask_block::<TRACK>(f, wide, t, high);
    }
    // The tail starts at a multiple of `WIDE`, so at key byte 0.
    let mut tail_high = 0u8;
    let tail = to.into_remainder().iter_mut().zip(from.remainder());
    for ((t, f), k) in tail.zip(key.iter().cycle()) {
        *t = f ^ k;
        if TRACK {
            tail_high |= *t;
        }
    }
    high.none() && tail_high < 0x80
}

/// Bytes [`mask_into`] masks per step: a multiple of the key's 4.
const WIDE: usize = 32;

/// The bytes [`mask_into_baseline`] wrote so far, OR-ed together a vector (or word) at a time:
/// any high bit set means a byte at or above 0x80.
#[derive(Clone, Copy)]
struct HighBits(
    #[cfg(target_arch = "x86_64")] std::arch::x86_64::__m128i,
    #[cfg(not(target_arch = "x86_64"))] u64,
);

impl Default for HighBits {
    fn default() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: SSE2 is baseline on x86-64.
            HighBits(unsafe { std::arch::x86_64::_mm_setzero_si128() })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            HighBits(0)
        }
    }
}

impl HighBits {
    /// `true` when no byte OR-ed in had its high bit set.
    fn none(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: SSE2 is baseline on x86-64.
            unsafe { std::arch::x86_64::_mm_movemask_epi8(self.0) == 0 }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self.0 & 0x8080_8080_8080_8080 == 0
        }
    }
}

/// One `WIDE`-byte block of [`mask_into`], in two 16-byte vector XORs: SSE2 is part of every
/// x86-64 CPU, and a `u64` a step took ~2.3 instructions per 8 bytes (8.6k per 30 KB body).
/// When `TRACK`, the bytes written are OR-ed into `high`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn mask_block<const TRACK: bool>(
    src: &[u8],
    wide: u64,
    out: &mut [u8],
    high: HighBits,
) -> HighBits {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm_or_si128, _mm_set1_epi64x, _mm_storeu_si128, _mm_xor_si128,
    };
    debug_assert!(src.len() == WIDE && out.len() == WIDE);
    let s = src.as_ptr().cast::<__m128i>();
    let o = out.as_mut_ptr().cast::<__m128i>();
    // SAFETY: SSE2 is baseline on x86-64; `src` and `out` are `WIDE` (32) bytes each (chunks of
    // exactly that size), so both 16-byte loads and stores are in bounds; unaligned forms.
    unsafe {
        let k = _mm_set1_epi64x(wide as i64);
        let a = _mm_xor_si128(_mm_loadu_si128(s), k);
        let b = _mm_xor_si128(_mm_loadu_si128(s.add(1)), k);
        _mm_storeu_si128(o, a);
        _mm_storeu_si128(o.add(1), b);
        if TRACK {
            HighBits(_mm_or_si128(high.0, _mm_or_si128(a, b)))
        } else {
            high
        }
    }
}

/// One `WIDE`-byte block of [`mask_into`], a `u64` at a time; when `TRACK`, the words written
/// are OR-ed into `high`.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn mask_block<const TRACK: bool>(
    src: &[u8],
    wide: u64,
    out: &mut [u8],
    mut high: HighBits,
) -> HighBits {
    for (t, f) in out.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
        let f: [u8; 8] = f.try_into().unwrap_or_default();
        let w = u64::from_ne_bytes(f) ^ wide;
        t.copy_from_slice(&w.to_ne_bytes());
        if TRACK {
            high.0 |= w;
        }
    }
    high
}

/// One final text frame as a client sends it (RFC 6455 §5.2-5.3), in a buffer from the shard's
/// pool for one write: the header, then `payload` masked with `key` while it is copied
/// ([`mask_into`]). Returns the buffer and the frame's length in it. tungstenite copies the
/// payload into its write buffer and masks it there in a second pass, then drains the buffer
/// after each partial write.
pub fn masked_text(payload: &[u8], key: [u8; 4]) -> (PooledBuf, usize) {
    let mut header = [0u8; MAX_HEADER];
    header[0] = 0x80 | OP_TEXT;
    let len_bytes = match payload.len() {
        n if n < 126 => {
            header[1] = 0x80 | n as u8;
            0
        }
        n if n <= usize::from(u16::MAX) => {
            header[1] = 0x80 | 126;
            header[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            2
        }
        n => {
            header[1] = 0x80 | 127;
            header[2..10].copy_from_slice(&(n as u64).to_be_bytes());
            8
        }
    };
    let header_len = 2 + len_bytes + key.len();
    header[2 + len_bytes..header_len].copy_from_slice(&key);
    let total = header_len + payload.len();
    let mut out = PooledBuf::take(total);
    out[..header_len].copy_from_slice(&header[..header_len]);
    mask_into(payload, key, &mut out[header_len..total]);
    (out, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmasking_matches_the_rfc_for_every_offset() {
        const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
        let payload: Vec<u8> = (0..=255u8).cycle().take(1_027).collect();
        let masked: Vec<u8> = payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ KEY[i % 4])
            .collect();
        let mut out = vec![0xee; payload.len()];
        mask_into(&masked, KEY, &mut out);
        assert_eq!(out, payload);
        mask_into(&[], KEY, &mut []);
    }

    #[test]
    fn every_form_masks_every_length_as_the_rfc_says() {
        let key = [0x9c, 0x01, 0xfe, 0x5a];
        for len in 0..300 {
            let src: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let want: Vec<u8> = src
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            let mut out = vec![0xee; len];
            mask_into(&src, key, &mut out);
            assert_eq!(out, want, "mask_into, len {len}");
            let mut out = vec![0xee; len];
            mask_into_baseline::<false>(&src, key, &mut out);
            assert_eq!(out, want, "baseline, len {len}");
            let mut out = vec![0xee; len];
            unmask_into_ascii(&src, key, &mut out);
            assert_eq!(out, want, "tracking, len {len}");
            let mut out = vec![0xee; len];
            mask_into_baseline::<true>(&src, key, &mut out);
            assert_eq!(out, want, "tracking baseline, len {len}");
        }
    }

    #[test]
    fn every_form_tells_ascii_output_from_a_high_byte_at_every_offset() {
        let key = [0x9c, 0x01, 0xfe, 0x5a];
        for len in 0..300usize {
            let plain: Vec<u8> = (0..len).map(|i| b' ' + (i * 7 % 95) as u8).collect();
            let masked: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            let mut out = vec![0xee; len];
            assert!(unmask_into_ascii(&masked, key, &mut out), "len {len}");
            assert!(
                mask_into_baseline::<true>(&masked, key, &mut out),
                "baseline, len {len}"
            );
            // One byte at or above 0x80 at each offset, in each form.
            for at in 0..len {
                for high in [0x80u8, 0xc3, 0xff] {
                    let mut m = masked.clone();
                    m[at] = high ^ key[at % 4];
                    assert!(!unmask_into_ascii(&m, key, &mut out), "len {len}, at {at}");
                    assert!(
                        !mask_into_baseline::<true>(&m, key, &mut out),
                        "baseline, len {len}, at {at}"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn this_machine_masks_with_avx2() {
        // Where the CPU has AVX2 (every machine this project runs its tests on), the test
        // above exercises the AVX2 form through `mask_into`, not only the baseline.
        assert!(std::is_x86_feature_detected!("avx2"));
    }

    #[test]
    fn masked_text_frames_are_what_the_rfc_says_for_every_length_form() {
        let key = [0x12, 0x9a, 0x00, 0xff];
        let lens = [0usize, 1, 7, 8, 9, 125, 126, 127, 65_535, 65_536, 70_001];
        // Longest first too: a pooled buffer longer than the frame, holding an earlier one.
        for len in lens.into_iter().chain(lens.into_iter().rev()) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let (buf, wire_len) = masked_text(&payload, key);
            let wire = &buf[..wire_len];
            let h = FrameHeader::parse(wire).expect("a whole header");
            assert!(h.fin && h.rsv == 0 && h.opcode == OP_TEXT, "len {len}");
            assert!(h.minimal_len, "len {len}: length in its fewest bytes");
            assert_eq!((h.mask, h.payload_len), (Some(key), len as u64));
            assert_eq!(wire.len(), h.len + len);
            let unmasked: Vec<u8> = wire[h.len..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(unmasked, payload, "len {len}");
        }
    }

    #[test]
    fn headers_of_every_length_form_parse_and_incomplete_ones_wait() {
        let short = [0x81, 5];
        let h = FrameHeader::parse(&short).unwrap();
        assert_eq!((h.len, h.payload_len), (2, 5));
        assert!(h.is_plain_server_text());

        let mid = [0x81, 126, 0x01, 0x00];
        assert_eq!(FrameHeader::parse(&mid).unwrap().payload_len, 256);
        assert_eq!(FrameHeader::parse(&mid[..3]), None);

        let long = [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        let h = FrameHeader::parse(&long).unwrap();
        assert_eq!((h.len, h.payload_len), (10, 65_536));
        assert_eq!(FrameHeader::parse(&long[..9]), None);

        let masked = [0x81, 0x80 | 3, 1, 2, 3, 4];
        let h = FrameHeader::parse(&masked).unwrap();
        assert_eq!((h.len, h.mask), (6, Some([1, 2, 3, 4])));
        assert!(
            !h.is_plain_server_text(),
            "a masked frame is not a server's"
        );
        assert_eq!(FrameHeader::parse(&masked[..5]), None);
        assert_eq!(FrameHeader::parse(&[0x81]), None);
    }

    #[test]
    fn only_complete_valid_text_frames_within_the_limit_are_cut() {
        let frame = [&[0x81u8, 3][..], b"abc"].concat();
        assert_eq!(
            cut(&frame, 100),
            Cut::Frame {
                header_len: 2,
                total: 5
            }
        );
        assert_eq!(cut(&frame[..4], 100), Cut::Need(5));
        assert_eq!(cut(&frame[..1], 100), Cut::Need(1 + MAX_HEADER));
        assert_eq!(cut(&frame, 2), Cut::Codec, "over the limit");
        assert_eq!(
            cut(&[0x81, 2, 0xc3, 0x28], 100),
            Cut::Codec,
            "invalid UTF-8"
        );
        assert_eq!(cut(&[0x89, 0], 100), Cut::Codec, "ping");
        let two = [frame.clone(), frame].concat();
        assert_eq!(
            cut(&two, 100),
            Cut::Frame {
                header_len: 2,
                total: 5
            }
        );
    }

    #[test]
    fn the_payload_check_agrees_with_std_at_every_offset() {
        let frame = |payload: &[u8]| {
            [
                &[0x81u8, 126][..],
                &(payload.len() as u16).to_be_bytes(),
                payload,
            ]
            .concat()
        };
        // Past 64 bytes too: the SIMD check works in blocks.
        for tail in crate::net::text_check::UTF8_EDGES {
            for at in 130..200 {
                let payload = [&b"a".repeat(at)[..], tail, b"}"].concat();
                let valid = std::str::from_utf8(&payload).is_ok();
                let got = cut(&frame(&payload), 1 << 20);
                assert_eq!(matches!(got, Cut::Frame { .. }), valid, "{tail:?} at {at}");
            }
        }
        // An invalid byte at every offset of every payload length up to 200 (around the ASCII
        // test's 8-, 32- and 64-byte steps) and around the length where `simdutf8` takes over:
        // such a frame goes to the codec, its all-ASCII form is cut.
        let frame = |payload: &[u8]| match u8::try_from(payload.len()) {
            Ok(short) if short < 126 => [&[0x81u8, short][..], payload].concat(),
            _ => frame(payload),
        };
        for len in (0..=200).chain(509..=515) {
            let plain = vec![b'a'; len];
            assert!(
                matches!(cut(&frame(&plain), 1 << 20), Cut::Frame { .. }),
                "{len}"
            );
            for at in 0..len {
                let mut payload = plain.clone();
                payload[at] = 0xff;
                assert_eq!(cut(&frame(&payload), 1 << 20), Cut::Codec, "{len} {at}");
            }
        }
    }

    #[test]
    fn fragments_control_frames_and_extension_bits_are_not_plain_text() {
        let plain = |b0: u8| FrameHeader::parse(&[b0, 0]).unwrap().is_plain_server_text();
        assert!(plain(0x81));
        assert!(!plain(0x01), "first fragment");
        assert!(!plain(0x80), "continuation");
        assert!(!plain(0x82), "binary");
        assert!(!plain(0x89), "ping");
        assert!(!plain(0x88), "close");
        assert!(!plain(0xC1), "RSV1 (compressed)");
        let padded = FrameHeader::parse(&[0x81, 126, 0, 5]).unwrap();
        assert!(!padded.is_plain_server_text(), "a 5-byte length in 2 bytes");
        let padded = FrameHeader::parse(&[0x81, 127, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap();
        assert!(
            !padded.is_plain_server_text(),
            "a 256-byte length in 8 bytes"
        );
    }
}
