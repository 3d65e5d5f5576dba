//! `[server]`: the listener, the shards and the client-facing limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, millis, secs, ConfigError, DEFAULT_MAX_MESSAGE_BYTES};

/// `[server]`: the client-facing side.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Address every shard binds with `SO_REUSEPORT`.
    pub listen: SocketAddr,
    /// Number of shards (one per CPU of the affinity mask by default).
    pub shards: usize,
    /// Pin shard `i` to the `i`-th CPU of the affinity mask (when there are no more shards
    /// than CPUs). Off by default: an unpinned shard is woken on the CPU that woke it when that
    /// suits the scheduler, while a pinned one on another CPU must be woken there, which on a
    /// VM whose idle vCPU halts costs ~20-30 us a wake (perf/README.md, "Session 16").
    /// `pin_shards`, read at start only.
    pub pin_shards: bool,
    /// Largest WebSocket message or HTTP body accepted from a client.
    pub max_message_bytes: usize,
    /// How long a new WebSocket session may wait before its first `response.create`.
    pub first_message_timeout: Duration,
    /// How long a session may sit idle between turns before it is closed with 1000.
    pub idle_timeout: Duration,
    /// Longest a write to a client may wait (the client stopped reading): past it the client is
    /// treated as gone, so a stuck client cannot hold an upstream connection.
    pub client_write_timeout: Duration,
    /// Concurrent WebSocket sessions allowed per client key on one shard (0 = no cap).
    pub max_sessions_per_key: usize,
    /// Unix socket for `shardgate stats` (created with mode 0600); `None` = off.
    pub stats_socket: Option<PathBuf>,
    /// Admin HTTP listener serving `GET /metrics`; `None` = off.
    pub admin_listen: Option<SocketAddr>,
    /// How often shards ship their measurements to the control thread.
    pub stats_interval: Duration,
    /// Length of the rolling window the control thread keeps next to the totals.
    pub stats_window: Duration,
    /// On shutdown, how long shards wait for in-flight turns before stopping anyway.
    pub drain_timeout: Duration,
    /// How long a session waits for its next frame after a turn, and a pooled connection sits
    /// unused, before either gives back its buffers (rests); tests set it low to see a rest soon.
    pub rest_after: Duration,
    /// TLS on the client listener (`tls_cert` + `tls_key`); `None` = plain HTTP.
    pub tls: Option<ListenerTls>,
    /// Lease the session's upstream connection before answering its upgrade, to echo the
    /// `x-codex-turn-state` of that connection's handshake in the client's 101 (costs a lease,
    /// maybe a dial, per upgrade). `echo_turn_state`, default off.
    pub echo_turn_state: bool,
    /// Let the kernel back the heap with transparent huge pages. Off by default: the gateway
    /// then calls `PR_SET_THP_DISABLE` at start, because the allocator asks for huge pages on
    /// its arenas and each first touch of one (also after it gave memory back) zeroes 2 MiB on
    /// a shard thread, a stall for every session of that shard, and a sparse heap holds twice
    /// the memory. `transparent_huge_pages`, read at start only.
    pub transparent_huge_pages: bool,
}

/// The PEM files of the client listener's TLS certificate chain and private key. Read at start
/// and again on every reload, so a certificate rotated in place takes effect on `SIGHUP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: Option<String>,
    shards: Option<usize>,
    pin_shards: Option<bool>,
    max_message_bytes: Option<usize>,
    first_message_timeout_secs: Option<f64>,
    idle_timeout_secs: Option<f64>,
    client_write_timeout_secs: Option<f64>,
    max_sessions_per_key: Option<usize>,
    stats_socket: Option<PathBuf>,
    admin_listen: Option<String>,
    stats_interval_ms: Option<u64>,
    stats_window_secs: Option<f64>,
    drain_timeout_secs: Option<f64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    rest_after_ms: Option<u64>,
    echo_turn_state: Option<bool>,
    transparent_huge_pages: Option<bool>,
}

impl RawServer {
    /// `[server]` checked, with its defaults filled in.
    pub(super) fn validate(self) -> Result<ServerConfig, ConfigError> {
        let s = self;
        let listen = s.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| invalid("server.listen", format!("`{listen}` is not an ip:port")))?;
        let shards = match s.shards {
            Some(0) => return Err(invalid("server.shards", "must be at least 1")),
            Some(n) => n,
            None => crate::runtime::allowed_cpus()
                .map(|c| c.len())
                .unwrap_or(1)
                .max(1),
        };
        let max_message_bytes = s.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if max_message_bytes < 1024 {
            return Err(invalid("server.max_message_bytes", "must be at least 1024"));
        }
        let server = ServerConfig {
            listen,
            shards,
            pin_shards: s.pin_shards.unwrap_or(false),
            max_message_bytes,
            first_message_timeout: secs(
                "server.first_message_timeout_secs",
                s.first_message_timeout_secs,
                30.0,
            )?,
            idle_timeout: secs("server.idle_timeout_secs", s.idle_timeout_secs, 300.0)?,
            client_write_timeout: secs(
                "server.client_write_timeout_secs",
                s.client_write_timeout_secs,
                30.0,
            )?,
            max_sessions_per_key: s.max_sessions_per_key.unwrap_or(0),
            stats_socket: s.stats_socket,
            admin_listen: match s.admin_listen.as_deref() {
                None | Some("") | Some("off") => None,
                Some(a) => Some(a.parse().map_err(|_| {
                    invalid("server.admin_listen", format!("`{a}` is not an ip:port"))
                })?),
            },
            stats_interval: millis("server.stats_interval_ms", s.stats_interval_ms, 1_000)?,
            stats_window: secs("server.stats_window_secs", s.stats_window_secs, 60.0)?,
            drain_timeout: secs("server.drain_timeout_secs", s.drain_timeout_secs, 30.0)?,
            tls: match (s.tls_cert, s.tls_key) {
                (None, None) => None,
                (Some(cert), Some(key)) => Some(ListenerTls { cert, key }),
                (Some(_), None) => {
                    return Err(invalid("server.tls_key", "required with server.tls_cert"))
                }
                (None, Some(_)) => {
                    return Err(invalid("server.tls_cert", "required with server.tls_key"))
                }
            },
            rest_after: millis("server.rest_after_ms", s.rest_after_ms, 1_000)?,
            echo_turn_state: s.echo_turn_state.unwrap_or(false),
            transparent_huge_pages: s.transparent_huge_pages.unwrap_or(false),
        };
        Ok(server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{no_env, MINIMAL};
    use crate::config::Config;
    #[test]
    fn transparent_huge_pages_default_off() {
        let c = Config::parse(MINIMAL, &no_env).unwrap();
        assert!(!c.server.transparent_huge_pages);
        let on = format!("[server]\ntransparent_huge_pages = true\n{MINIMAL}");
        assert!(
            Config::parse(&on, &no_env)
                .unwrap()
                .server
                .transparent_huge_pages
        );
    }

    #[test]
    fn shards_are_unpinned_unless_asked() {
        assert!(!Config::parse(MINIMAL, &no_env).unwrap().server.pin_shards);
        let on = format!("[server]\npin_shards = true\n{MINIMAL}");
        assert!(Config::parse(&on, &no_env).unwrap().server.pin_shards);
        let wrong = format!("[server]\npin_shards = \"yes\"\n{MINIMAL}");
        let err = Config::parse(&wrong, &no_env).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("boolean"), "{err}");
    }

    #[test]
    fn listener_tls_needs_both_files() {
        assert_eq!(Config::parse(MINIMAL, &no_env).unwrap().server.tls, None);
        let both = format!("[server]\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n{MINIMAL}");
        let tls = Config::parse(&both, &no_env).unwrap().server.tls.unwrap();
        assert_eq!((tls.cert, tls.key), ("/c.pem".into(), "/k.pem".into()));
        let cert_only = format!("[server]\ntls_cert = \"/c.pem\"\n{MINIMAL}");
        let err = Config::parse(&cert_only, &no_env).unwrap_err().to_string();
        assert!(err.contains("server.tls_key"), "{err}");
        let key_only = format!("[server]\ntls_key = \"/k.pem\"\n{MINIMAL}");
        let err = Config::parse(&key_only, &no_env).unwrap_err().to_string();
        assert!(err.contains("server.tls_cert"), "{err}");
    }

    #[test]
    fn rest_after_ms_defaults_to_a_second_and_refuses_zero() {
        let c = Config::parse(MINIMAL, &no_env).unwrap();
        assert_eq!(c.server.rest_after, Duration::from_secs(1));
        let text = format!("[server]\nrest_after_ms = 25\n{MINIMAL}");
        let c = Config::parse(&text, &no_env).unwrap();
        assert_eq!(c.server.rest_after, Duration::from_millis(25));
        let text = format!("[server]\nrest_after_ms = 0\n{MINIMAL}");
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains("server.rest_after_ms"), "{err}");
    }
}
