//! The one-pass reading of a plain client frame.
//!
//! One [`Scan`] walks the frame once: the top-level object, the `input` array and each of its
//! items are stepped through here; every other value is skipped by the cursor, validated and
//! counted for nesting on the way. The fields come out exactly as
//! [`ClientFrame::read_reference`] reads them, in the same order (so a repeated key behaves the
//! same): that reading unescapes keys and strings and names wrong types, so anything that
//! needs either (an escaped key at a level read here, an escaped string value that is read, a
//! field of the wrong type) is [`Unhandled`] and left to it. The frame is text (the caller has
//! checked its UTF-8), so a string value read is borrowed by slicing it, without a second
//! UTF-8 pass, and the sweep that found its end already said whether it holds an escape.

use std::borrow::Cow;
use std::ops::Range;

use super::{ClientFrame, TOOL_CALL_TYPES, TOOL_OUTPUT_TYPES};
use crate::protocol::json_depth::MAX_JSON_DEPTH;
use crate::protocol::json_scan::{Scan, Str, Unhandled, Value};

/// Nesting levels: the frame's object, its `input` array, an input item.
const FRAME: usize = 1;
const INPUT: usize = 2;
const ITEM: usize = 3;

/// Reads `frame` in one pass.
pub(super) fn read(frame: &str) -> Result<ClientFrame<'_>, Unhandled> {
    let mut scan = Scan::new(frame.as_bytes(), MAX_JSON_DEPTH);
    let mut out = ClientFrame::default();
    scan.open_object(FRAME)?;
    let mut first = true;
    while let Some(key) = scan.next_key(first)? {
        first = false;
        let key = key_bytes(frame, key)?;
        if key == b"input" && scan.peek() == Some(b'[') {
            read_input(frame, &mut scan, &mut out)?;
            continue;
        }
        let value = scan.value_read(FRAME)?;
        let raw = frame.as_bytes().get(value.span.clone()).ok_or(Unhandled)?;
        match key {
            b"type" => out.event_type = Some(string(frame, &value)?.ok_or(Unhandled)?),
            b"model" if raw != b"null" => {
                out.model = Some(string(frame, &value)?.ok_or(Unhandled)?);
                out.model_span = Some(value.span);
            }
            b"previous_response_id" => {
                out.previous_response_id = match raw {
                    b"null" => None,
                    _ => Some(string(frame, &value)?.ok_or(Unhandled)?),
                };
                out.previous_response_id_span = Some(value.span);
            }
            b"store" if raw != b"null" => out.store = Some(boolean(raw).ok_or(Unhandled)?),
            b"stream" => out.stream = boolean(raw),
            b"generate" if raw != b"null" => {
                out.generate = Some(boolean(raw).ok_or(Unhandled)?);
            }
            _ => {}
        }
    }
    scan.finish()?;
    Ok(out)
}

/// Reads the items of the `input` array at the cursor: the `call_id` of each tool output and
/// tool call, as the reference's `item.get("type")` and `item.get("call_id")` do (the first
/// occurrence of each key; an item that is not an object, or whose `type` or `call_id` is
/// not a string, adds nothing).
fn read_input<'a>(
    frame: &'a str,
    scan: &mut Scan<'a>,
    out: &mut ClientFrame<'a>,
) -> Result<(), Unhandled> {
    scan.open_array(INPUT)?;
    let mut first = true;
    while scan.next_element(first)? {
        first = false;
        if scan.peek() != Some(b'{') {
            scan.value(INPUT)?;
            continue;
        }
        let ItemKeys { kind, call_id } = read_item(frame, scan)?;
        let Some(kind) = kind.map(|v| string(frame, &v)).transpose()?.flatten() else {
            continue;
        };
        let list = if TOOL_OUTPUT_TYPES.contains(&&*kind) {
            &mut out.tool_output_call_ids
        } else if TOOL_CALL_TYPES.contains(&&*kind) {
            &mut out.tool_call_ids
        } else {
            continue;
        };
        if let Some(id) = call_id.map(|v| string(frame, &v)).transpose()?.flatten() {
            list.push(id);
        }
    }
    Ok(())
}

/// Where an input item's first `type` and first `call_id` values are.
#[derive(Default)]
struct ItemKeys {
    kind: Option<Value>,
    call_id: Option<Value>,
}

/// Walks one input item (an object at the cursor).
fn read_item(frame: &str, scan: &mut Scan<'_>) -> Result<ItemKeys, Unhandled> {
    let mut keys = ItemKeys::default();
    scan.open_object(ITEM)?;
    let mut first = true;
    while let Some(key) = scan.next_key(first)? {
        first = false;
        let key = key_bytes(frame, key)?;
        let value = scan.value_read(ITEM)?;
        match key {
            b"type" if keys.kind.is_none() => keys.kind = Some(value),
            b"call_id" if keys.call_id.is_none() => keys.call_id = Some(value),
            _ => {}
        }
    }
    Ok(keys)
}

/// The bytes of a key without escapes (the reference unescapes keys: `"typ\u0065"` is `type`
/// to it, so an escaped key is left to it).
fn key_bytes(frame: &str, key: Str) -> Result<&[u8], Unhandled> {
    if key.escaped {
        return Err(Unhandled);
    }
    frame.as_bytes().get(key.inner).ok_or(Unhandled)
}

/// The text of the string `value` borrowed from the frame; `Ok(None)` when it is not a string,
/// [`Unhandled`] when it holds an escape (the reference unescapes).
fn string<'a>(frame: &'a str, value: &Value) -> Result<Option<Cow<'a, str>>, Unhandled> {
    let Range { start, end } = value.span;
    if frame.as_bytes().get(start) != Some(&b'"') {
        return Ok(None);
    }
    if value.escaped {
        return Err(Unhandled);
    }
    // Between the quotes, which are characters of their own: always a slice of the text.
    frame
        .get(start + 1..end - 1)
        .map(|s| Some(Cow::Borrowed(s)))
        .ok_or(Unhandled)
}

/// `true` / `false`; `None` for any other value.
fn boolean(raw: &[u8]) -> Option<bool> {
    match raw {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    }
}
