//! JSON written with its keys in the order the real API writes them.
//!
//! sonic-rs's `json!` builds objects as hash maps, so serialising one gives its keys in a
//! different order in every process. The real Responses API writes `type` first in every event
//! (and `id`, `object`, `created_at`, `status` first in a response object or an item, the rest
//! in alphabetical order). A gateway that peeks `type` reads a real event's first key; one fed
//! shuffled keys walks half of each event first, which made `perf/` measure a cost real traffic
//! does not have. Key order is still not something a client may rely on, and the gateway's
//! tests feed it other orders on purpose.

use std::cmp::Reverse;

use sonic_rs::{JsonContainerTrait, Value};

/// Keys written first, in this order, wherever they appear; the others follow alphabetically.
const LEADING_KEYS: [&str; 5] = ["type", "id", "object", "created_at", "status"];

/// `value` serialised with the real API's key order ([`LEADING_KEYS`], then alphabetical).
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    if let Some(object) = value.as_object() {
        let mut fields: Vec<(&str, &Value)> = object.iter().collect();
        fields.sort_by_key(|(key, _)| (Reverse(rank(key)), *key));
        out.push('{');
        for (i, (key, field)) in fields.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&sonic_rs::to_string(key).unwrap_or_default());
            out.push(':');
            write_value(out, field);
        }
        out.push('}');
    } else if let Some(items) = value.as_array() {
        out.push('[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_value(out, item);
        }
        out.push(']');
    } else {
        out.push_str(&sonic_rs::to_string(value).unwrap_or_default());
    }
}

/// Higher for keys that come earlier; 0 for the alphabetical rest.
fn rank(key: &str) -> usize {
    LEADING_KEYS
        .iter()
        .position(|k| *k == key)
        .map_or(0, |at| LEADING_KEYS.len() - at)
}

#[cfg(test)]
mod tests {
    use sonic_rs::json;

    use super::*;

    #[test]
    fn events_start_with_their_type_and_objects_with_their_id() {
        let event = json!({
            "sequence_number": 3,
            "response": {"usage": null, "output": [{"role": "assistant", "type": "message", "id": "msg_1"}],
                         "status": "completed", "object": "response", "id": "resp_1"},
            "type": "response.completed",
        });
        assert_eq!(
            to_string(&event),
            r#"{"type":"response.completed","response":{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","id":"msg_1","role":"assistant"}],"usage":null},"sequence_number":3}"#
        );
    }

    #[test]
    fn strings_are_escaped_and_the_result_parses_back_to_the_same_value() {
        let value =
            json!({"type": "x", "text": "a \"quote\"\n\u{1}é", "n": -2.5, "t": true, "a": []});
        let written = to_string(&value);
        let back: Value = sonic_rs::from_str(&written).expect("valid JSON");
        assert_eq!(back, value);
        assert!(
            written.starts_with(
                r#"{"type":"x","a":[],"n":-2.5,"t":true,"text":"a \"quote\"\n\u0001é"}"#
            ),
            "{written}"
        );
    }
}
