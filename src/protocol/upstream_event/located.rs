//! One walk over an event read past its `type` (a terminal or `error` event): it bounds the
//! event's nesting and finds `response.id` and `response.usage` on the way.
//!
//! Before it, such an event was walked three times: [`check_depth`](super::check_depth) over
//! the whole event, then the field walk (`fields::enter`, then `fields`) into `response` once
//! for the id and once more, past its `output`, for the usage. This walk is that field walk at
//! the event's level and the `response` object's, with every value it steps over skipped the
//! way `check_depth` scans (strings jumped, brackets counted against [`MAX_JSON_DEPTH`]). It
//! answers only for an event it walks cleanly to its end (objects of members, scalars without
//! brackets or quotes, nothing but whitespace after): there it finds what the field walk finds
//! (it takes the same steps up to each key) and `check_depth` would find nothing too deep (it
//! counts the same brackets). Any other event is left to `check_depth` and the readers' own
//! walks, as before.

use std::ops::Range;

use crate::protocol::fields::skip_ws;
#[cfg(target_arch = "x86_64")]
use crate::protocol::json_chunk::masks_avx2;
use crate::protocol::json_chunk::{masks, prefix_xor, Masks, CHUNK};
use crate::protocol::json_depth::{jump_string, MAX_JSON_DEPTH};
use crate::protocol::json_skip::string_end;

/// Nesting levels: the event's object, its `response` object.
const EVENT: usize = 1;
const RESPONSE: usize = 2;

/// Where the raw values of `response.id` and `response.usage` are in the event, as the field
/// walk reaches them: the first `response` key of the event, the first `id` and `usage` keys of
/// that object, none of them after an escaped key of its object. An empty span: not reached
/// (the readers then ask the parser, as after the field walk).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Located {
    id: Span,
    usage: Span,
}

/// A byte range in 32 bits (a JSON value is never empty, so an empty span means none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(range: Range<usize>) -> Option<Span> {
        Some(Span {
            start: u32::try_from(range.start).ok()?,
            end: u32::try_from(range.end).ok()?,
        })
    }

    fn is_empty(self) -> bool {
        self.start == self.end
    }

    fn get(self, raw: &[u8]) -> Option<&[u8]> {
        if self.is_empty() {
            return None;
        }
        raw.get(self.start as usize..self.end as usize)
    }
}

impl Located {
    /// The raw value of `response.id`, if the walk reached one.
    pub(super) fn id(self, raw: &[u8]) -> Option<&[u8]> {
        self.id.get(raw)
    }

    /// The raw value of `response.usage`, if the walk reached one.
    pub(super) fn usage(self, raw: &[u8]) -> Option<&[u8]> {
        self.usage.get(raw)
    }
}

/// Walks the whole event `raw` once; `None` when it does not walk it cleanly within
/// [`MAX_JSON_DEPTH`] (or it is longer than 4 GiB).
pub(super) fn locate(raw: &[u8]) -> Option<Located> {
    let mut out = Located::default();
    let mut members = Members::open(raw, skip_ws(raw, 0))?;
    // The field walk reads keys until the first escaped one, and enters the first `response`.
    let mut walking = true;
    while let Some(Member {
        key,
        escaped,
        value,
    }) = members.next(raw)?
    {
        walking &= !escaped;
        let end = if walking && key == b"response" {
            walking = false;
            match raw.get(value) {
                Some(b'{') => read_response(raw, value, &mut out)?,
                _ => skip_value(raw, value, EVENT)?,
            }
        } else {
            skip_value(raw, value, EVENT)?
        };
        members.at = end;
    }
    (skip_ws(raw, members.at) == raw.len()).then_some(out)
}

/// Walks the `response` object at `at`, noting its first `id` and `usage` before any escaped
/// key; where it ends.
fn read_response(raw: &[u8], at: usize, out: &mut Located) -> Option<usize> {
    let mut members = Members::open(raw, at)?;
    let mut walking = true;
    while let Some(Member {
        key,
        escaped,
        value,
    }) = members.next(raw)?
    {
        walking &= !escaped;
        let end = skip_value(raw, value, RESPONSE)?;
        members.at = end;
        let slot = match key {
            b"id" if walking => &mut out.id,
            b"usage" if walking => &mut out.usage,
            _ => continue,
        };
        if slot.is_empty() {
            *slot = Span::of(value..end)?;
        }
    }
    Some(members.at)
}

/// One member of an object, up to where its value starts.
struct Member<'a> {
    /// The key's raw bytes (between the quotes).
    key: &'a [u8],
    /// Whether the key holds an escape (the field walk stops at such a key).
    escaped: bool,
    /// Where the value starts.
    value: usize,
}

/// The members of one object, stepped as the field walk (`fields::Fields`) steps them.
struct Members {
    /// After the `{`, or after the last value.
    at: usize,
    first: bool,
}

impl Members {
    fn open(raw: &[u8], at: usize) -> Option<Members> {
        (raw.get(at) == Some(&b'{')).then_some(Members {
            at: at + 1,
            first: true,
        })
    }

    /// The next member; `Some(None)` once the closing `}` is taken (`at` is then past it);
    /// `None` at anything else.
    #[inline]
    fn next<'a>(&mut self, raw: &'a [u8]) -> Option<Option<Member<'a>>> {
        let mut i = skip_ws(raw, self.at);
        match (raw.get(i)?, self.first) {
            (b'}', _) => {
                self.at = i + 1;
                return Some(None);
            }
            (b',', false) => i = skip_ws(raw, i + 1),
            (b'"', true) => {}
            _ => return None,
        }
        self.first = false;
        if raw.get(i) != Some(&b'"') {
            return None;
        }
        let (key_end, escaped) = string_end(raw, i + 1)?;
        let key = raw.get(i + 1..key_end)?;
        let colon = skip_ws(raw, key_end + 1);
        if raw.get(colon) != Some(&b':') {
            return None;
        }
        Some(Some(Member {
            key,
            escaped,
            value: skip_ws(raw, colon + 1),
        }))
    }
}

/// End (exclusive) of the value starting at `i` inside `level` open objects, as the field walk
/// ends it, when it holds no bracket or quote a nesting scan would count differently: a string;
/// an object or array, brackets counted (strings jumped) and refused past [`MAX_JSON_DEPTH`]; a
/// scalar up to the next `,`, `}`, `]` or whitespace, without `{`, `[` or `"` in it. Strings
/// in values are jumped with `memchr2`, as `check_depth` jumps them.
fn skip_value(raw: &[u8], i: usize, level: usize) -> Option<usize> {
    match raw.get(i)? {
        b'"' => jump_string(raw, i + 1).map(|end| end + 1),
        b'{' | b'[' => container_end(raw, i, level),
        b',' | b'}' | b']' | b':' => None,
        _ => {
            let rest = raw.get(i..)?;
            let len = rest
                .iter()
                .position(|&b| SCALAR_STOP[usize::from(b)] != 0)?;
            (SCALAR_STOP[usize::from(rest[len])] == END).then_some(i + len)
        }
    }
}

/// [`SCALAR_STOP`]: a byte that ends a scalar where the field walk ends it.
const END: u8 = 1;
/// [`SCALAR_STOP`]: a byte the nesting scan would count (the walk refuses the event).
const REFUSE: u8 = 2;

/// What each byte is to a scalar in [`skip_value`]: one load per byte where the ten-way match
/// took a compare and branch per candidate (callgrind: ~220 instructions a terminal event over
/// its numbers, `null`s and `false`s).
static SCALAR_STOP: [u8; 256] = {
    let mut table = [0u8; 256];
    let ends = b",}] \t\n\r";
    let mut k = 0;
    while k < ends.len() {
        table[ends[k] as usize] = END;
        k += 1;
    }
    table[b'{' as usize] = REFUSE;
    table[b'[' as usize] = REFUSE;
    table[b'"' as usize] = REFUSE;
    table
};

/// End (exclusive) of the object or array at `i` inside `level` open objects: brackets counted
/// (strings jumped) and refused past [`MAX_JSON_DEPTH`]. The 64-byte chunks from `i` that hold
/// no backslash are stepped by their masks ([`json_chunk`](crate::protocol::json_chunk)): the
/// quotes' running parity marks the bytes inside strings, and only the brackets outside them
/// are visited, in order. From the first chunk with a backslash (or the last bytes, fewer than
/// a chunk) on, the walk goes byte by byte ([`brackets_end`]), as it did for the whole value
/// (callgrind: a terminal event's `output` and `usage` were ~1.3k instructions a turn).
/// With AVX2 (detected at run time) the walk is compiled for it and masks its chunks 32 bytes
/// a step ([`masks_avx2`], inlined).
fn container_end(raw: &[u8], i: usize, level: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, just checked.
        return unsafe { container_end_avx2(raw, i, level) };
    }
    container_end_by(raw, i, level, masks)
}

/// [`container_end`] compiled for AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn container_end_avx2(raw: &[u8], i: usize, level: usize) -> Option<usize> {
    // SAFETY (of the call): this function runs only where AVX2 is.
    container_end_by(raw, i, level, |chunk| Some(unsafe { masks_avx2(chunk) }))
}

/// [`container_end`] with `masks` giving each chunk's masks (`None`: no masks, byte by byte).
#[inline(always)]
fn container_end_by(
    raw: &[u8],
    i: usize,
    level: usize,
    masks: impl Fn(&[u8; CHUNK]) -> Option<Masks>,
) -> Option<usize> {
    let mut depth = level;
    let mut j = i;
    // All ones while the chunk at `j` starts inside a string.
    let mut in_string = 0u64;
    while let Some(chunk) = raw.get(j..).and_then(<[u8]>::first_chunk::<CHUNK>) {
        let Some(m) = masks(chunk).filter(|m| m.backslash == 0) else {
            break;
        };
        let inside = prefix_xor(m.quote) ^ in_string;
        let mut brackets = (m.open | m.close) & !inside;
        while brackets != 0 {
            let k = brackets.trailing_zeros() as usize;
            brackets &= brackets - 1;
            if m.open >> k & 1 == 1 {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return None;
                }
            } else {
                depth -= 1;
                if depth == level {
                    return Some(j + k + 1);
                }
            }
        }
        in_string = 0u64.wrapping_sub(inside >> 63);
        j += CHUNK;
    }
    if in_string != 0 {
        // The chunk before held no backslash: `j` is not an escaped byte.
        j = jump_string(raw, j)? + 1;
    }
    brackets_end(raw, j, depth, level)
}

/// [`container_end`] byte by byte from `j` (outside a string) with `depth` levels open.
fn brackets_end(raw: &[u8], mut j: usize, mut depth: usize, level: usize) -> Option<usize> {
    loop {
        match raw.get(j)? {
            b'"' => j = jump_string(raw, j + 1)?,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return None;
                }
            }
            b'}' | b']' => {
                depth -= 1;
                if depth == level {
                    return Some(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::fields::{enter, fields};
    use crate::protocol::json_depth::check_depth;

    /// What the field walk finds, the way the readers walk without this one.
    fn walked<'a>(raw: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
        let (_, value) = fields(enter(raw, b"response")?).find(|(k, _)| *k == key)?;
        Some(value)
    }

    /// Events on both sides of what the walk takes.
    const EDGES: &[(&[u8], bool)] = &[
        (br#" { "type" : "response.completed" , "response" : { "id" : "r1" , "output" : [ {"id":"x","usage":1} ] , "usage" : {"input_tokens":1} } } "#, true),
        // The first of repeated keys; the first `response` only.
        (br#"{"response":{"id":"a","id":"b","usage":1,"usage":2},"response":{"id":"c"}}"#, true),
        // A `response` that is not an object: nothing, and a later one is not entered.
        (br#"{"response":1,"response":{"id":"a"}}"#, true),
        // Nothing after an escaped key of the same object, at either level.
        (br#"{"response":{"id":"a","st\u0061tus":1,"usage":2}}"#, true),
        (br#"{"typ\u0065":"x","response":{"id":"a"}}"#, true),
        (br#"{"response":{"output":[{"\u0069d":1}],"id":"a"}}"#, true),
        (br#"{"response":{"id":"a\"}","usage":{"a":"]}"}}}"#, true),
        // Lenient where the field walk is: scalars are not checked.
        (br#"{"response":{"id":nul,"usage":-x}}"#, true),
        (br#"{}"#, true),
        // Left to the nesting check and the readers' walks.
        (br#"{"response":{"id":"a" "usage":1}}"#, false),
        (br#"{"response":{"id":"a"}} x"#, false),
        (br#"{"response":{"id":tr[ue,"usage":1}}"#, false),
        (br#"{"response":{"id":1"x","usage":1}}"#, false),
        (br#"{"response":{"id":"a"}"#, false),
        (br#"{"response":{"id":"a","usage":{"x":"#, false),
        (br#"{"response":{"id":"a",}}"#, false),
        (br#"{"response":{,"id":"a"}}"#, false),
        (b"[1]", false),
        (b"", false),
    ];

    #[test]
    fn finds_what_the_field_walk_finds_and_bounds_as_check_depth() {
        for (raw, clean) in EDGES {
            let shown = String::from_utf8_lossy(raw);
            let at = locate(raw);
            assert_eq!(at.is_some(), *clean, "{shown}");
            let Some(at) = at else { continue };
            assert_eq!(at.id(raw), walked(raw, b"id"), "{shown}");
            assert_eq!(at.usage(raw), walked(raw, b"usage"), "{shown}");
            assert!(check_depth(raw, MAX_JSON_DEPTH).is_ok(), "{shown}");
        }
    }

    /// Values whose strings, escapes and brackets fall at every offset of a chunk.
    fn containers() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for pad in 0..80 {
            let fill = "x".repeat(pad);
            let texts = [
                format!(
                    r#"[{{"type":"message","id":"{fill}","content":[{{"text":"a]}}[{{b"}}],"n":null}}]"#
                ),
                format!(r#"{{"{fill}":{{"x":[[],{{}},"]","["]}},"s":"q\"]{fill}\\","t":[1,2]}}"#),
                format!(r#"{{"a":"{fill}","b":"{fill}{fill}","c":{{"d":"{fill}"}},"e":"\\"}}"#),
                format!(r#"[{fill:?},{{"k":"{fill}}}]"}}]"#),
                format!(r#"{{"long":"{}","after":[{{}}]}}"#, "y".repeat(pad * 3)),
            ];
            out.extend(texts.map(String::into_bytes));
        }
        for levels in [
            MAX_JSON_DEPTH - 3,
            MAX_JSON_DEPTH - 2,
            MAX_JSON_DEPTH - 1,
            200,
        ] {
            for pad in [0, 30, 61] {
                out.push(
                    format!(
                        r#"{{"p":"{}","d":{}"s"{}}}"#,
                        "z".repeat(pad),
                        "[".repeat(levels),
                        "]".repeat(levels)
                    )
                    .into_bytes(),
                );
            }
        }
        out
    }

    #[test]
    fn containers_end_where_the_byte_walk_ends_them() {
        for value in containers() {
            for level in [EVENT, RESPONSE] {
                for end in 0..=value.len() {
                    let raw = &value[..end];
                    assert_eq!(
                        container_end(raw, 0, level),
                        brackets_end(raw, 0, level, level),
                        "{} at level {level}",
                        String::from_utf8_lossy(raw)
                    );
                    assert_eq!(
                        container_end_by(raw, 0, level, masks),
                        brackets_end(raw, 0, level, level),
                        "without AVX2: {} at level {level}",
                        String::from_utf8_lossy(raw)
                    );
                }
                // A backslash at every position (escaping what follows it).
                for at in 1..value.len() {
                    let mut raw = value.clone();
                    raw[at] = b'\\';
                    assert_eq!(
                        container_end(&raw, 0, level),
                        brackets_end(&raw, 0, level, level),
                        "{}",
                        String::from_utf8_lossy(&raw)
                    );
                    assert_eq!(
                        container_end_by(&raw, 0, level, masks),
                        brackets_end(&raw, 0, level, level),
                        "without AVX2: {}",
                        String::from_utf8_lossy(&raw)
                    );
                }
            }
        }
    }

    /// [`skip_value`] of a scalar as the ten-way match ended it before [`SCALAR_STOP`].
    fn scalar_reference(raw: &[u8], i: usize) -> Option<usize> {
        let rest = raw.get(i..)?;
        let len = rest.iter().position(|b| {
            matches!(
                b,
                b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' | b'{' | b'[' | b'"'
            )
        })?;
        match rest[len] {
            b'{' | b'[' | b'"' => None,
            _ => Some(i + len),
        }
    }

    #[test]
    fn scalars_end_at_every_byte_as_the_match_ended_them() {
        for len in 0..64 {
            for stop in 0..=255u8 {
                for at in 0..=len {
                    let mut raw = vec![b'7'; len];
                    if at < len {
                        raw[at] = stop;
                    }
                    if raw.first().is_some_and(|b| b"\"{[,}]:".contains(b)) {
                        continue;
                    }
                    assert_eq!(
                        skip_value(&raw, 0, EVENT),
                        scalar_reference(&raw, 0),
                        "{len} bytes, {stop} at {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn nesting_past_the_bound_is_left_to_check_depth() {
        let deep = |levels: usize| {
            format!(
                r#"{{"response":{{"x":{}1{}}},"y":[]}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        for levels in [MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH - 1, 100_000] {
            let raw = deep(levels);
            let at = locate(raw.as_bytes());
            let bounded = check_depth(raw.as_bytes(), MAX_JSON_DEPTH).is_ok();
            assert_eq!(at.is_some(), bounded, "{levels}");
        }
        assert!(locate(deep(MAX_JSON_DEPTH - 2).as_bytes()).is_some());
        let top = format!(r#"{{"y":{}1{}}}"#, "[".repeat(127), "]".repeat(127));
        assert!(locate(top.as_bytes()).is_some());
        let over = format!(r#"{{"y":{}1{}}}"#, "[".repeat(128), "]".repeat(128));
        assert!(locate(over.as_bytes()).is_none());
    }
}
