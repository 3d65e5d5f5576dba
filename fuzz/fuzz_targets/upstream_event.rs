//! An upstream event: `UpstreamEvent::classify` (the allocation-free field walk, with the JSON
//! parser behind it) and what is read from classified events: response id, usage
//! (`Usage::from_raw`), error and its classification, pending tool calls.
//!
//! Invariants: nothing panics; the id and usage `classify` located in the walk that bounds the
//! event are the ones the readers' own walk finds (`unlocated`); for valid JSON, what is read does not depend on how the JSON is
//! written: the same document re-serialized compactly (which drops whitespace and escapes in
//! keys, and so moves the read between the walk and the parser) classifies the same and reads
//! the same usage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::protocol::{UpstreamError, UpstreamEvent, Usage};
use shardgate::shard::normalizer::pending_calls;

/// Everything the gateway reads from one event.
#[derive(Debug, PartialEq)]
struct Read {
    event_type: String,
    carries_response: bool,
    response_id: Option<String>,
    usage: Option<Usage>,
    /// The error, its reason label and the status it maps to.
    error: Option<(UpstreamError, &'static str, u16)>,
}

fn read(raw: &[u8]) -> Option<Read> {
    let ev = UpstreamEvent::classify(raw).ok()?;
    let walked = ev.clone().unlocated();
    assert_eq!(ev.response_id(), walked.response_id(), "located id");
    assert_eq!(ev.usage(), walked.usage(), "located usage");
    Some(Read {
        event_type: ev.event_type.to_string(),
        carries_response: ev.carries_response(),
        response_id: ev.response_id().map(|c| c.to_string()),
        usage: ev.usage(),
        error: ev.error().map(|e| {
            let (reason, status) = (e.reason().as_str(), e.http_status());
            (e, reason, status)
        }),
    })
}

/// `true` when no object in the document has a key twice: which of two equal keys a reader
/// takes is not something two readers agree on.
fn unique_keys(v: &sonic_rs::Value) -> bool {
    use sonic_rs::JsonContainerTrait;
    if let Some(obj) = v.as_object() {
        let mut keys: Vec<&str> = obj.iter().map(|(k, _)| k).collect();
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        keys.len() == n && obj.iter().all(|(_, v)| unique_keys(v))
    } else if let Some(arr) = v.as_array() {
        arr.iter().all(unique_keys)
    } else {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let first = read(data);
    let usage = Usage::from_raw(data);
    let _ = pending_calls(data);
    let Ok(doc) = sonic_rs::from_slice::<sonic_rs::Value>(data) else {
        return;
    };
    if !unique_keys(&doc) {
        return;
    }
    let Ok(compact) = sonic_rs::to_vec(&doc) else {
        return;
    };
    assert_eq!(
        read(&compact),
        first,
        "classify reads {:?} and its compact form differently",
        String::from_utf8_lossy(data)
    );
    assert_eq!(
        Usage::from_raw(&compact),
        usage,
        "usage depends on formatting"
    );
});
