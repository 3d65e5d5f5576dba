//! Where a string ends, for the field walk over upstream events ([`fields`](super::fields)).
//!
//! A string's first [`SHORT_STRING`] bytes are looked at eight per step (one `u64`, no
//! `unsafe`) instead of one by one: a terminal event's `response` walked to its `usage` crosses
//! every string of its `output` this way (callgrind, `usage()` in
//! `upstream/completed_classify_usage_id`: 24.3k -> 17.2k instructions per call). Past them the
//! string is searched with `memchr2`, whose setup costs more than the words on keys, ids and
//! short values but wins on long text.
//!
//! Tried and left out: finding the next quote or bracket outside strings a word at a time too
//! (bit 5 folds `[` onto `{`). Between two such bytes JSON has one or two others (`:`, `,`), so
//! the word costs more than the bytes: `classify` of a terminal event (its `check_depth`) took
//! 4.3k -> 6.3k instructions.

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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the search must answer, a byte at a time.
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
    fn agrees_on_json_shaped_input_from_every_offset() {
        let json = br#"{"a":[1,{"b":"x\"}]"},"\\"],"c":"\u0022[","d":{"e":[[[]]]}, "long":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\\\"{"}"#;
        for i in 0..=json.len() + 1 {
            assert_eq!(string_end(json, i), string_end_reference(json, i), "at {i}");
        }
    }
}
