//! The control thread's side of sticky state: the messages shards send and the service that
//! applies them to the configured store.
//!
//! Writes are fire-and-forget. Lookups carry a one-shot sender; the shard awaits the receiver
//! with its own deadline, so an answer that comes late is simply dropped.

use std::sync::Arc;
use std::time::Instant;

use futures_channel::oneshot;

use crate::config::{StateBackend, StateConfig};

use super::embedded::{EmbeddedBackend, EmbeddedStore};
use super::redis::RedisStore;
use super::{add, Binding, Keys, SessionKey, StateError, StateStats, StateStore, TurnState};

/// Entries the embedded backend (and the Redis backend's local copy) holds at most.
pub const STORE_CAPACITY: usize = 1_000_000;

/// A sticky-state message from a shard to the control thread.
#[derive(Debug)]
pub enum StateMsg {
    /// What a turn left behind (binding, pending calls, session's last response): one
    /// message per turn, applied as one unit.
    Turn(Box<TurnState>),
    /// Where does `response_id` live?
    LookupBinding {
        /// Client group.
        group: String,
        /// Upstream response id.
        response_id: String,
        /// Where the answer goes.
        reply: oneshot::Sender<Option<Binding>>,
    },
    /// What is the session's last response?
    LookupSessionLast {
        /// Client group.
        group: String,
        /// Hashed session identity.
        session: SessionKey,
        /// Where the answer goes.
        reply: oneshot::Sender<Option<String>>,
    },
    /// Which calls did `response_id` leave pending?
    LookupPending {
        /// Client group.
        group: String,
        /// Upstream response id.
        response_id: String,
        /// Where the answer goes.
        reply: oneshot::Sender<Option<Vec<String>>>,
    },
}

/// Owns the store on the control thread and applies shard messages to it.
pub struct StateService {
    store: Box<dyn StateStore>,
    stats: Arc<StateStats>,
}

impl StateService {
    /// Opens the backend `cfg` selects. A Redis that is down is not an error (the store
    /// serves locally until it is back); a malformed URL is.
    pub fn open(cfg: &StateConfig) -> Result<Self, StateError> {
        let stats = Arc::new(StateStats::default());
        let local = EmbeddedStore::new(cfg.ttl, STORE_CAPACITY);
        let store: Box<dyn StateStore> = match cfg.backend {
            StateBackend::Embedded => Box::new(EmbeddedBackend::new(local, stats.clone())),
            StateBackend::Redis => {
                let url = cfg.redis_url.as_ref().ok_or(StateError::MissingRedisUrl)?;
                Box::new(RedisStore::open(
                    url.expose(),
                    Keys::new(&cfg.key_prefix),
                    cfg.ttl,
                    cfg.redis_timeout,
                    local,
                    stats.clone(),
                )?)
            }
        };
        Ok(StateService { store, stats })
    }

    /// The store's health counters, to ship with the stats.
    pub fn stats(&self) -> Arc<StateStats> {
        self.stats.clone()
    }

    /// Records what a turn left behind (a turn that came with its usage record, unboxed).
    pub fn put_turn(&mut self, turn: TurnState) {
        self.store.put_turn(turn);
    }

    /// Applies one message; lookups are answered at once.
    pub fn handle(&mut self, msg: StateMsg) {
        match msg {
            StateMsg::Turn(turn) => self.put_turn(*turn),
            StateMsg::LookupBinding {
                group,
                response_id,
                reply,
            } => {
                if !reply.is_canceled() {
                    let found = self.store.binding(&group, &response_id);
                    self.answer(reply, found);
                }
            }
            StateMsg::LookupSessionLast {
                group,
                session,
                reply,
            } => {
                if !reply.is_canceled() {
                    let found = self.store.session_last(&group, &session);
                    self.answer(reply, found);
                }
            }
            StateMsg::LookupPending {
                group,
                response_id,
                reply,
            } => {
                if !reply.is_canceled() {
                    let found = self.store.pending(&group, &response_id);
                    self.answer(reply, found);
                }
            }
        }
    }

    fn answer<T>(&self, reply: oneshot::Sender<Option<T>>, found: Option<T>) {
        add(&self.stats.lookups, 1);
        if found.is_some() {
            add(&self.stats.lookup_hits, 1);
        }
        // The shard may have given up waiting; its answer is then simply dropped.
        let _ = reply.send(found);
    }

    /// Periodic work: pipelined writes, reconnects, expiry.
    pub fn tick(&mut self, now: Instant) {
        self.store.tick(now);
    }

    /// Writes out what is still buffered.
    pub fn shutdown(&mut self) {
        self.store.flush();
    }
}
