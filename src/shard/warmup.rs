//! Warm-ups over HTTP. `generate:false` must never reach an HTTP upstream (it rejects the
//! parameter), so the gateway answers it itself with a gateway-issued response id and remembers
//! the request; a turn chained to that id is sent upstream with the warm-up's context merged in.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sonic_rs::{JsonContainerTrait, JsonValueMutTrait, JsonValueTrait, Value};

/// Prefix of gateway-issued response ids.
pub const ID_PREFIX: &str = "resp_gw_";
/// Warm-ups remembered per shard at most (oldest forgotten first).
const CAPACITY: usize = 4096;
/// How long a warm-up can be chained from.
const TTL: Duration = Duration::from_secs(3600);

/// Shard-local warm-up requests by gateway-issued id.
#[derive(Default)]
pub struct WarmupCache {
    map: HashMap<String, (Instant, Bytes)>,
    order: VecDeque<String>,
}

impl WarmupCache {
    /// Remembers warm-up `frame` under `id`.
    pub fn insert(&mut self, id: String, frame: Bytes) {
        self.order.push_back(id.clone());
        self.map.insert(id, (Instant::now(), frame));
        while self.order.len() > CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    /// The warm-up request remembered under `id`, while fresh.
    pub fn get(&self, id: &str) -> Option<Bytes> {
        self.map
            .get(id)
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, f)| f.clone())
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

/// `true` when `frame` may chain from a gateway-issued id (a cheap byte check before parsing).
pub fn may_chain(frame: &[u8]) -> bool {
    frame
        .windows(ID_PREFIX.len())
        .any(|w| w == ID_PREFIX.as_bytes())
}

/// The `response.created` and `response.completed` events answering a warm-up.
pub fn answer(id: &str, model: &str) -> [String; 2] {
    let created_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
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
/// `previous_response_id` (if any) instead of the gateway id.
pub fn merge(warm: &[u8], turn: &[u8]) -> Option<Bytes> {
    let warm: Value = sonic_rs::from_slice(warm).ok()?;
    let mut turn: Value = sonic_rs::from_slice(turn).ok()?;
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
    sonic_rs::to_vec(&turn).ok().map(Bytes::from)
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
        let turn = br#"{"type":"response.create","model":"m","previous_response_id":"resp_gw_1","input":"now"}"#;
        let out = merge(warm, turn).unwrap();
        let v: Value = sonic_rs::from_slice(&out).unwrap();
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
            c.insert(format!("id{i}"), Bytes::from_static(b"{}"));
        }
        assert!(c.get("id0").is_none());
        assert!(c.get(&format!("id{}", CAPACITY + 9)).is_some());
    }
}
