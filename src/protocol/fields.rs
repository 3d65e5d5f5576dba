//! A walk over the top-level fields of a JSON object that allocates nothing.
//!
//! The relay reads one or two fields of every upstream event (`type` of each, `usage` of the
//! terminal one). sonic-rs's object iterator allocates a key buffer per call and an owned copy
//! of every key it yields, and even a keyed lookup sets up a parser per call; for events of a
//! few hundred bytes that setup costs more than the bytes. This walk only tracks strings and
//! nesting to find where each top-level value starts and ends. It does not validate JSON: it
//! stops (yields nothing more) at anything it does not expect, and [`Fields::complete`] says
//! whether it reached the object's end, so a caller can fall back to the real parser.

use super::json_skip::string_end;
use super::short_str::short_str;

/// Iterator over `(key, raw value)` of a JSON object's top-level fields, in order. Keys are the
/// raw bytes between the quotes; a key with an escape ends the walk (not complete), so a caller
/// never misses a key spelled with escapes.
pub(crate) struct Fields<'a> {
    raw: &'a [u8],
    at: usize,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    First,
    Next,
    Done,
    Stopped,
}

/// Walks the fields of the object `raw` (leading and trailing whitespace allowed).
pub(crate) fn fields(raw: &[u8]) -> Fields<'_> {
    let at = skip_ws(raw, 0);
    let state = if raw.get(at) == Some(&b'{') {
        State::First
    } else {
        State::Stopped
    };
    Fields {
        raw,
        at: at + 1,
        state,
    }
}

impl<'a> Fields<'a> {
    /// `true` once the walk reached the object's closing brace; `false` while it is running or
    /// when it stopped at something it does not handle.
    pub(crate) fn complete(&self) -> bool {
        self.state == State::Done
    }

    fn stop<T>(&mut self) -> Option<T> {
        self.state = State::Stopped;
        None
    }

    /// The next key and where its value starts (after the whitespace), without finding where
    /// the value ends; [`Fields::pass`] moves past the value before the walk goes on.
    fn next_key(&mut self) -> Option<(&'a [u8], usize)> {
        let raw = self.raw;
        let mut i = skip_ws(raw, self.at);
        match (self.state, raw.get(i)) {
            (State::First | State::Next, Some(b'}')) => {
                self.state = State::Done;
                return None;
            }
            (State::Next, Some(b',')) => i = skip_ws(raw, i + 1),
            (State::First, _) => {}
            _ => return self.stop(),
        }
        if raw.get(i) != Some(&b'"') {
            return self.stop();
        }
        let key_start = i + 1;
        let Some((key_end, false)) = string_end(raw, key_start) else {
            return self.stop();
        };
        let key = &raw[key_start..key_end];
        i = skip_ws(raw, key_end + 1);
        if raw.get(i) != Some(&b':') {
            return self.stop();
        }
        Some((key, skip_ws(raw, i + 1)))
    }

    /// Moves past the value that starts at `value_start`; its end (exclusive).
    fn pass(&mut self, value_start: usize) -> Option<usize> {
        let Some(end) = value_end(self.raw, value_start) else {
            return self.stop();
        };
        self.at = end;
        self.state = State::Next;
        Some(end)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (key, value_start) = self.next_key()?;
        let value_end = self.pass(value_start)?;
        Some((key, &self.raw[value_start..value_end]))
    }
}

/// The top-level field `key` of the object `raw`, entered rather than measured: the bytes from
/// where its value starts to the end of `raw`. The fields before it are walked as [`fields`]
/// walks them; the value itself is not scanned for its end, so reading into a large object
/// (`response` of a terminal event, whose `output` can be kilobytes) costs only the bytes read.
/// A walk into the returned bytes ([`fields`]) stops at the value's own closing brace. `None`
/// when the walk ends or stops (an escaped key, something it does not handle) before `key`.
pub(crate) fn enter<'a>(raw: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut walk = fields(raw);
    loop {
        let (k, value_start) = walk.next_key()?;
        if k == key {
            return raw.get(value_start..);
        }
        walk.pass(value_start)?;
    }
}

/// The contents of a JSON string value (`raw` with its quotes) when it has no escapes.
pub(crate) fn plain_str(raw: &[u8]) -> Option<&str> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.contains(&b'\\') {
        return None;
    }
    short_str(inner)
}

/// A JSON number value that is a non-negative integer: digits only, accumulated as they are
/// read (what `str::parse` gives for them, without a UTF-8 check and a second pass).
pub(crate) fn plain_u64(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() {
        return None;
    }
    raw.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

pub(crate) fn skip_ws(raw: &[u8], mut i: usize) -> usize {
    while raw
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// End (exclusive) of the value starting at `i`: a string, an object or array (by nesting,
/// strings skipped), or a scalar up to the next `,`, `}` or whitespace.
fn value_end(raw: &[u8], i: usize) -> Option<usize> {
    match raw.get(i)? {
        b'"' => string_end(raw, i + 1).map(|(e, _)| e + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match raw.get(j)? {
                    b'"' => j = string_end(raw, j + 1)?.0,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        b',' | b'}' | b']' | b':' => None,
        _ => {
            let len = raw[i..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))?;
            Some(i + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_end_where_short_ones_do() {
        for len in [0, 1, 63, 64, 65, 500] {
            let body = "a".repeat(len);
            let raw = format!(r#"{{"k":"{body}\"x","next":1}}"#);
            let fields: Vec<_> = fields(raw.as_bytes()).collect();
            assert_eq!(fields.len(), 2, "len {len}");
            assert_eq!(fields[0].1.len(), len + 5);
        }
    }

    fn walk(raw: &[u8]) -> (Vec<(String, String)>, bool) {
        let mut f = fields(raw);
        let out = f
            .by_ref()
            .map(|(k, v)| {
                (
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect();
        (out, f.complete())
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn yields_top_level_fields_with_their_raw_values() {
        let (f, done) = walk(
            br#" { "a" : 1 , "b":{"type":"x","c":[1,{"d":"}"}]},"type":"t\"q","e":null,"f":-2.5e3 } "#,
        );
        assert!(done);
        assert_eq!(
            f,
            pairs(&[
                ("a", "1"),
                ("b", r#"{"type":"x","c":[1,{"d":"}"}]}"#),
                ("type", r#""t\"q""#),
                ("e", "null"),
                ("f", "-2.5e3"),
            ])
        );
        assert_eq!(walk(b"{}"), (vec![], true));
    }

    #[test]
    fn stops_at_what_it_does_not_handle() {
        for bad in [
            &b"[1]"[..],
            b"{\"a\":1",
            b"{\"a\" 1}",
            b"{\"a\":1 \"b\":2}",
            b"{\"a\":}",
            b"{\"a\":\"unterminated}",
            b"{\"a\":{\"b\":1}",
            b"garbage",
        ] {
            let (_, done) = walk(bad);
            assert!(!done, "{}", String::from_utf8_lossy(bad));
        }
        // An escaped key could be any key: the walk stops before it.
        let (f, done) = walk(br#"{"a":1,"typ\u0065":"x","type":"y"}"#);
        assert_eq!((f, done), (pairs(&[("a", "1")]), false));
    }

    #[test]
    fn enters_a_field_without_scanning_past_it() {
        let raw = br#"{"type":"t","n":[1,{"a":"}"}],"response":{"id":"r1","x":[1]},"tail":1}"#;
        let inner = enter(raw, b"response").unwrap();
        assert!(inner.starts_with(br#"{"id":"r1""#));
        let (f, done) = walk(inner);
        assert_eq!((f, done), (pairs(&[("id", r#""r1""#), ("x", "[1]")]), true));
        // A value left unterminated after the entered one does not matter.
        let open = br#"{"type":"t","response":{"id":"r1"},"output":[[[["#;
        assert_eq!(
            fields(enter(open, b"response").unwrap()).next(),
            Some((&b"id"[..], &br#""r1""#[..]))
        );
        assert_eq!(enter(raw, b"missing"), None);
        assert_eq!(
            enter(br#"{"typ\u0065":1,"response":{}}"#, b"response"),
            None
        );
        assert_eq!(enter(b"[1]", b"response"), None);
    }

    #[test]
    fn reads_plain_strings_and_integers() {
        assert_eq!(plain_str(br#""resp_1""#), Some("resp_1"));
        assert_eq!(plain_str(br#""a\"b""#), None);
        assert_eq!(plain_str(b"12"), None);
        assert_eq!(plain_u64(b"28411"), Some(28411));
        for bad in [&b""[..], b"-1", b"+1", b"1.0", b"1e3", b"\"1\"", b"null"] {
            assert_eq!(plain_u64(bad), None);
        }
        // As `str::parse` reads them: leading zeros, the largest value, one past it.
        assert_eq!(plain_u64(b"007"), Some(7));
        assert_eq!(plain_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(plain_u64(b"18446744073709551616"), None);
        assert_eq!(plain_u64(b"99999999999999999999"), None);
    }
}
