//! The upstream WebSocket client: dial, TLS, handshake, and the connection object the pool keeps.

use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::handshake::client::generate_key;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::Error as WsError;
use async_tungstenite::WebSocketStream;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http::{HeaderName, HeaderValue, Request};

use crate::config::UpstreamConfig;
use crate::net::proxy::{self, ProxyError, ProxyKind, ProxyUrl, Target};
use crate::net::stream::UpstreamTcp;
use crate::net::{FrameEdge, PrefixedStream, UpstreamStream};
use crate::runtime;

use super::account::AccountRuntime;
use super::counters::ShardCounters;
use super::keepalive::PingState;

/// The header upstream's 101 may carry and a client's 101 echoes (`[server] echo_turn_state`).
pub const TURN_STATE: &str = "x-codex-turn-state";

/// The `OpenAI-Beta` value that selects the Responses WebSocket protocol.
pub const OPENAI_BETA_WS: &str = "responses_websockets=2026-02-06";

/// Counts a failed dial that the account's egress proxy caused (`proxy_failures{account}`).
/// Every path that dials (turns over WebSocket or HTTP, the realtime relay) reports through it.
pub fn count_proxy_failure(counters: &ShardCounters, account: &str, e: &DialError) {
    if matches!(e, DialError::Proxy(_)) {
        counters.bump_labeled("proxy_failures", account);
    }
}

/// Why a dial failed. Every variant says on which step, so the failure can be classified.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// DNS resolution failed.
    #[error("resolve failed: {0}")]
    Resolve(std::io::Error),
    /// TCP connect failed.
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// TCP connect took longer than the dial timeout.
    #[error("connect timed out")]
    ConnectTimeout,
    /// TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// TLS or WebSocket handshake took longer than the handshake timeout.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// Upstream answered the upgrade with another status.
    #[error("upgrade refused with HTTP {status}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// `Retry-After` in seconds, when given.
        retry_after: Option<u64>,
    },
    /// Any other WebSocket handshake failure.
    #[error("websocket handshake failed: {0}")]
    Handshake(String),
    /// The account's egress proxy did not open the tunnel (refused, wrong credentials, broken
    /// answer). Never carries the proxy's credentials.
    #[error("egress proxy: {0}")]
    Proxy(ProxyError),
}

/// An upstream WebSocket, over a stream read in frames ([`FrameEdge`]) so that it can be set
/// aside when its connection rests and built again, with fresh buffers, at its next turn
/// ([`UpstreamConn::rest`], [`UpstreamConn::ws`]).
pub type UpstreamWs = WebSocketStream<FrameEdge<UpstreamStream>>;

/// How long a resting connection may take to flush what it has queued (a pong) before it is
/// rebuilt; past it the connection is kept as it is.
const REST_FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// How long a connection the gateway closes waits, in the background, for upstream's close
/// reply before its socket is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// One upstream WebSocket connection.
pub struct UpstreamConn {
    /// Shard-local id, for logs and tests.
    pub id: u64,
    /// Index of the account it belongs to.
    pub account: usize,
    /// The WebSocket; while the connection rests, a stand-in over no stream, without buffers.
    ws: UpstreamWs,
    /// While the connection rests: its stream and WebSocket settings, to build the WebSocket
    /// over again at its next turn.
    resting: Option<(FrameEdge<UpstreamStream>, WebSocketConfig)>,
    /// When it was opened; connections are retired before upstream's 60-minute limit.
    pub born: Instant,
    /// Turns it has carried.
    pub turns: u64,
    /// How long the dial took (TCP, TLS, upgrade), recorded once when first leased.
    pub dial_time: Duration,
    /// When it last went onto its pool's idle stack.
    pub idle_since: Instant,
    /// `turns` when the WebSocket was last built: it has not grown since when they are equal.
    built_at_turn: u64,
    /// Keep-alive pings sent and the one awaiting its pong ([`super::keepalive`]).
    pub pings: PingState,
    /// The `x-codex-turn-state` upstream's 101 carried, echoed to a client whose upgrade
    /// leased this connection (`[server] echo_turn_state`).
    /// Boxed: rare, and every connection a session holds is part of its task.
    pub turn_state: Option<Box<HeaderValue>>,
}

impl UpstreamConn {
    /// `true` when the connection is too old to start another turn on.
    pub fn is_expired(&self, max_age: Duration) -> bool {
        self.is_expired_at(max_age, Instant::now())
    }

    /// [`UpstreamConn::is_expired`] as of `now` (a turn's attempt reads the clock once).
    pub fn is_expired_at(&self, max_age: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.born) >= max_age
    }

    /// Whether resting would give buffers back: the connection carried a turn since its
    /// WebSocket was built, whose queued writes are flushed and which holds no partly read
    /// frame or message. tungstenite keeps its read buffer at the largest batch of events read
    /// and its write buffer at the largest frame sent (30 KiB after a Codex `response.create`)
    /// for the connection's life, and cannot shrink them.
    pub async fn can_rest(&mut self) -> bool {
        if !self.grown() {
            return false;
        }
        let flushed = runtime::timeout(REST_FLUSH_LIMIT, self.ws.flush()).await;
        matches!(flushed, Some(Ok(()))) && self.ws.get_ref().at_message_edge()
    }

    /// The WebSocket, built again over the connection's stream first if it rests. Building
    /// completes at its first poll (nothing is read or written), so the stream taken out of
    /// `resting` is in the new WebSocket before anything else can run.
    pub async fn ws(&mut self) -> &mut UpstreamWs {
        if let Some((stream, config)) = self.resting.take() {
            self.ws = WebSocketStream::from_raw_socket(stream, Role::Client, Some(config)).await;
        }
        &mut self.ws
    }

    /// Sets the WebSocket aside, keeping only its stream (its buffers freed), for a connection
    /// [`UpstreamConn::can_rest`] said may: [`UpstreamConn::ws`] builds it again at the next
    /// turn. Never on a busy connection: that build allocates a new read buffer.
    pub async fn rest(&mut self) {
        let config = *self.ws.get_config();
        let no_buffers = config.read_buffer_size(0);
        let stand_in = FrameEdge::new(UpstreamStream::Closed);
        let stand_in = WebSocketStream::from_raw_socket(stand_in, Role::Client, Some(no_buffers));
        // Nothing changes before this await, so an interrupted rest leaves the connection as is.
        let stand_in = stand_in.await;
        let mut stream = std::mem::replace(&mut self.ws, stand_in).into_inner();
        stream.release();
        self.resting = Some((stream, config));
        self.built_at_turn = self.turns;
    }

    /// Rests an idle pooled connection without waiting: as [`UpstreamConn::can_rest`] then
    /// [`UpstreamConn::rest`], except that a flush that cannot complete at once leaves the
    /// connection as it is. `false` when the connection is broken (its flush failed): it is
    /// to be closed.
    pub fn rest_now(&mut self) -> bool {
        if !self.grown() {
            return true;
        }
        self.rest_built_now()
    }

    /// `true` while the connection rests (its WebSocket set aside, see [`UpstreamConn::rest`]).
    pub fn is_resting(&self) -> bool {
        self.resting.is_some()
    }

    /// As [`UpstreamConn::rest_now`], for a WebSocket built again without a turn (to exchange
    /// a keep-alive ping): rests it whether or not a turn grew it.
    pub fn rest_built_now(&mut self) -> bool {
        if self.is_resting() {
            return true;
        }
        match self.ws.flush().now_or_never() {
            Some(Ok(())) if self.ws.get_ref().at_message_edge() => {
                // Completes at its first poll; if it did not, nothing changed.
                let _ = self.rest().now_or_never();
                true
            }
            Some(Err(_)) => false,
            _ => true,
        }
    }

    /// `true` when a turn ran since the WebSocket was built: its buffers may have grown.
    pub fn grown(&self) -> bool {
        self.turns != self.built_at_turn
    }

    /// Closes the connection with a close handshake (1000) rather than a bare TCP close, in a
    /// task of its own ([`UpstreamConn::close_handshake`]).
    pub fn close(self) {
        runtime::spawn_local(self.close_handshake(CloseCode::Normal));
    }

    /// Sends a close frame with `code` (or, when upstream closed first, the reply tungstenite
    /// queued), then reads until upstream's reply or end of stream; at most [`CLOSE_LINGER`].
    pub async fn close_handshake(mut self, code: CloseCode) {
        let ws = self.ws().await;
        let frame = CloseFrame {
            code,
            reason: "".into(),
        };
        runtime::timeout(CLOSE_LINGER, async {
            if ws.close(Some(frame)).await.is_err() {
                let _ = ws.flush().await;
            }
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

/// The WebSocket limits used toward upstream. Pooled connections sit idle most of the time, so
/// their read chunk is 16 KiB rather than tungstenite's 128 KiB default.
pub fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// Opens a WebSocket to the account's Responses endpoint with the account's key.
///
/// `forward` holds the client headers worth passing on (session ids, Codex metadata); the
/// client's own `Authorization` is never among them.
pub async fn dial(
    account: &AccountRuntime,
    cfg: &UpstreamConfig,
    forward: &[(HeaderName, HeaderValue)],
    id: u64,
) -> Result<UpstreamConn, DialError> {
    let started = Instant::now();
    let tcp = connect_tcp(account, cfg).await?;
    let handshake = async {
        let stream = FrameEdge::after_http_head(wrap_tls(account, tcp).await?);
        let request = handshake_request(account, forward)?;
        async_tungstenite::client_async_with_config(
            request,
            stream,
            Some(ws_config(cfg.max_message_bytes)),
        )
        .await
        .map_err(classify_handshake_error)
    };
    let (ws, response) = runtime::timeout(cfg.handshake_timeout, handshake)
        .await
        .ok_or(DialError::HandshakeTimeout)??;
    let turn_state = response.headers().get(TURN_STATE).cloned().map(Box::new);
    let born = Instant::now();
    Ok(UpstreamConn {
        id,
        account: account.index,
        ws,
        born,
        idle_since: born,
        turns: 0,
        dial_time: started.elapsed(),
        resting: None,
        built_at_turn: 0,
        pings: PingState::default(),
        turn_state,
    })
}

/// Opens the byte stream to the account's endpoint (TCP, then TLS for https/wss accounts),
/// each step under its timeout. Used by the HTTP client; the WebSocket dial does the same steps.
pub async fn connect_stream(
    account: &AccountRuntime,
    cfg: &UpstreamConfig,
) -> Result<UpstreamStream, DialError> {
    let tcp = connect_tcp(account, cfg).await?;
    runtime::timeout(cfg.handshake_timeout, wrap_tls(account, tcp))
        .await
        .ok_or(DialError::HandshakeTimeout)?
}

/// The TCP connection a dial starts from: to the upstream, or a tunnel through the account's
/// egress proxy. The dial timeout covers the whole step (for a proxy: TCP to it and its
/// handshake); TLS through the tunnel then has the handshake timeout like any TLS.
async fn connect_tcp(
    account: &AccountRuntime,
    cfg: &UpstreamConfig,
) -> Result<UpstreamTcp, DialError> {
    let connected = match &account.config.proxy {
        None => runtime::timeout(cfg.dial_timeout, direct(account, cfg)).await,
        Some(p) => runtime::timeout(cfg.dial_timeout, through_proxy(account, p, cfg)).await,
    };
    let result = connected.unwrap_or(Err(DialError::ConnectTimeout));
    if result.is_err() {
        account.forget_address();
    }
    result
}

async fn direct(account: &AccountRuntime, cfg: &UpstreamConfig) -> Result<UpstreamTcp, DialError> {
    let addr = account.address().await.map_err(DialError::Resolve)?;
    tcp(addr, cfg)
        .await
        .map(|s| PrefixedStream::new(Vec::new(), s))
}

/// TCP to the proxy, then its handshake toward the account's endpoint.
async fn through_proxy(
    account: &AccountRuntime,
    proxy: &ProxyUrl,
    cfg: &UpstreamConfig,
) -> Result<UpstreamTcp, DialError> {
    let proxy_addr = account
        .proxy_address(proxy)
        .await
        .map_err(DialError::Resolve)?;
    let ep = &account.config.endpoint;
    let target = match proxy.kind {
        ProxyKind::Socks5 {
            proxy_resolves: false,
        } => Target::Addr(account.address().await.map_err(DialError::Resolve)?),
        _ => Target::Name(&ep.host, ep.port),
    };
    let mut stream = tcp(proxy_addr, cfg).await?;
    let tunneled = proxy::handshake(&mut stream, proxy, target)
        .await
        .map_err(DialError::Proxy)?;
    Ok(PrefixedStream::new(tunneled, stream))
}

async fn tcp(
    addr: std::net::SocketAddr,
    cfg: &UpstreamConfig,
) -> Result<runtime::TcpStream, DialError> {
    match runtime::connect(addr, cfg.dial_timeout).await {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(DialError::ConnectTimeout),
        Err(e) => Err(DialError::Connect(e)),
        Ok(s) => Ok(s),
    }
}

async fn wrap_tls(account: &AccountRuntime, tcp: UpstreamTcp) -> Result<UpstreamStream, DialError> {
    match &account.tls {
        Some((config, name)) => {
            let connector = futures_rustls::TlsConnector::from(config.clone());
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(DialError::Tls)?;
            Ok(UpstreamStream::Tls(Box::new(tls)))
        }
        None => Ok(UpstreamStream::Plain(tcp)),
    }
}

fn handshake_request(
    account: &AccountRuntime,
    forward: &[(HeaderName, HeaderValue)],
) -> Result<Request<()>, DialError> {
    let mut builder = Request::get(account.ws_url.as_str())
        .header("Host", account.config.endpoint.authority())
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", generate_key())
        .header("Authorization", account.authorization())
        .header("OpenAI-Beta", OPENAI_BETA_WS);
    for (name, value) in forward.iter().chain(account.extra_headers(forward)) {
        builder = builder.header(name, value);
    }
    builder
        .body(())
        .map_err(|e| DialError::Handshake(e.to_string()))
}

/// A failed WebSocket handshake, told by step and status.
pub(super) fn classify_handshake_error(e: WsError) -> DialError {
    match e {
        WsError::Http(response) => {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| crate::protocol::http1::parse_retry_after(v.as_bytes()))
                .map(|d| d.as_secs());
            DialError::Refused {
                status: response.status().as_u16(),
                retry_after,
            }
        }
        WsError::Io(e) => DialError::Handshake(e.to_string()),
        other => DialError::Handshake(other.to_string()),
    }
}
