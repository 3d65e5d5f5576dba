//! What an upstream event is, read from its `type` with the least work possible.
//!
//! Every relayed event is classified (to find the first token and the terminal event); only
//! lifecycle and error events are read further, for usage, ids, models and error codes.
//!
//! Nesting: sonic-rs recurses over nested values, so every frame that a parser reads past its
//! `type` has its depth bounded first ([`check_depth`]). Deltas, most of a turn's events, are
//! never read past `type`, and the field walk that finds it does not recurse, so they are not
//! scanned a second time; nor are `response.created` and `response.in_progress`, which only
//! field walks read (the model mapping, the response id) unless the walk hands over to the
//! parser, which checks first.

use std::borrow::Cow;

use sonic_rs::JsonValueTrait;

use super::fields::{enter, fields, plain_str};
use super::json_depth::{check_depth, MAX_JSON_DEPTH};
use super::json_skip::string_end;
use super::lazy::str_in;
use super::short_str::short_str;
use super::usage::Usage;

mod located;

use located::{locate, Located};

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminalKind {
    /// `response.completed` / `response.done`: usage is billable.
    Completed,
    /// `response.failed`.
    Failed,
    /// `response.incomplete`.
    Incomplete,
    /// `response.cancelled` / `response.canceled`.
    Cancelled,
}

impl TerminalKind {
    /// Label for counters and usage records.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminalKind::Completed => "completed",
            TerminalKind::Failed => "failed",
            TerminalKind::Incomplete => "incomplete",
            TerminalKind::Cancelled => "cancelled",
        }
    }
}

/// The role an upstream event plays in a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `response.created`: carries the response id.
    Created,
    /// A delta or output event: the first one marks time to first token.
    Token,
    /// A terminal event: the turn is over.
    Terminal(TerminalKind),
    /// An `error` event: the turn is over and the connection is no longer trusted.
    Error,
    /// Anything else (relayed untouched).
    Other,
}

impl EventKind {
    /// Classifies an event by its `type` string. Deltas, most of a turn's events, are told
    /// first by their suffix, which no named type below has; the others by what follows
    /// `response.` (compared once), instead of comparing the whole type against each name.
    pub fn of_type(t: &str) -> EventKind {
        let t = t.as_bytes();
        if t.ends_with(b".delta") {
            return EventKind::Token;
        }
        let Some(name) = t.strip_prefix(b"response.") else {
            return match t {
                b"error" => EventKind::Error,
                _ => EventKind::Other,
            };
        };
        match name {
            b"created" => EventKind::Created,
            b"completed" | b"done" => EventKind::Terminal(TerminalKind::Completed),
            b"failed" => EventKind::Terminal(TerminalKind::Failed),
            b"incomplete" => EventKind::Terminal(TerminalKind::Incomplete),
            b"cancelled" | b"canceled" => EventKind::Terminal(TerminalKind::Cancelled),
            b"in_progress" | b"output_item.added" | b"output_item.done" => EventKind::Other,
            n if n.starts_with(b"output") => EventKind::Token,
            _ => EventKind::Other,
        }
    }

    /// `true` when the turn is over after this event.
    pub fn ends_turn(self) -> bool {
        matches!(self, EventKind::Terminal(_) | EventKind::Error)
    }
}

/// One upstream event frame, classified. Borrows the frame.
#[derive(Debug, Clone)]
pub struct UpstreamEvent<'a> {
    /// The frame.
    pub raw: &'a [u8],
    /// Its `type`.
    pub event_type: Cow<'a, str>,
    /// Its role in the turn.
    pub kind: EventKind,
    /// Where `response.id` and `response.usage` are, when one strict walk bounded the event
    /// ([`located`]); `None` for events not read past `type`, or ones the walk left alone.
    located: Option<Located>,
}

/// Why an upstream frame could not be classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream event is not a JSON object with a string `type`")]
pub struct MalformedEvent;

impl<'a> UpstreamEvent<'a> {
    /// Reads only `type`, which upstream sends first: the walk over the top-level fields
    /// ([`fields`]) stops there. A plain `type` (every event upstream sends, wherever the key
    /// sits) is read without the JSON parser and without allocating; an escaped one goes
    /// through the parser.
    ///
    /// The nesting of the frame is bounded ([`check_depth`], a refusal as [`MalformedEvent`])
    /// only when a parser will read it: before the parser looks for an escaped `type`, and for
    /// the events read past `type` ([`UpstreamEvent::is_read`]). Any other event (a delta) is
    /// accepted at any depth: the walk to its `type` counts brackets without recursing, and
    /// nothing reads it further (the methods that would return `None` for it), so it is relayed
    /// untouched like any other frame.
    ///
    /// A text delta as upstream starts it ([`text_delta`]) is told by one comparison.
    pub fn classify(raw: &'a [u8]) -> Result<Self, MalformedEvent> {
        if let Some(event_type) = text_delta(raw) {
            return Ok(UpstreamEvent {
                raw,
                event_type: Cow::Borrowed(event_type),
                kind: EventKind::Token,
                located: None,
            });
        }
        Self::classify_walked(raw)
    }

    /// [`classify`](Self::classify) past its text delta comparison: the type read from the
    /// event's start ([`leading_type`]), else by the field walk, else by the parser. For a
    /// caller that has ruled the text delta out already ([`text_delta_type`]), so that the
    /// comparison is not made twice.
    pub(crate) fn classify_walked(raw: &'a [u8]) -> Result<Self, MalformedEvent> {
        let event_type = match leading_type(raw) {
            Some(event_type) => Some(event_type),
            None => {
                let mut walk = fields(raw);
                match walk.by_ref().find(|(key, _)| *key == b"type") {
                    Some((_, value)) => plain_str(value),
                    None if walk.complete() => return Err(MalformedEvent),
                    None => None,
                }
            }
        };
        let Some(event_type) = event_type else {
            // An escaped `type`, or an object the walk does not handle: the parser decides,
            // and it recurses.
            check_depth(raw, MAX_JSON_DEPTH).map_err(|_| MalformedEvent)?;
            let value = sonic_rs::get_from_slice(raw, ["type"]).map_err(|_| MalformedEvent)?;
            let event_type = str_in(raw, &value).ok_or(MalformedEvent)?;
            let kind = EventKind::of_type(&event_type);
            return Ok(UpstreamEvent {
                raw,
                event_type,
                kind,
                located: None,
            });
        };
        let mut event = UpstreamEvent {
            raw,
            kind: EventKind::of_type(event_type),
            event_type: Cow::Borrowed(event_type),
            located: None,
        };
        if event.is_read() {
            // One walk bounds the event and finds what the readers read; an event it leaves
            // (one it does not walk cleanly, or too deep) gets the nesting check alone, as
            // before.
            event.located = locate(raw);
            if event.located.is_none() {
                check_depth(raw, MAX_JSON_DEPTH).map_err(|_| MalformedEvent)?;
            }
        }
        Ok(event)
    }

    /// The event as if [`classify`](Self::classify) had not located its fields: the readers
    /// walk to them themselves, as before that walk. Public so the fuzz target
    /// `upstream_event` can check that both give the same answers.
    #[doc(hidden)]
    pub fn unlocated(mut self) -> Self {
        self.located = None;
        self
    }

    /// `true` for the events a parser reads past `type`: terminal events (id, usage, output,
    /// pending calls) and `error` events. [`UpstreamEvent::classify`] bounds their nesting; the
    /// readers below read nothing else. `response.created` and `response.in_progress` are read
    /// past `type` only by the model mapping's field walk, which does not recurse, so they are
    /// not scanned for depth (a third of a turn's bytes on short turns).
    pub fn is_read(&self) -> bool {
        matches!(self.kind, EventKind::Terminal(_) | EventKind::Error)
    }

    /// `true` for lifecycle events that carry the `response` object (and so its `model`).
    pub fn carries_response(&self) -> bool {
        matches!(self.kind, EventKind::Created | EventKind::Terminal(_))
            || self.event_type == "response.in_progress"
    }

    /// `response.id` (or the top-level `id`) of a lifecycle, terminal or `error` event (`None`
    /// for others), borrowed from the frame when it has no escapes. Read by walking into
    /// the `response` object to its `id` (upstream's first key there) when that is a plain
    /// string; anything else (no `response`, no or an escaped `id`, escaped keys on the way) is
    /// left to one keyed lookup by the parser, as before the walk.
    pub fn response_id(&self) -> Option<Cow<'a, str>> {
        if !self.is_read() && !self.carries_response() {
            return None;
        }
        let walked = self
            .walked_response_field(ResponseKey::Id)
            .and_then(plain_str);
        if let Some(id) = walked {
            return Some(Cow::Borrowed(id));
        }
        // A lifecycle event's nesting was not bounded by `classify`: it is before the parser.
        if !self.is_read() && check_depth(self.raw, MAX_JSON_DEPTH).is_err() {
            return None;
        }
        let id = sonic_rs::get_from_slice(self.raw, ["response", "id"])
            .or_else(|_| sonic_rs::get_from_slice(self.raw, ["id"]))
            .ok()?;
        str_in(self.raw, &id)
    }

    /// The value of `response.<key>`, reached by the field walk ([`enter`], then [`fields`]),
    /// or where [`classify`](Self::classify)'s walk found it (the same value);
    /// `None` where the walk stops first (the parser's turn).
    fn walked_response_field(&self, key: ResponseKey) -> Option<&'a [u8]> {
        if let Some(located) = self.located {
            return match key {
                ResponseKey::Id => located.id(self.raw),
                ResponseKey::Usage => located.usage(self.raw),
            };
        }
        let name: &[u8] = match key {
            ResponseKey::Id => b"id",
            ResponseKey::Usage => b"usage",
        };
        let (_, value) = fields(enter(self.raw, b"response")?).find(|(k, _)| *k == name)?;
        Some(value)
    }

    /// Usage of a completed response: read from `response.completed` only, by walking into
    /// `response` to its `usage` (the parser when the walk does not get there).
    pub fn usage(&self) -> Option<Usage> {
        if self.kind != EventKind::Terminal(TerminalKind::Completed) {
            return None;
        }
        // Walked to like the id; the parser takes over where the walk does not reach it.
        if let Some(usage) = self.walked_response_field(ResponseKey::Usage) {
            return Usage::from_raw(usage);
        }
        let usage = sonic_rs::get_from_slice(self.raw, ["response", "usage"]).ok()?;
        Usage::from_raw(usage.as_raw_str().as_bytes())
    }

    /// The error carried by an `error` event (or a failed response).
    pub fn error(&self) -> Option<UpstreamError> {
        let (err, status) = match self.kind {
            EventKind::Error => (
                sonic_rs::get_from_slice(self.raw, ["error"]).ok(),
                sonic_rs::get_from_slice(self.raw, ["status"])
                    .ok()
                    .and_then(|s| s.as_u64()),
            ),
            EventKind::Terminal(TerminalKind::Failed) => (
                sonic_rs::get_from_slice(self.raw, ["response", "error"]).ok(),
                None,
            ),
            _ => return None,
        };
        let field = |name: &str| {
            err.as_ref()
                .and_then(|e| e.get(name))
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let mut e = UpstreamError {
            status: status.and_then(|s| u16::try_from(s).ok()),
            error_type: field("type"),
            code: field("code"),
            message: field("message"),
        };
        if e.status.is_none() {
            e.status = Some(e.http_status());
        }
        Some(e)
    }
}

/// How upstream starts a text delta, most of a turn's events.
const TEXT_DELTA: &[u8; 36] = b"{\"type\":\"response.output_text.delta\"";

/// [`TEXT_DELTA`]'s 16-byte words at 0, 16 and 20, as [`text_delta`] compares them.
const TEXT_DELTA_WORDS: [u128; 3] = [
    word_of(TEXT_DELTA, 0),
    word_of(TEXT_DELTA, 16),
    word_of(TEXT_DELTA, TEXT_DELTA.len() - 16),
];

/// The 16 bytes of `bytes` from `at` as a native-endian word (at compile time).
const fn word_of(bytes: &[u8], at: usize) -> u128 {
    let mut word = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        word[i] = bytes[at + i];
        i += 1;
    }
    u128::from_ne_bytes(word)
}

/// Where the type starts in [`TEXT_DELTA`] (past `{"type":"`).
const TYPE_AT: usize = 9;

/// The type of an event that starts as [`TEXT_DELTA`], borrowed from the event: what
/// [`leading_type`] reads there (no backslash before the closing quote, ASCII), told by one
/// comparison instead of its search for the quote, its UTF-8 check and [`EventKind::of_type`]
/// (~60 instructions per delta, callgrind). `None` sends the event to the rest of
/// [`UpstreamEvent::classify`].
fn text_delta(raw: &[u8]) -> Option<&str> {
    let start = raw.first_chunk::<{ TEXT_DELTA.len() }>()?;
    // Three 16-byte words (the last two overlap), compared inline: as slices or arrays the
    // bytes went through a `memcmp` call (~22 instructions more per delta).
    let word = |at: usize| {
        start[at..]
            .first_chunk::<16>()
            .map(|w| u128::from_ne_bytes(*w))
    };
    let differ = [0, 16, TEXT_DELTA.len() - 16]
        .iter()
        .zip(TEXT_DELTA_WORDS)
        .try_fold(0, |differ, (&at, want)| Some(differ | (word(at)? ^ want)))?;
    if differ != 0 {
        return None;
    }
    let event_type = &start[TYPE_AT..TEXT_DELTA.len() - 1];
    // SAFETY: `event_type` holds the same bytes as `TEXT_DELTA` between its quotes, which are
    // ASCII, so valid UTF-8.
    Some(unsafe { std::str::from_utf8_unchecked(event_type) })
}

/// Where the `type` of a text delta as upstream starts it ([`TEXT_DELTA`]) sits in `raw`, when
/// `raw` is one: what [`UpstreamEvent::classify`] tells of it (an [`EventKind::Token`] whose
/// type is borrowed from this range), told without building the event, for the relay's judge of
/// the event most of a turn's are.
pub fn text_delta_type(raw: &[u8]) -> Option<std::ops::Range<usize>> {
    text_delta(raw).map(|_| TYPE_AT..TEXT_DELTA.len() - 1)
}

/// How upstream starts the event that completes a response.
const COMPLETED: &[u8; 28] = b"{\"type\":\"response.completed\"";

/// `true` when `raw` starts as upstream starts a completed response ([`COMPLETED`]): an event
/// whose type [`UpstreamEvent::classify`] reads as `response.completed` (the first key, no
/// escape), so [`EventKind::Terminal`] of [`TerminalKind::Completed`] when the event walks
/// cleanly, and an event relayed untouched otherwise. Byte 18 first: it tells the text deltas
/// (`o`) and most other events apart before a compare.
pub fn completed_as_upstream_starts_it(raw: &[u8]) -> bool {
    raw.get(18) == Some(&b'c') && raw.starts_with(COMPLETED)
}

/// The `type` of an event that starts with it, as upstream writes every event
/// (`{"type":"`, no whitespace), when it has no escape: what the field walk would find, read
/// without it (its state, the whitespace between tokens, the search for a backslash after the
/// end is found). `None` sends the event to the walk.
fn leading_type(raw: &[u8]) -> Option<&str> {
    let rest = raw.strip_prefix(b"{\"type\":\"")?;
    match string_end(rest, 0)? {
        (end, false) => short_str(&rest[..end]),
        (_, true) => None,
    }
}

/// The fields of `response` read by the walk.
#[derive(Clone, Copy)]
enum ResponseKey {
    Id,
    Usage,
}

/// An error reported by upstream inside an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamError {
    /// The event's `status`, when given.
    pub status: Option<u16>,
    /// `error.type`.
    pub error_type: String,
    /// `error.code`.
    pub code: String,
    /// `error.message`.
    pub message: String,
}

/// What the gateway makes of an upstream error (the reference gateway's classification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    /// The chained response is not on this connection (or anywhere).
    PreviousResponseNotFound,
    /// A tool output names a call upstream does not know.
    ToolOutputNotFound,
    /// The connection reached its 60-minute limit.
    ConnectionLimitReached,
    /// Rate or usage limit of the account.
    RateLimited,
    /// A server-side failure.
    ServerError,
    /// Anything else (a request error).
    Other,
}

impl ErrorReason {
    /// Label for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::PreviousResponseNotFound => "previous_response_not_found",
            ErrorReason::ToolOutputNotFound => "tool_output_not_found",
            ErrorReason::ConnectionLimitReached => "connection_limit_reached",
            ErrorReason::RateLimited => "rate_limited",
            ErrorReason::ServerError => "server_error",
            ErrorReason::Other => "other",
        }
    }
}

impl UpstreamError {
    /// Classifies the error by code, type and message (compared lower-cased).
    pub fn reason(&self) -> ErrorReason {
        let code = self.code.to_ascii_lowercase();
        let ty = self.error_type.to_ascii_lowercase();
        let msg = self.message.to_ascii_lowercase();
        if code == "previous_response_not_found"
            || (msg.contains("previous response") && msg.contains("not found"))
        {
            ErrorReason::PreviousResponseNotFound
        } else if code == "tool_output_not_found" || msg.contains("no tool call found") {
            ErrorReason::ToolOutputNotFound
        } else if code == "websocket_connection_limit_reached"
            || (msg.contains("connection limit") && msg.contains("websocket"))
        {
            ErrorReason::ConnectionLimitReached
        } else if ty.contains("rate_limit")
            || ty.contains("usage_limit")
            || code.contains("rate_limit")
            || code.contains("usage_limit")
            || code.contains("insufficient_quota")
            || self.status == Some(429)
        {
            ErrorReason::RateLimited
        } else if ty.contains("server_error")
            || code.contains("server_error")
            || self.status.is_some_and(|s| s >= 500)
        {
            ErrorReason::ServerError
        } else {
            ErrorReason::Other
        }
    }

    /// The HTTP status this error maps to.
    pub fn http_status(&self) -> u16 {
        if let Some(s) = self.status {
            return s;
        }
        let code = self.code.to_ascii_lowercase();
        let ty = self.error_type.to_ascii_lowercase();
        match self.reason() {
            ErrorReason::RateLimited => 429,
            ErrorReason::PreviousResponseNotFound | ErrorReason::ToolOutputNotFound => 400,
            _ if ty.contains("invalid_request") || code.contains("invalid_request") => 400,
            _ if ty.contains("authentication") || code.contains("invalid_api_key") => 401,
            _ if ty.contains("permission") || code.contains("forbidden") => 403,
            _ => 502,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_type() {
        let e = UpstreamEvent::classify(
            br#"{"type":"response.output_text.delta","delta":"hi","sequence_number":4}"#,
        )
        .unwrap();
        assert_eq!(e.kind, EventKind::Token);
        assert!(matches!(e.event_type, Cow::Borrowed(_)));
        for (t, k) in [
            ("response.created", EventKind::Created),
            ("response.in_progress", EventKind::Other),
            ("response.output_item.added", EventKind::Other),
            ("response.function_call_arguments.delta", EventKind::Token),
            (
                "response.completed",
                EventKind::Terminal(TerminalKind::Completed),
            ),
            (
                "response.done",
                EventKind::Terminal(TerminalKind::Completed),
            ),
            (
                "response.incomplete",
                EventKind::Terminal(TerminalKind::Incomplete),
            ),
            ("error", EventKind::Error),
            ("rate_limits.updated", EventKind::Other),
        ] {
            assert_eq!(EventKind::of_type(t), k, "{t}");
        }
        assert!(UpstreamEvent::classify(b"{\"delta\":1}").is_err());
        // `type` after other keys, nested `type`s before it: the top-level one, borrowed.
        let late = UpstreamEvent::classify(
            br#"{"item":{"type":"message"},"output_index":0,"type":"response.output_item.done"}"#,
        )
        .unwrap();
        assert_eq!(late.event_type, "response.output_item.done");
        assert!(matches!(late.event_type, Cow::Borrowed(_)));
        let late_delta =
            UpstreamEvent::classify(br#"{"delta":"x","type":"response.output_text.delta"}"#)
                .unwrap();
        assert_eq!(late_delta.kind, EventKind::Token);
        let escaped =
            UpstreamEvent::classify(br#"{"type":"response.output_text.del\u0074a"}"#).unwrap();
        assert_eq!(escaped.kind, EventKind::Token);
        let spaced = UpstreamEvent::classify(br#"{ "type" : "error" }"#).unwrap();
        assert_eq!(spaced.kind, EventKind::Error);
        assert!(UpstreamEvent::classify(b"garbage").is_err());
    }

    #[test]
    fn reads_usage_and_id_from_completed_only() {
        let raw = br#"{"type":"response.completed","sequence_number":9,"response":{"id":"resp_abc","status":"completed","usage":{"input_tokens":120,"input_tokens_details":{"cached_tokens":100},"output_tokens":30,"output_tokens_details":{"reasoning_tokens":12},"total_tokens":150}}}"#;
        let e = UpstreamEvent::classify(raw).unwrap();
        assert_eq!(e.response_id().as_deref(), Some("resp_abc"));
        assert!(matches!(e.response_id(), Some(Cow::Borrowed(_))));
        let top = br#"{"type":"response.created","id":"resp_top","response":{"status":"x"}}"#;
        let top = UpstreamEvent::classify(top).unwrap();
        assert_eq!(top.response_id().as_deref(), Some("resp_top"));
        assert_eq!(
            e.usage(),
            Some(Usage {
                input_tokens: 120,
                cached_tokens: 100,
                output_tokens: 30,
                reasoning_tokens: 12,
                total_tokens: 150
            })
        );
        let failed = br#"{"type":"response.failed","response":{"id":"resp_x","usage":{"input_tokens":1,"output_tokens":1}}}"#;
        assert_eq!(UpstreamEvent::classify(failed).unwrap().usage(), None);
        let bad = br#"{"type":"response.completed","response":{"usage":{"input_tokens":"1","output_tokens":1}}}"#;
        assert_eq!(UpstreamEvent::classify(bad).unwrap().usage(), None);
    }

    /// An event of `event_type` whose `extra` field nests `levels` arrays.
    fn deep_event(event_type: &str, levels: usize) -> String {
        format!(
            r#"{{"type":"{event_type}","response":{{"id":"resp_1","extra":{}1{}}},"delta":"x"}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    }

    #[test]
    fn events_read_past_their_type_are_refused_when_too_deep() {
        for t in [
            "response.completed",
            "response.failed",
            "response.incomplete",
            "response.cancelled",
            "error",
        ] {
            let at_limit = deep_event(t, MAX_JSON_DEPTH - 2);
            let ev = UpstreamEvent::classify(at_limit.as_bytes()).unwrap();
            assert!(ev.is_read(), "{t}");
            let over = deep_event(t, MAX_JSON_DEPTH - 1);
            assert!(UpstreamEvent::classify(over.as_bytes()).is_err(), "{t}");
            let far_over = deep_event(t, 100_000);
            assert!(UpstreamEvent::classify(far_over.as_bytes()).is_err(), "{t}");
        }
        // An escaped `type` sends the frame to the parser: bounded first, whatever the type.
        let escaped = deep_event(r"response.output_text.del\u0074a", 100_000);
        assert!(UpstreamEvent::classify(escaped.as_bytes()).is_err());
    }

    #[test]
    fn a_deep_delta_is_classified_and_never_read_further() {
        let deep = deep_event("response.output_text.delta", 100_000);
        let ev = UpstreamEvent::classify(deep.as_bytes()).unwrap();
        assert_eq!(ev.kind, EventKind::Token);
        assert!(matches!(ev.event_type, Cow::Borrowed(_)));
        assert!(!ev.is_read());
        assert_eq!(ev.response_id(), None);
        assert_eq!(ev.usage(), None);
        assert_eq!(ev.error(), None);
        for lifecycle in ["response.created", "response.in_progress"] {
            let raw = deep_event(lifecycle, 100_000);
            let ev = UpstreamEvent::classify(raw.as_bytes()).unwrap();
            assert!(ev.carries_response() && !ev.is_read(), "{lifecycle}");
            assert_eq!(ev.response_id().as_deref(), Some("resp_1"), "walked to");
            let escaped_id = raw.replace(r#""id":"resp_1""#, r#""id":"resp\u005f1""#);
            let ev = UpstreamEvent::classify(escaped_id.as_bytes()).unwrap();
            assert_eq!(
                ev.response_id(),
                None,
                "too deep for the parser the walk hands over to"
            );
        }
        let other = deep_event("rate_limits.updated", 100_000);
        let ev = UpstreamEvent::classify(other.as_bytes()).unwrap();
        assert_eq!((ev.kind, ev.is_read()), (EventKind::Other, false));
        assert_eq!(ev.response_id(), None);
    }

    #[test]
    fn response_id_and_usage_read_the_same_walked_or_parsed() {
        let usage = r#"{"input_tokens":3,"output_tokens":2,"total_tokens":5}"#;
        let expect = Usage::from_raw(usage.as_bytes());
        assert!(expect.is_some());
        for (raw, id, borrowed) in [
            // Where upstream puts them: walked.
            (
                format!(
                    r#"{{"type":"response.completed","response":{{"id":"r1","output":[{{"id":"x","usage":1}}],"usage":{usage}}}}}"#
                ),
                Some("r1"),
                true,
            ),
            // `id` after other keys, whitespace everywhere.
            (
                format!(
                    r#" {{ "type" : "response.completed" , "response" : {{ "status" : "completed" , "id" : "r2" , "usage" : {usage} }} }} "#
                ),
                Some("r2"),
                true,
            ),
            // An escaped id: the parser unescapes it.
            (
                format!(
                    r#"{{"type":"response.completed","response":{{"id":"r\u0033","usage":{usage}}}}}"#
                ),
                Some("r3"),
                false,
            ),
            // An escaped key before them: the walk stops, the parser reads both.
            (
                format!(
                    r#"{{"type":"response.completed","response":{{"st\u0061tus":"x","id":"r4","usage":{usage}}}}}"#
                ),
                Some("r4"),
                true,
            ),
            // An escaped `response` key.
            (
                format!(
                    r#"{{"type":"response.completed","r\u0065sponse":{{"id":"r5","usage":{usage}}}}}"#
                ),
                Some("r5"),
                true,
            ),
            // No `response.id`: the top-level id.
            (
                format!(
                    r#"{{"type":"response.completed","id":"r6","response":{{"usage":{usage}}}}}"#
                ),
                Some("r6"),
                true,
            ),
            // An id that is not a string.
            (
                format!(r#"{{"type":"response.completed","response":{{"id":7,"usage":{usage}}}}}"#),
                None,
                true,
            ),
        ] {
            let ev = UpstreamEvent::classify(raw.as_bytes()).unwrap();
            let got = ev.response_id();
            assert_eq!(got.as_deref(), id, "{raw}");
            assert_eq!(
                matches!(got, Some(Cow::Borrowed(_))),
                borrowed && id.is_some(),
                "{raw}"
            );
            assert_eq!(ev.usage(), expect, "{raw}");
        }
    }

    #[test]
    fn the_leading_type_is_read_as_the_walk_reads_it() {
        fn walked(raw: &[u8]) -> Option<&str> {
            fields(raw)
                .find(|(key, _)| *key == b"type")
                .and_then(|(_, value)| plain_str(value))
        }
        for (raw, leading) in [
            (
                &br#"{"type":"response.output_text.delta","delta":"x"}"#[..],
                true,
            ),
            (br#"{"type":"","x":1}"#, true),
            (br#"{"type":"error"}"#, true),
            (br#"{"type":"response.created"#, false),
            (br#"{"type":"resp\"onse","x":1}"#, false),
            (br#"{"type":"response.output_text.del\u0074a"}"#, false),
            (b"{\"type\":\"\xff\",\"x\":1}", false),
            (br#"{ "type":"error"}"#, false),
            (br#"{"type": "error"}"#, false),
            (br#"{"types":"error"}"#, false),
            (br#"{"delta":"x","type":"error"}"#, false),
        ] {
            let shown = String::from_utf8_lossy(raw);
            assert_eq!(leading_type(raw).is_some(), leading, "{shown}");
            if leading {
                assert_eq!(leading_type(raw), walked(raw), "{shown}");
            }
        }
    }

    #[test]
    fn a_text_delta_is_told_as_the_walk_tells_it() {
        let delta = br#"{"type":"response.output_text.delta","item_id":"msg_1","delta":"hi"}"#;
        let fast = text_delta(delta);
        assert_eq!(fast, Some("response.output_text.delta"));
        assert_eq!(
            fast.map(str::as_ptr),
            Some(delta[TYPE_AT..].as_ptr()),
            "borrowed"
        );
        let same = |raw: &[u8]| {
            let shown = String::from_utf8_lossy(raw).into_owned();
            let (got, want) = (
                UpstreamEvent::classify(raw),
                UpstreamEvent::classify_walked(raw),
            );
            let (Ok(got), Ok(want)) = (got.clone(), want.clone()) else {
                assert_eq!(got.is_ok(), want.is_ok(), "{shown}");
                return;
            };
            assert_eq!(got.kind, want.kind, "{shown}");
            assert_eq!(got.event_type, want.event_type, "{shown}");
            assert_eq!(got.located, want.located, "{shown}");
            if let (Cow::Borrowed(g), Cow::Borrowed(w)) = (&got.event_type, &want.event_type) {
                assert_eq!(g.as_ptr(), w.as_ptr(), "{shown}");
            } else {
                assert!(matches!(got.event_type, Cow::Owned(_)), "{shown}");
            }
        };
        same(delta);
        // Cut anywhere, every byte of its start replaced: the same answer as the walk's.
        for end in 0..=delta.len() {
            same(&delta[..end]);
        }
        for at in 0..TEXT_DELTA.len() + 2 {
            for b in [b' ', b'"', b'\\', b'x', b'.', b'}', 0xc3, 0xff] {
                if delta[at] == b {
                    continue;
                }
                let mut raw = delta.to_vec();
                raw[at] = b;
                assert_eq!(
                    text_delta(&raw).is_some(),
                    at >= TEXT_DELTA.len(),
                    "{at} {b:#x}"
                );
                same(&raw);
            }
        }
        for other in [
            &br#"{"type":"response.output_text.deltas","delta":"x"}"#[..],
            br#"{"type":"response.output_text.del\u0074a","delta":"x"}"#,
            br#"{"type":"response.function_call_arguments.delta","delta":"x"}"#,
            br#"{ "type":"response.output_text.delta","delta":"x"}"#,
        ] {
            assert_eq!(text_delta(other), None);
            same(other);
        }
    }

    #[test]
    fn terminal_events_are_bounded_and_located_in_one_walk() {
        let usage = r#"{"input_tokens":3,"output_tokens":2,"total_tokens":5}"#;
        for (raw, located) in [
            // Walked cleanly: the walk that bounds the nesting found id and usage.
            (
                format!(
                    r#"{{"type":"response.completed","response":{{"id":"r1","output":[{{"id":"x"}}],"usage":{usage}}}}}"#
                ),
                true,
            ),
            (
                format!(
                    r#"{{"type":"response.completed","r\u0065sponse":{{"id":"r2","usage":{usage}}},"id":"top"}}"#
                ),
                true,
            ),
            (
                format!(
                    r#"{{"type":"response.completed","response":{{"st\u0061tus":"x","id":"r3","usage":{usage}}}}}"#
                ),
                true,
            ),
            (
                format!(
                    r#"{{"type":"response.completed","response":{{"id":"r\u0034","usage":{usage},"usage":1}}}}"#
                ),
                true,
            ),
            (
                r#"{"type":"error","status":400,"error":{"type":"invalid_request_error"}}"#.into(),
                true,
            ),
            // Not walked cleanly: the nesting check alone, the readers walk as before.
            (
                format!(
                    r#"{{"type":"response.completed","response":{{"id":"r5" "usage":{usage}}}}}"#
                ),
                false,
            ),
            (
                format!(
                    r#"{{"type":"response.completed","response":{{"id":"r6","usage":{usage}}}}} trailing"#
                ),
                false,
            ),
            (
                format!(
                    r#"{{"type":"response.completed","response":{{"id":"r7","usage":{usage},"n":1"x"}}}}"#
                ),
                false,
            ),
        ] {
            let ev = UpstreamEvent::classify(raw.as_bytes()).unwrap();
            assert_eq!(ev.located.is_some(), located, "{raw}");
            let walked = ev.clone().unlocated();
            assert_eq!(ev.response_id(), walked.response_id(), "{raw}");
            assert_eq!(ev.usage(), walked.usage(), "{raw}");
        }
    }

    #[test]
    fn classifies_errors() {
        let raw = br#"{"type":"error","status":400,"error":{"type":"invalid_request_error","code":"previous_response_not_found","message":"Previous response with id 'resp_x' not found.","param":"previous_response_id"}}"#;
        let err = UpstreamEvent::classify(raw).unwrap().error().unwrap();
        assert_eq!(err.reason(), ErrorReason::PreviousResponseNotFound);
        assert_eq!(err.http_status(), 400);
        let rl = br#"{"type":"error","error":{"type":"rate_limit_error","code":"rate_limit_exceeded","message":"slow down"}}"#;
        let err = UpstreamEvent::classify(rl).unwrap().error().unwrap();
        assert_eq!(
            (err.reason(), err.http_status()),
            (ErrorReason::RateLimited, 429)
        );
        let se = br#"{"type":"error","error":{"type":"server_error","message":"boom"}}"#;
        let err = UpstreamEvent::classify(se).unwrap().error().unwrap();
        assert_eq!(
            (err.reason(), err.http_status()),
            (ErrorReason::ServerError, 502)
        );
        let lim = br#"{"type":"error","status":400,"error":{"type":"invalid_request_error","code":"websocket_connection_limit_reached","message":"Responses websocket connection limit reached (60 minutes)."}}"#;
        let err = UpstreamEvent::classify(lim).unwrap().error().unwrap();
        assert_eq!(err.reason(), ErrorReason::ConnectionLimitReached);
    }
}
