//! The pre-send normalizer: the single place where a client frame may be rewritten before it
//! goes upstream, and where lifecycle events are mapped back on the way down.
//!
//! A frame that needs no rewrite is forwarded as the bytes it came in (no copy). A rewrite
//! happens at most once per frame, by splicing every changed value into one new buffer.
//!
//! Two things may change: `model` (per-account model map) and `previous_response_id`, whose
//! fate is decided by the call/output pairing invariant ([`decide_pairing`]) before anything
//! else: a tool output must travel with the response that holds its call, either through
//! `previous_response_id` or because the call item is in the same frame. Every decision has a
//! reason label, counted in the `normalizer` family.

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use sonic_rs::JsonValueTrait;

use crate::protocol::client_frame::TOOL_CALL_TYPES;
use crate::protocol::fields::{fields, plain_str};
use crate::protocol::lazy::range_of;
use crate::protocol::ClientFrame;

use super::counters::ShardCounters;

/// Labeled-counter family of the pairing decisions.
const FAMILY: &str = "normalizer";

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

/// What is known about the function calls a response left waiting for outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending<'a> {
    /// Recorded when the response completed (possibly empty: nothing pending).
    Known(&'a [String]),
    /// Never recorded, expired, or the store did not answer in time.
    Unknown,
}

/// What the pairing decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct PairingFacts<'a> {
    /// The frame's lazily read fields (previous id, `store`, tool outputs and calls).
    pub frame: &'a ClientFrame<'a>,
    /// The session's last response id, if known.
    pub session_last: Option<&'a str>,
    /// Pending calls of the frame's `previous_response_id`.
    pub pending_of_previous: Pending<'a>,
    /// Pending calls of `session_last`.
    pub pending_of_last: Pending<'a>,
}

/// What happens to `previous_response_id` on the way up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviousId<'a> {
    /// Sent as the client sent it (present or absent).
    AsSent,
    /// Set to this id (injected when absent, replaced when present).
    Set(&'a str),
    /// Cleared (sent as `null`, which upstream reads as absent).
    Clear,
}

/// Why the pairing decision came out as it did; each is a counter label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairingReason {
    /// No tool output and no previous id: nothing to decide.
    Plain,
    /// A previous id without tool outputs: kept (upstream decides; recovery handles a miss).
    NoToolOutput,
    /// Every tool output answers a call pending on the previous response: kept.
    Matched,
    /// The outputs do not answer the previous response's calls but do answer the session's
    /// last response's: the id is replaced by the last one.
    MismatchRealigned,
    /// The outputs do not answer the previous response's calls, and no better id is known:
    /// kept (a tool output is never sent without an id it may belong to).
    MismatchKept,
    /// The previous response's pending calls are unknown: kept, by policy (never drop an id a
    /// tool output may depend on).
    UnknownPendingKept,
    /// Every tool output's call is in the frame itself: nothing to inject.
    SelfContained,
    /// `store` is not false: upstream keeps responses, no injection.
    StoreEnabled,
    /// store=false, outputs without an id: the session's last response, whose pending calls
    /// match, is injected.
    InjectVerified,
    /// Same, the last response's pending calls unknown: injected by policy (it is the only
    /// response the upstream connection still holds).
    InjectUnverified,
    /// The last response's pending calls are known and do not match: nothing injected.
    InjectSkippedMismatch,
    /// store=false, outputs without an id, and no last response known: nothing to inject.
    InjectNoLast,
}

impl PairingReason {
    /// Counter label.
    pub fn as_str(self) -> &'static str {
        match self {
            PairingReason::Plain => "plain",
            PairingReason::NoToolOutput => "no_tool_output",
            PairingReason::Matched => "matched",
            PairingReason::MismatchRealigned => "mismatch_realigned",
            PairingReason::MismatchKept => "mismatch_kept",
            PairingReason::UnknownPendingKept => "unknown_pending_kept",
            PairingReason::SelfContained => "self_contained",
            PairingReason::StoreEnabled => "store_enabled",
            PairingReason::InjectVerified => "inject_verified",
            PairingReason::InjectUnverified => "inject_unverified",
            PairingReason::InjectSkippedMismatch => "inject_skipped_mismatch",
            PairingReason::InjectNoLast => "inject_no_last",
        }
    }
}

/// The pairing decision: what to do with `previous_response_id`, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pairing<'a> {
    /// The action.
    pub previous: PreviousId<'a>,
    /// Its reason label.
    pub reason: PairingReason,
}

/// `true` when every tool output in `frame` answers a call in `pending` or a call item in the
/// same frame: the pairing invariant's one test, for the normalizer and the recovery matrix.
pub fn outputs_answered(frame: &ClientFrame<'_>, pending: &[String]) -> bool {
    frame
        .tool_output_call_ids
        .iter()
        .all(|out| pending.iter().any(|c| c == out) || frame.tool_call_ids.iter().any(|c| c == out))
}

/// Decides the fate of `previous_response_id` from the call/output pairing invariant.
pub fn decide_pairing<'a>(facts: &PairingFacts<'a>) -> Pairing<'a> {
    let f = facts.frame;
    let decided = |previous, reason| Pairing { previous, reason };
    if f.tool_output_call_ids.is_empty() {
        let reason = match f.previous_response_id {
            Some(_) => PairingReason::NoToolOutput,
            None => PairingReason::Plain,
        };
        return decided(PreviousId::AsSent, reason);
    }
    let covered_by = |pending: Pending<'_>| match pending {
        Pending::Known(ids) => Some(outputs_answered(f, ids)),
        Pending::Unknown => None,
    };
    if covered_by(Pending::Known(&[])) == Some(true) {
        return decided(PreviousId::AsSent, PairingReason::SelfContained);
    }
    match f.previous_response_id.as_deref() {
        Some(previous) => match covered_by(facts.pending_of_previous) {
            Some(true) => decided(PreviousId::AsSent, PairingReason::Matched),
            Some(false) => match facts.session_last {
                Some(last)
                    if last != previous && covered_by(facts.pending_of_last) == Some(true) =>
                {
                    decided(PreviousId::Set(last), PairingReason::MismatchRealigned)
                }
                _ => decided(PreviousId::AsSent, PairingReason::MismatchKept),
            },
            None => decided(PreviousId::AsSent, PairingReason::UnknownPendingKept),
        },
        None if !f.is_store_disabled() => decided(PreviousId::AsSent, PairingReason::StoreEnabled),
        None => match facts.session_last {
            None => decided(PreviousId::AsSent, PairingReason::InjectNoLast),
            Some(last) => match covered_by(facts.pending_of_last) {
                Some(true) => decided(PreviousId::Set(last), PairingReason::InjectVerified),
                Some(false) => decided(PreviousId::AsSent, PairingReason::InjectSkippedMismatch),
                None => decided(PreviousId::Set(last), PairingReason::InjectUnverified),
            },
        },
    }
}

/// The `call_id`s of the tool calls a terminal event's response left waiting for outputs (its
/// `response.output` items of a tool-call type), to record with `Sticky::remember_turn` so the
/// next turn's outputs can be paired. Read once per turn, on the terminal event only.
pub fn pending_calls(terminal_event: &[u8]) -> Vec<String> {
    let Ok(output) = sonic_rs::get(terminal_event, &["response", "output"]) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for item in sonic_rs::to_array_iter(output.as_raw_str()) {
        let Ok(item) = item else {
            break;
        };
        let is_call = item
            .get("type")
            .and_then(|t| t.as_str().map(|t| TOOL_CALL_TYPES.contains(&t)))
            .unwrap_or(false);
        if let Some(id) = item
            .get("call_id")
            .filter(|_| is_call)
            .and_then(|c| c.as_str().map(str::to_owned))
        {
            ids.push(id);
        }
    }
    ids
}

/// The pairing decision of a turn, made once before its first attempt, with its reason counted
/// (`normalizer{reason}`). Each attempt then applies it (or the recovery matrix's replacement)
/// with [`rewrite`] for its account's model map.
pub fn pairing_for_turn<'a>(counters: &ShardCounters, facts: &PairingFacts<'a>) -> Pairing<'a> {
    let pairing = decide_pairing(facts);
    if pairing.reason != PairingReason::Plain {
        counters.bump_labeled(FAMILY, pairing.reason.as_str());
    }
    pairing
}

/// The single splice: maps the model and applies `previous`, producing the final bytes once.
/// Used for every attempt: with the turn's pairing decision, or a recovery replay's (`PreviousId::Set` to align,
/// `PreviousId::Clear` to replay without the id).
pub fn rewrite(
    frame: &Bytes,
    parsed: &ClientFrame<'_>,
    previous: PreviousId<'_>,
    model_map: &HashMap<String, String>,
) -> (Bytes, Rewrite) {
    let mut model_edit = None;
    let mut rw = Rewrite::None;
    if let (Some(model), Some(span)) = (parsed.model.as_deref(), parsed.model_span.clone()) {
        if let Some(mapped) = model_map.get(model) {
            model_edit = Some((span, json_string(mapped).into_bytes()));
            rw = Rewrite::ModelMapped {
                client_model: model.to_string(),
                upstream_model: mapped.clone(),
            };
        }
    }
    let previous_edit = previous_edit(frame, parsed, previous);
    let mut edits: [Option<(Range<usize>, Vec<u8>)>; 2] = [model_edit, previous_edit];
    if edits.iter().all(Option::is_none) {
        return (frame.clone(), rw);
    }
    edits.sort_by_key(|e| e.as_ref().map(|(r, _)| r.start));
    let grow: usize = edits.iter().flatten().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(frame.len() + grow);
    let mut at = 0;
    for (range, bytes) in edits.iter().flatten() {
        out.extend_from_slice(&frame[at..range.start]);
        out.extend_from_slice(bytes);
        at = range.end;
    }
    out.extend_from_slice(&frame[at..]);
    (Bytes::from(out), rw)
}

/// The splice that applies `previous`, if any is needed.
fn previous_edit(
    frame: &[u8],
    parsed: &ClientFrame<'_>,
    previous: PreviousId<'_>,
) -> Option<(Range<usize>, Vec<u8>)> {
    match previous {
        PreviousId::AsSent => None,
        PreviousId::Clear => {
            parsed.previous_response_id.as_ref()?;
            Some((parsed.previous_response_id_span.clone()?, b"null".to_vec()))
        }
        PreviousId::Set(id) => {
            if parsed.previous_response_id.as_deref() == Some(id) {
                return None;
            }
            let quoted = json_string(id);
            if let Some(span) = parsed.previous_response_id_span.clone() {
                return Some((span, quoted.into_bytes()));
            }
            let open = frame.iter().position(|b| *b == b'{')?;
            let rest_empty = frame[open + 1..]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'}');
            let mut member = Vec::with_capacity(quoted.len() + 25);
            member.extend_from_slice(b"\"previous_response_id\":");
            member.extend_from_slice(quoted.as_bytes());
            if !rest_empty {
                member.push(b',');
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

    #[test]
    fn unmapped_frames_are_not_copied() {
        let frame = Bytes::from_static(br#"{"type":"response.create","model":"gpt-5"}"#);
        let parsed = ClientFrame::parse(&frame).unwrap();
        let (out, rw) = rewrite(&frame, &parsed, PreviousId::AsSent, &HashMap::new());
        assert_eq!(rw, Rewrite::None);
        assert_eq!(out.as_ptr(), frame.as_ptr());
        let map = HashMap::from([("other".to_string(), "x".to_string())]);
        let (out, _) = rewrite(&frame, &parsed, PreviousId::AsSent, &map);
        assert_eq!(out.as_ptr(), frame.as_ptr());
    }

    #[test]
    fn maps_model_up_and_back() {
        let frame =
            Bytes::from_static(br#"{"type":"response.create","model":"gpt-5","input":"hi"}"#);
        let parsed = ClientFrame::parse(&frame).unwrap();
        let map = HashMap::from([("gpt-5".to_string(), "gpt-5-2026".to_string())]);
        let (out, rw) = rewrite(&frame, &parsed, PreviousId::AsSent, &map);
        assert_eq!(
            &out[..],
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

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn facts<'a>(
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

    const OUTPUT_WITH_PREV: &[u8] = br#"{"type":"response.create","store":false,"previous_response_id":"r1","input":[{"type":"function_call_output","call_id":"c1","output":"ok"}]}"#;
    const OUTPUT_NO_PREV: &[u8] = br#"{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"function_call_output","call_id":"c1","output":"ok"}]}"#;

    #[test]
    fn matching_pending_calls_keep_the_id() {
        let parsed = ClientFrame::parse(OUTPUT_WITH_PREV).unwrap();
        let pending = ids(&["c1", "c2"]);
        let p = decide_pairing(&facts(
            &parsed,
            Some("r1"),
            Pending::Known(&pending),
            Pending::Unknown,
        ));
        assert_eq!(p.previous, PreviousId::AsSent);
        assert_eq!(p.reason, PairingReason::Matched);
    }

    #[test]
    fn mismatch_realigns_to_the_last_response_only_when_its_calls_match() {
        let parsed = ClientFrame::parse(OUTPUT_WITH_PREV).unwrap();
        let of_r1 = ids(&["other"]);
        let of_r2 = ids(&["c1"]);
        let p = decide_pairing(&facts(
            &parsed,
            Some("r2"),
            Pending::Known(&of_r1),
            Pending::Known(&of_r2),
        ));
        assert_eq!(p.previous, PreviousId::Set("r2"));
        assert_eq!(p.reason, PairingReason::MismatchRealigned);
        for (last, of_last) in [
            (Some("r2"), Pending::Unknown),
            (Some("r2"), Pending::Known(&of_r1[..])),
            (Some("r1"), Pending::Known(&of_r2[..])),
            (None, Pending::Unknown),
        ] {
            let p = decide_pairing(&facts(&parsed, last, Pending::Known(&of_r1), of_last));
            assert_eq!(p.previous, PreviousId::AsSent, "{last:?}");
            assert_eq!(p.reason, PairingReason::MismatchKept);
        }
    }

    #[test]
    fn unknown_pending_keeps_the_id_by_policy() {
        let parsed = ClientFrame::parse(OUTPUT_WITH_PREV).unwrap();
        let of_r2 = ids(&["c1"]);
        let p = decide_pairing(&facts(
            &parsed,
            Some("r2"),
            Pending::Unknown,
            Pending::Known(&of_r2),
        ));
        assert_eq!(p.previous, PreviousId::AsSent);
        assert_eq!(p.reason, PairingReason::UnknownPendingKept);
    }

    #[test]
    fn store_false_outputs_without_id_get_the_last_response_injected() {
        let parsed = ClientFrame::parse(OUTPUT_NO_PREV).unwrap();
        let matching = ids(&["c1"]);
        let other = ids(&["zz"]);
        let cases = [
            (
                Some("r9"),
                Pending::Known(&matching[..]),
                PreviousId::Set("r9"),
                PairingReason::InjectVerified,
            ),
            (
                Some("r9"),
                Pending::Unknown,
                PreviousId::Set("r9"),
                PairingReason::InjectUnverified,
            ),
            (
                Some("r9"),
                Pending::Known(&other[..]),
                PreviousId::AsSent,
                PairingReason::InjectSkippedMismatch,
            ),
            (
                None,
                Pending::Unknown,
                PreviousId::AsSent,
                PairingReason::InjectNoLast,
            ),
        ];
        for (last, of_last, action, reason) in cases {
            let p = decide_pairing(&facts(&parsed, last, Pending::Unknown, of_last));
            assert_eq!((p.previous, p.reason), (action, reason));
        }
        let stored = ClientFrame::parse(
            br#"{"type":"response.create","input":[{"type":"function_call_output","call_id":"c1"}]}"#,
        )
        .unwrap();
        let p = decide_pairing(&facts(
            &stored,
            Some("r9"),
            Pending::Unknown,
            Pending::Unknown,
        ));
        assert_eq!(
            (p.previous, p.reason),
            (PreviousId::AsSent, PairingReason::StoreEnabled)
        );
    }

    #[test]
    fn self_contained_and_plain_frames_are_left_alone() {
        let own = ClientFrame::parse(
            br#"{"store":false,"input":[{"type":"function_call","call_id":"c1"},{"type":"function_call_output","call_id":"c1"}]}"#,
        )
        .unwrap();
        let p = decide_pairing(&facts(&own, Some("r9"), Pending::Unknown, Pending::Unknown));
        assert_eq!(
            (p.previous, p.reason),
            (PreviousId::AsSent, PairingReason::SelfContained)
        );
        let plain = ClientFrame::parse(br#"{"type":"response.create","input":"hi"}"#).unwrap();
        let p = decide_pairing(&facts(
            &plain,
            Some("r9"),
            Pending::Unknown,
            Pending::Unknown,
        ));
        assert_eq!(p.reason, PairingReason::Plain);
        let chained = ClientFrame::parse(br#"{"previous_response_id":"r1","input":"hi"}"#).unwrap();
        let p = decide_pairing(&facts(
            &chained,
            Some("r9"),
            Pending::Unknown,
            Pending::Unknown,
        ));
        assert_eq!(
            (p.previous, p.reason),
            (PreviousId::AsSent, PairingReason::NoToolOutput)
        );
    }

    #[test]
    fn inject_splices_the_id_after_the_opening_brace() {
        let frame = Bytes::from_static(OUTPUT_NO_PREV);
        let parsed = ClientFrame::parse(&frame).unwrap();
        let (out, rw) = rewrite(&frame, &parsed, PreviousId::Set("r9"), &HashMap::new());
        assert_eq!(rw, Rewrite::None);
        let reparsed = ClientFrame::parse(&out).unwrap();
        assert_eq!(reparsed.previous_response_id.as_deref(), Some("r9"));
        assert!(out.starts_with(br#"{"previous_response_id":"r9","type""#));
        let empty = Bytes::from_static(b" { } ");
        let parsed = ClientFrame::parse(&empty).unwrap();
        let (out, _) = rewrite(&empty, &parsed, PreviousId::Set("r9"), &HashMap::new());
        assert_eq!(&out[..], br#" {"previous_response_id":"r9" } "#);
    }

    #[test]
    fn set_replaces_a_null_or_other_id_and_clear_sends_null() {
        let frame = Bytes::from_static(br#"{"previous_response_id":null,"input":"x"}"#);
        let parsed = ClientFrame::parse(&frame).unwrap();
        let (out, _) = rewrite(&frame, &parsed, PreviousId::Set("r2"), &HashMap::new());
        assert_eq!(&out[..], br#"{"previous_response_id":"r2","input":"x"}"#);
        let (out, _) = rewrite(&frame, &parsed, PreviousId::Clear, &HashMap::new());
        assert_eq!(out.as_ptr(), frame.as_ptr());
        let frame = Bytes::from_static(OUTPUT_WITH_PREV);
        let parsed = ClientFrame::parse(&frame).unwrap();
        let (out, _) = rewrite(&frame, &parsed, PreviousId::Set("r1"), &HashMap::new());
        assert_eq!(out.as_ptr(), frame.as_ptr());
        let (out, _) = rewrite(&frame, &parsed, PreviousId::Clear, &HashMap::new());
        let reparsed = ClientFrame::parse(&out).unwrap();
        assert!(reparsed.previous_response_id.is_none());
        assert_eq!(reparsed.tool_output_call_ids.len(), 1);
    }

    #[test]
    fn combined_rewrite_maps_the_model_and_injects_in_one_pass() {
        let counters = ShardCounters::default();
        let frame = Bytes::from_static(OUTPUT_NO_PREV);
        let parsed = ClientFrame::parse(&frame).unwrap();
        let map = HashMap::from([("gpt-5".to_string(), "gpt-5-2026".to_string())]);
        let pairing = pairing_for_turn(
            &counters,
            &facts(&parsed, Some("r9"), Pending::Unknown, Pending::Unknown),
        );
        let (payload, rw) = rewrite(&frame, &parsed, pairing.previous, &map);
        assert_eq!(
            &payload[..],
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
    fn pending_calls_are_the_tool_calls_of_the_final_output() {
        let ev = br#"{"type":"response.completed","response":{"id":"r1","output":[{"type":"reasoning","id":"rs"},{"type":"function_call","call_id":"c1","name":"f"},{"type":"message","id":"m"},{"type":"custom_tool_call","call_id":"c2"}]}}"#;
        assert_eq!(pending_calls(ev), ids(&["c1", "c2"]));
        let none = br#"{"type":"response.completed","response":{"id":"r1","output":[{"type":"message"}]}}"#;
        assert!(pending_calls(none).is_empty());
        assert!(pending_calls(br#"{"type":"error"}"#).is_empty());
        assert!(pending_calls(b"not json").is_empty());
    }

    #[test]
    fn model_mapping_with_a_replaced_id_after_it() {
        let frame = Bytes::from_static(
            br#"{"model":"a","previous_response_id":"r1","store":false,"input":[{"type":"function_call_output","call_id":"c1"}]}"#,
        );
        let parsed = ClientFrame::parse(&frame).unwrap();
        let map = HashMap::from([("a".to_string(), "much-longer-model".to_string())]);
        let (out, _) = rewrite(&frame, &parsed, PreviousId::Set("r22"), &map);
        assert_eq!(
            &out[..],
            br#"{"model":"much-longer-model","previous_response_id":"r22","store":false,"input":[{"type":"function_call_output","call_id":"c1"}]}"#
        );
    }
}
