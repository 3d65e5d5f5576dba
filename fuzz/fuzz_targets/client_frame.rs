//! A client frame: `ClientFrame::parse` (the lazy field reads routing needs), the normalizer's
//! pairing decision and its one splice (`normalizer::rewrite`), and the model mapped back in
//! events (`normalizer::map_back`). The first input byte picks the rewrite.
//!
//! Invariants: the one-pass reading (`read_plain`) reads every frame it takes exactly as the
//! reference reading (`read_reference`: depth check, sonic-rs's validating iterator) does, and
//! takes every frame sonic-rs parses as a whole that has no escape and reads without error;
//! `parse` answers as the reference does; spans point at the values they name (and fall between
//! characters: a rewrite of a parsed frame never fails); a rewrite of a valid JSON frame is valid
//! JSON and reads back with the mapped model and the chosen `previous_response_id`; mapping back
//! keeps valid JSON valid.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use shardgate::protocol::ClientFrame;
use shardgate::shard::normalizer::{
    decide_pairing, map_back, pending_calls, rewrite, Pairing, PairingFacts, Pending, PreviousId,
    Rewrite,
};
use shardgate::tungstenite::Utf8Bytes;
use shardgate_fuzz::param;

/// Upstream model names with characters a splice must escape.
const MAPPED: [&str; 4] = ["gpt-5-2026", "m\"q\\x", "\u{1}\u{2028}é", ""];
/// Ids a rewrite may set, one of them needing escapes.
const IDS: [&str; 2] = ["resp_last", "resp_\"q\\\n"];

fn is_json(bytes: &[u8]) -> bool {
    sonic_rs::from_slice::<sonic_rs::Value>(bytes).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((choice, frame)) = param(data) else {
        return;
    };
    // Any bytes: the HTTP front door asks the parser what is wrong with a body that is not UTF-8.
    let reference = ClientFrame::read_reference(frame);
    match ClientFrame::read_plain(frame) {
        Some(plain) => assert_eq!(Ok(plain), reference, "the one-pass reading differs"),
        // `is_json` parses recursively: only after the reference bounded the nesting.
        None => assert!(
            reference.is_err() || frame.contains(&b'\\') || !is_json(frame),
            "the one-pass reading left a plain frame to the reference"
        ),
    }
    assert_eq!(ClientFrame::parse(frame), reference);
    let Ok(parsed) = reference else {
        return;
    };
    let _ = (
        parsed.kind(),
        parsed.is_warmup(),
        parsed.is_store_disabled(),
    );
    if let Some(span) = parsed.model_span.clone() {
        assert!(frame[span].starts_with(b"\""), "model span is the string");
    }
    if let Some(span) = parsed.previous_response_id_span.clone() {
        let raw = &frame[span];
        assert!(raw.starts_with(b"\"") || raw == b"null" || parsed.previous_response_id.is_some());
    }
    // The normalizer gets text (the frame's reader checked its UTF-8).
    let Ok(frame) = std::str::from_utf8(frame).map(Utf8Bytes::from) else {
        return;
    };

    let pending: Vec<String> = parsed
        .tool_output_call_ids
        .iter()
        .take(usize::from(choice >> 6))
        .map(|c| c.to_string())
        .collect();
    let last = IDS[usize::from(choice >> 5 & 1)];
    let facts = PairingFacts {
        frame: &parsed,
        session_last: (choice & 0x10 != 0).then_some(last),
        pending_of_previous: if choice & 0x08 != 0 {
            Pending::Known(&pending)
        } else {
            Pending::Unknown
        },
        pending_of_last: if choice & 0x04 != 0 {
            Pending::Known(&pending)
        } else {
            Pending::Unknown
        },
    };
    let Pairing { previous, .. } = decide_pairing(&facts);
    if let PreviousId::Set(id) = previous {
        assert_eq!(
            Some(id),
            facts.session_last,
            "only the session's last id is set"
        );
    }
    let previous = match choice & 0x03 {
        0 => previous,
        1 => PreviousId::Clear,
        _ => PreviousId::Set(last),
    };
    let mut model_map = HashMap::new();
    let mapped = MAPPED[usize::from(choice >> 2 & 3)];
    if let Some(model) = parsed.model.as_deref() {
        model_map.insert(model.to_string(), mapped.to_string());
    }
    let (out, rw) =
        rewrite(&frame, &parsed, previous, &model_map).expect("spans fall between characters");
    let _ = pending_calls(out.as_bytes());

    if !is_json(frame.as_bytes()) {
        return;
    }
    assert!(
        is_json(out.as_bytes()),
        "a rewrite broke a valid frame: {out:?}"
    );
    let again = ClientFrame::parse(out.as_bytes()).expect("a rewritten frame parses");
    if let Rewrite::ModelMapped { .. } = rw {
        assert_eq!(again.model.as_deref(), Some(mapped));
    }
    match previous {
        PreviousId::AsSent => {
            assert_eq!(again.previous_response_id, parsed.previous_response_id)
        }
        PreviousId::Clear => assert_eq!(again.previous_response_id, None),
        PreviousId::Set(id) => assert_eq!(again.previous_response_id.as_deref(), Some(id)),
    }
    if let Some(back) = map_back(out.as_bytes(), &rw) {
        assert!(is_json(&back), "mapping the model back broke valid JSON");
    }
});
