//! A strict JSON cursor that validates, bounds nesting and finds values in one pass.
//!
//! [`ClientFrame::parse`](super::ClientFrame::parse) used to walk a client frame three times or
//! more: [`check_depth`](super::json_depth::check_depth) over the whole frame, sonic-rs's object
//! iterator (which validates every value it skips), then the `input` array again and each of
//! its items once more per field. This cursor does all of it at once: the caller steps through
//! the levels it reads (the frame's top-level object, the `input` array, each item), and every
//! value it does not read is skipped with [`Scan::value`], which validates it and counts its
//! nesting without recursion.
//!
//! It accepts exactly RFC 8259 JSON (whitespace is space, tab, LF, CR; strings without raw
//! control characters and with valid escapes; numbers by the grammar) nested at most `limit`
//! levels. It does not check UTF-8 (the caller does, once, for the whole input) and it never
//! unescapes: a key or string with an escape is reported as such, and the caller decides.
//! Anything else it stops at with [`Unhandled`]: the caller then hands the input to the full
//! reading, which has the precise error.

use std::ops::Range;

use super::string_block::{plain_strict_runs_end, quote_backslash_or_control, BLOCK, WIDE};

/// The input is not plain, strict JSON within the nesting limit (or uses something the caller
/// left to the full reading, such as an escaped key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unhandled;

/// A string found by the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Str {
    /// Byte range of the contents, without the quotes.
    pub(crate) inner: Range<usize>,
    /// `true` when the contents hold an escape (`\`): their bytes are not the string's text.
    pub(crate) escaped: bool,
}

/// A value skipped by [`Scan::value_read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Value {
    /// Byte range of the value (quotes included for a string), without surrounding whitespace.
    pub(crate) span: Range<usize>,
    /// `true` when the value is a string holding an escape (`\`).
    pub(crate) escaped: bool,
}

/// A cursor over `bytes`, always at a byte boundary between tokens.
pub(crate) struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
    limit: usize,
}

impl<'a> Scan<'a> {
    /// A cursor at the start of `bytes`; containers may nest at most `limit` levels (128 at
    /// most: [`Scan::value`] tracks its containers in 128 bits), the outermost one counting as
    /// level 1.
    pub(crate) fn new(bytes: &'a [u8], limit: usize) -> Self {
        Scan {
            bytes,
            at: 0,
            limit: limit.min(u128::BITS as usize),
        }
    }

    /// The next byte after whitespace, without taking it.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.at).copied()
    }

    /// Takes the `{` of an object that opens nesting level `level`.
    pub(crate) fn open_object(&mut self, level: usize) -> Result<(), Unhandled> {
        self.open(b'{', level)
    }

    /// Takes the `[` of an array that opens nesting level `level`.
    pub(crate) fn open_array(&mut self, level: usize) -> Result<(), Unhandled> {
        self.open(b'[', level)
    }

    /// In an object just opened (`first`) or after a member's value: the next key, with its
    /// `:` taken, or `None` once the closing `}` is taken.
    pub(crate) fn next_key(&mut self, first: bool) -> Result<Option<Str>, Unhandled> {
        match (self.peek(), first) {
            (Some(b'}'), _) => {
                self.at += 1;
                return Ok(None);
            }
            (Some(b','), false) => {
                self.at += 1;
                self.ws();
            }
            (Some(b'"'), true) => {}
            _ => return Err(Unhandled),
        }
        let key = self.string()?;
        self.expect(b':')?;
        Ok(Some(key))
    }

    /// In an array just opened (`first`) or after an element: `true` when another element
    /// follows (its `,` taken), `false` once the closing `]` is taken.
    pub(crate) fn next_element(&mut self, first: bool) -> Result<bool, Unhandled> {
        match (self.peek(), first) {
            (Some(b']'), _) => {
                self.at += 1;
                Ok(false)
            }
            (Some(b','), false) => {
                self.at += 1;
                Ok(true)
            }
            (Some(_), true) => Ok(true),
            _ => Err(Unhandled),
        }
    }

    /// Skips one value inside `level` open containers, validating it; returns its byte range
    /// (no surrounding whitespace). Nested containers are counted, not recursed into.
    pub(crate) fn value(&mut self, level: usize) -> Result<Range<usize>, Unhandled> {
        self.ws();
        let start = self.at;
        // Bit `d` says whether the container at depth `d + 1` inside this value is an object;
        // the limit (at most 128, checked in `open`) keeps `d` below 128.
        let mut objects: u128 = 0;
        let mut depth = 0usize;
        loop {
            match self.bytes.get(self.at) {
                Some(b'{') => {
                    self.open(b'{', level + depth + 1)?;
                    if !self.after_open_object()? {
                        objects |= 1 << depth;
                        depth += 1;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.open(b'[', level + depth + 1)?;
                    if self.peek() != Some(b']') {
                        objects &= !(1 << depth);
                        depth += 1;
                        continue;
                    }
                    self.at += 1;
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => return Err(Unhandled),
            }
            // A value ended (a scalar, or a container just closed): close whatever ends with
            // it, until another value is due or this one is complete.
            loop {
                let Some(inner) = depth.checked_sub(1) else {
                    return Ok(start..self.at);
                };
                let in_object = objects & (1 << inner) != 0;
                match (self.peek(), in_object) {
                    (Some(b','), true) => {
                        self.at += 1;
                        self.ws();
                        self.string()?;
                        self.expect(b':')?;
                        self.ws();
                        break;
                    }
                    (Some(b','), false) => {
                        self.at += 1;
                        self.ws();
                        break;
                    }
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        self.at += 1;
                        depth = inner;
                    }
                    _ => return Err(Unhandled),
                }
            }
        }
    }

    /// [`Scan::value`] for a value the caller reads: a string also says whether it holds an
    /// escape, found by the one sweep that ends it (the caller need not look for `\` again).
    pub(crate) fn value_read(&mut self, level: usize) -> Result<Value, Unhandled> {
        if self.peek() == Some(b'"') {
            let start = self.at;
            let Str { escaped, .. } = self.string()?;
            return Ok(Value {
                span: start..self.at,
                escaped,
            });
        }
        Ok(Value {
            span: self.value(level)?,
            escaped: false,
        })
    }

    /// Requires that only whitespace is left.
    pub(crate) fn finish(&mut self) -> Result<(), Unhandled> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(Unhandled),
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), Unhandled> {
        if self.peek() != Some(byte) {
            return Err(Unhandled);
        }
        self.at += 1;
        Ok(())
    }

    fn open(&mut self, bracket: u8, level: usize) -> Result<(), Unhandled> {
        if level > self.limit {
            return Err(Unhandled);
        }
        self.expect(bracket)
    }

    /// After an object's `{`: `true` when it closed at once (`}` taken), else `false` with its
    /// first key and `:` taken.
    fn after_open_object(&mut self) -> Result<bool, Unhandled> {
        match self.peek() {
            Some(b'}') => {
                self.at += 1;
                Ok(true)
            }
            Some(b'"') => {
                self.string()?;
                self.expect(b':')?;
                self.ws();
                Ok(false)
            }
            _ => Err(Unhandled),
        }
    }

    /// Takes the string starting at the cursor (its opening quote).
    fn string(&mut self) -> Result<Str, Unhandled> {
        if self.bytes.get(self.at) != Some(&b'"') {
            return Err(Unhandled);
        }
        let start = self.at + 1;
        let (end, escaped) = string_end(self.bytes, start)?;
        self.at = end + 1;
        Ok(Str {
            inner: start..end,
            escaped,
        })
    }

    fn number(&mut self) -> Result<(), Unhandled> {
        let b = self.bytes;
        let mut i = self.at;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits_end(b, i + 1),
            _ => return Err(Unhandled),
        }
        if b.get(i) == Some(&b'.') {
            i = some_digits_end(b, i + 1)?;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            i = some_digits_end(b, i)?;
        }
        self.at = i;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Unhandled> {
        if !self.bytes[self.at..].starts_with(word) {
            return Err(Unhandled);
        }
        self.at += word.len();
        Ok(())
    }
}

fn digits_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// End of a run of at least one digit starting at `i`.
fn some_digits_end(b: &[u8], i: usize) -> Result<usize, Unhandled> {
    let end = digits_end(b, i);
    if end == i {
        return Err(Unhandled);
    }
    Ok(end)
}

/// Index of the closing quote of the string whose contents start at `i`, and whether the
/// contents hold an escape. Fails on a raw control character, an invalid escape or the end of
/// the input. The contents are looked at a [`BLOCK`] at a time
/// ([`quote_backslash_or_control`]); after [`WIDE`] bytes of blocks without a stop, plain
/// [`WIDE`] runs are skipped ([`plain_strict_runs_end`]) and the blocks find the stop in the
/// run after them. The last bytes of the input, fewer than a block, are looked at one by one.
fn string_end(b: &[u8], mut i: usize) -> Result<(usize, bool), Unhandled> {
    let mut escaped = false;
    let mut wide_from = i.saturating_add(WIDE);
    loop {
        let rest = b.get(i..).ok_or(Unhandled)?;
        let hit = match rest.first_chunk::<BLOCK>() {
            Some(block) => match quote_backslash_or_control(block) {
                0 => {
                    i += BLOCK;
                    if i >= wide_from {
                        i = plain_strict_runs_end(b, i);
                        wide_from = i.saturating_add(WIDE);
                    }
                    continue;
                }
                found => found.trailing_zeros() as usize,
            },
            None => rest
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .ok_or(Unhandled)?,
        };
        i += hit;
        match b[i] {
            b'"' => return Ok((i, escaped)),
            b'\\' => {
                i = escape_end(b, i)?;
                escaped = true;
            }
            _ => return Err(Unhandled),
        }
    }
}

/// End of the escape whose backslash is at `i`.
fn escape_end(b: &[u8], i: usize) -> Result<usize, Unhandled> {
    match b.get(i + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
        Some(b'u') => {
            let hex = b.get(i + 2..i + 6).ok_or(Unhandled)?;
            if hex.iter().all(u8::is_ascii_hexdigit) {
                Ok(i + 6)
            } else {
                Err(Unhandled)
            }
        }
        _ => Err(Unhandled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::string_block::cases;

    /// Skips one value of `json` at level 0 and requires the end of the input after it.
    fn whole(json: &[u8], limit: usize) -> Result<Range<usize>, Unhandled> {
        let mut s = Scan::new(json, limit);
        let range = s.value(0)?;
        s.finish()?;
        Ok(range)
    }

    #[test]
    fn accepts_strict_json() {
        for ok in [
            &br#"{}"#[..],
            b"[]",
            b" { \"a\" : [ 1 , -0.5e+3 , 2E-1 , true , false , null , \"x\" , { } , [ ] ] } ",
            br#"{"s":"\"[{\\\/\b\f\n\r\t\u00e9\uD83D\uDE00","k":{"k":{"k":[[]]}}}"#,
            b"0",
            b"-0",
            b"\"x\"",
            b"\t\r\n[1]\n",
            // Bytes of UTF-8 text and DEL are ordinary string bytes.
            "[\"é€😀\u{7f}éééééééé\"]".as_bytes(),
        ] {
            assert!(whole(ok, 128).is_ok(), "{:?}", String::from_utf8_lossy(ok));
        }
    }

    #[test]
    fn refuses_what_is_not_strict_json() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\"}",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"[1,]",
            b"[1 2]",
            b"{\"a\":1 \"b\":2}",
            b"{,\"a\":1}",
            b"{\"a\":1]",
            b"[1}",
            b"{1:2}",
            b"01",
            b"-",
            b"1.",
            b"1e",
            b"1e+",
            b".5",
            b"+1",
            b"tru",
            b"nul",
            b"True",
            b"NaN",
            b"\"a",
            b"\"\\x\"",
            b"\"\\u12g4\"",
            b"\"\\u12\"",
            b"\"a\x01b\"",
            b"[1]x",
            b"{} {}",
            b"\x0c{}",
            b"{\"a\":\"\\",
        ] {
            assert_eq!(
                whole(bad, 128),
                Err(Unhandled),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn control_characters_and_escapes_in_long_strings() {
        for len in [0, 1, 7, 8, 9, 63, 64, 127, 128, 129, 300] {
            let pad = "a".repeat(len);
            let ok = format!(r#"["{pad}\"{pad}\n{pad}","{pad}"]"#);
            assert!(whole(ok.as_bytes(), 4).is_ok(), "len {len}");
            let ctl = format!("[\"{pad}\u{1f}{pad}\"]");
            assert_eq!(whole(ctl.as_bytes(), 4), Err(Unhandled), "len {len}");
            let bad_escape = format!(r#"["{pad}\q"]"#);
            assert_eq!(whole(bad_escape.as_bytes(), 4), Err(Unhandled), "len {len}");
            let open = format!("[\"{pad}");
            assert_eq!(whole(open.as_bytes(), 4), Err(Unhandled), "len {len}");
        }
    }

    /// What [`string_end`] must answer, a byte at a time.
    fn string_end_reference(b: &[u8], mut i: usize) -> Result<(usize, bool), Unhandled> {
        let mut escaped = false;
        loop {
            match *b.get(i).ok_or(Unhandled)? {
                b'"' => return Ok((i, escaped)),
                b'\\' => {
                    i = escape_end(b, i)?;
                    escaped = true;
                }
                c if c < 0x20 => return Err(Unhandled),
                _ => i += 1,
            }
        }
    }

    #[test]
    fn every_case_is_found_as_one_by_one() {
        cases::check(string_end, string_end_reference);
    }

    #[test]
    fn strings_say_whether_they_hold_escapes() {
        let mut s = Scan::new(br#"{"plain":"a\"b"}"#, 4);
        s.open_object(1).unwrap();
        let key = s.next_key(true).unwrap().unwrap();
        assert_eq!((key.inner, key.escaped), (2..7, false));
        assert_eq!(s.value(1).unwrap(), 9..15);
        assert_eq!(s.next_key(false), Ok(None));
        assert_eq!(s.finish(), Ok(()));
    }

    #[test]
    fn brackets_and_quotes_inside_strings_do_not_nest() {
        let s = format!(r#"{{"a":"{}\"}}]","b":[["\\"]]}}"#, "[{".repeat(5_000));
        assert!(whole(s.as_bytes(), 3).is_ok());
        assert_eq!(whole(s.as_bytes(), 2), Err(Unhandled));
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        let at = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert!(whole(at(128).as_bytes(), 128).is_ok());
        assert_eq!(whole(at(129).as_bytes(), 128), Err(Unhandled));
        let objects = format!("{}1{}", r#"{"k":"#.repeat(128), "}".repeat(128));
        assert!(whole(objects.as_bytes(), 128).is_ok());
        let deep = at(200_000);
        assert_eq!(whole(deep.as_bytes(), 128), Err(Unhandled));
        // The level a value starts at counts against the limit.
        let mut s = Scan::new(b"[[1]]", 128);
        assert_eq!(s.value(127), Err(Unhandled));
        let mut s = Scan::new(b"[[1]]", 128);
        assert_eq!(s.value(126), Ok(0..5));
    }

    #[test]
    fn walks_levels_the_caller_reads() {
        let json = br#" { "input" : [ {"type":"x"} , 2 ] , "k" : null } "#;
        let mut s = Scan::new(json, 128);
        s.open_object(1).unwrap();
        let key = s.next_key(true).unwrap().unwrap();
        assert_eq!(&json[key.inner], b"input");
        assert_eq!(s.peek(), Some(b'['));
        s.open_array(2).unwrap();
        assert_eq!(s.next_element(true), Ok(true));
        assert_eq!(&json[s.value(2).unwrap()], br#"{"type":"x"}"#);
        assert_eq!(s.next_element(false), Ok(true));
        assert_eq!(&json[s.value(2).unwrap()], b"2");
        assert_eq!(s.next_element(false), Ok(false));
        let key = s.next_key(false).unwrap().unwrap();
        assert_eq!(&json[key.inner], b"k");
        assert_eq!(&json[s.value(1).unwrap()], b"null");
        assert_eq!(s.next_key(false), Ok(None));
        assert_eq!(s.finish(), Ok(()));

        let mut s = Scan::new(b"[]", 128);
        s.open_array(1).unwrap();
        assert_eq!(s.next_element(true), Ok(false));
        let mut s = Scan::new(b"[,1]", 128);
        s.open_array(1).unwrap();
        assert_eq!(s.next_element(true), Ok(true));
        assert_eq!(s.value(1), Err(Unhandled));
        let mut s = Scan::new(b"{\"a\":1", 128);
        s.open_object(1).unwrap();
        s.next_key(true).unwrap();
        s.value(1).unwrap();
        assert_eq!(s.next_key(false), Err(Unhandled));
    }
}
