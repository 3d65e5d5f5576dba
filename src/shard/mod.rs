//! The data plane: one shard per core.
//!
//! A shard owns its listener (bound with `SO_REUSEPORT`), the client sessions the kernel hands
//! it, and one connection pool per upstream account (its slice of each account's budget). All of
//! it is `Rc`/`Cell` state touched only by the shard's own thread: no locks on the per-frame path.

pub mod account;
pub mod armed_timer;
pub mod auth;
pub mod breaker;
pub mod canary;
pub mod client_close;
pub mod client_deadline;
pub mod counters;
pub mod cut_through;
pub mod drain;
pub mod failure;
pub mod handoff;
pub mod http_context;
pub mod http_front;
pub mod http_head;
pub mod http_upstream;
pub mod ingress;
pub mod keepalive;
pub mod models;
pub mod normalizer;
pub mod oauth_retry;
pub mod pool;
pub mod preempt;
pub mod realtime;
pub mod recovery;
pub mod relay;
pub mod retry;
pub mod scheduler;
pub mod session;
pub mod sink;
pub mod sticky;
pub mod tls_accept;
pub mod turn;
pub mod upstream;
pub mod usage_outbox;

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::config::{Config, UpstreamConfig};
use crate::control::{ControlHandle, ShardMsg, TurnReport};
use crate::metrics::accounts::AccountTallies;
use crate::metrics::{ShardMetrics, ShardSnapshot};
use crate::net::tls_server::ShardListenerTls;
use crate::reload::LiveSettings;
use crate::runtime::{self, TcpListener};
use crate::usage::UsageRecord;

use account::{AccountRuntime, AccountSetupError};
use auth::ShardKeys;
use counters::{bump, ShardCounters};
use handoff::HandoffInbox;
use pool::{Pool, PoolCounters};
use session::{HandedSession, SessionHandoff};
use usage_outbox::{Submitted, UsageOutbox, OUTBOX_CAPACITY};

/// Everything one shard owns.
pub struct Shard {
    /// Shard number, 0-based.
    pub id: usize,
    /// The configuration it was started with.
    pub config: Arc<Config>,
    /// Client key table (replaced by a config reload).
    pub auth: ShardKeys,
    /// One pool per account, indexed like `config.accounts`.
    pub pools: Vec<Rc<Pool>>,
    /// Group name → indices of its accounts. Looked up per turn ([`scheduler::pick`]): hashed
    /// with ahash, as SipHash was a visible share of a turn's pick.
    pub groups: HashMap<String, Vec<usize>, ahash::RandomState>,
    /// Counters.
    pub counters: ShardCounters,
    /// Latency histograms.
    pub metrics: ShardMetrics,
    /// Per-account WebSocket health of the current interval (for the automatic rollback).
    pub tallies: AccountTallies,
    /// The queue to the control thread.
    pub control: ControlHandle,
    /// Warm-ups answered by the gateway (HTTP upstream), by gateway-issued response id.
    pub warmups: RefCell<http_context::WarmupCache>,
    /// Hot cache of sticky state, write-through to the control thread.
    pub sticky: sticky::Sticky,
    /// Settings a config reload may change while running (transport switches).
    pub live: Arc<LiveSettings>,
    /// The listener's TLS acceptor when it speaks TLS (its certificate follows reloads).
    pub listener_tls: Option<ShardListenerTls>,
    /// Senders of client sessions to the other shards (set once the handoff mesh is connected).
    pub handoff: OnceCell<SessionHandoff>,
    sessions_per_key: RefCell<HashMap<String, usize>>,
    rr: Cell<usize>,
    /// Anonymous sessions served so far: the next one's canary slot.
    canary_seq: Cell<u64>,
    in_flight: Rc<Cell<usize>>,
    /// Set when a graceful shutdown starts; sessions between turns wait on it.
    pub drain: drain::Drain,
    /// Usage records waiting for room in the control queue.
    usage_outbox: UsageOutbox,
}

/// Counts one turn as in flight for as long as it lives, so a graceful shutdown can wait for
/// running turns. Take one at the start of a turn ([`Shard::turn_guard`]).
pub struct TurnGuard {
    in_flight: Rc<Cell<usize>>,
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
    }
}

/// This shard's share of a process-wide budget: an even split, the remainder to the lowest
/// shards, and at least one connection so every shard can serve every account.
pub fn budget_share(total: usize, shards: usize, shard: usize) -> usize {
    let base = total / shards;
    let extra = usize::from(shard < total % shards);
    (base + extra).max(1)
}

impl Shard {
    /// Builds shard `id`'s state: key table, accounts and pools.
    pub fn new(
        id: usize,
        config: Arc<Config>,
        live: Arc<LiveSettings>,
        control: ControlHandle,
    ) -> Result<Self, AccountSetupError> {
        let upstream: Rc<UpstreamConfig> = Rc::new(config.upstream.clone());
        let next_conn_id = Rc::new(Cell::new((id as u64) << 48));
        let mut pools = Vec::with_capacity(config.accounts.len());
        let mut groups: HashMap<String, Vec<usize>, ahash::RandomState> = HashMap::default();
        for (i, account) in config.accounts.iter().enumerate() {
            let runtime =
                Rc::new(AccountRuntime::new(i, account.clone())?.with_token(live.oauth.token(i)));
            let budget = budget_share(account.max_conns, config.server.shards, id);
            pools.push(Rc::new(Pool::new(
                runtime,
                budget,
                upstream.clone(),
                next_conn_id.clone(),
                config.server.rest_after,
            )));
            groups.entry(account.group.clone()).or_default().push(i);
        }
        Ok(Shard {
            id,
            pools,
            groups,
            counters: ShardCounters::default(),
            metrics: ShardMetrics::default(),
            tallies: AccountTallies::new(config.accounts.len()),
            sticky: sticky::Sticky::new(control.clone(), &config.state),
            auth: ShardKeys::new(live.keys.clone()),
            listener_tls: live.tls.clone().map(ShardListenerTls::new),
            live,
            control,
            handoff: OnceCell::new(),
            warmups: RefCell::new(http_context::WarmupCache::default()),
            sessions_per_key: RefCell::new(HashMap::new()),
            rr: Cell::new(0),
            canary_seq: Cell::new(0),
            in_flight: Rc::new(Cell::new(0)),
            drain: drain::Drain::default(),
            usage_outbox: UsageOutbox::new(OUTBOX_CAPACITY),
            config,
        })
    }

    /// A rotating start index for round-robin among equally loaded accounts.
    pub fn next_rr(&self) -> usize {
        let v = self.rr.get();
        self.rr.set(v.wrapping_add(1));
        v
    }

    /// The canary slot of a new session without a `session-id` (consecutive sessions spread
    /// over the slots, [`canary::CanarySlot::of_sequence`]).
    pub fn next_canary_slot(&self) -> canary::CanarySlot {
        let n = self.canary_seq.get();
        self.canary_seq.set(n.wrapping_add(1));
        canary::CanarySlot::of_sequence(n)
    }

    /// Counts a new session for `key_id`; `false` when the per-key cap is reached.
    pub fn try_open_session(&self, key_id: &str) -> bool {
        self.count_session(key_id, self.config.server.max_sessions_per_key)
    }

    /// Counts a session another shard handed over: it was admitted (and counted against its
    /// key's cap) where it was accepted, so it is not refused here.
    pub fn open_handed_session(&self, key_id: &str) {
        self.count_session(key_id, 0);
    }

    /// Counts a session of `key_id` unless `cap` (0 = none) sessions of it are open already.
    fn count_session(&self, key_id: &str, cap: usize) -> bool {
        let mut map = self.sessions_per_key.borrow_mut();
        let n = map.entry(key_id.to_string()).or_insert(0);
        if cap != 0 && *n >= cap {
            return false;
        }
        *n += 1;
        bump(&self.counters.sessions_open);
        true
    }

    /// Marks a turn as in flight until the guard drops.
    pub fn turn_guard(&self) -> TurnGuard {
        self.in_flight.set(self.in_flight.get() + 1);
        TurnGuard {
            in_flight: self.in_flight.clone(),
        }
    }

    /// Turns in flight on this shard.
    pub fn turns_in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// The shard is shutting down: it accepts no connections and waits for in-flight turns.
    /// Sessions may check it to refuse a new turn.
    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    /// Sends a usage record to the control thread, or holds it in the outbox while the control
    /// queue is full; only a full outbox loses it (counted and logged).
    pub fn submit_usage(&self, record: Box<UsageRecord>) {
        let submitted = self
            .usage_outbox
            .submit(record, |r| self.control.offer_usage(r));
        self.count_submitted(submitted);
    }

    /// Sends a turn's usage record and sticky state as one message; when it cannot go, the
    /// record is held as [`Shard::submit_usage`] holds it and the state is dropped (counted as
    /// a dropped state write).
    pub fn submit_turn(&self, turn: Box<TurnReport>) {
        let (submitted, state_dropped) = self.usage_outbox.submit_turn(
            turn,
            |t| self.control.offer_turn(t),
            |r| self.control.offer_usage(r),
        );
        if state_dropped {
            self.sticky.count_dropped_write(&self.counters);
        }
        self.count_submitted(submitted);
    }

    /// Counts what became of a usage record (held, or lost with the outbox full).
    fn count_submitted(&self, submitted: Submitted) {
        match submitted {
            Submitted::Sent => {}
            Submitted::Held => bump(&self.counters.usage_outbox_holds),
            Submitted::Dropped => {
                bump(&self.counters.control_queue_drops);
                bump(&self.counters.usage_outbox_drops);
                crate::error_limited!(
                    shard = self.id,
                    held = self.usage_outbox.len(),
                    "control queue and usage outbox full: a usage record was dropped"
                );
            }
        }
    }

    /// Offers the usage records held in the outbox again; returns how many are still held.
    pub fn flush_usage(&self) -> usize {
        self.usage_outbox.flush(|r| self.control.offer_usage(r))
    }

    /// What moves while the shard works: turns begun, events relayed and Realtime events
    /// either way. A stats tick that sees it unchanged found the shard quiet.
    fn activity(&self) -> (u64, u64, u64, u64) {
        let c = &self.counters;
        (
            c.turns.get(),
            c.events_relayed.get(),
            c.realtime_events_up.get(),
            c.realtime_events_down.get(),
        )
    }

    /// Ships this interval's histograms and the counter totals to the control thread.
    pub fn ship_snapshot(&self) {
        let mut counters = self.counters.values();
        counters.reserve_exact(3);
        counters.push(("turns_in_flight", self.in_flight.get() as u64));
        counters.push(("usage_outbox_len", self.usage_outbox.len() as u64));
        let waiting: usize = self.pools.iter().map(|p| p.waiting()).sum();
        counters.push(("acquire_waiters_len", waiting as u64));
        let mut labeled = self.counters.labeled_values();
        labeled.reserve_exact(3 + 4 * self.pools.len());
        let pings = |of: fn(&PoolCounters) -> u64| -> u64 {
            self.pools.iter().map(|p| of(&p.counters)).sum()
        };
        for (label, n) in [
            ("sent", pings(|c| c.pings_sent.get())),
            ("late", pings(|c| c.pings_late.get())),
            ("failed", pings(|c| c.pings_failed.get())),
        ] {
            labeled.push((keepalive::UPSTREAM_PINGS, label.to_string(), n));
        }
        for pool in self.pools.iter() {
            let c = &pool.counters;
            for (family, n) in [
                ("upstream_conns_discarded", c.discarded.get()),
                ("upstream_conns_retired", c.retired.get()),
                ("upstream_dial_failures", c.dial_failures.get()),
                ("acquire_timeouts", c.acquire_timeouts.get()),
            ] {
                labeled.push((family, pool.account.config.id.clone(), n));
            }
        }
        let snap = ShardSnapshot {
            shard: self.id,
            hists: self.metrics.take_interval(),
            counters,
            labeled,
            accounts: self.tallies.take_interval(self.live.reloads()),
        };
        if !self.control.send(ShardMsg::Snapshot(Box::new(snap))) {
            bump(&self.counters.control_queue_drops);
        }
    }

    /// Counts a session of `key_id` as closed.
    pub fn close_session(&self, key_id: &str) {
        let mut map = self.sessions_per_key.borrow_mut();
        if let Some(n) = map.get_mut(key_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(key_id);
            }
        }
        self.counters
            .sessions_open
            .set(self.counters.sessions_open.get().saturating_sub(1));
    }
}

/// Accepts connections until `shutdown` fires; each connection (accepted, or handed over by
/// another shard through `inbox`) runs in its own task, and a panic in one is contained there.
/// On shutdown the listener is closed, then the shard waits for its in-flight turns and open
/// sessions (up to `[server] drain_timeout_secs`) so their usage records are sent, ships a last
/// snapshot and returns.
pub async fn run(
    shard: Rc<Shard>,
    listener: TcpListener,
    inbox: HandoffInbox<HandedSession>,
    shutdown: futures_channel::oneshot::Receiver<()>,
) {
    let accept_loop = async {
        loop {
            let stream = match runtime::accept(&listener).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(shard = shard.id, error = %e, "accept failed");
                    runtime::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            bump(&shard.counters.connections);
            let task = ingress::serve_connection(shard.clone(), stream);
            runtime::spawn_contained(task, on_connection_panic(shard.clone()));
        }
    };
    let handed_in = inbox.run(|conn| {
        let task = session::serve_handed(shard.clone(), conn);
        runtime::spawn_contained(task, on_connection_panic(shard.clone()));
    });
    let accept_loop = futures_lite::future::or(accept_loop, async {
        handed_in.await;
        std::future::pending::<()>().await
    });
    let interval = shard.config.server.stats_interval;
    let ship_loop = async {
        let mut activity_seen = shard.activity();
        loop {
            runtime::sleep(interval).await;
            shard.flush_usage();
            shard.ship_snapshot();
            let activity = shard.activity();
            if activity == activity_seen {
                runtime::release_freed_memory();
            }
            activity_seen = activity;
        }
    };
    futures_lite::future::or(futures_lite::future::or(accept_loop, ship_loop), async {
        let _ = shutdown.await;
    })
    .await;
    drop(listener);
    drain(&shard).await;
    // Upstream sees the shard's connections end with a close handshake, not a reset.
    futures_util::future::join_all(shard.pools.iter().map(|p| p.close_idle())).await;
    hand_over_held_usage(&shard).await;
    shard.ship_snapshot();
}

/// What a connection task's panic leaves behind: a counter and a log line; the task's sockets
/// were closed by unwinding, and the shard's other tasks go on.
fn on_connection_panic(shard: Rc<Shard>) -> impl FnOnce() {
    move || {
        bump(&shard.counters.session_panics);
        tracing::error!(
            shard = shard.id,
            "a client connection panicked; it was closed, the shard goes on"
        );
    }
}

/// Before the shard stops, every usage record it still holds goes to the control thread (which
/// outlives the shards and flushes them to the sink), waiting for room in its queue for up to
/// the drain timeout.
async fn hand_over_held_usage(shard: &Shard) {
    let deadline = std::time::Instant::now() + shard.config.server.drain_timeout;
    while shard.flush_usage() > 0 {
        if std::time::Instant::now() >= deadline {
            tracing::error!(
                shard = shard.id,
                lost = shard.usage_outbox.len(),
                "stopping with usage records the control queue never took: they are lost"
            );
            return;
        }
        runtime::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Waits until no turn is in flight and every session has closed (sessions between turns close
/// with 1001 at once, the others after their turn), or the drain timeout passed.
async fn drain(shard: &Shard) {
    shard.drain.start();
    let started = std::time::Instant::now();
    let deadline = shard.config.server.drain_timeout;
    if shard.turns_in_flight() > 0 {
        tracing::info!(
            shard = shard.id,
            in_flight = shard.turns_in_flight(),
            "draining in-flight turns"
        );
    }
    let sessions = &shard.counters.sessions_open;
    while shard.turns_in_flight() > 0 || sessions.get() > 0 {
        if started.elapsed() >= deadline {
            tracing::warn!(
                shard = shard.id,
                in_flight = shard.turns_in_flight(),
                sessions = sessions.get(),
                "drain timeout: stopping with turns in flight or sessions open"
            );
            return;
        }
        runtime::sleep(std::time::Duration::from_millis(10)).await;
    }
}
