//! Client authentication: the presented key is checked against every configured key in
//! constant time, and resolves to the key's id and group. The table can be replaced by a config
//! reload; each shard keeps its own copy and notices a new one with a single relaxed load.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ClientKey;

/// The SHA-256 of a client key: what a session keeps to re-check its key after a reload. Never
/// the key, and its `Debug` shows nothing of it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest([u8; 32]);

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

/// Who a client is, once authenticated: safe to log and bill by (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The key's configured id: shared with the key table, so that a request's identity (one
    /// per HTTP `POST`) copies no name.
    pub key_id: Arc<str>,
    /// The group whose accounts and state it uses (shared, as `key_id`).
    pub group: Arc<str>,
    /// The digest of the key it authenticated with.
    pub key_digest: KeyDigest,
    /// The generation of the key table that accepted it: a session compares it with the table
    /// in force, so a reload that lands between the upgrade and the session's first turn is
    /// still noticed.
    pub key_table: u64,
}

/// The table of client keys, stored as SHA-256 digests.
pub struct ClientAuth {
    entries: Vec<ClientIdentity>,
}

impl ClientAuth {
    /// Builds the table from the configured keys.
    pub fn new(keys: &[ClientKey]) -> Self {
        ClientAuth {
            entries: keys
                .iter()
                .map(|k| ClientIdentity {
                    key_id: Arc::from(k.id.as_str()),
                    group: Arc::from(k.group.as_str()),
                    key_digest: KeyDigest(Sha256::digest(k.key.expose().as_bytes()).into()),
                    key_table: 0,
                })
                .collect(),
        }
    }

    /// Looks the key up (see [`ClientAuth::find`]).
    pub fn authenticate(&self, presented: &[u8]) -> Option<&ClientIdentity> {
        self.find(&KeyDigest(Sha256::digest(presented).into()))
    }

    /// `true` while the key `id` authenticated with is in the table under the same id and group.
    pub fn still_holds(&self, id: &ClientIdentity) -> bool {
        self.find(&id.key_digest)
            .is_some_and(|entry| entry.key_id == id.key_id && entry.group == id.group)
    }

    /// Every entry is compared, in constant time, whatever matches: the time taken says nothing
    /// about which key, or how much of one, was right.
    fn find(&self, digest: &KeyDigest) -> Option<&ClientIdentity> {
        let mut found = None;
        for (i, entry) in self.entries.iter().enumerate() {
            if bool::from(entry.key_digest.0.ct_eq(&digest.0)) {
                found = Some(i);
            }
        }
        found.map(|i| &self.entries[i])
    }
}

/// The key table shared by all shards, replaced whole by a reload.
pub struct SharedKeys {
    generation: AtomicU64,
    table: Mutex<Arc<ClientAuth>>,
}

impl SharedKeys {
    /// The table of `keys`.
    pub fn new(keys: &[ClientKey]) -> SharedKeys {
        SharedKeys {
            generation: AtomicU64::new(0),
            table: Mutex::new(Arc::new(ClientAuth::new(keys))),
        }
    }

    /// Puts `keys` in force for every new request on every shard.
    pub fn replace(&self, keys: &[ClientKey]) {
        let table = Arc::new(ClientAuth::new(keys));
        *self.table.lock().unwrap_or_else(|p| p.into_inner()) = table;
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn current(&self) -> (u64, Arc<ClientAuth>) {
        let generation = self.generation.load(Ordering::Acquire);
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (generation, table)
    }
}

/// A shard's view of the key table: its own copy, refreshed only when a reload replaced the
/// shared one, so checking a key touches no lock and no cache line another shard writes.
pub struct ShardKeys {
    shared: Arc<SharedKeys>,
    local: RefCell<(u64, Arc<ClientAuth>)>,
}

impl ShardKeys {
    /// A view of `shared`.
    pub fn new(shared: Arc<SharedKeys>) -> ShardKeys {
        let local = RefCell::new(shared.current());
        ShardKeys { shared, local }
    }

    /// Looks the key up in the table in force (see [`ClientAuth::authenticate`]).
    pub fn authenticate(&self, presented: &[u8]) -> Option<ClientIdentity> {
        self.refresh();
        let local = self.local.borrow();
        local.1.authenticate(presented).map(|id| ClientIdentity {
            key_table: local.0,
            ..id.clone()
        })
    }

    /// As [`ShardKeys::authenticate`], for a connection that keeps its last accepted key
    /// ([`KeptKey`]): the same key again, under the same table, is not looked up again.
    pub fn authenticate_kept(
        &self,
        presented: &[u8],
        kept: &mut KeptKey,
    ) -> Option<ClientIdentity> {
        if let Some(id) = kept.reusable(presented, self.generation()) {
            return Some(id.clone());
        }
        let id = self.authenticate(presented);
        kept.remember(presented, id.as_ref());
        id
    }

    /// Which key table is in force: changes with every reload that replaced it. One relaxed
    /// load, for sessions to notice a reload between turns.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Relaxed)
    }

    /// `true` while the key a session authenticated with is still in force (see
    /// [`ClientAuth::still_holds`]).
    pub fn still_valid(&self, id: &ClientIdentity) -> bool {
        self.refresh();
        self.local.borrow().1.still_holds(id)
    }

    fn refresh(&self) {
        if self.generation() != self.local.borrow().0 {
            *self.local.borrow_mut() = self.shared.current();
        }
    }
}

/// The key an HTTP connection last authenticated with, and the identity it gave: the next
/// request on the connection that presents the same bytes, while the same key table is in
/// force, gets that identity without the key being hashed again (SHA-256 of the key was ~3.5k
/// instructions per `POST` on a CPU without SHA instructions). The key's bytes stay in the
/// connection's memory as long as its request head's do; its `Debug` shows nothing of them.
#[derive(Default)]
pub struct KeptKey {
    presented: Vec<u8>,
    /// `None` until a key is accepted, and again after one is refused.
    identity: Option<ClientIdentity>,
}

impl fmt::Debug for KeptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeptKey(..)")
    }
}

impl KeptKey {
    /// The kept identity, when `presented` is the kept key (compared in constant time) and the
    /// table that accepted it is still the one in force (`generation`): a reload that may have
    /// revoked it sends the key through the table again.
    fn reusable(&self, presented: &[u8], generation: u64) -> Option<&ClientIdentity> {
        self.identity
            .as_ref()
            .filter(|id| id.key_table == generation)
            .filter(|_| bool::from(self.presented.ct_eq(presented)))
    }

    /// Keeps what the table said of `presented` (forgets the kept key when it was refused).
    fn remember(&mut self, presented: &[u8], identity: Option<&ClientIdentity>) {
        self.presented.clear();
        self.identity = identity.cloned();
        if self.identity.is_some() {
            self.presented.extend_from_slice(presented);
        }
    }
}

/// The key a request presents: `Authorization: Bearer <key>` (scheme case-insensitive), else
/// `x-api-key`.
pub fn presented_key<'a>(
    authorization: Option<&'a [u8]>,
    x_api_key: Option<&'a [u8]>,
) -> Option<&'a [u8]> {
    if let Some(v) = authorization {
        let v = v.trim_ascii();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(v[7..].trim_ascii());
        }
        return None;
    }
    x_api_key.map(<[u8]>::trim_ascii)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn table() -> ClientAuth {
        ClientAuth::new(&[
            ClientKey {
                id: "a".into(),
                key: Secret::new("sk-a".into()),
                group: "g1".into(),
            },
            ClientKey {
                id: "b".into(),
                key: Secret::new("sk-b".into()),
                group: "g2".into(),
            },
        ])
    }

    #[test]
    fn resolves_keys_to_identities() {
        let t = table();
        assert_eq!(t.authenticate(b"sk-b").unwrap().group, "g2".into());
        assert_eq!(t.authenticate(b"sk-a").unwrap().key_id, "a".into());
        assert!(t.authenticate(b"sk-").is_none());
        assert!(t.authenticate(b"").is_none());
    }

    /// The key `sk-<id>`, named `id`, in `group`.
    fn key(id: &str, group: &str) -> ClientKey {
        ClientKey {
            id: id.into(),
            key: Secret::new(format!("sk-{id}")),
            group: group.into(),
        }
    }

    #[test]
    fn a_replaced_table_is_seen_by_every_shard_view() {
        let shared = Arc::new(SharedKeys::new(&[key("a", "g1")]));
        let (one, two) = (
            ShardKeys::new(shared.clone()),
            ShardKeys::new(shared.clone()),
        );
        assert_eq!(one.authenticate(b"sk-a").unwrap().group, "g1".into());
        assert!(two.authenticate(b"sk-b").is_none());
        shared.replace(&[key("b", "g2"), key("a", "g3")]);
        assert_eq!(two.authenticate(b"sk-b").unwrap().key_id, "b".into());
        assert_eq!(one.authenticate(b"sk-a").unwrap().group, "g3".into());
        let a_in_g3 = one.authenticate(b"sk-a").unwrap();
        assert!(one.still_valid(&a_in_g3));
        assert_eq!(
            a_in_g3.key_table,
            one.generation(),
            "an identity names the table that accepted it"
        );
        shared.replace(&[key("b", "g2")]);
        assert_ne!(
            one.generation(),
            a_in_g3.key_table,
            "so a session built after a reload still sees that it must check its key"
        );
        assert!(
            one.authenticate(b"sk-a").is_none(),
            "a removed key is refused"
        );
        assert!(
            !one.still_valid(&a_in_g3),
            "and a session under it no longer holds"
        );
        let b = two.authenticate(b"sk-b").unwrap();
        shared.replace(&[key("b", "g1")]);
        assert!(
            !two.still_valid(&b),
            "a key moved to another group no longer holds"
        );
        assert!(
            !format!("{b:?}").contains("sk-"),
            "Debug shows no key material"
        );
    }

    #[test]
    fn a_kept_key_is_reused_only_for_the_same_bytes_under_the_same_table() {
        let shared = Arc::new(SharedKeys::new(&[key("a", "g1"), key("b", "g2")]));
        let shard = ShardKeys::new(shared.clone());
        let mut kept = KeptKey::default();
        let a = shard.authenticate_kept(b"sk-a", &mut kept).unwrap();
        assert_eq!((&*a.key_id, &*a.group), ("a", "g1"));
        assert_eq!(
            kept.reusable(b"sk-a", shard.generation()),
            Some(&a),
            "the same key again is not looked up"
        );
        assert_eq!(shard.authenticate_kept(b"sk-a", &mut kept), Some(a.clone()));
        for other in [&b""[..], b"sk-", b"sk-b", b"sk-aa", b"sk-A", b"tk-a"] {
            assert!(
                kept.reusable(other, shard.generation()).is_none(),
                "{other:?} is not the kept key"
            );
        }
        let b = shard.authenticate_kept(b"sk-b", &mut kept).unwrap();
        assert_eq!(&*b.key_id, "b", "another key is looked up afresh");
        assert!(kept.reusable(b"sk-a", shard.generation()).is_none());
        assert!(shard.authenticate_kept(b"sk-x", &mut kept).is_none());
        assert!(
            kept.reusable(b"sk-b", shard.generation()).is_none(),
            "a refused key forgets the kept one"
        );
        assert!(shard.authenticate_kept(b"sk-a", &mut kept).is_some());
        shared.replace(&[key("b", "g2")]);
        assert!(
            shard.authenticate_kept(b"sk-a", &mut kept).is_none(),
            "a key the reload removed is refused on a connection that kept it"
        );
        assert!(shard.authenticate_kept(b"sk-b", &mut kept).is_some());
        shared.replace(&[key("b", "g3")]);
        assert_eq!(
            &*shard.authenticate_kept(b"sk-b", &mut kept).unwrap().group,
            "g3",
            "a key the reload moved gives its new identity"
        );
        assert_eq!(
            format!("{kept:?}"),
            "KeptKey(..)",
            "Debug shows no key material"
        );
    }

    #[test]
    fn reads_bearer_then_x_api_key() {
        assert_eq!(
            presented_key(Some(b"Bearer sk-a"), None),
            Some(&b"sk-a"[..])
        );
        assert_eq!(
            presented_key(Some(b"bearer  sk-a "), None),
            Some(&b"sk-a"[..])
        );
        assert_eq!(presented_key(Some(b"Basic xyz"), Some(b"sk-a")), None);
        assert_eq!(presented_key(None, Some(b"sk-a")), Some(&b"sk-a"[..]));
        assert_eq!(presented_key(None, None), None);
    }
}
