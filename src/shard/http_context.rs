//! Conversation context for turns that travel over HTTP, where upstream keeps no `store=false`
//! response to chain from.
//!
//! - Warm-ups: `generate:false` must never reach an HTTP upstream (it rejects the parameter), so
//!   the gateway answers it itself with a gateway-issued response id and remembers the request.
//! - `store=false` turns carried over HTTP: the gateway remembers the request with the response's
//!   output items appended to its input.
//!
//! A turn chained to such an id is sent upstream with that context merged in and without the
//! `previous_response_id`, so the chain works whichever transport carries the next turn.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Utf8Bytes;
use bytes::Bytes;
use sonic_rs::{JsonContainerTrait, JsonValueMutTrait, JsonValueTrait, Value};

/// Prefix of gateway-issued response ids.
pub const ID_PREFIX: &str = "resp_gw_";
/// Contexts remembered per shard at most (oldest forgotten first).
const CAPACITY: usize = 4096;
/// Bytes of contexts remembered per shard at most (oldest forgotten first).
const CAPACITY_BYTES: usize = 64 << 20;
/// How long a context can be chained from.
const TTL: Duration = Duration::from_secs(3600);

/// One remembered context: when, for which client group, and the request.
struct Entry {
    at: Instant,
    group: String,
    frame: Bytes,
}

/// Shard-local request contexts by response id, each readable only by the client group that
/// created it (like all sticky state).
#[derive(Default)]
pub struct WarmupCache {
    map: HashMap<String, Entry>,
    order: VecDeque<String>,
    bytes: usize,
}

impl WarmupCache {
    /// Remembers `frame` as the context of response `id`, for client group `group`.
    pub fn insert(&mut self, id: String, group: &str, frame: Bytes) {
        self.bytes += frame.len();
        let entry = Entry {
            at: Instant::now(),
            group: group.to_owned(),
            frame,
        };
        if let Some(old) = self.map.insert(id.clone(), entry) {
            self.bytes -= old.frame.len();
        } else {
            self.order.push_back(id);
        }
        while self.order.len() > CAPACITY || self.bytes > CAPACITY_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.map.remove(&old) {
                self.bytes -= gone.frame.len();
            }
        }
    }

    /// `true` when nothing is remembered (the common case: no lookup needed).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The request remembered under `id` for `group`, while fresh.
    pub fn get(&self, id: &str, group: &str) -> Option<Bytes> {
        self.map
            .get(id)
            .filter(|e| e.group == group && e.at.elapsed() < TTL)
            .map(|e| e.frame.clone())
    }
}

/// A fresh gateway-issued response id.
pub fn new_id() -> String {
    let mut id = String::with_capacity(ID_PREFIX.len() + 32);
    id.push_str(ID_PREFIX);
    for _ in 0..2 {
        id.push_str(&format!("{:016x}", fastrand::u64(..)));
    }
    id
}

/// The `response.created` and `response.completed` events answering a warm-up.
pub fn answer(id: &str, model: &str) -> [String; 2] {
    let created_at = crate::runtime::unix_micros() / 1_000_000;
    let model = sonic_rs::to_string(model).unwrap_or_else(|_| "\"\"".into());
    let response = |status: &str, usage: &str| {
        format!(
            r#"{{"id":"{id}","object":"response","created_at":{created_at},"status":"{status}","model":{model},"output":[],"usage":{usage}}}"#
        )
    };
    [
        format!(
            r#"{{"type":"response.created","sequence_number":0,"response":{}}}"#,
            response("in_progress", "null")
        ),
        format!(
            r#"{{"type":"response.completed","sequence_number":1,"response":{}}}"#,
            response(
                "completed",
                r#"{"input_tokens":0,"input_tokens_details":{"cached_tokens":0},"output_tokens":0,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":0}"#
            )
        ),
    ]
}

/// The turn `turn` chained to warm-up `warm`: the warm-up's input first, its other fields
/// (instructions, tools, …) where the turn has none, and the warm-up's own
/// `previous_response_id` (if any) instead of the gateway id. The turn is text (its UTF-8
/// checked when it was read), read by sonic-rs without a second check; so is the result, as
/// sonic-rs writes it (`to_string` checks nothing more), so the turn runs it unchecked too.
pub fn merge(warm: &[u8], turn: &str) -> Option<Utf8Bytes> {
    let warm: Value = sonic_rs::from_slice(warm).ok()?;
    let mut turn: Value = sonic_rs::from_str(turn).ok()?;
    let warm = warm.as_object()?;
    let t = turn.as_object_mut()?;
    t.remove(&"previous_response_id");
    let mut input = as_items(warm.get(&"input"));
    input.extend(as_items(t.get(&"input")));
    t.insert(&"input", Value::from(input));
    for (key, value) in warm.iter() {
        if matches!(key, "type" | "generate" | "input") {
            continue;
        }
        if t.get(&key).is_none() {
            t.insert(&key, value.clone());
        }
    }
    sonic_rs::to_string(&turn).ok().map(Utf8Bytes::from)
}

/// The context a `store=false` turn leaves behind: the request `frame` it was sent as, with the
/// response's `output` items (a JSON array) appended to its input. Item ids are dropped (upstream
/// does not persist store=false items) and reasoning items without encrypted content are left
/// out (they cannot be replayed). The frame is text, its UTF-8 checked when it was read.
pub fn continuation(frame: &str, output: &str) -> Option<Bytes> {
    let mut v: Value = sonic_rs::from_str(frame).ok()?;
    let out: Value = sonic_rs::from_str(output).ok()?;
    let obj = v.as_object_mut()?;
    let mut input = as_items(obj.get(&"input"));
    for item in out.as_array()?.iter() {
        let mut item = item.clone();
        let Some(fields) = item.as_object_mut() else {
            continue;
        };
        let is_reasoning = fields.get(&"type").and_then(|t| t.as_str()) == Some("reasoning");
        if is_reasoning && fields.get(&"encrypted_content").is_none() {
            continue;
        }
        if !is_reasoning {
            fields.remove(&"id");
        }
        fields.remove(&"status");
        input.push(item);
    }
    obj.insert(&"input", Value::from(input));
    obj.remove(&"previous_response_id");
    sonic_rs::to_vec(&v).ok().map(Bytes::from)
}

/// `input` as a list of items (a string becomes one user message).
fn as_items(input: Option<&Value>) -> Vec<Value> {
    match input {
        Some(v) if v.is_array() => v
            .as_array()
            .map(|a| a.iter().cloned().collect())
            .unwrap_or_default(),
        Some(v) if v.is_str() => {
            let text = v.as_str().unwrap_or_default();
            let item = format!(
                r#"{{"type":"message","role":"user","content":[{{"type":"input_text","text":{}}}]}}"#,
                sonic_rs::to_string(text).unwrap_or_else(|_| "\"\"".into())
            );
            sonic_rs::from_str(&item)
                .map(|v| vec![v])
                .unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_prepends_warmup_input_and_fills_missing_fields() {
        let warm = br#"{"type":"response.create","model":"m","generate":false,"instructions":"be brief","tools":[{"type":"function","name":"shell"}],"input":[{"type":"message","role":"user","content":"ctx"}]}"#;
        let turn = r#"{"type":"response.create","model":"m","previous_response_id":"resp_gw_1","input":"now"}"#;
        let out = merge(warm, turn).unwrap();
        let v: Value = sonic_rs::from_str(&out).unwrap();
        assert!(v.get("previous_response_id").is_none());
        assert!(v.get("generate").is_none());
        assert_eq!(
            v.get("instructions").and_then(|s| s.as_str()),
            Some("be brief")
        );
        assert_eq!(
            v.get("type").and_then(|s| s.as_str()),
            Some("response.create")
        );
        let input = v.get("input").and_then(|i| i.as_array()).unwrap();
        assert_eq!(input.len(), 2);
        assert_eq!(
            input[0].get("content").and_then(|c| c.as_str()),
            Some("ctx")
        );
        assert!(new_id().starts_with(ID_PREFIX));
    }

    #[test]
    fn continuation_appends_output_items_without_ids() {
        let sent = r#"{"type":"response.create","model":"m","store":false,"previous_response_id":"x","input":"hi"}"#;
        let output = r#"[{"type":"reasoning","id":"rs_1","summary":[]},{"type":"function_call","id":"fc_1","call_id":"call_1","name":"shell","arguments":"{}","status":"completed"}]"#;
        let ctx = continuation(sent, output).unwrap();
        let v: Value = sonic_rs::from_slice(&ctx).unwrap();
        assert!(v.get("previous_response_id").is_none());
        let input = v.get("input").and_then(|i| i.as_array()).unwrap();
        assert_eq!(input.len(), 2, "{v:?}");
        assert_eq!(
            input[1].get("call_id").and_then(|c| c.as_str()),
            Some("call_1")
        );
        assert!(input[1].get("id").is_none());
        let turn = r#"{"type":"response.create","model":"m","store":false,"previous_response_id":"resp_1","input":[{"type":"function_call_output","call_id":"call_1","output":"ok"}]}"#;
        let merged = merge(&ctx, turn).unwrap();
        let v: Value = sonic_rs::from_str(&merged).unwrap();
        assert_eq!(v.get("input").and_then(|i| i.as_array()).unwrap().len(), 3);
    }

    #[test]
    fn cache_replaces_and_bounds_bytes() {
        let mut c = WarmupCache::default();
        c.insert("a".into(), "g", Bytes::from(vec![b' '; 10]));
        c.insert("a".into(), "g", Bytes::from(vec![b' '; 20]));
        assert_eq!(c.bytes, 20);
        c.insert("big".into(), "g", Bytes::from(vec![b' '; CAPACITY_BYTES]));
        assert!(
            c.get("a", "g").is_none(),
            "the oldest goes first when over the byte cap"
        );
        assert!(!c.is_empty());
    }

    #[test]
    fn answer_events_carry_the_id() {
        let [created, completed] = answer("resp_gw_x", "gpt-5");
        let c: Value = sonic_rs::from_str(&created).unwrap();
        assert_eq!(c["response"]["id"].as_str(), Some("resp_gw_x"));
        let d: Value = sonic_rs::from_str(&completed).unwrap();
        assert_eq!(d["type"].as_str(), Some("response.completed"));
        assert_eq!(d["response"]["model"].as_str(), Some("gpt-5"));
    }

    #[test]
    fn cache_is_bounded() {
        let mut c = WarmupCache::default();
        for i in 0..CAPACITY + 10 {
            c.insert(format!("id{i}"), "g", Bytes::from_static(b"{}"));
        }
        assert!(c.get("id0", "g").is_none());
        assert!(c.get(&format!("id{}", CAPACITY + 9), "g").is_some());
    }

    #[test]
    fn a_context_is_read_only_by_its_own_group() {
        let mut c = WarmupCache::default();
        c.insert("resp_gw_1".into(), "team-a", Bytes::from_static(b"{}"));
        assert!(c.get("resp_gw_1", "team-a").is_some());
        assert!(c.get("resp_gw_1", "team-b").is_none());
    }
}
