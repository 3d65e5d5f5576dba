//! Directives: how one turn deviates from the defaults (sizes, delays, injected faults).
//!
//! Syntax: a comma-separated list such as `deltas=3,ttft_ms=50,after=2,close=1011`. Sources, in
//! the order applied: the mock's configuration, `metadata.mock` of the request, every
//! `[[mock:…]]` marker in the serialized `input`, then the turn's queued script rule. Later
//! values win; unknown or malformed items are ignored.

use std::time::Duration;

use super::config::MockConfig;

/// Upper bound on deltas per turn.
const MAX_DELTAS: usize = 100_000;
/// Upper bound on bytes per delta.
const MAX_DELTA_BYTES: usize = 1 << 20;
/// Upper bound on all text of a turn.
const MAX_TEXT_BYTES: usize = 64 << 20;
/// Upper bound on any configured delay.
const MAX_DELAY: Duration = Duration::from_secs(600);
/// Marker that opens an in-band directive list inside `input`.
const MARKER_OPEN: &str = "[[mock:";
/// Marker that closes it.
const MARKER_CLOSE: &str = "]]";

/// A fault that ends or suspends the turn where it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// An `error` event with this code; the connection stays open.
    Error(String),
    /// A close frame with this code, then the connection ends.
    Close(u16),
    /// The TCP connection ends without a close frame.
    Drop,
    /// Nothing more is sent for this turn.
    Stall,
    /// The `websocket_connection_limit_reached` error, then a 1000 close.
    Limit,
    /// WebSocket only: a frame with a reserved bit set (a protocol violation), then the mock
    /// reads until the peer closes. Over HTTP the connection ends.
    Garbage,
}

impl Fault {
    /// Short name for the fault counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Error(_) => "error",
            Fault::Close(_) => "close",
            Fault::Drop => "drop",
            Fault::Stall => "stall",
            Fault::Limit => "limit",
            Fault::Garbage => "garbage",
        }
    }
}

/// The effective settings of one turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directives {
    /// Text deltas.
    pub deltas: usize,
    /// Bytes per delta.
    pub delta_bytes: usize,
    /// Delay before the first delta.
    pub ttft: Duration,
    /// Delay before the turn's first event (`response.created`): a slow upstream, as the
    /// gateway's time to first event sees it.
    pub first: Duration,
    /// Delay between events.
    pub delay: Duration,
    /// Events sent before the fault (and the oversize frame) happen.
    pub after: usize,
    /// The fault, if any.
    pub fault: Option<Fault>,
    /// Send one 17 MiB delta frame at `after`.
    pub oversize: bool,
    /// Emit one function call with this name instead of a text message.
    pub tool: Option<String>,
    /// HTTP only: answer with this status and a JSON error.
    pub http_status: Option<u16>,
}

impl Directives {
    /// The defaults from the mock's configuration.
    pub fn defaults(cfg: &MockConfig) -> Self {
        Self {
            deltas: cfg.deltas.min(MAX_DELTAS),
            delta_bytes: cfg.delta_bytes.min(MAX_DELTA_BYTES),
            ttft: cfg.ttft.min(MAX_DELAY),
            first: Duration::ZERO,
            delay: cfg.inter_event.min(MAX_DELAY),
            after: 0,
            fault: None,
            oversize: false,
            tool: None,
            http_status: None,
        }
        .bounded()
    }

    /// Applies a comma-separated directive list.
    pub fn apply(&mut self, list: &str) {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            self.apply_one(item);
        }
        *self = self.clone().bounded();
    }

    /// Applies `metadata.mock` and every `[[mock:…]]` marker of the serialized input.
    pub fn apply_in_band(&mut self, metadata: Option<&str>, input_json: &str) {
        if let Some(list) = metadata {
            self.apply(list);
        }
        let mut rest = input_json;
        while let Some(start) = rest.find(MARKER_OPEN) {
            let after_open = &rest[start + MARKER_OPEN.len()..];
            let Some(end) = after_open.find(MARKER_CLOSE) else {
                break;
            };
            self.apply(&after_open[..end]);
            rest = &after_open[end + MARKER_CLOSE.len()..];
        }
    }

    fn apply_one(&mut self, item: &str) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (item, None),
        };
        let number = value.and_then(|v| v.parse::<u64>().ok());
        let millis = number.map(Duration::from_millis);
        let as_usize = number.and_then(|n| usize::try_from(n).ok());
        match (key, value) {
            ("deltas", _) => set(&mut self.deltas, as_usize),
            ("delta_bytes", _) => set(&mut self.delta_bytes, as_usize),
            ("ttft_ms", _) => set(&mut self.ttft, millis),
            ("first_ms", _) => set(&mut self.first, millis),
            ("delay_ms", _) => set(&mut self.delay, millis),
            ("after", _) => set(&mut self.after, as_usize),
            ("error", Some(code)) if !code.is_empty() => {
                self.fault = Some(Fault::Error(code.to_string()))
            }
            ("close", _) => {
                if let Some(code) = number
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|c| sendable_close_code(*c))
                {
                    self.fault = Some(Fault::Close(code));
                }
            }
            ("drop", None) => self.fault = Some(Fault::Drop),
            ("stall", None) => self.fault = Some(Fault::Stall),
            ("limit", None) => self.fault = Some(Fault::Limit),
            ("garbage", None) => self.fault = Some(Fault::Garbage),
            ("oversize", None) => self.oversize = true,
            ("tool", Some(name)) if !name.is_empty() => self.tool = Some(name.to_string()),
            ("http_status", _) => {
                if let Some(status) = number
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|s| (100..=999).contains(s))
                {
                    self.http_status = Some(status);
                }
            }
            _ => tracing::debug!(directive = item, "mock: ignoring unknown directive"),
        }
    }

    /// Clamps sizes and delays so that a peer cannot make the mock allocate without bound.
    fn bounded(mut self) -> Self {
        self.deltas = self.deltas.min(MAX_DELTAS);
        self.delta_bytes = self.delta_bytes.min(MAX_DELTA_BYTES);
        if let Some(most) = MAX_TEXT_BYTES.checked_div(self.delta_bytes) {
            self.deltas = self.deltas.min(most);
        }
        self.ttft = self.ttft.min(MAX_DELAY);
        self.first = self.first.min(MAX_DELAY);
        self.delay = self.delay.min(MAX_DELAY);
        self
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Close codes that may appear in a close frame on the wire (RFC 6455 §7.4).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Directives {
        Directives::defaults(&MockConfig::default())
    }

    #[test]
    fn parses_sizes_delays_and_faults() {
        let mut d = base();
        d.apply(
            "deltas=3, delta_bytes=4,ttft_ms=50,first_ms=7,delay_ms=2,after=5,close=1012,oversize",
        );
        assert_eq!(d.deltas, 3);
        assert_eq!(d.delta_bytes, 4);
        assert_eq!(d.ttft, Duration::from_millis(50));
        assert_eq!(d.first, Duration::from_millis(7));
        assert_eq!(d.delay, Duration::from_millis(2));
        assert_eq!(d.after, 5);
        assert_eq!(d.fault, Some(Fault::Close(1012)));
        assert!(d.oversize);
    }

    #[test]
    fn later_fault_wins_and_junk_is_ignored() {
        let mut d = base();
        d.apply("error=server_error,drop,close=1006,deltas=x,bogus,tool=,http_status=70000");
        assert_eq!(d.fault, Some(Fault::Drop));
        assert_eq!(d.deltas, 8);
        assert_eq!(d.tool, None);
        assert_eq!(d.http_status, None);
    }

    #[test]
    fn reads_markers_in_input() {
        let mut d = base();
        d.apply_in_band(
            Some("deltas=2"),
            r#"[{"text":"hi [[mock:tool=shell]] and [[mock:after=1,stall]]"}]"#,
        );
        assert_eq!(d.deltas, 2);
        assert_eq!(d.tool.as_deref(), Some("shell"));
        assert_eq!(d.after, 1);
        assert_eq!(d.fault, Some(Fault::Stall));
    }

    #[test]
    fn caps_total_text() {
        let mut d = base();
        d.apply("deltas=100000,delta_bytes=1048576");
        assert!(d.deltas * d.delta_bytes <= MAX_TEXT_BYTES);
    }
}
