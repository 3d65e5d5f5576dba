//! End-of-turn bookkeeping: where a response lives (binding, pending calls, the session's last
//! response), whether the session keeps its connection, the turn's counters, log line and usage
//! record.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Utf8Bytes;

use crate::control::TurnReport;
use crate::metrics::Hist;
use crate::protocol::{ClientFrame, TerminalKind, Usage};
use crate::runtime;
use crate::state::{Binding, TurnState};
use crate::usage::{RequestType, UsageRecord};

use super::super::auth::ClientIdentity;
use super::super::counters::{bump, ShardCounters};
use super::super::http_context;
use super::super::pool::Pool;
use super::super::relay::Settled;
use super::super::sticky::Sticky;
use super::Driver;

/// Counts a request that ended in an error after more than one attempt: the failures retries
/// did not save, whether or not the retry budget ran out (a retried `store=false` turn can end
/// in `previous_response_not_found` with budget left).
pub(super) fn failed_after_retry(counters: &ShardCounters, attempts: u32) {
    if attempts > 1 {
        bump(&counters.failed_after_retry);
    }
}

/// What every end of a turn is recorded with.
pub(super) struct TurnMeta<'a> {
    /// The model the client asked for.
    pub(super) model: &'a str,
    /// The account slice of the last attempt.
    pub(super) pool: &'a Rc<Pool>,
    /// When the client's frame arrived.
    pub(super) received: Instant,
    /// Attempts so far.
    pub(super) attempts: u32,
}

/// A response that ended with a terminal event relayed to the client.
pub(super) struct Done {
    pub(super) kind: TerminalKind,
    pub(super) response_id: Option<Arc<str>>,
    pub(super) usage: Option<Usage>,
    /// The response's `output` items, when captured (a store=false turn over HTTP).
    pub(super) output: Option<String>,
    pub(super) pending_calls: Option<Vec<String>>,
    pub(super) first_event_at: Option<Instant>,
    /// The pooled connection it lives on (`NO_CONNECTION` over HTTP).
    pub(super) conn: u64,
    /// It came over HTTP upstream.
    pub(super) over_http: bool,
}

/// The names a turn's state and usage record carry that stay the same turn after turn for one
/// client, shared once per driver: a turn copies none of them.
pub(super) struct TurnNames {
    group: Arc<str>,
    key_id: Arc<str>,
    /// The model of the last billed turn (a session asks for the same one turn after turn).
    model: Option<Arc<str>>,
    /// The account of the last turn (a session's turns stay on theirs).
    account: Option<Arc<str>>,
}

impl TurnNames {
    /// The names of `identity`'s turns.
    pub(super) fn new(identity: &ClientIdentity) -> Self {
        TurnNames {
            group: identity.group.clone(),
            key_id: identity.key_id.clone(),
            model: None,
            account: None,
        }
    }

    /// The account `id` as the shard's shared string: the last turn's when it is the same.
    fn account(&mut self, id: &str, sticky: &Sticky) -> Arc<str> {
        match &self.account {
            Some(last) if **last == *id => last.clone(),
            _ => self.account.insert(sticky.name(id)).clone(),
        }
    }

    /// `model` as a shared string: the last turn's when it is the same model.
    fn model(&mut self, model: &str) -> Arc<str> {
        match &self.model {
            Some(last) if **last == *model => last.clone(),
            _ => self.model.insert(Arc::from(model)).clone(),
        }
    }
}

/// What a usage record says besides the turn's [`TurnMeta`].
pub(super) struct UsageFacts {
    pub(super) kind: TerminalKind,
    /// Shared with the sticky state the turn left (one copy of the id per turn).
    pub(super) response_id: Option<Arc<str>>,
    pub(super) usage: Option<Usage>,
    pub(super) ttft: Option<Duration>,
    pub(super) duration: Duration,
}

impl Driver {
    /// A terminal event reached the client: the account is healthy, the response's binding and
    /// context are remembered, the turn is counted, logged and billed.
    pub(super) fn finish_terminal(
        &mut self,
        meta: &TurnMeta<'_>,
        frame: &Utf8Bytes,
        parsed: &ClientFrame<'_>,
        done: Done,
    ) {
        let Done {
            kind,
            response_id,
            usage,
            output,
            pending_calls,
            first_event_at,
            conn,
            over_http,
        } = done;
        let pool = meta.pool;
        let now = Instant::now();
        pool.breaker.on_success(now);
        if let (Some(id), Some(output)) = (&response_id, &output) {
            // Upstream keeps no store=false response over HTTP: the gateway keeps the context,
            // so the next turn can chain from it on any transport.
            if let Some(ctx) = http_context::continuation(frame, output) {
                let group = &self.identity.group;
                self.shard
                    .warmups
                    .borrow_mut()
                    .insert(id.to_string(), group, ctx);
            }
        }
        // Cached now; sent to the control thread with the usage record below.
        let state = response_id.as_ref().map(|id| {
            let state = self.turn_state(id, pool, conn, pending_calls);
            self.shard.sticky.cache_turn(&state, now);
            state
        });
        self.shard.counters.bump_labeled("terminal", kind.as_str());
        if kind == TerminalKind::Completed {
            bump(&self.shard.counters.turns_completed);
        } else {
            bump(&self.shard.counters.turns_other_terminal);
        }
        let duration = now.saturating_duration_since(meta.received);
        let ttft = first_event_at.map(|t| t.duration_since(meta.received));
        let metrics = &self.shard.metrics;
        metrics.record(Hist::TurnDuration, duration);
        if let Some(ttft) = ttft {
            metrics.record(Hist::ClientTtft, ttft);
        }
        // One line per turn at info (operators grep it); the write itself happens on the log
        // writer thread, not here (`logging::init`).
        tracing::info!(
            key_id = %self.identity.key_id,
            group = %self.identity.group,
            account = %pool.account.config.id,
            model = %meta.model,
            response_id = response_id.as_deref().unwrap_or(""),
            status = kind.as_str(),
            request_type = self.request_type.as_str(),
            transport = if over_http { "http" } else { "ws" },
            attempts = meta.attempts,
            input_tokens = usage.map(|u| u.input_tokens).unwrap_or(0),
            output_tokens = usage.map(|u| u.output_tokens).unwrap_or(0),
            duration_us = duration.as_micros() as u64,
            "turn"
        );
        let facts = UsageFacts {
            kind,
            response_id,
            usage,
            ttft,
            duration,
        };
        // The turn's state holds the account's shared name already: the record takes it
        // instead of comparing the account's id with the last one again.
        let account = match &state {
            Some(state) => state.binding.account.clone(),
            None => self
                .names
                .account(&pool.account.config.id, &self.shard.sticky),
        };
        let usage = self.usage_record(meta, facts, account);
        match state {
            Some(state) => self
                .shard
                .submit_turn(Box::new(TurnReport { usage, state })),
            None => self.shard.submit_usage(Box::new(usage)),
        }
        self.keep_or_release(parsed);
    }

    /// Upstream's `error` event was relayed: upstream answered (the account is healthy), but the
    /// connection is not trusted any more.
    pub(super) fn finish_error_event(&mut self, meta: &TurnMeta<'_>) {
        meta.pool.breaker.on_success(Instant::now());
        self.shard.counters.bump_labeled("terminal", "error");
        bump(&self.shard.counters.turns_upstream_error);
        failed_after_retry(&self.shard.counters, meta.attempts);
        self.drop_lease();
    }

    /// The client preempted the turn (and was told already: the relay sent
    /// `response_preempted`); the connection is kept as clean as the abandoned response left it.
    pub(super) fn finish_preempted(
        &mut self,
        meta: &TurnMeta<'_>,
        parsed: &ClientFrame<'_>,
        settled: Settled,
    ) {
        meta.pool.breaker.abandon();
        bump(&self.shard.counters.turns_preempted);
        match settled {
            // Nothing went upstream: the connection is as clean as before.
            Settled::Unsent => self.keep_or_release(parsed),
            // Upstream finished the response: its connection is clean and the work it did is
            // billed like any other turn's.
            Settled::Terminal {
                kind,
                response_id,
                usage,
            } => {
                let facts = UsageFacts {
                    kind,
                    response_id,
                    usage,
                    ttft: None,
                    duration: meta.received.elapsed(),
                };
                self.record_usage(meta, facts);
                self.keep_or_release(parsed);
            }
            Settled::Unknown => self.drop_lease(),
        }
    }

    /// The client left mid-turn: its connection, left mid-response, is discarded.
    pub(super) fn finish_client_gone(&mut self, meta: &TurnMeta<'_>) {
        meta.pool.breaker.abandon();
        bump(&self.shard.counters.turns_client_gone);
        self.drop_lease();
    }

    /// After a turn that left its connection clean: only a store=false response lives on its
    /// connection alone, so a session keeps the connection for it; otherwise the connection goes
    /// back between turns, so idle clients hold no budget.
    fn keep_or_release(&mut self, parsed: &ClientFrame<'_>) {
        if !parsed.is_store_disabled() || self.request_type != RequestType::Ws {
            self.release();
        }
    }

    /// Records where a response lives (binding, pending calls, the session's last response),
    /// in the shard cache and, through the control thread, the state store.
    pub(super) fn remember(
        &mut self,
        response_id: &Arc<str>,
        pool: &Pool,
        connection: u64,
        pending_calls: Option<Vec<String>>,
    ) {
        let state = self.turn_state(response_id, pool, connection, pending_calls);
        let shard = &self.shard;
        shard.sticky.remember_turn(&shard.counters, state);
    }

    /// What a turn that produced `response_id` leaves behind; the session's last response is
    /// now that one.
    fn turn_state(
        &mut self,
        response_id: &Arc<str>,
        pool: &Pool,
        connection: u64,
        pending_calls: Option<Vec<String>>,
    ) -> TurnState {
        self.last = Some(response_id.clone());
        self.last_at = Some((pool.account.index, connection));
        let shard = &self.shard;
        TurnState {
            group: self.names.group.clone(),
            response_id: response_id.clone(),
            binding: Binding {
                account: self.names.account(&pool.account.config.id, &shard.sticky),
                instance: shard.sticky.instance(),
                shard: shard.id,
                connection,
            },
            session: self.session,
            pending: pending_calls.map(Arc::from),
        }
    }

    /// Sends the turn's usage record to the control thread (never waits; a full queue is counted).
    pub(super) fn record_usage(&mut self, meta: &TurnMeta<'_>, f: UsageFacts) {
        let account = self
            .names
            .account(&meta.pool.account.config.id, &self.shard.sticky);
        let record = self.usage_record(meta, f, account);
        self.shard.submit_usage(Box::new(record));
    }

    /// The turn's usage record; `account` is the shared name of the account that served it.
    fn usage_record(
        &mut self,
        meta: &TurnMeta<'_>,
        f: UsageFacts,
        account: Arc<str>,
    ) -> UsageRecord {
        let shard = &self.shard;
        let response_id = match f.response_id {
            Some(id) => id,
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
                .into()
            }
        };
        UsageRecord {
            response_id,
            ts_ms: runtime::unix_micros() / 1_000,
            group: self.names.group.clone(),
            key_id: self.names.key_id.clone(),
            account,
            model: self.names.model(meta.model),
            request_type: self.request_type,
            usage: f.usage.unwrap_or_default(),
            ttft_us: f.ttft.map(|d| d.as_micros() as u64),
            duration_us: f.duration.as_micros() as u64,
            attempts: meta.attempts,
            status: Cow::Borrowed(f.kind.as_str()),
            instance: shard.sticky.instance(),
            shard: shard.id,
            realtime: None,
        }
    }
}
