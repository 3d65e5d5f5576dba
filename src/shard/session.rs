//! One client WebSocket session: reads `response.create` frames between turns and hands each to
//! the turn driver, whose events come back through [`WsSink`] as text frames.
//!
//! The session keeps its upstream connection across turns while it chains `store=false`
//! responses (they live only on the connection that produced them); the driver gives it back
//! between stored turns. While a turn runs the sink watches the client: a disconnect ends the
//! turn at once, a new `response.create` preempts it.
//!
//! The first frame decides where the session runs: when it chains to a response whose upstream
//! connection is on another shard, the client connection is handed to that shard with every
//! byte read from it so far, and the owner serves the session from its first frame on. While
//! the shard drains, a session between turns closes with 1001 and a new turn is refused.
//!
//! Over 600 lines on purpose: it is one state machine (first frame, handoff, turn, rest between
//! turns) whose steps share the session's fields; its sink lives in `sink.rs`, its turns in
//! `turn/`, and its handoff transport in `handoff.rs`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use async_tungstenite::WebSocketStream;
use futures_lite::AsyncReadExt;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue};

use crate::net::client_read::{self, FirstRead, RawFrame, RawRead};
use crate::net::{ClientStream, FrameEdge};
use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::protocol::ClientFrame;
use crate::usage::RequestType;

use super::armed_timer::{shard_deadline, ShardDeadline};
use super::auth::ClientIdentity;
use super::client_close::{close_after_error, close_client, CloseReason};
use super::client_deadline::WriteDeadline;
use super::counters::{add, bump};
use super::handoff::{HandedConn, Handoff, HandoffError};
use super::keepalive;
use super::sink::{TurnError, WsSink};
use super::sticky::Affinity;
use super::turn::{Driver, TurnEnd};
use super::Shard;
use crate::net::PrefixedStream;

/// The client side of a session: a WebSocket over the accepted socket, behind the bytes read
/// with the upgrade request (or handed over with the connection), read in frames so that it
/// can be rebuilt between turns ([`FrameEdge`]).
pub type ClientWs = WebSocketStream<FrameEdge<PrefixedStream<ClientStream>>>;

/// What travels with a client connection handed to the shard that owns its chain: who the
/// client is. The socket's bytes read so far (the first frame included) travel as the
/// connection's prefix, so the owner reads that frame again as if it had accepted the client.
pub struct HandedSession {
    identity: ClientIdentity,
    forward: Vec<(HeaderName, HeaderValue)>,
}

/// A shard's senders of client sessions to the other shards.
pub type SessionHandoff = Handoff<HandedSession>;

/// Labeled-counter family of handoffs: `sent`, `received`, `full`, `closed`, `no_such_shard`,
/// `detach_failed`, `tls_local` (the last five: served where accepted; a TLS session is never
/// handed over).
const HANDOFF: &str = "handoff";

/// One client session.
pub struct Session {
    shard: Rc<Shard>,
    client: ClientWs,
    driver: Driver,
    /// Handed over by (or kept after a failed handoff to) another shard: never handed again.
    handed_in: bool,
    /// Over TLS: never handed to another shard (the TLS state cannot travel with the socket).
    tls: bool,
    /// What the session waits for.
    wait: Wait,
    /// When that wait began: the upgrade (or the hand-in), then the end of each turn. The wait's
    /// timeouts count from here, so frames that are no message (a ping) do not extend them.
    waiting_since: Instant,
    /// The key table generation its key was last checked against (see [`Session::key_holds`]).
    keys_seen: u64,
    /// The one timer every wait of the session runs under, set again for each wait (a timer
    /// per frame was an allocation and a timer-map insert and removal per client message).
    deadline: ShardDeadline,
    /// The size its next raw frame is first read into (its last raw frame's).
    first_read: FirstRead,
}

/// What a session waits for, and for how long.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Its first frame, which may move it to another shard (`first_message_timeout`).
    First,
    /// The next frame, right after a turn: within `rest_after` (`[server] rest_after_ms`), else the client WebSocket is
    /// rebuilt (when it holds no unread bytes) and the session waits as [`Wait::Idle`].
    AfterTurn,
    /// The next frame, for the rest of the idle timeout.
    Idle,
}

/// One read of the client's next message: raw, or by tungstenite when the raw reader gave it
/// back.
enum Read {
    /// One masked text frame, read raw.
    Frame(RawFrame),
    /// The client went away during a raw read.
    Gone,
    /// What tungstenite read.
    Codec(Option<Result<Message, WsError>>),
}

/// What reading the client's next frame gave.
enum Next {
    /// A text frame (a `response.create`, or anything the turn refuses with an error event),
    /// its UTF-8 checked by whichever reader took it (the raw read or tungstenite).
    Frame(Utf8Bytes),
    /// Nothing within the wait.
    TimedOut,
    /// The session is over (closed, failed, or the shard drains: closed with 1001).
    Over,
}

/// What ended a rest.
enum Woke {
    /// The client sent bytes (put back in front of the stream).
    Bytes,
    /// The client closed or the socket failed.
    Gone,
    /// The idle timeout passed.
    TimedOut,
    /// The shard drains.
    Draining,
}

/// Drops `client`'s WebSocket and waits until `deadline` (already set) for the client's next
/// bytes on the bare socket, then builds a fresh WebSocket that reads them again. A session waiting so holds no
/// WebSocket read buffer: tungstenite fills its 16 KiB chunk as it allocates it, so a buffer
/// built before the bytes arrive is resident all along (~16 KiB of RSS per idle session).
async fn bare_wait(
    shard: &Shard,
    client: ClientWs,
    deadline: &mut ShardDeadline,
) -> (ClientWs, Woke) {
    let mut stream = client.into_inner();
    let woke = if stream.holds_unread() {
        Woke::Bytes
    } else {
        wait_for_bytes(shard, stream.get_mut(), deadline).await
    };
    (ws_over(shard, stream).await, woke)
}

/// Waits until `deadline` for the client's next bytes on the bare stream, and puts what it
/// read back in front of the stream.
async fn wait_for_bytes(
    shard: &Shard,
    stream: &mut PrefixedStream<ClientStream>,
    deadline: &mut ShardDeadline,
) -> Woke {
    let mut first = [0u8; 16];
    let read = futures_lite::future::or(
        async { Some(deadline.within(stream.read(&mut first)).await) },
        async {
            shard.drain.started().await;
            None
        },
    )
    .await;
    match read {
        None => Woke::Draining,
        Some(None) => Woke::TimedOut,
        Some(Some(Ok(0) | Err(_))) => Woke::Gone,
        Some(Some(Ok(n))) => {
            stream.unread(&first[..n]);
            Woke::Bytes
        }
    }
}

/// `make()`'s future, boxed and pinned: the box is allocated first and the future built in it.
/// `Box::pin(make())` builds a future on the stack and copies all of it into the box: for a
/// future holding a turn's (5 KiB in a release build), 82 cache lines written where its
/// unresumed state is its arguments, a few dozen bytes.
#[inline(always)]
fn boxed_in_place<F>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    let mut slot = Box::<F>::new_uninit();
    slot.write(make());
    // SAFETY: the slot was written just above (what `Box::write` does, stable only since 1.87,
    // past this crate's MSRV).
    Box::into_pin(unsafe { slot.assume_init() })
}

/// How serving ended.
enum Served {
    /// The session is over.
    Closed,
    /// The first frame chains to a response whose connection is on shard `.0`.
    HandOff(usize),
    /// No frame came within `rest_after` (`[server] rest_after_ms`) of a turn and the client WebSocket holds no unread
    /// bytes: it may be rebuilt.
    Rested,
}

/// Read chunk of a client WebSocket. tungstenite's default (128 KiB) made an idle session cost
/// ~180 KiB; with 16 KiB an idle session holds ~22 KiB of heap (`perf/README.md`), and larger
/// messages are still read whole, in more reads.
const READ_BUFFER_BYTES: usize = 16 * 1024;

fn stream_is_tls(stream: &PrefixedStream<ClientStream>) -> bool {
    stream.inner().is_tls()
}

/// The client WebSocket over `stream`, with the server's message limits.
pub async fn client_ws(shard: &Shard, stream: PrefixedStream<ClientStream>) -> ClientWs {
    ws_over(shard, FrameEdge::new(stream)).await
}

/// The client WebSocket of a session that just upgraded, built without a read buffer: the
/// session's first step is a bare wait for its first frame ([`Session::run`]), which takes the
/// stream out of it and builds the real WebSocket when bytes came. Built with one, every
/// connect allocated a 16 KiB read buffer only to drop it unused. Never read from it.
pub async fn upgraded_ws(stream: PrefixedStream<ClientStream>) -> ClientWs {
    let config = WebSocketConfig::default().read_buffer_size(0);
    WebSocketStream::from_raw_socket(FrameEdge::new(stream), Role::Server, Some(config)).await
}

/// The client WebSocket over a stream already in use (between two messages), with fresh
/// buffers.
async fn ws_over(shard: &Shard, stream: FrameEdge<PrefixedStream<ClientStream>>) -> ClientWs {
    let limit = shard.config.server.max_message_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await
}

/// Serves a session another shard handed to this one: the owner of its chain's connection.
pub async fn serve_handed(shard: Rc<Shard>, conn: HandedConn<HandedSession>) {
    let (stream, meta) = conn.resume();
    let client = client_ws(&shard, stream).await;
    shard.counters.bump_labeled(HANDOFF, "received");
    let key_id = meta.identity.key_id.clone();
    shard.open_handed_session(&key_id);
    let keys_seen = meta.identity.key_table;
    let session = Session {
        driver: Driver::new(shard.clone(), meta.identity, meta.forward, RequestType::Ws),
        shard: shard.clone(),
        client,
        handed_in: true,
        tls: false,
        wait: Wait::First,
        waiting_since: Instant::now(),
        keys_seen,
        deadline: shard_deadline(),
        first_read: FirstRead::default(),
    };
    session.run().await;
    shard.close_session(&key_id);
}

impl Session {
    /// A session over an upgraded client socket (`tls`: accepted on a TLS listener), its
    /// turns run by `driver` (which may hold a connection leased ahead of the upgrade);
    /// `client` comes from [`upgraded_ws`].
    pub fn new(shard: Rc<Shard>, client: ClientWs, driver: Driver, tls: bool) -> Self {
        Session {
            tls,
            keys_seen: driver.identity().key_table,
            driver,
            shard,
            client,
            handed_in: false,
            wait: Wait::First,
            waiting_since: Instant::now(),
            deadline: shard_deadline(),
            first_read: FirstRead::default(),
        }
    }

    /// Runs the session to its end (here, or on the shard its first frame's chain lives on).
    /// The upstream connection goes back to the pool only if the last turn ended cleanly.
    ///
    /// Until its first frame, and once idle `rest_after` after a turn, a session waits on the
    /// bare socket ([`bare_wait`]) and builds a fresh client WebSocket when its client sends
    /// again: the read buffer grew to the largest frame of the turn (a 30 KiB Codex frame:
    /// 46 KiB) and the write buffer to the largest batch of events, and an idle session would
    /// hold both, or at least a 16 KiB read buffer.
    pub async fn run(mut self) {
        if !self.handed_in {
            // Until its first frame, too, a session waits on the bare socket.
            self.wait_until(self.shard.config.server.first_message_timeout);
            let (client, woke) =
                Box::pin(bare_wait(&self.shard, self.client, &mut self.deadline)).await;
            self.client = client;
            if !self.woken(woke, CloseReason::FirstMessageTimeout).await {
                return;
            }
        }
        loop {
            // Boxed once per stretch of turns, with the turns' future inline in it: a session
            // resting or waiting for its first frame holds none of it, and a busy one allocates
            // it once per `rest_after` of silence instead of once per turn.
            match boxed_in_place(|| self.serve()).await {
                Served::Closed => {
                    self.driver.release();
                    return;
                }
                Served::Rested => {
                    if self.client.flush().await.is_err() {
                        self.driver.release();
                        return;
                    }
                    Box::pin(self.driver.rest()).await;
                    bump(&self.shard.counters.sessions_rested);
                    self.wait_until(self.shard.config.server.idle_timeout);
                    // The connection held between turns is kept alive while the session rests.
                    // One expression: a future bound to a local first would keep a slot in
                    // the session task's state across the await.
                    let (client, woke) = Box::pin(futures_lite::future::or(
                        bare_wait(&self.shard, self.client, &mut self.deadline),
                        keepalive::or_forever(self.driver.keep_alive()),
                    ))
                    .await;
                    self.client = client;
                    if !self.woken(woke, CloseReason::IdleTimeout).await {
                        self.driver.release();
                        return;
                    }
                }
                // Boxed: rare, and inline its future would be part of every session task.
                Served::HandOff(to) => match Box::pin(self.hand_off(to)).await {
                    Ok(()) => return,
                    Err(kept) => self = *kept,
                },
            }
        }
    }

    /// `true` when a bare wait ended with the client's bytes; otherwise the session is over,
    /// closed with `timed_out` if the wait ran out (1001 if the shard drains).
    async fn woken(&mut self, woke: Woke, timed_out: CloseReason) -> bool {
        let reason = match woke {
            Woke::Bytes => return true,
            Woke::Gone => return false,
            Woke::TimedOut => timed_out,
            Woke::Draining => CloseReason::GoingAway,
        };
        self.close(reason).await;
        false
    }

    /// Gives the client connection to shard `to`, with every byte read from it so far. When
    /// that cannot happen (the owner's queue is full, the socket cannot be detached) the
    /// session comes back, to be served here on the same account (it reads its first frame
    /// again from the replayed bytes).
    async fn hand_off(mut self, to: usize) -> Result<(), Box<Session>> {
        // Only a connection leased ahead of the upgrade can be held here, before any turn:
        // clean and unused, it goes back to this shard's pool.
        self.driver.release();
        let shard = self.shard.clone();
        let Some(handoff) = shard.handoff.get() else {
            shard.counters.bump_labeled(HANDOFF, "no_such_shard");
            self.handed_in = true;
            return Err(Box::new(self));
        };
        let Session {
            client,
            driver,
            deadline,
            ..
        } = self;
        let meta = HandedSession {
            identity: driver.identity().clone(),
            forward: driver.forward().to_vec(),
        };
        let (prefix, stream) = client.into_inner().into_inner().into_parts();
        let back = match HandedConn::new(stream, prefix, meta) {
            Ok(conn) => match handoff.send(to, conn) {
                Ok(()) => {
                    shard.counters.bump_labeled(HANDOFF, "sent");
                    return Ok(());
                }
                Err((e, conn)) => {
                    let label = match e {
                        HandoffError::Full => "full",
                        HandoffError::Closed => "closed",
                        HandoffError::NoSuchShard => "no_such_shard",
                    };
                    shard.counters.bump_labeled(HANDOFF, label);
                    conn.resume()
                }
            },
            Err(failed) => {
                shard.counters.bump_labeled(HANDOFF, "detach_failed");
                let failed = *failed;
                (
                    PrefixedStream::new(failed.prefix, failed.stream),
                    failed.meta,
                )
            }
        };
        let (stream, _meta) = back;
        let tls = stream_is_tls(&stream);
        let client = client_ws(&shard, stream).await;
        Err(Box::new(Session {
            keys_seen: driver.identity().key_table,
            shard,
            client,
            driver,
            handed_in: true,
            tls,
            wait: Wait::First,
            waiting_since: Instant::now(),
            deadline,
            first_read: FirstRead::default(),
        }))
    }

    /// The other shard that owns the connection the first frame chains to, when the client
    /// should move there. Otherwise the driver keeps the routing it decided (same account).
    async fn owner_elsewhere(&mut self, frame: &str) -> Option<usize> {
        if self.handed_in || self.shard.handoff.get().is_none() {
            return None;
        }
        let parsed = ClientFrame::parse_text(frame).ok()?;
        let previous = parsed.previous_response_id.as_deref()?;
        match self.driver.route(previous).await {
            Affinity::OtherShard { .. } if self.tls => {
                self.shard.counters.bump_labeled(HANDOFF, "tls_local");
                None
            }
            Affinity::OtherShard { shard, .. } => Some(shard),
            _ => None,
        }
    }

    async fn serve(&mut self) -> Served {
        let cfg = &self.shard.config.server;
        let (first_wait, idle_wait) = (cfg.first_message_timeout, cfg.idle_timeout);
        let rest = cfg.rest_after.min(idle_wait);
        loop {
            let first = matches!(self.wait, Wait::First);
            let frame = match self.wait {
                Wait::First => match self.read_frame(first_wait).await {
                    Next::Frame(f) => f,
                    Next::TimedOut => {
                        self.close(CloseReason::FirstMessageTimeout).await;
                        return Served::Closed;
                    }
                    Next::Over => return Served::Closed,
                },
                Wait::AfterTurn => match self.read_frame(rest).await {
                    Next::Frame(f) => f,
                    Next::TimedOut => {
                        self.wait = Wait::Idle;
                        // A raw read cut short puts its bytes back: those are read on, not
                        // rested on.
                        let edge = self.client.get_ref();
                        if edge.at_message_edge() && !edge.holds_unread() {
                            return Served::Rested;
                        }
                        continue;
                    }
                    Next::Over => return Served::Closed,
                },
                Wait::Idle => match self.read_frame(idle_wait).await {
                    Next::Frame(f) => f,
                    Next::TimedOut => {
                        self.close(CloseReason::IdleTimeout).await;
                        return Served::Closed;
                    }
                    Next::Over => return Served::Closed,
                },
            };
            if self.shard.is_draining() {
                self.refuse_draining().await;
                return Served::Closed;
            }
            if first {
                // Boxed: a state-store lookup is a large future, and only a first frame needs it.
                if let Some(to) = Box::pin(self.owner_elsewhere(frame.as_str())).await {
                    return Served::HandOff(to);
                }
                // The session stays here: the socket's bytes need not be kept any more.
                self.client.get_mut().get_mut().stop_recording();
            }
            self.wait = Wait::AfterTurn;
            let mut next = Some(frame);
            while let Some(frame) = next.take() {
                if self.shard.is_draining() {
                    // A turn that preempted the last one while the shard drains.
                    self.refuse_draining().await;
                    return Served::Closed;
                }
                if !self.key_holds() {
                    self.refuse_revoked().await;
                    return Served::Closed;
                }
                add(&self.shard.counters.bytes_in, frame.len() as u64);
                let ws = WsSink::new(&mut self.client, &self.shard.counters);
                let limit = self.shard.config.server.client_write_timeout;
                let mut sink = WriteDeadline::new(ws, limit, &self.shard.counters);
                // Inline: `serve` is boxed by `run` for a stretch of turns, so the turn's future
                // (5 KiB) lives in that box, not in the session task, and is not allocated and
                // copied per turn (`perf/README.md`, session 11).
                let timer = &mut self.deadline;
                match self
                    .driver
                    .run(&mut sink, frame, Instant::now(), timer)
                    .await
                {
                    TurnEnd::Done => {}
                    TurnEnd::Preempted(f) => next = Some(f),
                    TurnEnd::ClientGone => return Served::Closed,
                }
            }
            self.waiting_since = Instant::now();
            if self.shard.is_draining() {
                self.close(CloseReason::GoingAway).await;
                return Served::Closed;
            }
        }
    }

    /// Sets the session's deadline to `timeout` after [`Session::waiting_since`] (no clock read).
    fn wait_until(&mut self, timeout: Duration) {
        self.deadline.set(self.waiting_since + timeout);
    }

    /// Ends the session with the close `reason` calls for.
    async fn close(&mut self, reason: CloseReason) {
        close_client(&mut self.client, &self.shard.counters, reason).await;
    }

    /// The client's next text frame within `timeout` of [`Session::waiting_since`]. A close is echoed, a binary message refused
    /// (1003) and a protocol violation closed with its code (1002, 1007, 1009).
    ///
    /// At a message edge the frame is read raw ([`client_read`]): when it is one masked text
    /// frame, the driver gets its bytes as they came (it may go upstream without re-masking).
    /// Anything else goes to tungstenite, which reads it from its first byte. The message has
    /// until then to arrive, control frames before it (a ping, a pong) included: a client that only
    /// pings is timed out like one that sends nothing.
    async fn read_frame(&mut self, timeout: Duration) -> Next {
        let shard = self.shard.clone();
        let limit = u64::try_from(shard.config.server.max_message_bytes).unwrap_or(u64::MAX);
        self.wait_until(timeout);
        loop {
            let (client, deadline, first) =
                (&mut self.client, &mut self.deadline, &mut self.first_read);
            let read = futures_lite::future::or(
                async {
                    Some(
                        deadline
                            .within(async {
                                match client_read::read_text_frame(client.get_mut(), limit, first)
                                    .await
                                {
                                    RawRead::Frame(f) => Read::Frame(f),
                                    RawRead::Gone => Read::Gone,
                                    RawRead::Codec => Read::Codec(client.next().await),
                                }
                            })
                            .await,
                    )
                },
                async {
                    shard.drain.started().await;
                    None
                },
            )
            .await;
            let read = match read {
                None => {
                    self.close(CloseReason::GoingAway).await;
                    return Next::Over;
                }
                Some(None) => return Next::TimedOut,
                Some(Some(read)) => read,
            };
            let msg = match read {
                Read::Frame(f) => {
                    bump(&self.shard.counters.client_frames_raw);
                    self.driver.set_client_wire(Some(f.wire));
                    return Next::Frame(f.text);
                }
                Read::Gone | Read::Codec(None) => return Next::Over,
                Read::Codec(Some(Err(e))) => {
                    close_after_error(&mut self.client, &self.shard.counters, &e).await;
                    return Next::Over;
                }
                Read::Codec(Some(Ok(msg))) => msg,
            };
            match msg {
                Message::Text(t) => {
                    self.driver.set_client_wire(None);
                    return Next::Frame(t);
                }
                Message::Binary(_) => {
                    self.close(CloseReason::Unsupported).await;
                    return Next::Over;
                }
                Message::Close(_) => {
                    self.close(CloseReason::Echo).await;
                    return Next::Over;
                }
                Message::Ping(_) => {
                    // tungstenite queued the pong and sends it on its next read; the next read
                    // may be raw, so it goes now if it can (else with the next write).
                    let _ = futures_lite::future::poll_once(self.client.flush()).await;
                }
                Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// `true` unless a reload since the last check removed, rotated or regrouped the key this
    /// session authenticated with. Costs one relaxed load while no reload happened.
    fn key_holds(&mut self) -> bool {
        let generation = self.shard.auth.generation();
        if generation == self.keys_seen {
            return true;
        }
        self.keys_seen = generation;
        self.shard.auth.still_valid(self.driver.identity())
    }

    /// A turn asked for under a key a reload took away: an error event, then a 1008 close.
    async fn refuse_revoked(&mut self) {
        bump(&self.shard.counters.sessions_revoked);
        let err: TurnError = GatewayError::new(
            401,
            ErrorType::Authentication,
            "invalid_api_key",
            "this session's API key is no longer valid; reconnect with a valid key",
        )
        .into();
        let _ = self.client.send(Message::text(err.event)).await;
        self.close(CloseReason::Revoked).await;
    }

    /// A turn asked for while the shard drains: an error event, then a 1001 close.
    async fn refuse_draining(&mut self) {
        let err: TurnError = GatewayError::new(
            503,
            ErrorType::Server,
            "shutting_down",
            "the gateway is shutting down; reconnect and send the request again",
        )
        .into();
        let _ = self.client.send(Message::text(err.event)).await;
        self.close(CloseReason::GoingAway).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_tungstenite::tungstenite::protocol::WebSocket;
    use std::io::Cursor;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// An in-memory socket: reads what a client wrote, swallows what the server writes.
    struct Memory(Cursor<Vec<u8>>);

    impl futures_lite::AsyncRead for Memory {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(std::io::Read::read(&mut self.0, buf))
        }
    }

    impl futures_lite::AsyncWrite for Memory {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Two masked client frames, as a client puts them on the wire.
    fn client_bytes() -> Vec<u8> {
        let mut client = WebSocket::from_raw_socket(Cursor::new(Vec::new()), Role::Client, None);
        client.send(Message::text("first")).unwrap();
        client.send(Message::text("second")).unwrap();
        client.into_inner().into_inner()
    }

    #[test]
    fn a_handed_on_socket_replays_the_first_frame_and_what_was_buffered_after_it() {
        futures_lite::future::block_on(async {
            let bytes = client_bytes();
            let (upgrade_rest, socket) = bytes.split_at(3);
            let stream = PrefixedStream::recording(
                upgrade_rest.to_vec(),
                Memory(Cursor::new(socket.to_vec())),
            );
            let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
            let first = ws.next().await.unwrap().unwrap();
            assert_eq!(first, Message::text("first"));
            // The reader has the second frame in its buffer by now; the replay still has it.
            let (replay, socket) = ws.into_inner().into_parts();
            assert_eq!(replay, bytes);
            let stream = PrefixedStream::new(replay, socket);
            let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("first"));
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("second"));
        });
    }
}
