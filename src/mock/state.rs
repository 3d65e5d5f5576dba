//! What the shards of one mock share: configuration, counters, the script queue and the stored
//! responses. A mock is a test tool, so plain mutexes are fine here (a handful of uncontended
//! locks per turn); the gateway itself never does this.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use futures_rustls::TlsAcceptor;

use super::config::MockConfig;
use super::oauth::OAuthState;
use super::script::{Script, ScriptQueue};
use super::stats::MockStats;
use super::stop::StopSignal;

/// Stored responses kept at most; the oldest are forgotten first (like an expiring store).
const STORE_CAPACITY: usize = 1 << 20;

/// State shared by every shard and the [`super::MockHandle`].
pub struct Shared {
    /// The start-up configuration.
    pub cfg: MockConfig,
    /// Raised to stop every shard.
    pub stop: StopSignal,
    /// Present when serving TLS.
    pub tls: Option<TlsAcceptor>,
    next_conn: AtomicU64,
    open: AtomicU64,
    stats: Mutex<MockStats>,
    script: Mutex<ScriptQueue>,
    store: Mutex<Store>,
    oauth: Mutex<OAuthState>,
}

/// Responses stored with `store != false`: id → ids of the function calls they emitted.
#[derive(Default)]
struct Store {
    calls: HashMap<String, Vec<String>>,
    order: VecDeque<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Fresh state for a mock started with `cfg`.
    pub fn new(cfg: MockConfig, tls: Option<TlsAcceptor>) -> Self {
        Self {
            stop: StopSignal::default(),
            tls,
            next_conn: AtomicU64::new(1),
            open: AtomicU64::new(0),
            stats: Mutex::new(MockStats::default()),
            script: Mutex::new(ScriptQueue::default()),
            store: Mutex::new(Store::default()),
            oauth: Mutex::new(cfg.oauth.as_ref().map(OAuthState::new).unwrap_or_default()),
            cfg,
        }
    }

    /// The next upstream connection id (1, 2, … across all shards).
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a TCP connection opening; the returned guard counts it closing.
    pub fn open_connection(&self) -> OpenGuard<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.record(|s| s.connections_total += 1);
        OpenGuard(self)
    }

    /// Updates the counters.
    pub fn record(&self, f: impl FnOnce(&mut MockStats)) {
        f(&mut lock(&self.stats));
    }

    /// Counts one injected fault of `kind`.
    pub fn record_fault(&self, kind: &str) {
        self.record(|s| *s.faults.entry(kind.to_string()).or_default() += 1);
    }

    /// A snapshot of the counters.
    pub fn snapshot(&self) -> MockStats {
        let mut stats = lock(&self.stats).clone();
        stats.connections_open = self.open.load(Ordering::Relaxed);
        stats
    }

    /// Appends a script to the queues.
    pub fn append_script(&self, script: Script) {
        lock(&self.script).append(script);
    }

    /// Runs `f` on the script queue.
    pub fn script<R>(&self, f: impl FnOnce(&mut ScriptQueue) -> R) -> R {
        f(&mut lock(&self.script))
    }

    /// Clears counters (except open connections), scripts and stored responses.
    pub fn reset(&self) {
        *lock(&self.stats) = MockStats::default();
        *lock(&self.script) = ScriptQueue::default();
        *lock(&self.store) = Store::default();
    }

    /// Runs `f` on the OAuth tokens issued so far.
    pub fn oauth<R>(&self, f: impl FnOnce(&mut OAuthState) -> R) -> R {
        f(&mut lock(&self.oauth))
    }

    /// The function calls of stored response `id`, if it is stored.
    pub fn stored_calls(&self, id: &str) -> Option<Vec<String>> {
        lock(&self.store).calls.get(id).cloned()
    }

    /// Stores response `id` with the calls it emitted.
    pub fn store(&self, id: &str, calls: &[String]) {
        let mut store = lock(&self.store);
        if store.calls.insert(id.to_string(), calls.to_vec()).is_none() {
            store.order.push_back(id.to_string());
        }
        while store.order.len() > STORE_CAPACITY {
            if let Some(old) = store.order.pop_front() {
                store.calls.remove(&old);
            }
        }
    }
}

/// Decrements the open-connection gauge when dropped.
pub struct OpenGuard<'a>(&'a Shared);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one client connection (WebSocket or HTTP keep-alive) knows across its turns.
#[derive(Debug, Default)]
pub struct ConnState {
    id: Option<u64>,
    turns: u64,
    /// The connection's most recent successful response: its id and its function calls.
    pub last: Option<(String, Vec<String>)>,
}

impl ConnState {
    /// The connection's upstream id, taken from the shared counter on first use (the upgrade of a
    /// WebSocket, the first turn of an HTTP connection), so that refused handshakes and control
    /// requests consume no ids.
    pub fn id(&mut self, shared: &Shared) -> u64 {
        *self.id.get_or_insert_with(|| shared.next_conn_id())
    }

    /// Starts a turn: returns (connection id, turn number from 1) and counts it.
    pub fn begin_turn(&mut self, shared: &Shared) -> (u64, u64) {
        let id = self.id(shared);
        self.turns += 1;
        shared.record(|s| *s.turns_by_conn.entry(id).or_default() += 1);
        (id, self.turns)
    }
}
