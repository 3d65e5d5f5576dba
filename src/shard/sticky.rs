//! The shard's hot cache of sticky state, in front of the control thread's store.
//!
//! Writes land in the cache and are sent on to the control thread without waiting (a full
//! queue is counted, the cache still has the entry). Lookups hit the cache first; a miss asks
//! the control thread and awaits its one-shot answer for at most [`LOOKUP_TIMEOUT`], after which
//! the turn goes on as if nothing were known. Only this shard's own writes are cached: another
//! shard's or host's bindings are always read from the store, which knows the latest.
//!
//! Counted in the `sticky` labeled family: `hit`, `store_hit`, `store_miss`, `timeout`,
//! `queue_full`, `write_dropped` (the last two also in `control_queue_drops`).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;

use crate::config::StateConfig;
use crate::control::{ControlHandle, ShardMsg};
use crate::protocol::ClientFrame;
use crate::runtime;
use crate::state::embedded::EmbeddedStore;
use crate::state::service::StateMsg;
use crate::state::{Binding, SessionKey, TurnState};

use super::counters::{bump, ShardCounters};
use super::normalizer::{PairingFacts, Pending};

/// Entries one shard's cache holds at most.
pub const CACHE_CAPACITY: usize = 65_536;
/// Longest a lookup waits for the control thread before the turn goes on without it.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(250);

/// Distinct account and group names kept as shared strings at most (they come from the config,
/// so a shard sees few; past this, names are simply not shared).
const MAX_NAMES: usize = 256;

/// Labeled-counter family of the cache's outcomes.
const FAMILY: &str = "sticky";

/// Where a turn chained to an earlier response should run, from that response's binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affinity {
    /// Nothing known about the response: the scheduler picks.
    Unbound,
    /// The response's connection is on this shard: continue on it if it is still alive and
    /// idle, else on the same account.
    ThisShard {
        /// Account id.
        account: String,
        /// Connection id in that account's pool.
        connection: u64,
    },
    /// The connection is on another shard of this host: hand the client connection over.
    OtherShard {
        /// The owner shard.
        shard: usize,
        /// Account id (for the fallback when the handoff cannot happen).
        account: String,
    },
    /// The response was made on another host: same account if it is healthy (store=true
    /// chains work there), else the scheduler, and the recovery matrix on a chain error.
    OtherHost {
        /// Account id.
        account: String,
    },
}

impl Affinity {
    /// Counter label (family `affinity`).
    pub fn label(&self) -> &'static str {
        match self {
            Affinity::Unbound => "unbound",
            Affinity::ThisShard { .. } => "this_shard",
            Affinity::OtherShard { .. } => "other_shard",
            Affinity::OtherHost { .. } => "other_host",
        }
    }
}

/// Decides where a chained turn runs from its previous response's binding, as seen from
/// shard `shard` of host `instance`.
pub fn affinity(binding: Option<Binding>, instance: &str, shard: usize) -> Affinity {
    match binding {
        None => Affinity::Unbound,
        Some(b) if *b.instance != *instance => Affinity::OtherHost {
            account: b.account.to_string(),
        },
        Some(b) if b.shard == shard => Affinity::ThisShard {
            account: b.account.to_string(),
            connection: b.connection,
        },
        Some(b) => Affinity::OtherShard {
            shard: b.shard,
            account: b.account.to_string(),
        },
    }
}

/// What the normalizer's pairing decision needs about a turn's chain, owned so it can be
/// looked up before the (borrowing) decision is made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainInputs {
    /// The session's last response id: the live session's own (shared, not copied: one
    /// allocation per turn before), else the store's answer after a reconnect.
    pub session_last: Option<Arc<str>>,
    /// Pending calls of the frame's `previous_response_id`.
    pub pending_of_previous: Option<Vec<String>>,
    /// Pending calls of `session_last`.
    pub pending_of_last: Option<Vec<String>>,
}

impl ChainInputs {
    /// The facts for `normalizer::decide_pairing` (through `normalizer::pairing_for_turn`).
    pub fn facts<'a>(&'a self, frame: &'a ClientFrame<'a>) -> PairingFacts<'a> {
        let pending = |p: &'a Option<Vec<String>>| match p {
            Some(ids) => Pending::Known(ids),
            None => Pending::Unknown,
        };
        PairingFacts {
            frame,
            session_last: self.session_last.as_deref(),
            pending_of_previous: pending(&self.pending_of_previous),
            pending_of_last: pending(&self.pending_of_last),
        }
    }
}

/// A shard's sticky-state cache, write-through to the control thread.
pub struct Sticky {
    control: ControlHandle,
    cache: RefCell<EmbeddedStore>,
    lookup_timeout: Duration,
    /// This host's name in bindings (`[state] instance`), shared by every binding.
    instance: Arc<str>,
    /// Account and group names seen so far, shared by every turn's state that names them.
    names: RefCell<Vec<Arc<str>>>,
}

impl Sticky {
    /// A cache with the store's TTL and key scheme.
    pub fn new(control: ControlHandle, cfg: &StateConfig) -> Self {
        Self::with_limits(control, cfg, CACHE_CAPACITY, LOOKUP_TIMEOUT)
    }

    /// Same, with an explicit size and lookup deadline (tests, tuning).
    pub fn with_limits(
        control: ControlHandle,
        cfg: &StateConfig,
        capacity: usize,
        lookup_timeout: Duration,
    ) -> Self {
        Sticky {
            control,
            cache: RefCell::new(EmbeddedStore::new(cfg.ttl, capacity)),
            lookup_timeout,
            instance: Arc::from(cfg.instance.as_str()),
            names: RefCell::new(Vec::new()),
        }
    }

    /// This host's name, as bindings carry it.
    pub fn instance(&self) -> Arc<str> {
        self.instance.clone()
    }

    /// `name` (an account id or a client group) as a shared string: the same one for every
    /// turn, so a turn's state copies no names.
    pub fn name(&self, name: &str) -> Arc<str> {
        let mut names = self.names.borrow_mut();
        if let Some(shared) = names.iter().find(|n| ***n == *name) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        if names.len() < MAX_NAMES {
            names.push(shared.clone());
        }
        shared
    }

    /// Records what a turn left behind (call when a turn produced a response id): in the cache
    /// at once, and in the store through one message to the control thread. The cache and the
    /// message share the turn's strings.
    pub fn remember_turn(&self, counters: &ShardCounters, turn: TurnState) {
        self.cache_turn(&turn, Instant::now());
        self.write(counters, StateMsg::Turn(Box::new(turn)));
    }

    /// Records what a turn left behind in the cache only, as of `now` (the caller's clock
    /// read for the turn's end: no read of its own): the caller sends the same turn to the
    /// control thread with its usage record (`Shard::submit_turn`).
    pub fn cache_turn(&self, turn: &TurnState, now: Instant) {
        self.cache.borrow_mut().put_turn_at(turn, now);
    }

    /// Counts a state write the control queue could not take (the cache still has it).
    pub fn count_dropped_write(&self, counters: &ShardCounters) {
        bump(&counters.control_queue_drops);
        counters.bump_labeled(FAMILY, "write_dropped");
    }

    /// Where `response_id` lives: this shard's cache, else the store.
    pub async fn binding(
        &self,
        counters: &ShardCounters,
        group: &str,
        response_id: &str,
    ) -> Option<Binding> {
        let cached = self
            .cache
            .borrow_mut()
            .binding_at(group, response_id, Instant::now());
        if cached.is_some() {
            counters.bump_labeled(FAMILY, "hit");
            return cached;
        }
        self.ask(counters, |reply| StateMsg::LookupBinding {
            group: group.to_string(),
            response_id: response_id.to_string(),
            reply,
        })
        .await
    }

    /// The session's last response: this shard's cache, else the store.
    pub async fn session_last(
        &self,
        counters: &ShardCounters,
        group: &str,
        session: SessionKey,
    ) -> Option<String> {
        let cached = self
            .cache
            .borrow_mut()
            .session_last_at(group, &session, Instant::now());
        if cached.is_some() {
            counters.bump_labeled(FAMILY, "hit");
            return cached;
        }
        self.ask(counters, |reply| StateMsg::LookupSessionLast {
            group: group.to_string(),
            session,
            reply,
        })
        .await
    }

    /// The calls `response_id` left pending: this shard's cache, else the store. `None` means
    /// unknown (never recorded, expired, or the store could not answer in time).
    pub async fn pending(
        &self,
        counters: &ShardCounters,
        group: &str,
        response_id: &str,
    ) -> Option<Vec<String>> {
        let cached = self
            .cache
            .borrow_mut()
            .pending_at(group, response_id, Instant::now());
        if cached.is_some() {
            counters.bump_labeled(FAMILY, "hit");
            return cached;
        }
        self.ask(counters, |reply| StateMsg::LookupPending {
            group: group.to_string(),
            response_id: response_id.to_string(),
            reply,
        })
        .await
    }

    /// Gathers [`ChainInputs`] for a `response.create`. `known_last` is the session's own
    /// memory of its last response (a live session has it); the store is asked for it only
    /// when it is missing (a reconnect) and the frame chains or carries tool outputs. Pending
    /// calls are looked up only for frames with tool outputs, so a plain turn costs nothing.
    pub async fn chain_inputs(
        &self,
        counters: &ShardCounters,
        group: &str,
        session: Option<SessionKey>,
        known_last: Option<&Arc<str>>,
        frame: &ClientFrame<'_>,
    ) -> ChainInputs {
        let has_outputs = !frame.tool_output_call_ids.is_empty();
        let previous = frame.previous_response_id.as_deref();
        let session_last = match (known_last, session) {
            (Some(last), _) => Some(Arc::clone(last)),
            (None, Some(session)) if has_outputs || previous.is_some() => self
                .session_last(counters, group, session)
                .await
                .map(Arc::from),
            _ => None,
        };
        if !has_outputs {
            return ChainInputs {
                session_last,
                ..ChainInputs::default()
            };
        }
        let pending_of_previous = match previous {
            Some(id) => self.pending(counters, group, id).await,
            None => None,
        };
        let pending_of_last = match session_last.as_deref() {
            Some(last) if Some(last) == previous => pending_of_previous.clone(),
            Some(last) => self.pending(counters, group, last).await,
            None => None,
        };
        ChainInputs {
            session_last,
            pending_of_previous,
            pending_of_last,
        }
    }

    fn write(&self, counters: &ShardCounters, msg: StateMsg) {
        if !self.control.send(ShardMsg::State(msg)) {
            self.count_dropped_write(counters);
        }
    }

    async fn ask<T>(
        &self,
        counters: &ShardCounters,
        msg: impl FnOnce(oneshot::Sender<Option<T>>) -> StateMsg,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        if !self.control.ask(ShardMsg::State(msg(tx))) {
            bump(&counters.control_queue_drops);
            counters.bump_labeled(FAMILY, "queue_full");
            return None;
        }
        match runtime::timeout(self.lookup_timeout, rx).await {
            Some(Ok(Some(found))) => {
                counters.bump_labeled(FAMILY, "store_hit");
                Some(found)
            }
            Some(Ok(None)) | Some(Err(oneshot::Canceled)) => {
                counters.bump_labeled(FAMILY, "store_miss");
                None
            }
            None => {
                counters.bump_labeled(FAMILY, "timeout");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(instance: &str, shard: usize) -> Option<Binding> {
        Some(Binding {
            account: "acct-1".into(),
            instance: instance.into(),
            shard,
            connection: 42,
        })
    }

    #[test]
    fn affinity_follows_the_binding() {
        assert_eq!(affinity(None, "host-a", 0), Affinity::Unbound);
        assert_eq!(
            affinity(bound("host-a", 0), "host-a", 0),
            Affinity::ThisShard {
                account: "acct-1".into(),
                connection: 42
            }
        );
        assert_eq!(
            affinity(bound("host-a", 3), "host-a", 0),
            Affinity::OtherShard {
                shard: 3,
                account: "acct-1".into()
            }
        );
        assert_eq!(
            affinity(bound("host-b", 0), "host-a", 0),
            Affinity::OtherHost {
                account: "acct-1".into()
            }
        );
        assert_eq!(
            affinity(bound("host-b", 0), "host-a", 0).label(),
            "other_host"
        );
    }
}
