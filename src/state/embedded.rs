//! The in-memory store: bounded tables with a TTL, no external service.
//!
//! Used as the default backend (owned by the control thread), as the Redis backend's local copy,
//! and as each shard's hot cache. Every entry lives `ttl` from its last write. All entries share
//! one TTL, so write order is expiry order: a FIFO of writes finds expired entries in O(1) and,
//! when the store is full, evicts the entry closest to expiring.
//!
//! Every write is on a turn's path (twice: the shard's cache, then the control thread's store),
//! so a turn costs two entries and two hashes per store: one `Response` entry holding what the
//! turn left about its response (where it lives and the calls it left pending, written
//! together), found by a hash of the response id alone (upstream ids are unique; the group is
//! compared on a match), and one `Session` entry (the session's last response), found by a
//! hash of the session key's first 8 bytes (already a SHA-256). Each hash is computed once per
//! operation and kept in the entry, so the table grows without hashing any key again, and the
//! FIFO names an entry by that hash and a write number, not by its key: it holds no strings and
//! checks no key. Entries share the turn's strings (`Arc<str>`, the pending call ids as one
//! `Arc<[String]>`) instead of copying them. The hasher is aHash, seeded at random per store.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashTable;

use super::{add, Binding, Keys, SessionKey, StateStats, StateStore, TurnState};

/// One write of an entry: its key's hash, which write it was, when it expires. Kept in the
/// entry and in the FIFO; a FIFO element whose entry holds a later write is stale.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    hash: u64,
    seq: u64,
    expires: Instant,
}

/// What the store knows about one response. Its facts are written together by a turn (or one
/// at a time by the Redis backend's local copy of what it read) and expire together, `ttl`
/// after the last of them was written.
#[derive(Debug)]
struct Response {
    group: Arc<str>,
    id: Arc<str>,
    binding: Option<Binding>,
    pending: Option<Arc<[String]>>,
    stamp: Stamp,
}

/// A client session's last response.
#[derive(Debug)]
struct Session {
    group: Arc<str>,
    key: SessionKey,
    last: Arc<str>,
    stamp: Stamp,
}

/// Which table a FIFO element's entry is in.
#[derive(Debug, Clone, Copy)]
enum Table {
    Responses,
    Sessions,
}

/// Bounded in-memory store with a TTL per entry. `S` hashes the keys (aHash, seeded at random;
/// tests and benches count hashes through their own).
#[derive(Debug)]
pub struct EmbeddedStore<S = ahash::RandomState> {
    ttl: Duration,
    capacity: usize,
    hasher: S,
    responses: HashTable<Response>,
    sessions: HashTable<Session>,
    /// Write order, oldest first.
    order: VecDeque<(Table, Stamp)>,
    /// No entry expires before this (the oldest write's expiry when last looked at): until
    /// then a write does not look at the FIFO.
    next_due: Option<Instant>,
    /// Writes so far; numbers the next one.
    writes: u64,
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
    pub fn with_hasher(ttl: Duration, capacity: usize, hasher: S) -> Self {
        EmbeddedStore {
            ttl,
            capacity: capacity.max(1),
            hasher,
            responses: HashTable::new(),
            sessions: HashTable::new(),
            order: VecDeque::new(),
            next_due: None,
            writes: 0,
            evictions: 0,
            evictions_reported: 0,
        }
    }

    /// Entries currently held (expired ones included until the next write or tick).
    pub fn len(&self) -> usize {
        self.responses.len() + self.sessions.len()
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
        let found = self
            .sessions
            .find_entry(hash, |s| s.key == *session && *s.group == *group);
        match found {
            Ok(e) if e.get().stamp.expires <= now => {
                e.remove();
                None
            }
            Ok(e) => Some(e.get().last.to_string()),
            Err(_) => None,
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
        if self.next_due.is_some_and(|due| due > now) {
            return;
        }
        while self.order.front().is_some_and(|(_, s)| s.expires <= now) {
            if let Some((table, stamp)) = self.order.pop_front() {
                self.remove_if_current(table, stamp);
            }
        }
        self.next_due = self.order.front().map(|(_, s)| s.expires);
    }

    /// The response's entry, unless it expired (then it is dropped).
    fn response(&mut self, group: &str, id: &str, now: Instant) -> Option<&Response> {
        let hash = self.hasher.hash_one(id);
        let found = self
            .responses
            .find_entry(hash, |r| *r.id == *id && *r.group == *group);
        match found {
            Ok(e) if e.get().stamp.expires <= now => {
                e.remove();
                None
            }
            Ok(e) => Some(e.into_mut()),
            Err(_) => None,
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
        let stamp = self.stamp(self.hasher.hash_one(id), now);
        let found = self
            .responses
            .find_mut(stamp.hash, |r| *r.id == *id && *r.group == *group);
        match found {
            Some(r) => {
                if binding.is_some() {
                    r.binding = binding;
                }
                if pending.is_some() {
                    r.pending = pending;
                }
                r.stamp = stamp;
            }
            None => {
                self.make_room(now);
                let (group, id) = owned();
                let entry = Response {
                    group,
                    id,
                    binding,
                    pending,
                    stamp,
                };
                self.responses
                    .insert_unique(stamp.hash, entry, |r| r.stamp.hash);
            }
        }
        self.queue(Table::Responses, stamp);
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
        let stamp = self.stamp(self.hasher.hash_one(key.prefix_u64()), now);
        let found = self
            .sessions
            .find_mut(stamp.hash, |s| s.key == *key && *s.group == *group);
        match found {
            Some(s) => {
                s.last = last;
                s.stamp = stamp;
            }
            None => {
                self.make_room(now);
                let entry = Session {
                    group: owned(),
                    key: *key,
                    last,
                    stamp,
                };
                self.sessions
                    .insert_unique(stamp.hash, entry, |s| s.stamp.hash);
            }
        }
        self.queue(Table::Sessions, stamp);
    }

    /// The next write's stamp.
    fn stamp(&mut self, hash: u64, now: Instant) -> Stamp {
        self.writes += 1;
        Stamp {
            hash,
            seq: self.writes,
            expires: now + self.ttl,
        }
    }

    /// Drops what expired, then evicts until a new entry fits.
    fn make_room(&mut self, now: Instant) {
        self.expire(now);
        while self.len() >= self.capacity && self.evict_oldest() {}
    }

    /// Appends a write to the FIFO; drops the stale elements once it holds twice the capacity
    /// (a key rewritten again and again leaves one behind per write).
    fn queue(&mut self, table: Table, stamp: Stamp) {
        if self.next_due.is_none() {
            self.next_due = Some(stamp.expires);
        }
        self.order.push_back((table, stamp));
        if self.order.len() > self.capacity.saturating_mul(2) {
            let (responses, sessions) = (&self.responses, &self.sessions);
            self.order.retain(|(table, s)| match table {
                Table::Responses => responses.find(s.hash, |r| r.stamp.seq == s.seq).is_some(),
                Table::Sessions => sessions.find(s.hash, |e| e.stamp.seq == s.seq).is_some(),
            });
        }
    }

    /// Removes the entry `stamp` wrote if no later write replaced it; `true` when it was removed.
    fn remove_if_current(&mut self, table: Table, stamp: Stamp) -> bool {
        match table {
            Table::Responses => self
                .responses
                .find_entry(stamp.hash, |r| r.stamp.seq == stamp.seq)
                .map(|e| e.remove())
                .is_ok(),
            Table::Sessions => self
                .sessions
                .find_entry(stamp.hash, |s| s.stamp.seq == stamp.seq)
                .map(|e| e.remove())
                .is_ok(),
        }
    }

    /// Removes the oldest live entry (skipping stale FIFO elements); `false` when empty.
    fn evict_oldest(&mut self) -> bool {
        while let Some((table, stamp)) = self.order.pop_front() {
            if self.remove_if_current(table, stamp) {
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
        // Everything expires: the FIFO finds each entry by its stored hash.
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
    fn bogus_ids_are_not_stored() {
        let now = Instant::now();
        let mut s = store(4);
        s.put_binding_at("g", "", &binding(1), now);
        s.put_session_last_at("g", &SessionKey::hash(b"x"), &"r".repeat(300), now);
        assert!(s.is_empty());
    }
}
