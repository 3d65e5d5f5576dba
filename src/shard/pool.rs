//! The upstream connection pool of one account slice on one shard.
//!
//! Shard-local and lock-free: an idle stack (most recently used first, O(1) acquire), a
//! connection budget, and a bounded FIFO of waiters. A connection goes back on the stack only
//! through [`Lease::release`], after a clean terminal event; a lease dropped any other way closes
//! its connection, so a connection in an unknown state is never reused.
//!
//! Size: just over 600 lines for one job. The idle stack, the budget, the waiter queue and the
//! lease share one borrow discipline, and splitting them would expose their cells to each other.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use futures_channel::oneshot;
use http::{HeaderName, HeaderValue};

use crate::config::UpstreamConfig;
use crate::runtime;

use super::account::AccountRuntime;
use super::breaker::Breaker;
use super::counters::{add, bump};
use super::http_upstream::HttpConn;
use super::keepalive;
use super::upstream::{self, DialError, UpstreamConn};

/// The shortest wait between two rest sweeps of a pool, so that connections given back a few
/// milliseconds apart are rested in one sweep.
const REST_SWEEP_MIN: Duration = Duration::from_millis(100);

/// Why no connection could be leased.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// Dialing a new connection failed.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The budget is used up and the wait queue is full.
    #[error("connection pool is full and its wait queue too")]
    QueueFull,
    /// The budget stayed used up for the whole acquire timeout.
    #[error("timed out waiting for an upstream connection")]
    Timeout,
}

/// What a waiter is handed when capacity frees up.
enum Grant {
    /// A clean idle connection.
    Conn(Box<UpstreamConn>),
    /// A budget slot, already counted as open: the waiter dials.
    Dial,
}

/// Pool counters, read by the stats snapshot.
#[derive(Debug, Default)]
pub struct PoolCounters {
    /// Leases served from the idle stack.
    pub reused: Cell<u64>,
    /// Connections dialed successfully.
    pub dialed: Cell<u64>,
    /// Dials that failed.
    pub dial_failures: Cell<u64>,
    /// Acquires refused because the wait queue was full.
    pub queue_rejections: Cell<u64>,
    /// Acquires that timed out in the wait queue.
    pub acquire_timeouts: Cell<u64>,
    /// Connections closed because their state was unknown or broken.
    pub discarded: Cell<u64>,
    /// Connections closed because they reached the age limit.
    pub retired: Cell<u64>,
    /// Keep-alive pings sent on idle connections.
    pub pings_sent: Cell<u64>,
    /// Idle connections closed because their pong was late.
    pub pings_late: Cell<u64>,
    /// Idle connections closed because they broke, closed or sent a message while idle.
    pub pings_failed: Cell<u64>,
}

/// The pool of one account on one shard.
pub struct Pool {
    /// The account it dials.
    pub account: Rc<AccountRuntime>,
    budget: usize,
    max_waiters: usize,
    open: Cell<usize>,
    idle: RefCell<Vec<UpstreamConn>>,
    /// Ids of the connections leased out (a chained turn waits briefly for one of these).
    leased: RefCell<HashSet<u64>>,
    waiters: RefCell<VecDeque<oneshot::Sender<Grant>>>,
    next_id: Rc<Cell<u64>>,
    config: Rc<UpstreamConfig>,
    /// Counters.
    pub counters: PoolCounters,
    /// The account slice's circuit breaker.
    pub breaker: Breaker,
    /// Idle keep-alive HTTP connections, most recently used last.
    http_idle: RefCell<Vec<HttpConn>>,
    /// Until when upstream refuses WebSocket upgrades for this account (then HTTP is used).
    ws_refused_until: Cell<Option<Instant>>,
    /// HTTP requests in flight.
    http_in_flight: Cell<usize>,
    /// A task will rest the idle connections due ([`Pool::rest_idle`]).
    rest_armed: Cell<bool>,
    /// How long a connection that carried a turn sits unused on the idle stack before it rests
    /// (its WebSocket set aside, its buffers freed, [`UpstreamConn::rest_now`]); sessions wait
    /// as long for their next frame after a turn before they rebuild their client WebSocket.
    /// A session in an agent loop (tool output, next request) sends sooner and keeps its
    /// buffers; one waiting for a human gives them back. `[server] rest_after_ms`.
    rest_after: Duration,
    /// A task pings the idle connections ([`keepalive::arm`]).
    pub(super) ping_armed: Cell<bool>,
}

/// One HTTP request in flight on a pool (see [`Pool::http_request`]).
pub struct HttpInFlight(Rc<Pool>);

impl Drop for HttpInFlight {
    fn drop(&mut self) {
        let n = &self.0.http_in_flight;
        n.set(n.get().saturating_sub(1));
    }
}

impl Pool {
    /// A pool allowed `budget` connections; `next_id` numbers connections across the shard;
    /// idle connections rest once unused for `rest_after`.
    pub fn new(
        account: Rc<AccountRuntime>,
        budget: usize,
        config: Rc<UpstreamConfig>,
        next_id: Rc<Cell<u64>>,
        rest_after: Duration,
    ) -> Self {
        Pool {
            account,
            budget,
            max_waiters: budget.saturating_mul(config.queue_per_conn),
            open: Cell::new(0),
            idle: RefCell::new(Vec::new()),
            leased: RefCell::new(HashSet::new()),
            waiters: RefCell::new(VecDeque::new()),
            next_id,
            breaker: Breaker::new(config.breaker.clone()),
            config,
            counters: PoolCounters::default(),
            http_idle: RefCell::new(Vec::new()),
            ws_refused_until: Cell::new(None),
            http_in_flight: Cell::new(0),
            rest_armed: Cell::new(false),
            rest_after,
            ping_armed: Cell::new(false),
        }
    }

    /// `true` while upstream is known to refuse WebSocket upgrades for this account.
    pub fn ws_refused(&self, now: Instant) -> bool {
        self.ws_refused_until.get().is_some_and(|t| now < t)
    }

    /// Remembers that an upgrade was refused: requests use HTTP for one breaker cooldown.
    pub fn mark_ws_refused(&self, now: Instant) {
        self.ws_refused_until
            .set(Some(now + self.config.breaker.cooldown));
    }

    /// An HTTP connection: an idle keep-alive one (`true`) or a new dial (`false`). `fresh`
    /// (after a reused one failed) closes the idle ones, which have likely gone stale alike.
    pub async fn http_conn(&self, fresh: bool) -> Result<(HttpConn, bool), DialError> {
        if fresh {
            let stale = std::mem::take(&mut *self.http_idle.borrow_mut());
            add(&self.counters.discarded, stale.len() as u64);
        }
        loop {
            let Some(conn) = self.http_idle.borrow_mut().pop() else {
                break;
            };
            if conn.born.elapsed() < self.config.max_conn_age {
                bump(&self.counters.reused);
                return Ok((conn, true));
            }
            bump(&self.counters.retired);
        }
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        match HttpConn::dial(&self.account, &self.config, id).await {
            Ok(conn) => {
                bump(&self.counters.dialed);
                Ok((conn, false))
            }
            Err(e) => {
                bump(&self.counters.dial_failures);
                Err(e)
            }
        }
    }

    /// A keep-alive HTTP connection whose last response was read to its end.
    pub fn http_give_back(&self, conn: HttpConn) {
        let mut idle = self.http_idle.borrow_mut();
        if idle.len() < self.budget {
            idle.push(conn);
        }
    }

    /// Connections this shard may hold for the account.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Connections currently leased out.
    pub fn in_use(&self) -> usize {
        self.open.get() - self.idle.borrow().len()
    }

    /// Connections open (leased or idle).
    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// Share of the budget in use (WebSocket leases, waiters and HTTP requests in flight), for
    /// least-loaded scheduling.
    pub fn load(&self) -> f64 {
        let busy = self.in_use() + self.waiters.borrow().len() + self.http_in_flight.get();
        busy as f64 / self.budget as f64
    }

    /// Counts an HTTP request in flight until the guard is dropped.
    pub fn http_request(self: &Rc<Self>) -> HttpInFlight {
        self.http_in_flight.set(self.http_in_flight.get() + 1);
        HttpInFlight(self.clone())
    }

    /// Places taken in the wait queue (a waiter that gave up keeps its place until a connection
    /// comes back): for the `acquire_waiters_len` gauge.
    pub fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }

    /// Leases a connection: an idle one if any, else a new dial under budget, else a place in the
    /// bounded wait queue.
    pub async fn acquire(
        self: &Rc<Self>,
        forward: &[(HeaderName, HeaderValue)],
    ) -> Result<Lease, AcquireError> {
        if let Some(conn) = self.pop_idle() {
            bump(&self.counters.reused);
            return Ok(self.lease(conn, true));
        }
        if self.open.get() < self.budget {
            self.open.set(self.open.get() + 1);
            return self.dial_counted(forward).await;
        }
        match self.wait_grant().await? {
            Grant::Conn(conn) => {
                bump(&self.counters.reused);
                Ok(self.lease(*conn, true))
            }
            Grant::Dial => self.dial_counted(forward).await,
        }
    }

    /// Waits in the bounded queue for capacity to free up.
    async fn wait_grant(&self) -> Result<Grant, AcquireError> {
        if self.waiters.borrow().len() >= self.max_waiters {
            bump(&self.counters.queue_rejections);
            return Err(AcquireError::QueueFull);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push_back(tx);
        match runtime::timeout(self.config.acquire_timeout, rx).await {
            Some(Ok(grant)) => Ok(grant),
            Some(Err(_)) | None => {
                bump(&self.counters.acquire_timeouts);
                Err(AcquireError::Timeout)
            }
        }
    }

    /// Takes one budget slot for a connection that lives outside the pool (a realtime session's
    /// own upstream WebSocket, never pooled): under budget at once; else by closing an idle
    /// pooled connection; else through the wait queue like [`Pool::acquire`]. The slot counts
    /// in [`Pool::open`] and [`Pool::load`] until the returned guard drops.
    pub async fn reserve_dedicated(self: &Rc<Self>) -> Result<DedicatedSlot, AcquireError> {
        let slot = || DedicatedSlot { pool: self.clone() };
        if self.open.get() < self.budget {
            self.open.set(self.open.get() + 1);
            return Ok(slot());
        }
        if self.pop_idle().is_some() {
            // The idle connection is closed; its slot passes to the caller.
            bump(&self.counters.discarded);
            return Ok(slot());
        }
        if self.open.get() < self.budget {
            // Expired idle connections were closed on the way.
            self.open.set(self.open.get() + 1);
            return Ok(slot());
        }
        // A granted connection is closed and its slot kept; a granted dial is a slot.
        self.wait_grant().await?;
        Ok(slot())
    }

    /// Leases the idle connection `id`, if it is on the idle stack and not too old: a chained
    /// turn continues on the connection that holds its previous response. O(idle) on this
    /// affinity path only; [`Pool::acquire`] stays O(1).
    pub fn acquire_conn(self: &Rc<Self>, id: u64) -> Option<Lease> {
        let conn = {
            let mut idle = self.idle.borrow_mut();
            let at = idle.iter().rposition(|c| c.id == id)?;
            idle.remove(at)
        };
        if conn.is_expired(self.config.max_conn_age) {
            bump(&self.counters.retired);
            conn.close();
            self.slot_freed();
            return None;
        }
        bump(&self.counters.reused);
        Some(self.lease(conn, true))
    }

    /// Dials a new connection outside the idle stack (a retry that must not reuse), under budget.
    pub async fn acquire_fresh(
        self: &Rc<Self>,
        forward: &[(HeaderName, HeaderValue)],
    ) -> Result<Lease, AcquireError> {
        if self.open.get() >= self.budget {
            // Make room by closing one idle connection, if there is one.
            let closed = self.idle.borrow_mut().pop();
            match closed {
                Some(conn) => {
                    conn.close();
                    self.open.set(self.open.get() - 1);
                }
                None => return self.acquire(forward).await,
            }
        }
        self.open.set(self.open.get() + 1);
        self.dial_counted(forward).await
    }

    fn pop_idle(&self) -> Option<UpstreamConn> {
        loop {
            let conn = self.idle.borrow_mut().pop()?;
            if conn.is_expired(self.config.max_conn_age) {
                bump(&self.counters.retired);
                conn.close();
                self.slot_freed();
                continue;
            }
            return Some(conn);
        }
    }

    /// Dials with a budget slot already counted in `open`.
    async fn dial_counted(
        self: &Rc<Self>,
        forward: &[(HeaderName, HeaderValue)],
    ) -> Result<Lease, AcquireError> {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        // Boxed: a dial's future (TCP, TLS, upgrade) is ~4 KiB, and inline it would be part of
        // every turn's future (moved into the turn's box on each turn) for a step most turns skip.
        match Box::pin(upstream::dial(&self.account, &self.config, forward, id)).await {
            Ok(conn) => {
                bump(&self.counters.dialed);
                Ok(self.lease(conn, false))
            }
            Err(e) => {
                bump(&self.counters.dial_failures);
                self.slot_freed();
                Err(e.into())
            }
        }
    }

    /// `true` while connection `id` is leased out: it may come back to the idle stack (or be
    /// closed) when its holder is done.
    pub fn is_leased(&self, id: u64) -> bool {
        self.leased.borrow().contains(&id)
    }

    fn lease(self: &Rc<Self>, mut conn: UpstreamConn, reused: bool) -> Lease {
        conn.pings.forget();
        self.leased.borrow_mut().insert(conn.id);
        Lease {
            conn: Some(conn),
            pool: self.clone(),
            reused,
        }
    }

    /// A clean connection comes back: to the first live waiter, else onto the idle stack, where
    /// it rests once unused for `rest_after`.
    fn give_back(self: &Rc<Self>, mut conn: UpstreamConn) {
        if conn.is_expired(self.config.max_conn_age) {
            bump(&self.counters.retired);
            conn.close();
            self.slot_freed();
            return;
        }
        loop {
            let Some(waiter) = self.waiters.borrow_mut().pop_front() else {
                break;
            };
            let Err(Grant::Conn(back)) = waiter.send(Grant::Conn(Box::new(conn))) else {
                return;
            };
            conn = *back;
        }
        conn.idle_since = Instant::now();
        conn.pings.forget();
        let grown = conn.grown();
        self.idle.borrow_mut().push(conn);
        if grown {
            self.arm_rest(self.rest_after);
        }
        keepalive::arm(self);
    }

    /// The keep-alive ping interval (zero: off) and pong timeout.
    pub(super) fn ping_timing(&self) -> (Duration, Duration) {
        (self.config.ping_interval, self.config.pong_timeout)
    }

    /// Applies `keep` to every idle connection, in place on the idle stack, and closes those
    /// it returns `false` for (the keep-alive sweep).
    pub(super) fn sweep_idle(&self, mut keep: impl FnMut(&mut UpstreamConn) -> bool) {
        let conns = std::mem::take(&mut *self.idle.borrow_mut());
        let mut kept = Vec::with_capacity(conns.len());
        for mut conn in conns {
            if keep(&mut conn) {
                kept.push(conn);
            } else {
                bump(&self.counters.discarded);
                conn.close();
                self.slot_freed();
            }
        }
        *self.idle.borrow_mut() = kept;
    }

    /// Makes sure a task rests the idle connections due within `after`: at most one task per
    /// pool at a time, none while no idle connection has grown buffers.
    fn arm_rest(self: &Rc<Self>, after: Duration) {
        if self.rest_armed.replace(true) {
            return;
        }
        let pool: Weak<Pool> = Rc::downgrade(self);
        runtime::spawn_local(async move {
            runtime::sleep(after).await;
            if let Some(pool) = pool.upgrade() {
                pool.rest_idle();
            }
        });
    }

    /// Rests every idle connection unused for `rest_after` whose buffers may have grown, in
    /// place on the idle stack; arms again for the next one due (or, after `rest_after`, for
    /// one whose flush could not complete).
    fn rest_idle(self: &Rc<Self>) {
        self.rest_armed.set(false);
        let conns = std::mem::take(&mut *self.idle.borrow_mut());
        let mut kept = Vec::with_capacity(conns.len());
        let mut closed = 0;
        let mut next: Option<Duration> = None;
        for conn in conns {
            if !conn.grown() {
                kept.push(conn);
                continue;
            }
            let due_in = self.rest_after.saturating_sub(conn.idle_since.elapsed());
            let mut conn = conn;
            if due_in.is_zero() && !conn.rest_now() {
                closed += 1;
                continue;
            }
            if conn.grown() {
                let wait = if due_in.is_zero() {
                    self.rest_after
                } else {
                    due_in
                };
                next = Some(next.map_or(wait, |n| n.min(wait)));
            }
            kept.push(conn);
        }
        *self.idle.borrow_mut() = kept;
        for _ in 0..closed {
            bump(&self.counters.discarded);
            self.slot_freed();
        }
        if let Some(next) = next {
            self.arm_rest(next.max(REST_SWEEP_MIN));
        }
    }

    /// Closes every idle connection with a 1001 close handshake, all at once (about a second at
    /// most): for a shard that stops once its sessions are gone.
    pub async fn close_idle(&self) {
        let idle = std::mem::take(&mut *self.idle.borrow_mut());
        self.open.set(self.open.get().saturating_sub(idle.len()));
        let closing = idle
            .into_iter()
            .map(|conn| conn.close_handshake(CloseCode::Away));
        futures_util::future::join_all(closing).await;
    }

    /// A connection was closed: its budget slot goes to the first live waiter, else is freed.
    fn slot_freed(&self) {
        loop {
            let Some(waiter) = self.waiters.borrow_mut().pop_front() else {
                break;
            };
            if waiter.send(Grant::Dial).is_ok() {
                return;
            }
        }
        self.open.set(self.open.get() - 1);
    }
}

/// A budget slot of a pool held by a connection outside it (see [`Pool::reserve_dedicated`]);
/// dropping it frees the slot for the pool's waiters.
pub struct DedicatedSlot {
    pool: Rc<Pool>,
}

impl DedicatedSlot {
    /// The pool whose budget it counts against.
    pub fn pool(&self) -> &Rc<Pool> {
        &self.pool
    }
}

impl Drop for DedicatedSlot {
    fn drop(&mut self) {
        self.pool.slot_freed();
    }
}

/// Exclusive use of one upstream connection. Release it after a clean terminal event; dropping
/// it any other way closes the connection.
pub struct Lease {
    conn: Option<UpstreamConn>,
    pool: Rc<Pool>,
    /// `true` when the connection came from the idle stack (it may have gone stale while idle).
    pub reused: bool,
}

impl Lease {
    /// The connection.
    pub fn conn(&mut self) -> &mut UpstreamConn {
        self.conn
            .as_mut()
            .expect("lease holds its connection until consumed")
    }

    /// The pool it came from.
    pub fn pool(&self) -> &Rc<Pool> {
        &self.pool
    }

    /// Sets the connection's WebSocket aside, its buffers freed, when that gives memory back
    /// ([`UpstreamConn::can_rest`]): for a session holding its connection between turns that
    /// has been idle a while, never per turn. The next turn builds it again.
    pub async fn rest(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            if conn.can_rest().await {
                conn.rest().await;
            }
        }
    }

    /// Returns a connection known to be clean (last turn ended with a terminal event).
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.leased.borrow_mut().remove(&conn.id);
            self.pool.give_back(conn);
        }
    }

    /// Closes the connection, its state broken or unknown, with a close handshake
    /// ([`UpstreamConn::close`]).
    pub fn discard(mut self) {
        if let Some(conn) = self.take_closed() {
            conn.close();
        }
    }

    /// Takes the connection out of the pool's books as closed.
    fn take_closed(&mut self) -> Option<UpstreamConn> {
        let conn = self.conn.take()?;
        self.pool.leased.borrow_mut().remove(&conn.id);
        bump(&self.pool.counters.discarded);
        self.pool.slot_freed();
        Some(conn)
    }
}

impl Drop for Lease {
    /// A lease dropped without [`Lease::release`] or [`Lease::discard`] (its task ended) drops
    /// its socket: no task is spawned from a destructor, which may run as the shard stops.
    fn drop(&mut self) {
        self.take_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pool() -> Rc<Pool> {
        let text = "[usage]\npath = \"/var/lib/shardgate/usage.jsonl\"\n[[client_keys]]\n\
                    key = \"sk-gw\"\n[[accounts]]\nid = \"a\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
                    api_key = \"sk-up\"\n";
        let config = Config::parse(text, &|_| None).expect("config");
        let account = AccountRuntime::new(0, config.accounts[0].clone()).expect("account");
        Rc::new(Pool::new(
            Rc::new(account),
            1,
            Rc::new(config.upstream.clone()),
            Rc::new(Cell::new(0)),
            Duration::from_secs(1),
        ))
    }

    /// A turn's future holds the acquire's: its rare dial must not make every turn's large
    /// (the dial's own future is ~4 KiB, behind a box).
    #[test]
    fn an_acquire_holds_its_dial_behind_a_box() {
        let pool = pool();
        let acquire = pool.acquire(&[]);
        let size = std::mem::size_of_val(&acquire);
        println!("acquire future: {size} bytes");
        assert!(size <= 1024, "an acquire's future takes {size} bytes");
    }
}
