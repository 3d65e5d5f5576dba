//! The in-memory store: bounded maps with a TTL, no external service.
//!
//! Used as the default backend (owned by the control thread), as the Redis backend's local copy,
//! and as each shard's hot cache. Every entry lives `ttl` from its last write. All entries share
//! one TTL, so write order is expiry order: a FIFO of `(key, expiry)` finds expired entries in
//! O(1) and, when the store is full, evicts the entry closest to expiring.
//!
//! Every write is on a turn's path (twice: the shard's cache, then the control thread's store),
//! so each map operation hashes its key once (`entry_ref`, `get_key_value_mut`; a new key twice) with a fast
//! seeded hasher (aHash; keys are built from upstream ids and hashed session ids, and the
//! seed is random per store), and values share their strings (`Arc<str>`) instead of copying
//! them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;

use super::{add, Binding, Keys, SessionKey, StateStats, StateStore, TurnState};

/// A stored value.
#[derive(Debug, Clone)]
enum Value {
    Binding(Binding),
    Text(Arc<str>),
    Ids(Vec<String>),
}

#[derive(Debug)]
struct Slot {
    value: Value,
    expires: Instant,
}

/// Bounded in-memory store with a TTL per entry.
#[derive(Debug)]
pub struct EmbeddedStore {
    keys: Keys,
    ttl: Duration,
    capacity: usize,
    map: HashMap<Arc<str>, Slot, ahash::RandomState>,
    /// Write order; an element is stale when the map holds a later expiry for its key. Shares
    /// each key with the map (one allocation per written key, not two).
    order: VecDeque<(Arc<str>, Instant)>,
    evictions: u64,
    /// Evictions already handed to the store's counters ([`EmbeddedStore::new_evictions`]).
    evictions_reported: u64,
    /// Where keys are built for a write or a lookup, reused: a lookup allocates no key, a
    /// write one (the shared key it keeps).
    scratch: String,
}

impl EmbeddedStore {
    /// An empty store holding at most `capacity` entries (at least 1), each for `ttl`.
    pub fn new(keys: Keys, ttl: Duration, capacity: usize) -> Self {
        EmbeddedStore {
            keys,
            ttl,
            capacity: capacity.max(1),
            map: HashMap::with_hasher(ahash::RandomState::new()),
            order: VecDeque::new(),
            evictions: 0,
            evictions_reported: 0,
            scratch: String::new(),
        }
    }

    /// Entries currently held (expired ones included until the next write or tick).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// `true` when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries evicted so far because the store was full.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Evictions since the last call, for the store's counters (each backend's tick adds them).
    pub fn new_evictions(&mut self) -> u64 {
        let new = self.evictions - self.evictions_reported;
        self.evictions_reported = self.evictions;
        new
    }

    /// [`EmbeddedStore::put_owned_turn_at`] of a turn the caller keeps (the shard's cache, while
    /// the same turn travels to the control thread): the clone shares the turn's strings and
    /// copies only its pending call ids, which the store keeps.
    pub fn put_turn_at(&mut self, turn: &TurnState, now: Instant) {
        self.put_owned_turn_at(turn.clone(), now);
    }

    /// [`StateStore::put_turn`] at a given time: the binding, then the pending calls, then the
    /// session's last response, each moved into the store (the control thread's write of a
    /// turn it was sent).
    pub fn put_owned_turn_at(&mut self, turn: TurnState, now: Instant) {
        let TurnState {
            group,
            response_id,
            binding,
            session,
            pending,
        } = turn;
        let mut key = std::mem::take(&mut self.scratch);
        if self.keys.response_into(&mut key, &group, &response_id) {
            self.insert(&key, Value::Binding(binding), now);
        }
        if let Some(calls) = pending {
            if self.keys.pending_into(&mut key, &group, &response_id) {
                self.insert(&key, Value::Ids(calls), now);
            }
        }
        self.scratch = key;
        if let Some(session) = &session {
            self.put_session_text_at(&group, session, &response_id, now);
        }
    }

    /// Records where `id` lives at a given time.
    pub fn put_binding_at(&mut self, group: &str, id: &str, binding: &Binding, now: Instant) {
        let mut key = std::mem::take(&mut self.scratch);
        if self.keys.response_into(&mut key, group, id) {
            self.insert(&key, Value::Binding(binding.clone()), now);
        }
        self.scratch = key;
    }

    /// [`StateStore::binding`] at a given time.
    pub fn binding_at(&mut self, group: &str, id: &str, now: Instant) -> Option<Binding> {
        let mut key = std::mem::take(&mut self.scratch);
        let found = if self.keys.response_into(&mut key, group, id) {
            match self.get(&key, now) {
                Some(Value::Binding(b)) => Some(b.clone()),
                _ => None,
            }
        } else {
            None
        };
        self.scratch = key;
        found
    }

    /// Records a session's last response at a given time.
    pub fn put_session_last_at(
        &mut self,
        group: &str,
        session: &SessionKey,
        id: &str,
        now: Instant,
    ) {
        self.put_session_text_at(group, session, &Arc::from(id), now);
    }

    /// [`EmbeddedStore::put_session_last_at`] sharing the id's string.
    fn put_session_text_at(
        &mut self,
        group: &str,
        session: &SessionKey,
        id: &Arc<str>,
        now: Instant,
    ) {
        if !Keys::is_id(id) {
            return;
        }
        let mut key = std::mem::take(&mut self.scratch);
        self.keys.session_into(&mut key, group, session);
        self.insert(&key, Value::Text(id.clone()), now);
        self.scratch = key;
    }

    /// [`StateStore::session_last`] at a given time.
    pub fn session_last_at(
        &mut self,
        group: &str,
        session: &SessionKey,
        now: Instant,
    ) -> Option<String> {
        let mut key = std::mem::take(&mut self.scratch);
        self.keys.session_into(&mut key, group, session);
        let found = match self.get(&key, now) {
            Some(Value::Text(t)) => Some(t.to_string()),
            _ => None,
        };
        self.scratch = key;
        found
    }

    /// Records the calls `id` left pending at a given time.
    pub fn put_pending_at(&mut self, group: &str, id: &str, call_ids: &[String], now: Instant) {
        let mut key = std::mem::take(&mut self.scratch);
        if self.keys.pending_into(&mut key, group, id) {
            self.insert(&key, Value::Ids(call_ids.to_vec()), now);
        }
        self.scratch = key;
    }

    /// [`StateStore::pending`] at a given time.
    pub fn pending_at(&mut self, group: &str, id: &str, now: Instant) -> Option<Vec<String>> {
        let mut key = std::mem::take(&mut self.scratch);
        let found = if self.keys.pending_into(&mut key, group, id) {
            match self.get(&key, now) {
                Some(Value::Ids(ids)) => Some(ids.clone()),
                _ => None,
            }
        } else {
            None
        };
        self.scratch = key;
        found
    }

    /// Drops every entry that expired by `now`.
    pub fn expire(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(_, at)| *at <= now) {
            if let Some((key, at)) = self.order.pop_front() {
                self.remove_if_written_at(&key, at);
            }
        }
    }

    /// Removes `key` if its entry is still the one written with expiry `at` (a queue element
    /// is stale once the key was written again); `true` when it was removed. One hash.
    fn remove_if_written_at(&mut self, key: &str, at: Instant) -> bool {
        match self.map.entry_ref(key) {
            EntryRef::Occupied(e) if e.get().expires == at => {
                e.remove();
                true
            }
            _ => false,
        }
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<&Value> {
        match self.map.entry_ref(key) {
            EntryRef::Occupied(e) if e.get().expires <= now => {
                e.remove();
                None
            }
            EntryRef::Occupied(e) => Some(&e.into_mut().value),
            EntryRef::Vacant(_) => None,
        }
    }

    fn insert(&mut self, key: &str, value: Value, now: Instant) {
        let expires = now + self.ttl;
        let key = match self.map.get_key_value_mut(key) {
            Some((shared, slot)) => {
                *slot = Slot { value, expires };
                shared.clone()
            }
            None => {
                self.expire(now);
                while self.map.len() >= self.capacity && self.evict_oldest() {}
                let shared: Arc<str> = Arc::from(key);
                self.map.insert(shared.clone(), Slot { value, expires });
                shared
            }
        };
        self.order.push_back((key, expires));
        if self.order.len() > self.capacity.saturating_mul(2) {
            let map = &self.map;
            self.order
                .retain(|(k, at)| map.get(k).is_some_and(|s| s.expires == *at));
        }
    }

    /// Removes the oldest live entry (skipping stale queue elements); `false` when empty.
    fn evict_oldest(&mut self) -> bool {
        while let Some((key, at)) = self.order.pop_front() {
            if self.remove_if_written_at(&key, at) {
                self.evictions += 1;
                return true;
            }
        }
        false
    }
}

/// The embedded backend: an [`EmbeddedStore`] that reports evictions to the stats.
pub struct EmbeddedBackend {
    store: EmbeddedStore,
    stats: std::sync::Arc<StateStats>,
}

impl EmbeddedBackend {
    /// Wraps `store`, reporting into `stats`.
    pub fn new(store: EmbeddedStore, stats: std::sync::Arc<StateStats>) -> Self {
        EmbeddedBackend { store, stats }
    }
}

impl StateStore for EmbeddedBackend {
    fn put_turn(&mut self, turn: TurnState) {
        self.store.put_owned_turn_at(turn, Instant::now());
    }

    fn binding(&mut self, group: &str, response_id: &str) -> Option<Binding> {
        self.store.binding_at(group, response_id, Instant::now())
    }

    fn session_last(&mut self, group: &str, session: &SessionKey) -> Option<String> {
        self.store.session_last_at(group, session, Instant::now())
    }

    fn pending(&mut self, group: &str, response_id: &str) -> Option<Vec<String>> {
        self.store.pending_at(group, response_id, Instant::now())
    }

    fn tick(&mut self, now: Instant) {
        self.store.expire(now);
        add(&self.stats.evictions, self.store.new_evictions());
    }

    fn flush(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(conn: u64) -> Binding {
        Binding {
            account: "acct-1".into(),
            instance: "host-a".into(),
            shard: 1,
            connection: conn,
        }
    }

    fn store(capacity: usize) -> EmbeddedStore {
        EmbeddedStore::new(Keys::new("sg"), Duration::from_secs(60), capacity)
    }

    #[test]
    fn round_trips_every_kind_within_its_group() {
        let now = Instant::now();
        let mut s = store(16);
        let sess = SessionKey::hash(b"s1");
        s.put_binding_at("g1", "resp_1", &binding(7), now);
        s.put_session_last_at("g1", &sess, "resp_1", now);
        s.put_pending_at("g1", "resp_1", &["call_a".into(), "call_b".into()], now);
        assert_eq!(s.binding_at("g1", "resp_1", now), Some(binding(7)));
        assert_eq!(
            s.session_last_at("g1", &sess, now).as_deref(),
            Some("resp_1")
        );
        assert_eq!(
            s.pending_at("g1", "resp_1", now).unwrap(),
            vec!["call_a".to_string(), "call_b".to_string()]
        );
        assert_eq!(s.binding_at("g2", "resp_1", now), None);
        assert_eq!(s.session_last_at("g2", &sess, now), None);
        assert_eq!(s.pending_at("g2", "resp_1", now), None);
    }

    #[test]
    fn a_turn_writes_its_binding_pending_calls_and_session_last() {
        let now = Instant::now();
        let mut s = store(16);
        let sess = SessionKey::hash(b"s1");
        s.put_turn_at(
            &TurnState {
                group: "g".into(),
                response_id: "resp_1".into(),
                binding: binding(3),
                session: Some(sess),
                pending: Some(vec!["call_a".into()]),
            },
            now,
        );
        assert_eq!(s.binding_at("g", "resp_1", now), Some(binding(3)));
        assert_eq!(
            s.session_last_at("g", &sess, now).as_deref(),
            Some("resp_1")
        );
        assert_eq!(
            s.pending_at("g", "resp_1", now),
            Some(vec!["call_a".into()])
        );
        s.put_turn_at(
            &TurnState {
                group: "g".into(),
                response_id: "resp_2".into(),
                binding: binding(4),
                session: None,
                pending: None,
            },
            now,
        );
        assert_eq!(s.len(), 4);
        assert_eq!(
            s.session_last_at("g", &sess, now).as_deref(),
            Some("resp_1")
        );
        assert_eq!(s.pending_at("g", "resp_2", now), None);
    }

    #[test]
    fn a_turn_taken_by_value_is_stored_like_a_borrowed_one() {
        let t0 = Instant::now();
        let sess = SessionKey::hash(b"s1");
        let turn = |id: &str, conn: u64, pending: Option<Vec<String>>| TurnState {
            group: "g".into(),
            response_id: id.into(),
            binding: binding(conn),
            session: Some(sess),
            pending,
        };
        let (mut borrowed, mut owned) = (store(3), store(3));
        for (i, id) in ["r1", "r2", "r3"].into_iter().enumerate() {
            let at = t0 + Duration::from_secs(i as u64);
            let t = turn(id, i as u64, (i == 1).then(|| vec!["call_a".to_string()]));
            borrowed.put_turn_at(&t, at);
            owned.put_owned_turn_at(t, at);
        }
        let now = t0 + Duration::from_secs(3);
        for s in [&mut borrowed, &mut owned] {
            // Capacity 3: the oldest entries (r1's binding, then r2's) went first.
            assert_eq!(s.len(), 3);
            assert_eq!(s.evictions(), 2);
            assert_eq!(s.binding_at("g", "r1", now), None);
            assert_eq!(s.pending_at("g", "r2", now), Some(vec!["call_a".into()]));
            assert_eq!(s.binding_at("g", "r3", now), Some(binding(2)));
            assert_eq!(s.session_last_at("g", &sess, now).as_deref(), Some("r3"));
            assert_eq!(s.binding_at("g", "r3", t0 + Duration::from_secs(62)), None);
        }
    }

    #[test]
    fn entries_expire_after_ttl_and_a_rewrite_extends_them() {
        let t0 = Instant::now();
        let mut s = store(16);
        let sess = SessionKey::hash(b"s1");
        s.put_binding_at("g", "r1", &binding(1), t0);
        s.put_session_last_at("g", &sess, "r1", t0);
        let t1 = t0 + Duration::from_secs(30);
        s.put_session_last_at("g", &sess, "r2", t1);
        let t2 = t0 + Duration::from_secs(61);
        assert_eq!(s.binding_at("g", "r1", t2), None);
        assert_eq!(s.session_last_at("g", &sess, t2).as_deref(), Some("r2"));
        s.expire(t2);
        assert_eq!(s.len(), 1);
        s.expire(t1 + Duration::from_secs(61));
        assert!(s.is_empty());
    }

    #[test]
    fn full_store_evicts_the_oldest_entry() {
        let t0 = Instant::now();
        let mut s = store(2);
        s.put_binding_at("g", "r1", &binding(1), t0);
        s.put_binding_at("g", "r2", &binding(2), t0 + Duration::from_secs(1));
        s.put_binding_at("g", "r1", &binding(11), t0 + Duration::from_secs(2));
        s.put_binding_at("g", "r3", &binding(3), t0 + Duration::from_secs(3));
        let now = t0 + Duration::from_secs(4);
        assert_eq!(s.len(), 2);
        assert_eq!(s.evictions(), 1);
        assert_eq!(s.binding_at("g", "r2", now), None);
        assert_eq!(s.binding_at("g", "r1", now), Some(binding(11)));
        assert_eq!(s.binding_at("g", "r3", now), Some(binding(3)));
    }

    #[test]
    fn rewriting_one_key_keeps_the_order_queue_bounded() {
        let t0 = Instant::now();
        let mut s = store(4);
        let sess = SessionKey::hash(b"busy");
        for i in 0..1000u64 {
            s.put_session_last_at("g", &sess, &format!("r{i}"), t0 + Duration::from_millis(i));
        }
        assert!(s.order.len() <= 8);
        assert_eq!(
            s.session_last_at("g", &sess, t0 + Duration::from_secs(1))
                .as_deref(),
            Some("r999")
        );
    }

    #[test]
    fn bogus_ids_are_not_stored() {
        let now = Instant::now();
        let mut s = store(4);
        s.put_binding_at("g", "", &binding(1), now);
        s.put_session_last_at("g", &SessionKey::hash(b"x"), &"r".repeat(300), now);
        assert!(s.is_empty());
    }
}
