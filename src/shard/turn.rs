//! One client request, however it travels: the attempt loop.
//!
//! "What the client asked" (a `response.create` frame, from a WebSocket session or a POST body)
//! is separated from "how it travels": each attempt picks an account (skipping open breakers and,
//! when another healthy one exists, accounts already tried), a transport (a pooled WebSocket, or
//! HTTP/SSE when the account or the global switch says so or WebSocket was refused), relays the
//! events into the client's sink, and acts on what the failure table decides for a failed attempt
//! (`shard/failure.rs`). Nothing is retried once the client has seen an event.
//!
//! Sticky state around the loop: a turn chained by `previous_response_id` prefers the account
//! (and, on this shard, the idle connection) its previous response lives on; the pairing decision
//! on `previous_response_id` is made once per turn and applied by each attempt's single rewrite;
//! a chain error before any output goes to the recovery matrix (at most one alignment and one
//! replay without the id); a terminal event records the response's binding, its pending tool
//! calls and the session's last response.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use async_tungstenite::tungstenite::{Message, Utf8Bytes};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::metrics::Hist;
use crate::protocol::client_frame::ClientEventKind;
use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::protocol::{ClientFrame, TerminalKind, Usage};
use crate::runtime;
use crate::state::{Binding, SessionKey, TurnState};
use crate::usage::{RequestType, UsageRecord};

use super::auth::ClientIdentity;
use super::counters::{bump, ShardCounters};
use super::failure::{self, upstream_failed, Action, AttemptFacts, BreakerEffect, Failure};
use super::http_upstream::http_body;
use super::normalizer::{self, PreviousId};
use super::pool::{AcquireError, Lease, Pool};
use super::preempt::PreemptBudget;
use super::recovery::{self, Recovery, RecoveryFacts};
use super::relay::{self, BeforeSend, Outcome, RelayEnv, Settled, Source};
use super::retry::backoff;
use super::sink::{ClientSink, TurnError};
use super::sticky::{self, Affinity};
use super::{scheduler, warmup, Shard};

/// How often, 10 ms apart, a chained turn looks for its connection on the idle stack while the
/// connection is leased, before taking another one of the same account: a reconnecting
/// client's old session gives the connection back only once it has read its client's close.
const AFFINITY_CONN_TRIES: u32 = 3;

/// The connection id a binding carries when no pooled WebSocket holds the response (a turn
/// over HTTP upstream, a warm-up the gateway answered); pooled connection ids start at 1.
const NO_CONNECTION: u64 = 0;

/// How a request ended, for its caller.
pub enum TurnEnd {
    /// The request is over (answered or failed); the client may send another.
    Done,
    /// A new `response.create` arrived mid-turn: run it next.
    Preempted(Bytes),
    /// The client left.
    ClientGone,
}

/// Runs requests for one client (a WebSocket session or an HTTP connection).
pub struct Driver {
    shard: Rc<Shard>,
    identity: ClientIdentity,
    forward: Vec<(HeaderName, HeaderValue)>,
    request_type: RequestType,
    /// The upstream WebSocket a session holds across its `store=false` turns.
    lease: Option<Lease>,
    /// The client session (client key + `session-id` header), when the client names one.
    session: Option<SessionKey>,
    /// The last response this client got: the head of its chain.
    last: Option<String>,
    /// Where `last` was made: account index and connection id.
    last_at: Option<(usize, u64)>,
    /// Where the current turn should run, from its previous response's binding.
    prefer: Option<Prefer>,
    /// The current turn's affinity was already decided (by the session, before a handoff).
    routed: bool,
    /// Connections this client may still have closed at once by preempting its turns.
    preempt: Cell<PreemptBudget>,
}

/// An account (and maybe one of its connections) a chained turn should run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefer {
    account: usize,
    connection: Option<u64>,
}

/// What one attempt carried, for bookkeeping.
struct Attempt {
    outcome: Outcome,
    /// The connection had carried earlier requests (a failure may say more about it).
    reused: bool,
    /// The pooled upstream WebSocket's id, once one was used.
    conn: Option<u64>,
}

/// Counts a request that ended in an error after more than one attempt: the failures retries
/// did not save, whether or not the retry budget ran out (a retried `store=false` turn can end
/// in `previous_response_not_found` with budget left).
fn failed_after_retry(counters: &ShardCounters, attempts: u32) {
    if attempts > 1 {
        bump(&counters.failed_after_retry);
    }
}

impl Attempt {
    /// An attempt that failed before the client saw anything.
    fn failed(failure: Failure, reused: bool) -> Self {
        Attempt {
            outcome: Outcome::Failed {
                relayed: false,
                failure,
            },
            reused,
            conn: None,
        }
    }
}

/// What a usage record is built from.
struct UsageFacts<'a> {
    kind: TerminalKind,
    response_id: Option<&'a str>,
    usage: Option<Usage>,
    model: &'a str,
    account: &'a str,
    ttft: Option<std::time::Duration>,
    duration: std::time::Duration,
    attempts: u32,
}

impl Driver {
    /// A driver for requests of `request_type` from `identity`.
    pub fn new(
        shard: Rc<Shard>,
        identity: ClientIdentity,
        forward: Vec<(HeaderName, HeaderValue)>,
        request_type: RequestType,
    ) -> Self {
        let session = forward
            .iter()
            .find(|(n, _)| n.as_str() == "session-id" || n.as_str() == "session_id")
            .and_then(|(_, v)| v.to_str().ok())
            .map(|sid| SessionKey::of_client(&identity.key_id, sid));
        Driver {
            shard,
            identity,
            forward,
            request_type,
            lease: None,
            session,
            last: None,
            last_at: None,
            prefer: None,
            routed: false,
            preempt: Cell::new(PreemptBudget::new(Instant::now())),
        }
    }

    /// Who the client is.
    pub fn identity(&self) -> &ClientIdentity {
        &self.identity
    }

    /// The client headers passed on upstream.
    pub fn forward(&self) -> &[(HeaderName, HeaderValue)] {
        &self.forward
    }

    /// Decides where the next turn, chained to `previous`, runs: from the response's binding
    /// (this shard's cache, else the state store), counted as `affinity{label}`. The next
    /// [`Driver::run`] prefers the bound account (and connection, on this shard); the caller
    /// hands the client to another shard on [`Affinity::OtherShard`] when it can.
    pub async fn route(&mut self, previous: &str) -> Affinity {
        let shard = self.shard.clone();
        let binding = shard
            .sticky
            .binding(&shard.counters, &self.identity.group, previous)
            .await;
        let affinity = sticky::affinity(binding, &shard.config.state.instance, shard.id);
        shard.counters.bump_labeled("affinity", affinity.label());
        let (account, connection) = match &affinity {
            Affinity::Unbound => (None, None),
            Affinity::ThisShard {
                account,
                connection,
            } => (
                Some(account),
                Some(*connection).filter(|c| *c != NO_CONNECTION),
            ),
            Affinity::OtherShard { account, .. } | Affinity::OtherHost { account } => {
                (Some(account), None)
            }
        };
        self.prefer = account.and_then(|id| {
            let index = self.account_index(id)?;
            Some(Prefer {
                account: index,
                connection,
            })
        });
        self.routed = true;
        affinity
    }

    /// The index of account `id` among this client's group, if it belongs to it.
    fn account_index(&self, id: &str) -> Option<usize> {
        self.shard
            .groups
            .get(&self.identity.group)?
            .iter()
            .copied()
            .find(|i| self.shard.pools[*i].account.config.id == id)
    }

    /// Gives the held upstream connection back (clean) at the end of a session.
    pub fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }

    /// Lets the held upstream connection give back the buffers its turns grew, for a session
    /// idle between turns ([`Lease::rest`]).
    pub async fn rest(&mut self) {
        if let Some(lease) = self.lease.as_mut() {
            lease.rest().await;
        }
    }

    /// After a turn that left its connection clean: only a store=false response lives on its
    /// connection alone, so a session keeps the connection for it; otherwise the connection goes
    /// back between turns, so idle clients hold no budget.
    fn keep_or_release(&mut self, parsed: &ClientFrame<'_>) {
        if !parsed.is_store_disabled() || self.request_type != RequestType::Ws {
            self.release();
        }
    }

    fn drop_lease(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.discard();
        }
    }

    /// Handles one client `response.create` frame, from receipt to the last event.
    pub async fn run<S: ClientSink>(
        &mut self,
        sink: &mut S,
        frame: Bytes,
        received: Instant,
    ) -> TurnEnd {
        let end = self.turn(sink, frame, received).await;
        self.prefer = None;
        self.routed = false;
        end
    }

    async fn turn<S: ClientSink>(
        &mut self,
        sink: &mut S,
        frame: Bytes,
        received: Instant,
    ) -> TurnEnd {
        // Counted as in flight (a graceful shutdown waits for it) until this returns.
        let _in_flight = self.shard.turn_guard();
        // Validated once here, before any lease: a bad frame never costs the session its
        // connection, and an unrewritten frame goes upstream as this very buffer. A turn chained
        // to a warm-up the gateway answered is expanded once, then validated again.
        let mut frame = frame;
        let mut expanded = false;
        let (text, parsed) = loop {
            let checked = Utf8Bytes::try_from(frame.clone())
                .map_err(|_| {
                    GatewayError::new(
                        400,
                        ErrorType::InvalidRequest,
                        "invalid_json",
                        "frame is not valid UTF-8",
                    )
                })
                .and_then(|text| {
                    ClientFrame::parse(&frame)
                        .map(|p| (text, p))
                        .map_err(|e| e.to_gateway_error())
                });
            let (text, parsed) = match checked {
                Ok(p) => p,
                Err(err) => {
                    bump(&self.shard.counters.client_frame_errors);
                    return self.report(sink, &err.into()).await;
                }
            };
            if !expanded {
                if let Some(merged) = self.expand_warmup_chain(&parsed, &frame) {
                    expanded = true;
                    frame = merged;
                    continue;
                }
            }
            break (text, parsed);
        };
        if parsed.kind() != ClientEventKind::ResponseCreate {
            bump(&self.shard.counters.client_frame_errors);
            let t = parsed.event_type.as_deref().unwrap_or_default();
            let err = GatewayError::new(
                400,
                ErrorType::InvalidRequest,
                "unsupported_event_type",
                format!("unsupported event type `{t}`: send `response.create`"),
            );
            return self.report(sink, &err.into()).await;
        }
        let counters = &self.shard.counters;
        bump(&counters.turns);
        match self.request_type {
            RequestType::Ws => bump(&counters.requests_ws),
            RequestType::Stream => bump(&counters.requests_stream),
            RequestType::Sync => bump(&counters.requests_sync),
            // Realtime sessions have their own relay and never run a turn.
            RequestType::Realtime => {}
        }
        let model = parsed.model.as_deref().unwrap_or_default().to_string();
        let retry_cfg = self.shard.config.upstream.retry.clone();
        if let Some(previous) = parsed.previous_response_id.as_deref() {
            self.route_chained(previous).await;
        }
        let shard = self.shard.clone();
        let inputs = shard
            .sticky
            .chain_inputs(
                &shard.counters,
                &self.identity.group,
                self.session,
                self.last.as_deref(),
                &parsed,
            )
            .await;
        let facts_chain = inputs.facts(&parsed);
        let mut previous = normalizer::pairing_for_turn(&shard.counters, &facts_chain).previous;
        // A turn the normalizer chains to another response than the frame names (an injected or
        // realigned id) runs where that response lives, as if the client had sent its id.
        let chained_by_normalizer = match previous {
            PreviousId::Set(id) if parsed.previous_response_id.as_deref() != Some(id) => Some(id),
            _ => None,
        };
        if let Some(id) = chained_by_normalizer {
            self.routed = false;
            self.route_chained(id).await;
        }
        let depends_on_connection = parsed.is_store_disabled()
            && (parsed.previous_response_id.is_some() || chained_by_normalizer.is_some());
        let mut recoveries = recovery::Attempts::default();

        let mut attempts = 0u32;
        let mut retries = 0u32;
        let mut tried: Vec<usize> = Vec::new();
        let mut fresh = false;
        let mut stale_used = false;
        let mut fallback_http = false;
        loop {
            let Some(pool) = self.choose_pool(&tried) else {
                bump(&self.shard.counters.turns_failed);
                failed_after_retry(&self.shard.counters, attempts);
                let err = self.no_account_error();
                return self.report(sink, &err).await;
            };
            let now = Instant::now();
            let use_http = self.shard.live.account_forced_http(pool.account.index)
                || !pool.account.supports_ws()
                || fallback_http
                || pool.ws_refused(now);
            if use_http && parsed.is_warmup() {
                return self
                    .answer_warmup(sink, &frame, &model, received, &pool)
                    .await;
            }
            attempts += 1;
            bump(&self.shard.counters.attempts);
            pool.breaker.begin(now);
            let attempt = if use_http {
                self.attempt_http(sink, &pool, &frame, &parsed, previous, fresh)
                    .await
            } else {
                self.attempt_ws(
                    sink,
                    &pool,
                    &frame,
                    &text,
                    &parsed,
                    previous,
                    depends_on_connection,
                    fresh,
                )
                .await
            };
            fresh = false;
            match attempt.outcome {
                Outcome::Terminal {
                    kind,
                    response_id,
                    usage,
                    output,
                    pending_calls,
                    first_event_at,
                } => {
                    pool.breaker.on_success(Instant::now());
                    if let (Some(id), Some(output)) = (&response_id, &output) {
                        // Upstream keeps no store=false response over HTTP: the gateway keeps
                        // the context, so the next turn can chain from it on any transport.
                        if let Some(ctx) = warmup::continuation(&frame, output) {
                            let group = &self.identity.group;
                            self.shard
                                .warmups
                                .borrow_mut()
                                .insert(id.clone(), group, ctx);
                        }
                    }
                    if let Some(id) = &response_id {
                        let conn = attempt.conn.unwrap_or(NO_CONNECTION);
                        self.remember(id, &pool, conn, pending_calls);
                    }
                    self.shard.counters.bump_labeled("terminal", kind.as_str());
                    if kind == TerminalKind::Completed {
                        bump(&self.shard.counters.turns_completed);
                    } else {
                        bump(&self.shard.counters.turns_other_terminal);
                    }
                    let duration = received.elapsed();
                    let ttft = first_event_at.map(|t| t.duration_since(received));
                    let metrics = &self.shard.metrics;
                    metrics.record(Hist::TurnDuration, duration);
                    if let Some(ttft) = ttft {
                        metrics.record(Hist::ClientTtft, ttft);
                    }
                    // One line per turn at info (operators grep it); the write itself happens on
                    // the log writer thread, not here (`logging::init`).
                    tracing::info!(
                        key_id = %self.identity.key_id,
                        group = %self.identity.group,
                        account = %pool.account.config.id,
                        model = %model,
                        response_id = response_id.as_deref().unwrap_or(""),
                        status = kind.as_str(),
                        request_type = self.request_type.as_str(),
                        transport = if use_http { "http" } else { "ws" },
                        attempts,
                        input_tokens = usage.map(|u| u.input_tokens).unwrap_or(0),
                        output_tokens = usage.map(|u| u.output_tokens).unwrap_or(0),
                        duration_us = duration.as_micros() as u64,
                        "turn"
                    );
                    self.record_usage(UsageFacts {
                        kind,
                        response_id: response_id.as_deref(),
                        usage,
                        model: &model,
                        account: &pool.account.config.id,
                        ttft,
                        duration,
                        attempts,
                    });
                    self.keep_or_release(&parsed);
                    return TurnEnd::Done;
                }
                Outcome::UpstreamErrorEvent => {
                    pool.breaker.on_success(Instant::now());
                    self.shard.counters.bump_labeled("terminal", "error");
                    bump(&self.shard.counters.turns_upstream_error);
                    failed_after_retry(&self.shard.counters, attempts);
                    self.drop_lease();
                    return TurnEnd::Done;
                }
                Outcome::Preempted { next, settled } => {
                    // The client was told already (the relay sent `response_preempted`).
                    pool.breaker.abandon();
                    bump(&self.shard.counters.turns_preempted);
                    match settled {
                        // Nothing went upstream: the connection is as clean as before.
                        Settled::Unsent => self.keep_or_release(&parsed),
                        // Upstream finished the response: its connection is clean and the
                        // work it did is billed like any other turn's.
                        Settled::Terminal {
                            kind,
                            response_id,
                            usage,
                        } => {
                            self.record_usage(UsageFacts {
                                kind,
                                response_id: response_id.as_deref(),
                                usage,
                                model: &model,
                                account: &pool.account.config.id,
                                ttft: None,
                                duration: received.elapsed(),
                                attempts,
                            });
                            self.keep_or_release(&parsed);
                        }
                        Settled::Unknown => self.drop_lease(),
                    }
                    return TurnEnd::Preempted(next);
                }
                Outcome::ClientGone => {
                    pool.breaker.abandon();
                    bump(&self.shard.counters.turns_client_gone);
                    self.drop_lease();
                    return TurnEnd::ClientGone;
                }
                Outcome::Failed { relayed, failure } => {
                    self.drop_lease();
                    if let Some(code) = failure.close_code {
                        let counters = &self.shard.counters;
                        counters.bump_labeled("close_codes", &code.to_string());
                    }
                    let facts = AttemptFacts {
                        relayed,
                        reused: attempt.reused,
                        stale_used,
                        fallback_used: fallback_http,
                        retries,
                        max_attempts: retry_cfg.max_attempts,
                        elsewhere: self.elsewhere(&tried, pool.account.index),
                    };
                    let action = failure::decide(&failure, &facts);
                    self.apply_breaker(&pool, action.breaker());
                    let counters = &self.shard.counters;
                    match action {
                        Action::RetryFresh => {
                            bump(&counters.stale_retries);
                            stale_used = true;
                            fresh = true;
                        }
                        Action::FallBack {
                            reason,
                            refused_upgrade,
                        } => {
                            counters.bump_labeled("fallbacks", reason);
                            if refused_upgrade {
                                pool.mark_ws_refused(Instant::now());
                            }
                            tracing::info!(account = %pool.account.config.id, reason, "falling back to HTTP upstream");
                            fallback_http = true;
                        }
                        Action::BackOff {
                            reason,
                            retry_after,
                        } => {
                            if !tried.contains(&pool.account.index) {
                                tried.push(pool.account.index);
                            }
                            retries += 1;
                            counters.bump_labeled("retries", reason);
                            runtime::sleep(backoff(&retry_cfg, retries, retry_after)).await;
                        }
                        Action::Recover { reason } => {
                            // The connection is not reused after an error event, and a recovery
                            // replay stays on the account (a stored response lives there).
                            self.prefer = Some(Prefer {
                                account: pool.account.index,
                                connection: None,
                            });
                            let sent_previous = match previous {
                                PreviousId::AsSent => parsed.previous_response_id.as_deref(),
                                PreviousId::Set(id) => Some(id),
                                PreviousId::Clear => None,
                            };
                            let decision = recovery::decide(
                                &RecoveryFacts {
                                    reason,
                                    frame: &parsed,
                                    sent_previous,
                                    session_last: facts_chain.session_last,
                                    pending_of_last: facts_chain.pending_of_last,
                                },
                                &recoveries,
                            );
                            recoveries.record(&decision);
                            counters.bump_labeled("recovery", decision.label());
                            match decision {
                                Recovery::AlignTo(_) => {
                                    // The only id `decide` aligns to is the session's last
                                    // response.
                                    if let Some(last) = facts_chain.session_last {
                                        previous = PreviousId::Set(last);
                                    }
                                }
                                Recovery::ReplayWithoutPrevious => previous = PreviousId::Clear,
                                Recovery::PassToClient(_) => {
                                    counters.bump_labeled("terminal", "error");
                                    bump(&counters.turns_upstream_error);
                                    failed_after_retry(counters, attempts);
                                    tracing::info!(
                                        key_id = %self.identity.key_id,
                                        group = %self.identity.group,
                                        account = %pool.account.config.id,
                                        model = %model,
                                        status = "error",
                                        error = reason.as_str(),
                                        request_type = self.request_type.as_str(),
                                        attempts,
                                        "turn"
                                    );
                                    return self.report(sink, &failure.error).await;
                                }
                            }
                        }
                        Action::Report { exhausted, .. } => {
                            if exhausted {
                                bump(&counters.retries_exhausted);
                            }
                            bump(&counters.turns_failed);
                            failed_after_retry(counters, attempts);
                            return self.report(sink, &failure.error).await;
                        }
                    }
                }
            }
        }
    }

    /// Whether another healthy account of the client's group exists besides those `tried` and
    /// `current`.
    fn elsewhere(&self, tried: &[usize], current: usize) -> bool {
        let group = &self.identity.group;
        scheduler::any_available(&self.shard, group, |i| i == current || tried.contains(&i))
    }

    /// Applies a failure's effect to `pool`'s circuit breaker.
    fn apply_breaker(&self, pool: &Pool, effect: BreakerEffect) {
        match effect {
            BreakerEffect::Success => pool.breaker.on_success(Instant::now()),
            BreakerEffect::Abandon => pool.breaker.abandon(),
            BreakerEffect::Failure => {
                if pool.breaker.on_failure(Instant::now()) {
                    bump(&self.shard.counters.breaker_opens);
                    tracing::warn!(account = %pool.account.config.id, "circuit breaker opened");
                }
            }
        }
    }

    /// Sets the turn's preferred account and connection when it chains to `previous`: from the
    /// driver's own memory when it is the last response this client got (no lookup), else from
    /// the response's binding, unless the session already routed this turn.
    async fn route_chained(&mut self, previous: &str) {
        if self.routed || self.lease.is_some() {
            return;
        }
        match self.last_at {
            Some((account, connection)) if self.last.as_deref() == Some(previous) => {
                self.prefer = Some(Prefer {
                    account,
                    connection: Some(connection).filter(|c| *c != NO_CONNECTION),
                });
            }
            _ => {
                self.route(previous).await;
            }
        }
    }

    /// Records where a response lives (binding, pending calls, the session's last response),
    /// in the shard cache and, through the control thread, the state store.
    fn remember(
        &mut self,
        response_id: &str,
        pool: &Pool,
        connection: u64,
        pending_calls: Option<Vec<String>>,
    ) {
        let shard = &self.shard;
        shard.sticky.remember_turn(
            &shard.counters,
            TurnState {
                group: self.identity.group.clone(),
                response_id: response_id.to_string(),
                binding: Binding {
                    account: pool.account.config.id.clone(),
                    instance: shard.config.state.instance.clone(),
                    shard: shard.id,
                    connection,
                },
                session: self.session,
                pending: pending_calls,
            },
        );
        self.last = Some(response_id.to_string());
        self.last_at = Some((pool.account.index, connection));
    }

    /// Reports a failure to the client; the request is over.
    async fn report<S: ClientSink>(&mut self, sink: &mut S, err: &TurnError) -> TurnEnd {
        match sink.fail(err).await {
            Ok(()) => TurnEnd::Done,
            Err(_) => TurnEnd::ClientGone,
        }
    }

    /// The turn `frame` with the context it chains to merged in, when its `previous_response_id`
    /// is a warm-up the gateway answered or a store=false response carried over HTTP (and the
    /// gateway still remembers it).
    ///
    /// This is the one rewrite outside the normalizer's splice, on purpose: it rebuilds `input`
    /// (the remembered context, then the turn's items), fills fields from the remembered frame
    /// and replaces the gateway-issued id with the warm-up's own, which makes a new frame
    /// that must be parsed again before anything else is decided — the pairing decision reads
    /// the merged frame's previous id and tool outputs, and the normalizer's single splice then
    /// works on it like on any client frame.
    fn expand_warmup_chain(&self, parsed: &ClientFrame<'_>, frame: &[u8]) -> Option<Bytes> {
        let id = parsed.previous_response_id.as_deref()?;
        let cache = self.shard.warmups.borrow();
        if cache.is_empty() {
            return None;
        }
        let warm = cache.get(id, &self.identity.group)?;
        drop(cache);
        let merged = warmup::merge(&warm, frame)?;
        bump(&self.shard.counters.warmup_chains_merged);
        Some(merged)
    }

    /// Counts the upstream connection an attempt got: reused, or a new dial (per account, with
    /// its dial time in `hist`).
    fn count_conn(&self, pool: &Pool, reused: bool, hist: Hist, dial_time: std::time::Duration) {
        let counters = &self.shard.counters;
        if reused {
            bump(&counters.pool_reuses);
        } else {
            bump(&counters.pool_dials);
            counters.bump_labeled("dials", &pool.account.config.id);
            self.shard.metrics.record(hist, dial_time);
        }
    }

    /// Answers a warm-up itself (its transport is HTTP, which rejects `generate`).
    async fn answer_warmup<S: ClientSink>(
        &mut self,
        sink: &mut S,
        frame: &Bytes,
        model: &str,
        received: Instant,
        pool: &Rc<Pool>,
    ) -> TurnEnd {
        bump(&self.shard.counters.warmups_answered);
        let id = warmup::new_id();
        tracing::info!(
            key_id = %self.identity.key_id,
            account = %pool.account.config.id,
            response_id = %id,
            "warm-up answered by the gateway (HTTP upstream)"
        );
        self.shard
            .warmups
            .borrow_mut()
            .insert(id.clone(), &self.identity.group, frame.clone());
        self.remember(&id, pool, NO_CONNECTION, None);
        for (i, event) in warmup::answer(&id, model).into_iter().enumerate() {
            let et = if i == 0 {
                "response.created"
            } else {
                "response.completed"
            };
            if sink.feed(Utf8Bytes::from(event), et).await.is_err() {
                return TurnEnd::ClientGone;
            }
        }
        if sink.flush().await.is_err() {
            return TurnEnd::ClientGone;
        }
        bump(&self.shard.counters.turns_completed);
        self.shard.counters.bump_labeled("terminal", "completed");
        let duration = received.elapsed();
        self.shard.metrics.record(Hist::TurnDuration, duration);
        self.record_usage(UsageFacts {
            kind: TerminalKind::Completed,
            response_id: Some(&id),
            usage: None,
            model,
            account: &pool.account.config.id,
            ttft: Some(duration),
            duration,
            attempts: 0,
        });
        TurnEnd::Done
    }

    /// The pool for the next attempt: the session's held connection, else the account the
    /// turn's chain lives on (when it is healthy), else the scheduler's pick among untried
    /// accounts, else among all healthy ones.
    fn choose_pool(&self, tried: &[usize]) -> Option<Rc<Pool>> {
        if let Some(lease) = &self.lease {
            let pool = lease.pool();
            if !tried.contains(&pool.account.index) {
                return Some(pool.clone());
            }
        }
        if let Some(prefer) = self.prefer {
            let pool = &self.shard.pools[prefer.account];
            if !tried.contains(&prefer.account)
                && pool.budget() > 0
                && pool.breaker.is_available(Instant::now())
            {
                return Some(pool.clone());
            }
        }
        let group = &self.identity.group;
        scheduler::pick(&self.shard, group, tried).or_else(|| {
            if tried.is_empty() {
                None
            } else {
                scheduler::pick(&self.shard, group, &[])
            }
        })
    }

    fn no_account_error(&self) -> TurnError {
        let has_accounts = self
            .shard
            .groups
            .get(&self.identity.group)
            .is_some_and(|g| !g.is_empty());
        let message = if has_accounts {
            "every upstream account of this key's group is failing (circuit open); retry later"
        } else {
            "no upstream account is available for this key's group"
        };
        GatewayError::new(503, ErrorType::Server, "no_available_account", message).into()
    }

    /// The idle connection the turn's chain lives on, when the turn prefers one of `pool`'s
    /// (tried once per turn, never for a fresh retry). Counted as `affinity{connection_reused}`,
    /// `affinity{connection_gone}` (closed or retired) or `affinity{connection_busy}` (still held
    /// by a live session): then the turn goes on with another connection of the same account,
    /// and recovery handles a chain error.
    async fn preferred_conn(&mut self, pool: &Rc<Pool>, fresh: bool) -> Option<Lease> {
        let prefer = self.prefer.as_mut()?;
        if prefer.account != pool.account.index {
            return None;
        }
        let id = prefer.connection.take()?;
        if fresh {
            return None;
        }
        let counters = &self.shard.counters;
        for tried in 0..AFFINITY_CONN_TRIES {
            if tried > 0 {
                runtime::sleep(std::time::Duration::from_millis(10)).await;
            }
            if let Some(lease) = pool.acquire_conn(id) {
                counters.bump_labeled("affinity", "connection_reused");
                return Some(lease);
            }
            if !pool.is_leased(id) {
                counters.bump_labeled("affinity", "connection_gone");
                return None;
            }
        }
        counters.bump_labeled("affinity", "connection_busy");
        None
    }

    /// One attempt over a pooled upstream WebSocket.
    #[allow(clippy::too_many_arguments)]
    async fn attempt_ws<S: ClientSink>(
        &mut self,
        sink: &mut S,
        pool: &Rc<Pool>,
        frame: &Bytes,
        text: &Utf8Bytes,
        parsed: &ClientFrame<'_>,
        previous: PreviousId<'_>,
        depends_on_connection: bool,
        fresh: bool,
    ) -> Attempt {
        let max_age = self.shard.config.upstream.max_conn_age;
        if let Some(lease) = self.lease.as_mut() {
            // Retire an old connection before upstream's 60-minute limit, unless this turn's
            // state lives on it (then upstream's limit error tells the client to start over).
            let other_pool = !Rc::ptr_eq(lease.pool(), pool);
            if other_pool || (lease.conn().is_expired(max_age) && !depends_on_connection) {
                if !other_pool {
                    bump(&lease.pool().counters.retired);
                }
                self.drop_lease();
            }
        }
        if self.lease.is_none() {
            let asked = Instant::now();
            let lease = match self.preferred_conn(pool, fresh).await {
                Some(lease) => Ok(lease),
                None if fresh => pool.acquire_fresh(&self.forward).await,
                None => pool.acquire(&self.forward).await,
            };
            self.shard
                .metrics
                .record(Hist::AcquireWait, asked.elapsed());
            match lease {
                Ok(mut lease) => {
                    let dial_time = lease.conn().dial_time;
                    self.count_conn(pool, lease.reused, Hist::DialWs, dial_time);
                    self.lease = Some(lease);
                }
                Err(e) => {
                    if matches!(e, AcquireError::QueueFull) {
                        bump(&self.shard.counters.queue_rejections);
                    }
                    tracing::warn!(account = %pool.account.config.id, error = %e, "upstream acquire failed");
                    return Attempt::failed(Failure::acquire(&e), false);
                }
            }
        }
        let Some(lease) = self.lease.as_mut() else {
            return Attempt::failed(
                Failure::local(upstream_failed("no upstream connection")),
                false,
            );
        };
        let (payload, rewrite) =
            normalizer::rewrite(frame, parsed, previous, &pool.account.config.model_map);
        let reused = lease.reused || lease.conn().turns > 0;
        let conn_id = lease.conn().id;
        let payload = if payload.as_ptr() == frame.as_ptr() && payload.len() == frame.len() {
            text.clone()
        } else {
            match Utf8Bytes::try_from(payload) {
                Ok(t) => t,
                Err(_) => {
                    let err = GatewayError::new(
                        500,
                        ErrorType::Server,
                        "rewrite_failed",
                        "the rewritten frame is not valid UTF-8",
                    );
                    return Attempt::failed(Failure::local(err), false);
                }
            }
        };
        let early = match relay::before_send(sink, &self.shard.counters).await {
            BeforeSend::Go(early) => early,
            BeforeSend::Ended(outcome) => {
                return Attempt {
                    outcome,
                    reused,
                    conn: Some(conn_id),
                }
            }
        };
        let ws = lease.conn().ws().await;
        // An upstream that stops reading must not hold the turn forever: the send gets the same
        // deadline as upstream silence.
        let send_limit = self.shard.config.upstream.event_timeout;
        let sent = runtime::timeout(send_limit, ws.send(Message::Text(payload))).await;
        if !matches!(sent, Some(Ok(()))) {
            return Attempt {
                conn: Some(conn_id),
                ..Attempt::failed(Failure::send_failed(sent.is_none()), reused)
            };
        }
        let sent_at = Instant::now();
        let env = RelayEnv {
            counters: &self.shard.counters,
            metrics: &self.shard.metrics,
            event_timeout: self.shard.config.upstream.event_timeout,
            capture_output: false,
            secrets: &[pool.account.config.api_key.expose()],
            preempt: &self.preempt,
        };
        let outcome = relay::relay(&env, Source::Ws(ws), sink, &rewrite, sent_at, early).await;
        if ends_clean(&outcome) {
            if let Some(lease) = self.lease.as_mut() {
                lease.conn().turns += 1;
            }
        }
        Attempt {
            outcome,
            reused,
            conn: Some(conn_id),
        }
    }

    /// One attempt over HTTP/SSE.
    async fn attempt_http<S: ClientSink>(
        &mut self,
        sink: &mut S,
        pool: &Rc<Pool>,
        frame: &Bytes,
        parsed: &ClientFrame<'_>,
        previous: PreviousId<'_>,
        fresh: bool,
    ) -> Attempt {
        // A session moving to HTTP gives its WebSocket back.
        self.release();
        let _in_flight = pool.http_request();
        let (payload, rewrite) =
            normalizer::rewrite(frame, parsed, previous, &pool.account.config.model_map);
        let Some(body) = http_body(&payload) else {
            let err = GatewayError::new(
                400,
                ErrorType::InvalidRequest,
                "invalid_json",
                "the request is not a JSON object",
            );
            return Attempt::failed(Failure::local(err), false);
        };
        let (conn, reused) = match pool.http_conn(fresh).await {
            Ok(c) => c,
            Err(e) => return Attempt::failed(Failure::dial(&e), false),
        };
        self.count_conn(pool, reused, Hist::DialHttp, conn.dial_time);
        let early = match relay::before_send(sink, &self.shard.counters).await {
            BeforeSend::Go(early) => early,
            BeforeSend::Ended(outcome) => {
                // Nothing was sent on it: the connection is clean.
                pool.http_give_back(conn);
                return Attempt {
                    outcome,
                    reused,
                    conn: None,
                };
            }
        };
        let cfg = &self.shard.config.upstream;
        let sent_at = Instant::now();
        let mut resp = match conn.send(&pool.account, cfg, &self.forward, &body).await {
            Ok(r) => r,
            Err(e) => return Attempt::failed(Failure::http(&e), reused),
        };
        if resp.status != 200 || !resp.is_sse {
            let status = resp.status;
            let retry_after = resp.retry_after;
            let body = resp.read_all().await.unwrap_or_default();
            if let Some(conn) = resp.finish().await {
                pool.http_give_back(conn);
            }
            let secrets = [pool.account.config.api_key.expose()];
            let failure = Failure::http_answer(status, retry_after, &body, &secrets);
            tracing::warn!(account = %pool.account.config.id, status, "upstream HTTP request failed");
            return Attempt::failed(failure, false);
        }
        let env = RelayEnv {
            counters: &self.shard.counters,
            metrics: &self.shard.metrics,
            event_timeout: cfg.event_timeout,
            capture_output: parsed.is_store_disabled(),
            secrets: &[pool.account.config.api_key.expose()],
            preempt: &self.preempt,
        };
        let source = Source::Http(&mut resp);
        let outcome = relay::relay(&env, source, sink, &rewrite, sent_at, early).await;
        if ends_clean(&outcome) {
            if let Some(conn) = resp.finish().await {
                pool.http_give_back(conn);
            }
        }
        // An HTTP exchange leaves no state on its connection: the binding names none.
        Attempt {
            outcome,
            reused,
            conn: None,
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
                    runtime::unix_micros() / 1_000,
                    shard.counters.turns.get()
                )
            }
        };
        let record = UsageRecord {
            response_id,
            ts_ms: runtime::unix_micros() / 1_000,
            group: self.identity.group.clone(),
            key_id: self.identity.key_id.clone(),
            account: f.account.to_string(),
            model: f.model.to_string(),
            request_type: self.request_type,
            usage: f.usage.unwrap_or_default(),
            ttft_us: f.ttft.map(|d| d.as_micros() as u64),
            duration_us: f.duration.as_micros() as u64,
            attempts: f.attempts,
            status: f.kind.as_str().to_string(),
            instance: shard.config.state.instance.clone(),
            shard: shard.id,
            realtime: None,
        };
        shard.submit_usage(Box::new(record));
    }
}

/// Whether an attempt's connection was read to a terminal event (relayed, or read after the
/// client preempted the turn): it is clean for the next request.
fn ends_clean(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Terminal { .. }
            | Outcome::Preempted {
                settled: Settled::Terminal { .. },
                ..
            }
    )
}
