//! OpenAI-style errors, as WebSocket `error` events and as HTTP JSON bodies.

use sonic_rs::json;

/// Message of the `websocket_connection_limit_reached` error (docs/protocol.md).
pub const CONNECTION_LIMIT_MESSAGE: &str = "Responses websocket connection limit reached (60 minutes). Create a new websocket connection to continue.";

/// One API error: its HTTP status and the `error` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (also the `status` field of the WebSocket event).
    pub status: u16,
    /// `error.type`.
    pub kind: &'static str,
    /// `error.code`.
    pub code: Option<String>,
    /// `error.message`.
    pub message: String,
    /// `error.param`.
    pub param: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, code: Option<&str>, message: String) -> Self {
        Self {
            status,
            kind,
            code: code.map(str::to_string),
            message,
            param: None,
        }
    }

    /// A 400 `invalid_request_error` with code `invalid_request`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(
            400,
            "invalid_request_error",
            Some("invalid_request"),
            message.into(),
        )
    }

    /// The generic error a scripted status stands for.
    pub fn for_status(status: u16) -> Self {
        let (kind, code, message) = match status {
            401 => (
                "invalid_request_error",
                Some("invalid_api_key"),
                "Incorrect API key provided.",
            ),
            403 => (
                "permission_error",
                Some("forbidden"),
                "You are not allowed to do this.",
            ),
            404 => ("invalid_request_error", Some("not_found"), "Not found."),
            405 => (
                "invalid_request_error",
                Some("method_not_allowed"),
                "Method not allowed.",
            ),
            413 => (
                "invalid_request_error",
                Some("request_too_large"),
                "Request body too large.",
            ),
            426 => (
                "invalid_request_error",
                Some("upgrade_required"),
                "Upgrade required.",
            ),
            429 => (
                "rate_limit_error",
                Some("rate_limit_exceeded"),
                "Rate limit reached for requests.",
            ),
            500..=599 => (
                "server_error",
                Some("server_error"),
                "The server had an error while processing your request.",
            ),
            _ => ("invalid_request_error", None, "The request was refused."),
        };
        Self::new(status, kind, code, message.to_string())
    }

    /// The 401 for a wrong key, quoting the presented key masked the way OpenAI's API does
    /// (its first 6 and last 4 characters), so tests can check that the gateway never relays
    /// an account key, whole or masked, to its clients.
    pub fn incorrect_key(presented: &str) -> Self {
        let masked = match (presented.get(..6), presented.len().checked_sub(4)) {
            (Some(head), Some(tail_at)) if presented.len() > 10 => {
                let tail = presented.get(tail_at..).unwrap_or_default();
                format!("{head}{}{tail}", "*".repeat(presented.len() - 10))
            }
            _ => "*".repeat(presented.len()),
        };
        Self::new(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            format!(
                "Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys."
            ),
        )
    }

    /// The error an `error=CODE` directive injects.
    pub fn for_code(code: &str) -> Self {
        let (status, kind) = if code.contains("rate_limit") {
            (429, "rate_limit_error")
        } else if code.contains("server_error") {
            (500, "server_error")
        } else {
            (400, "invalid_request_error")
        };
        Self::new(
            status,
            kind,
            Some(code),
            format!("Mock error injected: {code}."),
        )
    }

    /// `previous_response_not_found` for `id`.
    pub fn previous_not_found(id: &str) -> Self {
        Self {
            param: Some("previous_response_id"),
            ..Self::new(
                400,
                "invalid_request_error",
                Some("previous_response_not_found"),
                format!("Previous response with id '{id}' not found."),
            )
        }
    }

    /// A `function_call_output` whose call is unknown (the real API sends no code for this).
    pub fn tool_output_not_found(call_id: &str) -> Self {
        Self {
            param: Some("input"),
            ..Self::new(
                400,
                "invalid_request_error",
                None,
                format!("No tool call found for function call output with call_id {call_id}."),
            )
        }
    }

    /// `websocket_connection_limit_reached`.
    pub fn connection_limit() -> Self {
        Self::new(
            400,
            "invalid_request_error",
            Some("websocket_connection_limit_reached"),
            CONNECTION_LIMIT_MESSAGE.to_string(),
        )
    }

    /// HTTP refusal of the WebSocket-only `generate` parameter.
    pub fn unsupported_generate() -> Self {
        Self {
            param: Some("generate"),
            ..Self::new(
                400,
                "invalid_request_error",
                Some("unsupported_parameter"),
                "Unsupported parameter: 'generate'".to_string(),
            )
        }
    }

    fn object(&self) -> sonic_rs::Value {
        json!({
            "type": self.kind,
            "code": self.code.as_deref(),
            "message": self.message.as_str(),
            "param": self.param,
        })
    }

    /// The WebSocket / SSE `error` event (without `mock_ts_us`).
    pub fn event_json(&self, sequence_number: u64) -> String {
        let event = json!({
            "type": "error",
            "status": self.status,
            "error": self.object(),
            "sequence_number": sequence_number,
        });
        super::wire_json::to_string(&event)
    }

    /// The HTTP body `{"error": {...}}`.
    pub fn body_json(&self) -> String {
        super::wire_json::to_string(&json!({ "error": self.object() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directive_codes_pick_status_and_type() {
        assert_eq!(ApiError::for_code("rate_limit_exceeded").status, 429);
        assert_eq!(ApiError::for_code("server_error").kind, "server_error");
        assert_eq!(ApiError::for_code("bad").status, 400);
    }

    #[test]
    fn event_has_the_documented_shape() {
        let json = ApiError::previous_not_found("resp_x").event_json(0);
        let v: sonic_rs::Value = sonic_rs::from_str(&json).expect("json");
        use sonic_rs::JsonValueTrait;
        assert_eq!(v["type"].as_str(), Some("error"));
        assert_eq!(v["status"].as_u64(), Some(400));
        assert_eq!(
            v["error"]["code"].as_str(),
            Some("previous_response_not_found")
        );
        assert_eq!(v["error"]["param"].as_str(), Some("previous_response_id"));
    }
}
