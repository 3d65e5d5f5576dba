//! The pre-send normalizer: the single place where a client frame may be rewritten before it
//! goes upstream, and where lifecycle events are mapped back on the way down.
//!
//! A frame that needs no rewrite is forwarded as the bytes it came in (no copy). A rewrite
//! happens at most once per frame, by splicing every changed value into one new buffer: text
//! into text, so the frame's UTF-8, checked when it was read, needs no second check.
//!
//! Two things may change: `model` (per-account model map) and `previous_response_id`, whose
//! fate is decided by the call/output pairing invariant ([`decide_pairing`]) before anything
//! else: a tool output must travel with the response that holds its call, either through
//! `previous_response_id` or because the call item is in the same frame. Every decision has a
//! reason label, counted in the `normalizer` family.

mod pairing;

use std::collections::HashMap;
use std::ops::Range;

use async_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::fields::{fields, plain_str};
use crate::protocol::lazy::range_of;
use crate::protocol::ClientFrame;

pub use pairing::{
    decide_pairing, outputs_answered, pairing_for_turn, pending_calls, Pairing, PairingFacts,
    PairingReason, Pending, PreviousId,
};

/// What the normalizer did to a frame, for counters and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Forwarded as received.
    None,
    /// `model` was mapped for the account; events going down map it back.
    ModelMapped {
        /// What the client asked for.
        client_model: String,
        /// What upstream was sent.
        upstream_model: String,
    },
}

/// The single splice: maps the model and applies `previous`, producing the final text once.
/// Used for every attempt: with the turn's pairing decision, or a recovery replay's (`PreviousId::Set` to align,
/// `PreviousId::Clear` to replay without the id).
///
/// `None` only if a span of `parsed` did not fall between characters of `frame`, which a span
/// the parser took from this very frame always does (it starts and ends at ASCII delimiters).
pub fn rewrite(
    frame: &Utf8Bytes,
    parsed: &ClientFrame<'_>,
    previous: PreviousId<'_>,
    model_map: &HashMap<String, String>,
) -> Option<(Utf8Bytes, Rewrite)> {
    let mut model_edit = None;
    let mut rw = Rewrite::None;
    if let (Some(model), Some(span)) = (parsed.model.as_deref(), parsed.model_span.clone()) {
        if let Some(mapped) = model_map.get(model) {
            model_edit = Some((span, json_string(mapped)));
            rw = Rewrite::ModelMapped {
                client_model: model.to_string(),
                upstream_model: mapped.clone(),
            };
        }
    }
    let previous_edit = previous_edit(frame.as_bytes(), parsed, previous);
    let mut edits: [Option<(Range<usize>, String)>; 2] = [model_edit, previous_edit];
    if edits.iter().all(Option::is_none) {
        return Some((frame.clone(), rw));
    }
    edits.sort_by_key(|e| e.as_ref().map(|(r, _)| r.start));
    let grow: usize = edits.iter().flatten().map(|(_, b)| b.len()).sum();
    let mut out = String::with_capacity(frame.len() + grow);
    let mut at = 0;
    for (range, text) in edits.iter().flatten() {
        out.push_str(frame.get(at..range.start)?);
        out.push_str(text);
        at = range.end;
    }
    out.push_str(frame.get(at..)?);
    Some((Utf8Bytes::from(out), rw))
}

/// The splice that applies `previous`, if any is needed.
fn previous_edit(
    frame: &[u8],
    parsed: &ClientFrame<'_>,
    previous: PreviousId<'_>,
) -> Option<(Range<usize>, String)> {
    match previous {
        PreviousId::AsSent => None,
        PreviousId::Clear => {
            parsed.previous_response_id.as_ref()?;
            Some((
                parsed.previous_response_id_span.clone()?,
                "null".to_string(),
            ))
        }
        PreviousId::Set(id) => {
            if parsed.previous_response_id.as_deref() == Some(id) {
                return None;
            }
            let quoted = json_string(id);
            if let Some(span) = parsed.previous_response_id_span.clone() {
                return Some((span, quoted));
            }
            let open = frame.iter().position(|b| *b == b'{')?;
            let rest_empty = frame[open + 1..]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'}');
            let mut member = String::with_capacity(quoted.len() + 25);
            member.push_str("\"previous_response_id\":");
            member.push_str(&quoted);
            if !rest_empty {
                member.push(',');
            }
            Some((open + 1..open + 1, member))
        }
    }
}

/// Maps the upstream model back to the client's in a lifecycle event (`response.created`,
/// terminal events, realtime `session.*`): the `model` field of the event and of its `response`
/// (or `session`) object, found by
/// walking the JSON structure (so whitespace, key order and escapes do not matter), is replaced
/// when it names the upstream model. `None` when there is nothing to replace.
pub fn map_back(event: &[u8], rewrite: &Rewrite) -> Option<Vec<u8>> {
    let Rewrite::ModelMapped {
        client_model,
        upstream_model,
    } = rewrite
    else {
        return None;
    };
    let mut spans: Vec<Range<usize>> = Vec::new();
    model_spans(event, event, upstream_model, true, &mut spans);
    if spans.is_empty() {
        return None;
    }
    let replacement = json_string(client_model);
    let mut out = Vec::with_capacity(event.len() + spans.len() * replacement.len());
    let mut at = 0;
    for span in spans {
        out.extend_from_slice(&event[at..span.start]);
        out.extend_from_slice(replacement.as_bytes());
        at = span.end;
    }
    out.extend_from_slice(&event[at..]);
    Some(out)
}

/// Ranges (in `event`) of the `model` values of `object` that name `upstream`; with `nested`,
/// also those of its `response` object (or, in a realtime `session.*` event, its `session`).
fn model_spans(
    event: &[u8],
    object: &[u8],
    upstream: &str,
    nested: bool,
    out: &mut Vec<Range<usize>>,
) {
    for (key, value) in fields(object) {
        match key {
            b"model" if names(value, upstream) => out.extend(range_of(event, value)),
            b"response" | b"session" if nested => model_spans(event, value, upstream, false, out),
            _ => {}
        }
    }
}

/// `true` when the raw JSON string `value` decodes to `model`.
fn names(value: &[u8], model: &str) -> bool {
    match plain_str(value) {
        Some(s) => s == model,
        None => sonic_rs::from_slice::<String>(value).is_ok_and(|s| s == model),
    }
}

fn json_string(s: &str) -> String {
    sonic_rs::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ShardCounters;

    /// A client frame, as the reader hands it on.
    fn text(frame: &'static [u8]) -> Utf8Bytes {
        Utf8Bytes::try_from(bytes::Bytes::from_static(frame)).expect("UTF-8")
    }

    /// [`rewrite`], whose spans come from the frame itself.
    fn spliced(
        frame: &Utf8Bytes,
        parsed: &ClientFrame<'_>,
        previous: PreviousId<'_>,
        model_map: &HashMap<String, String>,
    ) -> (Utf8Bytes, Rewrite) {
        rewrite(frame, parsed, previous, model_map).expect("spans fall between characters")
    }

    pub(super) fn facts<'a>(
        frame: &'a ClientFrame<'a>,
        last: Option<&'a str>,
        of_previous: Pending<'a>,
        of_last: Pending<'a>,
    ) -> PairingFacts<'a> {
        PairingFacts {
            frame,
            session_last: last,
            pending_of_previous: of_previous,
            pending_of_last: of_last,
        }
    }

    pub(super) const OUTPUT_WITH_PREV: &[u8] = br#"{"type":"response.create","store":false,"previous_response_id":"r1","input":[{"type":"function_call_output","call_id":"c1","output":"ok"}]}"#;
    pub(super) const OUTPUT_NO_PREV: &[u8] = br#"{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"function_call_output","call_id":"c1","output":"ok"}]}"#;

    #[test]
    fn unmapped_frames_are_not_copied() {
        let frame = text(br#"{"type":"response.create","model":"gpt-5"}"#);
        let parsed = ClientFrame::parse(frame.as_bytes()).unwrap();
        let (out, rw) = spliced(&frame, &parsed, PreviousId::AsSent, &HashMap::new());
        assert_eq!(rw, Rewrite::None);
        assert_eq!(out.as_ptr(), frame.as_ptr());
        let map = HashMap::from([("other".to_string(), "x".to_string())]);
        let (out, _) = spliced(&frame, &parsed, PreviousId::AsSent, &map);
        assert_eq!(out.as_ptr(), frame.as_ptr());
    }

    #[test]
    fn a_rewrite_is_text_and_a_span_inside_a_character_is_refused() {
        let frame = text(r#"{"model":"é","instructions":"Résumé","input":"ü"}"#.as_bytes());
        let mut parsed = ClientFrame::parse(frame.as_bytes()).unwrap();
        let map = HashMap::from([("é".to_string(), "e-2026".to_string())]);
        let (out, _) = spliced(&frame, &parsed, PreviousId::Set("r1"), &map);
        assert_eq!(
            out,
            r#"{"previous_response_id":"r1","model":"e-2026","instructions":"Résumé","input":"ü"}"#
        );
        // Not a span the parser gives: one that ends inside `é`.
        let span = parsed.model_span.clone().unwrap();
        parsed.model_span = Some(span.start..span.start + 2);
        assert!(rewrite(&frame, &parsed, PreviousId::AsSent, &map).is_none());
    }

    #[test]
    fn maps_model_up_and_back() {
        let frame = text(br#"{"type":"response.create","model":"gpt-5","input":"hi"}"#);
        let parsed = ClientFrame::parse(frame.as_bytes()).unwrap();
        let map = HashMap::from([("gpt-5".to_string(), "gpt-5-2026".to_string())]);
        let (out, rw) = spliced(&frame, &parsed, PreviousId::AsSent, &map);
        assert_eq!(
            out.as_bytes(),
            br#"{"type":"response.create","model":"gpt-5-2026","input":"hi"}"#
        );
        let ev = br#"{"type":"response.completed","response":{"id":"r","model":"gpt-5-2026"}}"#;
        assert_eq!(
            map_back(ev, &rw).unwrap(),
            br#"{"type":"response.completed","response":{"id":"r","model":"gpt-5"}}"#
        );
        assert!(map_back(br#"{"type":"response.output_text.delta"}"#, &rw).is_none());
        let session = br#"{"type":"session.created","session":{"id":"s","model":"gpt-5-2026"}}"#;
        assert_eq!(
            map_back(session, &rw).unwrap(),
            br#"{"type":"session.created","session":{"id":"s","model":"gpt-5"}}"#,
            "a realtime session event"
        );
    }

    #[test]
    fn a_deeply_nested_lifecycle_event_is_mapped_back_without_recursing() {
        let rw = Rewrite::ModelMapped {
            client_model: "gpt-5".into(),
            upstream_model: "gpt-5-2026".into(),
        };
        let deep = |model: &str| {
            format!(
                r#"{{"type":"response.created","response":{{"id":"r","output":{}1{},"model":"{model}"}}}}"#,
                "[".repeat(200_000),
                "]".repeat(200_000)
            )
        };
        assert_eq!(
            map_back(deep("gpt-5-2026").as_bytes(), &rw).unwrap(),
            deep("gpt-5").into_bytes()
        );
    }

    #[test]
    fn map_back_reads_the_structure_not_the_bytes() {
        let rw = Rewrite::ModelMapped {
            client_model: "gpt-5".into(),
            upstream_model: "gpt-5-2026".into(),
        };
        // Spaces, another key order, an escaped spelling, a top-level model.
        let ev = br#"{ "response" : { "model" : "gpt-5-2026" , "id":"r"}, "type" : "response.created" }"#;
        assert_eq!(
            map_back(ev, &rw).unwrap(),
            br#"{ "response" : { "model" : "gpt-5" , "id":"r"}, "type" : "response.created" }"#
        );
        let ev = br#"{"type":"response.completed","model":"gpt\u002d5-2026","response":{"model":"gpt-5-2026"}}"#;
        assert_eq!(
            map_back(ev, &rw).unwrap(),
            br#"{"type":"response.completed","model":"gpt-5","response":{"model":"gpt-5"}}"#
        );
        // The model named inside output text or another object is not the response's model.
        let ev = br#"{"type":"response.completed","response":{"output":[{"model":"gpt-5-2026"}],"text":"\"model\":\"gpt-5-2026\""}}"#;
        assert!(map_back(ev, &rw).is_none());
    }

    #[test]
    fn inject_splices_the_id_after_the_opening_brace() {
        let frame = text(OUTPUT_NO_PREV);
        let parsed = ClientFrame::parse(frame.as_bytes()).unwrap();
        let (out, rw) = spliced(&frame, &parsed, PreviousId::Set("r9"), &HashMap::new());
        assert_eq!(rw, Rewrite::None);
        let reparsed = ClientFrame::parse(out.as_bytes()).unwrap();
        assert_eq!(reparsed.previous_response_id.as_deref(), Some("r9"));
        assert!(out
            .as_bytes()
            .starts_with(br#"{"previous_response_id":"r9","type""#));
        let empty = text(b" { } ");
        let parsed = ClientFrame::parse(empty.as_bytes()).unwrap();
        let (out, _) = spliced(&empty, &parsed, PreviousId::Set("r9"), &HashMap::new());
        assert_eq!(out.as_bytes(), br#" {"previous_response_id":"r9" } "#);
    }

    #[test]
    fn set_replaces_a_null_or_other_id_and_clear_sends_null() {
        let frame = text(br#"{"previous_response_id":null,"input":"x"}"#);
        let parsed = ClientFrame::parse(frame.as_bytes()).unwrap();
        let (out, _) = spliced(&frame, &parsed, PreviousId::Set("r2"), &HashMap::new());
        assert_eq!(
            out.as_bytes(),
            br#"{"previous_response_id":"r2","input":"x"}"#
        );
        let (out, _) = spliced(&frame, &parsed, PreviousId::Clear, &HashMap::new());
        assert_eq!(out.as_ptr(), frame.as_ptr());
        let frame = text(OUTPUT_WITH_PREV);
        let parsed = ClientFrame::parse(frame.as_bytes()).unwrap();
        let (out, _) = spliced(&frame, &parsed, PreviousId::Set("r1"), &HashMap::new());
        assert_eq!(out.as_ptr(), frame.as_ptr());
        let (out, _) = spliced(&frame, &parsed, PreviousId::Clear, &HashMap::new());
        let reparsed = ClientFrame::parse(out.as_bytes()).unwrap();
        assert!(reparsed.previous_response_id.is_none());
        assert_eq!(reparsed.tool_output_call_ids.len(), 1);
    }

    #[test]
    fn combined_rewrite_maps_the_model_and_injects_in_one_pass() {
        let counters = ShardCounters::default();
        let frame = text(OUTPUT_NO_PREV);
        let parsed = ClientFrame::parse(frame.as_bytes()).unwrap();
        let map = HashMap::from([("gpt-5".to_string(), "gpt-5-2026".to_string())]);
        let pairing = pairing_for_turn(
            &counters,
            &facts(&parsed, Some("r9"), Pending::Unknown, Pending::Unknown),
        );
        let (payload, rw) = spliced(&frame, &parsed, pairing.previous, &map);
        assert_eq!(
            payload.as_bytes(),
            br#"{"previous_response_id":"r9","type":"response.create","model":"gpt-5-2026","store":false,"input":[{"type":"function_call_output","call_id":"c1","output":"ok"}]}"#
        );
        assert_eq!(pairing.reason, PairingReason::InjectUnverified);
        assert!(matches!(rw, Rewrite::ModelMapped { .. }));
        assert_eq!(
            counters.labeled_values(),
            vec![("normalizer", "inject_unverified".to_string(), 1)]
        );
    }

    #[test]
    fn model_mapping_with_a_replaced_id_after_it() {
        let frame = text(
            br#"{"model":"a","previous_response_id":"r1","store":false,"input":[{"type":"function_call_output","call_id":"c1"}]}"#,
        );
        let parsed = ClientFrame::parse(frame.as_bytes()).unwrap();
        let map = HashMap::from([("a".to_string(), "much-longer-model".to_string())]);
        let (out, _) = spliced(&frame, &parsed, PreviousId::Set("r22"), &map);
        assert_eq!(
            out.as_bytes(),
            br#"{"model":"much-longer-model","previous_response_id":"r22","store":false,"input":[{"type":"function_call_output","call_id":"c1"}]}"#
        );
    }
}
