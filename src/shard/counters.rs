//! Per-shard counters: plain cells, touched only by the shard's own thread.

use std::cell::Cell;

/// Events a shard counts. Read by stats snapshots; never shared across threads.
#[derive(Debug, Default)]
pub struct ShardCounters {
    /// Client connections accepted.
    pub connections: Cell<u64>,
    /// WebSocket sessions started.
    pub sessions: Cell<u64>,
    /// WebSocket sessions currently open.
    pub sessions_open: Cell<u64>,
    /// Requests refused before upgrade for a missing or wrong key.
    pub auth_failures: Cell<u64>,
    /// Requests refused as malformed (HTTP or WebSocket handshake).
    pub bad_requests: Cell<u64>,
    /// Requests for unknown routes.
    pub not_found: Cell<u64>,
    /// Sessions refused by the per-key cap.
    pub session_cap_rejections: Cell<u64>,
    /// Turns started.
    pub turns: Cell<u64>,
    /// Turns that ended with `response.completed`.
    pub turns_completed: Cell<u64>,
    /// Turns that ended with another terminal event.
    pub turns_other_terminal: Cell<u64>,
    /// Turns that ended with an upstream `error` event.
    pub turns_upstream_error: Cell<u64>,
    /// Turns that failed on the gateway's side of upstream (dial, I/O, close, timeout).
    pub turns_failed: Cell<u64>,
    /// Turns cut short because the client left.
    pub turns_client_gone: Cell<u64>,
    /// Turns ended early by a new `response.create`.
    pub turns_preempted: Cell<u64>,
    /// Turns retried once on a fresh connection after a stale pooled one failed.
    pub stale_retries: Cell<u64>,
    /// Client frames answered with an error event (invalid JSON, unknown type).
    pub client_frame_errors: Cell<u64>,
    /// Messages over the size limit (either side).
    pub oversize_messages: Cell<u64>,
    /// Upstream events relayed to clients.
    pub events_relayed: Cell<u64>,
    /// Sessions that panicked (contained; the shard went on).
    pub session_panics: Cell<u64>,
}

/// Adds one to a counter.
pub fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}
