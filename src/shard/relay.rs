//! The relay of one attempt: upstream events (WebSocket frames or SSE records) go to a client
//! sink (a client WebSocket, an SSE response or a JSON collector) in order until the turn's
//! terminal event, while the client is watched for a new `response.create` or its departure.
//!
//! Per event the loop classifies the frame by its `type` only and hands the very same buffer to
//! the sink; ready events are batched into one flush.
//!
//! Size: about 750 lines of code plus its unit tests, for one job (the relay of one attempt).
//! It reads upstream two ways, the cut-through frame path (`shard/cut_through.rs` decides,
//! `net/ws_frame.rs` parses) and the codec fallback, and both must hand over in one loop, so
//! they stay together. The preemption paths (`before_send`, `preempted`, `settle`) stay here
//! because they read the same `Source` the loop does. Failures are built in `shard/failure/`,
//! and sinks live in `sink.rs`.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::error::ProtocolError;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::FutureExt;
use memchr::memmem;

use crate::metrics::{Hist, ShardMetrics};
use crate::protocol::client_frame::ClientEventKind;
use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::protocol::fields::{fields, plain_str};
use crate::protocol::redact::redact_secrets;
use crate::protocol::upstream_event::{completed_as_upstream_starts_it, text_delta_type};
use crate::protocol::{ClientFrame, EventKind, TerminalKind, UpstreamEvent, Usage};
use crate::runtime;

use super::armed_timer::ShardDeadline;
use super::counters::{bump, ShardCounters};
use super::cut_through::{CutThrough, Frame, Pending, Read};
use super::failure::{Failure, FailureClass};
use super::http_upstream::{HttpResponse, HttpUpError};
use super::normalizer::{self, Rewrite};
use super::preempt::{PreemptBudget, DRAIN_LIMIT, PREEMPTIONS};
use super::sink::{ClientSignal, ClientSink, Gone, TurnError};
use super::upstream::UpstreamWs;

/// How one relayed attempt ended.
pub enum Outcome {
    /// A terminal event was relayed: the connection is clean.
    Terminal {
        /// Which terminal event.
        kind: TerminalKind,
        /// The response id, shared as the sticky state and usage record of the turn carry it
        /// (made once, here).
        response_id: Option<Arc<str>>,
        /// Usage of a completed response.
        usage: Option<Usage>,
        /// The response's `output` items (raw JSON array), when [`RelayEnv::capture_output`].
        output: Option<String>,
        /// The tool calls the response left waiting for outputs, when it has any (read on the
        /// terminal event only, for the call/output pairing of the next turn).
        pending_calls: Option<Vec<String>>,
        /// When the first event reached the client.
        first_event_at: Option<Instant>,
    },
    /// Upstream sent an `error` event (relayed): the connection is not trusted any more.
    UpstreamErrorEvent,
    /// The attempt failed; `relayed` says whether the client saw events.
    Failed {
        /// Events reached the client.
        relayed: bool,
        /// What failed.
        failure: Failure,
    },
    /// The client sent a new `response.create` (and was told this response is abandoned).
    Preempted {
        /// The new frame, to run next (its UTF-8 checked when the client's frame was read).
        next: Utf8Bytes,
        /// How the abandoned response left its connection.
        settled: Settled,
    },
    /// The client left.
    ClientGone,
}

/// How a preempted response left its connection.
pub enum Settled {
    /// Its frame never went upstream: the connection is as clean as before.
    Unsent,
    /// Its terminal event was read (not relayed): the connection is clean.
    Terminal {
        /// Which terminal event.
        kind: TerminalKind,
        /// The response id, shared as the sticky state and usage record of the turn carry it
        /// (made once, here).
        response_id: Option<Arc<str>>,
        /// Usage of a completed response (recorded: upstream did the work).
        usage: Option<Usage>,
    },
    /// It may still be running upstream: the connection's state is unknown.
    Unknown,
}

/// Where the events come from.
pub enum Source<'a> {
    /// A leased upstream WebSocket.
    Ws(&'a mut UpstreamWs),
    /// An HTTP response streaming SSE.
    Http(&'a mut HttpResponse),
}

/// The source as the relay reads it: a WebSocket frame by frame (cut-through toward a client
/// WebSocket), or an HTTP response.
enum Upstream<'a> {
    Ws(CutThrough<'a>),
    Http(&'a mut HttpResponse),
}

/// One item read from upstream.
enum Item {
    Event(Utf8Bytes),
    /// A text frame to forward as it came (its payload is in the reader's buffer).
    Frame(Frame),
    Skip,
    /// The attempt failed; the upstream WebSocket is to be closed with the code, if any.
    /// Boxed, as in [`Step::Fail`]: a [`Failure`] was most of the enum's size, and every
    /// event's item and step were moved at that size for a variant an attempt meets once at
    /// most (callgrind: the relay loop's own instructions 2.84k -> 2.28k a turn).
    Fail(Box<Failure>, Option<CloseCode>),
}

impl<'a> Upstream<'a> {
    /// A WebSocket is read frame by frame when `raw` (the sink takes frames, or views of the
    /// reader's buffer: [`ClientSink::feed_view`]), else through the codec.
    fn new(source: Source<'a>, raw: bool) -> Self {
        match source {
            Source::Ws(ws) => Upstream::Ws(CutThrough::new(ws, raw)),
            Source::Http(resp) => Upstream::Http(resp),
        }
    }

    async fn next(&mut self) -> Item {
        match self {
            Upstream::Ws(ws) => ws_read(ws.next().await),
            Upstream::Http(resp) => http_item(resp.next_event().await),
        }
    }

    /// The next item if it is ready; may read (moving frames handed out before).
    fn next_ready(&mut self) -> Option<Item> {
        match self {
            Upstream::Ws(ws) => ws.next().now_or_never().map(ws_read),
            Upstream::Http(resp) => resp.next_event().now_or_never().map(http_item),
        }
    }

    /// The next frame if it is complete in the buffer already; reads nothing.
    fn buffered(&mut self) -> Option<Item> {
        match self {
            Upstream::Ws(ws) => ws.buffered().map(Item::Frame),
            Upstream::Http(_) => None,
        }
    }

    /// A frame's payload (only WebSocket reads give frames).
    fn payload(&self, frame: Frame) -> &[u8] {
        match self {
            Upstream::Ws(ws) => ws.payload(frame),
            Upstream::Http(_) => &[],
        }
    }

    /// A frame's payload as text.
    fn text(&self, frame: Frame) -> &str {
        match self {
            Upstream::Ws(ws) => ws.text(frame),
            Upstream::Http(_) => "",
        }
    }

    /// Writes the frames `pending` holds to `sink`, if any.
    async fn write_pending<S: ClientSink>(
        &self,
        pending: &mut Pending,
        sink: &mut S,
    ) -> Result<(), Gone> {
        match (pending.take(), self) {
            (Some((range, payload)), Upstream::Ws(ws)) => {
                sink.write_frames(ws.bytes(range), payload).await
            }
            _ => Ok(()),
        }
    }

    fn hists(&self) -> (Hist, Hist) {
        match self {
            Upstream::Ws(_) => (Hist::UpstreamTtftWs, Hist::EventAddedWs),
            Upstream::Http(_) => (Hist::UpstreamTtftHttp, Hist::EventAddedHttp),
        }
    }
}

fn ws_read(read: Read) -> Item {
    match read {
        Read::Frame(f) => Item::Frame(f),
        Read::Message(msg) => ws_item(msg),
    }
}

fn ws_item(msg: Option<Result<Message, WsError>>) -> Item {
    match msg {
        Some(Ok(Message::Text(t))) => Item::Event(t),
        // The Responses API sends text only; anything else is not an event.
        Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
            Item::Skip
        }
        Some(Ok(Message::Close(frame))) => Item::Fail(
            Box::new(Failure::ws_closed(frame.map(|f| u16::from(f.code)))),
            None,
        ),
        None | Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
            Item::Fail(Box::new(Failure::reset()), None)
        }
        Some(Err(WsError::Capacity(_))) => {
            Item::Fail(Box::new(Failure::ws_too_big()), Some(CloseCode::Size))
        }
        Some(Err(e @ (WsError::Protocol(_) | WsError::Utf8(_)))) => {
            let code = if matches!(e, WsError::Utf8(_)) {
                CloseCode::Invalid
            } else {
                CloseCode::Protocol
            };
            Item::Fail(Box::new(Failure::ws_protocol()), Some(code))
        }
        Some(Err(_)) => Item::Fail(Box::new(Failure::broken()), None),
    }
}

fn http_item(r: Result<Option<Bytes>, HttpUpError>) -> Item {
    match r {
        Ok(Some(data)) => match Utf8Bytes::try_from(data) {
            Ok(t) => Item::Event(t),
            Err(_) => Item::Fail(Box::new(Failure::event_not_utf8()), None),
        },
        Ok(None) => Item::Fail(Box::new(Failure::ended_early()), None),
        Err(e) => Item::Fail(Box::new(Failure::http(&e)), None),
    }
}

/// What to do with one event (the turn ends after it when [`judge`] set its outcome).
enum Step {
    /// Relay the text (its `type` at this byte range).
    Relay(Utf8Bytes, std::ops::Range<usize>),
    /// Forward the frame as it came (its `type` at this byte range of its payload).
    Cut(Frame, std::ops::Range<usize>),
    /// Forward the frame as it came with every frame held, flush, and only then judge it
    /// ([`relays_before_judging`]).
    CutThenJudge(Frame),
    /// Nothing to relay (ping, pong, binary).
    Skip,
    /// The attempt failed (closing the upstream WebSocket with the code, if any). Boxed: see
    /// [`Item::Fail`].
    Fail(Box<Failure>, Option<CloseCode>),
}

/// The event type at `range` of `text` (see [`type_range`]); `message` when it is not there,
/// as SSE names an event without a type. A slice of the text, not checked as UTF-8 again
/// (a `from_utf8` of the type, per event, was ~130 instructions): a slice of UTF-8 between
/// character boundaries is UTF-8, and `str::get` refuses any other.
fn event_type(text: &str, range: std::ops::Range<usize>) -> &str {
    match text.get(range) {
        Some(t) if !t.is_empty() => t,
        _ => "message",
    }
}

/// Where `event_type` sits inside `text`, when it is a slice of it (an unescaped `type`);
/// otherwise an empty range.
fn type_range(text: &[u8], event_type: &str) -> std::ops::Range<usize> {
    let start = (event_type.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
    if start <= text.len() && text.len() - start >= event_type.len() {
        start..start + event_type.len()
    } else {
        0..0
    }
}

/// What the relay needs from its shard.
pub struct RelayEnv<'a> {
    /// Counters.
    pub counters: &'a ShardCounters,
    /// Histograms.
    pub metrics: &'a ShardMetrics,
    /// Longest upstream silence inside a turn.
    pub event_timeout: Duration,
    /// Keep the terminal event's `output` items (for chains upstream does not store).
    pub capture_output: bool,
    /// The account's secrets, taken out of error events before the client sees them.
    pub secrets: &'a [&'a str],
    /// The session's budget of connections closed at once on preemption.
    pub preempt: &'a Cell<PreemptBudget>,
}

/// What the client sent while its turn waited for an upstream connection, read without
/// waiting just before the frame goes upstream.
pub enum BeforeSend {
    /// Send the frame; a frame the client sent for it (e.g. `response.steer`) goes after it.
    Go(Option<Utf8Bytes>),
    /// The turn is over before it reached upstream (preempted: its connection stays clean).
    Ended(Outcome),
}

/// Looks once, without waiting, at what the client sent while its turn waited for a
/// connection: a new `response.create` preempts the turn before its frame costs anything
/// upstream (back-to-back creates then run only the last one on one connection).
pub async fn before_send<S: ClientSink>(sink: &mut S, counters: &ShardCounters) -> BeforeSend {
    let Some(signal) = sink.signal().now_or_never() else {
        return BeforeSend::Go(None);
    };
    let frame = match signal {
        ClientSignal::Gone => return BeforeSend::Ended(Outcome::ClientGone),
        ClientSignal::Frame(frame) => frame,
    };
    if !is_create(frame.as_str()) {
        return BeforeSend::Go(Some(frame));
    }
    counters.bump_labeled(PREEMPTIONS, "unsent");
    match sink.fail(&preempted_error()).await {
        Ok(()) => BeforeSend::Ended(Outcome::Preempted {
            next: frame,
            settled: Settled::Unsent,
        }),
        Err(Gone) => BeforeSend::Ended(Outcome::ClientGone),
    }
}

fn is_create(frame: &str) -> bool {
    ClientFrame::parse_text(frame).is_ok_and(|p| p.kind() == ClientEventKind::ResponseCreate)
}

/// The error event a preempted turn ends with.
fn preempted_error() -> TurnError {
    GatewayError::new(
        409,
        ErrorType::InvalidRequest,
        "response_preempted",
        "a new response.create arrived before this response finished; it was abandoned",
    )
    .into()
}

/// Ends a turn the client preempted: tells the client, then leaves the connection clean when
/// that is cheap (the terminal event is already buffered) or the session's budget of
/// immediate closes is spent (read to the terminal event, up to [`DRAIN_LIMIT`]).
async fn preempted<S: ClientSink>(
    env: &RelayEnv<'_>,
    source: &mut Upstream<'_>,
    sink: &mut S,
    next: Utf8Bytes,
    timer: &mut ShardDeadline,
) -> Outcome {
    if sink.fail(&preempted_error()).await.is_err() {
        return Outcome::ClientGone;
    }
    let mut settled = settle(source, None, timer).await;
    let label = if matches!(settled, Settled::Terminal { .. }) {
        "settled"
    } else {
        let mut budget = env.preempt.get();
        let discard = budget.take(Instant::now());
        env.preempt.set(budget);
        if discard {
            "discarded"
        } else {
            settled = settle(source, Some(DRAIN_LIMIT), timer).await;
            if matches!(settled, Settled::Terminal { .. }) {
                "drained"
            } else {
                "drain_failed"
            }
        }
    };
    env.counters.bump_labeled(PREEMPTIONS, label);
    Outcome::Preempted { next, settled }
}

/// Reads the rest of an abandoned response without relaying it, up to its terminal event:
/// only what is already buffered when `wait` is `None`, else for at most `wait` (on `timer`,
/// set once for all the reads).
async fn settle(
    source: &mut Upstream<'_>,
    wait: Option<Duration>,
    timer: &mut ShardDeadline,
) -> Settled {
    if let Some(wait) = wait {
        timer.set(Instant::now() + wait);
    }
    loop {
        let item = match wait {
            None => match source.next_ready() {
                Some(item) => item,
                None => return Settled::Unknown,
            },
            Some(_) => match timer.within(source.next()).await {
                Some(item) => item,
                None => return Settled::Unknown,
            },
        };
        let text = match &item {
            Item::Event(text) => text.as_bytes(),
            Item::Frame(frame) => source.payload(*frame),
            Item::Skip => continue,
            Item::Fail(..) => return Settled::Unknown,
        };
        let Ok(event) = UpstreamEvent::classify(text) else {
            continue;
        };
        match event.kind {
            EventKind::Terminal(kind) => {
                return Settled::Terminal {
                    kind,
                    response_id: event.response_id().map(|s| Arc::<str>::from(&*s)),
                    usage: event.usage(),
                }
            }
            // An error event leaves the connection untrusted (the failure matrix).
            EventKind::Error => return Settled::Unknown,
            _ => {}
        }
    }
}

/// Relays one attempt's events from `source` to `sink` until the turn ends; `early` is a client
/// frame read before the request went upstream ([`before_send`]), handled first. Upstream's
/// silence is timed on `timer`, the client task's one timer, moved to `event_timeout` after
/// each batch of events read.
pub async fn relay<S: ClientSink>(
    env: &RelayEnv<'_>,
    source: Source<'_>,
    sink: &mut S,
    rewrite: &Rewrite,
    sent_at: Instant,
    early: Option<Utf8Bytes>,
    timer: &mut ShardDeadline,
) -> Outcome {
    let frames_out = sink.takes_frames();
    let mut source = Upstream::new(source, frames_out || sink.takes_views());
    if let Some(frame) = early {
        match mid_turn_frame(frame, &mut source, sink, env.counters).await {
            MidTurn::Continue => {}
            MidTurn::End(outcome) => return outcome,
            MidTurn::Preempt(next) => return preempted(env, &mut source, sink, next, timer).await,
        }
    }
    let event_timeout = env.event_timeout;
    let (ttft_hist, added_hist) = source.hists();
    let mut relayed = false;
    let mut first_event_at: Option<Instant> = None;
    // Upstream's silence counts from the send (the caller's clock read, just before this).
    timer.set(sent_at + event_timeout);
    loop {
        enum Next {
            Up(Item),
            Client(ClientSignal),
            Silent,
        }
        let next = futures_lite::future::or(
            async { Next::Up(source.next().await) },
            futures_lite::future::or(async { Next::Client(sink.signal().await) }, async {
                timer.wait().await;
                Next::Silent
            }),
        )
        .await;
        match next {
            Next::Up(item) => {
                let read_at = Instant::now();
                timer.set(read_at + event_timeout);
                if !relayed {
                    env.metrics.record(ttft_hist, read_at - sent_at);
                }
                let mut item = item;
                let mut batch = 0u64;
                // Frames forwarded as they came, written together: every frame one read
                // brought in goes out in one write unless one of them is rewritten.
                let mut pending = Pending::default();
                // Set by the event that ends the turn (see `judge`).
                let mut ends: Option<Outcome> = None;
                // When the frames read so far went out before the last one was judged
                // (`Step::CutThenJudge`): nothing is held, and the write is done.
                let mut flushed_at: Option<Instant> = None;
                // Relay this event and every event already buffered, then flush once.
                loop {
                    let (capture, secrets) = (env.capture_output, env.secrets);
                    let step = match item {
                        Item::Event(text) => {
                            classify(text, rewrite, relayed, capture, secrets, &mut ends)
                        }
                        Item::Frame(frame)
                            if frames_out
                                && relays_before_judging(source.payload(frame), rewrite) =>
                        {
                            Step::CutThenJudge(frame)
                        }
                        Item::Frame(frame) => {
                            let payload = source.payload(frame);
                            match judge(payload, rewrite, relayed, capture, secrets, &mut ends) {
                                Verdict::Relay {
                                    replaced: None,
                                    range,
                                } => Step::Cut(frame, range),
                                Verdict::Relay {
                                    replaced: Some(text),
                                    range,
                                } => Step::Relay(text, range),
                                Verdict::Fail(failure) => Step::Fail(Box::new(failure), None),
                            }
                        }
                        Item::Skip => Step::Skip,
                        Item::Fail(f, code) => Step::Fail(f, code),
                    };
                    let sent = match step {
                        Step::Cut(frame, range) if !frames_out => {
                            let text = source.text(frame);
                            let et = event_type(text, range);
                            if sink.feed_view(text, et).await.is_err() {
                                return Outcome::ClientGone;
                            }
                            true
                        }
                        Step::Cut(frame, _) => {
                            bump(&env.counters.events_cut_through);
                            if !pending.push(frame) {
                                if source.write_pending(&mut pending, sink).await.is_err() {
                                    return Outcome::ClientGone;
                                }
                                pending.push(frame);
                            }
                            true
                        }
                        Step::CutThenJudge(frame) => {
                            bump(&env.counters.events_cut_through);
                            if !pending.push(frame) {
                                if source.write_pending(&mut pending, sink).await.is_err() {
                                    return Outcome::ClientGone;
                                }
                                pending.push(frame);
                            }
                            if source.write_pending(&mut pending, sink).await.is_err()
                                || sink.flush().await.is_err()
                            {
                                return Outcome::ClientGone;
                            }
                            flushed_at = Some(Instant::now());
                            let payload = source.payload(frame);
                            let verdict =
                                judge(payload, rewrite, relayed, capture, secrets, &mut ends);
                            debug_assert!(matches!(verdict, Verdict::Relay { replaced: None, .. }));
                            true
                        }
                        Step::Relay(text, range) => {
                            if source.write_pending(&mut pending, sink).await.is_err() {
                                return Outcome::ClientGone;
                            }
                            let et = event_type(&text, range);
                            // The sink gets its own handle on the same buffer (no copy).
                            if sink.feed(text.clone(), et).await.is_err() {
                                return Outcome::ClientGone;
                            }
                            true
                        }
                        Step::Skip => false,
                        Step::Fail(failure, close) => {
                            let _ = source.write_pending(&mut pending, sink).await;
                            let _ = sink.flush().await;
                            if failure.error.code == "upstream_message_too_big" {
                                bump(&env.counters.oversize_messages);
                            }
                            if let (Some(code), Upstream::Ws(ws)) = (close, &mut source) {
                                let frame = CloseFrame {
                                    code,
                                    reason: failure.error.code.clone().into(),
                                };
                                let closing = ws.ws().close(Some(frame));
                                let _ = runtime::timeout(Duration::from_secs(1), closing).await;
                            }
                            return Outcome::Failed {
                                relayed,
                                failure: *failure,
                            };
                        }
                    };
                    if sent {
                        bump(&env.counters.events_relayed);
                        relayed = true;
                        batch += 1;
                    }
                    // Looked at before it is taken: `take` moves the whole `Option<Outcome>`
                    // (a `memcpy` call), which every event paid.
                    let ended = if ends.is_some() { ends.take() } else { None };
                    if let Some(mut outcome) = ended {
                        let done = match flushed_at {
                            Some(at) => at,
                            None => {
                                if source.write_pending(&mut pending, sink).await.is_err()
                                    || sink.flush().await.is_err()
                                {
                                    return Outcome::ClientGone;
                                }
                                Instant::now()
                            }
                        };
                        env.metrics.record_n(added_hist, done - read_at, batch);
                        if let Outcome::Terminal {
                            first_event_at: first,
                            ..
                        } = &mut outcome
                        {
                            *first = Some(first_event_at.unwrap_or(done));
                        }
                        return outcome;
                    }
                    item = match source.buffered() {
                        Some(i) => i,
                        None => {
                            // A read may move the frames held: they go out first.
                            if source.write_pending(&mut pending, sink).await.is_err() {
                                return Outcome::ClientGone;
                            }
                            match source.next_ready() {
                                Some(i) => i,
                                None => break,
                            }
                        }
                    };
                }
                if sink.flush().await.is_err() {
                    return Outcome::ClientGone;
                }
                if batch > 0 {
                    let done = Instant::now();
                    env.metrics.record_n(added_hist, done - read_at, batch);
                    first_event_at.get_or_insert(done);
                }
            }
            Next::Client(ClientSignal::Gone) => return Outcome::ClientGone,
            Next::Client(ClientSignal::Frame(frame)) => {
                match mid_turn_frame(frame, &mut source, sink, env.counters).await {
                    MidTurn::Continue => {}
                    MidTurn::End(outcome) => return outcome,
                    MidTurn::Preempt(next) => {
                        return preempted(env, &mut source, sink, next, timer).await
                    }
                }
            }
            Next::Silent => {
                return Outcome::Failed {
                    relayed,
                    failure: Failure::silent(event_timeout),
                }
            }
        }
    }
}

/// Classifies one upstream event read as a message (see [`judge`], which sets `ends`).
fn classify(
    text: Utf8Bytes,
    rewrite: &Rewrite,
    relayed: bool,
    capture_output: bool,
    secrets: &[&str],
    ends: &mut Option<Outcome>,
) -> Step {
    match judge(
        text.as_bytes(),
        rewrite,
        relayed,
        capture_output,
        secrets,
        ends,
    ) {
        Verdict::Relay {
            replaced: Some(new),
            range,
        } => Step::Relay(new, range),
        Verdict::Relay {
            replaced: None,
            range,
        } => Step::Relay(text, range),
        Verdict::Fail(failure) => Step::Fail(Box::new(failure), None),
    }
}

/// What to do with one upstream event (public for the per-event benches). How the turn ends,
/// when the event ends it, is not part of it: [`judge`] writes that where the relay keeps it.
pub enum Verdict {
    /// Relay it (its `type` at `range` of the text relayed).
    Relay {
        /// The text to relay instead (secrets taken out, model mapped back), when it changed.
        replaced: Option<Utf8Bytes>,
        /// Where the event's `type` sits in the text relayed (empty when unknown).
        range: std::ops::Range<usize>,
    },
    /// Fail the attempt: a retryable `error` event that no client has seen anything of yet.
    Fail(Failure),
}

/// Judges one upstream event (`text`, valid UTF-8) on a borrowed view: relay it as it is, a
/// rewritten copy of it, or fail the attempt. Nothing is copied unless the event changes or
/// ends the turn. When it ends the turn (and is relayed), how is written into `ends` (left as
/// it was otherwise): an [`Outcome`] is 136 bytes, and carried in every event's verdict it was
/// copied (`memcpy`) three times per event on its way through the relay. Public for the
/// per-event benches (`benches/protocol.rs`).
///
/// A text delta as upstream starts it ([`text_delta_type`]), most of a turn's events, is
/// relayed as it came under its type without the classification: it ends nothing, carries no
/// response to map back and no secret is looked for in it, which is what the rest of the judge
/// finds for the [`EventKind::Token`] that [`UpstreamEvent::classify`] makes of it.
pub fn judge(
    text: &[u8],
    rewrite: &Rewrite,
    relayed: bool,
    capture_output: bool,
    secrets: &[&str],
    ends: &mut Option<Outcome>,
) -> Verdict {
    if let Some(range) = text_delta_type(text) {
        return Verdict::Relay {
            replaced: None,
            range,
        };
    }
    // Not a text delta (just ruled out): classified without comparing again.
    let Ok(event) = UpstreamEvent::classify_walked(text) else {
        // Not ours to judge: relay it untouched.
        return Verdict::Relay {
            replaced: None,
            range: 0..0,
        };
    };
    if matches!(
        event.kind,
        EventKind::Error | EventKind::Terminal(TerminalKind::Failed)
    ) {
        if let Cow::Owned(clean) = redact_secrets(&String::from_utf8_lossy(text), secrets) {
            return match judge(
                clean.as_bytes(),
                rewrite,
                relayed,
                capture_output,
                secrets,
                ends,
            ) {
                Verdict::Relay { replaced, range } => Verdict::Relay {
                    replaced: replaced.or_else(|| Some(Utf8Bytes::from(clean))),
                    range,
                },
                fail => fail,
            };
        }
    }
    match event.kind {
        EventKind::Terminal(t) => {
            *ends = Some(Outcome::Terminal {
                kind: t,
                response_id: event.response_id().map(|s| Arc::<str>::from(&*s)),
                usage: event.usage(),
                output: capture_output
                    .then(|| sonic_rs::get_from_slice(text, ["response", "output"]).ok())
                    .flatten()
                    .map(|v| v.as_raw_str().to_string()),
                pending_calls: CALL_ID
                    .find(text)
                    .map(|_| normalizer::pending_calls(text))
                    .filter(|calls| !calls.is_empty()),
                first_event_at: None,
            })
        }
        EventKind::Error => {
            let err = if relayed { None } else { event.error() };
            if let Some(err) = err {
                if let Some(class) = FailureClass::of_error_event(err.reason()) {
                    let failure = Failure::error_event(
                        class,
                        err.http_status(),
                        &String::from_utf8_lossy(text),
                        secrets,
                    );
                    return Verdict::Fail(failure);
                }
            }
            *ends = Some(Outcome::UpstreamErrorEvent);
        }
        _ => {}
    }
    let mapped = if event.carries_response() {
        normalizer::map_back(text, rewrite).and_then(|m| Utf8Bytes::try_from(Bytes::from(m)).ok())
    } else {
        None
    };
    match mapped {
        Some(m) => {
            // Only the `type`'s place in the copy: a walk to it, not a second classification
            // (whose depth scan of the whole copy the original's already made).
            let range = fields(m.as_bytes())
                .find(|(key, _)| *key == b"type")
                .and_then(|(_, value)| plain_str(value))
                .map_or(0..0, |t| type_range(m.as_bytes(), t));
            Verdict::Relay {
                replaced: Some(m),
                range,
            }
        }
        None => Verdict::Relay {
            replaced: None,
            range: type_range(text, &event.event_type),
        },
    }
}

/// `true` when the event `payload` is to be relayed as it came, with the frames read before it,
/// before it is judged: a completed response as upstream starts it
/// ([`completed_as_upstream_starts_it`]) on a turn whose model is not mapped. [`judge`] relays
/// such an event untouched whatever it finds (it is no error, so nothing is redacted and
/// nothing fails; nothing maps back), so judging it first only delayed the batch: its walk to
/// the response's id and usage, the longest of a turn's events, was in the wait of every event
/// read with it. Judged after the flush, it still ends the turn as before, or, when it does not
/// walk cleanly, is one more event relayed.
fn relays_before_judging(payload: &[u8], rewrite: &Rewrite) -> bool {
    !matches!(rewrite, Rewrite::ModelMapped { .. }) && completed_as_upstream_starts_it(payload)
}

/// The search for a `call_id` key in a terminal event (only an event that has one can leave
/// calls pending), built once: `memmem::find` built its searcher on every call (~190
/// instructions of the ~480 per turn, callgrind).
static CALL_ID: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"call_id\""));

/// What a client frame that arrives while a turn is in flight does to the turn.
enum MidTurn {
    /// Nothing: the turn goes on.
    Continue,
    /// The turn ends.
    End(Outcome),
    /// A new `response.create` preempts the turn.
    Preempt(Utf8Bytes),
}

/// A client frame that arrives while a turn is in flight.
async fn mid_turn_frame<S: ClientSink>(
    frame: Utf8Bytes,
    source: &mut Upstream<'_>,
    sink: &mut S,
    counters: &ShardCounters,
) -> MidTurn {
    match ClientFrame::parse_text(frame.as_str()) {
        Ok(p) if p.kind() == ClientEventKind::ResponseCreate => MidTurn::Preempt(frame),
        Ok(_) => {
            // Other events (e.g. `response.steer`) belong to the response in flight; an HTTP
            // upstream has no channel for them.
            let Upstream::Ws(ws) = source else {
                bump(&counters.client_frame_errors);
                return MidTurn::Continue;
            };
            match ws.ws().send(Message::Text(frame)).await {
                Ok(()) => MidTurn::Continue,
                Err(_) => MidTurn::End(Outcome::Failed {
                    relayed: true,
                    failure: Failure::broken_mid_turn(),
                }),
            }
        }
        Err(e) => {
            let err = e.to_gateway_error();
            match sink.fail(&err.into()).await {
                Ok(()) => MidTurn::Continue,
                Err(Gone) => MidTurn::End(Outcome::ClientGone),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::failure::ChainError;

    /// `classify` of `ev` (no rewrite, no capture, no secrets), and the outcome it set.
    fn classified(ev: Utf8Bytes, relayed: bool) -> (Step, Option<Outcome>) {
        let mut ends = None;
        let step = classify(ev, &Rewrite::None, relayed, false, &[], &mut ends);
        (step, ends)
    }

    /// `judge` of `ev` (no secrets), and the outcome it set.
    fn judged(
        ev: &[u8],
        rewrite: &Rewrite,
        relayed: bool,
        capture: bool,
    ) -> (Verdict, Option<Outcome>) {
        let mut ends = None;
        let verdict = judge(ev, rewrite, relayed, capture, &[], &mut ends);
        (verdict, ends)
    }

    #[test]
    fn an_event_type_is_its_slice_of_the_text_as_from_utf8_reads_it() {
        let text = r#"{"type":"é.€x😀","a":1}"#;
        for start in 0..=text.len() + 2 {
            for end in 0..=text.len() + 2 {
                let want = match text.as_bytes().get(start..end).map(std::str::from_utf8) {
                    Some(Ok(t)) if !t.is_empty() => t,
                    _ => "message",
                };
                assert_eq!(event_type(text, start..end), want, "{start}..{end}");
            }
        }
    }

    /// What `judge` makes of `ev` (no rewrite, no secrets) is what its classification makes of
    /// it, when it takes `ev` for a text delta: a token relayed as it came, under the type the
    /// classification borrows, ending nothing.
    fn judged_as_classified(ev: &[u8]) {
        let shown = String::from_utf8_lossy(ev).into_owned();
        let Some(range) = text_delta_type(ev) else {
            return;
        };
        let event = UpstreamEvent::classify(ev).expect(&shown);
        assert_eq!(event.kind, EventKind::Token, "{shown}");
        assert!(!event.carries_response(), "{shown}");
        assert_eq!(type_range(ev, &event.event_type), range, "{shown}");
        match judged(ev, &Rewrite::None, true, true) {
            (
                Verdict::Relay {
                    replaced: None,
                    range: judged,
                },
                None,
            ) => assert_eq!(judged, range, "{shown}"),
            _ => panic!("not relayed as it came: {shown}"),
        }
    }

    #[test]
    fn a_text_delta_is_judged_as_its_classification_judges_it() {
        let delta = br#"{"type":"response.output_text.delta","item_id":"msg_1","delta":"hi"}"#;
        assert_eq!(text_delta_type(delta), Some(9..35));
        for end in 0..=delta.len() {
            judged_as_classified(&delta[..end]);
        }
        for at in 0..delta.len() {
            for b in [b' ', b'"', b'\\', b'x', b'.', b'}', b'{'] {
                if delta[at] == b {
                    continue;
                }
                let mut raw = delta.to_vec();
                raw[at] = b;
                assert_eq!(text_delta_type(&raw).is_some(), at >= 36, "{at} {b}");
                judged_as_classified(&raw);
            }
        }
        judged_as_classified(br#"{"type":"response.output_text.delta","response":{"id":"r"}}"#);
    }

    /// What the relay counts on when it flushes an event before judging it
    /// ([`relays_before_judging`]): the judge then relays it as it came, under its type; and it
    /// ends the turn as a completed response exactly when the classification says so.
    fn judged_after_the_flush(ev: &[u8]) {
        let shown = String::from_utf8_lossy(ev).into_owned();
        if !relays_before_judging(ev, &Rewrite::None) {
            return;
        }
        let mut ends = None;
        let secrets = ["sk-secret", "response"];
        match judge(ev, &Rewrite::None, true, false, &secrets, &mut ends) {
            Verdict::Relay {
                replaced: None,
                range,
            } => assert!(range == (9..27) || range == (0..0), "{shown}"),
            _ => panic!("judged otherwise than relayed as it came: {shown}"),
        }
        let classified = UpstreamEvent::classify(ev).ok().map(|e| e.kind);
        match (classified, ends) {
            (
                Some(EventKind::Terminal(TerminalKind::Completed)),
                Some(Outcome::Terminal {
                    kind: TerminalKind::Completed,
                    ..
                }),
            )
            | (None, None) => {}
            (kind, _) => panic!("classified as {kind:?}, judged otherwise: {shown}"),
        }
    }

    #[test]
    fn a_completed_response_as_upstream_starts_it_is_relayed_before_it_is_judged() {
        let ev = br#"{"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5}}}"#;
        assert!(relays_before_judging(ev, &Rewrite::None));
        let mapped = Rewrite::ModelMapped {
            client_model: "a".into(),
            upstream_model: "b".into(),
        };
        assert!(
            !relays_before_judging(ev, &mapped),
            "a mapped model is put back first"
        );
        for other in [
            &br#"{"type":"response.completed_x","response":{}}"#[..],
            br#"{"type":"response.created","response":{}}"#,
            br#"{"type":"response.failed","response":{}}"#,
            br#"{ "type":"response.completed","response":{}}"#,
            br#"{"type":"error","error":{"message":"response.completed"}}"#,
        ] {
            assert!(!relays_before_judging(other, &Rewrite::None));
        }
        match judged(ev, &Rewrite::None, true, false) {
            (
                Verdict::Relay { replaced: None, .. },
                Some(Outcome::Terminal {
                    kind: TerminalKind::Completed,
                    response_id: Some(id),
                    usage: Some(usage),
                    ..
                }),
            ) => assert_eq!((&*id, usage.total_tokens), ("resp_1", 5)),
            _ => panic!("not a completed turn"),
        }
        for end in 0..=ev.len() {
            judged_after_the_flush(&ev[..end]);
        }
        for at in 0..ev.len() {
            for b in [b' ', b'"', b'\\', b'x', b'.', b'}', b'{', b'[', 0x80] {
                let mut raw = ev.to_vec();
                raw[at] = b;
                judged_after_the_flush(&raw);
            }
        }
        judged_after_the_flush(deep("response.completed", 100_000).as_bytes());
    }

    #[test]
    fn chain_error_before_any_relay_goes_to_the_recovery_matrix() {
        let ev = Utf8Bytes::from_static(
            r#"{"type":"error","status":400,"error":{"type":"invalid_request_error","code":"previous_response_not_found","message":"Previous response with id 'r1' not found."}}"#,
        );
        match classified(ev.clone(), false) {
            (Step::Fail(f, _), None) => {
                assert_eq!(
                    f.class,
                    FailureClass::Chain {
                        reason: ChainError::PreviousResponseNotFound
                    }
                );
                assert_eq!(f.error.event, ev.as_str(), "passed on as upstream sent it");
                assert_eq!(f.error.code, "previous_response_not_found");
            }
            _ => panic!("not a failed attempt"),
        }
        assert!(matches!(
            classified(ev, true),
            (Step::Relay(_, _), Some(Outcome::UpstreamErrorEvent))
        ));
    }

    #[test]
    fn terminal_events_carry_their_pending_tool_calls() {
        let pending = |ev: &'static str| match classified(Utf8Bytes::from_static(ev), true) {
            (Step::Relay(_, _), Some(Outcome::Terminal { pending_calls, .. })) => pending_calls,
            _ => panic!("not a terminal event"),
        };
        assert_eq!(
            pending(
                r#"{"type":"response.completed","response":{"id":"r1","output":[{"type":"function_call","call_id":"c1","name":"f"}]}}"#
            ),
            Some(vec!["c1".to_string()])
        );
        assert_eq!(
            pending(
                r#"{"type":"response.completed","response":{"id":"r1","output":[{"type":"message"}]}}"#
            ),
            None
        );
    }

    /// An event of `event_type` whose `extra` field nests `levels` arrays.
    fn deep(event_type: &str, levels: usize) -> String {
        format!(
            r#"{{"type":"{event_type}","response":{{"id":"r1","extra":{}1{}}}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    }

    #[test]
    fn a_deep_terminal_event_is_relayed_untouched_and_does_not_end_the_turn() {
        let ev = deep("response.completed", 100_000);
        match judged(ev.as_bytes(), &Rewrite::None, true, true) {
            (
                Verdict::Relay {
                    replaced: None,
                    range,
                },
                None,
            ) => assert_eq!(range, 0..0, "not classified: relayed as a plain message"),
            _ => panic!("relayed as it came, without an outcome"),
        }
    }

    #[test]
    fn a_deep_delta_is_relayed_untouched_under_its_type() {
        let ev = deep("response.output_text.delta", 100_000);
        match judged(ev.as_bytes(), &Rewrite::None, true, true) {
            (
                Verdict::Relay {
                    replaced: None,
                    range,
                },
                None,
            ) => assert_eq!(&ev[range], "response.output_text.delta"),
            _ => panic!("relayed as it came, without an outcome"),
        }
    }

    #[test]
    fn a_mapped_event_is_relayed_with_its_type_found_in_the_copy() {
        let rw = Rewrite::ModelMapped {
            client_model: "gpt-5-a-longer-client-name".into(),
            upstream_model: "up".into(),
        };
        let ev = br#"{"model":"up","type":"response.created","response":{"model":"up","id":"r1"}}"#;
        match judged(ev, &rw, false, false) {
            (
                Verdict::Relay {
                    replaced: Some(text),
                    range,
                },
                None,
            ) => {
                assert!(!text.as_str().contains(r#""up""#), "{}", text.as_str());
                assert_eq!(&text.as_str()[range], "response.created");
            }
            _ => panic!("relayed as a mapped copy"),
        }
    }

    #[test]
    fn retryable_error_event_before_any_relay_fails_the_attempt() {
        let ev = Utf8Bytes::from_static(
            r#"{"type":"error","status":500,"error":{"type":"server_error","code":"server_error","message":"x"}}"#,
        );
        assert!(matches!(
            classified(ev.clone(), false),
            (
                Step::Fail(f, None),
                None
            ) if matches!(f.class, FailureClass::Retryable { reason: "5xx", .. })
        ));
        assert!(matches!(
            classified(ev, true),
            (Step::Relay(_, _), Some(Outcome::UpstreamErrorEvent))
        ));
    }
}
