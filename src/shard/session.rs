//! The relay loop of one client WebSocket session.
//!
//! A session reads `response.create` frames, leases an upstream connection (kept across turns
//! while the session chains `store=false` responses, which live only on the connection that
//! produced them; given back between turns otherwise), forwards each
//! frame, and relays every upstream event back in order until the turn's terminal event. While a
//! turn runs it also watches the client: a disconnect ends the turn at once, a new
//! `response.create` preempts it.
//!
//! Per event the loop classifies the frame by its `type` only and hands the very same payload
//! buffer to the client socket; ready frames are batched into one write.

use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use async_tungstenite::WebSocketStream;
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http::{HeaderName, HeaderValue};

use crate::control::ShardMsg;
use crate::metrics::Hist;
use crate::protocol::client_frame::ClientEventKind;
use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::protocol::{ClientFrame, EventKind, TerminalKind, UpstreamEvent, Usage};
use crate::runtime::{self, TcpStream};
use crate::usage::{RequestType, UsageRecord};

use super::auth::ClientIdentity;
use super::counters::bump;
use super::normalizer::{self, Rewrite};
use super::pool::{AcquireError, Lease};
use super::upstream::DialError;
use super::{scheduler, Shard};

/// The client side of a session.
pub type ClientWs = WebSocketStream<TcpStream>;

/// Why a session ends.
#[derive(Debug)]
enum End {
    /// The client closed or vanished.
    ClientGone,
}

/// How one relayed turn ended.
enum TurnOutcome {
    /// A terminal event was relayed: the connection is clean.
    Terminal {
        kind: TerminalKind,
        response_id: Option<String>,
        usage: Option<Usage>,
        /// When the first event reached the client.
        first_event_at: Option<Instant>,
    },
    /// Upstream sent an `error` event (relayed): the connection is not trusted any more.
    UpstreamErrorEvent,
    /// Upstream failed before or during the turn; `relayed` says whether the client saw events.
    UpstreamFailed { relayed: bool, error: GatewayError },
    /// The client sent a new `response.create`.
    Preempted(Bytes),
    /// The client left.
    ClientGone,
}

/// One client session.
pub struct Session {
    shard: Rc<Shard>,
    client: ClientWs,
    identity: ClientIdentity,
    forward: Vec<(HeaderName, HeaderValue)>,
    lease: Option<Lease>,
    last_response_id: Option<String>,
}

impl Session {
    /// A session over an upgraded client socket.
    pub fn new(
        shard: Rc<Shard>,
        client: ClientWs,
        identity: ClientIdentity,
        forward: Vec<(HeaderName, HeaderValue)>,
    ) -> Self {
        Session {
            shard,
            client,
            identity,
            forward,
            lease: None,
            last_response_id: None,
        }
    }

    /// Runs the session to its end. The upstream connection goes back to the pool only if the
    /// last turn ended cleanly.
    pub async fn run(mut self) {
        let _ = self.serve().await;
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }

    async fn serve(&mut self) -> Result<(), End> {
        let cfg = &self.shard.config.server;
        let (first_wait, idle_wait) = (cfg.first_message_timeout, cfg.idle_timeout);
        let mut first = true;
        loop {
            let wait = if first { first_wait } else { idle_wait };
            let msg = match runtime::timeout(wait, self.client.next()).await {
                None if first => {
                    self.close(CloseCode::Policy, "missing first response.create message")
                        .await;
                    return Err(End::ClientGone);
                }
                None => {
                    self.close(CloseCode::Normal, "websocket idle timeout")
                        .await;
                    return Err(End::ClientGone);
                }
                Some(None) => return Err(End::ClientGone),
                Some(Some(Err(e))) => {
                    self.on_client_error(e).await;
                    return Err(End::ClientGone);
                }
                Some(Some(Ok(msg))) => msg,
            };
            let frame = match msg {
                Message::Text(t) => Bytes::from(t),
                Message::Binary(b) => b,
                Message::Close(_) => return Err(End::ClientGone),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            first = false;
            let mut next = Some(frame);
            while let Some(frame) = next.take() {
                next = self.turn(frame).await?;
            }
        }
    }

    /// Handles one client frame between turns; returns a frame that preempted the turn, if any.
    async fn turn(&mut self, frame: Bytes) -> Result<Option<Bytes>, End> {
        let _in_flight = self.shard.turn_guard();
        let received = Instant::now();
        // Validated once here, before any lease: a bad frame never costs the session its
        // connection, and an unrewritten frame goes upstream as this very buffer.
        let parsed = match Utf8Bytes::try_from(frame.clone())
            .map_err(|_| "frame is not valid UTF-8".to_string())
            .and_then(|text| {
                ClientFrame::parse(&frame)
                    .map(|p| (text, p))
                    .map_err(|e| e.to_string())
            }) {
            Ok(p) => p,
            Err(e) => {
                bump(&self.shard.counters.client_frame_errors);
                let err = GatewayError::new(400, ErrorType::InvalidRequest, "invalid_json", e);
                self.send_event(err.to_event()).await?;
                return Ok(None);
            }
        };
        let (text, parsed) = parsed;
        if parsed.kind() != ClientEventKind::ResponseCreate {
            bump(&self.shard.counters.client_frame_errors);
            let t = parsed.event_type.as_deref().unwrap_or_default();
            let err = GatewayError::new(
                400,
                ErrorType::InvalidRequest,
                "unsupported_event_type",
                format!("unsupported event type `{t}`: send `response.create`"),
            );
            self.send_event(err.to_event()).await?;
            return Ok(None);
        }
        bump(&self.shard.counters.turns);
        let turn_started = received;
        let depends_on_connection =
            parsed.is_store_disabled() && parsed.previous_response_id.is_some();

        // A turn is tried at most twice: the second time only on a fresh connection, only when a
        // reused one failed before the client saw anything.
        let mut fresh = false;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let lease = match self.ensure_lease(depends_on_connection, fresh).await {
                Ok(l) => l,
                Err(err) => {
                    bump(&self.shard.counters.turns_failed);
                    self.send_event(err.to_event()).await?;
                    return Ok(None);
                }
            };
            let model_map = &lease.pool().account.config.model_map;
            let (payload, rewrite) = normalizer::normalize(&frame, &parsed, model_map);
            let reused = lease.reused || lease.conn().turns > 0;
            let payload = match rewrite {
                Rewrite::None => text.clone(),
                Rewrite::ModelMapped { .. } => match Utf8Bytes::try_from(payload) {
                    Ok(t) => t,
                    Err(_) => {
                        let err = GatewayError::new(
                            500,
                            ErrorType::Server,
                            "rewrite_failed",
                            "the rewritten frame is not valid UTF-8",
                        );
                        self.send_event(err.to_event()).await?;
                        return Ok(None);
                    }
                },
            };
            let outcome = self.relay(payload, &rewrite).await;
            match outcome {
                TurnOutcome::Terminal {
                    kind,
                    response_id,
                    usage,
                    first_event_at,
                } => {
                    if let Some(lease) = self.lease.as_mut() {
                        lease.conn().turns += 1;
                    }
                    if kind == TerminalKind::Completed {
                        bump(&self.shard.counters.turns_completed);
                    } else {
                        bump(&self.shard.counters.turns_other_terminal);
                    }
                    tracing::info!(
                        key_id = %self.identity.key_id,
                        account = %self.lease.as_ref().map(|l| l.pool().account.config.id.as_str()).unwrap_or(""),
                        response_id = response_id.as_deref().unwrap_or(""),
                        terminal = kind.as_str(),
                        input_tokens = usage.map(|u| u.input_tokens).unwrap_or(0),
                        output_tokens = usage.map(|u| u.output_tokens).unwrap_or(0),
                        duration_us = turn_started.elapsed().as_micros() as u64,
                        "turn"
                    );
                    let metrics = &self.shard.metrics;
                    let duration = turn_started.elapsed();
                    metrics.record(Hist::TurnDuration, duration);
                    let ttft = first_event_at.map(|t| t.duration_since(turn_started));
                    if let Some(ttft) = ttft {
                        metrics.record(Hist::ClientTtft, ttft);
                    }
                    self.record_usage(UsageFacts {
                        kind,
                        response_id: response_id.as_deref(),
                        usage,
                        model: parsed.model.as_deref().unwrap_or_default(),
                        ttft,
                        duration,
                        attempts,
                    });
                    if response_id.is_some() {
                        self.last_response_id = response_id;
                    }
                    // Only a store=false response lives on its connection alone; a session whose
                    // last turn was stored gives the clean connection back between turns, so idle
                    // sessions do not hold the account's budget.
                    if !parsed.is_store_disabled() {
                        if let Some(lease) = self.lease.take() {
                            lease.release();
                        }
                    }
                    return Ok(None);
                }
                TurnOutcome::UpstreamErrorEvent => {
                    bump(&self.shard.counters.turns_upstream_error);
                    self.drop_lease();
                    return Ok(None);
                }
                TurnOutcome::UpstreamFailed { relayed, error } => {
                    self.drop_lease();
                    if !relayed && reused && !fresh {
                        bump(&self.shard.counters.stale_retries);
                        fresh = true;
                        continue;
                    }
                    bump(&self.shard.counters.turns_failed);
                    self.send_event(error.to_event()).await?;
                    return Ok(None);
                }
                TurnOutcome::Preempted(next) => {
                    bump(&self.shard.counters.turns_preempted);
                    self.drop_lease();
                    let err = GatewayError::new(
                        409,
                        ErrorType::InvalidRequest,
                        "response_preempted",
                        "a new response.create arrived before this response finished; it was abandoned",
                    );
                    self.send_event(err.to_event()).await?;
                    return Ok(Some(next));
                }
                TurnOutcome::ClientGone => {
                    bump(&self.shard.counters.turns_client_gone);
                    self.drop_lease();
                    return Err(End::ClientGone);
                }
            }
        }
    }

    /// Makes sure the session holds a usable lease and returns it.
    async fn ensure_lease(
        &mut self,
        depends_on_connection: bool,
        fresh: bool,
    ) -> Result<&mut Lease, GatewayError> {
        let max_age = self.shard.config.upstream.max_conn_age;
        if let Some(lease) = self.lease.as_mut() {
            // Retire an old connection before upstream's 60-minute limit, unless this turn's
            // state lives on it (then upstream's limit error tells the client to start over).
            if lease.conn().is_expired(max_age) && !depends_on_connection {
                bump(&lease.pool().counters.retired);
                self.lease = None;
            }
        }
        if self.lease.is_none() {
            let pool =
                scheduler::pick(&self.shard, &self.identity.group, &[]).ok_or_else(|| {
                    GatewayError::new(
                        503,
                        ErrorType::Server,
                        "no_available_account",
                        "no upstream account is available for this key's group",
                    )
                })?;
            let asked = Instant::now();
            let lease = if fresh {
                pool.acquire_fresh(&self.forward).await
            } else {
                pool.acquire(&self.forward).await
            };
            self.shard
                .metrics
                .record(Hist::AcquireWait, asked.elapsed());
            let lease = lease.map_err(|e| acquire_error(&pool.account.config.id, e))?;
            self.lease = Some(lease);
        }
        Ok(self.lease.as_mut().expect("lease was just ensured"))
    }

    fn drop_lease(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.discard();
        }
    }

    /// Sends one frame upstream and relays events until the turn ends.
    async fn relay(&mut self, text: Utf8Bytes, rewrite: &Rewrite) -> TurnOutcome {
        let event_timeout = self.shard.config.upstream.event_timeout;
        let Some(lease) = self.lease.as_mut() else {
            return TurnOutcome::UpstreamFailed {
                relayed: false,
                error: upstream_failed("no upstream connection"),
            };
        };
        let upstream = &mut lease.conn().ws;
        if let Err(e) = upstream.send(Message::Text(text)).await {
            return TurnOutcome::UpstreamFailed {
                relayed: false,
                error: upstream_io_error(&e),
            };
        }
        let sent_at = Instant::now();
        let client = &mut self.client;
        let counters = &self.shard.counters;
        let metrics = &self.shard.metrics;
        let mut relayed = false;
        let mut first_event_at: Option<Instant> = None;
        let mut last_activity = Instant::now();
        let mut timer = Box::pin(runtime::sleep(event_timeout));
        loop {
            enum Next {
                Up(Option<Result<Message, WsError>>),
                Client(Option<Result<Message, WsError>>),
                Tick,
            }
            let next = futures_lite::future::or(
                async { Next::Up(upstream.next().await) },
                futures_lite::future::or(async { Next::Client(client.next().await) }, async {
                    timer.as_mut().await;
                    Next::Tick
                }),
            )
            .await;
            match next {
                Next::Up(msg) => {
                    let read_at = Instant::now();
                    last_activity = read_at;
                    if !relayed {
                        metrics.record(Hist::UpstreamTtftWs, read_at - sent_at);
                    }
                    let mut msg = msg;
                    let mut batch = 0u64;
                    // Relay this frame and every frame already buffered, then flush once.
                    loop {
                        match classify_upstream(msg, rewrite) {
                            Step::Relay(out, info) => {
                                if client.feed(out).await.is_err() {
                                    return TurnOutcome::ClientGone;
                                }
                                bump(&counters.events_relayed);
                                relayed = true;
                                batch += 1;
                                if let Some(mut outcome) = info {
                                    if client.flush().await.is_err() {
                                        return TurnOutcome::ClientGone;
                                    }
                                    let done = Instant::now();
                                    metrics.record_n(Hist::EventAddedWs, done - read_at, batch);
                                    if let TurnOutcome::Terminal {
                                        first_event_at: first,
                                        ..
                                    } = &mut outcome
                                    {
                                        *first = Some(first_event_at.unwrap_or(done));
                                    }
                                    return outcome;
                                }
                            }
                            Step::Skip => {}
                            Step::Fail(error) => {
                                let _ = client.flush().await;
                                if matches!(error.code, "upstream_message_too_big") {
                                    bump(&counters.oversize_messages);
                                    let _ = runtime::timeout(
                                        std::time::Duration::from_secs(1),
                                        upstream.close(Some(CloseFrame {
                                            code: CloseCode::Size,
                                            reason: "message too big".into(),
                                        })),
                                    )
                                    .await;
                                }
                                return TurnOutcome::UpstreamFailed { relayed, error };
                            }
                        }
                        match upstream.next().now_or_never() {
                            Some(m) => msg = m,
                            None => break,
                        }
                    }
                    if client.flush().await.is_err() {
                        return TurnOutcome::ClientGone;
                    }
                    if batch > 0 {
                        let done = Instant::now();
                        metrics.record_n(Hist::EventAddedWs, done - read_at, batch);
                        first_event_at.get_or_insert(done);
                    }
                }
                Next::Client(msg) => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Some(o) = mid_turn_frame(Bytes::from(t), upstream, client).await {
                            return o;
                        }
                    }
                    Some(Ok(Message::Binary(b))) => {
                        if let Some(o) = mid_turn_frame(b, upstream, client).await {
                            return o;
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) | None => return TurnOutcome::ClientGone,
                    Some(Err(e)) => {
                        if is_capacity(&e) {
                            bump(&counters.oversize_messages);
                            close_with(client, CloseCode::Size, "message too big").await;
                        }
                        return TurnOutcome::ClientGone;
                    }
                },
                Next::Tick => {
                    let idle = last_activity.elapsed();
                    if idle >= event_timeout {
                        return TurnOutcome::UpstreamFailed {
                            relayed,
                            error: GatewayError::new(
                                504,
                                ErrorType::Server,
                                "upstream_timeout",
                                format!("upstream sent nothing for {} s", event_timeout.as_secs()),
                            ),
                        };
                    }
                    timer = Box::pin(runtime::sleep(event_timeout - idle));
                }
            }
        }
    }

    /// Sends the turn's usage record to the control thread (never waits; a full queue is counted).
    fn record_usage(&self, f: UsageFacts<'_>) {
        let shard = &self.shard;
        let response_id = match f.response_id {
            Some(id) => id.to_string(),
            None => {
                shard
                    .counters
                    .bump_labeled("usage_without_response_id", f.kind.as_str());
                format!(
                    "gw-{}-{}-{}-{}",
                    shard.config.state.instance,
                    shard.id,
                    unix_ms(),
                    shard.counters.turns.get()
                )
            }
        };
        let record = UsageRecord {
            response_id,
            ts_ms: unix_ms(),
            group: self.identity.group.clone(),
            key_id: self.identity.key_id.clone(),
            account: self
                .lease
                .as_ref()
                .map(|l| l.pool().account.config.id.clone())
                .unwrap_or_default(),
            model: f.model.to_string(),
            request_type: RequestType::Ws,
            usage: f.usage.unwrap_or_default(),
            ttft_us: f.ttft.map(|d| d.as_micros() as u64),
            duration_us: f.duration.as_micros() as u64,
            attempts: f.attempts,
            status: f.kind.as_str().to_string(),
            instance: shard.config.state.instance.clone(),
            shard: shard.id,
        };
        if !shard.control.send(ShardMsg::Usage(Box::new(record))) {
            bump(&shard.counters.control_queue_drops);
            tracing::error!(
                shard = shard.id,
                "control queue full: a usage record was dropped"
            );
        }
    }

    async fn send_event(&mut self, json: String) -> Result<(), End> {
        self.client
            .send(Message::text(json))
            .await
            .map_err(|_| End::ClientGone)
    }

    async fn on_client_error(&mut self, e: WsError) {
        if is_capacity(&e) {
            bump(&self.shard.counters.oversize_messages);
            close_with(&mut self.client, CloseCode::Size, "message too big").await;
        }
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        close_with(&mut self.client, code, reason).await;
    }
}

/// What a usage record is built from.
struct UsageFacts<'a> {
    kind: TerminalKind,
    response_id: Option<&'a str>,
    usage: Option<Usage>,
    model: &'a str,
    ttft: Option<std::time::Duration>,
    duration: std::time::Duration,
    attempts: u32,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What to do with one upstream message.
enum Step {
    /// Send this to the client; `Some(outcome)` when it ends the turn.
    Relay(Message, Option<TurnOutcome>),
    /// Nothing to relay (ping, pong).
    Skip,
    /// The turn failed.
    Fail(GatewayError),
}

fn classify_upstream(msg: Option<Result<Message, WsError>>, rewrite: &Rewrite) -> Step {
    let text = match msg {
        Some(Ok(Message::Text(t))) => t,
        Some(Ok(Message::Binary(b))) => return Step::Relay(Message::Binary(b), None),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return Step::Skip,
        Some(Ok(Message::Close(frame))) => {
            let code = frame.map(|f| u16::from(f.code));
            return Step::Fail(upstream_closed(code));
        }
        None => return Step::Fail(upstream_closed(None)),
        Some(Err(e)) => return Step::Fail(upstream_io_error(&e)),
    };
    let Ok(event) = UpstreamEvent::classify(text.as_bytes()) else {
        // Not ours to judge: relay it untouched.
        return Step::Relay(Message::Text(text), None);
    };
    let kind = event.kind;
    let outcome = match kind {
        EventKind::Terminal(t) => Some(TurnOutcome::Terminal {
            kind: t,
            response_id: event.response_id().map(|s| s.into_owned()),
            usage: event.usage(),
            first_event_at: None,
        }),
        EventKind::Error => Some(TurnOutcome::UpstreamErrorEvent),
        _ => None,
    };
    let mapped = if event.carries_response() {
        normalizer::map_back(text.as_bytes(), rewrite)
            .and_then(|m| Utf8Bytes::try_from(Bytes::from(m)).ok())
    } else {
        None
    };
    let out = Message::Text(mapped.unwrap_or(text));
    Step::Relay(out, outcome)
}

/// A client frame that arrives while a turn is in flight.
async fn mid_turn_frame(
    frame: Bytes,
    upstream: &mut WebSocketStream<crate::net::UpstreamStream>,
    client: &mut ClientWs,
) -> Option<TurnOutcome> {
    match ClientFrame::parse(&frame) {
        Ok(p) if p.kind() == ClientEventKind::ResponseCreate => Some(TurnOutcome::Preempted(frame)),
        Ok(_) => {
            // Other events (e.g. `response.steer`) belong to the response in flight.
            let text = Utf8Bytes::try_from(frame).ok()?;
            match upstream.send(Message::Text(text)).await {
                Ok(()) => None,
                Err(e) => Some(TurnOutcome::UpstreamFailed {
                    relayed: true,
                    error: upstream_io_error(&e),
                }),
            }
        }
        Err(e) => {
            let err = GatewayError::new(
                400,
                ErrorType::InvalidRequest,
                "invalid_json",
                e.to_string(),
            );
            match client.send(Message::text(err.to_event())).await {
                Ok(()) => None,
                Err(_) => Some(TurnOutcome::ClientGone),
            }
        }
    }
}

fn is_capacity(e: &WsError) -> bool {
    matches!(e, WsError::Capacity(_))
}

async fn close_with(client: &mut ClientWs, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = runtime::timeout(std::time::Duration::from_secs(1), client.close(Some(frame))).await;
}

fn upstream_failed(message: &str) -> GatewayError {
    GatewayError::new(502, ErrorType::Server, "upstream_error", message)
}

fn upstream_closed(code: Option<u16>) -> GatewayError {
    match code {
        Some(1009) => GatewayError::new(
            502,
            ErrorType::Server,
            "upstream_message_too_big",
            "upstream closed the connection: message too big (1009)",
        ),
        Some(code @ (1012 | 1013)) => GatewayError::new(
            503,
            ErrorType::Server,
            "upstream_unavailable",
            format!("upstream is restarting or overloaded (close {code}); retry the request"),
        ),
        Some(code) => GatewayError::new(
            502,
            ErrorType::Server,
            "upstream_closed",
            format!("upstream closed the connection mid-response (close {code})"),
        ),
        None => upstream_failed("upstream closed the connection mid-response"),
    }
}

fn upstream_io_error(e: &WsError) -> GatewayError {
    match e {
        WsError::Capacity(_) => GatewayError::new(
            502,
            ErrorType::Server,
            "upstream_message_too_big",
            "upstream sent a message over the size limit",
        ),
        _ => upstream_failed("upstream connection failed mid-response"),
    }
}

fn acquire_error(account: &str, e: AcquireError) -> GatewayError {
    tracing::warn!(account, error = %e, "upstream acquire failed");
    match e {
        AcquireError::Dial(DialError::Refused { status: 429, .. }) => GatewayError::new(
            429,
            ErrorType::RateLimit,
            "upstream_rate_limited",
            "upstream is rate limiting this account; retry later",
        ),
        AcquireError::Dial(DialError::Refused { status, .. }) => GatewayError::new(
            502,
            ErrorType::Server,
            "upstream_unavailable",
            format!("upstream refused the connection (HTTP {status})"),
        ),
        AcquireError::Dial(DialError::ConnectTimeout | DialError::HandshakeTimeout) => {
            GatewayError::new(
                504,
                ErrorType::Server,
                "upstream_timeout",
                "upstream did not answer in time",
            )
        }
        AcquireError::Dial(_) => GatewayError::new(
            502,
            ErrorType::Server,
            "upstream_unavailable",
            "upstream could not be reached",
        ),
        AcquireError::QueueFull | AcquireError::Timeout => GatewayError::new(
            503,
            ErrorType::Server,
            "upstream_busy",
            "all upstream connections are busy; retry later",
        ),
    }
}
