//! What a mock server is started with.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Start-up settings of a mock upstream; per-turn values are defaults that directives override.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Address to listen on; port 0 picks a free port, which [`super::MockHandle::addr`] reports.
    pub listen: SocketAddr,
    /// Executors (threads), each with its own `SO_REUSEPORT` listener on the same port.
    pub shards: usize,
    /// Serve TLS with a fresh self-signed certificate for `localhost` and `127.0.0.1`.
    pub tls_self_signed: bool,
    /// When set, WebSocket handshakes and `POST …/responses` must carry `Authorization: Bearer <it>`.
    pub require_key: Option<String>,
    /// Text deltas per turn.
    pub deltas: usize,
    /// Bytes of text per delta.
    pub delta_bytes: usize,
    /// Delay before the first delta of a turn.
    pub ttft: Duration,
    /// Delay between consecutive events of a turn.
    pub inter_event: Duration,
    /// When set, the mock acts as the ChatGPT backend: Responses requests need a live access
    /// token it issued and the account id, and `POST /oauth/token` refreshes.
    pub oauth: Option<super::oauth::MockOAuth>,
    /// Cut a WebSocket connection (TCP close, no close frame) that received no frame at all,
    /// pings included, for this long between turns: an upstream's idle cut.
    pub idle_cut: Option<Duration>,
    /// Ping every WebSocket connection this often between turns.
    pub ping_every: Option<Duration>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            shards: 1,
            tls_self_signed: false,
            require_key: None,
            deltas: 8,
            delta_bytes: 8,
            ttft: Duration::ZERO,
            inter_event: Duration::ZERO,
            oauth: None,
            idle_cut: None,
            ping_every: None,
        }
    }
}
