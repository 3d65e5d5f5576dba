//! The byte searches the non-validating JSON walks share ([`fields`](super::fields) over upstream
//! events, [`check_depth`](super::json_depth::check_depth) over any peer JSON): where a string
//! ends, and where the next byte that matters to nesting is.
//!
//! Both look at eight bytes per step (one `u64`, no `unsafe`) instead of one: a terminal event's
//! `response` walked to its `usage` crosses its `output` this way, and the depth bound crosses
//! whole frames. Past [`SHORT_STRING`] bytes a string is searched with `memchr2`, whose setup
//! costs more than the words on keys, ids and short values but wins on long text.

/// Bytes of a string looked at a word at a time before the rest is searched with `memchr2`.
const SHORT_STRING: usize = 64;

const ONES: u64 = u64::from_le_bytes([1; 8]);
const TOPS: u64 = u64::from_le_bytes([0x80; 8]);

/// The top bit of each byte of `word` equal to `byte`. The lowest flag is exact (the borrow of
/// the subtraction only runs upwards from a matching byte); flags above it may not be, so
/// callers only ever use the lowest one (also of an OR of such masks: each mask's own false
/// flags lie above its first true one).
fn equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & TOPS
}

/// Index of the byte the lowest flag of `flags` (non-zero) marks.
fn first(flags: u64) -> usize {
    (flags.trailing_zeros() / 8) as usize
}

/// Index of the closing quote of the string whose contents start at `i`, and whether the
/// contents hold an escape (a backslash takes the byte after it, whatever it is); `None` when
/// the input ends first. Nothing else is checked: this is for walks that do not validate.
pub(crate) fn string_end(raw: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    let short_until = i.saturating_add(SHORT_STRING);
    loop {
        let rest = raw.get(i..)?;
        let hit = if i >= short_until {
            memchr::memchr2(b'"', b'\\', rest)?
        } else if let Some(word) = rest.first_chunk::<8>() {
            let word = u64::from_le_bytes(*word);
            match equal(word, b'"') | equal(word, b'\\') {
                0 => {
                    i += 8;
                    continue;
                }
                flags => first(flags),
            }
        } else {
            rest.iter().position(|&c| c == b'"' || c == b'\\')?
        };
        i += hit;
        if raw[i] == b'"' {
            return Some((i, escaped));
        }
        escaped = true;
        i += 2;
    }
}

/// `true` for the bytes nesting depends on outside strings: a quote and the four brackets.
fn is_structural(byte: &u8) -> bool {
    matches!(byte, b'"' | b'{' | b'}' | b'[' | b']')
}

/// Index of the first quote or bracket (`"`, `{`, `}`, `[`, `]`) at or after `i`; `None` when
/// there is none. Setting bit 5 of every byte folds `[` onto `{` and `]` onto `}` (and leaves
/// `"` as it is), so a word needs three comparisons; the only other byte that folds onto one of
/// them is 0x02 (onto `"`), which is checked and stepped over.
pub(crate) fn next_structural(raw: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let rest = raw.get(i..)?;
        let Some(word) = rest.first_chunk::<8>() else {
            return rest.iter().position(is_structural).map(|at| i + at);
        };
        let folded = u64::from_le_bytes(*word) | (ONES * 0x20);
        let flags = equal(folded, b'"') | equal(folded, b'{') | equal(folded, b'}');
        if flags == 0 {
            i += 8;
            continue;
        }
        let at = i + first(flags);
        if is_structural(&raw[at]) {
            return Some(at);
        }
        i = at + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What both searches must answer, a byte at a time.
    fn string_end_reference(raw: &[u8], mut i: usize) -> Option<(usize, bool)> {
        let mut escaped = false;
        loop {
            match raw.get(i)? {
                b'"' => return Some((i, escaped)),
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                _ => i += 1,
            }
        }
    }

    fn next_structural_reference(raw: &[u8], i: usize) -> Option<usize> {
        raw.get(i..)?
            .iter()
            .position(is_structural)
            .map(|at| i + at)
    }

    #[test]
    fn every_byte_at_every_word_position_is_found_as_one_by_one() {
        for len in 0..80 {
            for c in 0..=255u8 {
                let mut s = vec![b'a'; len];
                s.push(c);
                s.extend_from_slice(b"z\"x");
                assert_eq!(
                    string_end(&s, 0),
                    string_end_reference(&s, 0),
                    "len {len} byte {c:#x}"
                );
                assert_eq!(
                    next_structural(&s, 0),
                    next_structural_reference(&s, 0),
                    "len {len} byte {c:#x}"
                );
            }
        }
    }

    #[test]
    fn escapes_at_word_and_memchr_boundaries() {
        // A backslash as the last byte of a word, of the short prefix, of the input; runs of
        // `\"` and `\\` across those boundaries.
        for len in [0, 6, 7, 8, 9, 15, 62, 63, 64, 65, 70, 127, 128, 129] {
            for tail in [
                &br#"\"x""#[..],
                br#"\\""#,
                br#"\\\"""#,
                br#"\"\"\"\"\"\"\"\"\"\"""#,
                br#"\\\\\\\\\\\\\\\\\\\""x"#,
                b"\\",
                b"\\\"",
                b"",
            ] {
                let mut s = vec![b'a'; len];
                s.extend_from_slice(tail);
                for from in [0, len.saturating_sub(1), len] {
                    assert_eq!(
                        string_end(&s, from),
                        string_end_reference(&s, from),
                        "len {len} from {from} tail {:?}",
                        String::from_utf8_lossy(tail)
                    );
                }
            }
        }
    }

    #[test]
    fn stray_bytes_that_fold_onto_a_quote_are_stepped_over() {
        let s = b"\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02[";
        assert_eq!(next_structural(s, 0), Some(10));
        assert_eq!(next_structural(b"\x02\x02", 0), None);
        assert_eq!(next_structural(b"ab", 5), None);
        assert_eq!(string_end(b"ab", 5), None);
    }

    #[test]
    fn agrees_on_json_shaped_input_from_every_offset() {
        let json = br#"{"a":[1,{"b":"x\"}]"},"\\"],"c":"\u0022[","d":{"e":[[[]]]}, "long":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\\\"{"}"#;
        for i in 0..=json.len() + 1 {
            assert_eq!(string_end(json, i), string_end_reference(json, i), "at {i}");
            assert_eq!(
                next_structural(json, i),
                next_structural_reference(json, i),
                "at {i}"
            );
        }
    }
}
