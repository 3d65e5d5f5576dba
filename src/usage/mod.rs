//! Usage records: one per terminal turn, the basis of billing.
//!
//! Shards build a [`UsageRecord`] when a turn ends and send it to the control thread, which
//! writes it to the configured durable sink. The response id is the idempotency key.

pub mod encode;
pub mod file;
pub mod redis_stream;
pub mod sink;
pub mod spool;
pub mod writer;

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::protocol::Usage;

/// How the client made the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestType {
    /// A turn on a WebSocket session.
    Ws,
    /// `POST /v1/responses` with `"stream": true`.
    Stream,
    /// `POST /v1/responses` without streaming.
    Sync,
    /// One response of a `/v1/realtime` session.
    Realtime,
}

impl RequestType {
    /// The name used in records and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestType::Ws => "ws",
            RequestType::Stream => "stream",
            RequestType::Sync => "sync",
            RequestType::Realtime => "realtime",
        }
    }
}

/// One billed turn. Never carries a key: clients are named by group and key id.
///
/// Built on a shard for every turn and moved to the control thread, so its names are shared
/// strings (`Arc<str>`: the session's group and key id, the shard's account and host names, the
/// response id the sticky state also keeps) and its status a constant where it can be: building
/// one copies no string. The JSON line it becomes is the same either way (`encode.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The upstream response id (idempotency key).
    pub response_id: Arc<str>,
    /// Wall-clock time the turn ended, Unix milliseconds.
    pub ts_ms: u64,
    /// Client group.
    pub group: Arc<str>,
    /// Client key id (the configured name, never the key).
    pub key_id: Arc<str>,
    /// Upstream account id.
    pub account: Arc<str>,
    /// Model as the client asked for it.
    pub model: Arc<str>,
    /// How the client made the request.
    pub request_type: RequestType,
    /// Token counts from `response.completed` (zero when the terminal carried none).
    #[serde(flatten)]
    pub usage: Usage,
    /// Client-side time to first event, µs (absent when no event reached the client).
    pub ttft_us: Option<u64>,
    /// Client frame read → terminal written, µs.
    pub duration_us: u64,
    /// Upstream attempts the request took.
    pub attempts: u32,
    /// Terminal kind: `completed`, `failed`, `incomplete`, `cancelled`.
    pub status: Cow<'static, str>,
    /// Gateway host that served the turn.
    pub instance: Arc<str>,
    /// Shard that served the turn.
    pub shard: usize,
    /// Realtime responses only: the session and the counts by modality.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub realtime: Option<RealtimeUsage>,
}

/// What a realtime response's record adds: which session it belongs to, its tokens by modality,
/// and whether the counts were reported by upstream or estimated by the gateway (upstream sent
/// no usage, or the session ended before the response did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealtimeUsage {
    /// The realtime session id (upstream's `sess_…`, else the gateway's own).
    pub session_id: String,
    /// Input text tokens.
    pub input_text_tokens: u64,
    /// Input audio tokens.
    pub input_audio_tokens: u64,
    /// Output text tokens.
    pub output_text_tokens: u64,
    /// Output audio tokens.
    pub output_audio_tokens: u64,
    /// `true` when the gateway estimated the counts.
    pub estimated: bool,
}

#[cfg(test)]
impl UsageRecord {
    /// A completed WebSocket turn with id `response_id`, for tests.
    pub(crate) fn sample(response_id: impl Into<Arc<str>>) -> UsageRecord {
        UsageRecord {
            response_id: response_id.into(),
            ts_ms: 0,
            group: "g".into(),
            key_id: "k".into(),
            account: "a".into(),
            model: "m".into(),
            request_type: RequestType::Ws,
            usage: Usage::default(),
            ttft_us: None,
            duration_us: 1,
            attempts: 1,
            status: "completed".into(),
            instance: "i".into(),
            shard: 0,
            realtime: None,
        }
    }
}
