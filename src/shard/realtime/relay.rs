//! The relay of one realtime session: client → upstream and upstream → client run concurrently
//! in the session's task (two halves of each WebSocket, polled together; no extra thread, no
//! extra task), until either side closes or fails, the session idles out or the shard drains.
//!
//! Per event the relay reads its `type` (and, for audio and text deltas, the payload's length)
//! with the allocation-free field walk and forwards the very message it read; only lifecycle
//! events are parsed (`session.*`, `response.created|done`, `conversation.item.create`), and
//! only those are rewritten, when the account maps the model. Ready events from upstream are
//! written in one flush. Every write has the client write deadline, both ways, so a peer that
//! stops reading ends the session instead of growing a buffer: tungstenite holds at most the
//! message being written on each side.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use async_tungstenite::WebSocketStream;
use futures_lite::{AsyncRead, AsyncWrite};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};

use crate::metrics::Hist;
use crate::protocol::realtime::{
    base64_decoded_len, item_text_bytes, peek_client, peek_server, ClientKind, ResponseFacts,
    ServerKind, SessionFacts,
};
use crate::runtime;

use super::super::client_close::{CloseReason, CLIENT_CLOSES};
use super::super::client_deadline::deadline;
use super::super::counters::{add, bump};
use super::super::normalizer::{map_back, Rewrite};
use super::super::Shard;
use super::ledger::Ledger;

/// Events from upstream written in one flush at most.
const MAX_BATCH: usize = 64;

/// How a realtime session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The client closed (close frame or end of stream).
    ClientClosed,
    /// The client stopped reading (write deadline) or its socket failed.
    ClientGone,
    /// The client broke the protocol (bad framing, text that is not UTF-8, a message over the
    /// size limit): closed with the code RFC 6455 names for it.
    ClientViolation(CloseReason),
    /// Upstream closed, with its close frame when it sent one.
    UpstreamClosed(Option<(u16, String)>),
    /// Upstream's socket failed, or it stopped reading.
    UpstreamFailed(String),
    /// Upstream sent a message over the size limit.
    UpstreamOversize,
    /// Neither side sent anything for the idle timeout.
    Idle,
    /// The shard is shutting down.
    Draining,
}

impl End {
    /// A short name for counters and logs.
    pub fn label(&self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::ClientGone => "client_gone",
            End::ClientViolation(r) => r.label(),
            End::UpstreamClosed(_) => "upstream_closed",
            End::UpstreamFailed(_) => "upstream_failed",
            End::UpstreamOversize => "upstream_oversize",
            End::Idle => "idle",
            End::Draining => "draining",
        }
    }
}

/// The model names of a session whose account maps the model: the rewrite back to the client's
/// name (upstream events) and the one up to upstream's (client `session.update`).
pub struct ModelNames {
    /// Upstream model → client model.
    pub down: Rewrite,
    /// Client model → upstream model.
    pub up: Rewrite,
}

impl ModelNames {
    /// The rewrites between `client` and `upstream` model names.
    pub fn new(client: &str, upstream: &str) -> ModelNames {
        let rw = |from: &str, to: &str| Rewrite::ModelMapped {
            client_model: to.to_string(),
            upstream_model: from.to_string(),
        };
        ModelNames {
            down: rw(upstream, client),
            up: rw(client, upstream),
        }
    }
}

/// What the relay does with each event: accounts for it in the session's ledger and says
/// whether it must be rewritten (model names). Kept apart from the sockets so the per-event
/// cost can be measured alone (`benches/shard.rs`).
pub struct Inspector {
    /// The session's accounts.
    pub ledger: RefCell<Ledger>,
    /// The model rewrites, when the account maps the model.
    pub models: Option<ModelNames>,
}

impl Inspector {
    /// Accounts for a client event; `Some` with the bytes to send instead when it had to be
    /// rewritten.
    pub fn from_client(&self, raw: &[u8]) -> Option<Vec<u8>> {
        let peek = peek_client(raw);
        let mut ledger = self.ledger.borrow_mut();
        match peek.kind {
            ClientKind::AudioAppend => ledger.input_audio(base64_decoded_len(peek.payload)),
            ClientKind::ItemCreate => ledger.input_text(item_text_bytes(raw)),
            ClientKind::SessionUpdate => {
                if let Some(facts) = SessionFacts::read(raw) {
                    ledger.on_session(facts, false);
                }
                return self.models.as_ref().and_then(|m| map_back(raw, &m.up));
            }
            ClientKind::Other => {}
        }
        None
    }

    /// Accounts for an upstream event (a `response.done` writes its usage record); `Some` with
    /// the bytes to send instead when it had to be rewritten.
    pub fn from_upstream(&self, raw: &[u8]) -> Option<Vec<u8>> {
        let peek = peek_server(raw);
        let mut ledger = self.ledger.borrow_mut();
        match peek.kind {
            ServerKind::AudioDelta => ledger.output_audio(base64_decoded_len(peek.payload)),
            ServerKind::TextDelta => ledger.output_text(peek.payload.len() as u64),
            ServerKind::SessionCreated | ServerKind::SessionUpdated => {
                if let Some(facts) = SessionFacts::read(raw) {
                    ledger.on_session(facts, true);
                }
                return self.map_down(raw);
            }
            ServerKind::ResponseCreated => {
                ledger.response_created(ResponseFacts::read(raw).unwrap_or_default());
                return self.map_down(raw);
            }
            ServerKind::ResponseDone => {
                ledger.response_done(ResponseFacts::read(raw).unwrap_or_default());
                return self.map_down(raw);
            }
            ServerKind::Error | ServerKind::Other => {}
        }
        None
    }

    fn map_down(&self, raw: &[u8]) -> Option<Vec<u8>> {
        self.models.as_ref().and_then(|m| map_back(raw, &m.down))
    }
}

/// One session's relay settings and shared state.
pub struct Relay<'a> {
    /// The shard (counters, histograms, drain flag).
    pub shard: &'a Shard,
    /// Per-event accounting and rewrites.
    pub inspector: &'a Inspector,
    /// Longest wait of one write, either way.
    pub write_limit: Duration,
    /// Longest silence of both sides.
    pub idle: Duration,
    /// When either side last sent something.
    last_activity: Cell<Instant>,
}

impl<'a> Relay<'a> {
    /// A relay for one session.
    pub fn new(
        shard: &'a Shard,
        inspector: &'a Inspector,
        write_limit: Duration,
        idle: Duration,
    ) -> Self {
        Relay {
            shard,
            inspector,
            write_limit,
            idle,
            last_activity: Cell::new(Instant::now()),
        }
    }

    /// Relays both ways until the session ends, then closes both sides (the client is told why
    /// with a Realtime `error` event and a close code when the end is not its own doing).
    pub async fn run<C, U>(&self, client: WebSocketStream<C>, upstream: WebSocketStream<U>) -> End
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut client_tx, mut client_rx) = StreamExt::split(client);
        let (mut up_tx, mut up_rx) = StreamExt::split(upstream);
        let end = {
            let up = self.client_to_upstream(&mut client_rx, &mut up_tx);
            let down = self.upstream_to_client(&mut up_rx, &mut client_tx);
            let watch = futures_lite::future::or(self.idle_watch(), async {
                self.shard.drain.started().await;
                End::Draining
            });
            futures_lite::future::or(futures_lite::future::or(up, down), watch).await
        };
        self.close(&end, &mut client_tx, &mut up_tx).await;
        end
    }

    async fn client_to_upstream<C, U>(
        &self,
        client: &mut SplitStream<WebSocketStream<C>>,
        upstream: &mut SplitSink<WebSocketStream<U>, Message>,
    ) -> End
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let counters = &self.shard.counters;
        loop {
            let msg = match client.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    return match CloseReason::of_error(&e) {
                        Some(reason) => End::ClientViolation(reason),
                        None => End::ClientGone,
                    }
                }
                None => return End::ClientGone,
            };
            let read_at = Instant::now();
            self.last_activity.set(read_at);
            let out = match msg {
                Message::Text(t) => match self.inspector.from_client(t.as_bytes()) {
                    Some(rewritten) => Message::Text(text(rewritten)),
                    None => Message::Text(t),
                },
                Message::Binary(b) => {
                    self.inspector.from_client(&b);
                    Message::Binary(b)
                }
                Message::Close(_) => return End::ClientClosed,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            add(&counters.bytes_in, message_len(&out));
            match deadline(self.write_limit, upstream.send(out)).await {
                Some(Ok(())) => {}
                Some(Err(e)) => return End::UpstreamFailed(format!("write failed: {e}")),
                None => return End::UpstreamFailed("upstream stopped reading".into()),
            }
            bump(&counters.realtime_events_up);
            self.shard
                .metrics
                .record(Hist::RealtimeAddedUp, read_at.elapsed());
        }
    }

    async fn upstream_to_client<C, U>(
        &self,
        upstream: &mut SplitStream<WebSocketStream<U>>,
        client: &mut SplitSink<WebSocketStream<C>, Message>,
    ) -> End
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let counters = &self.shard.counters;
        loop {
            let mut next = upstream.next().await;
            let read_at = Instant::now();
            self.last_activity.set(read_at);
            let mut batch = 0u64;
            loop {
                let out = match next {
                    Some(Ok(Message::Text(t))) => {
                        Some(match self.inspector.from_upstream(t.as_bytes()) {
                            Some(rewritten) => Message::Text(text(rewritten)),
                            None => Message::Text(t),
                        })
                    }
                    Some(Ok(Message::Binary(b))) => Some(Message::Binary(b)),
                    Some(Ok(Message::Close(frame))) => {
                        let frame = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                        return End::UpstreamClosed(frame);
                    }
                    // Pings are answered by the WebSocket itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
                    Some(Err(WsError::Capacity(_))) => return End::UpstreamOversize,
                    Some(Err(e)) => return End::UpstreamFailed(format!("read failed: {e}")),
                    None => return End::UpstreamClosed(None),
                };
                if let Some(out) = out {
                    add(&counters.bytes_out, message_len(&out));
                    match deadline(self.write_limit, client.feed(out)).await {
                        Some(Ok(())) => batch += 1,
                        Some(Err(_)) | None => return self.client_stalled(),
                    }
                }
                if batch as usize >= MAX_BATCH {
                    break;
                }
                match upstream.next().now_or_never() {
                    Some(item) => next = item,
                    None => break,
                }
            }
            if batch == 0 {
                continue;
            }
            match deadline(self.write_limit, client.flush()).await {
                Some(Ok(())) => {}
                Some(Err(_)) | None => return self.client_stalled(),
            }
            add(&counters.realtime_events_down, batch);
            self.shard
                .metrics
                .record_n(Hist::RealtimeAddedDown, read_at.elapsed(), batch);
        }
    }

    fn client_stalled(&self) -> End {
        bump(&self.shard.counters.client_write_timeouts);
        End::ClientGone
    }

    /// Resolves when neither side sent anything for the idle timeout.
    async fn idle_watch(&self) -> End {
        loop {
            let due = self.last_activity.get() + self.idle;
            let now = Instant::now();
            if now >= due {
                return End::Idle;
            }
            runtime::sleep(due - now).await;
        }
    }

    /// Closes both sides after `end`: upstream at once (with 1000, or 1001 on shutdown), the
    /// client with a close code that says why, after a Realtime `error` event when the end
    /// came from upstream or the gateway.
    async fn close<C, U>(
        &self,
        end: &End,
        client: &mut SplitSink<WebSocketStream<C>, Message>,
        upstream: &mut SplitSink<WebSocketStream<U>, Message>,
    ) where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let up_code = match end {
            End::Draining => CloseCode::Away,
            End::UpstreamOversize => CloseCode::Size,
            _ => CloseCode::Normal,
        };
        if !matches!(end, End::UpstreamClosed(_) | End::UpstreamFailed(_)) {
            let frame = close_frame(up_code, "client session ended");
            let _ = runtime::timeout(CLOSE_WAIT, upstream.send(Message::Close(Some(frame)))).await;
        }
        let counters = &self.shard.counters;
        match end {
            End::ClientClosed => {
                // The reply to the client's close frame, queued by the WebSocket.
                counters.bump_labeled(CLIENT_CLOSES, CloseReason::Echo.label());
                let _ = runtime::timeout(CLOSE_WAIT, client.flush()).await;
                return;
            }
            End::ClientViolation(reason) => {
                counters.bump_labeled(CLIENT_CLOSES, reason.label());
                if *reason == CloseReason::TooBig {
                    bump(&counters.oversize_messages);
                }
                let close = Message::Close(reason.frame());
                let _ = runtime::timeout(CLOSE_WAIT, client.send(close)).await;
                return;
            }
            _ => {}
        }
        let Some((code, error, reason)) = client_notice(end) else {
            return;
        };
        let notice = async {
            if let Some(error) = error {
                client.feed(Message::text(error)).await?;
            }
            client
                .send(Message::Close(Some(close_frame(code, &reason))))
                .await
        };
        let _ = runtime::timeout(CLOSE_WAIT, notice).await;
    }
}

/// Longest wait for a close frame (or the error before it) to be written.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What the client is told when the session ends: close code, an `error` event (when the end
/// was not the client's doing) and the close reason. `None` when the client is gone.
fn client_notice(end: &End) -> Option<(CloseCode, Option<String>, String)> {
    let (code, err_code, message) = match end {
        End::ClientClosed | End::ClientGone | End::ClientViolation(_) => return None,
        End::UpstreamClosed(frame) => {
            let (code, detail) = match frame {
                Some((code, reason)) => (
                    passable(*code),
                    format!("upstream closed the session with {code} {reason}"),
                ),
                None => (
                    CloseCode::Error,
                    "upstream connection closed without a close frame".to_string(),
                ),
            };
            (code, Some("upstream_closed"), detail)
        }
        End::UpstreamFailed(why) => (
            CloseCode::Error,
            Some("upstream_failed"),
            format!("upstream connection failed: {why}"),
        ),
        End::UpstreamOversize => (
            CloseCode::Error,
            Some("upstream_message_too_big"),
            "upstream sent a message over the gateway's size limit".to_string(),
        ),
        End::Idle => (
            CloseCode::Normal,
            Some("session_idle_timeout"),
            "realtime session idle timeout".to_string(),
        ),
        End::Draining => (
            CloseCode::Away,
            Some("shutting_down"),
            "the gateway is shutting down; reconnect to continue".to_string(),
        ),
    };
    let event = err_code.map(|c| error_event(c, &message));
    Some((code, event, truncate_reason(message)))
}

/// A Realtime-shaped `error` event (`{"type":"error","event_id":…,"error":{…}}`).
pub fn error_event(code: &str, message: &str) -> String {
    #[derive(serde::Serialize)]
    struct Inner<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        code: &'a str,
        message: &'a str,
        param: Option<&'a str>,
        event_id: Option<&'a str>,
    }
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        event_id: String,
        error: Inner<'a>,
    }
    let event = Event {
        kind: "error",
        event_id: format!("event_gw_{}", runtime::unix_micros()),
        error: Inner {
            kind: "server_error",
            code,
            message,
            param: None,
            event_id: None,
        },
    };
    sonic_rs::to_string(&event)
        .unwrap_or_else(|_| r#"{"type":"error","error":{"type":"server_error"}}"#.into())
}

/// Upstream's close code, when it may be sent on (1005, 1006 and 1015 are never sent; they
/// and any unknown code become 1011).
fn passable(code: u16) -> CloseCode {
    match code {
        1000..=1003 | 1007..=1014 | 3000..=4999 => CloseCode::from(code),
        _ => CloseCode::Error,
    }
}

/// A close reason fits in a control frame (123 bytes), cut at a character boundary.
fn truncate_reason(mut reason: String) -> String {
    if reason.len() > 123 {
        let mut cut = 123;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// A rewritten event as a text payload (it came in as text and was edited as JSON).
fn text(bytes: Vec<u8>) -> Utf8Bytes {
    match String::from_utf8(bytes) {
        Ok(s) => Utf8Bytes::from(s),
        Err(e) => Utf8Bytes::from(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn message_len(m: &Message) -> u64 {
    m.len() as u64
}
