//! The in-memory store: bounded tables with a TTL, no external service.
//!
//! Used as the default backend (owned by the control thread), as the Redis backend's local copy,
//! and as each shard's hot cache. Every entry lives `ttl` from its last write. All entries share
//! one TTL, so write order is expiry order: the entries are kept in write order (a rewrite moves
//! its entry to the back), which finds expired entries in O(1) and, when the store is full,
//! evicts the entry closest to expiring.
//!
//! Every write is on a turn's path (twice: the shard's cache, then the control thread's store),
//! so a turn costs two entries and two hashes per store: one `Response` entry holding what the
//! turn left about its response (where it lives and the calls it left pending, written
//! together), found by a hash of the response id alone (upstream ids are unique; the group is
//! compared on a match), and one `Session` entry (the session's last response), found by a
//! hash of the session key's first 8 bytes (already a SHA-256). Each hash is computed once per
//! operation and kept with the entry, so the tables grow without hashing any key again.
//! The entries sit in slots that never move ([`super::slots::Slots`]) and the hash tables hold
//! their 4-byte slot numbers, so a young store, which only grows, touches little fresh memory
//! per write (each fresh page is a page fault). Entries share the turn's strings (`Arc<str>`,
//! the pending call ids as one `Arc<[String]>`) instead of copying them. The hasher is aHash,
//! seeded at random per store.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashTable;

use super::slots::Slots;
use super::{add, Binding, Keys, SessionKey, StateStats, StateStore, TurnState};

/// What the store knows about one response. Its facts are written together by a turn (or one
/// at a time by the Redis backend's local copy of what it read) and expire together, `ttl`
/// after the last of them was written.
#[derive(Debug)]
struct Response {
    group: Arc<str>,
    id: Arc<str>,
    binding: Option<Binding>,
    pending: Option<Arc<[String]>>,
}

/// A client session's last response.
#[derive(Debug)]
struct Session {
    group: Arc<str>,
    key: SessionKey,
    last: Arc<str>,
}

/// One entry: a response or a session, both in one write order.
#[derive(Debug)]
enum Entry {
    Response(Response),
    Session(Session),
}

/// Bounded in-memory store with a TTL per entry. `S` hashes the keys (aHash, seeded at random;
/// tests and benches count hashes through their own).
#[derive(Debug)]
pub struct EmbeddedStore<S = ahash::RandomState> {
    ttl: Duration,
    capacity: usize,
    hasher: S,
    /// Every entry with its key's hash and expiry, in write order (oldest first).
    order: Slots<Entry>,
    /// Slot numbers of the responses and of the sessions, by key hash.
    responses: HashTable<u32>,
    sessions: HashTable<u32>,
    evictions: u64,
    /// Evictions already handed to the store's counters ([`EmbeddedStore::new_evictions`]).
    evictions_reported: u64,
}

impl EmbeddedStore {
    /// An empty store holding at most `capacity` entries (at least 1), each for `ttl`. An entry
    /// is a response (its binding and pending calls) or a session (its last response).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self::with_hasher(ttl, capacity, ahash::RandomState::new())
    }
}

impl<S: BuildHasher> EmbeddedStore<S> {
    /// [`EmbeddedStore::new`] hashing with `hasher` (a counting one, to count hashes per turn).
    /// The capacity is also capped below `u32::MAX` (entries are numbered by `u32`).
    pub fn with_hasher(ttl: Duration, capacity: usize, hasher: S) -> Self {
        EmbeddedStore {
            ttl,
            capacity: capacity.clamp(1, u32::MAX as usize - 1),
            hasher,
            order: Slots::default(),
            responses: HashTable::new(),
            sessions: HashTable::new(),
            evictions: 0,
            evictions_reported: 0,
        }
    }

    /// Entries currently held (expired ones included until the next write or tick).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// `true` when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// The response's entry (binding and pending calls), then the session's, sharing `group`
    /// and `id`.
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
        let owned = || (group.clone(), id.clone());
        self.write_response(group, id, owned, Some(binding), pending, now);
        if let Some(session) = session {
            self.write_session(group, &session, || group.clone(), id.clone(), now);
        }
    }

    /// Records where `id` lives at a given time.
    pub fn put_binding_at(&mut self, group: &str, id: &str, binding: &Binding, now: Instant) {
        if Keys::is_id(id) {
            let owned = || (group.into(), id.into());
            self.write_response(group, id, owned, Some(binding.clone()), None, now);
        }
    }

    /// [`StateStore::binding`] at a given time.
    pub fn binding_at(&mut self, group: &str, id: &str, now: Instant) -> Option<Binding> {
        self.response(group, id, now)?.binding.clone()
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
            self.write_session(group, session, || group.into(), id.into(), now);
        }
    }

    /// [`StateStore::session_last`] at a given time.
    pub fn session_last_at(
        &mut self,
        group: &str,
        session: &SessionKey,
        now: Instant,
    ) -> Option<String> {
        let hash = self.hasher.hash_one(session.prefix_u64());
        let i = self.find_session(hash, group, session)?;
        match self.order.get(i) {
            Some(Entry::Session(s)) if !self.expired(i, now) => Some(s.last.to_string()),
            _ => {
                self.remove(i);
                None
            }
        }
    }

    /// Records the calls `id` left pending at a given time.
    pub fn put_pending_at(&mut self, group: &str, id: &str, call_ids: &[String], now: Instant) {
        if Keys::is_id(id) {
            let owned = || (group.into(), id.into());
            self.write_response(group, id, owned, None, Some(call_ids.into()), now);
        }
    }

    /// [`StateStore::pending`] at a given time.
    pub fn pending_at(&mut self, group: &str, id: &str, now: Instant) -> Option<Vec<String>> {
        self.response(group, id, now)?
            .pending
            .as_deref()
            .map(<[String]>::to_vec)
    }

    /// Drops every entry that expired by `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(i) = self.order.oldest_expired(now) {
            self.remove(i);
        }
    }

    /// `true` when the entry in slot `i` expired by `now` (or is gone).
    fn expired(&self, i: u32, now: Instant) -> bool {
        self.order.expires(i).is_none_or(|e| e <= now)
    }

    /// The slot of the response `id` of `group`.
    fn find_response(&self, hash: u64, group: &str, id: &str) -> Option<u32> {
        let order = &self.order;
        let is = |&i: &u32| matches!(order.get(i), Some(Entry::Response(r)) if *r.id == *id && *r.group == *group);
        self.responses.find(hash, is).copied()
    }

    /// The slot of the session `key` of `group`.
    fn find_session(&self, hash: u64, group: &str, key: &SessionKey) -> Option<u32> {
        let order = &self.order;
        let is = |&i: &u32| matches!(order.get(i), Some(Entry::Session(s)) if s.key == *key && *s.group == *group);
        self.sessions.find(hash, is).copied()
    }

    /// The response's entry, unless it expired (then it is dropped).
    fn response(&mut self, group: &str, id: &str, now: Instant) -> Option<&Response> {
        let i = self.find_response(self.hasher.hash_one(id), group, id)?;
        if self.expired(i, now) {
            self.remove(i);
            return None;
        }
        match self.order.get(i) {
            Some(Entry::Response(r)) => Some(r),
            _ => None,
        }
    }

    /// Writes what is `Some` of a response's facts (the others stay as they were); `owned`
    /// makes the entry's key when the response is new.
    fn write_response(
        &mut self,
        group: &str,
        id: &str,
        owned: impl FnOnce() -> (Arc<str>, Arc<str>),
        binding: Option<Binding>,
        pending: Option<Arc<[String]>>,
        now: Instant,
    ) {
        let hash = self.hasher.hash_one(id);
        let expires = now + self.ttl;
        if let Some(i) = self.find_response(hash, group, id) {
            if let Some(Entry::Response(r)) = self.order.rewrite(i, expires) {
                if binding.is_some() {
                    r.binding = binding;
                }
                if pending.is_some() {
                    r.pending = pending;
                }
            }
            return;
        }
        self.make_room(now);
        let (group, id) = owned();
        let entry = Entry::Response(Response {
            group,
            id,
            binding,
            pending,
        });
        let i = self.order.insert(hash, expires, entry);
        let order = &self.order;
        self.responses.insert_unique(hash, i, |&j| order.hash(j));
    }

    /// Makes `last` the session's last response; `group` makes the entry's group when the
    /// session is new.
    fn write_session(
        &mut self,
        group: &str,
        key: &SessionKey,
        owned: impl FnOnce() -> Arc<str>,
        last: Arc<str>,
        now: Instant,
    ) {
        let hash = self.hasher.hash_one(key.prefix_u64());
        let expires = now + self.ttl;
        if let Some(i) = self.find_session(hash, group, key) {
            if let Some(Entry::Session(s)) = self.order.rewrite(i, expires) {
                s.last = last;
            }
            return;
        }
        self.make_room(now);
        let entry = Entry::Session(Session {
            group: owned(),
            key: *key,
            last,
        });
        let i = self.order.insert(hash, expires, entry);
        let order = &self.order;
        self.sessions.insert_unique(hash, i, |&j| order.hash(j));
    }

    /// Drops what expired, then evicts the oldest entries until a new one fits.
    fn make_room(&mut self, now: Instant) {
        self.expire(now);
        while self.len() >= self.capacity {
            let Some(i) = self.order.oldest() else { break };
            self.remove(i);
            self.evictions += 1;
        }
    }

    /// Removes the entry in slot `i` from its table and frees the slot.
    fn remove(&mut self, i: u32) {
        let hash = self.order.hash(i);
        let table = match self.order.get(i) {
            Some(Entry::Response(_)) => &mut self.responses,
            Some(Entry::Session(_)) => &mut self.sessions,
            None => return,
        };
        if let Ok(e) = table.find_entry(hash, |&j| j == i) {
            e.remove();
        }
        self.order.remove(i);
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
        // r1 (binding and pending calls), r2, the session.
        assert_eq!(s.len(), 3);
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
            // Capacity 3 (a response with its pending calls is one entry): r1, the oldest,
            // went for r3.
            assert_eq!(s.len(), 3);
            assert_eq!(s.evictions(), 1);
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

    /// aHash, counting the hashes it computes.
    #[derive(Debug, Default)]
    struct CountingHasher {
        inner: ahash::RandomState,
        hashes: std::cell::Cell<u64>,
    }

    impl BuildHasher for CountingHasher {
        type Hasher = ahash::AHasher;

        fn build_hasher(&self) -> ahash::AHasher {
            self.hashes.set(self.hashes.get() + 1);
            self.inner.build_hasher()
        }
    }

    #[test]
    fn a_turn_costs_one_hash_per_entry_and_growing_expiring_or_evicting_none() {
        let t0 = Instant::now();
        let turn = |i: u64, pending: bool| TurnState {
            group: "g".into(),
            response_id: format!("resp_{i}").into(),
            binding: binding(i),
            session: Some(SessionKey::hash(&(i % 4).to_le_bytes())),
            pending: pending.then(|| vec![format!("call_{i}")].into()),
        };
        // Room for all: the tables grow from empty, new ids every turn, sessions rewritten.
        let mut s =
            EmbeddedStore::with_hasher(Duration::from_secs(60), 1 << 20, CountingHasher::default());
        for i in 0..10_000 {
            s.put_turn_at(&turn(i, i % 2 == 0), t0 + Duration::from_micros(i));
        }
        assert_eq!(s.hasher.hashes.get(), 2 * 10_000);
        assert_eq!(s.len(), 10_004);
        // Everything expires: the write-order list finds each entry by its stored hash.
        s.expire(t0 + Duration::from_secs(61));
        assert!(s.is_empty());
        assert_eq!(s.hasher.hashes.get(), 2 * 10_000);
        // Full: every new response evicts the oldest entry, again without hashing it.
        let mut s =
            EmbeddedStore::with_hasher(Duration::from_secs(60), 64, CountingHasher::default());
        for i in 0..1_000 {
            s.put_turn_at(&turn(i, true), t0);
        }
        assert_eq!(s.len(), 64);
        assert_eq!(s.evictions(), 1_000 + 4 - 64);
        assert_eq!(s.hasher.hashes.get(), 2 * 1_000);
    }

    #[test]
    fn a_responses_binding_and_pending_calls_live_from_its_last_write() {
        let t0 = Instant::now();
        let mut s = store(16);
        s.put_binding_at("g", "r1", &binding(1), t0);
        s.put_pending_at("g", "r1", &["call_a".into()], t0 + Duration::from_secs(30));
        let t = t0 + Duration::from_secs(61);
        assert_eq!(s.binding_at("g", "r1", t), Some(binding(1)));
        assert_eq!(s.pending_at("g", "r1", t), Some(vec!["call_a".into()]));
        assert_eq!(s.len(), 1);
        assert_eq!(s.binding_at("g", "r1", t0 + Duration::from_secs(91)), None);
        assert!(s.is_empty());
    }

    #[test]
    fn entries_are_found_after_many_growths_and_expired_slots_are_reused() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let turn = |i: u64| TurnState {
            group: "g".into(),
            response_id: format!("resp_{i}").into(),
            binding: binding(i),
            session: Some(SessionKey::hash(&(i % 7).to_le_bytes())),
            pending: None,
        };
        let mut s = store(1 << 20);
        for i in 0..5_000 {
            s.put_turn_at(&turn(i), at(i));
        }
        let made = s.order.made();
        assert_eq!(made, 5_007);
        for i in 0..5_000 {
            assert_eq!(
                s.binding_at("g", &format!("resp_{i}"), at(5_000)),
                Some(binding(i))
            );
        }
        // The first 2,501 responses expire; the sessions were rewritten since.
        let later = at(62_500);
        s.expire(later);
        assert_eq!(s.len(), 5_007 - 2_501);
        for i in 5_000..7_000 {
            s.put_turn_at(&turn(i), later);
        }
        assert_eq!(s.order.made(), made);
        assert_eq!(s.len(), 5_007 - 2_501 + 2_000);
        for i in 0..7_000 {
            let want = (i > 2_500).then(|| binding(i));
            assert_eq!(s.binding_at("g", &format!("resp_{i}"), later), want);
        }
        assert_eq!(
            s.session_last_at("g", &SessionKey::hash(&(6_999u64 % 7).to_le_bytes()), later)
                .as_deref(),
            Some("resp_6999")
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
