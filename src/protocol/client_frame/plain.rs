//! The one-pass reading of a plain client frame.
//!
//! One [`Scan`] walks the frame once: the top-level object, the `input` array and each of its
//! items are stepped through here; every other value is skipped by the cursor, validated and
//! counted for nesting on the way. The fields come out exactly as
//! [`ClientFrame::read_reference`] reads them, in the same order (so a repeated key behaves the
//! same): that reading unescapes keys and strings and names wrong types, so anything that
//! needs either (an escaped key at a level read here, an escaped string value that is read, a
//! field of the wrong type) is [`Unhandled`] and left to it. The caller has checked UTF-8.

use std::borrow::Cow;
use std::ops::Range;

use super::{ClientFrame, TOOL_CALL_TYPES, TOOL_OUTPUT_TYPES};
use crate::protocol::json_depth::MAX_JSON_DEPTH;
use crate::protocol::json_scan::{Scan, Str, Unhandled};

/// Nesting levels: the frame's object, its `input` array, an input item.
const FRAME: usize = 1;
const INPUT: usize = 2;
const ITEM: usize = 3;

/// Reads `frame` (valid UTF-8) in one pass.
pub(super) fn read(frame: &[u8]) -> Result<ClientFrame<'_>, Unhandled> {
    let mut scan = Scan::new(frame, MAX_JSON_DEPTH);
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
        let span = scan.value(FRAME)?;
        let raw = &frame[span.clone()];
        match key {
            b"type" => out.event_type = Some(string(raw)?.ok_or(Unhandled)?),
            b"model" if raw != b"null" => {
                out.model = Some(string(raw)?.ok_or(Unhandled)?);
                out.model_span = Some(span);
            }
            b"previous_response_id" => {
                out.previous_response_id = match raw {
                    b"null" => None,
                    _ => Some(string(raw)?.ok_or(Unhandled)?),
                };
                out.previous_response_id_span = Some(span);
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
    frame: &'a [u8],
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
        let Some(kind) = kind.map(|span| string(&frame[span])).transpose()?.flatten() else {
            continue;
        };
        let list = if TOOL_OUTPUT_TYPES.contains(&&*kind) {
            &mut out.tool_output_call_ids
        } else if TOOL_CALL_TYPES.contains(&&*kind) {
            &mut out.tool_call_ids
        } else {
            continue;
        };
        if let Some(id) = call_id
            .map(|span| string(&frame[span]))
            .transpose()?
            .flatten()
        {
            list.push(id);
        }
    }
    Ok(())
}

/// Where an input item's first `type` and first `call_id` values are.
#[derive(Default)]
struct ItemKeys {
    kind: Option<Range<usize>>,
    call_id: Option<Range<usize>>,
}

/// Walks one input item (an object at the cursor).
fn read_item(frame: &[u8], scan: &mut Scan<'_>) -> Result<ItemKeys, Unhandled> {
    let mut keys = ItemKeys::default();
    scan.open_object(ITEM)?;
    let mut first = true;
    while let Some(key) = scan.next_key(first)? {
        first = false;
        let key = key_bytes(frame, key)?;
        let span = scan.value(ITEM)?;
        match key {
            b"type" if keys.kind.is_none() => keys.kind = Some(span),
            b"call_id" if keys.call_id.is_none() => keys.call_id = Some(span),
            _ => {}
        }
    }
    Ok(keys)
}

/// The bytes of a key without escapes (the reference unescapes keys: `"typ\u0065"` is `type`
/// to it, so an escaped key is left to it).
fn key_bytes(frame: &[u8], key: Str) -> Result<&[u8], Unhandled> {
    if key.escaped {
        return Err(Unhandled);
    }
    Ok(&frame[key.inner])
}

/// The text of the string value `raw` (quotes included) borrowed from the frame; `Ok(None)`
/// when `raw` is not a string, [`Unhandled`] when it holds an escape (the reference unescapes).
fn string(raw: &[u8]) -> Result<Option<Cow<'_, str>>, Unhandled> {
    let Some(inner) = raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\"")) else {
        return Ok(None);
    };
    if inner.contains(&b'\\') {
        return Err(Unhandled);
    }
    std::str::from_utf8(inner)
        .map(|s| Some(Cow::Borrowed(s)))
        .map_err(|_| Unhandled)
}

/// `true` / `false`; `None` for any other value.
fn boolean(raw: &[u8]) -> Option<bool> {
    match raw {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    }
}
