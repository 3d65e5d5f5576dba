//! Errors written back to clients, in the shape OpenAI's API uses, so SDKs surface them as-is.

use serde::Serialize;

/// The OpenAI error categories the gateway itself emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// The request is malformed or not allowed.
    InvalidRequest,
    /// The client key is missing or wrong.
    Authentication,
    /// Too many sessions or requests.
    RateLimit,
    /// Upstream failed or could not be reached.
    Server,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request_error",
            ErrorType::Authentication => "authentication_error",
            ErrorType::RateLimit => "rate_limit_error",
            ErrorType::Server => "server_error",
        }
    }
}

/// One error the gateway reports: an HTTP status, a category, a stable code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    /// HTTP status (also the `status` of an `error` event).
    pub status: u16,
    /// Category.
    pub error_type: ErrorType,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable text. Never contains a key.
    pub message: String,
    /// The request parameter at fault, when one is known (OpenAI's `error.param`).
    pub param: Option<String>,
}

#[derive(Serialize)]
struct Inner<'a> {
    #[serde(rename = "type")]
    error_type: &'a str,
    code: &'a str,
    message: &'a str,
    param: Option<&'a str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    status: u16,
    error: Inner<'a>,
}

impl GatewayError {
    /// Builds an error.
    pub fn new(
        status: u16,
        error_type: ErrorType,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        GatewayError {
            status,
            error_type,
            code,
            message: message.into(),
            param: None,
        }
    }

    /// Names the request parameter at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    fn inner(&self) -> Inner<'_> {
        Inner {
            error_type: self.error_type.as_str(),
            code: self.code,
            message: &self.message,
            param: self.param.as_deref(),
        }
    }

    /// The JSON body of an HTTP error response: `{"error":{...}}`.
    pub fn to_http_body(&self) -> String {
        sonic_rs::to_string(&Body {
            error: self.inner(),
        })
        .unwrap_or_else(|_| r#"{"error":{"type":"server_error","message":"error"}}"#.into())
    }

    /// The JSON of a WebSocket `error` event: `{"type":"error","status":N,"error":{...}}`.
    pub fn to_event(&self) -> String {
        sonic_rs::to_string(&Event {
            event_type: "error",
            status: self.status,
            error: self.inner(),
        })
        .unwrap_or_else(|_| r#"{"type":"error","error":{"type":"server_error"}}"#.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonic_rs::JsonValueTrait;

    #[test]
    fn bodies_are_openai_shaped_and_escaped() {
        let e = GatewayError::new(
            401,
            ErrorType::Authentication,
            "invalid_api_key",
            "bad \"key\"",
        );
        let v: sonic_rs::Value = sonic_rs::from_str(&e.to_http_body()).unwrap();
        assert_eq!(v["error"]["type"].as_str(), Some("authentication_error"));
        assert_eq!(v["error"]["message"].as_str(), Some("bad \"key\""));
        let v: sonic_rs::Value = sonic_rs::from_str(&e.to_event()).unwrap();
        assert_eq!(v["type"].as_str(), Some("error"));
        assert_eq!(v["status"].as_u64(), Some(401));
        assert_eq!(v["error"]["code"].as_str(), Some("invalid_api_key"));
    }
}
