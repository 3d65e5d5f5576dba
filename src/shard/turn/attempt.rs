//! One attempt over each transport: a pooled upstream WebSocket or an HTTP/SSE request, from
//! taking the connection to the relay's outcome. A failure is reported as the failure table
//! builds it (`shard/failure/`); what follows is decided there.

use std::rc::Rc;
use std::time::Instant;

use async_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Hist;
use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::protocol::ClientFrame;

use super::super::armed_timer::ShardDeadline;
use super::super::counters::bump;
use super::super::cut_through;
use super::super::failure::{upstream_failed, Failure};
use super::super::http_upstream::http_body;
use super::super::normalizer::{self, PreviousId};
use super::super::pool::{AcquireError, Pool};
use super::super::relay::{self, BeforeSend, Outcome, RelayEnv, Settled, Source};
use super::super::sink::ClientSink;
use super::super::upstream::{count_proxy_failure, DialError};
use super::Driver;

/// What one attempt carried, for bookkeeping.
pub(super) struct Attempt {
    pub(super) outcome: Outcome,
    /// The connection had carried earlier requests (a failure may say more about it).
    pub(super) reused: bool,
    /// The pooled upstream WebSocket's id, once one was used.
    pub(super) conn: Option<u64>,
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

/// An attempt whose frame the normalizer could not splice (a span off a character boundary:
/// never, for spans the parser took from the frame itself).
fn rewrite_failed() -> Attempt {
    let err = GatewayError::new(
        500,
        ErrorType::Server,
        "rewrite_failed",
        "the rewritten frame is not valid UTF-8",
    );
    Attempt::failed(Failure::local(err), false)
}

impl Driver {
    /// One attempt over a pooled upstream WebSocket, begun at `began` (the attempt loop's clock
    /// read: the held connection's age and the wait for another count from it).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attempt_ws<S: ClientSink>(
        &mut self,
        sink: &mut S,
        pool: &Rc<Pool>,
        text: &Utf8Bytes,
        parsed: &ClientFrame<'_>,
        previous: PreviousId<'_>,
        depends_on_connection: bool,
        fresh: bool,
        began: Instant,
        timer: &mut ShardDeadline,
    ) -> Attempt {
        let max_age = self.shard.config.upstream.max_conn_age;
        if let Some(lease) = self.lease.as_mut() {
            // Retire an old connection before upstream's 60-minute limit, unless this turn's
            // state lives on it (then upstream's limit error tells the client to start over).
            let other_pool = !Rc::ptr_eq(lease.pool(), pool);
            let expired = lease.conn().is_expired_at(max_age, began);
            if other_pool || (expired && !depends_on_connection) {
                if !other_pool {
                    bump(&lease.pool().counters.retired);
                }
                self.drop_lease();
            }
        }
        if self.lease.is_none() {
            let asked = began;
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
                    match &e {
                        AcquireError::QueueFull => bump(&self.shard.counters.queue_rejections),
                        AcquireError::Dial(d) => self.count_dial_failure(pool, d),
                        AcquireError::Timeout => {}
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
        let model_map = &pool.account.config.model_map;
        let Some((payload, rewrite)) = normalizer::rewrite(text, parsed, previous, model_map)
        else {
            return rewrite_failed();
        };
        let reused = lease.reused || lease.conn().turns > 0;
        let conn_id = lease.conn().id;
        let unchanged = payload.as_ptr() == text.as_ptr() && payload.len() == text.len();
        // An unchanged frame goes as the client masked it, when it came as one frame of it.
        let wire = self
            .client_wire
            .clone()
            .filter(|w| unchanged && cut_through::carries(w, text.as_bytes()));
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
        let send = async {
            match &wire {
                Some(wire) => cut_through::send_as_it_came(ws, wire).await,
                None => cut_through::send_text(ws, payload.as_str()).await,
            }
        };
        timer.set(Instant::now() + send_limit);
        let sent = timer.within(send).await;
        if !matches!(sent, Some(Ok(()))) {
            return Attempt {
                conn: Some(conn_id),
                ..Attempt::failed(Failure::send_failed(sent.is_none()), reused)
            };
        }
        let sent_at = Instant::now();
        let secrets = pool.account.secrets();
        let env = RelayEnv {
            counters: &self.shard.counters,
            metrics: &self.shard.metrics,
            event_timeout: self.shard.config.upstream.event_timeout,
            capture_output: false,
            secrets: &secrets.list(),
            preempt: &self.preempt,
        };
        let source = Source::Ws(ws);
        let outcome = relay::relay(&env, source, sink, &rewrite, sent_at, early, timer).await;
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
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attempt_http<S: ClientSink>(
        &mut self,
        sink: &mut S,
        pool: &Rc<Pool>,
        frame: &Utf8Bytes,
        parsed: &ClientFrame<'_>,
        previous: PreviousId<'_>,
        fresh: bool,
        timer: &mut ShardDeadline,
    ) -> Attempt {
        // A session moving to HTTP gives its WebSocket back.
        self.release();
        let _in_flight = pool.http_request();
        let model_map = &pool.account.config.model_map;
        let Some((payload, rewrite)) = normalizer::rewrite(frame, parsed, previous, model_map)
        else {
            return rewrite_failed();
        };
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
            Err(e) => {
                self.count_dial_failure(pool, &e);
                tracing::warn!(account = %pool.account.config.id, error = %e, "upstream HTTP dial failed");
                return Attempt::failed(Failure::dial(&e), false);
            }
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
            let failure =
                Failure::http_answer(status, retry_after, &body, &pool.account.secrets().list());
            tracing::warn!(account = %pool.account.config.id, status, "upstream HTTP request failed");
            return Attempt::failed(failure, false);
        }
        let secrets = pool.account.secrets();
        let env = RelayEnv {
            counters: &self.shard.counters,
            metrics: &self.shard.metrics,
            event_timeout: cfg.event_timeout,
            capture_output: parsed.is_store_disabled(),
            secrets: &secrets.list(),
            preempt: &self.preempt,
        };
        let source = Source::Http(&mut resp);
        let outcome = relay::relay(&env, source, sink, &rewrite, sent_at, early, timer).await;
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

    /// Counts a failed dial that the account's egress proxy caused.
    fn count_dial_failure(&self, pool: &Pool, e: &DialError) {
        count_proxy_failure(&self.shard.counters, &pool.account.config.id, e);
    }

    /// Counts the upstream connection an attempt got: reused, or a new dial (per account, with
    /// its dial time in `hist`).
    pub(super) fn count_conn(
        &self,
        pool: &Pool,
        reused: bool,
        hist: Hist,
        dial_time: std::time::Duration,
    ) {
        let counters = &self.shard.counters;
        if reused {
            bump(&counters.pool_reuses);
        } else {
            bump(&counters.pool_dials);
            counters.bump_labeled("dials", &pool.account.config.id);
            self.shard.metrics.record(hist, dial_time);
        }
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
