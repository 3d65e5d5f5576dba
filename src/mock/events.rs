//! The JSON objects of a turn: the response object, output items, stream events, and the
//! `mock_ts_us` send-time stamp.

use std::fmt::Write as _;

use sonic_rs::{json, Value};

use super::request::CreateRequest;

/// Text the deltas are cut from.
const LOREM: &[u8] =
    b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ";

/// Seconds since the Unix epoch (`created_at`).
pub fn now_secs() -> u64 {
    crate::runtime::unix_micros() / 1_000_000
}

/// `json` (a serialized object) with a trailing `"mock_ts_us": <now>` field, for one-way latency.
pub fn stamp(json: &str) -> String {
    let Some(body) = json.strip_suffix('}') else {
        return json.to_string();
    };
    let mut out = String::with_capacity(json.len() + 32);
    out.push_str(body);
    if !body.trim_end().ends_with('{') {
        out.push(',');
    }
    let _ = write!(out, "\"mock_ts_us\":{}}}", crate::runtime::unix_micros());
    out
}

/// `n` random ASCII letters and digits.
pub fn random_alnum(n: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(n)
        .collect()
}

/// The text of delta number `index`: `len` bytes of ASCII.
pub fn delta_text(index: usize, len: usize) -> String {
    let start = index.wrapping_mul(len) % LOREM.len();
    LOREM
        .iter()
        .cycle()
        .skip(start)
        .take(len)
        .map(|b| *b as char)
        .collect()
}

/// `usage` of a response.
pub fn usage(input_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input_tokens,
        "input_tokens_details": { "cached_tokens": 0 },
        "output_tokens": output_tokens,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": input_tokens + output_tokens,
    })
}

/// The response object of `req` in state `status`.
pub fn response_object(
    id: &str,
    created_at: u64,
    req: &CreateRequest,
    status: &str,
    output: Vec<Value>,
    usage: Option<Value>,
) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "model": req.model.as_str(),
        "output": output,
        "previous_response_id": req.previous_response_id.as_deref(),
        "store": req.store,
        "usage": usage,
    })
}

/// An assistant message item holding `text` (no content while in progress).
pub fn message_item(id: &str, text: Option<&str>) -> Value {
    match text {
        Some(text) => json!({
            "id": id,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [output_text_part(text)],
        }),
        None => json!({
            "id": id,
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }),
    }
}

/// An `output_text` content part.
pub fn output_text_part(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [] })
}

/// A `function_call` item; `arguments` is empty while in progress.
pub fn function_call_item(id: &str, call_id: &str, name: &str, arguments: Option<&str>) -> Value {
    json!({
        "id": id,
        "type": "function_call",
        "status": if arguments.is_some() { "completed" } else { "in_progress" },
        "call_id": call_id,
        "name": name,
        "arguments": arguments.unwrap_or(""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_appends_a_field() {
        let s = stamp(r#"{"type":"x"}"#);
        assert!(s.starts_with(r#"{"type":"x","mock_ts_us":"#));
        assert!(s.ends_with('}'));
        assert!(stamp("{}").starts_with(r#"{"mock_ts_us":"#));
    }

    #[test]
    fn deltas_have_the_requested_size() {
        assert_eq!(delta_text(3, 8).len(), 8);
        assert_eq!(delta_text(0, 0), "");
        assert_eq!(delta_text(usize::MAX, 500).len(), 500);
    }
}
