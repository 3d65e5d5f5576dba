//! One strict walk over an event read past its `type` (a terminal or `error` event): it bounds
//! the event's nesting and finds `response.id` and `response.usage` on the way.
//!
//! Before it, such an event was walked three times: [`check_depth`](super::check_depth) over
//! the whole event, then the field walk into `response` once for the id and once more, past its
//! `output`, for the usage. This walk is the [`Scan`] client frames are read with: strict JSON,
//! nesting bounded without recursion. On an event it takes (strict JSON, nested at most
//! [`MAX_JSON_DEPTH`] levels) it finds exactly what the field walk finds (on valid JSON that
//! walk reads each object in order and stops at the first escaped key), so the readers give the
//! same answers; any other event is left to the former passes by the caller.

use std::ops::Range;

use crate::protocol::json_depth::MAX_JSON_DEPTH;
use crate::protocol::json_scan::{Scan, Unhandled};

/// Nesting levels: the event's object, its `response` object.
const EVENT: usize = 1;
const RESPONSE: usize = 2;

/// Where the raw values of `response.id` and `response.usage` are in the event, as the field
/// walk (`fields::enter` then `fields`) reaches them: the first `response` key of the event,
/// the first `id` and `usage` keys of that object, none of them after an escaped key of its
/// object. An empty span: not reached (the readers then ask the parser, as after the walk).
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
    fn of(range: Range<usize>) -> Result<Span, Unhandled> {
        Ok(Span {
            start: u32::try_from(range.start).map_err(|_| Unhandled)?,
            end: u32::try_from(range.end).map_err(|_| Unhandled)?,
        })
    }

    fn get(self, raw: &[u8]) -> Option<&[u8]> {
        if self.start == self.end {
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

/// Walks the whole event `raw` once; [`Unhandled`] when it is not strict JSON nested at most
/// [`MAX_JSON_DEPTH`] levels (or longer than 4 GiB).
pub(super) fn locate(raw: &[u8]) -> Result<Located, Unhandled> {
    let mut scan = Scan::new(raw, MAX_JSON_DEPTH);
    let mut out = Located::default();
    scan.open_object(EVENT)?;
    // The field walk reads keys until the first escaped one, and enters the first `response`.
    let mut walking = true;
    let mut first = true;
    while let Some(key) = scan.next_key(first)? {
        first = false;
        walking &= !key.escaped;
        if walking && raw.get(key.inner) == Some(&b"response"[..]) {
            walking = false;
            if scan.peek() == Some(b'{') {
                read_response(raw, &mut scan, &mut out)?;
                continue;
            }
        }
        scan.value(EVENT)?;
    }
    scan.finish()?;
    Ok(out)
}

/// Walks the `response` object at the cursor, noting its first `id` and `usage` before any
/// escaped key.
fn read_response(raw: &[u8], scan: &mut Scan<'_>, out: &mut Located) -> Result<(), Unhandled> {
    scan.open_object(RESPONSE)?;
    let mut walking = true;
    let mut first = true;
    while let Some(key) = scan.next_key(first)? {
        first = false;
        walking &= !key.escaped;
        let value = scan.value(RESPONSE)?;
        if !walking {
            continue;
        }
        let slot = match raw.get(key.inner) {
            Some(b"id") => &mut out.id,
            Some(b"usage") => &mut out.usage,
            _ => continue,
        };
        if slot.start == slot.end {
            *slot = Span::of(value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(raw: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
        let at = locate(raw).unwrap();
        (at.id(raw), at.usage(raw))
    }

    #[test]
    fn finds_the_values_the_field_walk_finds() {
        let (id, usage) = found(
            br#" { "type" : "response.completed" , "response" : { "id" : "r1" , "output" : [ {"id":"x","usage":1} ] , "usage" : {"input_tokens":1} } } "#,
        );
        assert_eq!(id, Some(&br#""r1""#[..]));
        assert_eq!(usage, Some(&br#"{"input_tokens":1}"#[..]));
        // The first of repeated keys; the first `response` only.
        let (id, usage) =
            found(br#"{"response":{"id":"a","id":"b","usage":1,"usage":2},"response":{"id":"c"}}"#);
        assert_eq!((id, usage), (Some(&br#""a""#[..]), Some(&b"1"[..])));
        // A `response` that is not an object: nothing, and a later one is not entered.
        assert_eq!(
            found(br#"{"response":1,"response":{"id":"a"}}"#),
            (None, None)
        );
        // Nothing after an escaped key of the same object, at either level.
        assert_eq!(
            found(br#"{"response":{"id":"a","st\u0061tus":1,"usage":2}}"#),
            (Some(&br#""a""#[..]), None)
        );
        assert_eq!(
            found(br#"{"typ\u0065":"x","response":{"id":"a"}}"#),
            (None, None)
        );
        // Escaped keys below the response's own keys do not matter.
        assert_eq!(
            found(br#"{"response":{"output":[{"\u0069d":1}],"id":"a"}}"#),
            (Some(&br#""a""#[..]), None)
        );
    }

    #[test]
    fn leaves_what_is_not_strict_json_within_the_bound() {
        for bad in [
            &br#"{"response":{"id":"a" "usage":1}}"#[..],
            br#"{"response":{"id":"a"}} x"#,
            br#"{"response":{"id":01}}"#,
            br#"{"response":{"id":"a"}"#,
            b"[1]",
        ] {
            assert_eq!(
                locate(bad),
                Err(Unhandled),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = |levels: usize| {
            format!(
                r#"{{"response":{{"x":{}1{}}}}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        assert!(locate(deep(MAX_JSON_DEPTH - 2).as_bytes()).is_ok());
        assert_eq!(locate(deep(MAX_JSON_DEPTH - 1).as_bytes()), Err(Unhandled));
    }
}
