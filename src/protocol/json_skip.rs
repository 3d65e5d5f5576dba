//! Where a string ends, for the field walk over upstream events ([`fields`](super::fields)),
//! the walk that locates a terminal event's fields and the nesting check (`jump_string`).
//!
//! A string's first [`SHORT_STRING`] bytes are looked at a [`BLOCK`] per step
//! ([`quote_or_backslash`], SSE2 on x86-64): keys, ids and short values end within them. Past
//! them the string is searched with `memchr2`, whose setup costs more than a few blocks but
//! which takes AVX2 where the CPU has it: ~0.25 instructions a byte on a 30 KB string (callgrind,
//! session 11), where SSE2 steps of eight blocks folded into one test take ~0.45 (`json_scan`'s
//! strict walk, which has control bytes to find too and no `memchr` for them).
//!
//! Tried and left out: finding the next quote or bracket outside strings a word at a time too
//! (bit 5 folds `[` onto `{`). Between two such bytes JSON has one or two others (`:`, `,`), so
//! the word costs more than the bytes: `classify` of a terminal event (its `check_depth`) took
//! 4.3k -> 6.3k instructions.

use super::string_block::{quote_or_backslash, BLOCK};

/// Bytes of a string looked at a block at a time before the rest is searched with `memchr2`.
const SHORT_STRING: usize = 4 * BLOCK;

/// Index of the closing quote of the string whose contents start at `i`, and whether the
/// contents hold an escape (a backslash takes the byte after it, whatever it is); `None` when
/// the input ends first. Nothing else is checked: this is for walks that do not validate. The
/// last bytes of the input, fewer than a block, are looked at one by one.
pub(crate) fn string_end(raw: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    let short_until = i.saturating_add(SHORT_STRING);
    loop {
        let rest = raw.get(i..)?;
        let hit = if i >= short_until {
            memchr::memchr2(b'"', b'\\', rest)?
        } else if let Some(block) = rest.first_chunk::<BLOCK>() {
            match quote_or_backslash(block) {
                0 => {
                    i += BLOCK;
                    continue;
                }
                found => found.trailing_zeros() as usize,
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
    use crate::protocol::string_block::cases;

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
    fn every_case_is_found_as_one_by_one() {
        cases::check(string_end, string_end_reference);
    }
}
