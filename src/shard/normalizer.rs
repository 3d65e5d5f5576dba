//! The pre-send normalizer: the single place where a client frame may be rewritten before it
//! goes upstream, and where lifecycle events are mapped back on the way down.
//!
//! A frame that needs no rewrite is forwarded as the bytes it came in (no copy). A rewrite
//! happens at most once per frame, by splicing the changed value into a new buffer.

use std::collections::HashMap;

use bytes::Bytes;

use crate::protocol::ClientFrame;

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

/// Rewrites `frame` for an account with `model_map`; returns the bytes to send and what changed.
pub fn normalize(
    frame: &Bytes,
    parsed: &ClientFrame<'_>,
    model_map: &HashMap<String, String>,
) -> (Bytes, Rewrite) {
    if model_map.is_empty() {
        return (frame.clone(), Rewrite::None);
    }
    let (Some(model), Some(span)) = (parsed.model.as_deref(), parsed.model_span.clone()) else {
        return (frame.clone(), Rewrite::None);
    };
    let Some(mapped) = model_map.get(model) else {
        return (frame.clone(), Rewrite::None);
    };
    let quoted = json_string(mapped);
    let mut out = Vec::with_capacity(frame.len() - span.len() + quoted.len());
    out.extend_from_slice(&frame[..span.start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&frame[span.end..]);
    (
        Bytes::from(out),
        Rewrite::ModelMapped {
            client_model: model.to_string(),
            upstream_model: mapped.clone(),
        },
    )
}

/// Maps the upstream model back to the client's in a lifecycle event (`response.created`,
/// terminal events): only `"model":"<upstream>"` occurrences are replaced. Other events pass
/// through untouched.
pub fn map_back(event: &[u8], rewrite: &Rewrite) -> Option<Vec<u8>> {
    let Rewrite::ModelMapped {
        client_model,
        upstream_model,
    } = rewrite
    else {
        return None;
    };
    let needle = format!("\"model\":{}", json_string(upstream_model));
    let replacement = format!("\"model\":{}", json_string(client_model));
    let needle = needle.as_bytes();
    let first = find(event, needle, 0)?;
    let mut out = Vec::with_capacity(event.len() + replacement.len());
    let mut at = 0;
    let mut hit = Some(first);
    while let Some(i) = hit {
        out.extend_from_slice(&event[at..i]);
        out.extend_from_slice(replacement.as_bytes());
        at = i + needle.len();
        hit = find(event, needle, at);
    }
    out.extend_from_slice(&event[at..]);
    Some(out)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
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
        let (out, rw) = normalize(&frame, &parsed, &HashMap::new());
        assert_eq!(rw, Rewrite::None);
        assert_eq!(out.as_ptr(), frame.as_ptr());
        let map = HashMap::from([("other".to_string(), "x".to_string())]);
        let (out, _) = normalize(&frame, &parsed, &map);
        assert_eq!(out.as_ptr(), frame.as_ptr());
    }

    #[test]
    fn maps_model_up_and_back() {
        let frame =
            Bytes::from_static(br#"{"type":"response.create","model":"gpt-5","input":"hi"}"#);
        let parsed = ClientFrame::parse(&frame).unwrap();
        let map = HashMap::from([("gpt-5".to_string(), "gpt-5-2026".to_string())]);
        let (out, rw) = normalize(&frame, &parsed, &map);
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
    }
}
