//! The in-memory store: bounded maps with a TTL, no external service.
//!
//! Used as the default backend (owned by the control thread), as the Redis backend's local copy,
//! and as each shard's hot cache. Every entry lives `ttl` from its last write. All entries share
//! one TTL, so write order is expiry order: a FIFO of `(key, expiry)` finds expired entries in
//! O(1) and, when the store is full, evicts the entry closest to expiring.
//!
//! Every write is on a turn's path (twice: the shard's cache, then the control thread's store).
//! Keys are structured ([`StoreKey`]: kind, group, response id or hashed session) and share the
//! turn's strings, so a write builds and allocates no key: a new key costs two reference
//! counts, where a `{prefix}:{group}:{kind}:{id}` string cost a copy of the id, a key string and
//! its allocation (the prefix scopes keys only in a store shared between hosts: Redis, whose keys
//! `Keys` builds). Lookups hash a borrowed form of the key ([`KeyRef`]); each map operation
//! hashes once (`entry_ref`, `get_key_value_mut`; a new key twice) with a fast seeded hasher
//! (aHash; the seed is random per store). Values share their strings (`Arc<str>`, the pending
//! call ids as one `Arc<[String]>`) instead of copying them.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::hash_map::EntryRef;
use hashbrown::{Equivalent, HashMap};

use super::{add, Binding, Keys, SessionKey, StateStats, StateStore, TurnState};

/// A stored value.
#[derive(Debug, Clone)]
enum Value {
    Binding(Binding),
    Text(Arc<str>),
    Ids(Arc<[String]>),
}

#[derive(Debug)]
struct Slot {
    value: Value,
    expires: Instant,
}

/// A store key, owned: the group and the response id are the turn's shared strings.
#[derive(Debug, Clone)]
enum StoreKey {
    /// Response → binding.
    Response(Arc<str>, Arc<str>),
    /// Response → pending call ids.
    Pending(Arc<str>, Arc<str>),
    /// Session → last response id.
    Session(Arc<str>, SessionKey),
}

/// A store key, borrowed: what lookups hash and compare. Hashes like the [`StoreKey`] it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KeyRef<'a> {
    Response(&'a str, &'a str),
    Pending(&'a str, &'a str),
    Session(&'a str, &'a SessionKey),
}

impl StoreKey {
    fn as_ref(&self) -> KeyRef<'_> {
        match self {
            StoreKey::Response(g, id) => KeyRef::Response(g, id),
            StoreKey::Pending(g, id) => KeyRef::Pending(g, id),
            StoreKey::Session(g, s) => KeyRef::Session(g, s),
        }
    }
}

impl Hash for StoreKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

impl PartialEq for StoreKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_ref() == other.as_ref()
    }
}

impl Eq for StoreKey {}

impl Equivalent<StoreKey> for KeyRef<'_> {
    fn equivalent(&self, key: &StoreKey) -> bool {
        *self == key.as_ref()
    }
}

/// Bounded in-memory store with a TTL per entry.
#[derive(Debug)]
pub struct EmbeddedStore {
    ttl: Duration,
    capacity: usize,
    map: HashMap<StoreKey, Slot, ahash::RandomState>,
    /// Write order; an element is stale when the map holds a later expiry for its key. Shares
    /// each key's strings with the map.
    order: VecDeque<(StoreKey, Instant)>,
    evictions: u64,
    /// Evictions already handed to the store's counters ([`EmbeddedStore::new_evictions`]).
    evictions_reported: u64,
}

impl EmbeddedStore {
    /// An empty store holding at most `capacity` entries (at least 1), each for `ttl`.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        EmbeddedStore {
            ttl,
            capacity: capacity.max(1),
            map: HashMap::with_hasher(ahash::RandomState::new()),
            order: VecDeque::new(),
            evictions: 0,
            evictions_reported: 0,
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

    /// [`StateStore::put_turn`] of a turn the caller keeps (the shard's cache, while the same
    /// turn travels to the control thread): the store shares the turn's strings and its pending
    /// call ids, so this copies nothing.
    pub fn put_turn_at(&mut self, turn: &TurnState, now: Instant) {
        let t = turn;
        let (binding, pending) = (t.binding.clone(), t.pending.clone());
        self.put(&t.group, &t.response_id, binding, t.session, pending, now);
    }

    /// [`StateStore::put_turn`] at a given time, the turn moved in (the control thread's write
    /// of a turn it was sent): its binding and pending calls are stored as they came.
    pub fn put_owned_turn_at(&mut self, turn: TurnState, now: Instant) {
        let t = turn;
        self.put(
            &t.group,
            &t.response_id,
            t.binding,
            t.session,
            t.pending,
            now,
        );
    }

    /// The binding, then the pending calls, then the session's last response, under keys
    /// sharing `group` and `id`.
    fn put(
        &mut self,
        group: &Arc<str>,
        id: &Arc<str>,
        binding: Binding,
        session: Option<SessionKey>,
        pending: Option<Arc<[String]>>,
        now: Instant,
    ) {
        if !Keys::is_id(id) {
            return;
        }
        self.insert(
            KeyRef::Response(group, id),
            || StoreKey::Response(group.clone(), id.clone()),
            Value::Binding(binding),
            now,
        );
        if let Some(calls) = pending {
            self.insert(
                KeyRef::Pending(group, id),
                || StoreKey::Pending(group.clone(), id.clone()),
                Value::Ids(calls),
                now,
            );
        }
        if let Some(session) = session {
            self.insert(
                KeyRef::Session(group, &session),
                || StoreKey::Session(group.clone(), session),
                Value::Text(id.clone()),
                now,
            );
        }
    }

    /// Records where `id` lives at a given time.
    pub fn put_binding_at(&mut self, group: &str, id: &str, binding: &Binding, now: Instant) {
        if Keys::is_id(id) {
            self.insert(
                KeyRef::Response(group, id),
                || StoreKey::Response(group.into(), id.into()),
                Value::Binding(binding.clone()),
                now,
            );
        }
    }

    /// [`StateStore::binding`] at a given time.
    pub fn binding_at(&mut self, group: &str, id: &str, now: Instant) -> Option<Binding> {
        match self.get(KeyRef::Response(group, id), now) {
            Some(Value::Binding(b)) => Some(b.clone()),
            _ => None,
        }
    }

    /// Records a session's last response at a given time.
    pub fn put_session_last_at(
        &mut self,
        group: &str,
        session: &SessionKey,
        id: &str,
        now: Instant,
    ) {
        if Keys::is_id(id) {
            self.insert(
                KeyRef::Session(group, session),
                || StoreKey::Session(group.into(), *session),
                Value::Text(id.into()),
                now,
            );
        }
    }

    /// [`StateStore::session_last`] at a given time.
    pub fn session_last_at(
        &mut self,
        group: &str,
        session: &SessionKey,
        now: Instant,
    ) -> Option<String> {
        match self.get(KeyRef::Session(group, session), now) {
            Some(Value::Text(t)) => Some(t.to_string()),
            _ => None,
        }
    }

    /// Records the calls `id` left pending at a given time.
    pub fn put_pending_at(&mut self, group: &str, id: &str, call_ids: &[String], now: Instant) {
        if Keys::is_id(id) {
            self.insert(
                KeyRef::Pending(group, id),
                || StoreKey::Pending(group.into(), id.into()),
                Value::Ids(call_ids.into()),
                now,
            );
        }
    }

    /// [`StateStore::pending`] at a given time.
    pub fn pending_at(&mut self, group: &str, id: &str, now: Instant) -> Option<Vec<String>> {
        match self.get(KeyRef::Pending(group, id), now) {
            Some(Value::Ids(ids)) => Some(ids.to_vec()),
            _ => None,
        }
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
    fn remove_if_written_at(&mut self, key: &StoreKey, at: Instant) -> bool {
        match self.map.entry_ref(&key.as_ref()) {
            EntryRef::Occupied(e) if e.get().expires == at => {
                e.remove();
                true
            }
            _ => false,
        }
    }

    fn get(&mut self, key: KeyRef<'_>, now: Instant) -> Option<&Value> {
        match self.map.entry_ref(&key) {
            EntryRef::Occupied(e) if e.get().expires <= now => {
                e.remove();
                None
            }
            EntryRef::Occupied(e) => Some(&e.into_mut().value),
            EntryRef::Vacant(_) => None,
        }
    }

    /// Writes `value` under `key`; `owned` makes the key the store keeps when it is new.
    fn insert(
        &mut self,
        key: KeyRef<'_>,
        owned: impl FnOnce() -> StoreKey,
        value: Value,
        now: Instant,
    ) {
        let expires = now + self.ttl;
        let key = match self.map.get_key_value_mut(&key) {
            Some((shared, slot)) => {
                *slot = Slot { value, expires };
                shared.clone()
            }
            None => {
                self.expire(now);
                while self.map.len() >= self.capacity && self.evict_oldest() {}
                let shared = owned();
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
        EmbeddedStore::new(Duration::from_secs(60), capacity)
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
                pending: Some(vec!["call_a".into()].into()),
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
            pending: pending.map(Into::into),
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
