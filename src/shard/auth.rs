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

    #[test]
    fn a_replaced_table_is_seen_by_every_shard_view() {
        let key = |id: &str, group: &str| ClientKey {
            id: id.into(),
            key: Secret::new(format!("sk-{id}")),
            group: group.into(),
        };
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
