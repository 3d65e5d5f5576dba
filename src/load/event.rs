//! The few fields a session reads from each server event.

use serde::Deserialize;

/// One server event, as far as the load generator cares.
#[derive(Debug, Deserialize)]
pub struct Event {
    /// The `type` field.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The mock's send stamp (µs since the Unix epoch), when present.
    #[serde(default)]
    pub mock_ts_us: Option<u64>,
    /// The response object of `response.*` lifecycle events.
    #[serde(default)]
    pub response: Option<ResponseRef>,
    /// The error object of `error` events.
    #[serde(default)]
    pub error: Option<ErrorRef>,
    /// The HTTP-style status of `error` events.
    #[serde(default)]
    pub status: Option<u16>,
}

/// The parts of a response object read here.
#[derive(Debug, Deserialize)]
pub struct ResponseRef {
    /// The response id.
    #[serde(default)]
    pub id: Option<String>,
    /// The error of a failed response.
    #[serde(default)]
    pub error: Option<ErrorRef>,
    /// The status of a realtime `response.done`.
    #[serde(default)]
    pub status: Option<String>,
}

/// The parts of an error object read here.
#[derive(Debug, Deserialize)]
pub struct ErrorRef {
    /// The error code (`previous_response_not_found`, `rate_limit_exceeded`, ...).
    #[serde(default)]
    pub code: Option<String>,
}

/// How an event ends a turn, if it does.
#[derive(Debug, PartialEq, Eq)]
pub enum Terminal {
    /// `response.completed`, with the response id.
    Completed(Option<String>),
    /// Any other terminal event, with the key errors are counted under.
    Failed(String),
}

impl Event {
    /// Parses an event; `None` when the text is not a JSON object of the expected shape.
    pub fn parse(text: &str) -> Option<Event> {
        sonic_rs::from_str(text).ok()
    }

    /// `true` for any `*.delta` event (text, tool arguments, reasoning).
    pub fn is_delta(&self) -> bool {
        self.kind.ends_with(".delta")
    }

    /// The terminal classification, `None` for events that do not end a turn.
    pub fn terminal(&self) -> Option<Terminal> {
        let code = |e: Option<&ErrorRef>| e.and_then(|e| e.code.clone());
        match self.kind.as_str() {
            "response.completed" => Some(Terminal::Completed(
                self.response.as_ref().and_then(|r| r.id.clone()),
            )),
            "response.failed" => Some(Terminal::Failed(
                code(self.response.as_ref().and_then(|r| r.error.as_ref()))
                    .unwrap_or_else(|| "response.failed".to_string()),
            )),
            "response.incomplete" => Some(Terminal::Failed("response.incomplete".to_string())),
            // Realtime: a response ends with `response.done`, whatever its status.
            "response.done" => match self.response.as_ref().and_then(|r| r.status.as_deref()) {
                None | Some("completed") => Some(Terminal::Completed(
                    self.response.as_ref().and_then(|r| r.id.clone()),
                )),
                Some(other) => Some(Terminal::Failed(format!("response.done_{other}"))),
            },
            "response.cancelled" => Some(Terminal::Failed("response.cancelled".to_string())),
            "error" => Some(Terminal::Failed(code(self.error.as_ref()).unwrap_or_else(
                || match self.status {
                    Some(s) => format!("error_status_{s}"),
                    None => "error".to_string(),
                },
            ))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_terminals() {
        let e = Event::parse(r#"{"type":"response.output_text.delta","delta":"x","mock_ts_us":7}"#)
            .unwrap();
        assert!(e.is_delta());
        assert_eq!(e.mock_ts_us, Some(7));
        assert_eq!(e.terminal(), None);
        let e = Event::parse(
            r#"{"type":"response.completed","response":{"id":"resp_1","usage":{"x":1}}}"#,
        )
        .unwrap();
        assert_eq!(
            e.terminal(),
            Some(Terminal::Completed(Some("resp_1".into())))
        );
        let e = Event::parse(
            r#"{"type":"error","status":400,"error":{"type":"invalid_request_error","code":"previous_response_not_found"}}"#,
        )
        .unwrap();
        assert_eq!(
            e.terminal(),
            Some(Terminal::Failed("previous_response_not_found".into()))
        );
        let e = Event::parse(r#"{"type":"error","status":429,"error":{"code":null}}"#).unwrap();
        assert_eq!(
            e.terminal(),
            Some(Terminal::Failed("error_status_429".into()))
        );
        let e = Event::parse(
            r#"{"type":"response.failed","response":{"id":"r","error":{"code":"server_error"}}}"#,
        )
        .unwrap();
        assert_eq!(e.terminal(), Some(Terminal::Failed("server_error".into())));
        let e = Event::parse(
            r#"{"type":"response.done","response":{"id":"resp_9","status":"completed"}}"#,
        )
        .unwrap();
        assert_eq!(
            e.terminal(),
            Some(Terminal::Completed(Some("resp_9".into())))
        );
        let e =
            Event::parse(r#"{"type":"response.done","response":{"status":"cancelled"}}"#).unwrap();
        assert_eq!(
            e.terminal(),
            Some(Terminal::Failed("response.done_cancelled".into()))
        );
        assert!(Event::parse("[1,2]").is_none());
    }
}
