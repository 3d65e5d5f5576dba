//! The Redis backend: shared by every gateway host, with a local copy for when Redis is not.
//!
//! Runs on the control thread with redis-rs's synchronous connection: every call carries the
//! `[state] redis_timeout_ms` deadline (3 s by default; a connect waits at most 1 s of it). A
//! call that fails, times out, or answers slower than the shards' lookup deadline pauses Redis
//! for a backoff period (100 ms doubling to 10 s) during which every read is served from the
//! local copy without waiting, so a slow or dead Redis costs the control thread one call per
//! pause, not one per lookup.
//! Shards never wait on this: their lookups have their own, shorter deadline.
//!
//! Writes go to the local copy at once and into a pipeline that is sent on the next tick (or
//! when it holds [`FLUSH_AT`] commands), so a turn's writes cost Redis one round trip, behind
//! the request path. Writes made while Redis is down stay local and are counted as dropped;
//! writes resume when it is back. Reads of immutable entries (bindings, pending ids) try the
//! local copy first; the session's last response can move on another host, so it is read from
//! Redis first (after flushing, so a host reads its own writes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::json_depth::{check_depth, MAX_JSON_DEPTH};

use super::embedded::EmbeddedStore;
use super::{add, Binding, Keys, SessionKey, StateError, StateStats, StateStore, TurnState};

/// Pipelined writes are sent once this many are buffered, without waiting for the tick.
pub const FLUSH_AT: usize = 256;
/// First pause after a failure before Redis is tried again.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Longest wait for a TCP connect to Redis (a reachable Redis answers in milliseconds; an
/// unreachable one should not hold the control thread for a whole call timeout).
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(1);
/// A call slower than this (the shards' lookup deadline) is no use to them: Redis is then
/// treated as down for a backoff period.
const SLOW_CALL: Duration = Duration::from_millis(250);
/// At most one warning per this interval while Redis fails.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Redis-backed store with a local fallback copy.
pub struct RedisStore {
    client: ::redis::Client,
    con: Option<::redis::Connection>,
    timeout: Duration,
    ttl_ms: u64,
    keys: Keys,
    local: EmbeddedStore,
    pipe: ::redis::Pipeline,
    retry_at: Option<Instant>,
    backoff: Duration,
    stats: Arc<StateStats>,
    last_log: Option<Instant>,
    errors_since_log: u64,
}

impl RedisStore {
    /// Prepares the store. Does not connect: the first call (or tick) does, so a Redis that
    /// is down at start does not keep the gateway from starting.
    pub fn open(
        url: &str,
        keys: Keys,
        ttl: Duration,
        timeout: Duration,
        local: EmbeddedStore,
        stats: Arc<StateStats>,
    ) -> Result<Self, StateError> {
        let client = ::redis::Client::open(url)
            .map_err(|e| StateError::BadRedisUrl(format!("{:?}", e.kind())))?;
        Ok(RedisStore {
            client,
            con: None,
            timeout,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            keys,
            local,
            pipe: ::redis::pipe(),
            retry_at: None,
            backoff: BACKOFF_MIN,
            stats,
            last_log: None,
            errors_since_log: 0,
        })
    }

    /// The open connection, connecting if needed; `None` while Redis is paused (down or slow)
    /// or when the connect fails.
    fn connection(&mut self) -> Option<&mut ::redis::Connection> {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        if self.con.is_none() {
            match self.connect() {
                Ok(con) => {
                    add(&self.stats.redis_connects, 1);
                    if self.retry_at.is_some() {
                        tracing::info!("state store: Redis is reachable again");
                    }
                    self.con = Some(con);
                }
                Err(e) => {
                    self.failed(&e);
                    return None;
                }
            }
        }
        self.con.as_mut()
    }

    fn connect(&self) -> ::redis::RedisResult<::redis::Connection> {
        let con = self
            .client
            .get_connection_with_timeout(self.timeout.min(CONNECT_TIMEOUT_MAX))?;
        con.set_read_timeout(Some(self.timeout))?;
        con.set_write_timeout(Some(self.timeout))?;
        Ok(con)
    }

    /// Runs one call on the connection. A failure drops the connection and pauses Redis; a
    /// call slower than [`SLOW_CALL`] keeps its answer but pauses Redis too, so a slow Redis
    /// costs the control thread one slow call per pause, not one per lookup.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut ::redis::Connection) -> ::redis::RedisResult<T>,
    ) -> Option<T> {
        let con = self.connection()?;
        let started = Instant::now();
        match f(con) {
            Ok(v) => {
                if started.elapsed() > SLOW_CALL {
                    add(&self.stats.redis_slow_calls, 1);
                    self.pause("slow");
                } else {
                    self.retry_at = None;
                    self.backoff = BACKOFF_MIN;
                }
                Some(v)
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// Counts a failed call, drops the connection and pauses Redis.
    fn failed(&mut self, e: &::redis::RedisError) {
        add(&self.stats.redis_errors, 1);
        if e.is_timeout() {
            add(&self.stats.redis_timeouts, 1);
        }
        self.con = None;
        let lost = self.pipe.len() as u64;
        if lost > 0 {
            add(&self.stats.redis_writes_dropped, lost);
            self.pipe.clear();
        }
        self.pause(if e.is_timeout() { "timeout" } else { "error" });
    }

    /// Serves from the local copy for the next backoff period; logs at most once per interval.
    fn pause(&mut self, why: &'static str) {
        let now = Instant::now();
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.errors_since_log += 1;
        if self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= LOG_INTERVAL)
        {
            tracing::warn!(
                why,
                failures = self.errors_since_log,
                "state store: Redis is failing or slow; serving from local state until it is back"
            );
            self.last_log = Some(now);
            self.errors_since_log = 0;
        }
    }

    fn queue_set(&mut self, key: String, value: &[u8]) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            add(&self.stats.redis_writes_dropped, 1);
            return;
        }
        self.pipe
            .cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(self.ttl_ms)
            .ignore();
    }

    fn send_pipeline(&mut self) {
        if self.pipe.is_empty() {
            return;
        }
        let pipe = std::mem::replace(&mut self.pipe, ::redis::pipe());
        let n = pipe.len() as u64;
        if self.call(|con| pipe.query::<()>(con)).is_none() {
            add(&self.stats.redis_writes_dropped, n);
        }
    }

    /// GET `key` from Redis; `None` when Redis could not be asked (already counted).
    fn get(&mut self, key: &str) -> Option<Option<Vec<u8>>> {
        self.send_pipeline();
        self.call(|con| ::redis::cmd("GET").arg(key).query::<Option<Vec<u8>>>(con))
    }

    fn fallback(&self) {
        add(&self.stats.local_fallback_reads, 1);
    }
}

impl StateStore for RedisStore {
    /// One turn's writes go into the pipeline together (a full pipeline is sent after them,
    /// never between them).
    fn put_turn(&mut self, turn: TurnState) {
        let (group, id) = (&*turn.group, &*turn.response_id);
        if let (Some(key), Ok(value)) = (
            self.keys.response(group, id),
            sonic_rs::to_vec(&turn.binding),
        ) {
            self.queue_set(key, &value);
        }
        if let Some(calls) = &turn.pending {
            if let (Some(key), Ok(value)) = (self.keys.pending(group, id), sonic_rs::to_vec(calls))
            {
                self.queue_set(key, &value);
            }
        }
        if let Some(session) = &turn.session {
            if Keys::is_id(id) {
                let key = self.keys.session(group, session);
                self.queue_set(key, id.as_bytes());
            }
        }
        self.local.put_owned_turn_at(turn, Instant::now());
        if self.pipe.len() >= FLUSH_AT {
            self.send_pipeline();
        }
    }

    fn binding(&mut self, group: &str, response_id: &str) -> Option<Binding> {
        let now = Instant::now();
        if let Some(b) = self.local.binding_at(group, response_id, now) {
            return Some(b);
        }
        let key = self.keys.response(group, response_id)?;
        match self.get(&key) {
            Some(Some(raw)) => {
                let b: Binding = decode(&raw)?;
                self.local.put_binding_at(group, response_id, &b, now);
                Some(b)
            }
            Some(None) => None,
            None => {
                self.fallback();
                None
            }
        }
    }

    fn session_last(&mut self, group: &str, session: &SessionKey) -> Option<String> {
        let key = self.keys.session(group, session);
        match self.get(&key) {
            Some(Some(raw)) => String::from_utf8(raw).ok(),
            Some(None) => self.local.session_last_at(group, session, Instant::now()),
            None => {
                self.fallback();
                self.local.session_last_at(group, session, Instant::now())
            }
        }
    }

    fn pending(&mut self, group: &str, response_id: &str) -> Option<Vec<String>> {
        let now = Instant::now();
        if let Some(ids) = self.local.pending_at(group, response_id, now) {
            return Some(ids);
        }
        let key = self.keys.pending(group, response_id)?;
        match self.get(&key) {
            Some(Some(raw)) => {
                let ids: Vec<String> = decode(&raw)?;
                self.local.put_pending_at(group, response_id, &ids, now);
                Some(ids)
            }
            Some(None) => None,
            None => {
                self.fallback();
                None
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        self.local.expire(now);
        add(&self.stats.evictions, self.local.new_evictions());
        if self.pipe.is_empty() {
            // Reconnect on the tick, not on a shard's lookup.
            if self.con.is_none() && self.retry_at.is_some_and(|at| now >= at) {
                let _ = self.call(|con| ::redis::cmd("PING").query::<()>(con));
            }
        } else {
            self.send_pipeline();
        }
    }

    fn flush(&mut self) {
        self.send_pipeline();
    }
}

/// A value read back from Redis (shared with other hosts, so not trusted): its nesting is
/// bounded before it is parsed.
fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Option<T> {
    check_depth(raw, MAX_JSON_DEPTH).ok()?;
    sonic_rs::from_slice(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_are_bounded_before_parsing() {
        assert_eq!(
            decode::<Vec<String>>(br#"["c1","c2"]"#),
            Some(vec!["c1".into(), "c2".into()])
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(decode::<Vec<String>>(deep.as_bytes()), None);
    }
}
