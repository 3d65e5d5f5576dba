//! The fields of a create request (WebSocket `response.create` frame or HTTP body) that the mock
//! acts on.

use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};

use crate::protocol::json_depth::{check_depth, MAX_JSON_DEPTH};

/// Model reported when a request names none.
const DEFAULT_MODEL: &str = "mock-model";

/// Why a frame or body is not a usable create request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Not parseable JSON.
    #[error("We could not parse the JSON body of your request: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("The request must be a JSON object.")]
    NotObject,
    /// A WebSocket frame whose `type` is not `response.create`.
    #[error("Unsupported event type '{0}'. Expected 'response.create'.")]
    WrongType(String),
}

/// The parts of a create request that shape the mock's answer.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// `model`, echoed in the response.
    pub model: String,
    /// `input` serialized compactly (empty when absent); sizes `usage.input_tokens`.
    pub input_json: String,
    /// `store` (default true).
    pub store: bool,
    /// `generate` (default true); false is a warm-up.
    pub generate: bool,
    /// `stream` (HTTP only; default false).
    pub stream: bool,
    /// Whether the `generate` key is present at all (HTTP refuses it).
    pub has_generate: bool,
    /// `previous_response_id`; null counts as absent.
    pub previous_response_id: Option<String>,
    /// `metadata.mock`, in-band directives.
    pub mock_directives: Option<String>,
    /// `call_id`s of the `function_call` items in `input`.
    pub input_calls: Vec<String>,
    /// `call_id`s of the `function_call_output` items in `input`.
    pub input_outputs: Vec<String>,
}

impl CreateRequest {
    /// Parses a WebSocket frame, which must be a `response.create` event.
    pub fn from_ws_frame(bytes: &[u8]) -> Result<Self, RequestError> {
        let value = parse_object(bytes)?;
        match value.get("type").and_then(|t| t.as_str()) {
            Some("response.create") => Ok(Self::from_object(&value)),
            Some(other) => Err(RequestError::WrongType(other.to_string())),
            None => Err(RequestError::WrongType(String::new())),
        }
    }

    /// Parses an HTTP request body.
    pub fn from_http_body(bytes: &[u8]) -> Result<Self, RequestError> {
        parse_object(bytes).map(|v| Self::from_object(&v))
    }

    fn from_object(v: &Value) -> Self {
        let input_json = v
            .get("input")
            .and_then(|i| sonic_rs::to_string(i).ok())
            .unwrap_or_default();
        let mut input_calls = Vec::new();
        let mut input_outputs = Vec::new();
        if let Some(items) = v.get("input").and_then(|i| i.as_array()) {
            for item in items.iter() {
                let call_id = item.get("call_id").and_then(|c| c.as_str());
                match (item.get("type").and_then(|t| t.as_str()), call_id) {
                    (Some("function_call"), Some(id)) => input_calls.push(id.to_string()),
                    (Some("function_call_output"), Some(id)) => input_outputs.push(id.to_string()),
                    _ => {}
                }
            }
        }
        Self {
            model: v
                .get("model")
                .and_then(|m| m.as_str())
                .unwrap_or(DEFAULT_MODEL)
                .to_string(),
            input_json,
            store: v.get("store").and_then(|s| s.as_bool()).unwrap_or(true),
            generate: v.get("generate").and_then(|g| g.as_bool()).unwrap_or(true),
            stream: v.get("stream").and_then(|s| s.as_bool()).unwrap_or(false),
            has_generate: v.get("generate").is_some(),
            previous_response_id: v
                .get("previous_response_id")
                .and_then(|p| p.as_str())
                .map(str::to_string),
            mock_directives: v
                .get("metadata")
                .and_then(|m| m.get("mock"))
                .and_then(|m| m.as_str())
                .map(str::to_string),
            input_calls,
            input_outputs,
        }
    }

    /// `usage.input_tokens`: a quarter of the serialized input's bytes, rounded up, at least 1.
    pub fn input_tokens(&self) -> u64 {
        (self.input_json.len() as u64).div_ceil(4).max(1)
    }
}

fn parse_object(bytes: &[u8]) -> Result<Value, RequestError> {
    check_depth(bytes, MAX_JSON_DEPTH).map_err(|e| RequestError::NotJson(e.to_string()))?;
    let value: Value =
        sonic_rs::from_slice(bytes).map_err(|e| RequestError::NotJson(e.to_string()))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(RequestError::NotObject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_that_matter() {
        let frame = br#"{"type":"response.create","model":"gpt-x","store":false,
            "previous_response_id":null,"metadata":{"mock":"deltas=2"},
            "input":[{"type":"function_call","call_id":"a"},
                     {"type":"function_call_output","call_id":"b","output":"ok"}]}"#;
        let r = CreateRequest::from_ws_frame(frame).expect("valid frame");
        assert_eq!(r.model, "gpt-x");
        assert!(!r.store);
        assert!(r.generate);
        assert!(!r.has_generate);
        assert_eq!(r.previous_response_id, None);
        assert_eq!(r.mock_directives.as_deref(), Some("deltas=2"));
        assert_eq!(r.input_calls, vec!["a"]);
        assert_eq!(r.input_outputs, vec!["b"]);
        assert_eq!(r.input_tokens(), (r.input_json.len() as u64).div_ceil(4));
    }

    #[test]
    fn refuses_junk() {
        assert!(matches!(
            CreateRequest::from_ws_frame(b"nope"),
            Err(RequestError::NotJson(_))
        ));
        assert!(matches!(
            CreateRequest::from_ws_frame(b"[1]"),
            Err(RequestError::NotObject)
        ));
        assert!(matches!(
            CreateRequest::from_ws_frame(br#"{"type":"response.cancel"}"#),
            Err(RequestError::WrongType(_))
        ));
        let empty = CreateRequest::from_http_body(b"{}").expect("object");
        assert_eq!(empty.input_tokens(), 1);
    }
}
