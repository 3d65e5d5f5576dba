//! Sticky state: which upstream connection holds a response, the last response of a client
//! session, and the function calls a response left pending.
//!
//! The control thread owns the store ([`service::StateService`]); shards keep a hot cache of
//! their own bindings (`shard::sticky`) and ask the control thread on a miss. Two backends sit
//! behind [`StateStore`]: [`embedded::EmbeddedStore`] (in memory, the default, nothing to
//! install) and [`redis::RedisStore`] (shared by every gateway host, with a local copy that
//! serves reads while Redis is slow or down).
//!
//! Every key is scoped by the client group (`{prefix}:{group}:resp:{id}`), so one group can
//! never read another's chains. Session keys are SHA-256 hashed before they become store keys.

pub mod embedded;
pub mod redis;
pub mod service;
mod slots;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest response id the store accepts. Ids come from upstream (`resp_` + 48 hex chars) or
/// from a client's `previous_response_id`; anything longer is not an id and is never stored.
pub const MAX_ID_LEN: usize = 256;

/// Where a response lives: the upstream connection that produced it. Its names are shared
/// strings: the shard's cache, the message to the control thread and the store hold one copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// Account id (from the config).
    #[serde(rename = "a")]
    pub account: Arc<str>,
    /// Gateway host (`[state] instance`).
    #[serde(rename = "i")]
    pub instance: Arc<str>,
    /// Shard that owns the upstream connection.
    #[serde(rename = "s")]
    pub shard: usize,
    /// Connection id within the shard's pools.
    #[serde(rename = "c")]
    pub connection: u64,
}

/// Everything one turn that produced a response leaves behind, written as one unit: where the
/// response lives, the calls it left pending and, for a client session, that it is now the
/// session's last response. One message per turn to the control thread (and one set of
/// pipelined writes for Redis) instead of one per fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnState {
    /// Client group.
    pub group: Arc<str>,
    /// Upstream response id.
    pub response_id: Arc<str>,
    /// Where the response lives.
    pub binding: Binding,
    /// The client session it is now the last response of, if the client named one.
    pub session: Option<SessionKey>,
    /// The function calls it left waiting for outputs, when it left any (an empty list says
    /// "nothing pending", which is not the same as "unknown"). Shared: the shard's cache and
    /// the control thread's store keep the same list.
    pub pending: Option<Arc<[String]>>,
}

/// A client session's identity, SHA-256 hashed so raw session ids never reach a store or a log.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// Hashes the raw session identity (e.g. the client key id and its `session-id` header).
    pub fn hash(raw: &[u8]) -> Self {
        SessionKey(Sha256::digest(raw).into())
    }

    /// The session of a client key (its configured id, never the key) and a client-supplied
    /// session id (Codex's `session-id` header): each part length-prefixed, then hashed, so
    /// two different pairs can never produce the same input.
    pub fn of_client(key_id: &str, session_id: &str) -> Self {
        let mut h = Sha256::new();
        for part in [key_id, session_id] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        SessionKey(h.finalize().into())
    }

    /// The hash's first 8 bytes as a number, for spreading sessions evenly (the WebSocket
    /// canary's slot).
    pub fn prefix_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(b)
    }

    /// Lower-case hex of the hash, as used in store keys.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        self.push_hex(&mut s);
        s
    }

    /// Appends the lower-case hex of the hash to `out`.
    fn push_hex(&self, out: &mut String) {
        for b in self.0 {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({}…)", &self.hex()[..12])
    }
}

/// Builds the group-scoped Redis keys (the in-memory stores key by kind, group and id without
/// building a string: `embedded::StoreKey`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (`[state] key_prefix`, `sg` by default).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// `{prefix}:{group}:resp:{id}`: response → binding. `None` for an id that is not one.
    pub fn response(&self, group: &str, id: &str) -> Option<String> {
        let mut key = String::new();
        self.response_into(&mut key, group, id).then_some(key)
    }

    /// `{prefix}:{group}:sess:{sha256}`: session → last response id.
    pub fn session(&self, group: &str, session: &SessionKey) -> String {
        let mut key = String::new();
        self.session_into(&mut key, group, session);
        key
    }

    /// `{prefix}:{group}:pend:{id}`: response → pending function-call ids.
    pub fn pending(&self, group: &str, id: &str) -> Option<String> {
        let mut key = String::new();
        self.pending_into(&mut key, group, id).then_some(key)
    }

    /// [`Keys::response`] written into `out` (cleared first); `false` for an id that is not one.
    fn response_into(&self, out: &mut String, group: &str, id: &str) -> bool {
        self.scoped_into(out, group, "resp", id)
    }

    /// [`Keys::session`] written into `out` (cleared first).
    fn session_into(&self, out: &mut String, group: &str, session: &SessionKey) {
        self.start(out, group, "sess");
        session.push_hex(out);
    }

    /// [`Keys::pending`] written into `out` (cleared first); `false` for an id that is not one.
    fn pending_into(&self, out: &mut String, group: &str, id: &str) -> bool {
        self.scoped_into(out, group, "pend", id)
    }

    /// `true` for a string that can be a response id (non-empty, at most [`MAX_ID_LEN`]).
    pub fn is_id(id: &str) -> bool {
        !id.is_empty() && id.len() <= MAX_ID_LEN
    }

    fn scoped_into(&self, out: &mut String, group: &str, kind: &str, id: &str) -> bool {
        if !Self::is_id(id) {
            return false;
        }
        self.start(out, group, kind);
        out.push_str(id);
        true
    }

    /// Clears `out` and writes `{prefix}:{group}:{kind}:` (no formatting machinery: keys are
    /// built on every turn).
    fn start(&self, out: &mut String, group: &str, kind: &str) {
        out.clear();
        for part in [self.prefix.as_str(), ":", group, ":", kind, ":"] {
            out.push_str(part);
        }
    }
}

/// One sticky-state store. Reads are best effort: a backend that cannot answer counts the
/// failure in [`StateStats`] and answers from what it has locally, so callers never see an
/// error and the gateway keeps serving.
pub trait StateStore: Send {
    /// Records everything a turn left behind (binding, pending calls, session's last response)
    /// as one unit. Takes the turn, so its strings move into the store.
    fn put_turn(&mut self, turn: TurnState);
    /// Where `response_id` lives, if known.
    fn binding(&mut self, group: &str, response_id: &str) -> Option<Binding>;
    /// The last response of a session, if known.
    fn session_last(&mut self, group: &str, session: &SessionKey) -> Option<String>;
    /// The function-call ids `response_id` left pending, if known.
    fn pending(&mut self, group: &str, response_id: &str) -> Option<Vec<String>>;
    /// Periodic work: flush pipelined writes, reconnect, drop expired entries.
    fn tick(&mut self, now: Instant);
    /// Writes out everything still buffered (shutdown).
    fn flush(&mut self);
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// `[state] redis_url` is not a Redis URL. The URL itself is never shown (it may hold a
    /// password).
    #[error("state.redis_url is not a valid Redis URL ({0})")]
    BadRedisUrl(String),
    /// `backend = "redis"` without `redis_url` (config validation normally catches this).
    #[error("state.backend = \"redis\" needs state.redis_url")]
    MissingRedisUrl,
}

macro_rules! state_stats {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Store health counters, written by the control thread and read by stats. Shared as an
        /// `Arc`; every field is a relaxed atomic.
        #[derive(Debug, Default)]
        pub struct StateStats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        impl StateStats {
            /// Every counter by name, for stats and `/metrics`.
            pub fn values(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

state_stats! {
    /// Redis calls that failed (I/O, protocol, refused), timeouts included.
    redis_errors,
    /// Redis calls that hit `[state] redis_timeout_ms`.
    redis_timeouts,
    /// Redis calls that answered, but too late to help a shard (Redis is then paused).
    redis_slow_calls,
    /// Successful (re)connections to Redis.
    redis_connects,
    /// Writes that never reached Redis (it was down); they are kept in the local copy.
    redis_writes_dropped,
    /// Reads answered from the local copy because Redis could not be asked.
    local_fallback_reads,
    /// Lookups the control thread answered.
    lookups,
    /// Lookups that found something.
    lookup_hits,
    /// Entries evicted from the embedded store (or Redis's local copy) because it was full.
    evictions,
}

/// Adds one to a stats counter.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_by_group_and_hashed() {
        let k = Keys::new("sg");
        assert_eq!(k.response("g1", "resp_1").unwrap(), "sg:g1:resp:resp_1");
        assert_eq!(k.pending("g1", "resp_1").unwrap(), "sg:g1:pend:resp_1");
        assert_ne!(k.response("g1", "r"), k.response("g2", "r"));
        let s = SessionKey::hash(b"key-1/session-abc");
        let sk = k.session("g1", &s);
        assert!(sk.starts_with("sg:g1:sess:"));
        assert_eq!(sk.len(), "sg:g1:sess:".len() + 64);
        assert!(!sk.contains("session-abc"));
        assert!(!format!("{s:?}").contains("session-abc"));
    }

    #[test]
    fn ids_that_are_not_ids_get_no_key() {
        let k = Keys::new("sg");
        assert!(k.response("g", "").is_none());
        assert!(k.response("g", &"x".repeat(MAX_ID_LEN + 1)).is_none());
        assert!(k.pending("g", &"x".repeat(MAX_ID_LEN)).is_some());
    }

    #[test]
    fn client_sessions_do_not_collide_across_part_boundaries() {
        assert_ne!(
            SessionKey::of_client("ab", "c"),
            SessionKey::of_client("a", "bc")
        );
        assert_eq!(
            SessionKey::of_client("k", "s"),
            SessionKey::of_client("k", "s")
        );
    }

    #[test]
    fn session_hash_is_sha256() {
        assert_eq!(
            SessionKey::hash(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
