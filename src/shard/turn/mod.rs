//! One client request, however it travels: the attempt loop, and acting on the failure table's
//! decision for each failed attempt.
//!
//! "What the client asked" (a `response.create` frame, from a WebSocket session or a POST body)
//! is separated from "how it travels": each attempt picks an account (skipping open breakers and,
//! when another healthy one exists, accounts already tried), a transport (a pooled WebSocket, or
//! HTTP/SSE when the account or the global switch says so or WebSocket was refused), relays the
//! events into the client's sink, and acts on what the failure table decides for a failed attempt
//! (`shard/failure/`). Nothing is retried once the client has seen an event.
//!
//! Sticky state around the loop: a turn chained by `previous_response_id` prefers the account
//! (and, on this shard, the idle connection) its previous response lives on; the pairing decision
//! on `previous_response_id` is made once per turn and applied by each attempt's single rewrite;
//! a chain error before any output goes to the recovery matrix (at most one alignment and one
//! replay without the id); a terminal event records the response's binding, its pending tool
//! calls and the session's last response.
//!
//! The driver's other jobs live in one file each: `frame` (the checks a client frame passes
//! first), `route` (where a turn runs: affinity, the account and connection it prefers),
//! `attempt` (one attempt over each transport), `finish` (end-of-turn bookkeeping: bindings,
//! counters, the turn log line, the usage record) and `http_warmup` (warm-ups the gateway answers).

mod attempt;
mod finish;
pub mod frame;
mod http_warmup;
mod route;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use async_tungstenite::tungstenite::Utf8Bytes;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::protocol::error_body::GatewayError;
use crate::protocol::ClientFrame;
use crate::runtime;
use crate::state::SessionKey;
use crate::usage::RequestType;

use super::armed_timer::ShardDeadline;
use super::auth::ClientIdentity;
use super::canary::{self, CanarySlot};
use super::counters::bump;
use super::failure::{self, Action, AttemptFacts, BreakerEffect};
use super::keepalive;
use super::normalizer::{self, PreviousId};
use super::oauth_retry::{self, AfterUnauthorized};
use super::pool::{Lease, Pool};
use super::preempt::PreemptBudget;
use super::recovery::{self, Recovery, RecoveryFacts};
use super::relay::Outcome;
use super::retry::backoff;
use super::sink::{ClientSink, TurnError};
use super::{scheduler, Shard};

use finish::{failed_after_retry, Done, TurnMeta, TurnNames};

/// The connection id a binding carries when no pooled WebSocket holds the response (a turn
/// over HTTP upstream, a warm-up the gateway answered); pooled connection ids start at 1.
const NO_CONNECTION: u64 = 0;

/// How a request ended, for its caller.
pub enum TurnEnd {
    /// The request is over (answered or failed); the client may send another.
    Done,
    /// A new `response.create` arrived mid-turn: run it next.
    Preempted(Utf8Bytes),
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
    /// Where the session stands in each account's WebSocket canary, fixed for its life.
    canary: CanarySlot,
    /// The last response this client got: the head of its chain (shared with the sticky state
    /// and the usage record of the turn that produced it).
    last: Option<Arc<str>>,
    /// Where `last` was made: account index and connection id.
    last_at: Option<(usize, u64)>,
    /// Where the current turn should run, from its previous response's binding.
    prefer: Option<Prefer>,
    /// The current turn's affinity was already decided (by the session, before a handoff).
    routed: bool,
    /// Connections this client may still have closed at once by preempting its turns.
    preempt: Cell<PreemptBudget>,
    /// `lease` was taken before the session's first turn ([`Driver::lease_ahead`]).
    ahead: bool,
    /// The next turn's frame as the client masked it, when it came as one frame
    /// ([`Driver::set_client_wire`]).
    client_wire: Option<Bytes>,
    /// The client's names as its turns' state and usage records carry them.
    names: TurnNames,
}

/// An account (and maybe one of its connections) a chained turn should run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefer {
    account: usize,
    connection: Option<u64>,
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
        let canary = session
            .as_ref()
            .map_or_else(|| shard.next_canary_slot(), CanarySlot::of_session);
        Driver {
            names: TurnNames::new(&identity),
            shard,
            identity,
            forward,
            request_type,
            lease: None,
            session,
            canary,
            last: None,
            last_at: None,
            prefer: None,
            routed: false,
            preempt: Cell::new(PreemptBudget::new(Instant::now())),
            ahead: false,
            client_wire: None,
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

    /// Pings the upstream connection held between turns ([`keepalive::keep_leased`]): to be
    /// raced against the client's next bytes and dropped when they come. `None` when the
    /// session holds no connection or pings are off; boxed, so that a session task holds it
    /// only while it waits with a connection ([`keepalive::or_forever`]).
    pub fn keep_alive<T: 'static>(&mut self) -> Option<keepalive::Keeping<'_, T>> {
        let u = &self.shard.config.upstream;
        let (interval, pong_timeout) = (u.ping_interval, u.pong_timeout);
        if interval.is_zero() || self.lease.is_none() {
            return None;
        }
        Some(Box::pin(keepalive::keep_leased(
            &mut self.lease,
            interval,
            pong_timeout,
        )))
    }

    pub(super) fn drop_lease(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.discard();
        }
    }

    /// Handles one client `response.create` frame, from receipt to the last event. The frame is
    /// text whose UTF-8 its reader checked (the client WebSocket's, the POST body's): the turn
    /// never checks it again. The upstream send and the relay's silence run under `timer`, the
    /// client task's one timer (a glommio timer built per turn was an allocation and a timer-map
    /// insert and removal each, two per turn).
    pub async fn run<S: ClientSink>(
        &mut self,
        sink: &mut S,
        frame: Utf8Bytes,
        received: Instant,
        timer: &mut ShardDeadline,
    ) -> TurnEnd {
        let end = self.turn(sink, frame, received, timer).await;
        self.reset_after_turn();
        end
    }

    /// [`Driver::run`] for a frame its caller has already parsed with [`frame::check`]: an HTTP
    /// front parses a POST's frame to learn how to answer it (`stream`), and the turn takes that
    /// parse instead of making its own (a 30 KB body is read once, not twice).
    pub async fn run_parsed<S: ClientSink>(
        &mut self,
        sink: &mut S,
        frame: &Utf8Bytes,
        parsed: ClientFrame<'_>,
        received: Instant,
        timer: &mut ShardDeadline,
    ) -> TurnEnd {
        let _in_flight = self.shard.turn_guard();
        let end = self.parsed_turn(sink, frame, parsed, received, timer).await;
        self.reset_after_turn();
        end
    }

    /// What a turn leaves behind for the next: nothing.
    fn reset_after_turn(&mut self) {
        self.ahead = false;
        self.prefer = None;
        self.routed = false;
        self.client_wire = None;
    }

    /// The next [`Driver::run`]'s frame as the client put it on the wire (one masked text
    /// frame): unless the turn rewrites the frame, it goes upstream as these bytes, the
    /// client's masking key kept, instead of being copied and masked again.
    pub fn set_client_wire(&mut self, wire: Option<Bytes>) {
        self.client_wire = wire;
    }

    async fn turn<S: ClientSink>(
        &mut self,
        sink: &mut S,
        frame: Utf8Bytes,
        received: Instant,
        timer: &mut ShardDeadline,
    ) -> TurnEnd {
        // Counted as in flight (a graceful shutdown waits for it) until this returns.
        let _in_flight = self.shard.turn_guard();
        // Validated once here, before any lease: a bad frame never costs the session its
        // connection, and an unrewritten frame goes upstream as this very buffer.
        match frame::check(&frame) {
            Ok(parsed) => {
                self.parsed_turn(sink, &frame, parsed, received, timer)
                    .await
            }
            Err(err) => self.refuse_frame(sink, err).await,
        }
    }

    /// The turn of a parsed frame. A frame chained to a warm-up the gateway answered is
    /// expanded once, then validated again.
    async fn parsed_turn<S: ClientSink>(
        &mut self,
        sink: &mut S,
        frame: &Utf8Bytes,
        parsed: ClientFrame<'_>,
        received: Instant,
        timer: &mut ShardDeadline,
    ) -> TurnEnd {
        let Some(merged) = self.expand_warmup_chain(&parsed, frame.as_str()) else {
            return self
                .checked_turn(sink, frame, parsed, received, timer)
                .await;
        };
        // The frame going upstream is not the one the client sent.
        self.client_wire = None;
        match frame::check(&merged) {
            Ok(parsed) => {
                self.checked_turn(sink, &merged, parsed, received, timer)
                    .await
            }
            Err(err) => self.refuse_frame(sink, err).await,
        }
    }

    /// Answers a frame that is not a turn's: counted, and the client told why.
    async fn refuse_frame<S: ClientSink>(&mut self, sink: &mut S, err: GatewayError) -> TurnEnd {
        bump(&self.shard.counters.client_frame_errors);
        self.report(sink, &err.into()).await
    }

    /// The turn of a parsed frame (expanded already, when it chains to a warm-up).
    async fn checked_turn<S: ClientSink>(
        &mut self,
        sink: &mut S,
        frame: &Utf8Bytes,
        parsed: ClientFrame<'_>,
        received: Instant,
        timer: &mut ShardDeadline,
    ) -> TurnEnd {
        if let Err(err) = frame::check_kind(&parsed) {
            return self.refuse_frame(sink, err).await;
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
        let model = parsed.model.as_deref().unwrap_or_default();
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
                self.last.as_ref(),
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
        let mut oauth_retried = false;
        loop {
            let Some(pool) = self.choose_pool(&tried) else {
                bump(&self.shard.counters.turns_failed);
                failed_after_retry(&self.shard.counters, attempts);
                let err = self.no_account_error();
                return self.report(sink, &err).await;
            };
            let now = Instant::now();
            let use_http = !self.shard.live.ws_allowed(pool.account.index, self.canary)
                || !pool.account.supports_ws()
                || fallback_http
                || pool.ws_refused(now);
            if use_http && parsed.is_warmup() {
                return self
                    .answer_warmup(sink, frame.as_ref(), model, received, &pool)
                    .await;
            }
            attempts += 1;
            bump(&self.shard.counters.attempts);
            pool.breaker.begin(now);
            let attempt = if use_http {
                self.attempt_http(sink, &pool, frame, &parsed, previous, fresh, timer)
                    .await
            } else {
                self.attempt_ws(
                    sink,
                    &pool,
                    frame,
                    &parsed,
                    previous,
                    depends_on_connection,
                    fresh,
                    now,
                    timer,
                )
                .await
            };
            fresh = false;
            canary::record_attempt(
                &self.shard.tallies,
                pool.account.index,
                !use_http,
                &attempt.outcome,
                received,
            );
            let meta = TurnMeta {
                model,
                pool: &pool,
                received,
                attempts,
            };
            match attempt.outcome {
                Outcome::Terminal {
                    kind,
                    response_id,
                    usage,
                    output,
                    pending_calls,
                    first_event_at,
                } => {
                    let done = Done {
                        kind,
                        response_id,
                        usage,
                        output,
                        pending_calls,
                        first_event_at,
                        conn: attempt.conn.unwrap_or(NO_CONNECTION),
                        over_http: use_http,
                    };
                    self.finish_terminal(&meta, frame, &parsed, done);
                    return TurnEnd::Done;
                }
                Outcome::UpstreamErrorEvent => {
                    self.finish_error_event(&meta);
                    return TurnEnd::Done;
                }
                Outcome::Preempted { next, settled } => {
                    self.finish_preempted(&meta, &parsed, settled);
                    return TurnEnd::Preempted(next);
                }
                Outcome::ClientGone => {
                    self.finish_client_gone(&meta);
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
                        token_refreshable: !oauth_retried
                            && pool.account.credential_generation().is_some(),
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
                        Action::RefreshToken => {
                            oauth_retried = true;
                            match oauth_retry::refresh(&self.shard, &pool).await {
                                AfterUnauthorized::Retry => fresh = true,
                                AfterUnauthorized::MoveOn => tried.push(pool.account.index),
                            }
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

    /// Reports a failure to the client; the request is over.
    pub(super) async fn report<S: ClientSink>(&mut self, sink: &mut S, err: &TurnError) -> TurnEnd {
        match sink.fail(err).await {
            Ok(()) => TurnEnd::Done,
            Err(_) => TurnEnd::ClientGone,
        }
    }
}
