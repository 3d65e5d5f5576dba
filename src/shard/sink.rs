//! The client side of a turn: where its events go ([`ClientSink`]: a client WebSocket, an SSE
//! response or a JSON collector) and the error a client is told ([`TurnError`]).

use async_tungstenite::tungstenite::Utf8Bytes;
use bytes::Bytes;
use sonic_rs::JsonValueTrait;

use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::protocol::json_depth::{check_depth, MAX_JSON_DEPTH};
use crate::protocol::redact::redact_secrets;

/// An error as the client receives it: HTTP status, `{"error":…}` body and `error` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnError {
    /// HTTP status.
    pub status: u16,
    /// The JSON body of an HTTP error response.
    pub http_body: String,
    /// The JSON of an `error` event.
    pub event: String,
    /// Stable code, for logs and tests.
    pub code: String,
}

impl From<GatewayError> for TurnError {
    fn from(e: GatewayError) -> Self {
        TurnError {
            status: e.status,
            http_body: e.to_http_body(),
            event: e.to_event(),
            code: e.code.to_string(),
        }
    }
}

impl TurnError {
    /// An error upstream answered with: its `error` object is passed on as it came, less the
    /// account's `secrets` ([`redact_secrets`]). A body that nests too deep to walk safely is
    /// reported as a generic upstream error.
    pub fn from_upstream(status: u16, body: &[u8], secrets: &[&str]) -> Self {
        let body = String::from_utf8_lossy(body);
        let body = redact_secrets(&body, secrets);
        let body = body.as_bytes();
        let inner = check_depth(body, MAX_JSON_DEPTH)
            .ok()
            .and_then(|()| sonic_rs::get_from_slice(body, ["error"]).ok())
            .filter(|v| v.is_object())
            .map(|v| v.as_raw_str().to_string());
        match inner {
            Some(inner) => {
                let code = sonic_rs::get_from_slice(inner.as_bytes(), ["code"])
                    .ok()
                    .and_then(|c| c.as_str().map(str::to_string))
                    .unwrap_or_default();
                TurnError {
                    status,
                    http_body: format!("{{\"error\":{inner}}}"),
                    event: format!("{{\"type\":\"error\",\"status\":{status},\"error\":{inner}}}"),
                    code,
                }
            }
            None => GatewayError::new(
                if status >= 400 { status } else { 502 },
                ErrorType::Server,
                "upstream_error",
                format!("upstream answered HTTP {status}"),
            )
            .into(),
        }
    }
}

/// The client went away.
#[derive(Debug, Clone, Copy)]
pub struct Gone;

/// What a client does while a turn runs.
pub enum ClientSignal {
    /// A frame (WebSocket clients only).
    Frame(Bytes),
    /// The client closed or vanished.
    Gone,
}

/// Where a turn's events go: a client WebSocket, an SSE response or a JSON collector.
#[allow(async_fn_in_trait)]
pub trait ClientSink {
    /// Queues one event for the client (`event_type` is its `type`).
    async fn feed(&mut self, event: Utf8Bytes, event_type: &str) -> Result<(), Gone>;
    /// Writes what was queued.
    async fn flush(&mut self) -> Result<(), Gone>;
    /// The client's next frame while a turn runs; never resolves for clients that send none.
    async fn signal(&mut self) -> ClientSignal;
    /// Tells the client its turn failed.
    async fn fail(&mut self, error: &TurnError) -> Result<(), Gone>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_error_bodies_pass_through() {
        let e = TurnError::from_upstream(
            429,
            br#"{"error":{"type":"rate_limit_error","code":"rate_limit_exceeded","message":"slow"}}"#,
            &[],
        );
        assert_eq!(e.status, 429);
        assert_eq!(e.code, "rate_limit_exceeded");
        assert!(e
            .event
            .starts_with(r#"{"type":"error","status":429,"error":{"type""#));
        let e = TurnError::from_upstream(502, b"<html>", &[]);
        assert_eq!(e.code, "upstream_error");
    }
}
