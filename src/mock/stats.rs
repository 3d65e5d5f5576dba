//! The counters a mock keeps, as tests and load scripts read them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A snapshot of what the mock has seen and done since it started (or since the last reset).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MockStats {
    /// TCP connections accepted.
    pub connections_total: u64,
    /// TCP connections currently open (not cleared by a reset).
    pub connections_open: u64,
    /// Connections upgraded to WebSocket.
    pub ws_connections_total: u64,
    /// WebSocket handshake answers by status (101 for an accepted upgrade).
    pub handshakes: BTreeMap<u16, u64>,
    /// `response.create` frames handled as turns over WebSocket.
    pub ws_turns_total: u64,
    /// `POST …/responses` requests received.
    pub http_requests_total: u64,
    /// `POST …/responses` requests handled as turns (past auth, scripted statuses and parsing).
    pub http_turns_total: u64,
    /// Turns by upstream connection id (WebSocket and HTTP share the id space).
    pub turns_by_conn: BTreeMap<u64, u64>,
    /// Close frames the mock initiated, by close code.
    pub close_codes_sent: BTreeMap<u16, u64>,
    /// Close frames the peer (the gateway) sent, by close code (0: a close without a code).
    pub close_codes_received: BTreeMap<u16, u64>,
    /// Requests refused for a missing or wrong key.
    pub auth_failures: u64,
    /// Distinct `Authorization` header values seen on handshakes and `POST …/responses`.
    pub authorizations_seen: BTreeSet<String>,
    /// Headers of the latest WebSocket handshake request, names lower-cased.
    pub last_handshake_headers: BTreeMap<String, String>,
    /// Warm-up turns (`generate: false`).
    pub generate_false_total: u64,
    /// Distinct `model` values of the turns received (to check model mapping upstream).
    pub models_seen: BTreeSet<String>,
    /// Turns refused with `previous_response_not_found`.
    pub previous_response_not_found_total: u64,
    /// Turns refused because a `function_call_output` had no matching call.
    pub tool_output_not_found_total: u64,
    /// HTTP requests refused for carrying `generate`.
    pub http_generate_rejected_total: u64,
    /// Frames or bodies refused as invalid (not JSON, wrong type).
    pub invalid_requests_total: u64,
    /// Body of the latest `POST …/responses` request (to check what the gateway sent upstream).
    pub last_http_body: String,
    /// Pings received on WebSocket connections.
    pub ws_pings_received: u64,
    /// Pongs received on WebSocket connections (answers to the mock's own pings).
    pub ws_pongs_received: u64,
    /// Pings the mock sent (`ping_every`).
    pub ws_pings_sent: u64,
    /// WebSocket connections cut for silence (`idle_cut`).
    pub ws_idle_cuts: u64,
    /// Faults injected by directives, by kind (`error`, `close`, `drop`, `stall`, `oversize`, …).
    pub faults: BTreeMap<String, u64>,
    /// Realtime sessions accepted (`GET …/realtime` upgrades).
    pub realtime_sessions_total: u64,
    /// Realtime client events received, by `type`.
    pub realtime_client_events: BTreeMap<String, u64>,
    /// Realtime responses played to their `response.done`.
    pub realtime_responses_total: u64,
    /// Realtime responses whose `response.done` carried no usage (`[[rt:no_usage]]`).
    pub realtime_responses_without_usage: u64,
    /// Decoded bytes of input audio received (`input_audio_buffer.append`).
    pub realtime_audio_bytes_received: u64,
    /// The latest WebSocket frames received (at most [`RECENT_FRAMES`], oldest first, each cut
    /// to [`RECENT_FRAME_BYTES`]): what the gateway sent upstream, for tests of its rewrites.
    pub recent_ws_frames: Vec<String>,
    /// Paths of Responses handshakes and requests received.
    pub paths_seen: BTreeSet<String>,
    /// Refreshes the OAuth token endpoint granted.
    pub oauth_refreshes: u64,
    /// Refreshes it refused (scripted, reused or unknown refresh token, bad request).
    pub oauth_refresh_failures: u64,
    /// Responses requests refused for an expired or unknown access token or a wrong
    /// `chatgpt-account-id`.
    pub oauth_rejections: u64,
}

/// WebSocket frames [`MockStats::recent_ws_frames`] keeps.
pub const RECENT_FRAMES: usize = 32;
/// Bytes of each frame it keeps.
pub const RECENT_FRAME_BYTES: usize = 4096;

impl MockStats {
    /// Remembers a received WebSocket frame among the recent ones.
    pub fn note_ws_frame(&mut self, frame: &[u8]) {
        if self.recent_ws_frames.len() >= RECENT_FRAMES {
            self.recent_ws_frames.remove(0);
        }
        let kept = &frame[..frame.len().min(RECENT_FRAME_BYTES)];
        self.recent_ws_frames
            .push(String::from_utf8_lossy(kept).into_owned());
    }
}
